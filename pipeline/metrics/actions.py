"""Follow-up actions: the one place that turns the fact ``actions`` into messages on cx.actions.

Any core before it publishes ``out.facts["actions"]``: dicts with the FollowUpAction fields (kind,
customer_id, tenant, reason, context str -> str, due_time, created_time, epoch ms), the
``kafka_partition`` of the input that caused it, and an ``action_id`` derived from the cause
(:func:`pipeline.metrics.complaints.action_id`, e.g. sha1 of "complaint_sla_breach|<complaint id>|<stage>").
For each id not emitted before, this core sends the Avro FollowUpAction on "actions" (key: customer
id), writes an ``actions`` row and counts ``cx_actions_total{tenant,kind}``.

Idempotent on its own: it remembers the ids it emitted for ``horizon_ms`` of event time, restored
from the ``actions`` table, so a cause seen again (a replay) sends nothing. It must run last, after
every core that publishes actions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from pipeline.metrics.base import Accepted, Instrument, MetricCore, Output, RestoreQuery
from pipeline.tables import ROWS
from pipeline.wire import Codec

ActionRow = ROWS["actions"]
PRUNE_EVERY_MS = 60_000


@dataclass
class ActionState:
    partition: int
    emitted: dict[str, int] = field(default_factory=dict)  # action id -> created ms
    pruned_ms: int = 0


@dataclass
class ActionCore(MetricCore[ActionState]):
    codec: Codec
    horizon_ms: int  # how long an emitted id is remembered, by event time
    name: str = "actions"
    instruments: Sequence[Instrument] = (
        Instrument("cx_actions", "counter", "Follow-up actions sent on cx.actions, by kind.", ("tenant", "kind")),
    )

    def new_state(self, partition: int = 0) -> ActionState:
        return ActionState(partition)

    def add(self, state: ActionState, accepted: Accepted, out: Output) -> None:
        self._emit(state, out)

    def tick(self, state: ActionState, clock_ms: int, out: Output) -> None:
        self._emit(state, out)
        if clock_ms - state.pruned_ms < PRUNE_EVERY_MS:
            return
        state.pruned_ms, oldest = clock_ms, clock_ms - self.horizon_ms
        for gone in [key for key, created in state.emitted.items() if created < oldest]:
            del state.emitted[gone]

    def _emit(self, state: ActionState, out: Output) -> None:
        for action in out.facts.get("actions", ()):
            key = action["action_id"]
            if key in state.emitted:
                continue
            state.emitted[key] = action["created_time"]
            record = {name: action[name] for name in ("kind", "customer_id", "tenant", "reason", "context",
                                                      "due_time", "created_time", "action_id")}
            out.send("actions", action["customer_id"].encode("utf-8"), self.codec.encode("cx.FollowUpAction", record))
            context = action["context"]
            out.rows["actions"].append(ActionRow(
                action_id=key, kind=action["kind"], tenant=action["tenant"], customer_id=action["customer_id"],
                reason=action["reason"], context_keys=list(context), context_values=list(context.values()),
                created_at=action["created_time"] // 1000, created_ms=action["created_time"],
                due_at=action["due_time"] // 1000, due_ms=action["due_time"], kafka_partition=state.partition))
            out.count("cx_actions", (action["tenant"], action["kind"]))

    def restore_queries(self) -> Sequence[RestoreQuery]:
        return (RestoreQuery("actions", "SELECT kafka_partition, action_id, created_ms "
                             "FROM {db}.actions FINAL WHERE kafka_partition IN ({partitions}) "
                             "AND created_ms > {since_ms}", self.horizon_ms),)

    def restore(self, state: ActionState, query: str, rows: list[tuple], clock_ms: int) -> None:
        for key, created_ms in rows:
            state.emitted[key] = int(created_ms)
