"""Read back what the worker needs to resume partitions: ClickHouse is the durable copy of its state.

Runs on partition assignment, after the previous owner flushed (the revoke barrier of a rebalance),
so the rows read here are everything that owner made durable. Each partition's stream time (its newest
event_time) and the dedup ids come from ``events`` (the commit marker of every flush); each metric core
declares what else it needs (:class:`~pipeline.metrics.base.Restore`), which :func:`restore_sql` turns
into a query whose time span ends at each partition's own clock.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

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


def restore_sql(spec: Restore, db: str, clocks: Mapping[int, int]) -> str:
    """The query of one restore over the partitions of ``clocks`` (partition -> stream time):
    ``kafka_partition`` first, then ``spec.columns``."""
    for column in (spec.table, *spec.columns, *([spec.time] if spec.time else [])):
        check_identifier("restore column", column)
    if spec.time:
        where = ["(" + " OR ".join(f"(kafka_partition = {int(p)} AND {spec.time} > {int(clock - spec.span_ms)})"
                                   for p, clock in sorted(clocks.items())) + ")"]
    else:
        where = [f"kafka_partition IN ({', '.join(str(int(p)) for p in sorted(clocks))})"]
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


def read_partitions(backend: Backend, partitions: Sequence[int], cores: Sequence[MetricCore],
                    dedup_horizon_ms: int) -> Restored:
    """Everything needed to rebuild ``partitions``."""
    db, listed = backend.database, ", ".join(str(int(p)) for p in partitions)
    restored = Restored(list(partitions))
    clocks = {int(p): 0 for p in partitions}
    for partition, source, event_ms in backend.query(
            f"SELECT kafka_partition, source, max(event_ms) FROM {db}.events WHERE kafka_partition IN ({listed}) "
            "GROUP BY kafka_partition, source"):
        clocks[int(partition)] = max(clocks[int(partition)], int(event_ms))
        restored.clocks.setdefault(int(partition), {})[source] = int(event_ms)
        restored.source_clocks[source] = max(restored.source_clocks.get(source, 0), int(event_ms))
    ids: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    recent = " OR ".join(f"(kafka_partition = {p} AND event_ms > {clock - dedup_horizon_ms})" for p, clock in clocks.items())
    for partition, key, event_ms in backend.query(f"SELECT kafka_partition, id_hash, event_ms FROM {db}.events WHERE {recent}"):
        hashes, times = ids[int(partition)]
        hashes.append(int(key))
        times.append(int(event_ms))
    restored.ids = dict(ids)
    for core in cores:
        by_name: dict[str, dict[int, list]] = {}
        for spec in core.restores():
            row_type = spec.row_type()
            by_partition: dict[int, list] = defaultdict(list)
            ends = clocks if spec.clock_source is None else \
                {p: restored.clocks.get(p, {}).get(spec.clock_source, 0) for p in clocks}
            for row in backend.query(restore_sql(spec, db, ends)):
                by_partition[int(row[0])].append(row_type(*row[1:]))
            by_name[spec.name] = dict(by_partition)
        restored.core_rows.append(by_name)
    return restored
