"""Cart abandonment: the share of carts with no purchase within ``abandon_after`` (24 h) of their start.

Per buyer (a customer, else an anonymous visitor: the Kafka key) and tenant, by event time. A **cart**
starts with an ``add_to_cart`` when the buyer has no open cart and the add comes after their last decided
cart; further adds join the open cart. It ends

- ``converted`` at the buyer's first purchase from its start up to its deadline (start + ``abandon_after``,
  inclusive), as soon as that purchase is seen (also a purchase seen before a late add that starts the cart);
- ``abandoned`` at its deadline, decided when the partition's event-time clock passes the deadline with no
  such purchase.

A decided cart is final, as a sent "you left something in your cart" message would be: a purchase or an
add arriving later with a time at or before the end of the buyer's last decided cart changes nothing, so
a replay changes nothing either. For input in time order this is the plain reading: walk the buyer's adds
and purchases in time order (an add before a purchase of the same millisecond), start a cart at an add
when none is open, convert it at a purchase up to its deadline, abandon it when time passes the deadline.

``cx_carts{tenant,window,outcome}`` counts the carts that ended in the window (by end time: the purchase,
or the deadline), ``cx_cart_abandonment_ratio`` = abandoned / ended, ``cx_carts_open{tenant}`` the carts
still open. The ``carts`` table has one row per cart, latest state wins; the state is rebuilt from it and
from the purchases in ``events``.

State per partition: per buyer with a cart or an event in the last max lateness + ``abandon_after``, the
open cart's start and the adds that joined it, the end of the last decided cart and the purchase times of
that span. That span is measured on the clock of the web source in the partition (the one the processor
judges lateness by): the web topic may be consumed behind the partition's other sources and its events
are still valid then; a buyer forgotten by the partition's clock would have a late add of a decided cart
start a cart afresh, and a late add lose the purchase that converts it. An add that joined the open cart before a purchase with an earlier time arrived starts the
next cart when that purchase converts this one, as it would have in time order.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import AfterValidator, Field

from pipeline.config import Duration, Section, positive
from pipeline.metrics.base import Batch, Equals, MetricCore, Output, Restore
from pipeline.metrics.windows import RollingCounts
from pipeline.tables import ROWS

OUTCOMES = ("converted", "abandoned")
OPEN = "open"
ADD, PURCHASE = 0, 1  # an add sorts before a purchase of the same millisecond
SOURCE = "web"  # the source (topic) of adds and purchases; its clock in a partition is the forgetting clock
SWEEP_MS = 3_600_000  # forget idle buyers at most once per hour of event time
CartRow = ROWS["carts"]
NO_TIMES: list[int] = []  # shared by every buyer without joined adds or purchases (fewer objects for the
# garbage collector to walk); never appended to: replaced by a new list first


def insert_once(times: list[int], at: int) -> None:
    """Insert ``at`` into the sorted ``times`` unless it is there."""
    i = bisect.bisect_left(times, at)
    if i == len(times) or times[i] != at:
        times.insert(i, at)


class CartSettings(Section):
    prefix = "cart_"
    abandon_after: Annotated[Duration, AfterValidator(positive)] = Field(
        Duration("24h"), description="A cart (started by an add_to_cart) with no purchase this long after its start "
        "is abandoned, decided by event time as the clock passes that deadline.")


class Buyer:
    __slots__ = ("customer_id", "start", "joined", "closed_until", "purchases", "last_ms", "updated_ms")

    def __init__(self, customer_id: Optional[str]):
        self.customer_id = customer_id
        self.start = 0  # start of the open cart; 0: none open
        self.joined: list[int] = NO_TIMES  # sorted times of the adds after the start that joined the open cart
        self.closed_until = 0  # end of the last decided cart: adds and purchases up to it change nothing
        self.purchases: list[int] = NO_TIMES  # sorted purchase times of the kept span
        self.last_ms = 0  # newest event or cart time, for forgetting the buyer
        self.updated_ms = 0  # version of the buyer's newest cart row


@dataclass
class CartState:
    partition: int
    windows: RollingCounts  # key: tenant; per end minute: converted, abandoned
    buyers: dict[str, dict[str, Buyer]] = field(default_factory=dict)  # tenant -> buyer -> state (no key tuple each)
    # heap: (start, tenant, buyer) of the open carts, due at start + abandon_after (the start's own int, not a new sum)
    deadlines: list[tuple[int, str, str]] = field(default_factory=list)
    pending: dict[tuple[str, str, int], tuple] = field(default_factory=dict)  # (tenant, buyer, start) -> newest row
    open: dict[str, int] = field(default_factory=dict)  # tenant -> buyers with an open cart (kept for the scrape)
    clock_ms: int = 0  # newest event time of the partition, any source: the deadlines' and windows' clock
    source_clock_ms: int = 0  # newest web event time of the partition: the forgetting clock
    swept_ms: int = 0


def _open(state: CartState, key: tuple[str, str], buyer: Buyer, start: int) -> None:
    """Set the start of the buyer's open cart (0: none), keeping the tenant's count of open carts."""
    change = bool(start) - bool(buyer.start)
    if change:
        state.open[key[0]] = state.open.get(key[0], 0) + change
    buyer.start = start


@dataclass
class CartCore(MetricCore[CartState]):
    windows_ms: dict[str, int]
    abandon_after_ms: int
    max_lateness_ms: int
    name = "carts"
    Settings = CartSettings
    tables = ("carts",)

    @classmethod
    def configure(cls, section: CartSettings, stream: Any) -> "CartCore":
        return cls(stream.window_ms, section.abandon_after.ms, stream.max_lateness.ms)

    @property
    def keep_ms(self) -> int:
        """How long a buyer's purchases and last cart are kept: a late add can still start a cart that long ago."""
        return self.max_lateness_ms + self.abandon_after_ms

    def new_state(self, partition: int) -> CartState:
        return CartState(partition, RollingCounts(self.windows_ms, len(OUTCOMES)))

    def add(self, state: CartState, batch: Batch, out: Output) -> None:
        by_buyer: dict[tuple[str, str], list[tuple[int, int, Optional[str]]]] = {}
        events, _ = batch.of_source(SOURCE)
        if not events:
            return
        state.source_clock_ms = max(state.source_clock_ms, max(event["event_time"] for event in events))
        for event in events:
            kind = event["event_type"]
            if kind not in ("add_to_cart", "purchase"):
                continue
            customer_id = event.get("customer_id")
            key = (event["tenant"], customer_id or event["anonymous_id"])
            by_buyer.setdefault(key, []).append((event["event_time"], ADD if kind == "add_to_cart" else PURCHASE,
                                                 customer_id))
        for key, steps in by_buyer.items():
            of_tenant = state.buyers.get(key[0])
            if of_tenant is None:
                of_tenant = state.buyers[key[0]] = {}
            buyer = of_tenant.get(key[1])
            if buyer is None:
                buyer = of_tenant[key[1]] = Buyer(steps[0][2])
            for at, kind, customer_id in sorted(steps, key=lambda step: step[:2]):
                buyer.customer_id = buyer.customer_id or customer_id
                buyer.last_ms = max(buyer.last_ms, at)
                self._step(state, key, buyer, at, kind)

    def _step(self, state: CartState, key: tuple[str, str], buyer: Buyer, at: int, kind: int) -> None:
        if buyer.start and buyer.start + self.abandon_after_ms < at:
            self._end(state, key, buyer, OUTCOMES[1], buyer.start + self.abandon_after_ms)
        if kind == ADD:
            if buyer.start:
                if at > buyer.start:
                    buyer.joined = buyer.joined or []
                    insert_once(buyer.joined, at)
            elif at > buyer.closed_until:  # at or before it: part of a decided cart
                self._start(state, key, buyer, at, NO_TIMES)
            return
        buyer.purchases = buyer.purchases or []
        insert_once(buyer.purchases, at)
        if buyer.start and buyer.start <= at:
            self._end(state, key, buyer, OUTCOMES[0], at)

    def _start(self, state: CartState, key: tuple[str, str], buyer: Buyer, at: int, joined: list[int]) -> None:
        """A cart starts at ``at`` with the adds ``joined`` after it; bought already (a purchase seen before the
        add), it converts at once, and an add it had after that purchase starts the next one."""
        _open(state, key, buyer, at)
        buyer.joined = joined
        i = bisect.bisect_left(buyer.purchases, at)
        if i < len(buyer.purchases) and buyer.purchases[i] <= at + self.abandon_after_ms:
            self._end(state, key, buyer, OUTCOMES[0], buyer.purchases[i])
        else:
            self._write(state, key, buyer, OPEN, None)
            heapq.heappush(state.deadlines, (at, *key))

    def _end(self, state: CartState, key: tuple[str, str], buyer: Buyer, outcome: str, end_ms: int) -> None:
        counts = [0, 0]
        counts[OUTCOMES.index(outcome)] = 1
        state.windows.add(key[0], end_ms, counts)
        self._write(state, key, buyer, outcome, end_ms)
        later = buyer.joined[bisect.bisect_right(buyer.joined, end_ms):]
        _open(state, key, buyer, 0)
        buyer.closed_until, buyer.joined = end_ms, NO_TIMES
        buyer.last_ms = max(buyer.last_ms, end_ms)
        if later:  # adds that joined before an earlier purchase arrived: the first starts the next cart
            self._start(state, key, buyer, later[0], later[1:] or NO_TIMES)

    def _write(self, state: CartState, key: tuple[str, str], buyer: Buyer, outcome: str, end_ms: Optional[int]) -> None:
        buyer.updated_ms = max(buyer.updated_ms + 1, state.clock_ms)
        state.pending[(*key, buyer.start)] = CartRow(
            tenant=key[0], buyer=key[1], customer_id=buyer.customer_id, started_ms=buyer.start,
            deadline_ms=buyer.start + self.abandon_after_ms, outcome=outcome, ended_ms=end_ms,
            updated_ms=buyer.updated_ms, kafka_partition=state.partition)

    def tick(self, state: CartState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        started_before = state.clock_ms - self.abandon_after_ms  # the carts of earlier starts are past their deadline
        while state.deadlines and state.deadlines[0][0] < started_before:
            start, tenant, buyer_id = heapq.heappop(state.deadlines)
            buyer = state.buyers.get(tenant, {}).get(buyer_id)
            if buyer is not None and buyer.start == start:
                self._end(state, (tenant, buyer_id), buyer, OUTCOMES[1], start + self.abandon_after_ms)
        out.rows["carts"].extend(state.pending.values())
        state.pending.clear()
        state.windows.prune(state.clock_ms)
        if state.clock_ms - state.swept_ms >= SWEEP_MS:
            self._sweep(state)

    def _sweep(self, state: CartState) -> None:
        """Forget what no late event can reach any more: old purchases, and idle buyers without an open cart."""
        oldest = state.source_clock_ms - self.keep_ms
        for tenant, of_tenant in list(state.buyers.items()):
            for buyer_id, buyer in list(of_tenant.items()):
                if not buyer.start and buyer.last_ms < oldest:
                    del of_tenant[buyer_id]
                elif buyer.purchases and buyer.purchases[0] < oldest:
                    del buyer.purchases[:bisect.bisect_left(buyer.purchases, oldest)]
            if not of_tenant:
                del state.buyers[tenant]
        state.swept_ms = state.clock_ms

    def restores(self) -> Sequence[Restore]:
        # Carts and purchases end at the web clock: the kept span back on the clock lateness is judged by, and
        # the windows back at least as far as on the partition's (never behind the web's). The adds joining
        # an open cart: its deadline is judged on the partition's clock.
        span = max(max(self.windows_ms.values()), self.keep_ms)
        return (Restore("carts", "carts", ("tenant", "buyer", "customer_id", "started_ms", "outcome", "ended_ms",
                                           "updated_ms"), "deadline_ms", span, final=True, clock_source=SOURCE),
                Restore("purchases", "events", ("tenant", "customer_id", "anonymous_id", "event_ms"), "event_ms",
                        self.keep_ms, where=(Equals("source", SOURCE), Equals("event_type", "purchase")),
                        clock_source=SOURCE),
                Restore("adds", "events", ("tenant", "customer_id", "anonymous_id", "event_ms"), "event_ms",
                        self.abandon_after_ms, where=(Equals("source", SOURCE), Equals("event_type", "add_to_cart"))))

    def restore(self, state: CartState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        state.swept_ms = max(state.swept_ms, state.clock_ms)
        for row in rows:
            if name != "carts":  # adds and purchases: web events; an abandoned cart's end is a deadline
                state.source_clock_ms = max(state.source_clock_ms, int(row.event_ms))
            if name == "adds":  # after "carts": the adds that joined an open cart
                buyer = state.buyers.get(row.tenant, {}).get(row.customer_id or row.anonymous_id)
                if buyer is not None and buyer.start and int(row.event_ms) > buyer.start:
                    buyer.joined = buyer.joined or []
                    insert_once(buyer.joined, int(row.event_ms))
                continue
            if name == "purchases":
                buyer = state.buyers.setdefault(row.tenant, {}).setdefault(row.customer_id or row.anonymous_id,
                                                                           Buyer(row.customer_id))
                buyer.purchases = buyer.purchases or []
                insert_once(buyer.purchases, int(row.event_ms))
                buyer.last_ms = max(buyer.last_ms, int(row.event_ms))
                continue
            key = (row.tenant, row.buyer)
            buyer = state.buyers.setdefault(row.tenant, {}).setdefault(row.buyer, Buyer(row.customer_id))
            buyer.updated_ms = max(buyer.updated_ms, int(row.updated_ms))
            start = int(row.started_ms)
            state.source_clock_ms = max(state.source_clock_ms, start)  # an add's time
            if row.outcome == OPEN:
                _open(state, key, buyer, start)
                heapq.heappush(state.deadlines, (start, *key))
                buyer.last_ms = max(buyer.last_ms, start)
            else:
                end = int(row.ended_ms)
                counts = [0, 0]
                counts[OUTCOMES.index(row.outcome)] = 1
                state.windows.add(row.tenant, end, counts)
                buyer.closed_until = max(buyer.closed_until, end)
                buyer.last_ms = max(buyer.last_ms, end)

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def totals(states: Sequence[CartState], clocks: Sequence[int]) -> dict[tuple[str, str], list[int]]:
        """(tenant, window) -> ended carts [converted, abandoned] over the given partitions."""
        out: dict[tuple[str, str], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for (tenant, window), counts in state.windows.totals(clock_ms).items():
                acc = out.setdefault((tenant, window), [0, 0])
                acc[0] += counts[0]
                acc[1] += counts[1]
        return out

    @staticmethod
    def open_carts(states: Sequence[CartState]) -> dict[str, int]:
        """tenant -> open carts over the given partitions (tenants with none left out)."""
        out: dict[str, int] = {}
        for state in states:
            for tenant, n in state.open.items():
                out[tenant] = out.get(tenant, 0) + n
        return {tenant: n for tenant, n in out.items() if n}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[CartState], clocks: Sequence[int]) -> Iterable[Metric]:
        carts, ratio, open_g = families = self._families()
        for (tenant, window), counts in sorted(self.totals(states, clocks).items()):
            for outcome, n in zip(OUTCOMES, counts):
                carts.add_metric([tenant, window, outcome], n)
            if sum(counts):
                ratio.add_metric([tenant, window], counts[1] / sum(counts))
        for tenant, n in sorted(self.open_carts(states).items()):
            open_g.add_metric([tenant], n)
        return families

    @staticmethod
    def _families() -> list[Metric]:
        labels = ["tenant", "window"]
        return [
            GaugeMetricFamily("cx_carts", "Carts that ended in the window, by outcome: converted (a purchase within "
                              "CXP_CART_ABANDON_AFTER of the cart's start) or abandoned.", labels=labels + ["outcome"]),
            GaugeMetricFamily("cx_cart_abandonment_ratio", "Abandoned carts / carts ended in the window, of this "
                              "worker (fleet: tenant_window:cx_cart_abandonment:ratio).", labels=labels),
            GaugeMetricFamily("cx_carts_open", "Carts started and not yet converted or abandoned.", labels=["tenant"]),
        ]
