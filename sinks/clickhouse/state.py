"""Read back what the worker needs to resume partitions: ClickHouse is the durable copy of its state.

Runs on partition assignment, after the previous owner flushed (the revoke barrier of a rebalance),
so the rows read here are everything that owner made durable. The event-time clock and the dedup ids
come from ``events`` (the commit marker of every flush); each metric core names its own queries.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from pipeline.metrics.base import MetricCore
from sinks.clickhouse.backend import Backend


@dataclass
class Restored:
    partitions: list[int]
    source_clocks: dict[str, int] = field(default_factory=dict)
    ids: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)  # partition -> (id hashes, event ms)
    core_rows: list[dict[str, dict[int, list[tuple]]]] = field(default_factory=list)  # per core: query -> partition -> rows

    @property
    def clock_ms(self) -> int:
        return max(self.source_clocks.values(), default=0)

    def row_count(self) -> int:
        return sum(len(hashes) for hashes, _ in self.ids.values()) + sum(
            len(rows) for by_query in self.core_rows for by_partition in by_query.values() for rows in by_partition.values())


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
