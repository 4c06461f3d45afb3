"""Chatbot containment: the share of chatbot conversations the bot resolved without handing them to a person.

A conversation (chatbot events of one ``conversation_id`` in one tenant) **ends** at its earliest
``conversation_resolved`` or ``conversation_abandoned``; until then it is open and counts nowhere. An ended
conversation's outcome:

- ``handed_off``: a ``handoff_requested`` or ``agent_joined`` was seen for it, whenever it came;
- ``contained``: resolved, and never handed off;
- ``abandoned``: abandoned, and never handed off.

``cx_chatbot_conversations{tenant,window,outcome}`` counts the conversations that ended in the window (by
end time, the minute rounding of every window) and ``cx_chatbot_containment_ratio`` is contained / ended.
Events of a conversation may arrive in any order: a late handoff moves a contained conversation to
handed_off, a late earlier end moves its end time, in the windows too (the counts are kept per end
minute and moved, not recounted).

State per partition: each conversation's earliest handoff, resolution and abandonment times, kept until
``max_lateness`` after its last event on the clock of the chatbot source in the partition (the one the
processor judges lateness by: later events would be too late), and rolling counts per end minute. The
chatbot topic may be consumed days behind the partition's other sources and its events are still valid
then; a conversation forgotten by the partition's clock would be restarted by its own late event and its
row replaced by one without its earlier times.
The ``chatbot_conversations`` table holds one row per conversation, latest state wins; the state is
rebuilt from it, so a replayed event changes nothing and writes nothing.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from pipeline.metrics.base import Batch, MetricCore, Output, Restore
from pipeline.metrics.windows import RollingCounts
from pipeline.tables import ROWS

OUTCOMES = ("contained", "handed_off", "abandoned")
HANDOFF = frozenset(("handoff_requested", "agent_joined"))
SOURCE = "chatbot"  # the source (topic) of chatbot events; its clock in a partition is the expiry clock
ConversationRow = ROWS["chatbot_conversations"]


@dataclass(slots=True)
class Conversation:
    tenant: str
    conversation_id: str
    customer_id: Optional[str]
    handoff_ms: int = 0  # earliest handoff or agent join; 0: none
    resolved_ms: int = 0  # earliest resolution; 0: none
    abandoned_ms: int = 0  # earliest abandonment; 0: none
    last_ms: int = 0  # newest event
    updated_ms: int = 0  # version of the row last written or restored
    # whether the row's content (customer id, the times) changed since it was last written or restored: each
    # moves one way only (the customer id is set once, the earliest times move earlier, the newest later), so
    # a change is never undone and a flag says what comparing with a copy of the row would
    changed: bool = True
    counted: Optional[int] = None  # end ms << 2 | outcome index, as counted in the windows (one int, not a tuple)

    def outcome(self) -> Optional[tuple[int, int]]:
        """(end ms, index into OUTCOMES), or None while open."""
        if not (self.resolved_ms or self.abandoned_ms):
            return None
        end = min(self.resolved_ms, self.abandoned_ms) if self.resolved_ms and self.abandoned_ms else \
            self.resolved_ms or self.abandoned_ms
        if self.handoff_ms:
            return end, 1
        return end, 0 if self.resolved_ms == end else 2


@dataclass
class ChatbotState:
    partition: int
    windows: RollingCounts  # key: tenant; counts per end minute: contained, handed off, abandoned
    # tenant -> conversation id -> its state (nested: no (tenant, conversation id) tuple kept per conversation)
    conversations: dict[str, dict[str, Conversation]] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # (tenant, conversation id) of the batch
    # heap: (event ms, tenant, conversation id), one entry per conversation, forgotten max_lateness after that event ms at the earliest
    # (its newest event then was its last; the event's own int, not a new sum): an entry due while the
    # conversation has newer events is pushed again
    expiries: list[tuple[int, str, str]] = field(default_factory=list)
    clock_ms: int = 0  # newest event time of the partition, any source: the windows' clock
    source_clock_ms: int = 0  # newest chatbot event time of the partition: the expiry clock


@dataclass
class ChatbotCore(MetricCore[ChatbotState]):
    windows_ms: dict[str, int]
    max_lateness_ms: int
    name = "chatbot"
    tables = ("chatbot_conversations",)

    @classmethod
    def configure(cls, section: Any, stream: Any) -> "ChatbotCore":
        return cls(stream.window_ms, stream.max_lateness.ms)

    def new_state(self, partition: int) -> ChatbotState:
        return ChatbotState(partition, RollingCounts(self.windows_ms, len(OUTCOMES)))

    def add(self, state: ChatbotState, batch: Batch, out: Output) -> None:
        events, _ = batch.of_source(SOURCE)
        if not events:
            return
        state.source_clock_ms = max(state.source_clock_ms, max(event["event_time"] for event in events))
        conversations, dirty = state.conversations, state.dirty
        for event in events:
            tenant, conversation_id = key = (event["tenant"], event["conversation_id"])
            of_tenant = conversations.get(tenant)
            if of_tenant is None:
                of_tenant = conversations[tenant] = {}
            c = of_tenant.get(conversation_id)
            ms, kind = event["event_time"], event["event_type"]
            if c is None:
                c = of_tenant[conversation_id] = Conversation(tenant, conversation_id, event.get("customer_id"))
                heapq.heappush(state.expiries, (ms, tenant, conversation_id))
            if kind in HANDOFF:
                if not c.handoff_ms or ms < c.handoff_ms:
                    c.handoff_ms, c.changed = ms, True
            elif kind == "conversation_resolved":
                if not c.resolved_ms or ms < c.resolved_ms:
                    c.resolved_ms, c.changed = ms, True
            elif kind == "conversation_abandoned":
                if not c.abandoned_ms or ms < c.abandoned_ms:
                    c.abandoned_ms, c.changed = ms, True
            if ms > c.last_ms:
                c.last_ms, c.changed = ms, True
            if not c.customer_id and event.get("customer_id"):
                c.customer_id, c.changed = event["customer_id"], True
            dirty.add(key)

    def tick(self, state: ChatbotState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        rows, conversations, expiries = out.rows["chatbot_conversations"], state.conversations, state.expiries
        for tenant, conversation_id in state.dirty:
            c = conversations[tenant][conversation_id]
            self._count(state, c)
            if c.changed:
                c.changed = False
                c.updated_ms = max(c.updated_ms + 1, state.clock_ms)
                rows.append(self._row(c, state.partition))
        state.dirty.clear()
        state.windows.prune(state.clock_ms)
        oldest = state.source_clock_ms - self.max_lateness_ms  # a conversation whose last event is before it goes
        while expiries and expiries[0][0] < oldest:
            _, tenant, conversation_id = heapq.heappop(expiries)
            of_tenant = conversations.get(tenant)
            c = None if of_tenant is None else of_tenant.get(conversation_id)
            if c is None:
                continue
            if c.last_ms < oldest:
                del of_tenant[conversation_id]
                if not of_tenant:
                    del conversations[tenant]
            else:  # it had newer events: due later
                heapq.heappush(expiries, (c.last_ms, tenant, conversation_id))

    @staticmethod
    def _count(state: ChatbotState, c: Conversation) -> None:
        """Move the conversation's count in the windows to its current end minute and outcome."""
        now = c.outcome()
        packed = None if now is None else now[0] << 2 | now[1]
        if packed == c.counted:
            return
        if c.counted is not None:
            counts = [0] * len(OUTCOMES)
            counts[c.counted & 3] = -1
            state.windows.add(c.tenant, c.counted >> 2, counts)
        if now is not None:
            counts = [0] * len(OUTCOMES)
            counts[now[1]] = 1
            state.windows.add(c.tenant, now[0], counts)
        c.counted = packed

    @staticmethod
    def _row(c: Conversation, partition: int) -> tuple:
        ended = c.outcome()
        nullable = lambda ms: ms or None  # noqa: E731
        return ConversationRow(
            tenant=c.tenant, conversation_id=c.conversation_id, customer_id=c.customer_id,
            handoff_ms=nullable(c.handoff_ms), resolved_ms=nullable(c.resolved_ms), abandoned_ms=nullable(c.abandoned_ms),
            ended_ms=ended[0] if ended else None, outcome=OUTCOMES[ended[1]] if ended else "",
            last_event_ms=c.last_ms, updated_ms=c.updated_ms, kafka_partition=partition)

    def restores(self) -> Sequence[Restore]:
        # Ends at the chatbot clock: max_lateness back on the clock lateness is judged by, and the windows back
        # at least as far as on the partition's clock (never behind the chatbot's).
        span = max(max(self.windows_ms.values()), self.max_lateness_ms)
        return (Restore("conversations", "chatbot_conversations", ("tenant", "conversation_id", "customer_id",
                                                                    "handoff_ms", "resolved_ms", "abandoned_ms",
                                                                    "last_event_ms", "updated_ms"),
                        "last_event_ms", span, final=True, clock_source=SOURCE),)

    def restore(self, state: ChatbotState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        for row in rows:
            c = Conversation(row.tenant, row.conversation_id, row.customer_id, int(row.handoff_ms or 0),
                             int(row.resolved_ms or 0), int(row.abandoned_ms or 0), int(row.last_event_ms),
                             int(row.updated_ms))
            c.changed = False
            of_tenant = state.conversations.setdefault(c.tenant, {})
            if c.conversation_id not in of_tenant:  # else its entry is in the heap already
                heapq.heappush(state.expiries, (c.last_ms, c.tenant, c.conversation_id))
            of_tenant[c.conversation_id] = c
            state.source_clock_ms = max(state.source_clock_ms, c.last_ms)
            self._count(state, c)

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def totals(states: Sequence[ChatbotState], clocks: Sequence[int]) -> dict[tuple[str, str], list[int]]:
        """(tenant, window) -> ended conversations per outcome, over the given partitions."""
        out: dict[tuple[str, str], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for (tenant, window), counts in state.windows.totals(clock_ms).items():
                acc = out.setdefault((tenant, window), [0] * len(OUTCOMES))
                for i, n in enumerate(counts):
                    acc[i] += n
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[ChatbotState], clocks: Sequence[int]) -> Iterable[Metric]:
        conversations, ratio = families = self._families()
        for (tenant, window), counts in sorted(self.totals(states, clocks).items()):
            for outcome, n in zip(OUTCOMES, counts):
                conversations.add_metric([tenant, window, outcome], n)
            if sum(counts):
                ratio.add_metric([tenant, window], counts[0] / sum(counts))
        return families

    @staticmethod
    def _families() -> list[Metric]:
        labels = ["tenant", "window"]
        return [
            GaugeMetricFamily("cx_chatbot_conversations", "Chatbot conversations that ended in the window, by outcome: "
                              "contained (resolved without a handoff), handed_off, abandoned.",
                              labels=labels + ["outcome"]),
            GaugeMetricFamily("cx_chatbot_containment_ratio", "Conversations resolved by the bot without a handoff / "
                              "conversations ended, in the window, of this worker (fleet: "
                              "tenant_window:cx_chatbot_containment:ratio).", labels=labels),
        ]
