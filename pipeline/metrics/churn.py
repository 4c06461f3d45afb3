"""An explainable churn-risk score per customer, and a signal whenever their risk level changes.

The score is the sum of the weights of the signals present at the event-time clock, at most 1:

=============  ==========================================================================================
inactivity     no event from the customer for ``inactivity`` (14 days)
detractor      the customer's latest NPS answer, within ``memory`` (30 days), a detractor's (0..6; fact
               :class:`~pipeline.metrics.facts.SurveyAnswered` of the survey core)
complaints     two or more complaints opened within ``memory``, or a complaint that breached its SLA
               (facts ``ComplaintOpened`` and ``SlaBreached`` of the complaint core)
downgrade      a ``subscription_downgraded`` CRM event within ``memory``
chatbot        a ``conversation_abandoned`` within ``memory``, or a ``handoff_requested`` not followed by
               ``conversation_resolved`` within ``handoff_timeout`` (24 h)
activity_drop  active on fewer days in the last 7 full days than ``drop`` (half) of the weekly mean of
               the 3 weeks before, when that mean was at least 2 days a week
=============  ==========================================================================================

Levels: ``churned`` after ``subscription_cancelled`` (until a later ``subscription_started``), else
``high`` from ``high`` (0.5), ``medium`` from ``medium`` (0.3), else ``low``. When a customer's level
changes, a ``cx.ChurnSignal`` goes to ``signals.churn`` and a row to ``churn_signals``, with every
contributing signal, its weight and its evidence; the fact ``ChurnLevelChanged`` carries the same to the
follow-up actions. Inactivity and expiring evidence are judged in ``tick`` from a timer heap,
so a customer who goes quiet is re-scored when the clock passes their next change, not at their next event.

Idempotent: every piece of state is a latest time, a day bitmask or a set keyed by complaint id, so
replayed input changes nothing and emits nothing. The state is rebuilt from ``events``,
``survey_responses``, ``churn_evidence`` (what the complaint facts said) and ``churn_signals`` (the
level last signalled). A customer without events for ``forget`` (90 days) is dropped without a signal.
"""
from __future__ import annotations

import heapq
import math
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import BeforeValidator, Field, model_validator

from pipeline.config import Duration, Section
from pipeline.messages import ChurnSignal, Contribution
from pipeline.metrics.base import (
    TICK,
    Batch,
    Equals,
    Facts,
    Instrument,
    MetricCore,
    Newest,
    NotNull,
    OneOf,
    Output,
    Restore,
)
from pipeline.metrics.facts import ChurnLevelChanged, ComplaintOpened, SlaBreached, SurveyAnswered
from pipeline.metrics.lastseen import customer_key
from pipeline.scores import is_detractor
from pipeline.tables import ROWS

DAY_MS = 86_400_000
SIGNALS = ("inactivity", "detractor", "complaints", "downgrade", "chatbot", "activity_drop")
WEIGHTS = {"inactivity": 0.25, "detractor": 0.2, "complaints": 0.2, "downgrade": 0.15, "chatbot": 0.1,
           "activity_drop": 0.1}
LEVELS = ("low", "medium", "high", "churned")
DAY_BITS = 29  # today and the 28 days before: the activity-drop comparison needs no more
DAY_MASK = (1 << DAY_BITS) - 1
MIN_BASELINE_DAYS = 2.0  # weekly active days before a drop can mean anything
BASELINE_WEEKS = 3  # the weeks before the last 7 days whose mean is the baseline
SignalRow, EvidenceRow = ROWS["churn_signals"], ROWS["churn_evidence"]
CRM_TIMES = {"subscription_downgraded": "downgrade_ms", "subscription_cancelled": "cancelled_ms",
             "subscription_started": "started_ms"}
CHAT_TIMES = {"conversation_abandoned": "abandoned_ms", "handoff_requested": "handoff_ms",
              "conversation_resolved": "resolved_ms"}


def day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


@dataclass(frozen=True)
class ChurnConfig:
    weights: dict[str, float]
    medium: float = 0.3
    high: float = 0.5
    inactivity_ms: int = 14 * DAY_MS
    memory_ms: int = 30 * DAY_MS
    handoff_timeout_ms: int = DAY_MS
    drop: float = 0.5
    forget_ms: int = 90 * DAY_MS

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown churn signals {sorted(unknown)} in CXP_CHURN_WEIGHTS; known: {', '.join(SIGNALS)}")
        if not self.medium <= self.high:
            raise ValueError(f"CXP_CHURN_MEDIUM ({self.medium}) must not be above CXP_CHURN_HIGH ({self.high})")
        if not self.inactivity_ms < self.forget_ms:
            raise ValueError("CXP_CHURN_INACTIVITY must be below CXP_CHURN_FORGET: a customer is forgotten before "
                             "the inactivity signal could fire")


def _weights(value: Any) -> dict[str, float]:
    """``signal=weight,...`` (or a mapping); signals not given keep their default weight."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"churn_weights must look like inactivity=0.25,detractor=0.2, got {value!r}")
        value = {name.strip(): float(weight) for name, weight in pairs}
    return {**WEIGHTS, **value}


class ChurnSettings(Section):
    prefix = "churn_"
    weights: Annotated[dict[str, float], BeforeValidator(_weights)] = Field(
        WEIGHTS, description="Weight of each churn signal (signal=weight, comma-separated; signals not "
        "listed keep their default); the score is the sum of the weights of the signals present, at most 1.")
    medium: float = Field(0.3, ge=0, le=1, description="Churn score from which a customer's level is medium.")
    high: float = Field(0.5, ge=0, le=1, description="Churn score from which a customer's level is high.")
    inactivity: Duration = Field(Duration("14d"), description="No event for this long (event time) is the "
                                 "inactivity signal.")
    memory: Duration = Field(
        Duration("30d"), description="How long a detractor answer, complaint, SLA breach, downgrade or chatbot "
        "problem counts towards the churn score.")
    handoff_timeout: Duration = Field(
        Duration("24h"), description="A chatbot handoff not followed by a resolved conversation within this time is "
        "a signal.")
    activity_drop: float = Field(
        0.5, gt=0, lt=1, description="Activity-drop signal: active days in the last 7 full days below this share of "
        "the weekly mean of the 3 weeks before (which must be at least 2 days a week).")
    forget: Duration = Field(Duration("90d"), description="A customer without any event for this long is dropped "
                             "from churn state and gauges.")

    @model_validator(mode="after")
    def _check(self) -> "ChurnSettings":
        self.config()  # unknown signals, thresholds out of order
        return self

    def config(self) -> "ChurnConfig":
        return ChurnConfig(weights=self.weights, medium=self.medium, high=self.high, inactivity_ms=self.inactivity.ms,
                           memory_ms=self.memory.ms, handoff_timeout_ms=self.handoff_timeout.ms,
                           drop=self.activity_drop, forget_ms=self.forget.ms)


class Customer:
    """What the score needs about one customer; times are epoch ms, 0 for never. At rest a customer lives in
    the columns of :class:`ChurnState`; this object is loaded from them while a batch touches the customer
    or a timer scores them, and stored back."""

    __slots__ = ("customer_id", "tenant", "key", "slot", "level", "seq", "due_ms", "last_ms", "days", "nps_ms",
                 "nps_score", "complaints", "breach", "downgrade_ms", "abandoned_ms", "handoff_ms", "resolved_ms",
                 "cancelled_ms", "started_ms")

    def __init__(self, customer_id: str, tenant: str, key: Optional[int] = None):
        self.customer_id, self.tenant, self.level, self.seq = customer_id, tenant, "low", 0  # seq: signals so far
        # customer_key(tenant, customer_id): orders the timers of one due time, hashed once
        self.key = customer_key(tenant, customer_id) if key is None else key
        self.slot = -1  # its place in the ChurnState columns (-1: none yet)
        self.due_ms = self.last_ms = self.days = self.nps_ms = self.nps_score = 0
        self.complaints: tuple = ()  # the two latest distinct (opened ms, complaint id)
        self.breach: Optional[tuple[int, str]] = None  # latest (ms, what happened)
        self.downgrade_ms = self.abandoned_ms = self.handoff_ms = self.resolved_ms = 0
        self.cancelled_ms = self.started_ms = 0

    @property
    def top_day(self) -> int:
        """The day of the latest event: bit 0 of ``days``."""
        return self.last_ms // DAY_MS

    def seen(self, event_ms: int) -> None:
        d, top = event_ms // DAY_MS, self.last_ms // DAY_MS
        if d > top:
            self.days = (self.days << min(d - top, DAY_BITS)) & DAY_MASK
            top = d  # the latest day is now the event's
        if event_ms > self.last_ms:
            self.last_ms = event_ms
        if top - d < DAY_BITS:
            self.days |= 1 << (top - d)

    def seen_all(self, times: Sequence[int]) -> None:
        """``seen`` of each of ``times`` (the result does not depend on their order): the latest first, then the
        day bits of the others."""
        latest = max(times)
        self.seen(latest)
        top = self.last_ms // DAY_MS
        days = self.days
        for event_ms in times:
            back = top - event_ms // DAY_MS
            if back < DAY_BITS:
                days |= 1 << back
        self.days = days

    def active_days(self, first_day: int, last_day: int) -> int:
        """Days in [first_day, last_day] with an event (bit i of ``days`` is day top_day - i)."""
        top = self.last_ms // DAY_MS
        low, high = max(top - last_day, 0), min(top - first_day, DAY_BITS - 1)
        if low > high:
            return 0
        return (self.days >> low & ((1 << (high - low + 1)) - 1)).bit_count()

    def answered(self, event_ms: int, score: int) -> None:
        """The latest NPS answer counts; of two in the same millisecond the lower score, so the result
        does not depend on arrival order (a redelivered answer changes nothing)."""
        if event_ms > self.nps_ms or (event_ms == self.nps_ms and score < self.nps_score):
            self.nps_ms, self.nps_score = event_ms, score

    def complained(self, opened_ms: int, complaint_id: str) -> None:
        if any(cid == complaint_id for _, cid in self.complaints):
            return
        self.complaints = tuple(sorted(self.complaints + ((opened_ms, complaint_id),), reverse=True)[:2])

    def breached(self, at_ms: int, what: str) -> None:
        if self.breach is None or at_ms >= self.breach[0]:
            self.breach = (at_ms, what)

    def note_time(self, attribute: str, event_ms: int) -> None:
        setattr(self, attribute, max(getattr(self, attribute), event_ms))

    def cancelled(self) -> bool:
        return self.cancelled_ms > self.started_ms


def present(c: Customer, clock_ms: int, cfg: ChurnConfig) -> list[str]:
    """The signals present at ``clock_ms``, in SIGNALS order (cheap: runs on every touch of a customer)."""
    memory = cfg.memory_ms
    found = []
    if c.last_ms and clock_ms - c.last_ms >= cfg.inactivity_ms:
        found.append("inactivity")
    if c.nps_ms and clock_ms - c.nps_ms < memory and is_detractor(c.nps_score):
        found.append("detractor")
    complaints = c.complaints  # at most two
    if ((len(complaints) == 2 and clock_ms - complaints[0][0] < memory and clock_ms - complaints[1][0] < memory)
            or (c.breach is not None and clock_ms - c.breach[0] < memory)):
        found.append("complaints")
    if c.downgrade_ms and clock_ms - c.downgrade_ms < memory:
        found.append("downgrade")
    if (c.abandoned_ms and clock_ms - c.abandoned_ms < memory) or (
            c.handoff_ms > c.resolved_ms and _unresolved_handoff(c, clock_ms, cfg)):
        found.append("chatbot")
    if c.days.bit_count() >= BASELINE_WEEKS * MIN_BASELINE_DAYS:  # (fewer active days in all: no baseline)
        last_week, before = _activity(c, clock_ms)
        if before >= MIN_BASELINE_DAYS and last_week < cfg.drop * before:
            found.append("activity_drop")
    return found


def _unresolved_handoff(c: Customer, clock_ms: int, cfg: ChurnConfig) -> bool:
    return c.handoff_ms > c.resolved_ms and cfg.handoff_timeout_ms <= clock_ms - c.handoff_ms < cfg.memory_ms


def _activity(c: Customer, clock_ms: int) -> tuple[int, float]:
    """Active days in the last 7 full days, and the weekly mean of active days in the 3 weeks before."""
    today = clock_ms // DAY_MS
    baseline_first = today - 7 * (BASELINE_WEEKS + 1)
    return c.active_days(today - 7, today - 1), c.active_days(baseline_first, today - 8) / BASELINE_WEEKS


def evidence(c: Customer, signal: str, clock_ms: int, cfg: ChurnConfig) -> str:
    """Why ``signal`` is present, in words."""
    if signal == "inactivity":
        return f"no activity for {(clock_ms - c.last_ms) // DAY_MS} days (last on {day(c.last_ms)})"
    if signal == "detractor":
        return f"NPS {c.nps_score} on {day(c.nps_ms)}"
    if signal == "complaints":
        recent = [ms for ms, _ in c.complaints if clock_ms - ms < cfg.memory_ms]
        parts = [f"{len(recent)} complaints within {cfg.memory_ms // DAY_MS} days (last on {day(recent[0])})"] \
            if len(recent) >= 2 else []
        if c.breach is not None and clock_ms - c.breach[0] < cfg.memory_ms:
            parts.append(f"{c.breach[1]} on {day(c.breach[0])}")
        return "; ".join(parts)
    if signal == "downgrade":
        return f"subscription downgraded on {day(c.downgrade_ms)}"
    if signal == "chatbot":
        parts = [f"chatbot conversation abandoned on {day(c.abandoned_ms)}"] \
            if c.abandoned_ms and clock_ms - c.abandoned_ms < cfg.memory_ms else []
        if _unresolved_handoff(c, clock_ms, cfg):
            parts.append(f"chatbot handoff on {day(c.handoff_ms)} never resolved")
        return "; ".join(parts)
    last_week, before = _activity(c, clock_ms)
    return f"active on {last_week} of the last 7 days, {before:.1f} a week in the 3 weeks before"


def contributions(c: Customer, clock_ms: int, cfg: ChurnConfig) -> list[Contribution]:
    """Each signal present at ``clock_ms`` with its weight and evidence, in SIGNALS order."""
    return [Contribution(name, cfg.weights.get(name, 0.0), evidence(c, name, clock_ms, cfg))
            for name in present(c, clock_ms, cfg)]


def since(c: Customer, signal: str, clock_ms: int, cfg: ChurnConfig) -> int:
    """The event time from which ``signal`` (present at ``clock_ms``) has been present, from the customer's
    evidence alone: the same whatever batches the input came in."""
    memory = cfg.memory_ms
    if signal == "inactivity":
        return c.last_ms + cfg.inactivity_ms
    if signal == "detractor":
        return c.nps_ms
    if signal == "downgrade":
        return c.downgrade_ms
    if signal == "complaints":
        held = [c.complaints[0][0]] if len(c.complaints) == 2 and clock_ms - c.complaints[1][0] < memory else []
        if c.breach is not None and clock_ms - c.breach[0] < memory:
            held.append(c.breach[0])
        return min(held)
    if signal == "chatbot":
        held = [c.abandoned_ms] if c.abandoned_ms and clock_ms - c.abandoned_ms < memory else []
        if _unresolved_handoff(c, clock_ms, cfg):
            held.append(c.handoff_ms + cfg.handoff_timeout_ms)
        return min(held)
    return clock_ms // DAY_MS * DAY_MS  # activity_drop is judged per day


def reached_ms(c: Customer, signals: Sequence[str], threshold: float, clock_ms: int, cfg: ChurnConfig) -> int:
    """When the present signals first added up to ``threshold``: signals taken in the order they appeared,
    the time of the one that crossed it. It names a level change by its evidence, not by the batch that
    happened to carry it, so a replay after a crash names the same change the same way."""
    total = 0.0
    for started, name in sorted((since(c, name, clock_ms, cfg), name) for name in signals):
        total = round(total + cfg.weights.get(name, 0.0), 9)
        if total >= threshold:
            return started
    return clock_ms


def score_of(signals: Sequence[str], cfg: ChurnConfig) -> float:
    return min(1.0, round(sum(cfg.weights.get(name, 0.0) for name in signals), 9))


def score_level(score: float, cfg: ChurnConfig) -> str:
    """The level a score gives; a cancelled customer is churned whatever the score (``_evaluate``)."""
    return "high" if score >= cfg.high else "medium" if score >= cfg.medium else "low"


def next_change_ms(c: Customer, clock_ms: int, cfg: ChurnConfig) -> int:
    """The earliest clock after ``clock_ms`` at which the clock alone may change the score, or forget them: the
    earliest of the change times below that lies after ``clock_ms`` (runs once per scored customer, so no list)."""
    last, memory = c.last_ms, cfg.memory_ms
    found = math.inf
    for ms in (last + cfg.inactivity_ms, last + cfg.forget_ms):
        if clock_ms < ms < found:
            found = ms
    if c.nps_ms or c.downgrade_ms or c.abandoned_ms or c.handoff_ms or c.complaints or c.breach:  # most have none
        for ms in (c.nps_ms, c.downgrade_ms, c.abandoned_ms, c.handoff_ms):
            if ms and clock_ms < ms + memory < found:
                found = ms + memory
        for ms, _ in c.complaints:
            if ms and clock_ms < ms + memory < found:
                found = ms + memory
        if c.breach and c.breach[0] and clock_ms < c.breach[0] + memory < found:
            found = c.breach[0] + memory
        if c.handoff_ms > c.resolved_ms and clock_ms < c.handoff_ms + cfg.handoff_timeout_ms < found:
            found = c.handoff_ms + cfg.handoff_timeout_ms
    today = clock_ms // DAY_MS
    if c.days and last // DAY_MS + DAY_BITS > today and clock_ms < (today + 1) * DAY_MS < found:
        found = (today + 1) * DAY_MS  # the activity-drop days move at midnight
    return clock_ms + cfg.forget_ms if found == math.inf else found


SLOT_BITS, KEY_BITS = 32, 64  # a timer is one int, due ms, customer key, slot: ordered as (due ms, key)
SLOT_MASK, KEY_MASK = (1 << SLOT_BITS) - 1, (1 << KEY_BITS) - 1
LEVEL_CODES = {level: code for code, level in enumerate(LEVELS)}
# One customer's numbers in ChurnState.records, in the order of ChurnState.load: its customer_key, its nine
# times (due_ms and last_ms first: _HEAD), level code, seq, days and nps_score
RECORD = struct.Struct("<Q9qbiib")
_HEAD = struct.Struct("<Qqq")


def timer(due_ms: int, key: int, slot: int) -> int:
    return (due_ms << KEY_BITS | key) << SLOT_BITS | slot


@dataclass
class ChurnState:
    """The customers in columns, one slot each (no Python object per customer or per number): ``records`` holds
    each slot's numbers as one :data:`RECORD`; the two latest complaints and the latest breach, which few
    customers have, are kept by slot."""

    slots: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant -> customer id -> slot
    ids: list[Optional[str]] = field(default_factory=list)  # customer id per slot (None: a free slot)
    tenants: list[Optional[str]] = field(default_factory=list)  # interned tenant name per slot
    records: bytearray = field(default_factory=bytearray)
    complaints: dict[int, tuple] = field(default_factory=dict)  # slot -> Customer.complaints, when any
    breaches: dict[int, tuple[int, str]] = field(default_factory=dict)  # slot -> Customer.breach, when any
    free: list[int] = field(default_factory=list)  # slots of forgotten customers, reused first
    timers: list[int] = field(default_factory=list)  # heap of timer(due ms, customer key, slot)
    dirty: dict[tuple[str, str], Customer] = field(default_factory=dict)  # loaded, touched since the last tick
    clock_ms: int = 0
    partition: int = 0  # the Kafka partition this state belongs to
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, level) -> customers: the gauge, kept

    def __len__(self) -> int:
        """Customers held (new ones touched since the last tick included)."""
        return len(self.ids) - len(self.free) + sum(c.slot < 0 for c in self.dirty.values())

    def slot(self, tenant: str, customer_id: str) -> Optional[int]:
        by_id = self.slots.get(tenant)
        return None if by_id is None else by_id.get(customer_id)

    def load(self, slot: int) -> Customer:
        c = Customer.__new__(Customer)
        c.customer_id, c.tenant, c.slot = self.ids[slot], self.tenants[slot], slot
        (c.key, c.due_ms, c.last_ms, c.nps_ms, c.downgrade_ms, c.abandoned_ms, c.handoff_ms, c.resolved_ms,
         c.cancelled_ms, c.started_ms, level, c.seq, c.days, c.nps_score) = RECORD.unpack_from(self.records,
                                                                                             slot * RECORD.size)
        c.level = LEVELS[level]
        c.complaints = self.complaints.get(slot, ())
        c.breach = self.breaches.get(slot)
        return c

    def place(self, c: Customer) -> None:
        """Give a new customer a slot (its numbers are written by ``store``)."""
        if self.free:
            slot = c.slot = self.free.pop()
            self.ids[slot], self.tenants[slot] = c.customer_id, c.tenant
        else:
            slot = c.slot = len(self.ids)
            self.ids.append(c.customer_id)
            self.tenants.append(c.tenant)
            self.records.extend(bytes(RECORD.size))
        self.slots.setdefault(c.tenant, {})[c.customer_id] = slot

    def store(self, c: Customer) -> None:
        """Write a loaded (or new) customer back to the columns."""
        if c.slot < 0:
            self.place(c)
        slot = c.slot
        RECORD.pack_into(self.records, slot * RECORD.size, c.key, c.due_ms, c.last_ms, c.nps_ms, c.downgrade_ms,
                         c.abandoned_ms, c.handoff_ms, c.resolved_ms, c.cancelled_ms, c.started_ms,
                         LEVEL_CODES[c.level], c.seq, c.days, c.nps_score)
        if c.complaints:
            self.complaints[slot] = c.complaints
        elif slot in self.complaints:
            del self.complaints[slot]
        if c.breach:
            self.breaches[slot] = c.breach
        elif slot in self.breaches:
            del self.breaches[slot]

    def forget(self, slot: int) -> None:
        tenant = self.tenants[slot]
        del self.slots[tenant][self.ids[slot]]
        self.recount(tenant, LEVELS[RECORD.unpack_from(self.records, slot * RECORD.size)[10]], None)
        self.ids[slot] = self.tenants[slot] = None
        self.complaints.pop(slot, None)
        self.breaches.pop(slot, None)
        self.free.append(slot)

    def store_due(self, c: Customer) -> None:
        _HEAD.pack_into(self.records, c.slot * RECORD.size, c.key, c.due_ms, c.last_ms)

    def head(self, slot: int) -> tuple[int, int, int]:
        """customer_key, due_ms and last_ms of the customer in ``slot``."""
        return _HEAD.unpack_from(self.records, slot * RECORD.size)

    def customers(self) -> dict[int, Customer]:
        """Every customer held by customer_key, loaded (those touched since the last tick as they are now): for
        reading."""
        held = {c.key: c for c in (self.load(slot) for by_id in self.slots.values() for slot in by_id.values())}
        held.update((c.key, c) for c in self.dirty.values())
        return held

    def recount(self, tenant: str, old: Optional[str], new: Optional[str]) -> None:
        """Move one customer of ``tenant`` from level ``old`` to ``new`` in the kept gauge (None: not held)."""
        counts = self.counts
        if old is not None:
            counts[tenant, old] -= 1
        if new is not None:
            counts[tenant, new] = counts.get((tenant, new), 0) + 1


@dataclass
class ChurnCore(MetricCore[ChurnState]):
    config: ChurnConfig
    name = "churn"
    Settings = ChurnSettings
    publishes = {ChurnLevelChanged: TICK}
    consumes = (SurveyAnswered, ComplaintOpened, SlaBreached)
    tables = ("churn_signals", "churn_evidence")
    instruments: Sequence[Instrument] = (
        Instrument("cx_churn_signals", "counter", "Churn signals emitted (level changes), by contributing signal; "
                   "cancelled for churned, cleared for a return to low without any signal.", ("tenant", "reason")),
    )

    def __post_init__(self) -> None:
        self._levels: dict[tuple[str, ...], tuple[float, str]] = {}  # signals -> (score_of, score_level)

    @classmethod
    def configure(cls, section: ChurnSettings, stream: Any) -> "ChurnCore":
        return cls(section.config())

    def new_state(self, partition: int) -> ChurnState:
        return ChurnState(partition=partition)

    def _touch(self, state: ChurnState, tenant: str, customer_id: str, create: bool = True,
               key: Optional[int] = None) -> Optional[Customer]:
        """The customer, loaded and marked dirty (stored back by ``tick``). A new one is created, unless not
        ``create`` (then None); ``key``: their customer_key, when known."""
        c = state.dirty.get((tenant, customer_id))
        if c is None:
            slot = state.slot(tenant, customer_id)
            if slot is not None:
                c = state.load(slot)
            elif not create:
                return None
            else:
                c = self._new(state, tenant, customer_id, key)
            state.dirty[(tenant, customer_id)] = c
        return c

    @staticmethod
    def _new(state: ChurnState, tenant: str, customer_id: str, key: Optional[int] = None) -> Customer:
        """A customer not held yet (``key``: their customer_key, when known), counted at their level; a slot when
        stored."""
        c = Customer(customer_id, sys.intern(tenant), key)  # one name per tenant
        state.recount(c.tenant, None, c.level)
        return c

    # -- input -----------------------------------------------------------------------------------
    def add(self, state: ChurnState, batch: Batch, out: Output) -> None:
        """Each customer of the batch is touched once (the batch's customer view), with all their event times;
        then the CRM and chatbot events that are evidence note their times."""
        touch, customers = self._touch, batch.customers()
        clock = state.clock_ms
        # each customer's customer_key from the view (hashed once per batch, for the cores that read it), for new ones
        for (tenant, customer_id), times, key, first, latest in zip(
                customers.keys, customers.times, customers.hashes().tolist(), customers.firsts().tolist(),
                customers.lasts().tolist()):
            c = touch(state, tenant, customer_id, key=key)
            if first // DAY_MS == latest // DAY_MS:
                c.seen(latest)  # all on the latest's day: its bit is all the others would set
            else:
                c.seen_all(times)
            if latest > clock:
                clock = latest
        state.clock_ms = clock
        for source, attributes in (("crm", CRM_TIMES), ("chatbot", CHAT_TIMES)):
            for event in batch.of_source(source)[0]:
                attribute = attributes.get(event["event_type"])
                if attribute:
                    customer_id = event.get("customer_id")
                    if customer_id is not None:
                        state.dirty[event["tenant"], customer_id].note_time(attribute, event["event_time"])

    def take(self, state: ChurnState, facts: Facts, out: Output) -> None:
        """NPS answers, complaints opened and SLA breaches: their customers become dirty."""
        for answer in facts.of(SurveyAnswered):
            if answer.kind == "NPS" and answer.customer_id is not None:
                self._touch(state, answer.tenant, answer.customer_id).answered(answer.event_ms, answer.score)
        rows = out.rows["churn_evidence"]
        for opened in facts.of(ComplaintOpened):
            c = self._touch(state, opened.tenant, opened.customer_id)
            c.complained(opened.opened_ms, opened.complaint_id)
            rows.append(EvidenceRow(opened.tenant, opened.customer_id, "complaint_opened", opened.complaint_id,
                                    opened.opened_ms, "", state.partition))
        for breach in facts.of(SlaBreached):
            c = self._touch(state, breach.tenant, breach.customer_id)
            what = (f"complaint {breach.complaint_id} ({breach.priority}) missed its {breach.stage} SLA "
                    f"by {breach.late_ms / 3_600_000:.1f} h")
            c.breached(breach.at_ms, what)
            rows.append(EvidenceRow(breach.tenant, breach.customer_id, "sla_breach",
                                    f"{breach.complaint_id}|{breach.stage}", breach.at_ms, what, state.partition))

    def tick(self, state: ChurnState, clock_ms: int, out: Output) -> None:
        """Score the customers the batch touched, then those whose timer is due, at the batch's clock.
        Once per batch, not per event: events of one batch arriving out of order across topics
        would otherwise flip a level back and forth within the batch."""
        state.clock_ms = clock_ms = max(state.clock_ms, clock_ms)
        place, evaluate, store = state.place, self._evaluate, state.store
        for c in state.dirty.values():
            if c.slot < 0:
                place(c)  # before its first timer
            evaluate(state, c, clock_ms, out)
            store(c)
        state.dirty.clear()
        timers, limit = state.timers, (state.clock_ms + 1) << (KEY_BITS + SLOT_BITS)
        while timers and timers[0] < limit:
            entry = heapq.heappop(timers)
            due, slot = entry >> (KEY_BITS + SLOT_BITS), entry & SLOT_MASK
            key, due_ms, last_ms = state.head(slot)
            if key != entry >> SLOT_BITS & KEY_MASK or state.ids[slot] is None:
                continue  # forgotten (its slot free, or another customer's now)
            if due_ms != due:
                continue  # superseded by an earlier timer
            if state.clock_ms - last_ms >= self.config.forget_ms:
                state.forget(slot)
                continue
            c = state.load(slot)
            level = c.level
            self._evaluate(state, c, state.clock_ms, out)
            if c.level == level:
                state.store_due(c)  # all a re-score without a new level changes
            else:
                state.store(c)

    def _evaluate(self, state: ChurnState, c: Customer, clock_ms: int, out: Output) -> None:
        signals = present(c, clock_ms, self.config)
        # score and its level depend on the set of signals only: at most 2**6 of them
        key = tuple(signals)
        scored = self._levels.get(key)
        if scored is None:
            score = score_of(signals, self.config)
            scored = self._levels[key] = (score, score_level(score, self.config))
        score, level = scored
        if c.cancelled():
            level = "churned"
        if level != c.level:
            reached = (c.cancelled_ms if level == "churned" else clock_ms if level == "low" else
                       reached_ms(c, signals, self.config.high if level == "high" else self.config.medium, clock_ms,
                                  self.config))
            self._emit(state, c, level, score, contributions(c, clock_ms, self.config), clock_ms, reached, out)
        # One live timer per customer: a later change time needs no new entry, because the pending
        # earlier one re-scores the customer (harmlessly early) and schedules the next.
        due = next_change_ms(c, clock_ms, self.config)
        if c.due_ms <= clock_ms or due < c.due_ms:
            c.due_ms = due
            heapq.heappush(state.timers, timer(due, c.key, c.slot))

    def _emit(self, state: ChurnState, c: Customer, level: str, score: float, found: list[Contribution],
              at_ms: int, reached: int, out: Output) -> None:
        if level == "churned":
            found = [Contribution("cancelled", 0.0, f"subscription cancelled on {day(c.cancelled_ms)}"), *found]
        reasons = [f"{f.signal} ({f.weight:g}): {f.evidence}" for f in found]
        previous, c.level, c.seq = c.level, level, c.seq + 1
        state.recount(c.tenant, previous, level)
        out.rows["churn_signals"].append(SignalRow(
            customer_id=c.customer_id, tenant=c.tenant, score=score, level=level, reasons=reasons,
            signal_time=at_ms // 1000, signal_ms=at_ms, previous_level=previous, kafka_partition=state.partition,
            seq=c.seq, reached_ms=reached))
        out.send("signals.churn", c.customer_id.encode("utf-8"), ChurnSignal(
            customer_id=c.customer_id, tenant=c.tenant, score=score, level=level, reasons=reasons, signal_time=at_ms,
            previous_level=previous, contributions=list(found), sequence=c.seq))
        for f in found or (Contribution("cleared", 0.0, ""),):
            out.count("cx_churn_signals", (c.tenant, f.signal))
        out.publish(ChurnLevelChanged(c.tenant, c.customer_id, level, previous, score, tuple(reasons), at_ms, c.seq,
                                      reached))

    # -- restore ---------------------------------------------------------------------------------
    def restores(self) -> Sequence[Restore]:
        cfg, known = self.config, (NotNull("customer_id"),)
        per_customer = ("tenant", "customer_id")
        return (  # in this order: "seen" makes the customers the others fill in, "levels" ends the rebuild
            Restore("seen", "events", ("tenant", "customer_id", "event_ms"), "event_ms", cfg.forget_ms, known,
                    Newest(per_customer, "event_ms")),
            Restore("days", "events", ("tenant", "customer_id", "event_ms"), "event_ms", DAY_BITS * DAY_MS, known,
                    Newest(per_customer, "event_ms", bucket_ms=DAY_MS)),
            Restore("typed", "events", ("tenant", "customer_id", "event_type", "event_ms"), "event_ms", cfg.forget_ms,
                    known + (OneOf("event_type", (*CRM_TIMES, *CHAT_TIMES)),),
                    Newest((*per_customer, "event_type"), "event_ms")),
            Restore("nps", "survey_responses", ("tenant", "customer_id", "score", "event_ms"), "event_ms",
                    cfg.memory_ms, known + (Equals("kind", "NPS"),)),
            Restore("evidence", "churn_evidence", ("tenant", "customer_id", "kind", "evidence_id", "evidence_ms",
                                                   "detail"), "evidence_ms", cfg.memory_ms, final=True),
            Restore("levels", "churn_signals", ("tenant", "customer_id", "level", "seq"), "signal_ms", cfg.forget_ms,
                    newest=Newest(per_customer, "seq")),
        )

    def restore(self, state: ChurnState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        for row in rows:
            # "seen" makes the customers; one signalled but whose events are not durable yet (a flush torn
            # after churn_signals) keeps its level and sequence, so the replayed events continue it instead
            # of signalling it again; any other row of a customer without events within `forget` is forgotten
            c = self._touch(state, row.tenant, row.customer_id, create=name in ("seen", "levels"))
            if c is None:
                continue
            if name == "seen":
                c.seen(int(row.event_ms))
            if name == "days":
                c.seen(int(row.event_ms))
            elif name == "typed":
                c.note_time({**CRM_TIMES, **CHAT_TIMES}[row.event_type], int(row.event_ms))
            elif name == "nps":
                c.answered(int(row.event_ms), int(row.score))
            elif name == "evidence":
                if row.kind == "complaint_opened":
                    c.complained(int(row.evidence_ms), row.evidence_id)
                else:
                    c.breached(int(row.evidence_ms), row.detail)
            elif name == "levels":
                state.recount(c.tenant, c.level, row.level)
                c.level, c.seq = row.level, int(row.seq)
        for c in state.dirty.values():
            state.store(c)
        state.dirty.clear()
        if name == "levels":  # the last one: score everyone at the next tick
            for by_id in state.slots.values():
                for slot in by_id.values():
                    key, _, last_ms = state.head(slot)
                    _HEAD.pack_into(state.records, slot * RECORD.size, key, state.clock_ms, last_ms)  # due now
                    heapq.heappush(state.timers, timer(state.clock_ms, key, slot))

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def levels(states: Sequence[ChurnState]) -> dict[tuple[str, str], int]:
        """(tenant, level) -> customers held at that level (from the kept counts: no walk over customers)."""
        out: dict[tuple[str, str], int] = {}
        for state in states:
            for key, n in state.counts.items():
                if n:
                    out[key] = out.get(key, 0) + n
        return out

    @staticmethod
    def count_customers(states: Sequence[ChurnState]) -> dict[tuple[str, str], int]:
        """The same from every customer (the plain recomputation the kept counts must equal)."""
        out: dict[tuple[str, str], int] = {}
        for state in states:
            for c in state.customers().values():
                out[(c.tenant, c.level)] = out.get((c.tenant, c.level), 0) + 1
        return out

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self, states: Sequence[ChurnState], clocks: Sequence[int]) -> Iterable[Metric]:
        family = self._family()
        counts = self.levels(states)
        for tenant in sorted({tenant for tenant, _ in counts}):
            for level in LEVELS:
                family.add_metric([tenant, level], counts.get((tenant, level), 0))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("cx_churn_risk_customers", "Customers by current churn risk level (low, medium, "
                                 "high, churned).", labels=["tenant", "level"])
