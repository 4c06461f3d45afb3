"""Periodic metric_snapshots rows: the current value of every core's metrics, for history in ClickHouse."""
from __future__ import annotations

import time
from typing import Any

from pipeline.metrics.base import Output
from pipeline.processor import Processor
from pipeline.tables import ROWS
from sinks.delivery import Delivery

SnapshotRow = ROWS["metric_snapshots"]


def snapshot_rows(processor: Processor, ts: int) -> list[tuple]:
    """One row per (tenant, metric, window) value of every core, over the owned partitions, which the
    row names: docs/metrics.md says how to combine the rows of several workers."""
    states = processor.owned_states()
    clocks = [state.clock_ms for state in states]
    partitions = ",".join(map(str, processor.owned_partitions()))
    return [SnapshotRow(ts=ts, tenant=tenant, metric=metric, window=window, value=value, n=n, partitions=partitions)
            for index, core in enumerate(processor.cores)
            for tenant, metric, window, value, n in core.snapshot([s.cores[index] for s in states], clocks)]


def register(app: Any, processor: Processor, delivery: Delivery, interval: float) -> None:
    @app.timer(interval=interval)
    async def snapshot() -> None:
        rows = snapshot_rows(processor, int(time.time()))
        if rows:
            out = Output()
            out.rows["metric_snapshots"].extend(rows)
            delivery.add(out, [])
