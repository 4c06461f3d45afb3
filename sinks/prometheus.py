"""Every Prometheus series of a worker, on one explicitly created registry (never the global one).

Two kinds of series:
- counters and histograms are process-owned instruments. The pipeline's own (``cxp_*``) and those the
  metric cores declare are fed only from the deltas of a delivered :class:`~pipeline.metrics.base.Output`,
  after its data is durable, so they never count what could still be lost;
- gauges are computed at scrape time by :class:`CoreCollector` from the state of the partitions the
  worker owns: a revoked partition's series disappear with its state; :class:`ConsumerLagCollector`
  likewise reads the Kafka offsets of the owned partitions.
A scrape does only the work of what changed since the last one: families whose inputs did not change (no
batch or tick reached the cores, no delivered Output fed an instrument) are the last scrape's objects, and
:class:`TextFormat` reuses the text of a family whose samples are the same.
Counts are exported next to every ratio, so sums over workers stay right (see deploy/ recording rules).
"""
from __future__ import annotations

import time
from array import array
from math import copysign
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import _escape, escape_label_name, escape_metric_name
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from pipeline.metrics.base import Instrument, MetricCore, Output

if TYPE_CHECKING:
    from pipeline.processor import Processor

disable_created_metrics()  # *_created series double the scrape size and no rule here uses them

CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]
_VALUE = attrgetter("value")
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PIPELINE_INSTRUMENTS = (
    Instrument("cxp_events_consumed", "counter", "Events consumed (a batch message of n events counts n).", ("source",)),
    Instrument("cxp_events_processed", "counter", "Valid, new events handed to the metric cores.", ("source",)),
    Instrument("cxp_events_rejected", "counter", "Events dead-lettered, by reason code.", ("source", "reason")),
    Instrument("cxp_events_duplicate", "counter", "Events dropped as duplicates within the dedup horizon.", ("source",)),
)


class PipelineMetrics:
    """The worker's instruments. ``apply`` feeds them from a delivered Output."""

    def __init__(self, registry: CollectorRegistry, core_instruments: Iterable[Instrument] = ()):
        self.registry = registry
        self.sink_rows = Counter("cxp_sink_rows", "Rows written durably to a sink table.", ["table"], registry=registry)
        self.sink_errors = Counter("cxp_sink_errors", "Failed delivery attempts (inserts, timeouts included, and "
                                   "topic sends), each retry counted.", ["table"], registry=registry)
        self.sink_flush_seconds = Histogram("cxp_sink_flush_seconds", "Time of one successful insert into a table.",
                                            ["table"], buckets=FLUSH_BUCKETS, registry=registry)
        self.commit_errors = Counter("cxp_commit_errors", "Failed Kafka offset commit attempts, each retry "
                                     "counted, and commits waiting a session timeout without one.", registry=registry)
        self.collector_requests = Counter("cxp_collector_requests", "HTTP collector answers, by source and status code.",
                                          ["source", "code"], registry=registry)
        self.oldest_unacked = Gauge("cxp_oldest_unacked_seconds", "Age of the oldest consumed record whose data is "
                                    "not yet durable (0 when none).", registry=registry)
        self._by_name = {spec.name: self._create(spec) for spec in (*PIPELINE_INSTRUMENTS, *core_instruments)}
        self.applied = AppliedInstruments(self._by_name)
        registry.register(self.applied)  # where the instruments would stand: the page's order is unchanged
        self._text = TextFormat()

    @staticmethod
    def _create(spec: Instrument):
        if spec.kind == "counter":
            return Counter(spec.name, spec.documentation, spec.labels, registry=None)
        return Histogram(spec.name, spec.documentation, spec.labels, buckets=spec.buckets or Histogram.DEFAULT_BUCKETS,
                         registry=None)

    def apply(self, out: Output) -> None:
        """Counter increments and histogram observations of a batch whose data is now durable."""
        fed = self.applied.fed
        for (name, labels), n in out.counts.items():
            child = self._by_name[name].labels(*labels)
            child.inc(n)
            fed(name, child)
        for name, labels, value in out.observations:
            child = self._by_name[name].labels(*labels)
            child.observe(value)
            fed(name, child)

    def render(self) -> bytes:
        return self._text.render(self.registry.collect())

    def progress(self) -> dict:
        """Where the worker is, as JSON for ``GET /progress``: the event counters' totals, rows durable per
        table and the oldest unacked age. Read from the instruments /metrics renders (so the two always
        agree), but only these: its cost grows with their label sets (sources, reject reasons, tables),
        never with customers or events, unlike a /metrics render that runs every core's ``collect``."""
        return {
            "events": {spec.name.removeprefix("cxp_events_"): _sum(self._by_name[spec.name])
                       for spec in PIPELINE_INSTRUMENTS},
            "sink_rows": {sample.labels["table"]: sample.value
                          for metric in self.sink_rows.collect() for sample in metric.samples},
            "oldest_unacked_seconds": _sum(self.oldest_unacked),
        }


class AppliedInstruments(Collector):
    """The instruments only :meth:`PipelineMetrics.apply` feeds, registered as one collector: each one's
    family is kept from the scrape that collected it until ``apply`` feeds it, and then made again from the
    kept samples of its children (label sets) that were not fed and the new values of those that were (a fed
    histogram child's unchanged buckets stay the kept objects; its ``collect`` builds a sample per child and
    bucket, twice, formatting each bucket's bound and taking a lock for each value, on every call)."""

    def __init__(self, instruments: Mapping[str, Any]):
        self.instruments = instruments
        self._kept: dict[str, list[Metric]] = {}
        self._fed: dict[str, set[int]] = {}  # name -> ids of the children fed since its family was made
        self._children: dict[str, dict[tuple, tuple]] = {}  # name -> label values -> (child, its samples)

    def fed(self, name: str, child: Any) -> None:
        self._kept.pop(name, None)
        self._fed.setdefault(name, set()).add(id(child))  # the instrument holds its children: ids stay theirs

    def describe(self) -> Iterable[Metric]:
        for instrument in self.instruments.values():
            yield from instrument.describe()

    def collect(self) -> Iterable[Metric]:
        for name, instrument in self.instruments.items():
            families = self._kept.get(name)
            if families is None:
                families = self._kept[name] = self._collect(name, instrument)
            yield from families

    def _collect(self, name: str, instrument: Any) -> list[Metric]:
        """What ``instrument.collect()`` returns, with the samples of the children not fed since kept: per
        child in the instrument's order, its ``_samples()`` named and labelled as its ``_multi_samples`` does; a
        fed histogram child's from its kept samples and its values (:func:`_histogram_moved`)."""
        fed, kept = self._fed.pop(name, set()), self._children.get(name, {})
        if not instrument._labelnames:
            return list(instrument.collect())
        with instrument._lock:
            children = instrument._metrics.copy()
        family, made = instrument._get_metric(), {}
        for values, child in children.items():
            entry = kept.get(values)
            if entry is not None and entry[0] is child and id(child) in fed:  # its values moved
                samples = _histogram_moved(child, entry[1]) if type(child) is Histogram else None
                entry = None if samples is None else (child, samples)
            if entry is None or entry[0] is not child:
                series = list(zip(instrument._labelnames, values))
                entry = (child, [Sample(instrument._name + suffix, dict(series + list(labels.items())), *rest)
                                 for suffix, labels, *rest in child._samples()])
            made[values] = entry
            family.samples.extend(entry[1])
        self._children[name] = made
        return [family]


def _histogram_moved(child: Histogram, kept: list[Sample]) -> Optional[list[Sample]]:
    """A fed histogram child's samples as ``Histogram._child_samples`` makes them (cumulative buckets, then the
    count, then the sum unless the first bound is negative), named and labelled as ``kept``, the same child's
    samples when it was last collected (its bounds never change); each kept sample that holds its value again is
    the kept object, which the text format skips unread. None where that is not the layout of ``kept`` (an
    exemplar, or ``*_created`` samples)."""
    bounds, buckets = child._upper_bounds, child._buckets
    with_sum = bounds[0] >= 0
    if len(kept) != len(bounds) + 1 + with_sum:
        return None
    made, acc = [], 0.0
    for bucket, was in zip(buckets, kept):
        if was.exemplar is not None or bucket.get_exemplar() is not None:
            return None
        acc += bucket.get()
        made.append(was if was.value == acc else Sample(was.name, was.labels, acc))
    was = kept[len(bounds)]
    made.append(was if was.value == acc else Sample(was.name, was.labels, acc))
    if with_sum:  # a sum of observations, never -0.0: an equal value prints alike
        was, total = kept[-1], child._sum.get()
        made.append(was if was.value == total else Sample(was.name, was.labels, total))
    return made


class TextFormat:
    """The Prometheus text format (0.0.4), byte for byte what ``prometheus_client.generate_latest`` writes,
    at a fraction of its cost: a page hardly changes between scrapes. Each family's samples and lines are
    kept until the next render; a sample equal to the one at its place in the family last time (same name,
    labels, value, timestamp) reuses its line, and any other reuses its escaped ``name{labels}`` if that
    series was on the last page, so only changed values are formatted (issue 17). A family whose samples
    all equal last time's (a kept family object, or equal values) reuses its whole text."""

    _SUFFIXES = ("_created", "_gsum", "_gcount")  # OpenMetrics-only samples, moved to their own family

    def __init__(self):
        self._prefixes: dict[tuple, tuple] = {}  # (sample name, label items) -> (suffix, 'name{k="v",...} ')
        self._headers: dict[tuple, str] = {}  # (name, type, documentation) -> the # HELP and # TYPE lines
        self._families: dict[tuple, _Rendered] = {}  # (name, type) -> what the last page wrote for it

    def render(self, families: Iterable[Metric]) -> bytes:
        output: list[str] = []
        kept: dict[tuple, _Rendered] = {}
        for metric in families:
            key = (metric.name, metric.type)
            before = self._families.get(key)
            if before is None or not before.renders(metric):
                before = self._render(metric, before)
            kept[key] = before
            output.append(before.text)
        self._families = kept  # what left the page is forgotten
        if len(self._prefixes) > 2 * sum(len(family.samples) for family in kept.values()):
            self._prefixes = {}  # label sets that left the page; those on it are escaped again once
        return "".join(output).encode("utf-8")

    def _render(self, metric: Metric, before: Optional["_Rendered"]) -> "_Rendered":
        name, samples = metric.name, metric.samples
        lines, series, moved = [], [], []  # moved: the places of samples that go to a family of their own
        if before is not None:  # the lines of the samples that print as the one at their place last time
            reusable = min(len(before.samples), len(samples))
            lines, series = before.lines[:reusable], before.series[:reusable]
            moved = [at for at in before.moved if at < reusable]
            for at, sample, was in zip(range(reusable), samples, before.samples):
                if sample is was:
                    continue
                sample_name, labels, value, timestamp = sample[:4]
                # equal, and not a zero whose sign changed (0.0 == -0.0, but they print differently)
                if value == was[2] and sample == was and (value or copysign(1.0, value) == copysign(1.0, was[2])):
                    continue
                known = series[at]
                if sample_name != was[0] or labels != was[1]:  # most often the same series at another value
                    known = series[at] = self._series(name, sample)
                    if (known[0] is None) != (at not in moved):
                        moved = sorted({*moved} ^ {at})
                lines[at] = f"{known[1]}{_go(value)}\n" if timestamp is None else \
                    f"{known[1]}{_go(value)} {int(float(timestamp) * 1000):d}\n"
            samples_left = samples[reusable:]
        else:
            reusable, samples_left = 0, samples
        for at, sample in enumerate(samples_left, reusable):
            known = self._series(name, sample)
            series.append(known)
            if known[0] is not None:
                moved.append(at)
            lines.append(f"{known[1]}{_go(sample.value)}\n" if sample.timestamp is None else
                         f"{known[1]}{_go(sample.value)} {int(float(sample.timestamp) * 1000):d}\n")
        header = self._header(name, metric.type, metric.documentation)
        if not moved:
            return _Rendered(metric.documentation, list(samples), lines, series, moved, header + "".join(lines))
        extra: dict[str, list[str]] = {}
        for at in moved:
            extra.setdefault(series[at][0], []).append(lines[at])
        moving = set(moved)
        output = [header, *(line for at, line in enumerate(lines) if at not in moving)]
        for suffix, moved_lines in sorted(extra.items()):
            output.append(self._header(name + suffix, "gauge", metric.documentation, plain=True))
            output.extend(moved_lines)
        return _Rendered(metric.documentation, list(samples), lines, series, moved, "".join(output))

    def _series(self, name: str, sample: Any) -> tuple[Optional[str], str]:
        """(the OpenMetrics-only suffix that moves the sample to a family of its own, or None; its escaped
        ``name{labels} ``), kept while the series is on the page."""
        key = (sample.name, tuple(sample.labels.items()))
        known = self._prefixes.get(key)
        if known is None:
            suffix = sample.name[len(name):]
            moved = sample.name != name and suffix in self._SUFFIXES and sample.name.startswith(name)
            known = self._prefixes[key] = (suffix if moved else None), self._prefix(sample.name, sample.labels)
        return known

    def _header(self, name: str, kind: str, documentation: str, plain: bool = False) -> str:
        key = (name, kind, documentation, plain)
        header = self._headers.get(key)
        if header is None:
            if not plain:  # generate_latest's munging from OpenMetrics types into the Prometheus format
                name, kind = {"counter": (name + "_total", kind), "info": (name + "_info", "gauge"),
                              "stateset": (name, "gauge"), "gaugehistogram": (name, "histogram"),
                              "unknown": (name, "untyped")}.get(kind, (name, kind))
            escaped = escape_metric_name(name)
            doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
            header = self._headers[key] = f"# HELP {escaped} {doc}\n# TYPE {escaped} {kind}\n"
        return header

    @staticmethod
    def _prefix(name: str, labels: Mapping[str, str]) -> str:
        if not labels:
            return f"{escape_metric_name(name)} "
        pairs = ",".join(f'{escape_label_name(k)}="{_escape(v, ALLOWUTF8, False)}"' for k, v in sorted(labels.items()))
        return f"{escape_metric_name(name)}{{{pairs}}} "


class _Rendered:
    """One family's text on the last page, with the samples (a copy) it was written from, each one's line and
    series (:meth:`TextFormat._series`), and the places of the samples moved to a family of their own."""

    __slots__ = ("documentation", "samples", "lines", "series", "moved", "text", "values")

    def __init__(self, documentation: str, samples: list, lines: list, series: list, moved: list, text: str):
        self.documentation, self.samples, self.lines, self.series, self.text = documentation, samples, lines, series, text
        self.moved = moved
        self.values = _value_bytes(samples) if 0 in map(_VALUE, samples) else b""  # b"": no zero

    def renders(self, metric: Metric) -> bool:
        """Whether ``metric`` prints as this text: the same documentation and equal samples (compared in C,
        each at once when it is the same object), and where a value was zero, a zero of the same sign (the
        values' bytes as doubles tell -0.0 from 0.0)."""
        samples = metric.samples
        return (metric.documentation == self.documentation and samples == self.samples
                and (self.values == b"" or self.values is not None and _value_bytes(samples) == self.values))


def _value_bytes(samples: list) -> Optional[bytes]:
    """The samples' values as doubles (None: a value that is not one; such a family is compared sample by sample)."""
    try:
        return array("d", map(_VALUE, samples)).tobytes()
    except (TypeError, OverflowError):
        return None


def _go(value: Any) -> str:
    """``floatToGoString(value)``: Python's repr of the float, but for values it writes otherwise (infinities,
    NaN, and 1e6 or more, where Go switches to an exponent sooner), which it is asked for."""
    if type(value) is float and -1e6 < value < 1e6:
        return repr(value)
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return repr(float(value))
    return floatToGoString(value)


def _sum(instrument: Any) -> float:
    """The sum of an unlabelled gauge's or a labelled counter's values (``*_created`` samples are off)."""
    return sum(sample.value for metric in instrument.collect() for sample in metric.samples)


class CoreCollector(Collector):
    """Gauges at scrape time: each core's families over the owned partitions, and the event-time lag.

    A core's ``collect`` is a function of the owned partitions' states and clocks, and those states change
    only in the processor's rounds (a batch's ``add`` and ``take``, a ``tick``) or when partitions are
    assigned, revoked or restored (restore fills the states of newly assigned partitions, new objects). So
    the cores' families are kept and handed out again until the rounds run, the owned states or a clock
    change: a worker scraped while idle, or twice between two batches, runs no core."""

    def __init__(self, processor: "Processor", now: Callable[[], float] = time.time):
        self.processor = processor
        self.now = now
        self._key: Optional[tuple] = None  # (rounds run, the states' ids, their clocks) of the kept families
        self._states: list = []  # the states the key names, held so that their ids are not reused
        self._families: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        for core in self.processor.cores:
            yield from core.describe()
        yield self._lag_family()

    def collect(self) -> Iterable[Metric]:
        processor = self.processor
        states = processor.owned_states()
        clocks = [state.clock_ms for state in states]
        key = (processor.rounds.phases, [id(state) for state in states], clocks)
        if key != self._key:
            self._families = [family for index, core in enumerate(processor.cores)
                              for family in core.collect([state.cores[index] for state in states], clocks)]
            self._key, self._states = key, states
        yield from self._families
        lag, now = self._lag_family(), self.now()
        if states:
            for source, clock_ms in sorted(processor.source_clock_ms.items()):
                lag.add_metric([source], max(now - clock_ms / 1000, 0.0))
        yield lag

    @staticmethod
    def _lag_family() -> GaugeMetricFamily:
        return GaugeMetricFamily("cxp_event_time_lag_seconds", "Wall clock minus the newest processed event time.",
                                 labels=["source"])


class ConsumerLagCollector(Collector):
    """``cxp_consumer_lag_records{source}`` at scrape time: records of the owned input partitions not yet
    committed, summed per source (the partitions of one topic are one source; no partition label).

    Per partition: the highwater (offset of the next record produced, from the latest fetch response)
    minus the group's committed offset (``committed``: what this worker committed, or found committed when
    the partition was assigned; 0 when the group never committed it). Offsets are committed only up to
    acked records, and a record is acked once its output is durable, so this counts what waits to be
    fetched, processed or stored, plus what was stored in the last commit interval. While ClickHouse
    fails, the held-back worker stops fetching once its buffers are full and highwaters are not
    refreshed: the value is the backlog known then, and ``cxp_oldest_unacked_seconds`` tells the stall.
    """

    NAME = "cxp_consumer_lag_records"

    def __init__(self, consumer: Callable[[], Any], topic_sources: Mapping[str, str], committed: Mapping[Any, int]):
        self.consumer, self.topic_sources, self.committed = consumer, topic_sources, committed

    def describe(self) -> Iterable[Metric]:
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family, lag = self._family(), self.lag_by_source()
        for source in sorted(lag):
            family.add_metric([source], lag[source])
        yield family

    def lag_by_source(self) -> dict[str, int]:
        """source -> lag; a source appears once one of its partitions is owned (0 before its first fetch)."""
        consumer = self.consumer()
        try:
            owned = consumer.assignment()
        except Exception:  # noqa: BLE001 - not started, or stopping: nothing owned to report
            return {}
        lag: dict[str, int] = {}
        for tp in owned:
            source = self.topic_sources.get(tp.topic)
            if source is None:
                continue
            lag.setdefault(source, 0)
            highwater = self._highwater(consumer, tp)
            if highwater is not None:
                lag[source] += max(highwater - self.committed.get(tp, 0), 0)
        return lag

    @staticmethod
    def _highwater(consumer: Any, tp: Any) -> Optional[int]:
        try:
            return consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - revoked between assignment() and now (a rebalance): skip it
            return None

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.NAME, "Records of the owned input partitions not yet committed (highwater minus "
                                 "committed offset), summed per source.", labels=["source"])


def instruments_of(cores: Sequence[MetricCore]) -> list[Instrument]:
    return [spec for core in cores for spec in core.instruments]
