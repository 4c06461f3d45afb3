"""Orders and revenue: orders, revenue per currency, average order value, revenue per active customer (ARPU)
and the repeat-purchase rate, per tenant and event-time window.

An **order** is a web ``purchase`` (validation makes sure it has an ``order_id`` and a revenue that
converts to minor units of an ISO 4217 currency). It counts once per ``order_id`` of a buyer (the customer,
else the anonymous visitor: the Kafka key, so every copy of it lands in one partition), however often its
purchase is sent, under the same or new event ids: the order is its earliest purchase event (ties: the
smaller 64-bit hash of the event id, :func:`~pipeline.dedup.id_hash`), so the result does not depend on arrival order, and a re-sent copy with a later time
changes nothing. An order id is remembered for ``memory`` (the largest window, at least the max
lateness) after its time, on the clock of the web source in the partition (the one the processor judges
lateness by: the web topic may be consumed behind the partition's other sources, and its events are still
valid then); a copy arriving later than that is a new order.

Money is integers: amounts in minor units (:mod:`pipeline.money`), summed exactly; a gauge divides by the
minor unit once, at export. No currency conversion: every money series carries ``currency``, and at most
``max_currencies`` currencies per tenant are named (those with most orders in the largest window): the
rest count in ``cx_orders{currency="other"}``, and have no revenue series (sums of different currencies
mean nothing). Refunds and order cancellations are out of scope: the contract has no event for them.

ARPU divides a currency's revenue by the tenant's active customers (customers with any event in the
window). The engagement core counts those, but in its own windows (``CXP_ENGAGEMENT_WINDOWS``, 1d/7d/30d)
and publishes no fact: a fact per event would cost more than the count. So this core counts them again, in
its own windows, with the same :class:`~pipeline.metrics.lastseen.LastSeen` (14 bytes a customer): revenue
and customers then cover the same window at the same clock, and ``cx_orders_active_customers`` equals
``cx_active_customers`` wherever the two share a window.

The repeat-purchase rate: of the customers (anonymous visitors can't be recognised again) with an order
in ``repeat_window`` (30d), the share with two or more.

State per partition: the orders of the memory (a small Python object each, keyed by a hash: the strings
are in the rows), rolling counts per (tenant, currency) and minute, the customers' last minutes and each
buying customer's order minutes. A scrape reads only running sums: the customers per tenant and last
minute, and per tenant the customers by the minute of their latest and of their second latest order, in
:class:`~pipeline.metrics.windows.RollingCounts`. Rebuilt from ``orders`` (FINAL) and ``events``.
"""
from __future__ import annotations

import bisect
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Duration, Section, Windows
from pipeline.metrics.base import Batch, MetricCore, Newest, NotNull, Output, Restore
from pipeline.dedup import id_hash
from pipeline.metrics.lastseen import MINUTE_MS, LastSeen, customer_key
from pipeline.metrics.windows import RollingCounts
from pipeline.money import from_minor, minor_unit, to_minor
from pipeline.tables import ROWS

OTHER = "other"
SWEEP_MS = 3_600_000  # forget old orders at most once per hour of event time
SOURCE = "web"  # the source (topic) of purchases; its clock in a partition is the orders' memory clock
OrderRow = ROWS["orders"]


class OrdersSettings(Section):
    prefix = "orders_"
    windows: Windows = Field(
        [Duration("1h"), Duration("24h"), Duration("7d"), Duration("30d")],
        description="Windows of the order and revenue series, by event time (comma-separated).")
    repeat_window: Duration = Field(
        Duration("30d"), description="Repeat-purchase rate: the share of customers with an order in this window "
        "who have two or more in it.")
    max_currencies: int = Field(
        20, ge=1, description="Currencies named per tenant in the order and revenue series (those with most orders "
        "in the largest window); the others count as `other` in cx_orders and have no revenue series.")


class Order:
    """One order, small: its strings live in the row, the key is a hash (:func:`order_key`)."""

    __slots__ = ("tenant", "customer", "ms", "tie", "currency", "minor", "updated_ms")

    def __init__(self, tenant: str, customer: int, ms: int, tie: int, currency: str, minor: int, updated_ms: int = 0):
        self.tenant, self.customer = sys.intern(tenant), customer  # customer: its customer_key, 0 when anonymous
        self.ms, self.tie = ms, tie  # tie: id_hash of the purchase's event id, which breaks a tie of times
        self.currency, self.minor = sys.intern(currency), minor
        self.updated_ms = updated_ms  # version of the row last written or restored; 0: none yet


def order_key(tenant: str, buyer: str, order_id: str) -> int:
    return id_hash(f"{tenant}\x1f{buyer}\x1f{order_id}")


@dataclass
class OrdersState:
    partition: int
    windows: RollingCounts  # key: (tenant, currency); per minute: orders, minor units
    active: LastSeen  # customers' last minutes, with the customers per tenant and window kept
    # key: tenant; per minute: customers whose latest order is in it, those whose second latest is (a customer
    # has two orders in the repeat window exactly when their second latest is in it)
    buying: RollingCounts
    bought: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (tenant, customer) -> order minutes, sorted
    orders: dict[int, Order] = field(default_factory=dict)  # order_key -> order
    dirty: dict[int, tuple[str, str, str, Optional[str], str]] = field(default_factory=dict)  # key -> the row's strings
    clock_ms: int = 0  # newest event time of the partition, any source: the windows' clock
    source_clock_ms: int = 0  # newest web event time of the partition: the clock orders are remembered by
    swept_ms: int = 0


def _rebuy(state: OrdersState, order: Order, bought: bool) -> None:
    """A customer's order is now kept (``bought``) or no longer: their two latest order minutes move in
    ``state.buying``."""
    if not order.customer:
        return  # an anonymous visitor is not recognised again
    who = (order.tenant, order.customer)
    minutes = state.bought.get(who) or []
    top = minutes[-2:]
    if bought:
        bisect.insort(minutes, order.ms // MINUTE_MS)
    else:
        del minutes[bisect.bisect_left(minutes, order.ms // MINUTE_MS)]
    if minutes:
        state.bought[who] = minutes
    else:
        state.bought.pop(who, None)
    now = minutes[-2:]
    if now != top:
        for rank, minute in enumerate(reversed(top)):  # rank 0: the latest, 1: the second latest
            state.buying.add_bucket(order.tenant, minute, (-1, 0) if rank == 0 else (0, -1))
        for rank, minute in enumerate(reversed(now)):
            state.buying.add_bucket(order.tenant, minute, (1, 0) if rank == 0 else (0, 1))


@dataclass
class OrdersCore(MetricCore[OrdersState]):
    windows_ms: dict[str, int]
    repeat_window: tuple[str, int]  # label, ms
    max_currencies: int
    max_lateness_ms: int
    name = "orders"
    Settings = OrdersSettings
    tables = ("orders",)

    @classmethod
    def configure(cls, section: OrdersSettings, stream) -> "OrdersCore":
        return cls({str(w): w.ms for w in section.windows}, (str(section.repeat_window), section.repeat_window.ms),
                   section.max_currencies, stream.max_lateness.ms)

    @property
    def memory_ms(self) -> int:
        """How long an order is kept after its time: for the windows, and to recognise a late copy."""
        return max(max(self.windows_ms.values()), self.repeat_window[1], self.max_lateness_ms)

    def new_state(self, partition: int) -> OrdersState:
        return OrdersState(partition, RollingCounts(self.windows_ms, 2), LastSeen(self.windows_ms),
                           RollingCounts(dict((self.repeat_window,)), 2))

    def add(self, state: OrdersState, batch: Batch, out: Output) -> None:
        state.active.note_customers(batch.customers())
        events, hashes = batch.of_source(SOURCE)
        if events:
            state.source_clock_ms = max(state.source_clock_ms, max(map(itemgetter("event_time"), events)))
            for event, tie in [(event, tie) for event, tie in zip(events, hashes) if event["event_type"] == "purchase"]:
                self._purchase(state, event, tie)

    def _purchase(self, state: OrdersState, event: dict, tie: int) -> None:
        tenant, customer_id, order_id = event["tenant"], event.get("customer_id"), event["order_id"]
        buyer = customer_id or event["anonymous_id"]
        key, ms = order_key(tenant, buyer, order_id), event["event_time"]
        order = state.orders.get(key)
        if order is not None and (order.ms, order.tie) <= (ms, tie):
            return  # a copy of a known order
        currency = event["currency"]
        new = Order(tenant, customer_key(tenant, customer_id) if customer_id else 0, ms, tie, currency,
                    to_minor(event["revenue"], currency))
        if order is not None:  # an earlier copy: the order moves to its time and amount
            state.windows.add((order.tenant, order.currency), order.ms, (-1, -order.minor))
            new.updated_ms = order.updated_ms
            _rebuy(state, order, False)
        state.orders[key] = new
        _rebuy(state, new, True)
        state.windows.add((new.tenant, new.currency), ms, (1, new.minor))
        state.dirty[key] = (tenant, buyer, order_id, customer_id, event["event_id"])

    def tick(self, state: OrdersState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        rows = out.rows["orders"]
        for key, (tenant, buyer, order_id, customer_id, event_id) in state.dirty.items():
            order = state.orders[key]
            order.updated_ms = max(order.updated_ms + 1, state.clock_ms)
            rows.append(OrderRow(
                tenant=tenant, buyer=buyer, order_id=order_id, customer_id=customer_id, order_time=order.ms // 1000,
                order_ms=order.ms, currency=order.currency, amount_minor=order.minor,
                minor_unit=minor_unit(order.currency), event_id=event_id, updated_ms=order.updated_ms,
                kafka_partition=state.partition))
        state.dirty.clear()
        state.windows.prune(state.clock_ms)
        state.active.expire((state.clock_ms - max(self.windows_ms.values())) // MINUTE_MS)
        state.active.windows.prune(state.clock_ms)
        state.buying.prune(state.clock_ms)
        if state.clock_ms - state.swept_ms >= SWEEP_MS:
            oldest = state.source_clock_ms - self.memory_ms
            for key in [key for key, order in state.orders.items() if order.ms < oldest]:
                _rebuy(state, state.orders.pop(key), False)
            state.swept_ms = state.clock_ms

    def restores(self) -> Sequence[Restore]:
        # orders end at the web clock: the memory back on the clock lateness is judged by, and the windows back
        # at least as far as on the partition's (never behind the web's)
        return (Restore("orders", "orders", ("tenant", "buyer", "order_id", "customer_id", "order_ms", "event_id",
                                             "currency", "amount_minor", "updated_ms"),
                        "order_ms", self.memory_ms, final=True, clock_source=SOURCE),
                Restore("active", "events", ("tenant", "customer_id", "event_ms"), "event_ms",
                        max(self.windows_ms.values()), where=(NotNull("customer_id"),),
                        newest=Newest(("tenant", "customer_id"), "event_ms")))

    def restore(self, state: OrdersState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        if name == "active":
            for tenant, customer_id, event_ms in rows:
                state.active.note(tenant, customer_id, int(event_ms))
            state.active.merge()
            return
        state.swept_ms = max(state.swept_ms, state.clock_ms)
        for row in rows:
            customer = customer_key(row.tenant, row.customer_id) if row.customer_id else 0
            order = Order(row.tenant, customer, int(row.order_ms), id_hash(row.event_id), row.currency,
                          int(row.amount_minor), int(row.updated_ms))
            key = order_key(row.tenant, row.buyer, row.order_id)
            if key in state.orders:
                _rebuy(state, state.orders[key], False)
            state.orders[key] = order
            _rebuy(state, order, True)
            state.source_clock_ms = max(state.source_clock_ms, order.ms)
            state.windows.add((order.tenant, order.currency), order.ms, (1, order.minor))

    # -- reading ---------------------------------------------------------------------------------
    def totals(self, states: Sequence[OrdersState], clocks: Sequence[int]) -> dict[tuple[str, str, str], list[int]]:
        """(tenant, window, currency) -> [orders, minor units] over the given partitions, uncapped."""
        out: dict[tuple[str, str, str], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for ((tenant, currency), window), (orders, minor) in state.windows.totals(clock_ms).items():
                if orders:
                    acc = out.setdefault((tenant, window, currency), [0, 0])
                    acc[0] += orders
                    acc[1] += minor
        return out

    def named_currencies(self, totals: dict[tuple[str, str, str], list[int]]) -> dict[str, set[str]]:
        """tenant -> the currencies exported by name: the ``max_currencies`` with most orders in the largest window."""
        largest = max(self.windows_ms, key=self.windows_ms.get)
        volume: dict[str, Counter] = defaultdict(Counter)
        for (tenant, window, currency), (orders, _) in totals.items():
            if window == largest:
                volume[tenant][currency] += orders
        return {tenant: set(sorted(counts, key=lambda c: (-counts[c], c))[:self.max_currencies])
                for tenant, counts in volume.items()}

    @staticmethod
    def active_customers(states: Sequence[OrdersState], clocks: Sequence[int]) -> dict[tuple[str, str], int]:
        """(tenant, window) -> customers with an event in the window, from the kept counts."""
        out: Counter = Counter()
        for state, clock_ms in zip(states, clocks):
            state.active.merge()
            for (tenant, label), (n,) in state.active.windows.totals(clock_ms).items():
                out[(tenant, label)] += n
        return {key: n for key, n in out.items() if n}

    @staticmethod
    def buyers(states: Sequence[OrdersState], clocks: Sequence[int]) -> dict[str, tuple[int, int]]:
        """tenant -> (customers with an order in the repeat window, those with two or more), from the kept counts."""
        out: dict[str, list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for (tenant, _), (buying, repeat) in state.buying.totals(clock_ms).items():
                acc = out.setdefault(tenant, [0, 0])
                acc[0] += buying
                acc[1] += repeat
        return {tenant: (buying, repeat) for tenant, (buying, repeat) in out.items() if buying}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[OrdersState], clocks: Sequence[int]) -> Iterable[Metric]:
        orders_g, revenue_g, aov_g, active_g, arpu_g, buying_g, repeat_g, ratio_g = families = self._families()
        totals = self.totals(states, clocks)
        named = self.named_currencies(totals)
        active = self.active_customers(states, clocks)
        other: Counter = Counter()
        for (tenant, window, currency), (orders, minor) in sorted(totals.items()):
            if currency not in named.get(tenant, ()):
                other[(tenant, window)] += orders
                continue
            revenue = from_minor(minor, currency)
            orders_g.add_metric([tenant, window, currency], orders)
            revenue_g.add_metric([tenant, window, currency], revenue)
            aov_g.add_metric([tenant, window, currency], revenue / orders)
            if active.get((tenant, window)):
                arpu_g.add_metric([tenant, window, currency], revenue / active[(tenant, window)])
        for (tenant, window), orders in sorted(other.items()):
            orders_g.add_metric([tenant, window, OTHER], orders)
        for (tenant, window), n in sorted(active.items()):
            active_g.add_metric([tenant, window], n)
        label = self.repeat_window[0]
        for tenant, (buying, repeat) in sorted(self.buyers(states, clocks).items()):
            buying_g.add_metric([tenant, label], buying)
            repeat_g.add_metric([tenant, label], repeat)
            ratio_g.add_metric([tenant, label], repeat / buying)
        return families

    @staticmethod
    def _families() -> list[Metric]:
        money = ["tenant", "window", "currency"]
        window = ["tenant", "window"]
        return [
            GaugeMetricFamily("cx_orders", "Orders (purchases, once per order_id) in the window, per currency.",
                              labels=money),
            GaugeMetricFamily("cx_revenue", "Revenue of the orders in the window, in units of the currency (summed "
                              "exactly in minor units).", labels=money),
            GaugeMetricFamily("cx_average_order_value", "Revenue / orders in the window, per currency, of this worker "
                              "(fleet: tenant_window_currency:cx_average_order_value:mean).", labels=money),
            GaugeMetricFamily("cx_orders_active_customers", "Customers with any event in the window (the orders "
                              "windows): the denominator of ARPU.", labels=window),
            GaugeMetricFamily("cx_revenue_per_active_customer", "ARPU: revenue / active customers in the window, per "
                              "currency, of this worker (fleet: tenant_window_currency:cx_revenue_per_active_customer:"
                              "mean).", labels=money),
            GaugeMetricFamily("cx_purchasing_customers", "Customers with an order in the repeat window.", labels=window),
            GaugeMetricFamily("cx_repeat_customers", "Customers with two or more orders in the repeat window.",
                              labels=window),
            GaugeMetricFamily("cx_repeat_purchase_ratio", "Repeat customers / purchasing customers of this worker "
                              "(fleet: tenant_window:cx_repeat_purchase:ratio).", labels=window),
        ]
