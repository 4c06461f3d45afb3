"""Periodic metric_snapshots rows: the current value of every survey metric, for history in ClickHouse."""
from __future__ import annotations

import time
from typing import Any

from agents.ingest import Delivery
from pipeline.processor import Processor
from pipeline.surveys import ces, csat, nps, nps_margin_of_error

METRICS = {"NPS": (("nps", nps), ("nps_margin_of_error", nps_margin_of_error)), "CSAT": (("csat", csat),), "CES": (("ces", ces),)}


def snapshot_rows(processor: Processor, ts: int) -> list[tuple]:
    """(ts, tenant, metric, window, value, n) for every metric with at least one response."""
    rows = []
    for (tenant, kind, window), totals in sorted(processor.survey_totals().items()):
        if totals.n:
            for metric, formula in METRICS[kind]:
                rows.append((ts, tenant, metric, window, formula(totals), totals.n))
    return rows


def register(app: Any, processor: Processor, delivery: Delivery, interval: float) -> None:
    @app.timer(interval=interval)
    async def snapshot() -> None:
        rows = snapshot_rows(processor, int(time.time()))
        if rows:
            delivery.add_rows("metric_snapshots", rows)
