"""Batched, retried, columnar writes to ClickHouse. Synchronous: the worker runs it in a thread."""
from __future__ import annotations

import logging
import time
from typing import Optional

from sinks.clickhouse.backend import Backend
from sinks.clickhouse.ddl import COLUMNS
from sinks.prometheus import SINK_ERRORS, SINK_FLUSH_SECONDS, SINK_ROWS

log = logging.getLogger("cxp.sink.clickhouse")


class SinkError(RuntimeError):
    pass


class ClickHouseSink:
    """Buffers row tuples (in ``COLUMNS[table]`` order) and inserts each table's rows as one columnar batch.

    A failed insert is retried with exponential backoff (``retry_backoff_s``, doubled per attempt); if
    ``max_retries`` retries fail too, :class:`SinkError` is raised and the rows stay buffered, so nothing
    is lost and a later flush tries again. An attempt that failed after the server had stored the rows
    leads to the rows being written twice, which is harmless: the tables are ReplacingMergeTree and
    the documented queries read them with FINAL (see :mod:`sinks.clickhouse.ddl`).

    ``database`` is only a check: rows go to the backend's database, the one the worker also reads its
    state back from, so a sink may not name another.
    """

    def __init__(self, backend: Backend, max_retries: int = 5, retry_backoff_s: float = 0.2, *,
                 database: Optional[str] = None):
        if database is not None and database != backend.database:
            raise ValueError(f"sink database {database!r} differs from the backend's {backend.database!r}")
        self.backend = backend
        self.database = backend.database
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._buffers: dict[str, list[tuple]] = {}

    def add(self, table: str, rows: list[tuple]) -> None:
        columns = COLUMNS.get(table)
        if columns is None:
            raise KeyError(f"unknown table {table!r}; known: {', '.join(COLUMNS)}")
        if set(map(len, rows)) - {len(columns)}:  # caught at the agent that built the row, not at flush time
            bad = next(row for row in rows if len(row) != len(columns))
            raise ValueError(f"{table} rows have {len(columns)} columns {columns}; got {len(bad)}: {bad!r}")
        self._buffers.setdefault(table, []).extend(rows)

    def pending(self) -> int:
        return sum(len(rows) for rows in self._buffers.values())

    def flush(self) -> dict[str, int]:
        """Write everything buffered; returns rows written per table. On SinkError the unwritten
        rows stay buffered (tables already written are not written again)."""
        batch = self.take()
        try:
            return self.write(batch)
        finally:
            for table, rows in batch.items():
                self._buffers[table] = rows + self._buffers.get(table, [])

    def take(self) -> dict[str, list[tuple]]:
        """Hand over everything buffered, for a write in another thread while new rows keep arriving."""
        batch, self._buffers = self._buffers, {}
        return batch

    def write(self, batch: dict[str, list[tuple]]) -> dict[str, int]:
        """Insert a taken batch. Tables are removed from it as they succeed, so after SinkError the
        same batch can be written again and only what is left goes."""
        written = {}
        for table in list(batch):
            rows = batch[table]
            if rows:
                self._insert(table, rows)
                written[table] = len(rows)
            del batch[table]
        return written

    def _insert(self, table: str, rows: list[tuple]) -> None:
        data = list(zip(*rows))  # columnar: one tuple per column
        started = time.perf_counter()
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    self.backend.insert(table, COLUMNS[table], data)
                    break
                except Exception as exc:  # noqa: BLE001 - any driver or server error is retried
                    SINK_ERRORS.labels(table).inc()
                    if attempt == self.max_retries:
                        raise SinkError(f"insert of {len(rows)} rows into {self.database}.{table} failed "
                                        f"{attempt + 1} times, rows kept for the next flush; last error: "
                                        f"{type(exc).__name__}: {exc}") from exc
                    delay = self.retry_backoff_s * 2 ** attempt
                    log.warning("clickhouse insert failed, retrying", extra={
                        "table": table, "rows": len(rows), "attempt": attempt + 1, "retry_in_s": delay, "error": str(exc)})
                    time.sleep(delay)
        finally:
            SINK_FLUSH_SECONDS.labels(table).observe(time.perf_counter() - started)
        SINK_ROWS.labels(table).inc(len(rows))
