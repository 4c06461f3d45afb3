"""Columnar inserts of row tuples into ClickHouse: one attempt each. Synchronous: the worker runs it in a thread.

Retrying, backoff and pausing the input belong to the delivery path (:mod:`sinks.delivery`), the one
place with a retry policy. A failed or timed-out insert raises :class:`SinkError`; an insert that
failed after the server stored the rows leads to the rows being written twice, which is harmless:
the tables are ReplacingMergeTree and the documented queries read them with FINAL.
"""
from __future__ import annotations

import os
from typing import Sequence

from pipeline.tables import COLUMNS
from sinks.clickhouse.backend import Backend

# Test hook for crash-consistency tests: exit the process right after the first successful insert
# into this table, as a crash between two inserts of one flush would.
FAULT_EXIT_AFTER_INSERT = "CXP_FAULT_EXIT_AFTER_INSERT"


class SinkError(RuntimeError):
    pass


class ClickHouseSink:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.database = backend.database
        self._exit_after = os.environ.get(FAULT_EXIT_AFTER_INSERT)

    def insert(self, table: str, rows: Sequence[tuple]) -> None:
        """Insert rows (tuples in ``COLUMNS[table]`` order) as one columnar batch."""
        columns = COLUMNS.get(table)
        if columns is None:
            raise KeyError(f"unknown table {table!r}; known: {', '.join(COLUMNS)}")
        if set(map(len, rows)) - {len(columns)}:
            bad = next(row for row in rows if len(row) != len(columns))
            raise ValueError(f"{table} rows have {len(columns)} columns {columns}; got {len(bad)}: {bad!r}")
        try:
            self.backend.insert(table, columns, list(zip(*rows)))
        except Exception as exc:  # noqa: BLE001 - any driver, socket or server error is the sink's failure
            raise SinkError(f"insert of {len(rows)} rows into {self.database}.{table} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
        if self._exit_after == table:
            os._exit(86)
