"""Rolling NPS, CSAT and CES by event time: the survey metric core.

Every ``survey_response`` (any source) counts in the windows its event time falls in. Per
(tenant, kind) and minute the core keeps [responses, class 0, class 1, class 2, score sum]
(:func:`pipeline.scores.counts_of`; the classes and formulas are :mod:`pipeline.scores`).

Idempotent on its own: the core remembers the id hash of every answer it counted over its largest
window, and counts an answer once however often it is delivered, even after the processor's shorter
dedup horizon has forgotten it, or when ``survey_responses`` holds it but ``events`` (written last) does
not. Its state is rebuilt from ``survey_responses``. Each answer it counts is published as the fact
:class:`~pipeline.metrics.facts.SurveyAnswered` (segments, churn and follow-up actions consume it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline.dedup import Deduper
from pipeline.metrics.base import ADD, Batch, MetricCore, Output, Restore
from pipeline.metrics.facts import SurveyAnswered
from pipeline.metrics.windows import RollingCounts, SummedTotals
from pipeline.scores import CLASSES, FORMULAS, Totals, counts_of
from pipeline.tables import ROWS

SurveyRow = ROWS["survey_responses"]
GAUGES = {"nps": ("cx_nps", "Net Promoter Score (-100..100) in the window."),
          "nps_margin_of_error": ("cx_nps_margin_of_error", "95 % margin of error of cx_nps, in NPS points."),
          "csat_ratio": ("cx_csat_ratio", "CSAT: share of responses scoring 4 or 5 (0..1)."),
          "ces": ("cx_ces", "CES: mean effort score (1..7).")}


@dataclass
class SurveyState:
    windows: RollingCounts
    answered: Deduper  # id hashes of the answers counted, over the largest window
    partition: int = 0


@dataclass
class SurveyCore(MetricCore[SurveyState]):
    windows_ms: dict[str, int]
    largest_ms: int = field(init=False)
    _summed: SummedTotals = field(default_factory=SummedTotals, init=False, repr=False, compare=False)

    name = "surveys"
    publishes = {SurveyAnswered: ADD}
    tables = ("survey_responses",)

    def __post_init__(self) -> None:
        self.largest_ms = max(self.windows_ms.values())

    @classmethod
    def configure(cls, section: Any, stream: Any) -> "SurveyCore":
        return cls(stream.window_ms)

    def new_state(self, partition: int) -> SurveyState:
        return SurveyState(RollingCounts(self.windows_ms, 5), Deduper(self.largest_ms), partition)

    def add(self, state: SurveyState, batch: Batch, out: Output) -> None:
        answers = [(source, event, key) for source, event, key in zip(batch.sources, batch.events, batch.hashes)
                   if event.get("survey") is not None]
        if not answers:
            return
        new = state.answered.check([key for _, _, key in answers], [event["event_time"] for _, event, _ in answers])
        rows = out.rows["survey_responses"]
        for (source, event, key), is_new in zip(answers, new):
            if not is_new:
                continue
            survey, event_ms = event["survey"], event["event_time"]
            kind, score, attributes = survey["kind"], survey["score"], event.get("attributes") or {}
            state.windows.add((event["tenant"], kind), event_ms, counts_of(kind, score))
            rows.append(SurveyRow(
                event_id=event["event_id"], event_time=event_ms // 1000, event_ms=event_ms, tenant=event["tenant"],
                customer_id=event.get("customer_id"), source=source, kind=kind, score=score,
                touchpoint=survey.get("touchpoint"), comment=survey.get("comment"),
                kafka_partition=state.partition, id_hash=key,
                attr_keys=list(attributes), attr_values=list(attributes.values())))
            out.publish(SurveyAnswered(event["event_id"], source, event["tenant"], event.get("customer_id"), kind, score,
                                       event_ms, attributes, survey.get("touchpoint"), survey.get("comment")))

    def tick(self, state: SurveyState, clock_ms: int, out: Output) -> None:
        state.windows.prune(clock_ms)
        state.answered.expire(clock_ms)

    def restores(self) -> Sequence[Restore]:
        return (Restore("answers", "survey_responses", ("tenant", "kind", "score", "event_ms", "id_hash"), "event_ms",
                        self.largest_ms, final=True),)

    def restore(self, state: SurveyState, name: str, rows: list, clock_ms: int) -> None:
        state.answered.restore([int(row.id_hash) for row in rows], [int(row.event_ms) for row in rows])
        for row in rows:
            state.windows.add((row.tenant, row.kind), int(row.event_ms), counts_of(row.kind, int(row.score)))

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def totals(states: Sequence[SurveyState], clocks: Sequence[int]) -> dict[tuple[str, str, str], Totals]:
        """(tenant, kind, window) -> Totals summed over the given partition states, each at its clock."""
        out: dict[tuple[str, str, str], Totals] = {}
        for state, clock_ms in zip(states, clocks):
            for ((tenant, kind), label), counts in state.windows.totals(clock_ms).items():
                key, totals = (tenant, kind, label), Totals.of(counts)
                out[key] = out[key] + totals if key in out else totals
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    def collect(self, states: Sequence[SurveyState], clocks: Sequence[int]) -> Iterable[Metric]:
        """The gauges of :meth:`totals`, from the partitions' sums kept between scrapes (issue 17)."""
        families = self._families()
        responses, score = families["responses"], families["score"]
        summed = self._summed
        summed.update([state.windows for state in states], clocks)
        for (tenant, kind), window in summed.order():
            t = Totals.of(summed.sums[((tenant, kind), window)])
            for name, count in zip(CLASSES[kind], t.classes):
                responses.add_metric([tenant, kind, window, name], count)
            score.add_metric([tenant, kind, window], t.score_sum)
            if t.n:
                for metric, formula in FORMULAS[kind]:
                    families[metric].add_metric([tenant, window], formula(t))
        return families.values()

    @staticmethod
    def _families() -> dict[str, Metric]:
        # Windowed counts are gauges (they fall as the window slides): the answers by class, and the sum
        # of their scores, from which the fleet's CES is sum(scores) / sum(responses).
        families: dict[str, Metric] = {
            "responses": GaugeMetricFamily("cx_survey_responses", "Survey responses in the window, by class.",
                                           labels=["tenant", "kind", "window", "class"]),
            "score": GaugeMetricFamily("cx_survey_scores", "Sum of the scores of the survey responses in the "
                                       "window.", labels=["tenant", "kind", "window"]),
        }
        for metric, (name, documentation) in GAUGES.items():
            families[metric] = GaugeMetricFamily(name, documentation, labels=["tenant", "window"])
        return families

    def snapshot(self, states: Sequence[SurveyState], clocks: Sequence[int]) -> Iterable[tuple[str, str, str, float, int]]:
        for (tenant, kind, window), totals in sorted(self.totals(states, clocks).items()):
            if totals.n:
                for metric, formula in FORMULAS[kind]:
                    yield tenant, metric, window, formula(totals), totals.n

