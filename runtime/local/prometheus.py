"""A real Prometheus server scraping given targets, on a free loopback port, stopped by PID."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from runtime.local.processes import free_port, stop_process


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s", rule_files: tuple = (),
                 job: str = "cxp", alertmanagers: tuple[str, ...] = ()):
        """``job="cx-pipeline"`` is the job name the shipped rules select (WorkerDown, job:up:sum);
        ``alertmanagers`` (host:port) receive the alerts."""
        if not shutil.which("prometheus"):
            raise RuntimeError("prometheus is not installed: apt-get install prometheus")
        self.workdir, self.port = workdir, free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]},
        }))
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(workdir / "prometheus.log", "ab"), stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list[dict]:
        return self._api("query", query=promql)

    def query_range(self, promql: str, start_s: float, end_s: float, step_s: float) -> list[dict]:
        """Series of [time, value] pairs between start and end, one every step."""
        return self._api("query_range", query=promql, start=start_s, end=end_s, step=step_s)

    def _api(self, endpoint: str, **params) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{endpoint}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body["status"] != "success":
            raise RuntimeError(f"{endpoint} {params} failed: {body}")
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
