"""A real replicated ClickHouse cluster on loopback: Debian's ZooKeeper as the coordinator and two (or
three) clickhouse-server 18.16 processes as one shard, each replica with its own ports, data and macros.
Every process is started by the test and stopped by PID; a replica may be stopped and restarted."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from runtime.local.processes import free_port, stop_process
from tests.services.clickhouse import RestartableClickHouse

CLUSTER = "cxp_test"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # Debian's zookeeper package; its manifest lists the deps
ZOOKEEPER_HINT = "apt-get install zookeeper"
HAPROXY_HINT = "apt-get install haproxy"
SLF4J_SIMPLE = Path("/usr/share/java/slf4j-simple.jar")  # a log binding, so zookeeper.log says why it refused something

REPLICA_CONFIG = """<?xml version="1.0"?>
<yandex>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>{interserver}</interserver_http_port>
  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node></zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <macros><shard>01</shard><replica>{replica}</replica></macros>
  <remote_servers><{cluster}><shard><internal_replication>true</internal_replication>
    {replicas}
  </shard></{cluster}></remote_servers>
</yandex>
"""


class ZooKeeper:
    """A standalone ZooKeeper server (ZooKeeperServerMain) with its data under workdir."""

    def __init__(self, workdir: Path, start_timeout_s: float = 30.0):
        java = shutil.which("java")
        if not ZOOKEEPER_JAR.exists() or not java:
            pytest.fail(f"ZooKeeper not found: install it with `{ZOOKEEPER_HINT}`, or run ./run test", pytrace=False)
        self.workdir, self.port = Path(workdir), free_port()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        command = [java, "-Xmx256m", "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.4lw.commands.whitelist=srvr",
                   "-cp", f"{ZOOKEEPER_JAR}:{SLF4J_SIMPLE}", "org.apache.zookeeper.server.ZooKeeperServerMain",
                   str(self.port), str(self.workdir / "data")]
        with open(self.workdir / "zookeeper.log", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        """Until `srvr` reports a serving server ("Mode: standalone"). An open port is not enough: a
        ClickHouse 18.16 that cannot open its ZooKeeper session at startup crashes on its first ON CLUSTER
        query (its DDL worker keeps a null session)."""
        def serving() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"srvr")
                return b"Mode: standalone" in _read_all(conn)

        wait_ready(self, "zookeeper", serving, timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return (self.workdir / "zookeeper.log").read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_process(self.process, timeout_s)


def wait_ready(service, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
    """Poll ready() (OSError counts as not yet) until it holds; fail the test with the service's log
    tail if its process exits or the time runs out (then stop it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"{name} exited with {service.process.returncode}:\n{service.log_tail()}", pytrace=False)
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    service.stop()
    pytest.fail(f"{name} did not answer within {timeout_s:.0f} s:\n{service.log_tail()}", pytrace=False)


def _accepts(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    return True


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


class Balancer:
    """HAProxy (Debian's haproxy) run in the foreground with ``config``, its log in workdir; stopped by PID."""

    def __init__(self, workdir: Path, config: str, port: int, start_timeout_s: float = 10.0):
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if not haproxy:
            pytest.fail(f"haproxy not found: install it with `{HAPROXY_HINT}`, or run ./run test", pytrace=False)
        self.workdir, self.port = Path(workdir), port
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "haproxy.cfg").write_text(config)
        with open(self.workdir / "haproxy.log", "ab") as out:
            self.process = subprocess.Popen([haproxy, "-db", "-f", str(self.workdir / "haproxy.cfg")], stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self, "haproxy", lambda: _accepts(port), start_timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return (self.workdir / "haproxy.log").read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_process(self.process, timeout_s)


class ReplicatedCluster:
    """ZooKeeper plus ``replicas`` ClickHouse servers forming cluster ``name``: one shard, every server a
    replica of it (macros shard=01, replica=r1, r2, ...)."""

    def __init__(self, workdir: Path, name: str = CLUSTER, replicas: int = 2):
        self.name, workdir = name, Path(workdir)
        self.zookeeper = ZooKeeper(workdir / "zookeeper")
        self.servers: list[RestartableClickHouse] = []
        ports = [free_port() for _ in range(replicas)]
        listed = "\n    ".join(f"<replica><host>127.0.0.1</host><port>{port}</port></replica>" for port in ports)
        try:
            for number, port in enumerate(ports, start=1):
                config = REPLICA_CONFIG.format(interserver=free_port(), zookeeper=self.zookeeper.port,
                                               replica=f"r{number}", cluster=name, replicas=listed)
                server_dir = workdir / f"r{number}"
                server_dir.mkdir(parents=True)
                self.servers.append(RestartableClickHouse(server_dir, tcp_port=port, extra_config=config))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.zookeeper.stop()


@pytest.fixture(scope="module")
def clickhouse_cluster(tmp_path_factory):
    cluster = ReplicatedCluster(tmp_path_factory.mktemp("clickhouse_cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def clickhouse_cluster_of_three(tmp_path_factory):
    """One shard of three replicas: the production profile's shape, where the majority quorum is two."""
    cluster = ReplicatedCluster(tmp_path_factory.mktemp("clickhouse_cluster_of_three"), replicas=3)
    yield cluster
    cluster.stop()
