"""GET /progress (PipelineMetrics.progress): the same numbers /metrics renders, without running any
scrape-time collector (the metric cores' gauges), so polling it costs nothing per customer."""
from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics.base import Output
from sinks.prometheus import PipelineMetrics


class CountingCollector:
    """Stands where CoreCollector does: counts how often a scrape asks it for its families."""

    def __init__(self) -> None:
        self.calls = 0

    def describe(self):
        return iter(())

    def collect(self):
        self.calls += 1
        return iter(())


def rendered_totals(metrics: PipelineMetrics) -> dict[str, dict[tuple, float]]:
    """sample name -> {label items: value}, parsed from the text Prometheus would scrape."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_progress_equals_the_rendered_counters_and_skips_the_core_collectors():
    registry = CollectorRegistry(auto_describe=True)
    metrics = PipelineMetrics(registry)
    cores = CountingCollector()
    registry.register(cores)
    for batch in range(3):
        out = Output()
        out.count("cxp_events_consumed", ("web",), 500 + batch)
        out.count("cxp_events_consumed", ("crm",), 20)
        out.count("cxp_events_processed", ("web",), 480 + batch)
        out.count("cxp_events_processed", ("crm",), 18)
        out.count("cxp_events_duplicate", ("web",), 15)
        out.count("cxp_events_rejected", ("web", "schema"), 5)
        out.count("cxp_events_rejected", ("crm", "schema"), 2)
        out.count("cxp_events_rejected", ("crm", "too_late"), 1)
        metrics.apply(out)
    metrics.sink_rows.labels("events").inc(1_499)
    metrics.sink_rows.labels("survey_responses").inc(41)
    metrics.oldest_unacked.set_function(lambda: 2.5)

    progress = metrics.progress()
    assert cores.calls == 0
    text = rendered_totals(metrics)
    assert cores.calls == 1  # the render did run it: the oracle is the full page
    for key in ("consumed", "processed", "duplicate", "rejected"):
        assert progress["events"][key] == sum(text[f"cxp_events_{key}_total"].values()), key
    assert progress["events"] == {"consumed": 1_563, "processed": 1_497, "duplicate": 45, "rejected": 24}
    assert progress["sink_rows"] == {dict(labels)["table"]: value for labels, value in text["cxp_sink_rows_total"].items()}
    assert progress["sink_rows"] == {"events": 1_499, "survey_responses": 41}
    assert progress["oldest_unacked_seconds"] == text["cxp_oldest_unacked_seconds"][()] == 2.5


def test_progress_of_a_fresh_worker_is_all_zero():
    metrics = PipelineMetrics(CollectorRegistry(auto_describe=True))
    assert metrics.progress() == {"events": {"consumed": 0, "processed": 0, "duplicate": 0, "rejected": 0},
                                  "sink_rows": {}, "oldest_unacked_seconds": 0}
