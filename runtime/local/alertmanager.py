"""A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback port, stopped by PID, and
a webhook receiver that records what it is sent: the path of each notification names its receiver."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from runtime.local.processes import free_port, stop_process

BINARIES = ("prometheus-alertmanager", "alertmanager")


class AlertmanagerServer:
    def __init__(self, workdir: Path, config: dict):
        binary = next((path for path in map(shutil.which, BINARIES) if path), None)
        if binary is None:
            raise RuntimeError("Alertmanager is not installed: apt-get install prometheus-alertmanager")
        self.workdir, self.port = workdir, free_port()
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],  # no gossip peers
            stdout=open(workdir / "alertmanager.log", "ab"), stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return (self.workdir / "alertmanager.log").read_text()[-3000:]

    def stop(self) -> None:
        stop_process(self.process, 15)


class WebhookReceiver:
    """Collects Alertmanager webhook notifications: receiver name (the URL path) -> list of payloads."""

    def __init__(self):
        self.received: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.received.setdefault(self.path.strip("/"), []).append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{receiver}"

    def alerts(self, receiver: str) -> list[dict]:
        with self.lock:
            return [alert for body in self.received.get(receiver, []) for alert in body["alerts"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
