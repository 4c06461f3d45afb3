"""Batched, retried, columnar writes to ClickHouse. Synchronous: the worker runs it in a thread."""
from __future__ import annotations

import logging
import time

from sinks.clickhouse.backend import Backend
from sinks.clickhouse.ddl import COLUMNS
from sinks.prometheus import SINK_ERRORS, SINK_FLUSH_SECONDS, SINK_ROWS

log = logging.getLogger("cxp.sink.clickhouse")


class SinkError(RuntimeError):
    pass


class ClickHouseSink:
    """Buffers row tuples (in ``COLUMNS[table]`` order) and inserts each table's rows as one columnar batch.

    A failed insert is retried with exponential backoff; if every retry fails, :class:`SinkError` is
    raised and the rows stay buffered, so the caller can try again later and nothing is lost.
    Replaying rows is harmless: the tables are ReplacingMergeTree (see :mod:`sinks.clickhouse.ddl`).
    """

    def __init__(self, backend: Backend, max_retries: int = 5, retry_backoff_s: float = 0.2):
        self.backend = backend
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._buffers: dict[str, list[tuple]] = {}

    def add(self, table: str, rows: list[tuple]) -> None:
        if table not in COLUMNS:
            raise KeyError(f"unknown table {table!r}; known: {', '.join(COLUMNS)}")
        self._buffers.setdefault(table, []).extend(rows)

    def pending(self) -> int:
        return sum(len(rows) for rows in self._buffers.values())

    def take(self) -> dict[str, list[tuple]]:
        """Hand over everything buffered (for a write elsewhere while new rows keep arriving)."""
        batch, self._buffers = self._buffers, {}
        return batch

    def write(self, batch: dict[str, list[tuple]]) -> dict[str, int]:
        """Insert a taken batch. Tables are removed from it as they succeed, so a retry after
        SinkError writes only what is left."""
        written = {}
        for table in list(batch):
            rows = batch[table]
            if rows:
                self._insert(table, rows)
                written[table] = len(rows)
            del batch[table]
        return written

    def flush(self) -> dict[str, int]:
        """Write everything buffered; on SinkError the unwritten rows stay buffered."""
        batch = self.take()
        try:
            return self.write(batch)
        finally:
            for table, rows in batch.items():
                self._buffers[table] = rows + self._buffers.get(table, [])

    def _insert(self, table: str, rows: list[tuple]) -> None:
        columns = COLUMNS[table]
        data = [list(column) for column in zip(*rows)]
        started = time.perf_counter()
        delay = self.retry_backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                self.backend.insert(table, columns, data)
                break
            except Exception as exc:  # noqa: BLE001 - any driver or server error is retried
                SINK_ERRORS.labels(table).inc()
                if attempt == self.max_retries:
                    raise SinkError(f"insert of {len(rows)} rows into {self.backend.database}.{table} failed "
                                    f"{attempt + 1} times; last error: {exc}") from exc
                log.warning("clickhouse insert failed, retrying",
                            extra={"table": table, "rows": len(rows), "attempt": attempt + 1, "error": str(exc)})
                time.sleep(delay)
                delay *= 2
        SINK_FLUSH_SECONDS.labels(table).observe(time.perf_counter() - started)
        SINK_ROWS.labels(table).inc(len(rows))
