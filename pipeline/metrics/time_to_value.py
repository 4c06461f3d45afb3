"""Time to value: how long a customer takes from signup (or their first event) to their first purchase.

Per known customer (anonymous visitors have no signup to count from), by event time. The **start** is
the customer's earliest web ``signup`` if it came at or before their first purchase, else their earliest
event; the **first purchase** is their earliest web ``purchase``. The time to value is measured once, when
the first purchase is seen, from what has arrived by then (with the rest of its batch): a signup or
purchase arriving later with an earlier time does not measure it again, as for the funnel conversion
time. Both times are those the pipeline saw: a customer whose first event predates the pipeline (or
the core's memory, ``forget`` after their last day with an event) is measured from the first one it saw.

Exported as

- ``cx_time_to_first_purchase_seconds{tenant}``: a histogram, observed once per customer (1 min … 90 days);
- ``cx_first_purchases{tenant,window}``: customers whose first purchase is in the window (``CXP_WINDOWS``);
- ``cx_time_to_first_purchase_exact_seconds{tenant,window,percentile}``: the exact 50th and 90th percentiles
  (0.5 and 0.9 quantiles) of
  their times, as ClickHouse's ``quantileExact`` takes them (the element at index ⌊q·n⌋ of the sorted times).

State per partition: per customer seen in the last ``forget``, their first event, signup, first purchase
and last event times, the row's version and what was written (:class:`Journeys`: eight integers in one flat
array, found through tenant -> customer id -> slot; no object per customer), and per window the first
purchases in it (their times to value sorted per tenant, moved out as the clock passes them), so a scrape
reads the counts and quantiles without a scan. ``customer_firsts`` has one row per customer, latest version wins, rewritten when these
change and on the first event of each new day, so its ``last_event_ms`` is in the day of the customer's
last event: the rebuild reads it back, and forgets by whole days as the live state does.
"""
from __future__ import annotations

import bisect
import heapq
import sys
from array import array
from dataclasses import dataclass, field
from itertools import repeat
from typing import Annotated, Any, Callable, Iterable, NamedTuple, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import AfterValidator, Field

from pipeline.config import Duration, Section, positive
from pipeline.metrics.base import Batch, Instrument, MetricCore, Output, Restore
from pipeline.metrics.lastseen import MINUTE_MS
from pipeline.tables import ROWS

DAY_MS = 86_400_000
QUANTILES = (0.5, 0.9)


def percentile_label(q: float) -> str:
    """The ``percentile`` label of quantile ``q`` ("50" for 0.5). Not ``quantile``: Prometheus keeps that
    label for summaries, and a summary's ``_count`` may not fall as these windows slide."""
    return f"{q * 100:g}"
SWEEP_MS = 3_600_000  # forget customers at most once per hour of event time
HISTOGRAM = "cx_time_to_first_purchase_seconds"
BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 14 * 86400.0, 30 * 86400.0,
           90 * 86400.0)
FirstsRow = ROWS["customer_firsts"]


class TimeToValueSettings(Section):
    prefix = "time_to_value_"
    forget: Annotated[Duration, AfterValidator(positive)] = Field(
        Duration("90d"), description="A customer with no event for this long (whole days of event time) is forgotten "
        "by the time-to-value core: if they come back, their first event then is their start.")


def exact_quantile(values: list[float], q: float) -> float:
    """``quantileExact(q)``: the element at index ⌊q·n⌋ of the sorted values (the last one for q = 1)."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def nth(parts: list[list[int]], k: int, near: Optional[int] = None) -> int:
    """The element at index ``k`` of the sorted union of sorted integer lists, without merging them: the
    smallest value with more than ``k`` elements at or below it. From ``near`` (a guess: the last scrape's
    answer) it is walked to value by value through the union, a few steps when a batch added or removed a
    few values around it; else, or after ``WALK_STEPS``, found by bisecting the values."""
    if len(parts) == 1:
        return parts[0][k]
    if near is not None:
        found = _walk(parts, k, near)
        if found is not None:
            return found
    low, high = min(times[0] for times in parts), max(times[-1] for times in parts)
    while low < high:
        middle = (low + high) // 2
        if sum(map(bisect.bisect_right, parts, repeat(middle, len(parts)))) > k:
            high = middle
        else:
            low = middle + 1
    return low


WALK_STEPS = 8


def _walk(parts: list[list[int]], k: int, value: int) -> Optional[int]:
    """:func:`nth` from ``value``: to the next smaller value of the union while more than ``k`` elements are
    below it, to the next larger while ``k`` or fewer are at or below it (None: not within ``WALK_STEPS``)."""
    for _ in range(WALK_STEPS):
        lefts = list(map(bisect.bisect_left, parts, repeat(value, len(parts))))
        if sum(lefts) > k:
            value = max(times[i - 1] for times, i in zip(parts, lefts) if i)
            continue
        rights = list(map(bisect.bisect_right, parts, repeat(value, len(parts))))
        if sum(rights) > k:
            return value
        value = min(times[i] for times, i in zip(parts, rights) if i < len(times))
    return None


class Measured:
    """The first purchases of each window, kept as they are measured and as the clock moves: per window a heap
    of (purchase ms, tenant, time to value ms) to move out the purchases the window leaves, and per tenant their
    times to value, sorted. A purchase at time t is in window W when ``t // 60000 > (clock - W) // 60000`` (the
    rounding of :mod:`pipeline.metrics.windows`); the clock only moves forward."""

    __slots__ = ("windows_ms", "starts", "heaps", "values")

    def __init__(self, windows_ms: dict[str, int]):
        self.windows_ms = windows_ms
        self.starts = dict.fromkeys(windows_ms, -(2**62))  # minutes <= start are outside the window
        self.heaps: dict[str, list[tuple[int, str, int]]] = {label: [] for label in windows_ms}
        self.values: dict[str, dict[str, list[int]]] = {label: {} for label in windows_ms}

    def add(self, at: int, tenant: str, ttv_ms: int) -> None:
        entry = (at, tenant, ttv_ms)
        for label, start in self.starts.items():
            if at // MINUTE_MS > start:
                heapq.heappush(self.heaps[label], entry)
                bisect.insort(self.values[label].setdefault(tenant, []), ttv_ms)

    def advance(self, clock_ms: int) -> None:
        """Move every window to the clock, dropping the purchases it leaves."""
        for label, window in self.windows_ms.items():
            start = (clock_ms - window) // MINUTE_MS
            if start <= self.starts[label]:
                continue
            self.starts[label] = start
            heap, values = self.heaps[label], self.values[label]
            leaving: dict[str, list[int]] = {}
            while heap and heap[0][0] // MINUTE_MS <= start:
                _, tenant, ttv_ms = heapq.heappop(heap)
                leaving.setdefault(tenant, []).append(ttv_ms)
            for tenant, gone in leaving.items():  # one pass over the tenant's times, not a deletion per purchase
                gone.sort()
                times, kept, i = values[tenant], [], 0
                for ttv_ms in times:
                    if i < len(gone) and gone[i] == ttv_ms:
                        i += 1
                    else:
                        kept.append(ttv_ms)
                if kept:
                    values[tenant] = kept
                else:
                    del values[tenant]


class Journey(NamedTuple):
    """One customer's journey, as :meth:`Journeys.get` reads it (0: none yet)."""

    first_ms: int
    signup_ms: int
    purchase_ms: int
    ttv_ms: int
    last_ms: int
    updated_ms: int  # version of the row last written or restored


FIRST, SIGNUP, PURCHASE, TTV, LAST, UPDATED, WRITTEN_DAY, CHANGED = range(8)
WIDTH = 8  # integers per customer: the Journey fields, the day of last_ms in the row last written or restored
# (-1: none), and whether first, signup, purchase or time to value changed since (they only ever change once
# each way: first and signup move earlier, purchase and time to value are set once, so a change is never undone)


def new_journey(first_ms: int, last_ms: int) -> tuple[int, ...]:
    """A new customer's WIDTH integers: written nowhere yet, so changed."""
    return first_ms, 0, 0, 0, last_ms, 0, -1, 1


class Journeys:
    """Every customer's journey in one ``array('q')`` of WIDTH integers per customer (a slot), found through
    tenant -> customer id -> slot: ~110 bytes a customer where an object with a row tuple cost ~330. The
    slots of forgotten customers are reused after the sweep compacts them (:meth:`keep`)."""

    __slots__ = ("slots", "values")

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, int]] = {}
        self.values = array("q")

    def __len__(self) -> int:
        return len(self.values) // WIDTH

    def slot(self, tenant: str, customer_id: str) -> Optional[int]:
        by_id = self.slots.get(tenant)
        return None if by_id is None else by_id.get(customer_id)

    def new(self, tenant: str, customer_id: str, first_ms: int, last_ms: int) -> int:
        slot = self.slots.setdefault(tenant, {})[customer_id] = len(self)
        self.values.extend(new_journey(first_ms, last_ms))
        return slot

    def see(self, keys: Sequence[tuple[str, str]], firsts: Sequence[int], lasts: Sequence[int],
            dirty: dict[int, tuple[str, str]]) -> None:
        """A batch's customers, each with its first and last event ms: a new one gets the next slot (their values
        appended at once, as :meth:`new` makes them), a known one moves its first (changed) and last. Each
        one's slot goes into ``dirty``, mapped to its key."""
        values, slots, fresh, next_slot = self.values, self.slots, [], len(self)
        for key, first, last in zip(keys, firsts, lasts):
            by_id = slots.get(key[0])
            if by_id is None:
                by_id = slots[key[0]] = {}
            slot = by_id.get(key[1])
            if slot is None:
                slot = by_id[key[1]] = next_slot
                next_slot += 1
                fresh += new_journey(first, last)
            else:
                at = slot * WIDTH
                if first < values[at + FIRST]:
                    values[at + FIRST], values[at + CHANGED] = first, 1
                if last > values[at + LAST]:
                    values[at + LAST] = last
            dirty[slot] = key
        values.extend(fresh)

    def get(self, tenant: str, customer_id: str) -> Optional[Journey]:
        slot = self.slot(tenant, customer_id)
        return None if slot is None else Journey(*self.values[slot * WIDTH:slot * WIDTH + UPDATED + 1])

    def keep(self, kept: Callable[[int], bool]) -> None:
        """Forget every customer whose slot ``kept`` refuses, renumbering the others' slots."""
        old, values = self.values, array("q")
        for tenant in list(self.slots):
            by_id = self.slots[tenant]
            for customer_id, slot in list(by_id.items()):
                if kept(slot):
                    by_id[customer_id] = len(values) // WIDTH
                    values.extend(old[slot * WIDTH:(slot + 1) * WIDTH])
                else:
                    del by_id[customer_id]
            if not by_id:
                del self.slots[tenant]
        self.values = values


@dataclass
class ValueState:
    partition: int
    measured: Measured  # the first purchases per window
    customers: Journeys = field(default_factory=Journeys)
    dirty: dict[int, tuple[str, str]] = field(default_factory=dict)  # slot -> (tenant, customer id), in order of arrival
    clock_ms: int = 0
    swept_ms: int = 0


@dataclass
class TimeToValueCore(MetricCore[ValueState]):
    windows_ms: dict[str, int]
    forget_ms: int
    # (tenant, window, quantile) -> its value (ms) on the last scrape: where nth starts looking on the next
    _near: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    name = "time_to_value"
    Settings = TimeToValueSettings
    tables = ("customer_firsts",)
    instruments = (Instrument(HISTOGRAM, "histogram", "Time from a customer's signup (else first event) to their "
                              "first purchase, observed once per customer.", ("tenant",), BUCKETS),)

    @classmethod
    def configure(cls, section: TimeToValueSettings, stream: Any) -> "TimeToValueCore":
        return cls(stream.window_ms, section.forget.ms)

    def new_state(self, partition: int) -> ValueState:
        return ValueState(partition, Measured(self.windows_ms))

    def add(self, state: ValueState, batch: Batch, out: Output) -> None:
        customers, dirty, seen = state.customers, state.dirty, batch.customers()
        customers.see(seen.keys, seen.firsts().tolist(), seen.lasts().tolist(), dirty)
        values = customers.values
        bought: dict[int, int] = {}  # slot -> time of the earliest purchase in the batch
        for event in [event for event in batch.of_source("web")[0] if event["event_type"] in ("signup", "purchase")]:
            kind, customer_id = event["event_type"], event.get("customer_id")
            if customer_id is None:
                continue
            slot, at = customers.slots[event["tenant"]][customer_id], event["event_time"]
            if kind == "signup":
                signup = values[slot * WIDTH + SIGNUP]
                if not signup or at < signup:
                    values[slot * WIDTH + SIGNUP], values[slot * WIDTH + CHANGED] = at, 1
            elif not values[slot * WIDTH + PURCHASE] and at < bought.get(slot, at + 1):
                bought[slot] = at
        for slot, at in bought.items():
            base = slot * WIDTH
            signup = values[base + SIGNUP]
            ttv_ms = at - (signup if 0 < signup <= at else values[base + FIRST])
            values[base + PURCHASE], values[base + TTV], values[base + CHANGED] = at, ttv_ms, 1
            tenant = dirty[slot][0]
            state.measured.add(at, tenant, ttv_ms)
            out.observe(HISTOGRAM, (tenant,), ttv_ms / 1000)

    def tick(self, state: ValueState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        values, clock, partition = state.customers.values, state.clock_ms, state.partition
        append, new_row = out.rows["customer_firsts"].append, tuple.__new__
        for slot, (tenant, customer_id) in state.dirty.items():
            at = slot * WIDTH
            day = values[at + LAST] // DAY_MS
            if not values[at + CHANGED] and day == values[at + WRITTEN_DAY]:
                continue
            updated_ms = values[at + UPDATED] + 1
            if updated_ms < clock:
                updated_ms = clock
            values[at + CHANGED], values[at + WRITTEN_DAY], values[at + UPDATED] = 0, day, updated_ms
            purchase_ms = values[at + PURCHASE]
            # FirstsRow's fields in order, made without keyword parsing (a row for most customers of a batch)
            append(new_row(FirstsRow, (tenant, customer_id, values[at + FIRST], values[at + SIGNUP] or None,
                                       purchase_ms or None, values[at + TTV] if purchase_ms else None,
                                       values[at + LAST], updated_ms, partition)))
        state.dirty.clear()
        state.measured.advance(state.clock_ms)
        if state.clock_ms - state.swept_ms >= SWEEP_MS:
            self._sweep(state)

    def _sweep(self, state: ValueState) -> None:
        """Forget customers whose last day with an event is ``forget`` behind."""
        oldest_day = (state.clock_ms - self.forget_ms) // DAY_MS
        values = state.customers.values
        if any(values[at] // DAY_MS < oldest_day for at in range(LAST, len(values), WIDTH)):
            state.customers.keep(lambda slot: values[slot * WIDTH + LAST] // DAY_MS >= oldest_day)
        state.swept_ms = state.clock_ms

    def restores(self) -> Sequence[Restore]:
        return (Restore("customers", "customer_firsts", ("tenant", "customer_id", "first_event_ms", "signup_ms",
                                                         "first_purchase_ms", "time_to_value_ms", "last_event_ms",
                                                         "updated_ms"),
                        "last_event_ms", self.forget_ms + DAY_MS, final=True),)

    def restore(self, state: ValueState, name: str, rows: list, clock_ms: int) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        state.swept_ms = max(state.swept_ms, state.clock_ms)
        oldest_day = (state.clock_ms - self.forget_ms) // DAY_MS
        customers = state.customers
        for row in rows:
            last_ms = int(row.last_event_ms)
            if last_ms // DAY_MS < oldest_day:
                continue
            slot = customers.slot(row.tenant, row.customer_id)
            if slot is None:
                slot = customers.new(sys.intern(row.tenant), sys.intern(row.customer_id), 0, 0)
            purchase_ms, ttv_ms = int(row.first_purchase_ms or 0), int(row.time_to_value_ms or 0)
            customers.values[slot * WIDTH:(slot + 1) * WIDTH] = array("q", (
                int(row.first_event_ms), int(row.signup_ms or 0), purchase_ms, ttv_ms, last_ms, int(row.updated_ms),
                last_ms // DAY_MS, 0))
            if purchase_ms:
                state.measured.add(purchase_ms, row.tenant, ttv_ms)

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def times(states: Sequence[ValueState], clocks: Sequence[int]) -> dict[tuple[str, str], list[list[int]]]:
        """(tenant, window) -> per partition, the times to value in ms of the first purchases in the window,
        sorted: the kept lists themselves, to read only."""
        out: dict[tuple[str, str], list[list[int]]] = {}
        for state, clock_ms in zip(states, clocks):
            state.measured.advance(clock_ms)
            for label, tenants in state.measured.values.items():
                for tenant, times in tenants.items():
                    out.setdefault((tenant, label), []).append(times)
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[ValueState], clocks: Sequence[int]) -> Iterable[Metric]:
        count_g, quantile_g = families = self._families()
        near, found = self._near, {}
        for (tenant, window), parts in sorted(self.times(states, clocks).items()):
            n = sum(map(len, parts))
            count_g.add_metric([tenant, window], n)
            for q in QUANTILES:
                key = (tenant, window, q)
                value = found[key] = nth(parts, min(int(q * n), n - 1), near.get(key))
                quantile_g.add_metric([tenant, window, percentile_label(q)], value / 1000)
        self._near = found
        return families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("cx_first_purchases", "Customers whose first purchase is in the window.",
                              labels=["tenant", "window"]),
            GaugeMetricFamily("cx_time_to_first_purchase_exact_seconds", "Exact quantiles (ClickHouse quantileExact) "
                              "of the time from signup (else first event) to first purchase, of the first purchases in "
                              "the window, of this worker (fleet: tenant_quantile:cx_time_to_first_purchase_seconds:"
                              "estimate24h, from the histogram).", labels=["tenant", "window", "percentile"]),
        ]
