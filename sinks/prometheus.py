"""Every Prometheus series cx-pipeline exports (SPEC §6): the one place for metric names.

Pipeline counters are updated once per batch. The CX gauges are computed at scrape time from the
worker's state by :class:`StateCollector`, so no per-event metric work is done. Counts are exported
next to every ratio, so sums over workers stay right (the recording rules in deploy/ do that).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pipeline.surveys import CLASSES, Totals, ces, csat, nps, nps_margin_of_error

disable_created_metrics()  # *_created series double the scrape size and no rule here uses them

EVENTS_CONSUMED = Counter("cxp_events_consumed", "Events consumed (a batch message of n events counts n).", ["source"])
EVENTS_PROCESSED = Counter("cxp_events_processed", "Valid, new events handed to the agents.", ["source"])
EVENTS_REJECTED = Counter("cxp_events_rejected", "Events dead-lettered, by reason code.", ["source", "reason"])
EVENTS_DUPLICATE = Counter("cxp_events_duplicate", "Events dropped as duplicates within the dedup horizon.", ["source"])
SINK_ROWS = Counter("cxp_sink_rows", "Rows written durably to a sink table.", ["table"])
SINK_ERRORS = Counter("cxp_sink_errors", "Failed sink flush attempts (each retry counts).", ["table"])
SINK_FLUSH_SECONDS = Histogram(
    "cxp_sink_flush_seconds", "Time to flush one batch to a sink table, retries included.", ["table"]
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render() -> bytes:
    """The text exposition of every registered series."""
    return generate_latest(REGISTRY)


class StateCollector(Collector):
    """Gauges derived from the worker's state at scrape time.

    survey_totals: () -> {(tenant, kind, window): Totals} over the partitions this worker owns;
    source_clocks: () -> {source: largest event time in ms} for the event-time lag.
    """

    def __init__(self, survey_totals: Callable[[], dict], source_clocks: Callable[[], dict]):
        self.survey_totals = survey_totals
        self.source_clocks = source_clocks

    def collect(self) -> Iterable[Metric]:
        totals: dict[tuple[str, str, str], Totals] = self.survey_totals()
        responses = GaugeMetricFamily("cx_survey_responses", "Survey responses in the window, by class.",
                                      labels=["tenant", "kind", "window", "class"])
        # A gauge may not end in _sum (promtool), so the windowed score sum and count are exported as
        # the _sum and _count of a summary: the series are cx_survey_score_sum{tenant,kind,window}, as
        # SPEC §6 names them, and cx_survey_score_count. Both are windowed values, not running totals.
        score = SummaryMetricFamily("cx_survey_score", "Survey scores in the window: sum and count.",
                                    labels=["tenant", "kind", "window"])
        gauges = {
            "nps": GaugeMetricFamily("cx_nps", "Net Promoter Score (-100..100) in the window.", labels=["tenant", "window"]),
            "moe": GaugeMetricFamily("cx_nps_margin_of_error", "95 % margin of error of cx_nps, in NPS points.",
                                     labels=["tenant", "window"]),
            "csat": GaugeMetricFamily("cx_csat", "CSAT: percent of responses scoring 4 or 5.", labels=["tenant", "window"]),
            "ces": GaugeMetricFamily("cx_ces", "CES: mean effort score (1..7).", labels=["tenant", "window"]),
        }
        for (tenant, kind, window), t in sorted(totals.items()):
            for name, count in zip(CLASSES[kind], t.classes):
                responses.add_metric([tenant, kind, window, name], count)
            score.add_metric([tenant, kind, window], count_value=t.n, sum_value=t.score_sum)
            if not t.n:
                continue
            if kind == "NPS":
                gauges["nps"].add_metric([tenant, window], nps(t))
                gauges["moe"].add_metric([tenant, window], nps_margin_of_error(t))
            elif kind == "CSAT":
                gauges["csat"].add_metric([tenant, window], csat(t))
            else:
                gauges["ces"].add_metric([tenant, window], ces(t))
        lag = GaugeMetricFamily("cxp_event_time_lag_seconds", "Wall clock minus the newest processed event time.",
                                labels=["source"])
        now = time.time()
        for source, clock_ms in sorted(self.source_clocks().items()):
            lag.add_metric([source], max(now - clock_ms / 1000, 0.0))
        yield responses
        yield score
        yield from gauges.values()
        yield lag
