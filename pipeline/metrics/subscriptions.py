"""Subscription revenue: MRR and paying customers per plan, MRR movements per window, ARPU, churn rate and LTV.

A **subscription event** is a CRM ``subscription_started``, ``_renewed``, ``_upgraded``, ``_downgraded`` or
``_cancelled`` event of a customer. Each sets the customer's MRR after it: 0 for a cancellation, else its
``mrr``. Money is exact: ``mrr`` (an Avro double) is converted once, here, to integer hundredths of the
currency unit from its shortest decimal form (19.99 -> 1999; a third decimal is rounded half to even), and
every sum is of those integers. CRM events carry no currency: one currency per tenant is assumed. A
negative or non-finite ``mrr`` is dead-lettered by validation; a non-cancelling event without one is not taken.

A customer's events are ordered by (event time, event id). The **current** subscription is the latest one;
the customer is **paying** while its MRR is above 0 (``cx_subscription_paying_customers`` and
``cx_subscription_mrr`` per plan, the latest event's plan). Each event **moves** MRR from the MRR after the
customer's previous event (0 if there is none) to its own: ``new`` from 0, ``churned`` to 0, ``expansion``
(an upgrade) up, ``contraction`` (a downgrade) down, nothing when equal (a renewal at the same price).
``cx_subscription_changes`` counts the events per movement in the window, ``cx_subscription_mrr_movement``
sums the MRR they moved (churned MRR: the MRR the cancelled customers paid). The first event the pipeline
sees of a customer subscribed before it started moves MRR from 0, so it counts as new.

Derived per tenant: ARPU = MRR / paying customers; churn rate over window W = churned / (paying now +
churned), i.e. churn events over the paying spells the window saw (those paying when it began plus the new
ones); LTV = ARPU / churn rate over 30d (monthly MRR over a monthly churn rate: the MRR a paying customer
brings over their expected lifetime), absent while nobody churned in 30 days.

State per partition: per customer their events of the last ``largest window + max lateness`` (a late event
recomputes the movements after it) and always their latest; a customer who is not paying is forgotten once
that latest is older than the span. The span is measured on the clock of the CRM source in the partition
(the one the processor judges lateness by): the CRM topic may be consumed weeks behind the partition's other
sources and its events are still valid then; by the partition's clock they would be dropped, a late
cancellation leaving its customer paying. The ``subscriptions`` table keeps each event with its MRR before and
whether it is the customer's latest held in memory, so the state is rebuilt from its rows.
"""
from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Duration, Section, Windows
from pipeline.dedup import EventIdKey, id_key, id_text
from pipeline.metrics.base import Batch, Equals, MetricCore, Output, Restore
from pipeline.metrics.lastseen import MINUTE_MS
from pipeline.metrics.segments import MAX_LABEL_CHARS, OTHER, UNKNOWN
from pipeline.metrics.windows import RollingCounts
from pipeline.tables import COLUMNS, ROWS

SOURCE = "crm"  # the source (topic) of subscription events; its clock in a partition is the clock of the span
CANCELLED = "subscription_cancelled"
SUBSCRIPTION_EVENTS = frozenset(("subscription_started", "subscription_renewed", "subscription_upgraded",
                                 "subscription_downgraded", CANCELLED))
MOVEMENTS = ("new", "expansion", "contraction", "churned")
NEW, EXPANSION, CONTRACTION, CHURNED = range(4)
MOVEMENT_BITS = 2  # a movement's index in the low bits of a counted change's int
MINOR_PER_UNIT = 100
LTV_WINDOW = "30d"
SubscriptionRow = ROWS["subscriptions"]


def minor_units(amount: Optional[float]) -> Optional[int]:
    """An Avro double amount as integer hundredths, exactly as written (None: absent, negative or not finite)."""
    if amount is None or not math.isfinite(amount) or amount < 0:
        return None
    return int(Decimal(repr(amount)).scaleb(2).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def movement(before: int, after: int) -> Optional[tuple[int, int]]:
    """(index into MOVEMENTS, MRR moved) of a change from ``before`` to ``after``, or None."""
    if before == after:
        return None
    if before == 0:
        return NEW, after
    if after == 0:
        return CHURNED, before
    return (EXPANSION, after - before) if after > before else (CONTRACTION, before - after)


def plan_label(plan: Optional[str]) -> str:
    return (plan or UNKNOWN)[:MAX_LABEL_CHARS]


class SubscriptionSettings(Section):
    prefix = "subscription_"
    windows: Windows = Field(
        [Duration("7d"), Duration("30d")], description="Windows of `cx_subscription_changes`, "
        "`cx_subscription_mrr_movement` and `cx_subscription_churn_ratio`, by event time (comma-separated). LTV "
        "uses the 30d one (keep it).")
    max_plans: int = Field(
        20, ge=1, description="Plans exported per tenant in `cx_subscription_mrr` and "
        "`cx_subscription_paying_customers` (those with most paying customers); the rest are summed as `other`.")


@dataclass(slots=True)
class Change:
    """One subscription event of a customer."""

    event_ms: int
    event_id: EventIdKey  # dedup.id_key of the event id (written back as id_text)
    event_type: str
    plan: Optional[str]
    mrr: Optional[int]  # hundredths, as the event carried it
    before: int = 0  # MRR after the customer's previous event
    held: bool = False  # the customer's latest
    version: int = 0  # updated_ms of the row last written or restored
    written: Optional[int] = None  # before << 1 | held of that row (one int, not a tuple)
    counted: Optional[int] = None  # MRR moved << MOVEMENT_BITS | movement as counted in the windows, at the change's minute
    after: int = field(init=False)  # the customer's MRR after it

    def __post_init__(self) -> None:
        self.after = 0 if self.event_type == CANCELLED else self.mrr or 0

    def order(self) -> tuple[int, str]:
        """A customer's changes are in time order, one millisecond's in event id order."""
        return self.event_ms, id_text(self.event_id)


@dataclass(slots=True)
class Subscriber:
    tenant: str
    customer_id: str
    changes: list[Change] = field(default_factory=list)  # in order; the last is the current subscription
    prior: int = 0  # MRR after the event before changes[0] (no longer held), 0 if none
    paying: Optional[tuple[str, int]] = None  # (plan label, MRR) as counted in the plan totals


@dataclass
class SubscriptionState:
    partition: int
    windows: RollingCounts  # key: tenant; per minute: events per movement, then MRR moved per movement
    subscribers: dict[tuple[str, str], Subscriber] = field(default_factory=dict)
    plans: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (tenant, plan) -> [paying, MRR]
    dirty: set[tuple[str, str]] = field(default_factory=set)
    # heap: (event ms, key), looked at again span_ms after that event ms (the event's own int, not a new sum)
    expiries: list[tuple[int, tuple[str, str]]] = field(default_factory=list)
    clock_ms: int = 0  # newest event time of the partition, any source: the windows' clock
    source_clock_ms: int = 0  # newest CRM event time of the partition: the clock of the span held


@dataclass
class SubscriptionCore(MetricCore[SubscriptionState]):
    windows_ms: dict[str, int]
    max_plans: int
    max_lateness_ms: int
    name = "subscriptions"
    Settings = SubscriptionSettings
    tables = ("subscriptions",)

    @classmethod
    def configure(cls, section: SubscriptionSettings, stream: Any) -> "SubscriptionCore":
        return cls({str(window): window.ms for window in section.windows}, section.max_plans, stream.max_lateness.ms)

    @property
    def span_ms(self) -> int:
        """How long a customer's events are held: a late event can still move a window's counts."""
        return max(self.windows_ms.values()) + self.max_lateness_ms

    def new_state(self, partition: int) -> SubscriptionState:
        return SubscriptionState(partition, RollingCounts(self.windows_ms, 2 * len(MOVEMENTS)))

    def add(self, state: SubscriptionState, batch: Batch, out: Output) -> None:
        span_ms = self.span_ms
        oldest = state.source_clock_ms - span_ms
        for event in batch.of_source(SOURCE)[0]:
            state.source_clock_ms = max(state.source_clock_ms, event["event_time"])
            kind = event["event_type"]
            if kind not in SUBSCRIPTION_EVENTS or event.get("customer_id") is None or event["event_time"] <= oldest:
                continue  # not a subscription event, or older than every event held (it can change no window)
            mrr = minor_units(event.get("mrr"))
            if mrr is None and kind != CANCELLED:
                continue
            key = (event["tenant"], event["customer_id"])
            sub = state.subscribers.get(key)
            event_id = id_key(event["event_id"])
            if sub is None:
                sub = state.subscribers[key] = Subscriber(*key)
            elif any(change.event_id == event_id for change in sub.changes):
                continue
            bisect.insort(sub.changes, Change(event["event_time"], event_id, kind, event.get("plan"), mrr),
                          key=Change.order)
            state.dirty.add(key)
            heapq.heappush(state.expiries, (event["event_time"], key))

    def tick(self, state: SubscriptionState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        rows = out.rows["subscriptions"]
        for key in state.dirty:
            sub = state.subscribers[key]
            self._recount(state, sub)
            self._write(state, sub, rows)
        state.dirty.clear()
        state.windows.prune(state.clock_ms)
        oldest = state.source_clock_ms - self.span_ms
        while state.expiries and state.expiries[0][0] <= oldest:
            _, key = heapq.heappop(state.expiries)
            sub = state.subscribers.get(key)
            if sub is None:
                continue
            while len(sub.changes) > 1 and sub.changes[0].event_ms <= oldest:  # outside every window: fold it
                sub.prior = sub.changes.pop(0).after
            latest = sub.changes[-1]
            if latest.event_ms <= oldest and latest.after == 0:  # not paying and beyond reach: forget them
                latest.held = False
                self._write(state, sub, rows)
                del state.subscribers[key]

    def _recount(self, state: SubscriptionState, sub: Subscriber) -> None:
        """Recompute every held event's MRR before and movement, and move the counts to match."""
        before = sub.prior
        for change in sub.changes:
            change.before, change.held = before, change is sub.changes[-1]
            moved = movement(before, change.after)
            counted = None if moved is None else moved[1] << MOVEMENT_BITS | moved[0]
            if counted != change.counted:
                if change.counted is not None:
                    self._count(state, sub.tenant, change.event_ms, change.counted, -1)
                if counted is not None:
                    self._count(state, sub.tenant, change.event_ms, counted, 1)
                change.counted = counted
            before = change.after
        latest = sub.changes[-1]
        paying = (plan_label(latest.plan), latest.after) if latest.after > 0 else None
        if paying != sub.paying:
            for plan, mrr, sign in ((*(sub.paying or ("", 0)), -1), (*(paying or ("", 0)), 1)):
                if mrr:
                    totals = state.plans.setdefault((sub.tenant, plan), [0, 0])
                    totals[0] += sign
                    totals[1] += sign * mrr
                    if totals == [0, 0]:
                        del state.plans[(sub.tenant, plan)]
            sub.paying = paying

    @staticmethod
    def _count(state: SubscriptionState, tenant: str, event_ms: int, counted: int, sign: int) -> None:
        index, amount = counted & (1 << MOVEMENT_BITS) - 1, counted >> MOVEMENT_BITS
        counts = [0] * (2 * len(MOVEMENTS))
        counts[index], counts[len(MOVEMENTS) + index] = sign, sign * amount
        state.windows.add_bucket(tenant, event_ms // MINUTE_MS, counts)

    @staticmethod
    def _write(state: SubscriptionState, sub: Subscriber, rows: list) -> None:
        for change in sub.changes:
            content = change.before << 1 | change.held
            if content == change.written:
                continue
            change.written, change.version = content, max(change.version + 1, state.clock_ms)
            rows.append(SubscriptionRow(
                tenant=sub.tenant, customer_id=sub.customer_id, event_id=id_text(change.event_id),
                event_type=change.event_type, event_time=change.event_ms // 1000, event_ms=change.event_ms,
                plan=change.plan, mrr_minor=change.mrr, mrr_before_minor=change.before, held=int(change.held),
                updated_ms=change.version, kafka_partition=state.partition))

    def restores(self) -> Sequence[Restore]:
        columns = tuple(column for column in COLUMNS["subscriptions"] if column not in ("event_time", "kafka_partition"))
        # ends at the CRM clock: the span back on the clock lateness is judged by, and the windows back at least as
        # far as on the partition's (never behind the CRM's)
        return (Restore("recent", "subscriptions", columns, "event_ms", self.span_ms, final=True, clock_source=SOURCE),
                Restore("held", "subscriptions", columns, None, where=(Equals("held", 1),), final=True))

    def restore(self, state: SubscriptionState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        touched = set()
        for row in rows:
            key = (row.tenant, row.customer_id)
            sub = state.subscribers.get(key)
            event_id = id_key(row.event_id)
            if sub is None:
                sub = state.subscribers[key] = Subscriber(*key)
            elif any(change.event_id == event_id for change in sub.changes):
                continue  # in both restores
            change = Change(int(row.event_ms), event_id, row.event_type, row.plan,
                            None if row.mrr_minor is None else int(row.mrr_minor), int(row.mrr_before_minor),
                            bool(row.held), int(row.updated_ms))
            change.written = change.before << 1 | change.held
            sub.changes.append(change)
            state.source_clock_ms = max(state.source_clock_ms, change.event_ms)
            touched.add(key)
            heapq.heappush(state.expiries, (change.event_ms, key))
        for key in touched:
            sub = state.subscribers[key]
            sub.changes.sort(key=Change.order)
            sub.prior = sub.changes[0].before
            self._recount(state, sub)

    # -- reading ---------------------------------------------------------------------------------
    def plan_totals(self, states: Sequence[SubscriptionState]) -> dict[tuple[str, str], list[int]]:
        """(tenant, plan label) -> [paying customers, MRR in hundredths], at most ``max_plans`` plans per tenant
        (those with most paying customers), the rest summed as ``other``."""
        summed: dict[tuple[str, str], list[int]] = {}
        for state in states:
            for key, (paying, mrr) in state.plans.items():
                acc = summed.setdefault(key, [0, 0])
                acc[0] += paying
                acc[1] += mrr
        out: dict[tuple[str, str], list[int]] = {}
        ranked = sorted(summed.items(), key=lambda item: (item[0][0], -item[1][0], item[0][1]))
        named: dict[str, int] = {}
        for (tenant, plan), (paying, mrr) in ranked:
            named[tenant] = named.get(tenant, 0) + 1
            label = plan if named[tenant] <= self.max_plans else OTHER
            acc = out.setdefault((tenant, label), [0, 0])
            acc[0] += paying
            acc[1] += mrr
        return out

    @staticmethod
    def movements(states: Sequence[SubscriptionState], clocks: Sequence[int]) -> dict[tuple[str, str], list[int]]:
        """(tenant, window) -> events per movement, then MRR moved (hundredths) per movement."""
        out: dict[tuple[str, str], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for key, counts in state.windows.totals(clock_ms).items():
                acc = out.setdefault(key, [0] * len(counts))
                for i, n in enumerate(counts):
                    acc[i] += n
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[SubscriptionState], clocks: Sequence[int]) -> Iterable[Metric]:
        paying_g, mrr_g, changes_g, moved_g, arpu_g, churn_g, ltv_g = families = self._families()
        tenants: dict[str, list[int]] = {}
        for (tenant, plan), (paying, mrr) in sorted(self.plan_totals(states).items()):
            paying_g.add_metric([tenant, plan], paying)
            mrr_g.add_metric([tenant, plan], mrr / MINOR_PER_UNIT)
            acc = tenants.setdefault(tenant, [0, 0])
            acc[0] += paying
            acc[1] += mrr
        arpu = {tenant: mrr / paying / MINOR_PER_UNIT for tenant, (paying, mrr) in tenants.items() if paying}
        for tenant, value in sorted(arpu.items()):
            arpu_g.add_metric([tenant], value)
        for (tenant, window), counts in sorted(self.movements(states, clocks).items()):
            for i, name in enumerate(MOVEMENTS):
                changes_g.add_metric([tenant, window, name], counts[i])
                moved_g.add_metric([tenant, window, name], counts[len(MOVEMENTS) + i] / MINOR_PER_UNIT)
            churned = counts[CHURNED]
            exposed = tenants.get(tenant, [0, 0])[0] + churned
            if exposed:
                churn_g.add_metric([tenant, window], churned / exposed)
                if window == LTV_WINDOW and churned and tenant in arpu:
                    ltv_g.add_metric([tenant], arpu[tenant] * exposed / churned)
        return families

    @staticmethod
    def _families() -> list[Metric]:
        plan, window = ["tenant", "plan"], ["tenant", "window", "movement"]
        return [
            GaugeMetricFamily("cx_subscription_paying_customers", "Customers whose current subscription has an MRR "
                              "above 0, by its plan.", labels=plan),
            GaugeMetricFamily("cx_subscription_mrr", "Monthly recurring revenue of the paying customers, by plan "
                              "(currency units; summed exactly in hundredths).", labels=plan),
            GaugeMetricFamily("cx_subscription_changes", "Subscription events in the window by the MRR movement "
                              "they made: new, expansion (upgrade), contraction (downgrade), churned.", labels=window),
            GaugeMetricFamily("cx_subscription_mrr_movement", "MRR moved in the window, by movement (churned: the "
                              "MRR the cancelled customers paid; currency units).", labels=window),
            GaugeMetricFamily("cx_subscription_arpu", "MRR / paying customers of this worker (fleet: "
                              "tenant:cx_subscription_arpu:mean).", labels=["tenant"]),
            GaugeMetricFamily("cx_subscription_churn_ratio", "Churned / (paying customers + churned) in the window, of "
                              "this worker (fleet: tenant_window:cx_subscription_churn:ratio).",
                              labels=["tenant", "window"]),
            GaugeMetricFamily("cx_subscription_ltv", "ARPU / 30-day churn rate of this worker, absent without churn "
                              "(fleet: tenant:cx_subscription_ltv:estimate).", labels=["tenant"]),
        ]
