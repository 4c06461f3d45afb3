"""Two ClickHouse backends behind one interface: a server over the native protocol, or embedded chdb.

Inserts are columnar (one sequence per column): clickhouse-driver's ``columnar=True`` for a server,
a typed Arrow table for chdb. Neither goes through per-row SQL text.
"""
from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from sinks.clickhouse.ddl import TABLES, create_statements


class Backend(ABC):
    database: str

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        """Insert columnar data (one sequence per column) into database.table."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple]: ...

    @abstractmethod
    def close(self) -> None: ...

    def create_tables(self) -> None:
        for statement in create_statements(self.database):
            self.execute(statement)


class NativeBackend(Backend):
    """A ClickHouse server: clickhouse://user:password@host:9000/database?setting=value.

    The database of the URL (else ``database``) holds the tables; the session itself connects to
    ``default`` so that the database can be created by the DDL.
    """

    def __init__(self, url: str, database: str = "cx"):
        from clickhouse_driver import Client

        self.client = Client.from_url(url)
        self.database = urlparse(url).path.strip("/") or database
        self.client.connection.database = "default"

    def execute(self, sql: str) -> None:
        self.client.execute(sql)

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        names = ", ".join(f"`{c}`" for c in columns)
        self.client.execute(f"INSERT INTO {self.database}.{table} ({names}) VALUES", data, columnar=True)

    def query(self, sql: str) -> list[tuple]:
        return [tuple(row) for row in self.client.execute(sql)]

    def close(self) -> None:
        self.client.disconnect()


class ChdbBackend(Backend):
    """Embedded ClickHouse (chdb) persisted in a folder. One process may open a folder at a time."""

    def __init__(self, path: Path, database: str = "cx"):
        from chdb import session

        Path(path).mkdir(parents=True, exist_ok=True)
        self.session = session.Session(str(path))
        self.database = database
        self._lock = threading.Lock()  # a chdb session is not safe for concurrent queries

    def execute(self, sql: str) -> None:
        with self._lock:
            self.session.query(sql)

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence]) -> None:
        arrow_table = _arrow_table(table, columns, data)  # noqa: F841 - read by name by chdb's Python()
        names = ", ".join(f"`{c}`" for c in columns)
        with self._lock:
            self.session.query(f"INSERT INTO {self.database}.{table} ({names}) SELECT {names} FROM Python(arrow_table)")

    def query(self, sql: str) -> list[tuple]:
        with self._lock:
            result = self.session.query(sql, "JSONCompact")
        raw = result.bytes()
        return [tuple(row) for row in json.loads(raw)["data"]] if raw else []

    def close(self) -> None:
        self.session.close()


def _arrow_type(clickhouse_type: str, sample: object):
    import pyarrow as pa

    inner = clickhouse_type[9:-1] if clickhouse_type.startswith("Nullable(") else clickhouse_type
    if inner == "String":
        return pa.binary() if isinstance(sample, bytes) else pa.string()
    return {
        "DateTime": pa.int64(), "Int64": pa.int64(), "Int32": pa.int32(), "Int16": pa.int16(), "UInt8": pa.uint8(),
        "UInt16": pa.uint16(), "UInt64": pa.uint64(), "Float64": pa.float64(), "Array(String)": pa.list_(pa.string()),
    }[inner]


def _arrow_table(table: str, columns: Sequence[str], data: Sequence[Sequence]):
    import pyarrow as pa

    types = dict(TABLES[table].columns)
    arrays = {}
    for name, values in zip(columns, data):
        sample = next((v for v in values if v is not None), None)
        arrays[name] = pa.array(values, type=_arrow_type(types[name], sample))
    return pa.table(arrays)


def open_backend(url: Optional[str], data_dir: Path, database: str = "cx") -> Backend:
    """The server at url, else embedded chdb under data_dir/clickhouse; tables are created if missing."""
    if url:
        backend: Backend = NativeBackend(url, database)
    else:
        backend = ChdbBackend(Path(data_dir) / "clickhouse", database)
    backend.create_tables()
    return backend
