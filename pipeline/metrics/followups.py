"""Closed loop: follow-up actions for detractors and customers entering high churn risk, and whether
following up on a detractor won them back.

Actions go to the fact :class:`~pipeline.metrics.facts.ActionRequested` (with a deterministic
``action_id``) for the actions core, which emits each once:

``detractor_followup``
    for every NPS answer of 0..6 from a known customer (the survey core's fact ``SurveyAnswered``, each
    answer once), due ``due`` (48 h) after the answer; id = sha1("detractor_followup|" + event id).
``churn_risk_high``
    when the churn core's fact ``ChurnLevelChanged`` says a customer entered level high, due at once;
    id = sha1("churn_risk_high|tenant|customer|reached"), reached being when the customer's evidence
    first added up to high: the same after a crash and a replay, whatever batches carried the input.

Recovery: ``cx_detractor_followups{tenant,window,outcome}`` counts the detractor follow-ups whose answer
lies in the window (``recovery_window``, 30 days) by the customer's *next* NPS answer: ``recovered``
(7..10, passive or promoter), ``not_recovered`` (0..6) or ``pending`` (none yet). The recovery rate is
recovered / (recovered + not_recovered). State: per customer their NPS answers within the window,
keyed by event id (idempotent), rebuilt from ``survey_responses``.
"""
from __future__ import annotations

import bisect
import heapq
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Duration, Section
from pipeline.metrics.base import TAKE, Equals, Facts, MetricCore, NotNull, Output, Restore
from pipeline.metrics.facts import ActionRequested, ChurnLevelChanged, SurveyAnswered, action_id
from pipeline.scores import is_detractor

OUTCOMES = ("recovered", "not_recovered", "pending")


def outcomes(answers: Sequence[tuple[int, int, str]]) -> list[tuple[int, str]]:
    """(answer ms, outcome) of every detractor answer in a customer's time-ordered (ms, score, id) answers."""
    found = []
    for i, (ms, score, _) in enumerate(answers):
        if is_detractor(score):
            following = answers[i + 1][1] if i + 1 < len(answers) else None
            found.append((ms, "pending" if following is None else
                          "not_recovered" if is_detractor(following) else "recovered"))
    return found


class FollowupSettings(Section):
    prefix = "followup_"
    due: Duration = Field(Duration("48h"), description="Due time of a detractor_followup action after the answer.")
    recovery_window: Duration = Field(
        Duration("30d"), description="Detractor follow-ups in this window count towards cx_detractor_followups "
        "(recovery).")


@dataclass
class FollowupState:
    # tenant -> customer id -> their (ms, score, event id) answers, in order (the ids interned: shared with the
    # other cores, no hash, key tuple or pair per customer)
    answers: dict[str, dict[str, list[tuple[int, int, str]]]] = field(default_factory=dict)
    clock_ms: int = 0
    # The gauge, kept as answers arrive and the window moves: (tenant, outcome) -> detractor answers after
    # ``counted_after``; ``leaving``: heap of (ms, score, event id, tenant, customer id) of those answers, to find the ones the
    # window leaves; ``newest_ms``: the latest answer held (the gauge also bounds answers by the clock)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    counted_after: int = -(2**62)
    leaving: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    newest_ms: int = 0


@dataclass
class FollowupCore(MetricCore[FollowupState]):
    due_ms: int
    recovery_window_ms: int
    name = "followups"
    Settings = FollowupSettings
    publishes = {ActionRequested: TAKE}
    consumes = (SurveyAnswered, ChurnLevelChanged)

    @classmethod
    def configure(cls, section: FollowupSettings, stream: Any) -> "FollowupCore":
        return cls(section.due.ms, section.recovery_window.ms)

    def new_state(self, partition: int) -> FollowupState:
        return FollowupState()

    def take(self, state: FollowupState, facts: Facts, out: Output) -> None:
        for answer in facts.of(SurveyAnswered):
            if answer.kind != "NPS" or answer.customer_id is None:
                continue
            self._remember(state, answer.tenant, answer.customer_id, answer.event_ms, answer.score, answer.event_id)
            if is_detractor(answer.score):
                out.publish(self._detractor_action(answer))
        for change in facts.of(ChurnLevelChanged):
            if change.level == "high":
                out.publish(self._churn_action(change))

    def _detractor_action(self, answer: SurveyAnswered) -> ActionRequested:
        context = {"score": str(answer.score), "source": answer.source, "event_id": answer.event_id}
        for name in ("comment", "touchpoint"):
            if getattr(answer, name):
                context[name] = getattr(answer, name)
        where = f" at touchpoint {answer.touchpoint}" if answer.touchpoint else ""
        return ActionRequested(
            action_id=action_id("detractor_followup", answer.event_id), kind="detractor_followup", tenant=answer.tenant,
            customer_id=answer.customer_id, reason=f"NPS {answer.score} (detractor){where} via {answer.source}",
            context=context, due_ms=answer.event_ms + self.due_ms, created_ms=answer.event_ms)

    @staticmethod
    def _churn_action(change: ChurnLevelChanged) -> ActionRequested:
        return ActionRequested(
            action_id=action_id("churn_risk_high", change.tenant, change.customer_id, change.reached_ms),
            kind="churn_risk_high", tenant=change.tenant, customer_id=change.customer_id,
            reason=f"churn risk high (score {change.score:.2f}, was {change.previous_level})",
            context={"score": f"{change.score:.4f}", "previous_level": change.previous_level,
                     "reasons": "\n".join(change.reasons)},
            due_ms=change.at_ms, created_ms=change.at_ms)

    def _remember(self, state: FollowupState, tenant: str, customer_id: str, answered_ms: int, score: int,
                  event_id: str) -> None:
        tenant, customer_id = sys.intern(tenant), sys.intern(customer_id)  # restored ones too: one string each
        customers = state.answers.get(tenant)
        if customers is None:
            customers = state.answers[tenant] = {}
        answers = customers.get(customer_id)
        if answers is None:
            answers = customers[customer_id] = []
        entry = (answered_ms, score, event_id)
        at = bisect.bisect_left(answers, entry)
        if at == len(answers) or answers[at] != entry:
            # a new answer is judged itself and judges the customer's answer before it: recount the customer
            after = state.counted_after
            self._recount(state, tenant, answers, after, -1)
            answers.insert(at, entry)
            self._recount(state, tenant, answers, after, 1)
            state.newest_ms = max(state.newest_ms, answered_ms)
            if answered_ms > after and is_detractor(score):
                heapq.heappush(state.leaving, (answered_ms, score, event_id, tenant, customer_id))

    @staticmethod
    def _recount(state: FollowupState, tenant: str, answers: list[tuple[int, int, str]], after: int, sign: int) -> None:
        """Add (sign 1) or take away (-1) the outcomes of a customer's detractor answers after ``after``."""
        if answers and answers[-1][0] > after:
            counts = state.counts
            for answered_ms, outcome in outcomes(answers[bisect.bisect_right(answers, (after, 1 << 31, "")):]):
                counts[tenant, outcome] = counts.get((tenant, outcome), 0) + sign

    def _move_window(self, state: FollowupState, clock_ms: int) -> None:
        """Take the detractor answers the window leaves out of the kept gauge, with their outcome now."""
        after = clock_ms - self.recovery_window_ms
        if after <= state.counted_after:
            return
        leaving, counts = state.leaving, state.counts
        while leaving and leaving[0][0] <= after:
            answered_ms, score, event_id, tenant, customer_id = heapq.heappop(leaving)
            answers = state.answers[tenant][customer_id]
            at = bisect.bisect_left(answers, (answered_ms, score, event_id))
            outcome = outcomes(answers[at:at + 2])[0][1]
            counts[tenant, outcome] -= 1
        state.counted_after = after

    def tick(self, state: FollowupState, clock_ms: int, out: Output) -> None:
        self._move_window(state, clock_ms)
        if clock_ms // 3_600_000 <= state.clock_ms // 3_600_000:
            return  # expire hourly: totals() applies the window exactly, this only frees memory
        state.clock_ms = clock_ms
        oldest = clock_ms - self.recovery_window_ms
        for tenant, customers in list(state.answers.items()):
            for customer_id, answers in list(customers.items()):
                # answers before the window judge no detractor inside it: only later answers do
                del answers[:bisect.bisect_right(answers, (oldest, 1 << 31, ""))]
                if not answers:
                    del customers[customer_id]
            if not customers:
                del state.answers[tenant]

    def restores(self) -> Sequence[Restore]:
        return (Restore("answers", "survey_responses", ("tenant", "customer_id", "event_ms", "score", "event_id"),
                        "event_ms", self.recovery_window_ms, (Equals("kind", "NPS"), NotNull("customer_id")),
                        final=True),)

    def restore(self, state: FollowupState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        self._move_window(state, clock_ms)
        for tenant, customer_id, event_ms, score, event_id in rows:
            self._remember(state, tenant, customer_id, int(event_ms), int(score), event_id)

    # -- reading ---------------------------------------------------------------------------------
    def totals(self, states: Sequence[FollowupState], clocks: Sequence[int]) -> dict[tuple[str, str], int]:
        """(tenant, outcome) -> detractor follow-ups answered within the recovery window: the kept gauge, its
        window moved on to the clock (the last tick's at a scrape: nothing moves); counted afresh for a clock
        before the kept one or before an answer held (possible after a restore only)."""
        out: dict[tuple[str, str], int] = {}
        for state, clock_ms in zip(states, clocks):
            if clock_ms - self.recovery_window_ms < state.counted_after or state.newest_ms > clock_ms:
                counted = self.count_answers([state], [clock_ms])
            else:
                self._move_window(state, clock_ms)
                counted = state.counts
            for key, n in counted.items():
                if n:
                    out[key] = out.get(key, 0) + n
        return out

    def count_answers(self, states: Sequence[FollowupState], clocks: Sequence[int]) -> dict[tuple[str, str], int]:
        """The same from every customer's answers (the plain recomputation the kept gauge must equal)."""
        out: dict[tuple[str, str], int] = {}
        for state, clock_ms in zip(states, clocks):
            oldest = clock_ms - self.recovery_window_ms
            for tenant, customers in state.answers.items():
                for answers in customers.values():
                    for answered_ms, outcome in outcomes(answers):
                        if oldest < answered_ms <= clock_ms:
                            out[(tenant, outcome)] = out.get((tenant, outcome), 0) + 1
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[FollowupState], clocks: Sequence[int]) -> Iterable[Metric]:
        counts_g, rate_g = families = self._families()
        totals = self.totals(states, clocks)
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
