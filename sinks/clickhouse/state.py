"""Read back what the worker needs to resume partitions: ClickHouse is the durable copy of its state.

Runs on partition assignment, after the previous owner flushed (the revoke barrier of a rebalance),
so the rows read here are everything that owner made durable. The event-time clock and the dedup ids
come from ``events`` (the commit marker of every flush); each metric core names its own queries.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from pipeline.metrics.base import MetricCore, Restored
from sinks.clickhouse.backend import Backend


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
        by_query: dict[str, dict[int, list[tuple]]] = {}
        for query in core.restore_queries():
            by_partition: dict[int, list[tuple]] = defaultdict(list)
            sql = query.sql.format(db=db, partitions=listed, since_ms=clock - query.span_ms)
            for row in backend.query(sql):
                by_partition[int(row[0])].append(tuple(row[1:]))
            by_query[query.name] = dict(by_partition)
        restored.core_rows.append(by_query)
    return restored
