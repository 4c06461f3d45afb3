"""Rolling NPS, CSAT and CES by event time: the survey metric core.

Every ``survey_response`` (any source) counts in the windows its event time falls in. Per
(tenant, kind) and minute the core keeps [responses, class 0, class 1, class 2, score sum]:
promoter/passive/detractor for NPS (9-10 / 7-8 / 0-6), satisfied/neutral/dissatisfied for CSAT
(4-5 / 3 / 1-2), one class for CES.

Idempotent on its own: the core remembers the id hash of every answer it counted over its largest
window, and counts an answer once however often it is delivered, even after the processor's shorter
dedup horizon has forgotten it, or when ``survey_responses`` holds it but ``events`` (written last) does
not. Its state is rebuilt from ``survey_responses``. Each answer it counts is published as the fact
``answers`` (the event dict) for later cores (segments, churn, follow-up actions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline.dedup import Deduper
from pipeline.metrics.base import Accepted, MetricCore, Output, RestoreQuery
from pipeline.metrics.windows import RollingCounts
from pipeline.tables import ROWS

CLASSES = {
    "NPS": ("promoter", "passive", "detractor"),
    "CSAT": ("satisfied", "neutral", "dissatisfied"),
    "CES": ("all",),
}
SurveyRow = ROWS["survey_responses"]


def classify(kind: str, score: int) -> int:
    """Index into CLASSES[kind] of a valid score."""
    if kind == "NPS":
        return 0 if score >= 9 else 1 if score >= 7 else 2
    if kind == "CSAT":
        return 0 if score >= 4 else 1 if score == 3 else 2
    return 0


@dataclass(frozen=True)
class Totals:
    """Responses of one (tenant, kind) within one window: n, per-class counts, sum of scores."""

    n: int = 0
    classes: tuple[int, int, int] = (0, 0, 0)
    score_sum: int = 0

    @classmethod
    def of(cls, counts: Sequence[int]) -> "Totals":
        return cls(counts[0], (counts[1], counts[2], counts[3]), counts[4])

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(self.n + other.n, tuple(a + b for a, b in zip(self.classes, other.classes)),
                      self.score_sum + other.score_sum)


def nps(t: Totals) -> Optional[float]:
    return 100.0 * (t.classes[0] - t.classes[2]) / t.n if t.n else None


def nps_margin_of_error(t: Totals) -> Optional[float]:
    """95 % margin: 1.96 × 100 × sqrt((p + d − (p − d)²) / n), p and d the promoter and detractor shares."""
    if not t.n:
        return None
    p, d = t.classes[0] / t.n, t.classes[2] / t.n
    return 1.96 * 100.0 * math.sqrt(max(p + d - (p - d) ** 2, 0.0) / t.n)


def csat(t: Totals) -> Optional[float]:
    return 100.0 * t.classes[0] / t.n if t.n else None


def ces(t: Totals) -> Optional[float]:
    return t.score_sum / t.n if t.n else None


FORMULAS = {"NPS": (("nps", nps), ("nps_margin_of_error", nps_margin_of_error)), "CSAT": (("csat", csat),),
            "CES": (("ces", ces),)}


def counts_of(kind: str, score: int) -> list[int]:
    counts = [1, 0, 0, 0, score]
    counts[1 + classify(kind, score)] = 1
    return counts


@dataclass
class SurveyState:
    windows: RollingCounts
    answered: Deduper  # id hashes of the answers counted, over the largest window
    clock_ms: int = 0


@dataclass
class SurveyCore(MetricCore[SurveyState]):
    windows_ms: dict[str, int]
    name: str = "surveys"
    largest_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.largest_ms = max(self.windows_ms.values())

    def new_state(self, partition: int = 0) -> SurveyState:
        return SurveyState(RollingCounts(self.windows_ms, 5), Deduper(self.largest_ms))

    def add(self, state: SurveyState, accepted: Accepted, out: Output) -> None:
        answers = [(event, key) for event, key in zip(accepted.events, accepted.hashes) if event.get("survey") is not None]
        if not answers:
            return
        new = state.answered.check([key for _, key in answers], [event["event_time"] for event, _ in answers])
        rows = out.rows["survey_responses"]
        for (event, key), is_new in zip(answers, new):
            if not is_new:
                continue
            survey, event_ms = event["survey"], event["event_time"]
            state.windows.add((event["tenant"], survey["kind"]), event_ms, counts_of(survey["kind"], survey["score"]))
            rows.append(SurveyRow(
                event_id=event["event_id"], event_time=event_ms // 1000, event_ms=event_ms, tenant=event["tenant"],
                customer_id=event.get("customer_id"), source=accepted.source, kind=survey["kind"], score=survey["score"],
                touchpoint=survey.get("touchpoint"), comment=survey.get("comment"),
                kafka_partition=accepted.partition, id_hash=key,
                attr_keys=list(event.get("attributes") or ()), attr_values=list((event.get("attributes") or {}).values())))
            out.facts["answers"].append(event)

    def tick(self, state: SurveyState, clock_ms: int, out: Output) -> None:
        state.clock_ms = clock_ms
        state.windows.prune(clock_ms)
        state.answered.expire(clock_ms)

    def restore_queries(self) -> Sequence[RestoreQuery]:
        return (RestoreQuery("answers", "SELECT kafka_partition, tenant, kind, score, event_ms, id_hash "
                             "FROM {db}.survey_responses FINAL WHERE kafka_partition IN ({partitions}) "
                             "AND event_ms > {since_ms}", self.largest_ms),)

    def restore(self, state: SurveyState, query: str, rows: list[tuple], clock_ms: int) -> None:
        state.answered.restore([int(row[4]) for row in rows], [int(row[3]) for row in rows])
        for tenant, kind, score, event_ms, _ in rows:
            state.windows.add((tenant, kind), int(event_ms), counts_of(kind, int(score)))

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def totals(states: Sequence[SurveyState], clock_ms: int) -> dict[tuple[str, str, str], Totals]:
        """(tenant, kind, window) -> Totals summed over the given partition states."""
        out: dict[tuple[str, str, str], Totals] = {}
        for state in states:
            for ((tenant, kind), label), counts in state.windows.totals(clock_ms).items():
                key, totals = (tenant, kind, label), Totals.of(counts)
                out[key] = out[key] + totals if key in out else totals
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[SurveyState], clock_ms: int) -> Iterable[Metric]:
        responses, score, nps_g, moe_g, csat_g, ces_g = families = self._families()
        for (tenant, kind, window), t in sorted(self.totals(states, clock_ms).items()):
            for name, count in zip(CLASSES[kind], t.classes):
                responses.add_metric([tenant, kind, window, name], count)
            score.add_metric([tenant, kind, window], count_value=t.n, sum_value=t.score_sum)
            if not t.n:
                continue
            if kind == "NPS":
                nps_g.add_metric([tenant, window], nps(t))
                moe_g.add_metric([tenant, window], nps_margin_of_error(t))
            elif kind == "CSAT":
                csat_g.add_metric([tenant, window], csat(t))
            else:
                ces_g.add_metric([tenant, window], ces(t))
        return families

    @staticmethod
    def _families() -> list[Metric]:
        # A gauge may not end in _sum (promtool), so the windowed score sum and count are the _sum and
        # _count of a summary: cx_survey_score_sum{tenant,kind,window} and cx_survey_score_count.
        return [
            GaugeMetricFamily("cx_survey_responses", "Survey responses in the window, by class.",
                              labels=["tenant", "kind", "window", "class"]),
            SummaryMetricFamily("cx_survey_score", "Survey scores in the window: sum and count.",
                                labels=["tenant", "kind", "window"]),
            GaugeMetricFamily("cx_nps", "Net Promoter Score (-100..100) in the window.", labels=["tenant", "window"]),
            GaugeMetricFamily("cx_nps_margin_of_error", "95 % margin of error of cx_nps, in NPS points.",
                              labels=["tenant", "window"]),
            GaugeMetricFamily("cx_csat", "CSAT: percent of responses scoring 4 or 5.", labels=["tenant", "window"]),
            GaugeMetricFamily("cx_ces", "CES: mean effort score (1..7).", labels=["tenant", "window"]),
        ]

    def snapshot(self, states: Sequence[SurveyState], clock_ms: int) -> Iterable[tuple[str, str, str, float, int]]:
        for (tenant, kind, window), totals in sorted(self.totals(states, clock_ms).items()):
            if totals.n:
                for metric, formula in FORMULAS[kind]:
                    yield tenant, metric, window, formula(totals), totals.n
