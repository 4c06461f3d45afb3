"""A real ClickHouse server (runtime.local.clickhouse: Debian's clickhouse-server, 18.16 on CI) per test
session, on free loopback ports, stopped by PID; servers a test module may stop and restart; and an
embedded chdb backend per test."""
from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from runtime.local.clickhouse import ClickHouseServer
from sinks.clickhouse.backend import ChdbBackend, NativeBackend


class RestartableClickHouse(ClickHouseServer):
    """A ClickHouse server of one test module, which may be stopped, frozen and started again on the same
    data folder and ports (the shared session server must never be)."""

    def restart(self, start_timeout_s: float = 30.0) -> None:
        assert self.process.poll() is not None, "stop it first"
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(self.process.args, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pid = self.process.pid
        self._wait_ready(start_timeout_s)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory):
    try:
        server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    except RuntimeError as exc:  # not installed, or did not start: say why, without a traceback
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def clickhouse_url(clickhouse_server):
    """A fresh database per test, so tests never see each other's rows (created by the DDL on open)."""
    return clickhouse_server.url(f"cx_test_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def chdb_backend(tmp_path):
    """Embedded chdb in a fresh folder, tables created."""
    backend = ChdbBackend(tmp_path / "chdb")
    backend.create_tables()
    yield backend
    backend.close()


@pytest.fixture(params=["server", "chdb"])
def any_backend(request, tmp_path):
    """The same test on both backends: the real server (18.16 on CI) and embedded chdb, tables created."""
    if request.param == "server":
        backend = NativeBackend(request.getfixturevalue("clickhouse_url"))
    else:
        backend = ChdbBackend(tmp_path / "chdb")
    backend.create_tables()
    yield backend
    backend.close()
