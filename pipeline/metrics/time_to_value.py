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

State per partition: per customer seen in the last ``forget``, their first event, signup and first
purchase times (a Python object each), and per window the first purchases in it (their times to value
sorted per tenant, moved out as the clock passes them), so a scrape reads the counts and quantiles
without a scan. ``customer_firsts`` has one row per customer, latest version wins, rewritten when these
change and on the first event of each new day, so its ``last_event_ms`` is in the day of the customer's
last event: the rebuild reads it back, and forgets by whole days as the live state does.
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


def nth(parts: list[list[int]], k: int) -> int:
    """The element at index ``k`` of the sorted union of sorted integer lists, without merging them: the
    smallest value with more than ``k`` elements at or below it, found by bisecting the values."""
    if len(parts) == 1:
        return parts[0][k]
    low, high = min(times[0] for times in parts), max(times[-1] for times in parts)
    while low < high:
        middle = (low + high) // 2
        if sum(bisect.bisect_right(times, middle) for times in parts) > k:
            high = middle
        else:
            low = middle + 1
    return low


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


class Journey:
    __slots__ = ("first_ms", "signup_ms", "purchase_ms", "ttv_ms", "last_ms", "updated_ms", "written", "written_day")

    def __init__(self, first_ms: int):
        self.first_ms = self.last_ms = first_ms
        self.signup_ms = self.purchase_ms = self.ttv_ms = 0  # 0: none (yet)
        self.updated_ms = 0
        self.written: Optional[tuple] = None  # content of the row last written or restored
        self.written_day = -1  # day of last_ms in that row

    def content(self) -> tuple[int, int, int, int]:
        return self.first_ms, self.signup_ms, self.purchase_ms, self.ttv_ms


@dataclass
class ValueState:
    partition: int
    measured: Measured  # the first purchases per window
    customers: dict[tuple[str, str], Journey] = field(default_factory=dict)
    dirty: dict[tuple[str, str], None] = field(default_factory=dict)  # in order of arrival
    clock_ms: int = 0
    swept_ms: int = 0


@dataclass
class TimeToValueCore(MetricCore[ValueState]):
    windows_ms: dict[str, int]
    forget_ms: int
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
        customers, dirty = state.customers, state.dirty
        seen = batch.customers()
        for key, times in zip(seen.keys, seen.times):
            first, last = min(times), max(times)
            journey = customers.get(key)
            if journey is None:
                journey = customers[key] = Journey(first)
                journey.last_ms = last
            else:
                journey.first_ms = min(journey.first_ms, first)
                journey.last_ms = max(journey.last_ms, last)
            dirty[key] = None
        bought: dict[tuple[str, str], int] = {}
        for event in batch.of_source("web")[0]:
            kind, customer_id = event["event_type"], event.get("customer_id")
            if kind not in ("signup", "purchase") or customer_id is None:
                continue
            key, at = (event["tenant"], customer_id), event["event_time"]
            journey = customers[key]
            if kind == "signup":
                if not journey.signup_ms or at < journey.signup_ms:
                    journey.signup_ms = at
            elif not journey.purchase_ms and at < bought.get(key, at + 1):
                bought[key] = at
        for key, at in bought.items():
            journey = customers[key]
            start = journey.signup_ms if 0 < journey.signup_ms <= at else journey.first_ms
            journey.purchase_ms, journey.ttv_ms = at, at - start
            state.measured.add(at, key[0], journey.ttv_ms)
            out.observe(HISTOGRAM, (key[0],), journey.ttv_ms / 1000)

    def tick(self, state: ValueState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        rows, customers = out.rows["customer_firsts"], state.customers
        for key in state.dirty:
            journey = customers[key]
            content, day = journey.content(), journey.last_ms // DAY_MS
            if content == journey.written and day == journey.written_day:
                continue
            journey.written, journey.written_day = content, day
            journey.updated_ms = max(journey.updated_ms + 1, state.clock_ms)
            rows.append(FirstsRow(
                tenant=key[0], customer_id=key[1], first_event_ms=journey.first_ms, signup_ms=journey.signup_ms or None,
                first_purchase_ms=journey.purchase_ms or None,
                time_to_value_ms=journey.ttv_ms if journey.purchase_ms else None, last_event_ms=journey.last_ms,
                updated_ms=journey.updated_ms, kafka_partition=state.partition))
        state.dirty.clear()
        state.measured.advance(state.clock_ms)
        if state.clock_ms - state.swept_ms >= SWEEP_MS:
            self._sweep(state)

    def _sweep(self, state: ValueState) -> None:
        """Forget customers whose last day with an event is ``forget`` behind."""
        oldest_day = (state.clock_ms - self.forget_ms) // DAY_MS
        for key in [key for key, journey in state.customers.items() if journey.last_ms // DAY_MS < oldest_day]:
            del state.customers[key]
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
        for row in rows:
            if int(row.last_event_ms) // DAY_MS < oldest_day:
                continue
            journey = Journey(int(row.first_event_ms))
            journey.signup_ms, journey.purchase_ms = int(row.signup_ms or 0), int(row.first_purchase_ms or 0)
            journey.ttv_ms, journey.last_ms = int(row.time_to_value_ms or 0), int(row.last_event_ms)
            journey.updated_ms, journey.written, journey.written_day = \
                int(row.updated_ms), journey.content(), journey.last_ms // DAY_MS
            state.customers[(row.tenant, row.customer_id)] = journey
            if journey.purchase_ms:
                state.measured.add(journey.purchase_ms, row.tenant, journey.ttv_ms)

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
        for (tenant, window), parts in sorted(self.times(states, clocks).items()):
            n = sum(len(times) for times in parts)
            count_g.add_metric([tenant, window], n)
            for q in QUANTILES:
                quantile_g.add_metric([tenant, window, percentile_label(q)], nth(parts, min(int(q * n), n - 1)) / 1000)
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
