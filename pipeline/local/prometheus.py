"""A real Prometheus server scraping given targets, on a free loopback port, stopped by PID."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.local.processes import free_port, stop_process


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s", rule_files: tuple = ()):
        if not shutil.which("prometheus"):
            raise RuntimeError("prometheus is not installed: apt-get install prometheus")
        self.workdir, self.port = workdir, free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "cxp", "static_configs": [{"targets": targets}]}],
        }))
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(workdir / "prometheus.log", "ab"), stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body["status"] != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict]:
        """Poll until the query has a result; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                result = self.query(promql)
                if result:
                    return result
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no result for {promql!r} within {timeout_s} s; log:\n"
                           + (self.workdir / "prometheus.log").read_text()[-3000:])

    def stop(self) -> None:
        stop_process(self.process, 15)
