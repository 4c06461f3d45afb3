"""Closed loop: follow-up actions for detractors and customers entering high churn risk, and whether
following up on a detractor won them back.

Actions go to the fact ``actions`` (FollowUpAction fields plus a deterministic ``action_id``) for the
generic actions core, which emits each once:

``detractor_followup``
    for every NPS answer of 0..6 from a known customer (the survey core's fact ``answers``, each answer
    once), due ``due`` (48 h) after the answer; id = sha1("detractor_followup|" + event id).
``churn_risk_high``
    when the churn core's fact ``churn_changes`` says a customer entered level high, due at once;
    id = sha1("churn_risk_high|tenant|customer|time of the change").

Recovery: ``cx_detractor_followups{tenant,window,outcome}`` counts the detractor follow-ups whose answer
lies in the window (``recovery_window``, 30 days) by the customer's *next* NPS answer: ``recovered``
(7..10, passive or promoter), ``not_recovered`` (0..6) or ``pending`` (none yet). The recovery rate is
recovered / (recovered + not_recovered). State: per customer their NPS answers within the window,
keyed by event id (idempotent), rebuilt from ``survey_responses``.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline.metrics.base import Accepted, MetricCore, Output, RestoreQuery
from pipeline.metrics.lastseen import customer_key

OUTCOMES = ("recovered", "not_recovered", "pending")
DETRACTOR_MAX = 6


def action_id(*cause: object) -> str:
    return hashlib.sha1("|".join(map(str, cause)).encode("utf-8")).hexdigest()


def outcomes(answers: Sequence[tuple[int, int, str]]) -> list[tuple[int, str]]:
    """(answer ms, outcome) of every detractor answer in a customer's time-ordered (ms, score, id) answers."""
    found = []
    for i, (ms, score, _) in enumerate(answers):
        if score <= DETRACTOR_MAX:
            following = answers[i + 1][1] if i + 1 < len(answers) else None
            found.append((ms, "pending" if following is None else
                          "recovered" if following > DETRACTOR_MAX else "not_recovered"))
    return found


@dataclass
class FollowupState:
    answers: dict[int, tuple[str, list[tuple[int, int, str]]]] = field(default_factory=dict)  # key -> tenant, answers
    clock_ms: int = 0


@dataclass
class FollowupCore(MetricCore[FollowupState]):
    due_ms: int
    recovery_window_ms: int
    name: str = "followups"

    def new_state(self, partition: int = 0) -> FollowupState:
        return FollowupState()

    def add(self, state: FollowupState, accepted: Accepted, out: Output) -> None:
        for event in out.facts.get("answers", ()):
            survey, customer_id = event["survey"], event.get("customer_id")
            if survey["kind"] != "NPS" or customer_id is None:
                continue
            self._remember(state, event["tenant"], customer_id, event["event_time"], survey["score"], event["event_id"])
            if survey["score"] <= DETRACTOR_MAX:
                out.facts["actions"].append(self._detractor_action(event, accepted.source))
        self._churn_actions(out)

    def _detractor_action(self, event: dict, source: str) -> dict:
        survey, answered_ms = event["survey"], event["event_time"]
        context = {"score": str(survey["score"]), "source": source, "event_id": event["event_id"]}
        for name in ("comment", "touchpoint"):
            if survey.get(name):
                context[name] = survey[name]
        where = f" at touchpoint {survey['touchpoint']}" if survey.get("touchpoint") else ""
        return {"action_id": action_id("detractor_followup", event["event_id"]), "kind": "detractor_followup",
                "customer_id": event["customer_id"], "tenant": event["tenant"],
                "reason": f"NPS {survey['score']} (detractor){where} via {source}", "context": context,
                "due_time": answered_ms + self.due_ms, "created_time": answered_ms}

    @staticmethod
    def _churn_actions(out: Output) -> None:
        for change in out.facts.get("churn_changes", ()):
            if change["level"] != "high":
                continue
            at_ms = change["at_ms"]
            out.facts["actions"].append({
                "action_id": action_id("churn_risk_high", change["tenant"], change["customer_id"], at_ms),
                "kind": "churn_risk_high", "customer_id": change["customer_id"], "tenant": change["tenant"],
                "reason": f"churn risk high (score {change['score']:.2f}, was {change['previous_level']})",
                "context": {"score": f"{change['score']:.4f}", "previous_level": change["previous_level"],
                            "reasons": "\n".join(change["reasons"])},
                "due_time": at_ms, "created_time": at_ms})

    def _remember(self, state: FollowupState, tenant: str, customer_id: str, answered_ms: int, score: int,
                  event_id: str) -> None:
        key = customer_key(tenant, customer_id)
        _, answers = state.answers.setdefault(key, (tenant, []))
        entry = (answered_ms, score, event_id)
        at = bisect.bisect_left(answers, entry)
        if at == len(answers) or answers[at] != entry:
            answers.insert(at, entry)

    def tick(self, state: FollowupState, clock_ms: int, out: Output) -> None:
        self._churn_actions(out)
        if clock_ms // 3_600_000 <= state.clock_ms // 3_600_000:
            return  # expire hourly: totals() applies the window exactly, this only frees memory
        state.clock_ms = clock_ms
        oldest = clock_ms - self.recovery_window_ms
        for key in list(state.answers):
            tenant, answers = state.answers[key]
            # answers before the window judge no detractor inside it: only later answers do
            del answers[:bisect.bisect_right(answers, (oldest, 1 << 31, ""))]
            if not answers:
                del state.answers[key]

    def restore_queries(self) -> Sequence[RestoreQuery]:
        return (RestoreQuery("answers", "SELECT kafka_partition, tenant, customer_id, event_ms, score, event_id FROM "
                             "{db}.survey_responses FINAL WHERE kafka_partition IN ({partitions}) AND kind = 'NPS' "
                             "AND customer_id IS NOT NULL AND event_ms > {since_ms}", self.recovery_window_ms),)

    def restore(self, state: FollowupState, query: str, rows: list[tuple], clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        for tenant, customer_id, event_ms, score, event_id in rows:
            self._remember(state, tenant, customer_id, int(event_ms), int(score), event_id)

    # -- reading ---------------------------------------------------------------------------------
    def totals(self, states: Sequence[FollowupState], clock_ms: int) -> dict[tuple[str, str], int]:
        """(tenant, outcome) -> detractor follow-ups answered within the recovery window."""
        out: dict[tuple[str, str], int] = {}
        oldest = clock_ms - self.recovery_window_ms
        for state in states:
            for tenant, answers in state.answers.values():
                for answered_ms, outcome in outcomes(answers):
                    if oldest < answered_ms <= clock_ms:
                        out[(tenant, outcome)] = out.get((tenant, outcome), 0) + 1
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[FollowupState], clock_ms: int) -> Iterable[Metric]:
        counts_g, rate_g = families = self._families()
        totals = self.totals(states, clock_ms)
        window = self._window_label()
        for tenant in sorted({tenant for tenant, _ in totals}):
            for outcome in OUTCOMES:
                counts_g.add_metric([tenant, window, outcome], totals.get((tenant, outcome), 0))
            judged = totals.get((tenant, "recovered"), 0) + totals.get((tenant, "not_recovered"), 0)
            if judged:
                rate_g.add_metric([tenant, window], totals.get((tenant, "recovered"), 0) / judged)
        return families

    def _window_label(self) -> str:
        days, rest = divmod(self.recovery_window_ms, 86_400_000)
        return f"{days}d" if not rest else f"{self.recovery_window_ms // 3_600_000}h"

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("cx_detractor_followups", "Detractor follow-ups (NPS 0..6 answers) in the window, by "
                              "the customer's next NPS answer: recovered (7..10), not_recovered (0..6), pending.",
                              labels=["tenant", "window", "outcome"]),
            GaugeMetricFamily("cx_detractor_recovery_ratio", "recovered / (recovered + not_recovered) of this worker "
                              "(fleet: tenant_window:cx_detractor_recovery:ratio).", labels=["tenant", "window"]),
        ]
