"""/metrics text (sinks.prometheus.TextFormat) is byte for byte what prometheus_client's own
``generate_latest`` writes for the same registry, on its first render and on later ones that reuse the
escaped label sets while samples come, go and change value."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from benchmarks.harness import batch_records, make_events, processor_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec
from sinks.prometheus import CoreCollector, PipelineMetrics, TextFormat, instruments_of


class Families:
    """A collector returning whatever families a test puts in."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self):
        return list(self.families)


def odd_families(values: list[str], numbers: list[float]) -> list[Metric]:
    gauge = GaugeMetricFamily("cx_odd", 'doc with \\ backslash,\nnewline and "quotes"', labels=["tenant", "b"])
    for i, (value, number) in enumerate(zip(values, numbers)):
        gauge.add_metric([value, str(i)], number)
    stamped = Metric("cx_stamped", "samples with timestamps and an OpenMetrics-only suffix", "gauge")
    stamped.add_sample("cx_stamped", {"z": "1", "a": "2"}, 1.5, timestamp=1_700_000_000.123)
    stamped.add_sample("cx_stamped_created", {}, 1_700_000_000.0)
    stamped.add_sample("cx_stamped_gsum", {"k": "v"}, 3.0)
    odd_names = Metric("cx.dotted name", "a name outside the legacy charset", "unknown")
    odd_names.add_sample("cx.dotted name", {"label.with dot": "x"}, 2.0)
    info = Metric("cx_build", "info and stateset types are munged", "info")
    info.add_sample("cx_build_info", {"version": "1"}, 1.0)
    return [gauge, stamped, odd_names, info]


values = st.lists(st.text(max_size=6), min_size=0, max_size=6)
numbers = st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-10**9, 10**9).map(float)), min_size=6, max_size=6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(values, numbers), min_size=1, max_size=4))
def test_same_bytes_as_generate_latest_across_renders(pages):
    registry = CollectorRegistry()
    counter = Counter("cx_things", "things", ["kind"], registry=registry)
    histogram = Histogram("cx_seconds", "time", ["kind"], buckets=(0.1, 1.0, 1e7), registry=registry)
    gauge = Gauge("cx_plain", "plain gauge", registry=registry)
    families = Families()
    registry.register(families)
    text = TextFormat()
    for page_values, page_numbers in pages:  # one render per page, label sets changing between them
        families.families = odd_families(page_values, page_numbers)
        for value, number in zip(page_values, page_numbers):
            counter.labels(value).inc(abs(number) if number == number and abs(number) != float("inf") else 1)
            histogram.labels(value).observe(number)
        gauge.set(page_numbers[0])
        assert text.render(registry.collect()) == generate_latest(registry)


def test_a_worker_page_after_every_core_ran():
    codec = Codec(BundledRegistry())
    processor = processor_for(codec)
    metrics = PipelineMetrics(CollectorRegistry(), instruments_of(processor.cores))
    metrics.registry.register(CoreCollector(processor, now=lambda: 1_800_000_000.0))
    records = batch_records(make_events(6000, 300), codec, per_message=100)
    for i in range(0, len(records), 10):
        metrics.apply(processor.process(records[i:i + 10], 1_800_000_000_000))
        assert metrics.render() == generate_latest(metrics.registry)
    assert metrics.render().count(b"\n") > 300  # every core's families are on it


def test_a_line_kept_from_the_last_render_is_not_reused_for_a_value_that_prints_differently():
    registry, families, text = CollectorRegistry(), Families(), TextFormat()
    registry.register(families)
    for values in ([0.0, 1.0, 5.0], [-0.0, 1, 5.0], [-0.0, 1.0, 5.0 + 1e-12], [0.0, float("nan"), 5.0], [0.0, 2.0]):
        gauge = GaugeMetricFamily("cx_signs", "zeros of either sign, equal floats and ints", labels=["k"])
        for i, value in enumerate(values):
            gauge.add_metric([str(i)], value)
        families.families = [gauge]
        assert text.render(registry.collect()) == generate_latest(registry)
