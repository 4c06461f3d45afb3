"""Read back what the worker needs to resume partitions: ClickHouse is the durable copy of its state.

Runs on partition assignment, after the previous owner flushed (the revoke barrier of a rebalance),
so the rows read here are everything that owner made durable. The event-time clock and the dedup ids
come from ``events`` (the commit marker of every flush); each metric core declares what else it needs
(:class:`~pipeline.metrics.base.Restore`), which :func:`restore_sql` turns into a query.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from pipeline.config import check_identifier
from pipeline.metrics.base import Condition, Equals, MetricCore, NoneOf, NotNull, OneOf, Restore, Restored
from sinks.clickhouse.backend import Backend
from sinks.clickhouse.queries import sql_string


def _literal(value: object) -> str:
    return str(int(value)) if isinstance(value, int) else sql_string(str(value))


def _condition(condition: Condition) -> str:
    column = check_identifier("restore column", condition.column)
    if isinstance(condition, Equals):
        return f"{column} = {_literal(condition.value)}"
    if isinstance(condition, (OneOf, NoneOf)):
        listed = ", ".join(_literal(value) for value in condition.values)
        return f"{column} {'IN' if isinstance(condition, OneOf) else 'NOT IN'} ({listed})"
    if isinstance(condition, NotNull):
        return f"{column} IS NOT NULL"
    raise TypeError(f"unknown restore condition {condition!r}")


def restore_sql(spec: Restore, db: str, partitions: Sequence[int], clock_ms: int) -> str:
    """The query of one restore: ``kafka_partition`` first, then ``spec.columns``."""
    for column in (spec.table, *spec.columns, *([spec.time] if spec.time else [])):
        check_identifier("restore column", column)
    where = [f"kafka_partition IN ({', '.join(str(int(p)) for p in partitions)})"]
    if spec.time:
        where.append(f"{spec.time} > {int(clock_ms - spec.span_ms)}")
    where += [_condition(condition) for condition in spec.where]
    source = f"{db}.{spec.table}{' FINAL' if spec.final else ''} WHERE {' AND '.join(where)}"
    newest = spec.newest
    if newest is None:
        return f"SELECT kafka_partition, {', '.join(spec.columns)} FROM {source}"
    group = ["kafka_partition", *newest.keys] + ([f"intDiv({newest.by}, {int(newest.bucket_ms)})"]
                                                   if newest.bucket_ms else [])
    columns = [column if column in newest.keys else f"max({column})" if column == newest.by
               else f"argMax({column}, {newest.by})" for column in spec.columns]
    return f"SELECT kafka_partition, {', '.join(columns)} FROM {source} GROUP BY {', '.join(group)}"


def read_partitions(backend: Backend, partitions: Sequence[int], cores: Sequence[MetricCore], clock_ms: int,
                    dedup_horizon_ms: int) -> Restored:
    """Everything needed to rebuild ``partitions``; ``clock_ms`` is the worker's clock so far."""
    db, listed = backend.database, ", ".join(str(int(p)) for p in partitions)
    restored = Restored(list(partitions))
    restored.source_clocks = {source: int(ms) for source, ms in backend.query(
        f"SELECT source, max(event_ms) FROM {db}.events WHERE kafka_partition IN ({listed}) GROUP BY source")}
    clock = max(clock_ms, restored.clock_ms)
    ids: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for partition, key, event_ms in backend.query(
            f"SELECT kafka_partition, id_hash, event_ms FROM {db}.events "
            f"WHERE kafka_partition IN ({listed}) AND event_ms > {clock - dedup_horizon_ms}"):
        hashes, times = ids[int(partition)]
        hashes.append(int(key))
        times.append(int(event_ms))
    restored.ids = dict(ids)
    for core in cores:
        by_name: dict[str, dict[int, list]] = {}
        for spec in core.restores():
            row_type = spec.row_type()
            by_partition: dict[int, list] = defaultdict(list)
            for row in backend.query(restore_sql(spec, db, partitions, clock)):
                by_partition[int(row[0])].append(row_type(*row[1:]))
            by_name[spec.name] = dict(by_partition)
        restored.core_rows.append(by_name)
    return restored
