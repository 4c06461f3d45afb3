"""NPS, CSAT and CES broken down by segment: configured attribute keys (region, plan, ...) and source.

Reads the ``answers`` fact of the survey core (each answer it counted, once), so it inherits its
idempotency. Every answer falls in exactly one segment per dimension: the attribute's value, or
``unknown`` when the event lacks it. Attribute values come from customers' systems, so the series
are capped: per (tenant, dimension) at most ``max_values`` segments are exported, those with the most
responses in the largest window, and the rest are summed as ``other`` (in every window alike). The
sum over a dimension's segments therefore always equals the unsegmented count. Each worker caps the
partitions it owns, so across workers ``other`` may hold different segments; sums stay right.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline.metrics.base import Accepted, MetricCore, Output, RestoreQuery
from pipeline.metrics.surveys import CLASSES, Totals, ces, counts_of, csat, nps
from pipeline.metrics.windows import RollingCounts

OTHER, UNKNOWN = "other", "unknown"
MAX_LABEL_CHARS = 64


@dataclass
class SegmentCore(MetricCore[RollingCounts]):
    windows_ms: dict[str, int]
    dimensions: tuple[str, ...]  # attribute keys, and "source"
    max_values: int
    name: str = "segments"

    def new_state(self, partition: int = 0) -> RollingCounts:
        return RollingCounts(self.windows_ms, 5)  # key: (tenant, kind, dimension, segment)

    def segments_of(self, event: dict, source: str) -> Iterable[tuple[str, str]]:
        attributes = event.get("attributes") or {}
        for dimension in self.dimensions:
            value = source if dimension == "source" else attributes.get(dimension) or UNKNOWN
            yield dimension, value[:MAX_LABEL_CHARS]

    def add(self, state: RollingCounts, accepted: Accepted, out: Output) -> None:
        for event in out.facts.get("answers", ()):
            survey = event["survey"]
            counts = counts_of(survey["kind"], survey["score"])
            for dimension, segment in self.segments_of(event, accepted.source):
                state.add((event["tenant"], survey["kind"], dimension, segment), event["event_time"], counts)

    def tick(self, state: RollingCounts, clock_ms: int, out: Output) -> None:
        state.prune(clock_ms)

    def restore_queries(self) -> Sequence[RestoreQuery]:
        return (RestoreQuery("answers", "SELECT kafka_partition, tenant, kind, score, event_ms, source, attr_keys, "
                             "attr_values FROM {db}.survey_responses FINAL WHERE kafka_partition IN ({partitions}) "
                             "AND event_ms > {since_ms}", max(self.windows_ms.values())),)

    def restore(self, state: RollingCounts, query: str, rows: list[tuple], clock_ms: int) -> None:
        for tenant, kind, score, event_ms, source, keys, values in rows:
            event = {"attributes": dict(zip(keys, values))}
            for dimension, segment in self.segments_of(event, source):
                state.add((tenant, kind, dimension, segment), int(event_ms), counts_of(kind, int(score)))

    def totals(self, states: Sequence[RollingCounts], clock_ms: int) -> dict[tuple[str, str, str, str, str], Totals]:
        """(tenant, kind, dimension, segment, window) -> Totals, capped per (tenant, dimension)."""
        raw: dict[tuple, list[int]] = defaultdict(lambda: [0] * 5)
        for state in states:
            for ((tenant, kind, dimension, segment), window), counts in state.totals(clock_ms).items():
                acc = raw[(tenant, kind, dimension, segment, window)]
                for i, value in enumerate(counts):
                    acc[i] += value
        largest = max(self.windows_ms, key=self.windows_ms.get)
        volume: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (tenant, _, dimension, segment, window), counts in raw.items():
            if window == largest:
                volume[(tenant, dimension)][segment] += counts[0]
        kept = {key: set(sorted(by_segment, key=lambda s: (-by_segment[s], s))[:self.max_values])
                for key, by_segment in volume.items()}
        out: dict[tuple, Totals] = {}
        for (tenant, kind, dimension, segment, window), counts in raw.items():
            label = segment if segment in kept.get((tenant, dimension), ()) else OTHER
            key = (tenant, kind, dimension, label, window)
            out[key] = out[key] + Totals.of(counts) if key in out else Totals.of(counts)
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[RollingCounts], clock_ms: int) -> Iterable[Metric]:
        responses, score, nps_g, csat_g, ces_g = families = self._families()
        for (tenant, kind, dimension, segment, window), t in sorted(self.totals(states, clock_ms).items()):
            labels = [tenant, window, dimension, segment]
            for name, count in zip(CLASSES[kind], t.classes):
                responses.add_metric([tenant, kind, window, dimension, segment, name], count)
            score.add_metric([tenant, kind, window, dimension, segment], count_value=t.n, sum_value=t.score_sum)
            if t.n:
                gauge, formula = {"NPS": (nps_g, nps), "CSAT": (csat_g, csat), "CES": (ces_g, ces)}[kind]
                gauge.add_metric(labels, formula(t))
        return families

    @staticmethod
    def _families() -> list[Metric]:
        labels = ["tenant", "window", "dimension", "segment"]
        return [
            GaugeMetricFamily("cx_segment_responses", "Survey responses in the window per segment, by class.",
                              labels=["tenant", "kind", "window", "dimension", "segment", "class"]),
            SummaryMetricFamily("cx_segment_score", "Survey scores in the window per segment: sum and count.",
                                labels=["tenant", "kind", "window", "dimension", "segment"]),
            GaugeMetricFamily("cx_segment_nps", "NPS of a segment in the window.", labels=labels),
            GaugeMetricFamily("cx_segment_csat", "CSAT of a segment in the window.", labels=labels),
            GaugeMetricFamily("cx_segment_ces", "CES of a segment in the window.", labels=labels),
        ]
