"""NPS, CSAT and CES broken down by segment: configured attribute keys (region, plan, ...) and source.

Consumes :class:`~pipeline.metrics.facts.SurveyAnswered` (each answer the survey core counted, once), so
it inherits its idempotency. Every answer falls in exactly one segment per dimension: the attribute's value, or
``unknown`` when the event lacks it. Attribute values come from customers' systems, so the series
are capped: per (tenant, dimension) at most ``max_values`` segments are exported, those with the most
responses in the largest window, and the rest are summed as ``other`` (in every window alike). The
sum over a dimension's segments therefore always equals the unsegmented count. Each worker caps the
partitions it owns, so across workers ``other`` may hold different segments; sums stay right.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import add, is_not, itemgetter
from typing import Annotated, Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from pydantic import BeforeValidator, Field

from pipeline.config import Section, split_list
from pipeline.metrics.base import Facts, MetricCore, Output, Restore
from pipeline.metrics.facts import SurveyAnswered
from pipeline.metrics.windows import RollingCounts, SummedTotals
from pipeline.scores import CLASSES, Totals, ces, counts_of, csat_ratio, nps

OTHER, UNKNOWN = "other", "unknown"
MAX_LABEL_CHARS = 64


class SegmentSettings(Section):
    prefix = "segment_"
    dimensions: Annotated[list[str], BeforeValidator(split_list)] = Field(
        ["region", "plan", "source"], description="Segment breakdowns of NPS/CSAT/CES: attribute keys of the events, "
        "and `source` (comma-separated).")
    max_values: int = Field(
        20, ge=1, description="Segments exported per tenant and dimension (those with most responses); the rest are "
        "summed as `other`, so a customer-supplied attribute can't explode the series count.")


def _sample(family: GaugeMetricFamily, labels: list[str], value: float) -> Sample:
    """The sample ``family.add_metric`` makes, without keeping it in the family."""
    family.add_metric(labels, value)
    return family.samples.pop()


def _at(was: Sample, value: float) -> Sample:
    """``was`` itself if it holds this value (a nonzero one: the sign of a zero prints), else its series at this
    value: the text format skips a sample that is the same object as last page's without comparing it."""
    if value and value == was[2]:
        return was
    return _new_sample(Sample, (was[0], was[1], value, None, None, None))


_new_sample = tuple.__new__  # what Sample(name, labels, value) makes, without its keyword defaults (issue 17)


def _accumulate(into: dict[tuple, list[int]], key: tuple, counts: list[int]) -> None:
    """Add count vectors per key (the first one is taken as it is: callers hand over copies)."""
    held = into.get(key)
    into[key] = counts if held is None else list(map(add, held, counts))


@dataclass
class SegmentCore(MetricCore[RollingCounts]):
    windows_ms: dict[str, int]
    dimensions: tuple[str, ...]  # attribute keys, and "source"
    max_values: int
    _merged: SummedTotals = field(default_factory=SummedTotals, init=False, repr=False, compare=False)
    # (the summed keys in order, their series, whether a (tenant, dimension) has more segments than the cap)
    _layout: tuple = field(default=(None, [], False), init=False, repr=False, compare=False)
    # the last scrape's series, each one's _made entry and the counts list it was made from, and per kind the
    # places of its series
    _keys: list = field(default_factory=list, init=False, repr=False, compare=False)
    _entries: list = field(default_factory=list, init=False, repr=False, compare=False)
    _from: list = field(default_factory=list, init=False, repr=False, compare=False)
    _kinds: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name = "segments"
    Settings = SegmentSettings
    consumes = (SurveyAnswered,)

    @classmethod
    def configure(cls, section: SegmentSettings, stream) -> "SegmentCore":
        return cls(stream.window_ms, tuple(section.dimensions), section.max_values)

    def new_state(self, partition: int) -> RollingCounts:
        return RollingCounts(self.windows_ms, 5)  # key: (tenant, kind, dimension, segment)

    def segments_of(self, attributes: dict, source: str) -> Iterable[tuple[str, str]]:
        for dimension in self.dimensions:
            value = source if dimension == "source" else attributes.get(dimension) or UNKNOWN
            yield dimension, value[:MAX_LABEL_CHARS]

    def take(self, state: RollingCounts, facts: Facts, out: Output) -> None:
        for answer in facts.of(SurveyAnswered):
            counts = counts_of(answer.kind, answer.score)
            for dimension, segment in self.segments_of(answer.attributes, answer.source):
                state.add((answer.tenant, answer.kind, dimension, segment), answer.event_ms, counts)

    def tick(self, state: RollingCounts, clock_ms: int, out: Output) -> None:
        state.prune(clock_ms)

    def restores(self) -> Sequence[Restore]:
        return (Restore("answers", "survey_responses",
                        ("tenant", "kind", "score", "event_ms", "source", "attr_keys", "attr_values"), "event_ms",
                        max(self.windows_ms.values()), final=True),)

    def restore(self, state: RollingCounts, name: str, rows: list, clock_ms: int) -> None:
        for row in rows:
            counts = counts_of(row.kind, int(row.score))
            for dimension, segment in self.segments_of(dict(zip(row.attr_keys, row.attr_values)), row.source):
                state.add((row.tenant, row.kind, dimension, segment), int(row.event_ms), counts)

    def totals(self, states: Sequence[RollingCounts], clocks: Sequence[int]) -> dict[tuple[str, str, str, str, str], Totals]:
        """(tenant, kind, dimension, segment, window) -> Totals, capped per (tenant, dimension)."""
        keys, sums = self._series(states, clocks)
        return {key: Totals.of(counts) for key, counts in zip(keys, sums)}

    def _series(self, states: Sequence[RollingCounts], clocks: Sequence[int]) -> tuple[list[tuple], list[list[int]]]:
        """The series (tenant, kind, dimension, segment, window), capped per (tenant, dimension), sorted, and their
        counts. While no (tenant, dimension) is over the cap, the series are the summed keys, the same list
        object until keys come or go, and the counts the kept sums (a changed sum is a new list)."""
        merged = self._merged
        merged.update(states, clocks)
        order = merged.order()
        if order is not self._layout[0]:  # keys came or went: is any (tenant, dimension) over the cap now?
            segments = defaultdict(set)
            for (tenant, _, dimension, segment), _ in order:
                segments[(tenant, dimension)].add(segment)
            self._layout = (order, [(tenant, kind, dimension, segment, window)
                                    for (tenant, kind, dimension, segment), window in order],
                            any(len(found) > self.max_values for found in segments.values()))
        _, series, capping = self._layout
        if not capping:  # ((tenant, kind, dimension, segment), window) sorts as the labels do
            return series, list(map(merged.sums.__getitem__, order))
        largest = max(self.windows_ms, key=self.windows_ms.get)
        volume: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for ((tenant, _, dimension, segment), window), counts in merged.sums.items():
            if window == largest:
                volume[(tenant, dimension)][segment] += counts[0]
        # every series has a total in every window, the largest included: a (tenant, dimension) with no more
        # segments than the cap keeps them all, and only the others are summed into ``other``
        over = {key: set(sorted(by_segment, key=lambda s: (-by_segment[s], s))[:self.max_values])
                for key, by_segment in volume.items() if len(by_segment) > self.max_values}
        capped: dict[tuple, list[int]] = {}
        for ((tenant, kind, dimension, segment), window), counts in merged.sums.items():
            kept = over.get((tenant, dimension))
            label = segment if kept is None or segment in kept else OTHER
            _accumulate(capped, (tenant, kind, dimension, label, window), counts)
        keys = sorted(capped)
        return keys, [capped[key] for key in keys]

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[RollingCounts], clocks: Sequence[int]) -> Iterable[Metric]:
        """The families, a series' samples made again only when its counts changed, with the label sets it
        had (the text format then reuses the lines of the others and the escaped labels of these). While the
        series are the same list, only those whose counts are a new list are looked at."""
        families = self._families()
        gauges = {"NPS": (families[2], nps), "CSAT": (families[3], csat_ratio), "CES": (families[4], ces)}
        keys, sums = self._series(states, clocks)
        if keys is not self._keys:  # series came or went (or are capped): the entries by series, where they were
            made = dict(zip(self._keys, self._entries))
            self._keys, self._entries, self._from = keys, [made.get(key) for key in keys], [None] * len(keys)
            self._kinds = {kind: [at for at, key in enumerate(keys) if key[1] == kind] for kind in gauges}
        entries = self._entries
        for at in compress(range(len(sums)), map(is_not, sums, self._from)):
            counts, entry = tuple(sums[at]), entries[at]
            if entry is None or entry[0] != counts:
                entries[at] = self._made(families, gauges, keys[at], counts, entry)
        self._from = sums
        families[0].samples.extend(chain.from_iterable(map(itemgetter(1), entries)))
        families[1].samples.extend(map(itemgetter(2), entries))
        for kind, (family, _) in gauges.items():  # a series with no answers has no gauge sample (None)
            family.samples.extend(filter(None, map(itemgetter(3), map(entries.__getitem__, self._kinds[kind]))))
        return families

    @staticmethod
    def _made(families: list[Metric], gauges: dict, key: tuple, counts: tuple, before: Optional[tuple]) -> tuple:
        """(counts, the class samples, the score sample, the gauge's sample or None) of one series; the label
        sets of ``before``, the series' entry at other counts, where it has them."""
        tenant, kind, dimension, segment, window = key
        family, formula = gauges[kind]
        t = Totals.of(counts)
        classes, value = t.classes, (formula(t) if t.n else None)
        if before is None:
            by_class = tuple(_sample(families[0], [tenant, kind, window, dimension, segment, name], count)
                             for name, count in zip(CLASSES[kind], classes))
            score = _sample(families[1], [tenant, kind, window, dimension, segment], t.score_sum)
            gauge = None if value is None else _sample(family, [tenant, window, dimension, segment], value)
            return counts, by_class, score, gauge
        by_class = tuple(map(_at, before[1], classes))
        was = before[3]
        gauge = None if value is None else _at(was, value) if was is not None else \
            _sample(family, [tenant, window, dimension, segment], value)
        return counts, by_class, _at(before[2], t.score_sum), gauge

    @staticmethod
    def _families() -> list[Metric]:
        labels = ["tenant", "window", "dimension", "segment"]
        return [
            GaugeMetricFamily("cx_segment_responses", "Survey responses in the window per segment, by class.",
                              labels=["tenant", "kind", "window", "dimension", "segment", "class"]),
            GaugeMetricFamily("cx_segment_scores", "Sum of the scores of the survey responses in the window per "
                              "segment.", labels=["tenant", "kind", "window", "dimension", "segment"]),
            GaugeMetricFamily("cx_segment_nps", "NPS of a segment in the window.", labels=labels),
            GaugeMetricFamily("cx_segment_csat_ratio", "CSAT of a segment in the window (0..1).", labels=labels),
            GaugeMetricFamily("cx_segment_ces", "CES of a segment in the window.", labels=labels),
        ]

