"""Follow-up actions: the one place that turns :class:`~pipeline.metrics.facts.ActionRequested` into messages
on cx.actions.

Any core may publish ``ActionRequested`` (kind, customer, tenant, reason, context, due and created times,
and an ``action_id`` derived from the cause by :func:`pipeline.metrics.facts.action_id`). For each id not
emitted before, this core sends a ``FollowUpAction`` on "actions" (key: customer id), writes an
``actions`` row and counts ``cx_actions_total{tenant,kind}``.

Idempotent on its own: it remembers the ids it emitted for ``horizon_ms`` of event time, restored from the
``actions`` table, so a cause seen again (a replay) sends nothing. It consumes what other cores publish,
so it runs after them, and its table is made durable before theirs (:mod:`pipeline.metrics.base`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pipeline.messages import FollowUpAction
from pipeline.metrics.base import Facts, Instrument, MetricCore, Output, Restore
from pipeline.metrics.facts import ActionRequested
from pipeline.tables import ROWS

ActionRow = ROWS["actions"]
PRUNE_EVERY_MS = 60_000


@dataclass
class ActionState:
    partition: int
    emitted: dict[str, int] = field(default_factory=dict)  # action id -> created ms
    pruned_ms: int = 0


@dataclass
class ActionCore(MetricCore[ActionState]):
    horizon_ms: int  # how long an emitted id is remembered, by event time
    name = "actions"
    consumes = (ActionRequested,)
    tables = ("actions",)
    instruments: Sequence[Instrument] = (
        Instrument("cx_actions", "counter", "Follow-up actions sent on cx.actions, by kind.", ("tenant", "kind")),
    )

    @classmethod
    def configure(cls, section: Any, stream: Any) -> "ActionCore":
        return cls(stream.max_lateness.ms)

    def new_state(self, partition: int) -> ActionState:
        return ActionState(partition)

    def take(self, state: ActionState, facts: Facts, out: Output) -> None:
        for action in facts.of(ActionRequested):
            if action.action_id in state.emitted:
                continue
            state.emitted[action.action_id] = action.created_ms
            out.send("actions", action.customer_id.encode("utf-8"), FollowUpAction(
                kind=action.kind, customer_id=action.customer_id, tenant=action.tenant, reason=action.reason,
                context=action.context, due_time=action.due_ms, created_time=action.created_ms,
                action_id=action.action_id))
            out.rows["actions"].append(ActionRow(
                action_id=action.action_id, kind=action.kind, tenant=action.tenant, customer_id=action.customer_id,
                reason=action.reason, context_keys=list(action.context), context_values=list(action.context.values()),
                created_at=action.created_ms // 1000, created_ms=action.created_ms,
                due_at=action.due_ms // 1000, due_ms=action.due_ms, kafka_partition=state.partition))
            out.count("cx_actions", (action.tenant, action.kind))

    def tick(self, state: ActionState, clock_ms: int, out: Output) -> None:
        if clock_ms - state.pruned_ms < PRUNE_EVERY_MS:
            return
        state.pruned_ms, oldest = clock_ms, clock_ms - self.horizon_ms
        for gone in [key for key, created in state.emitted.items() if created < oldest]:
            del state.emitted[gone]

    def restores(self) -> Sequence[Restore]:
        return (Restore("actions", "actions", ("action_id", "created_ms"), "created_ms", self.horizon_ms, final=True),)

    def restore(self, state: ActionState, name: str, rows: list, clock_ms: int) -> None:
        for key, created_ms in rows:
            state.emitted[key] = int(created_ms)
