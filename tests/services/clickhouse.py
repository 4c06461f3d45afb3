"""A real ClickHouse server (Debian's clickhouse-server) per test session, on free loopback ports."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pipeline.localbroker import free_port, stop_process
from sinks.clickhouse.backend import ChdbBackend, NativeBackend

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def _server_binary() -> str:
    for candidate in ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        if shutil.which(candidate) or Path(candidate).exists():
            return shutil.which(candidate) or candidate
    raise AssertionError("clickhouse-server is not installed: apt-get install clickhouse-server clickhouse-client "
                         "(or run ./run test, which installs it)")


class ClickHouseServer:
    def __init__(self, workdir: Path):
        self.workdir, self.host = workdir, "127.0.0.1"
        self.tcp_port, self.http_port = free_port(), free_port()
        (workdir / "config.xml").write_text(CONFIG.format(d=workdir, tcp=self.tcp_port, http=self.http_port))
        (workdir / "users.xml").write_text(USERS)
        self.process = subprocess.Popen([_server_binary(), f"--config-file={workdir / 'config.xml'}"],
                                        stdout=open(workdir / "stdout.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"clickhouse-server exited:\n{self.log_tail()}"
            try:
                socket.create_connection((self.host, self.tcp_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"clickhouse-server did not listen within 30 s:\n{self.log_tail()}")

    def url(self, database: str = "cx") -> str:
        return f"clickhouse://default@{self.host}:{self.tcp_port}/{database}"

    def log_tail(self) -> str:
        logs = [self.workdir / name for name in ("error.log", "stdout.log")]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())

    def stop(self) -> None:
        stop_process(self.process, 20)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory):
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    yield server
    server.stop()


@pytest.fixture
def clickhouse_url(clickhouse_server):
    """A fresh database per test, so tests never see each other's rows."""
    return clickhouse_server.url(f"cx_test_{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["server", "chdb"])
def any_backend(request, clickhouse_url, tmp_path):
    """The same test on both backends: the 18.16 server and embedded chdb."""
    backend = NativeBackend(clickhouse_url) if request.param == "server" else ChdbBackend(tmp_path / "chdb")
    backend.create_tables()
    yield backend
    backend.close()
