"""A real ClickHouse server (Debian's clickhouse-server, 18.16 on CI) with its config, data and logs in
one folder, on free loopback ports, stopped by PID."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from runtime.local.processes import free_port, stop_process

INSTALL_HINT = "apt-get install clickhouse-server clickhouse-client"

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog>
    <size>10M</size><count>2</count><console>0</console></logger>
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
  <timezone>UTC</timezone>
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


def server_command(config: Path) -> list[str]:
    """clickhouse-server, or the single `clickhouse` binary of newer packages."""
    for name, args in (("clickhouse-server", []), ("clickhouse", ["server"])):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return [found, *args, f"--config-file={config}"]
    raise RuntimeError(f"ClickHouse server not found: install it with `{INSTALL_HINT}` (Debian/Ubuntu), "
                       "or run ./run test, which installs it")


class ClickHouseServer:
    """A clickhouse-server with its config, data and logs under workdir. ``url(database)`` gives a
    clickhouse:// URL for the pipeline; the default database is ``cx``. ``extra_config`` (a whole
    <yandex> document) goes to config.d/, which the server merges into its config; a cluster member
    needs its ``tcp_port`` known before it starts, so its peers' configs can name it."""

    def __init__(self, workdir: Path, start_timeout_s: float = 20.0, tcp_port: Optional[int] = None,
                 extra_config: str = ""):
        self.workdir, self.host = Path(workdir), "127.0.0.1"
        self.tcp_port, self.http_port = tcp_port or free_port(), free_port()
        (self.workdir / "config.xml").write_text(CONFIG.format(d=self.workdir, tcp=self.tcp_port, http=self.http_port))
        if extra_config:
            (self.workdir / "config.d").mkdir(exist_ok=True)
            (self.workdir / "config.d" / "extra.xml").write_text(extra_config)
        (self.workdir / "users.xml").write_text(USERS)
        command = server_command(self.workdir / "config.xml")
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the server answers a query over the native protocol (a listening port is not enough)."""
        from clickhouse_driver import Client

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.process.returncode}:\n{self.log_tail()}")
            client = Client(self.host, port=self.tcp_port, connect_timeout=0.5, send_receive_timeout=2)
            try:
                socket.create_connection((self.host, self.tcp_port), timeout=0.5).close()  # quietly, before the driver
                client.execute("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
            finally:
                client.disconnect()
        self.stop()
        raise RuntimeError(f"clickhouse-server did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def url(self, database: str = "cx") -> str:
        return f"clickhouse://default@{self.host}:{self.tcp_port}/{database}"

    def log_tail(self, chars: int = 3000) -> str:
        logs = [self.workdir / name for name in ("error.log", "stdout.log")]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs if p.exists())

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID, SIGKILL if it has not exited within timeout_s."""
        stop_process(self.process, timeout_s)
