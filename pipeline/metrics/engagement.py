"""Active customers, stickiness and the share of customers who complained: the engagement core.

``cx_active_customers{tenant,window}``: distinct customers with at least one processed event in the
window (by event time, the minute rounding of :mod:`pipeline.metrics.windows`); anonymous events have no
customer and don't count. It equals ``uniqExact(customer_id)`` over ``cx.events`` for the same window.
Inputs are partitioned by customer, so the counts of all workers add up exactly.

``cx_complaint_customers{tenant,window}``: customers with a complaint opened in the window, from the
complaint core's fact :class:`~pipeline.metrics.facts.ComplaintOpened` (it publishes it in ``tick``; the
processor hands it over through ``take``).
Ratios per worker (``cx_stickiness_ratio`` = active 1d / active 30d, ``cx_complaint_customer_ratio``) are
exported for single-worker setups; fleets use the recording rules, which divide the summed counts.

State: the last minute each customer was seen (:class:`LastSeen`, 14 bytes a customer), kept for the
largest window (at least 30 days, for stickiness). Rebuilt from ``events`` and ``complaints`` (the opening
time of each complaint, what the fact carried); idempotent by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Duration, Section, Windows
from pipeline.metrics.base import Batch, Facts, MetricCore, Newest, NotNull, Output, Restore
from pipeline.metrics.facts import ComplaintOpened
from pipeline.metrics.lastseen import MINUTE_MS, LastSeen

DAY_MS = 86_400_000
STICKINESS = (DAY_MS, 30 * DAY_MS)  # DAU / MAU


@dataclass
class EngagementState:
    active: LastSeen = field(default_factory=LastSeen)
    complained: LastSeen = field(default_factory=LastSeen)


def _counts(store: LastSeen, clock_ms: int, window_ms: int) -> dict[str, int]:
    """tenant -> customers seen in the window: from the store's running sums (its windows, keyed by length),
    or counted over its customers for a clock before the one they were moved to (never at a scrape)."""
    store.merge()
    windows = store.windows
    if windows is None or clock_ms < windows.clock_ms:
        return store.count_since((clock_ms - window_ms) // MINUTE_MS)
    counts = dict.fromkeys(store.tenant_names, 0)  # every tenant the store knows, as count_since gives them
    counts.update((tenant, n) for (tenant, length), (n,) in windows.totals(clock_ms).items() if length == window_ms)
    return counts


class EngagementSettings(Section):
    prefix = "engagement_"
    windows: Windows = Field(
        [Duration("1d"), Duration("7d"), Duration("30d")], description="Windows of cx_active_customers and "
        "cx_complaint_customers, by event time (comma-separated). Stickiness (DAU/MAU) always uses 1d and 30d.")


@dataclass
class EngagementCore(MetricCore[EngagementState]):
    windows_ms: dict[str, int]
    name = "engagement"
    Settings = EngagementSettings
    consumes = (ComplaintOpened,)

    @classmethod
    def configure(cls, section: EngagementSettings, stream) -> "EngagementCore":
        return cls({str(window): window.ms for window in section.windows})

    @property
    def retention_ms(self) -> int:
        return max(max(self.windows_ms.values()), STICKINESS[1])

    def new_state(self, partition: int) -> EngagementState:
        windows = {ms: ms for ms in self.windows_ms.values()}  # keyed by length, as _counts reads them
        return EngagementState(LastSeen({**windows, **{ms: ms for ms in STICKINESS}}), LastSeen(windows))

    def add(self, state: EngagementState, batch: Batch, out: Output) -> None:
        state.active.note_customers(batch.customers())

    def take(self, state: EngagementState, facts: Facts, out: Output) -> None:
        for opened in facts.of(ComplaintOpened):
            state.complained.note(opened.tenant, opened.customer_id, opened.opened_ms)

    def tick(self, state: EngagementState, clock_ms: int, out: Output) -> None:
        oldest = (clock_ms - self.retention_ms) // MINUTE_MS
        for store in (state.active, state.complained):
            store.expire(oldest)
            store.windows.prune(clock_ms)

    def restores(self) -> Sequence[Restore]:
        return (Restore("active", "events", ("tenant", "customer_id", "event_ms"), "event_ms", self.retention_ms,
                        where=(NotNull("customer_id"),), newest=Newest(("tenant", "customer_id"), "event_ms")),
                Restore("complained", "complaints", ("tenant", "customer_id", "opened_ms"), "opened_ms",
                        self.retention_ms, newest=Newest(("tenant", "customer_id"), "opened_ms"), final=True))

    def restore(self, state: EngagementState, name: str, rows: list, clock_ms: int) -> None:
        store = state.active if name == "active" else state.complained
        for tenant, customer_id, event_ms in rows:
            store.note(tenant, customer_id, int(event_ms))
        store.merge()

    # -- reading ---------------------------------------------------------------------------------
    def totals(self, states: Sequence[EngagementState], clocks: Sequence[int]) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, window label) -> (active customers, customers with a complaint opened)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for state, clock_ms in zip(states, clocks):
            for label, window in self.windows_ms.items():
                active, complained = _counts(state.active, clock_ms, window), _counts(state.complained, clock_ms, window)
                for tenant in active.keys() | complained.keys():
                    a, c = out.get((tenant, label), (0, 0))
                    out[(tenant, label)] = (a + active.get(tenant, 0), c + complained.get(tenant, 0))
        return out

    @staticmethod
    def stickiness_counts(states: Sequence[EngagementState], clocks: Sequence[int]) -> dict[str, tuple[int, int]]:
        """tenant -> (customers active in the last day, in the last 30 days)."""
        daily: dict[str, int] = {}
        monthly: dict[str, int] = {}
        for state, clock_ms in zip(states, clocks):
            for counts, window in ((daily, STICKINESS[0]), (monthly, STICKINESS[1])):
                for tenant, n in _counts(state.active, clock_ms, window).items():
                    counts[tenant] = counts.get(tenant, 0) + n
        return {tenant: (daily.get(tenant, 0), n) for tenant, n in monthly.items() if n}

    def stickiness(self, states: Sequence[EngagementState], clocks: Sequence[int]) -> dict[str, float]:
        return {tenant: day / month for tenant, (day, month) in self.stickiness_counts(states, clocks).items()}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[EngagementState], clocks: Sequence[int]) -> Iterable[Metric]:
        active_g, complained_g, ratio_g, sticky_g = families = self._families()
        for (tenant, window), (active, complained) in sorted(self.totals(states, clocks).items()):
            active_g.add_metric([tenant, window], active)
            complained_g.add_metric([tenant, window], complained)
            if active:
                ratio_g.add_metric([tenant, window], complained / active)
        for tenant, value in sorted(self.stickiness(states, clocks).items()):
            sticky_g.add_metric([tenant], value)
        return families

    def snapshot(self, states: Sequence[EngagementState], clocks: Sequence[int]) -> Iterable[tuple[str, str, str, float, int]]:
        for (tenant, window), (active, _) in sorted(self.totals(states, clocks).items()):
            yield tenant, "active_customers", window, float(active), active
        for tenant, (day, month) in sorted(self.stickiness_counts(states, clocks).items()):
            yield tenant, "stickiness", "1d/30d", day / month, month

    @staticmethod
    def _families() -> list[Metric]:
        window = ["tenant", "window"]
        return [
            GaugeMetricFamily("cx_active_customers", "Distinct customers with an event in the window.", labels=window),
            GaugeMetricFamily("cx_complaint_customers", "Distinct customers with a complaint opened in the window.",
                              labels=window),
            GaugeMetricFamily("cx_complaint_customer_ratio", "cx_complaint_customers / cx_active_customers of this "
                              "worker (fleet: tenant_window:cx_complaint_customers:ratio).", labels=window),
            GaugeMetricFamily("cx_stickiness_ratio", "DAU/MAU of this worker: active 1d / active 30d "
                              "(fleet: tenant:cx_stickiness:ratio).", labels=["tenant"]),
        ]
