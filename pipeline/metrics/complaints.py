"""Complaint handling: lifecycle per complaint, backlog, response and resolution times, SLA breaches.

A complaint is everything known under one ``complaint_id`` (complaints source). The core keeps the
complaint's events (bounded) and derives its state from them sorted by event time, so events that
arrive out of order give the same result as in order. Ties on the same millisecond sort in lifecycle
order (opened, acknowledged, escalated, resolved, reopened, closed), then by event id hash.

Derived state (:func:`derive`):

- status: the type of the latest event; *open* means opened, acknowledged, escalated or reopened;
- opened_ms: the first ``opened``. Events before it are kept (status, reopens) but never count for
  times or SLAs. A complaint known only by later events (its ``opened`` is older than the pipeline or
  still on its way) is in the backlog when open, but has no times and no SLA until ``opened`` comes;
- first response: the first ``acknowledged`` at or after opened_ms;
- resolution: the last ``resolved`` at or after opened_ms, only while the complaint is not open;
- reopen_count: ``reopened`` events;
- priority, category, origin channel: from the ``opened`` event, else from the earliest event.

SLA (targets per priority, counted from opened_ms by event time):

- first response is breached when nothing answered the customer by the deadline: no acknowledged,
  resolved or closed event at or before it, and the clock (newest event time) is past it;
- resolution is breached when the complaint was open at the deadline or opened again after it, and the
  clock is past it. So a complaint nobody touches breaches on ``tick`` as soon as the clock passes.

Each breach counts once per complaint and stage, when first seen, and publishes a follow-up action
(fact :class:`~pipeline.metrics.facts.ActionRequested`; the actions core sends it) and the fact
:class:`~pipeline.metrics.facts.SlaBreached` (churn evidence). A breach, once counted, stays (a later
out-of-order event that would have prevented it does not undo it).

Counts happen on state transitions after each batch (``tick``): first ``opened`` seen -> opened counter
and the fact :class:`~pipeline.metrics.facts.ComplaintOpened`; first response becoming known -> its histogram; the complaint
becoming resolved (again, after a reopen) -> the resolution histogram. The ``complaints`` table holds
each complaint's events and breach flags, and is the state a worker restores, so a replayed event is
recognised by its id hash and changes nothing: no transition, no count, no row.

The clock is the partition's own: the newest event time it has seen from any source (all sources
are co-partitioned by customer). A partition that is behind, e.g. while a backlog is consumed,
so never judges its complaints by the time other partitions have reached; a quiet partition judges
its deadlines when its next event comes. A restored partition starts from its newest complaint event.

Expiry: a complaint that is not open is forgotten ``max_lateness`` after its last event, on the clock
of the complaints source in the partition (the one the processor judges lateness by), so no event it
already has can reach it again: the complaints topic may be consumed days behind the others, and a
complaint forgotten by the partition's clock would be revived by its own late ``closed`` and its row
replaced by one without its opening. Open complaints are kept. An event for a forgotten complaint
starts it afresh, known only by its new events.
"""
from __future__ import annotations

import bisect
import heapq
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field, field_validator

from pipeline.config import Duration, Section
from pipeline.metrics.base import TICK, Batch, Instrument, MetricCore, NoneOf, OneOf, Output, Restore
from pipeline.metrics.facts import ActionRequested, ComplaintOpened, SlaBreached, action_id
from pipeline.registry import PRIORITIES
from pipeline.tables import ROWS

LIFECYCLE = ("opened", "acknowledged", "escalated", "resolved", "reopened", "closed")
RANK = {event_type: rank for rank, event_type in enumerate(LIFECYCLE)}
OPEN = frozenset(("opened", "acknowledged", "escalated", "reopened"))
ANSWERED = frozenset(("acknowledged", "resolved", "closed"))
STAGES = ("first_response", "resolution")
SOURCE = "complaints"  # the source (topic) of complaint events; its clock in a partition is the expiry clock
OTHER = "other"
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0, 172800.0,
                    259200.0, 604800.0, 1209600.0)
ComplaintRow = ROWS["complaints"]


class Event(NamedTuple):
    """One kept complaint event; tuples sort in the documented order."""

    ms: int
    rank: int
    hash: int


class Derived(NamedTuple):
    status: Optional[str]
    opened_ms: Optional[int]
    first_response_ms: Optional[int]
    resolved_ms: Optional[int]
    reopen_count: int

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


NOTHING = Derived(None, None, None, None, 0)


def derive(events: Sequence[Event], folded_reopens: int = 0) -> Derived:
    """The state of a complaint from its events sorted by (time, lifecycle rank, hash)."""
    opened = next((e.ms for e in events if e.rank == RANK["opened"]), None)
    status = LIFECYCLE[events[-1].rank] if events else None
    first_response = resolved = None
    if opened is not None:
        first_response = next((e.ms for e in events if e.rank == RANK["acknowledged"] and e.ms >= opened), None)
        if status not in OPEN:
            resolved = max((e.ms for e in events if e.rank == RANK["resolved"] and e.ms >= opened), default=None)
    reopens = folded_reopens + sum(1 for e in events if e.rank == RANK["reopened"])
    return Derived(status, opened, first_response, resolved, reopens)


def breach_lateness(events: Sequence[Event], opened_ms: int, stage: str, target_ms: int, clock_ms: int) -> Optional[int]:
    """How late (ms) the stage is at this clock if its SLA is breached, else None."""
    deadline = opened_ms + target_ms
    if clock_ms <= deadline:
        return None
    if stage == "first_response":
        answered = next((e.ms for e in events if LIFECYCLE[e.rank] in ANSWERED and e.ms >= opened_ms), None)
        if answered is not None and answered <= deadline:
            return None
        return (clock_ms if answered is None else answered) - deadline
    at_deadline = [e for e in events if e.ms <= deadline]
    open_at_deadline = bool(at_deadline) and LIFECYCLE[at_deadline[-1].rank] in OPEN
    opened_again_after = any(e.ms > deadline and LIFECYCLE[e.rank] in OPEN and LIFECYCLE[events[i - 1].rank] not in OPEN
                             and _stays_open(events, i) for i, e in enumerate(events) if i)
    if not (open_at_deadline or opened_again_after):
        return None
    last = LIFECYCLE[events[-1].rank]
    return (clock_ms if last in OPEN else events[-1].ms) - deadline


def _stays_open(events: Sequence[Event], i: int) -> bool:
    """Whether the complaint, opened again by events[i], stays open: a reopening answered in the same
    millisecond kept nobody waiting."""
    after = next((e for e in events[i + 1:] if LIFECYCLE[e.rank] not in OPEN), None)
    return after is None or after.ms > events[i].ms


class SlaTargets:
    """``urgent=1h/8h,high=4h/24h,...``: first-response / resolution targets for every priority, parsed once."""

    __slots__ = ("ms", "text")

    def __init__(self, text: Any):
        if isinstance(text, SlaTargets):
            self.ms, self.text = text.ms, text.text
            return
        targets: dict[str, tuple[int, int]] = {}
        for item in str(text).split(","):
            priority, _, spans = item.partition("=")
            first, _, resolution = spans.partition("/")
            if priority.strip() not in PRIORITIES or not resolution:
                raise ValueError(f"bad complaint SLA {item!r}: use priority=first_response/resolution, e.g. high=4h/24h")
            targets[priority.strip()] = (Duration(first).ms, Duration(resolution).ms)
            if targets[priority.strip()][0] > targets[priority.strip()][1]:
                raise ValueError(f"bad complaint SLA {item!r}: the first-response target must not be above the "
                                 "resolution target")
        missing = set(PRIORITIES) - set(targets)
        if missing:
            raise ValueError(f"complaint SLA lacks priorities {sorted(missing)}")
        self.ms: dict[str, tuple[int, int]] = targets  # priority -> (first response, resolution)
        self.text = str(text)

    def __str__(self) -> str:
        return self.text


class ComplaintSettings(Section):
    prefix = "complaint_"
    sla: Any = Field(
        "urgent=1h/8h,high=4h/24h,normal=24h/72h,low=72h/7d", description="Complaint SLA targets per priority: "
        "first response / resolution, counted from `opened` by event time (priority=first/resolution, comma-separated).")
    category_max_values: int = Field(
        20, ge=1, description="Complaint categories a worker labels by name per tenant in cx_complaints_opened_total "
        "(the first ones seen); later categories count as `other`.")
    max_events: int = Field(
        64, ge=4, description="Events kept per complaint to recompute its state when events arrive out of order; "
        "beyond that the oldest are folded into the state.")

    @field_validator("sla", mode="before")
    @classmethod
    def _parse_sla(cls, value: Any) -> SlaTargets:
        return SlaTargets(value)


@dataclass
class Complaint:
    complaint_id: str
    tenant: str
    customer_id: str
    attrs: tuple[str, Optional[str], Optional[str]]  # priority, category, origin_channel
    events: list[Event] = field(default_factory=list)
    hashes: set[int] = field(default_factory=set)
    breached: set[str] = field(default_factory=set)
    folded_reopens: int = 0
    updated_ms: int = 0
    derived: Derived = NOTHING
    written: Optional[tuple] = None  # the row content last emitted or restored, without updated_ms
    backlog_key: Optional[tuple[str, str]] = None  # where it counts in the backlog while open


@dataclass
class ComplaintState:
    partition: int
    complaints: dict[str, Complaint] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # changed since the last tick
    deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap: (deadline ms, complaint id)
    expiries: list[tuple[int, str]] = field(default_factory=list)  # heap: (forget after ms, complaint id)
    backlog: Counter = field(default_factory=Counter)  # (tenant, priority) -> open complaints
    clock_ms: int = 0  # newest event time of the partition, any source
    source_clock_ms: int = 0  # newest complaint event time of the partition: the expiry clock


@dataclass
class ComplaintCore(MetricCore[ComplaintState]):
    sla_ms: dict[str, tuple[int, int]]  # priority -> (first response, resolution) targets
    max_lateness_ms: int
    category_max_values: int = 20
    max_events: int = 64
    name = "complaints"
    Settings = ComplaintSettings
    publishes = {ComplaintOpened: TICK, SlaBreached: TICK, ActionRequested: TICK}
    tables = ("complaints",)
    instruments: Sequence[Instrument] = (
        Instrument("cx_complaints_opened", "counter", "Complaints opened, by priority and category (capped).",
                   ("tenant", "priority", "category")),
        Instrument("cx_complaint_first_response_seconds", "histogram",
                   "Time from opened to the first acknowledgement, once per complaint.", ("tenant", "priority"),
                   DURATION_BUCKETS),
        Instrument("cx_complaint_resolution_seconds", "histogram",
                   "Time from opened to resolved, each time a complaint is resolved.", ("tenant", "priority"),
                   DURATION_BUCKETS),
        Instrument("cx_complaint_sla_breaches", "counter", "Complaints that breached an SLA stage, once per complaint "
                   "and stage.", ("tenant", "priority", "stage")),
    )
    _categories: dict[str, set[str]] = field(default_factory=dict)  # per process: category labels in use per tenant

    @classmethod
    def configure(cls, section: ComplaintSettings, stream: Any) -> "ComplaintCore":
        return cls(section.sla.ms, stream.max_lateness.ms, section.category_max_values, section.max_events)

    def new_state(self, partition: int) -> ComplaintState:
        return ComplaintState(partition)

    # -- input -----------------------------------------------------------------------------------
    def add(self, state: ComplaintState, batch: Batch, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, max(map(itemgetter("event_time"), batch.events)))
        for event, key in zip(*batch.of_source(SOURCE)):
            state.source_clock_ms = max(state.source_clock_ms, event["event_time"])
            cid = event.get("complaint_id")
            if not cid or event["event_type"] not in RANK:
                continue
            complaint = state.complaints.get(cid)
            if complaint is None:
                complaint = state.complaints[cid] = Complaint(
                    cid, event["tenant"], event.get("customer_id") or "", self._attrs_of(event))
            if key in complaint.hashes:
                continue  # seen before (a replay): nothing changes
            item = Event(int(event["event_time"]), RANK[event["event_type"]], key)
            first_opened = item.rank == RANK["opened"] and all(e.rank != item.rank or e > item for e in complaint.events)
            earliest_without_opened = not any(e.rank == RANK["opened"] for e in complaint.events) and \
                (not complaint.events or item < complaint.events[0])
            if first_opened or earliest_without_opened:
                complaint.attrs = self._attrs_of(event)
            bisect.insort(complaint.events, item)
            complaint.hashes.add(key)
            self._fold(complaint)
            state.dirty.add(cid)

    @staticmethod
    def _attrs_of(event: dict) -> tuple[str, Optional[str], Optional[str]]:
        return event.get("priority") or "normal", event.get("category"), event.get("origin_channel")

    def _fold(self, complaint: Complaint) -> None:
        """Bound the kept events: drop the oldest ones except the first opened and the first response."""
        while len(complaint.events) > self.max_events:
            keep = {next((e for e in complaint.events if e.rank == RANK["opened"]), None),
                    next((e for e in complaint.events if e.rank == RANK["acknowledged"]), None)}
            victim = next(e for e in complaint.events if e not in keep)
            complaint.events.remove(victim)
            complaint.folded_reopens += victim.rank == RANK["reopened"]

    # -- after each batch --------------------------------------------------------------------------
    def tick(self, state: ComplaintState, clock_ms: int, out: Output) -> None:
        clock_ms = state.clock_ms  # the partition's own clock, not the worker's (see the module docstring)
        due = set(state.dirty)
        while state.deadlines and state.deadlines[0][0] < clock_ms:
            due.add(heapq.heappop(state.deadlines)[1])
        for cid in sorted(due):
            complaint = state.complaints.get(cid)
            if complaint is not None:
                self._update(state, complaint, clock_ms, out)
        state.dirty.clear()
        self._expire(state, state.source_clock_ms)

    def _update(self, state: ComplaintState, complaint: Complaint, clock_ms: int, out: Output) -> None:
        """Recompute a changed or due complaint; count its transitions, breaches, and write it if it changed."""
        before, after = complaint.derived, derive(complaint.events, complaint.folded_reopens)
        complaint.derived = after
        tenant, (priority, category, _) = complaint.tenant, complaint.attrs
        self._move_backlog(state, complaint, before, after)
        if before.opened_ms is None and after.opened_ms is not None:
            out.count("cx_complaints_opened", (tenant, priority, self._category_label(tenant, category)))
            out.publish(ComplaintOpened(tenant, complaint.customer_id, complaint.complaint_id, after.opened_ms))
            for target in self.sla_ms[priority]:
                heapq.heappush(state.deadlines, (after.opened_ms + target, complaint.complaint_id))
        if before.first_response_ms is None and after.first_response_ms is not None:
            out.observe("cx_complaint_first_response_seconds", (tenant, priority),
                        (after.first_response_ms - after.opened_ms) / 1000)
        if before.resolved_ms is None and after.resolved_ms is not None:
            out.observe("cx_complaint_resolution_seconds", (tenant, priority),
                        (after.resolved_ms - after.opened_ms) / 1000)
        if after.opened_ms is not None:
            for stage, target in zip(STAGES, self.sla_ms[priority]):
                if stage not in complaint.breached:
                    late = breach_lateness(complaint.events, after.opened_ms, stage, target, clock_ms)
                    if late is not None:
                        complaint.breached.add(stage)
                        self._breach(complaint, stage, late, clock_ms, out)
        if not after.is_open:
            heapq.heappush(state.expiries, (complaint.events[-1].ms + self.max_lateness_ms, complaint.complaint_id))
        content = self._content(complaint)
        if content != complaint.written:
            complaint.written = content
            complaint.updated_ms = max(complaint.updated_ms + 1, clock_ms)
            out.rows["complaints"].append(self._row(complaint, state.partition))

    def _move_backlog(self, state: ComplaintState, complaint: Complaint, before: Derived, after: Derived) -> None:
        key = (complaint.tenant, complaint.attrs[0])
        if before.is_open and complaint.backlog_key is not None:
            state.backlog[complaint.backlog_key] -= 1
            if not state.backlog[complaint.backlog_key]:
                del state.backlog[complaint.backlog_key]
        if after.is_open:
            state.backlog[key] += 1
        complaint.backlog_key = key

    def _category_label(self, tenant: str, category: Optional[str]) -> str:
        """The first ``category_max_values`` categories a process sees per tenant keep their name."""
        name = (category or "unknown")[:64]
        used = self._categories.setdefault(tenant, set())
        if name not in used and len(used) < self.category_max_values:
            used.add(name)
        return name if name in used else OTHER

    def _breach(self, complaint: Complaint, stage: str, late_ms: int, clock_ms: int, out: Output) -> None:
        priority, category, _ = complaint.attrs
        out.count("cx_complaint_sla_breaches", (complaint.tenant, priority, stage))
        out.publish(SlaBreached(complaint.tenant, complaint.customer_id, complaint.complaint_id, priority, stage, late_ms,
                                clock_ms))
        kind = "complaint_sla_breach"
        out.publish(ActionRequested(
            action_id=action_id(kind, complaint.complaint_id, stage), kind=kind, tenant=complaint.tenant,
            customer_id=complaint.customer_id,
            reason=f"{priority} complaint {complaint.complaint_id}: {stage.replace('_', ' ')} SLA breached",
            context={"complaint_id": complaint.complaint_id, "priority": priority, "stage": stage,
                     "late_seconds": str(late_ms // 1000), "category": category or ""},
            due_ms=clock_ms + self.sla_ms[priority][0], created_ms=clock_ms))

    def _expire(self, state: ComplaintState, clock_ms: int) -> None:
        while state.expiries and state.expiries[0][0] < clock_ms:
            _, cid = heapq.heappop(state.expiries)
            complaint = state.complaints.get(cid)
            if complaint is not None and not complaint.derived.is_open and \
                    complaint.events[-1].ms + self.max_lateness_ms < clock_ms and cid not in state.dirty:
                del state.complaints[cid]

    # -- rows and restore --------------------------------------------------------------------------
    def _content(self, c: Complaint) -> tuple:
        d = c.derived
        return (d, c.attrs, tuple(c.events), tuple(sorted(c.breached)), c.folded_reopens)

    @staticmethod
    def _row(c: Complaint, partition: int) -> tuple:
        d, (priority, category, channel) = c.derived, c.attrs
        seconds = lambda ms: None if ms is None else ms // 1000  # noqa: E731
        return ComplaintRow(
            complaint_id=c.complaint_id, tenant=c.tenant, customer_id=c.customer_id, priority=priority,
            category=category, origin_channel=channel, status=d.status, opened_at=seconds(d.opened_ms),
            first_response_at=seconds(d.first_response_ms), resolved_at=seconds(d.resolved_ms),
            reopen_count=d.reopen_count, updated_ms=c.updated_ms, opened_ms=d.opened_ms,
            first_response_ms=d.first_response_ms, resolved_ms=d.resolved_ms,
            sla_first_response_breached=int("first_response" in c.breached),
            sla_resolution_breached=int("resolution" in c.breached), last_event_ms=c.events[-1].ms,
            kafka_partition=partition, folded_reopens=c.folded_reopens,
            event_hashes=[e.hash for e in c.events], event_types=[LIFECYCLE[e.rank] for e in c.events],
            event_times_ms=[e.ms for e in c.events])

    def restores(self) -> Sequence[Restore]:
        # Open complaints whatever their age, settled ones while a late event may still reach them.
        columns = ("complaint_id", "tenant", "customer_id", "priority", "category", "origin_channel", "updated_ms",
                   "sla_first_response_breached", "sla_resolution_breached", "folded_reopens", "event_hashes",
                   "event_types", "event_times_ms")
        return (Restore("open", "complaints", columns, None, where=(OneOf("status", tuple(sorted(OPEN))),), final=True),
                Restore("settled", "complaints", columns, "last_event_ms", self.max_lateness_ms,
                        where=(NoneOf("status", tuple(sorted(OPEN))),), final=True, clock_source=SOURCE))

    def restore(self, state: ComplaintState, name: str, rows: list, clock_ms: int) -> None:
        for (cid, tenant, customer, priority, category, channel, updated_ms, fr_breached, res_breached, folded,
             hashes, types, times) in rows:
            events = sorted(Event(int(ms), RANK[t], int(h)) for h, t, ms in zip(hashes, types, times))
            complaint = Complaint(cid, tenant, customer, (priority, category, channel), events,
                                  {e.hash for e in events},
                                  {s for s, flag in zip(STAGES, (fr_breached, res_breached)) if flag}, int(folded),
                                  int(updated_ms))
            complaint.derived = derive(events, complaint.folded_reopens)
            self._move_backlog(state, complaint, NOTHING, complaint.derived)
            complaint.written = self._content(complaint)
            state.complaints[cid] = complaint
            if complaint.derived.opened_ms is not None:
                for stage, target in zip(STAGES, self.sla_ms[priority]):
                    if stage not in complaint.breached:
                        heapq.heappush(state.deadlines, (complaint.derived.opened_ms + target, cid))
            if not complaint.derived.is_open:
                heapq.heappush(state.expiries, (events[-1].ms + self.max_lateness_ms, cid))
            state.clock_ms = max(state.clock_ms, events[-1].ms)
            state.source_clock_ms = max(state.source_clock_ms, events[-1].ms)

    # -- reading ---------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self, states: Sequence[ComplaintState], clocks: Sequence[int]) -> Iterable[Metric]:
        total: Counter = Counter()
        for state in states:
            total.update(state.backlog)
        family = self._family()
        for (tenant, priority), n in sorted(total.items()):
            family.add_metric([tenant, priority], n)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("cx_complaints_open", "Open complaints (backlog): latest event opened, acknowledged, "
                                 "escalated or reopened.", labels=["tenant", "priority"])
