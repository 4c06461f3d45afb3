"""/metrics text (sinks.prometheus.TextFormat) is byte for byte what prometheus_client's own
``generate_latest`` writes for the same registry, on its first render and on later ones that reuse the
escaped label sets while samples come, go and change value."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from benchmarks.harness import batch_records, make_events, processor_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec
from sinks.prometheus import AppliedInstruments, CoreCollector, PipelineMetrics, TextFormat, _go, instruments_of


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


def test_a_sample_that_moves_to_a_family_of_its_own_at_a_place_where_another_stood():
    registry, families, text = CollectorRegistry(), Families(), TextFormat()
    registry.register(families)
    plain, created, gsum = ("cx_mixed", {"a": "1"}), ("cx_mixed_created", {}), ("cx_mixed_gsum", {"b": "2"})
    for order in ([plain, created, gsum], [created, plain, gsum], [created, gsum, plain], [plain, gsum], [plain, plain],
                  [gsum, created, plain, plain]):
        mixed = Metric("cx_mixed", "OpenMetrics-only samples among the others", "gauge")
        for i, (name, labels) in enumerate(order):
            mixed.add_sample(name, {**labels, **({"i": str(i)} if name == "cx_mixed" else {})}, float(i))
        families.families = [mixed]
        assert text.render(registry.collect()) == generate_latest(registry)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(allow_nan=True), st.integers(-10**20, 10**20), st.floats(-2e6, 2e6),
                 st.sampled_from([1e6, -1e6, 999_999.9999999999, 1_000_000, -1_000_000, 999_999, 0, -0.0, 1e-7])))
def test_a_value_is_written_as_prometheus_client_writes_it(value):
    assert _go(value) == floatToGoString(value)


def parsed(text: bytes) -> dict[tuple, float]:
    """(sample name, label items) -> value, from a page's text."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


class Uncached:
    """The oracle page: every instrument collected afresh and the ``collect`` of new core objects (configured
    alike, so holding nothing from earlier scrapes) run over the owned states, nothing kept."""

    def __init__(self, metrics: PipelineMetrics, processor, codec: Codec) -> None:
        self.metrics, self.processor, self.codec = metrics, processor, codec

    def collect(self):
        for instrument in self.metrics.applied.instruments.values():
            yield from instrument.collect()
        states = self.processor.owned_states()
        for index, core in enumerate(processor_for(self.codec).cores):
            assert core.name == self.processor.cores[index].name
            yield from core.collect([state.cores[index] for state in states], [state.clock_ms for state in states])


def test_kept_families_follow_every_batch_apply_and_rebalance():
    """The families kept between scrapes (the cores' until their rounds run or the owned states change, each
    instrument's until ``apply`` feeds it) are what a page computed from scratch says, at every step."""
    codec = Codec(BundledRegistry())
    processor = processor_for(codec)
    metrics = PipelineMetrics(CollectorRegistry(), instruments_of(processor.cores))
    metrics.registry.register(CoreCollector(processor, now=lambda: 1_800_000_000.0))
    oracle = CollectorRegistry()
    oracle.register(Uncached(metrics, processor, codec))
    records = batch_records(make_events(3000, 150), codec, per_message=100)
    now_ms = 1_800_000_000_000

    def same_page() -> None:
        page = parsed(metrics.render())
        assert page == parsed(metrics.render())  # a second scrape, nothing changed in between
        outside = {"cxp_event_time_lag_seconds", "cxp_commit_errors_total", "cxp_oldest_unacked_seconds"}  # not kept
        assert {k: v for k, v in page.items() if k[0] not in outside} == parsed(generate_latest(oracle))

    same_page()
    for i in range(0, len(records), 5):
        out = processor.process(records[i:i + 5], now_ms)
        same_page()  # the cores moved, nothing applied yet: the instruments' kept families are still right
        metrics.apply(out)
        same_page()
    processor.process([], now_ms + 3_600_000)  # no events: the rounds still tick the clocks on
    same_page()
    owned = processor.owned_partitions()
    processor.revoke(forget=False)
    same_page()  # nothing owned: no core series
    processor.assign(owned[:1])
    same_page()
    assert any(name.startswith("cx_") for name, _ in parsed(metrics.render()))


def test_a_fed_histogram_child_is_what_prometheus_client_makes_of_it():
    """A fed histogram child's samples are made from its kept ones and its values: equal to the instrument's own
    ``collect()`` after every observation (a negative first bound has no ``_sum``; an exemplar is
    prometheus_client's to write), and a bucket the observation did not reach keeps its sample object."""
    plain = Histogram("h_plain", "Plain.", ["k"], buckets=(0.5, 1, 5), registry=None)
    negative = Histogram("h_negative", "A negative first bound.", ["k"], buckets=(-1, 0, 1), registry=None)
    applied = AppliedInstruments({"h_plain": plain, "h_negative": negative})
    steps = [("h_plain", "a", 0.7, None), ("h_plain", "a", 0.7, None), ("h_plain", "b", 3, None),
             ("h_negative", "a", -2, None), ("h_negative", "a", 0.5, None), ("h_plain", "a", 0.2, {"trace": "x"}),
             ("h_plain", "a", 9, None), ("h_plain", "b", 4, None), ("h_plain", "b", -0.0, None)]
    def by_series(families):
        return {s.labels["k"] + s.name + s.labels.get("le", ""): s for family in families for s in family.samples}

    for name, key, value, exemplar in steps:
        before = by_series(applied.collect())
        child = applied.instruments[name].labels(key)
        child.observe(value, exemplar)
        applied.fed(name, child)
        families = list(applied.collect())
        assert families == [family for instrument in (plain, negative) for family in instrument.collect()]
        if (name, key, value) == ("h_plain", "b", 4):
            after = by_series(families)
            assert after["bh_plain_bucket0.5"] is before["bh_plain_bucket0.5"]
            assert after["bh_plain_bucket5.0"] is not before["bh_plain_bucket5.0"]
