"""Run `cxp worker` as a real subprocess, the way users run it, and read its /metrics and /progress."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from agents.web_security import METRICS_PATH, PROGRESS_PATH
from runtime.local.metrics import progress, scrape
from runtime.local.processes import free_port, stop_process


class WorkerProcess:
    """`python -m runtime.cli worker` with the given environment, output to log_path, in cwd (relative
    paths, such as the default ``CXP_DATA_DIR``, resolve there)."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Optional[Path] = None):
        self.env, self.log_path, self.cwd = env, log_path, cwd
        self.web_port = int(env["CXP_WEB_PORT"])
        self.process: Optional[subprocess.Popen] = None
        self.launched_at: Optional[float] = None  # time.perf_counter() at launch

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}{METRICS_PATH}"

    @property
    def progress_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}{PROGRESS_PATH}"

    def launch(self) -> "WorkerProcess":
        """Start the process and return at once."""
        self.process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=self.env, cwd=self.cwd,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        self.launched_at = time.perf_counter()
        return self

    def start(self, timeout_s: float = 60.0) -> "WorkerProcess":
        """Launch, then wait until /metrics answers."""
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.raise_if_exited()
            try:
                scrape(self.metrics_url, timeout=1.0, token=self.env.get("CXP_METRICS_TOKEN"))
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"worker did not serve /metrics in {timeout_s} s:\n{self.log_tail()}")

    def raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict:
        return scrape(self.metrics_url, token=self.env.get("CXP_METRICS_TOKEN"))

    def progress(self, timeout_s: float = 2.0) -> dict:
        return progress(self.progress_url, timeout_s, token=self.env.get("CXP_METRICS_TOKEN"))

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition") -> dict:
        """Poll /metrics until predicate(samples) holds; return the samples. A scrape that times out (a busy
        worker on a loaded machine) is polled again; a worker that exited raises at once."""
        deadline = time.monotonic() + timeout_s
        samples: dict = {}
        while time.monotonic() < deadline:
            self.raise_if_exited()
            try:
                samples = self.metrics()
            except OSError:
                continue
            if predicate(samples):
                return samples
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}; last samples: "
                           f"{ {k: v for k, v in samples.items() if k.startswith('cxp_')} }\n{self.log_tail()}")

    def peak_rss_bytes(self) -> int:
        """VmHWM, the resident set's high-water mark, while the process runs (0 once it has exited)."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)


def worker_env(kafka_url: str, data_dir: Path, clickhouse_url: Optional[str], **extra: str) -> dict[str, str]:
    """The environment tests run a worker with: a free web port, a 6 s session timeout (Tansu's group
    join takes about half of it), quick sink flushes."""
    env = dict(os.environ, CXP_KAFKA_URL=kafka_url, CXP_DATA_DIR=str(data_dir), CXP_WEB_PORT=str(free_port()),
               CXP_SESSION_TIMEOUT="6", CXP_SINK_FLUSH_INTERVAL="0.3", CXP_LOG_LEVEL="info")
    env.pop("CXP_CLICKHOUSE_URL", None)
    if clickhouse_url:
        env["CXP_CLICKHOUSE_URL"] = clickhouse_url
    env.update(extra)
    return env
