"""Two ClickHouse backends behind one interface: a server over the native protocol, or embedded chdb.

Inserts are columnar (one sequence per column): clickhouse-driver's ``columnar=True`` for a server,
a typed Arrow table for chdb; neither goes through per-row SQL text. ``query`` returns the same
Python types on both: int, float, str, None, list, and naive datetime (in the engine's time zone) for
DateTime. Strings that are not UTF-8 (dead-letter payloads) come back intact only through e.g. ``hex()``.
"""
from __future__ import annotations

import json
import logging
import select
from abc import ABC, abstractmethod
from datetime import date, datetime
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import parse_qs, urlparse

from pipeline.secret_values import clickhouse_security
from pipeline.settings import ClickHouseSettings
from pipeline.tables import TABLES
from sinks.clickhouse.ddl import create_statements, missing_column_fixes, table_names

log = logging.getLogger("cxp.clickhouse")


class OutdatedTables(RuntimeError):
    """Tables exist without columns this version writes; the message holds the ALTER statements."""


class Backend(ABC):
    database: str  # where the tables live; insert() writes there
    cluster: Optional[str] = None  # set: the tables are Distributed over replicated ones (ddl.create_statements)

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        """Insert columnar data (one sequence per column, in ``columns`` order) into database.table."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple]: ...

    @abstractmethod
    def close(self) -> None: ...

    def create_tables(self) -> None:
        """Run the DDL unless every table exists already, then refuse tables that an older version created
        without today's columns. Skipping it matters on a cluster: ``ON CLUSTER`` DDL waits for every
        server, so a worker could not start while one replica is down."""
        present = self._columns()
        if {name for table in TABLES.values() for name in table_names(table, self.cluster)} - {t for t, _ in present}:
            for statement in create_statements(self.database, self.cluster):
                self.execute(statement)
            present = self._columns()
        fixes = missing_column_fixes(self.database, present, self.cluster)
        if fixes:
            raise OutdatedTables(
                f"ClickHouse tables in database {self.database} were created by an older cx-pipeline and lack "
                "columns this version writes. Add them, then start again:\n  " + ";\n  ".join(fixes) + ";")

    def _columns(self) -> set[tuple[str, str]]:
        """(table, column) of every table in the database."""
        return set(self.query(f"SELECT table, name FROM system.columns WHERE database = '{self.database}'"))


class NativeBackend(Backend):
    """A ClickHouse server: ``clickhouse://user:password@host:9000/database?name=value``.

    The URL's database (else ``database``) holds the tables. Query-string items are clickhouse-driver
    options (``connect_timeout``, ``send_receive_timeout``, ``compression``, ``secure``...) or server
    settings (``max_threads``...); the driver drops settings it does not know. The connection itself
    opens the user's default database, so the DDL can create the table database.

    ``alt_hosts`` (host:port) are the cluster's other servers. clickhouse-driver tries the URL's server
    and then each of them in order whenever it (re)connects: before a query, and after a failed one (the
    sink retries it); a refused or timed-out connection moves on to the next, and it stays on the one
    that answered.

    With ``cluster``, inserts into the Distributed tables are synchronous (``insert_distributed_sync``)
    and wait for a majority of the shard's replicas (``insert_quorum``, :func:`majority` of the smallest
    shard): of three replicas two, so an acked row is on two servers and inserts go on with one replica
    down; of two replicas both, so one down stops inserts. Queries use ``select_sequential_consistency``:
    a replica that lacks a write acked by the quorum refuses them rather than answer short, so a restore
    through a replica that is still catching up fails and is retried. Any of these settings in the URL wins.
    """

    def __init__(self, url: str, database: str = "cx", connect_timeout: float = 3.0, timeout: float = 10.0,
                 cluster: Optional[str] = None, password: Optional[str] = None, secure: bool = False,
                 ca_certs: Optional[str] = None, alt_hosts: Sequence[str] = ()):
        """``timeout`` bounds every wait on the socket (send, receive, ping), so a hung server raises
        instead of blocking for the driver's default 300 s, and one attempt waits at most that long on a
        server that stopped answering (:meth:`_run`). ``password`` (from a file) overrides the URL's;
        ``secure`` (TLS, as a clickhouses:// URL) and ``ca_certs`` add to the URL's options."""
        from clickhouse_driver import Client
        from clickhouse_driver.util.helpers import parse_url

        parsed = urlparse(url)
        self.database = parsed.path.strip("/") or database
        host, options = parse_url(parsed._replace(path="").geturl())
        if password is not None:
            options["password"] = password
        if secure:
            options["secure"] = True
        if ca_certs is not None:
            options["ca_certs"] = ca_certs
        if alt_hosts:
            options.setdefault("alt_hosts", ",".join(alt_hosts))
        self.client = Client(host, **options)
        given = parse_qs(parsed.query)  # timeouts in the URL win over the settings
        for name, value in (("connect_timeout", connect_timeout), ("send_receive_timeout", timeout),
                            ("sync_request_timeout", timeout)):
            if name not in given:
                setattr(self.client.connection, name, value)
        self.client.connection.disable_reconnect = True  # a failed ping ends the attempt: see _run
        self.cluster = cluster
        if cluster:
            self.client.settings.setdefault("insert_distributed_sync", 1)
            replicas = self._replicas_per_shard(cluster)
            if "insert_quorum" not in given and replicas > 1:
                self.client.settings["insert_quorum"] = majority(replicas)
                self.client.settings.setdefault("select_sequential_consistency", 1)

    def _replicas_per_shard(self, cluster: str) -> int:
        counts = self.client.execute("SELECT count() FROM system.clusters WHERE cluster = %(cluster)s "
                                     "GROUP BY shard_num", {"cluster": cluster})
        if not counts:
            raise ValueError(f"ClickHouse at {self.client.connection.host} has no cluster {cluster!r} "
                             "in its remote_servers")
        servers, known = sum(count for count, in counts), len(self.client.connection.hosts)
        if known < servers:
            log.warning("the worker knows %d of the %d servers of ClickHouse cluster %s: when %s is down it cannot "
                        "reach the others; list them in CXP_CLICKHOUSE_ALT_HOSTS", known, servers, cluster,
                        self.client.connection.hosts[0][0], extra={"cluster": cluster})
        return min(count for count, in counts)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """One statement as one attempt, waiting at most one timeout on a server that stopped answering.

        clickhouse-driver pings a reused connection before each statement and, when the ping fails,
        reconnects and waits for the server's hello: against a frozen server that is two timeouts before
        the failure shows. Here a connection the server closed (readable while idle) is dropped without a
        ping, so the driver opens a new one; on a live connection a ping that gets no answer within the
        timeout ends the attempt, and the next attempt (the caller's retry) starts on a new connection.
        """
        connection = self.client.connection
        if connection.connected:
            server = f"{connection.host}:{connection.port}"
            if _readable(connection.socket):
                connection.disconnect()
            elif not self._answers_ping(connection):
                raise TimeoutError(f"ClickHouse at {server} did not answer a ping within "
                                   f"{connection.sync_request_timeout:g} s (CXP_CLICKHOUSE_TIMEOUT)")
        return self.client.execute(*args, **kwargs)

    @staticmethod
    def _answers_ping(connection: Any) -> bool:
        try:
            if connection.ping():
                return True
        except Exception:
            connection.disconnect()
            raise
        connection.disconnect()
        return False

    def execute(self, sql: str) -> None:
        self._run(sql)

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        names = ", ".join(f"`{c}`" for c in columns)
        self._run(f"INSERT INTO {self.database}.{table} ({names}) VALUES", data, columnar=True)

    def query(self, sql: str) -> list[tuple]:
        return self._run(sql)

    def close(self) -> None:
        self.client.disconnect()


def _readable(sock: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it (or it is out of step)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def majority(replicas: int) -> int:
    """The insert quorum of a shard: more than half its replicas, so an acked row survives the loss of any
    minority and inserts go on while a minority is down."""
    return replicas // 2 + 1


class EmbeddedClickHouseMissing(RuntimeError):
    """chdb (the ``embedded`` extra) is not installed and no ClickHouse server is configured."""


def require_embedded() -> None:
    """Raise EmbeddedClickHouseMissing, saying how to fix it, unless chdb and pyarrow import."""
    try:
        import chdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise EmbeddedClickHouseMissing(
            f"embedded ClickHouse is not installed ({exc}) and no ClickHouse server is configured. Either install "
            "it: pip install 'cx-pipeline[embedded]' (./run demo and ./run test do), or point at a server: "
            "CXP_CLICKHOUSE_URL=clickhouse://user:password@host:9000/cx") from None


class ChdbBackend(Backend):
    """Embedded ClickHouse (chdb) persisted in a folder. chdb runs one engine per process, on one folder:
    a process can have one folder open, and a folder can be open in one process."""

    def __init__(self, path: Union[Path, str], database: str = "cx"):
        require_embedded()
        from chdb import session

        Path(path).mkdir(parents=True, exist_ok=True)
        self.session = session.Session(str(path))
        self.database = database

    def execute(self, sql: str) -> None:
        self.session.query(sql)

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        rows = _arrow_table(table, columns, data)  # noqa: F841 - chdb's Python() finds it by name
        names = ", ".join(f"`{c}`" for c in columns)
        self.session.query(f"INSERT INTO {self.database}.{table} ({names}) SELECT {names} FROM Python(rows)")

    def query(self, sql: str) -> list[tuple]:
        raw = self.session.query(sql, "JSONCompact").bytes()
        if not raw:
            return []
        result = json.loads(raw)
        convert = [_PARSE.get(_inner(c["type"]).split("(")[0]) for c in result["meta"]]
        return [tuple(v if f is None or v is None else f(v) for f, v in zip(convert, row)) for row in result["data"]]

    def close(self) -> None:
        self.session.close()


_PARSE = {"DateTime": datetime.fromisoformat, "Date": date.fromisoformat}  # JSON gives these as text


def _inner(kind: str) -> str:
    return kind[9:-1] if kind.startswith("Nullable(") else kind


def _arrow_table(table: str, columns: Sequence[str], data: Sequence[Sequence]):
    """Arrow arrays typed from the DDL, so an all-None or empty column still has its type. Strings go as
    binary: it takes str and bytes alike (raw dead-letter payloads stay byte for byte) and skips a UTF-8 check."""
    import pyarrow as pa

    arrow = {"String": pa.binary(), "DateTime": pa.int64(), "Int64": pa.int64(), "Int32": pa.int32(),
             "Int16": pa.int16(), "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt64": pa.uint64(),
             "Float64": pa.float64(), "Array(String)": pa.list_(pa.binary()), "Array(UInt64)": pa.list_(pa.uint64()),
             "Array(Int64)": pa.list_(pa.int64())}
    types = dict(TABLES[table].columns)
    arrays = [pa.array(values, type=arrow[_inner(types[name])]) for name, values in zip(columns, data)]
    return pa.Table.from_arrays(arrays, names=list(columns))


def open_backend(url: Optional[str], data_dir: Path, database: str = "cx", connect_timeout: float = 3.0,
                 timeout: float = 10.0, cluster: Optional[str] = None, **security: Any) -> Backend:
    """The server at url (its path, if any, names the database), else embedded chdb under
    data_dir/clickhouse. Runs the DDL, which is idempotent (ON CLUSTER with a cluster).
    ``security``: NativeBackend's password / secure / ca_certs, and its alt_hosts."""
    if cluster and not url:
        raise ValueError("a ClickHouse cluster needs a server: set clickhouse_url to one of its replicas")
    backend: Backend = NativeBackend(url, database, connect_timeout, timeout, cluster, **security) if url else \
        ChdbBackend(Path(data_dir) / "clickhouse", database)
    backend.create_tables()
    return backend


def connect(clickhouse: ClickHouseSettings, data_dir: Path) -> Backend:
    """:func:`open_backend` as the ``clickhouse_*`` settings say (credentials from the password file)."""
    return open_backend(clickhouse.url, data_dir, clickhouse.database, clickhouse.connect_timeout.seconds,
                        clickhouse.timeout.seconds, clickhouse.cluster, alt_hosts=clickhouse.alt_hosts,
                        **clickhouse_security(clickhouse))
