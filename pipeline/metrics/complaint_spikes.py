"""Complaint spikes: are more complaints being opened in the last hour than usual for this time of the week?

A sliding window evaluated on event-time minutes. At a minute ``e`` (the minute the clock is in) the test
compares, per tenant:

- ``recent``: openings in the window, the minutes ``(e - window, e]``;
- ``expected`` (λ): what that window usually gets. The same span of each of the last ``weeks`` weeks,
  widened by ``spread`` on both sides to smooth out chance in sparse history, averaged and scaled back to
  the window's length. While there is less history, each missing week is filled in with an EWMA over the
  same span of the previous days (so the daily rhythm is kept); with less than a day of history there is
  no baseline and no flag. A span counts as history only if it lies at or after the tenant's first
  opening within ``weeks + 1`` weeks before ``e``: earlier minutes may predate the tenant.

The minute is flagged when the Poisson tail P(X >= recent | λ) < α, recent >= ``min_count`` and recent >=
``min_ratio``·λ. ``cx_complaint_spike`` is 1 while any minute of the last ``hold`` minutes is flagged: a
sustained surge whose count wobbles around the threshold keeps the flag, and the flag drops ``hold``
minutes after the window stops being significant. Every number is a function of the openings and the
clock alone, so it can be recomputed from the ``complaints`` table (docs/metrics.md gives the SQL).

Why this test, by measurement (``python -m benchmarks.spike_eval --compare``): at under one false alarm
per tenant-month it flags a tripling at 20 complaints an hour in 29 minutes (median; the hourly buckets
aligned to the clock it replaces took 44) and at 5 an hour in 65 (88). A CUSUM or several windows at once
are 7-9 minutes faster at 20 an hour and slower at 5; this flag is explained by the two gauges next to
it, and SQL reproduces it exactly (docs/metrics.md).

The input is the fact :class:`~pipeline.metrics.facts.ComplaintOpened` of the complaints core (each
complaint once), so replays count nothing twice; the state (openings per tenant and minute, for
``weeks + 1`` weeks plus ``hold``) is rebuilt from ``complaints``. Gauges are computed over the
partitions a worker owns (alerts take the max over workers).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Optional, Sequence

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field, model_validator

from pipeline.config import Duration, Section
from pipeline.metrics.base import Facts, MetricCore, Output, Restore
from pipeline.metrics.facts import ComplaintOpened
from pipeline.metrics.lastseen import MINUTE_MS

DAY_MINUTES, WEEK_MINUTES = 1440, 7 * 1440
EWMA_WEIGHT = 0.3  # weight of the most recent day in the short-history baseline
EWMA_DAYS = 7


@lru_cache(maxsize=65536)
def poisson_tail(x: int, lam: float) -> float:
    """P(X >= x) for X ~ Poisson(lam), without scipy; stable for large x and lam (log-space terms)."""
    if x <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    log_pmf = lambda k: -lam + k * math.log(lam) - math.lgamma(k + 1)  # noqa: E731
    if x > lam:  # terms shrink from x on: sum them upward until they no longer matter
        first = log_pmf(x)
        total, k = 0.0, x
        while True:
            term = math.exp(log_pmf(k) - first)
            total += term
            if term < 1e-17 * total:
                break
            k += 1
        return min(1.0, math.exp(first) * total)
    below = sum(math.exp(log_pmf(k)) for k in range(x))  # x <= lam: P(X < x) has at most lam terms
    return min(1.0, max(0.0, 1.0 - below))


class Openings:
    """One tenant's openings per event-time minute, for counts over ranges. A minute may come several
    times (once per partition): the counts add up."""

    __slots__ = ("minutes", "cumulative")

    def __init__(self, minutes: np.ndarray, counts: np.ndarray):
        order = np.argsort(minutes, kind="stable")
        self.minutes = np.asarray(minutes, dtype=np.int64)[order]
        self.cumulative = np.concatenate(([0], np.cumsum(np.asarray(counts, dtype=np.int64)[order])))

    def upto(self, minute: np.ndarray) -> np.ndarray:
        """Openings in minutes <= ``minute``."""
        return self.cumulative[np.searchsorted(self.minutes, minute, side="right")]

    def between(self, after: np.ndarray, upto: np.ndarray) -> np.ndarray:
        """Openings in the minutes ``(after, upto]``."""
        return self.upto(upto) - self.upto(after)

    def first_after(self, minute: np.ndarray) -> np.ndarray:
        """The earliest minute with an opening after ``minute`` (a huge number when there is none)."""
        padded = np.append(self.minutes, np.iinfo(np.int64).max // 2)
        return padded[np.searchsorted(self.minutes, minute, side="right")]


@dataclass(frozen=True)
class Evaluation:
    """The test at each minute asked for: openings in the window, its baseline (NaN: none), flagged."""

    recent: np.ndarray
    expected: np.ndarray
    flagged: np.ndarray


@dataclass(frozen=True)
class SpikeTest:
    """The detector. Durations in minutes."""

    window: int
    spread: int
    alpha: float
    min_count: int
    min_ratio: float
    weeks: int
    hold: int

    @property
    def lookback(self) -> int:
        """The test at minute e reads the openings of the minutes ``(e - lookback, e]``."""
        return (self.weeks + 1) * WEEK_MINUTES

    @property
    def history(self) -> int:
        """The flag at minute M reads the minutes ``(M - history, M]``: the tests of the last ``hold`` minutes."""
        return self.lookback + self.hold

    def _span(self, openings: Openings, end: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Openings in the window ending at ``end`` widened by ``spread``; whether it is all history."""
        start = end - self.window - self.spread  # exclusive
        return openings.between(start, end + self.spread), start >= first - 1

    def expected(self, openings: Openings, at: np.ndarray) -> np.ndarray:
        """λ for the window ending at each minute of ``at`` (NaN without a day of history)."""
        first = openings.first_after(at - self.lookback)
        weeks_sum, weeks_valid = np.zeros(len(at), np.int64), np.zeros(len(at), np.int64)
        for k in range(1, self.weeks + 1):  # the nearest weeks are history first
            count, valid = self._span(openings, at - k * WEEK_MINUTES, first)
            weeks_sum += np.where(valid, count, 0)
            weeks_valid += valid
        days = [self._span(openings, at - d * DAY_MINUTES, first) for d in range(1, EWMA_DAYS + 1)]
        days_valid = np.sum([valid for _, valid in days], axis=0)
        # EWMA from the oldest valid day to yesterday, written as one weighted sum: day d weighs
        # w(1-w)^(d-1), the oldest valid day (d = days_valid) (1-w)^(d-1)
        ewma = np.zeros(len(at))
        for d, (count, _) in enumerate(days, start=1):
            weight = np.where(d < days_valid, EWMA_WEIGHT * (1 - EWMA_WEIGHT) ** (d - 1),
                              np.where(d == days_valid, (1 - EWMA_WEIGHT) ** (d - 1), 0.0))
            ewma = ewma + weight * count
        missing = self.weeks - weeks_valid
        lam = (weeks_sum + missing * ewma) * self.window / (self.weeks * (self.window + 2 * self.spread))
        return np.where(days_valid > 0, lam, np.nan)

    def significant(self, recent: int, lam: float) -> bool:
        return recent >= self.min_count and recent >= self.min_ratio * lam and poisson_tail(recent, lam) < self.alpha

    def evaluate(self, openings: Openings, at: np.ndarray) -> Evaluation:
        at = np.asarray(at, dtype=np.int64)
        recent = openings.between(at - self.window, at)
        lam = self.expected(openings, at)
        flagged = np.zeros(len(at), bool)
        # the guards are cheap and vectorised; the tail is computed only where they pass
        guards = (recent >= self.min_count) & (recent >= self.min_ratio * np.nan_to_num(lam, nan=np.inf))
        for i in np.flatnonzero(guards):
            flagged[i] = self.significant(int(recent[i]), float(lam[i]))
        return Evaluation(recent, lam, flagged)

    def held(self, flagged: np.ndarray) -> np.ndarray:
        """The flag from the tests of consecutive minutes: at each minute from the ``hold``-th on, whether
        any of its last ``hold`` minutes was flagged."""
        raised = np.concatenate(([0], np.cumsum(flagged)))
        return raised[self.hold:] - raised[:-self.hold] > 0

    def flags(self, openings: Openings, start: int, stop: int) -> np.ndarray:
        """``cx_complaint_spike`` at each minute of ``[start, stop)``."""
        return self.held(self.evaluate(openings, np.arange(start - self.hold + 1, stop)).flagged)


@dataclass
class SpikeState:
    counts: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    clock_ms: int = 0
    changes: int = 0  # changes of ``counts`` so far
    changed: dict[str, int] = field(default_factory=dict)  # tenant -> ``changes`` at its counts' last change

    def opened(self, tenant: str, minute: int) -> None:
        self.counts[tenant][minute] += 1
        self.tenant_changed(tenant)

    def tenant_changed(self, tenant: str) -> None:
        self.changes += 1
        self.changed[tenant] = self.changes


class SpikeSettings(Section):
    prefix = "spike_"
    window: Duration = Field(Duration("1h"), description="Complaint spike detection: the sliding event-time window "
                             "(whole minutes) whose openings are tested against the baseline, every minute.")
    spread: Duration = Field(Duration("2h"), description="Complaint spike: the baseline counts the same time of "
                             "previous weeks over the window widened by this much on each side (whole minutes), "
                             "scaled back to the window, to smooth out chance in sparse history.")
    alpha: float = Field(1e-4, gt=0, lt=1, description="Complaint spike: flag when the Poisson tail "
                         "P(X >= opened | baseline) is below this.")
    min_count: int = Field(5, ge=1, description="Complaint spike: never flag a window with fewer openings.")
    min_ratio: float = Field(2.0, ge=1, description="Complaint spike: never flag a window with fewer than this many "
                             "times the baseline openings.")
    weeks: int = Field(4, ge=1, description="Complaint spike: weeks of same-time-of-week history in the baseline (an "
                       "EWMA of the same span on recent days stands in while history is shorter).")
    hold: Duration = Field(Duration("1h"), description="Complaint spike: the flag stays 1 while any minute of this "
                           "last stretch (whole minutes) was flagged, so a sustained surge does not flicker.")

    @model_validator(mode="after")
    def _check_minutes(self) -> "SpikeSettings":
        for name in ("window", "spread", "hold"):
            value = getattr(self, name)
            if value.ms % MINUTE_MS or (value.ms == 0 and name != "spread"):
                raise ValueError(f"CXP_SPIKE_{name.upper()}={value} must be a positive whole number of minutes "
                                 "(e.g. 1h, 30m)" + (" or 0" if name == "spread" else ""))
        if self.window.ms + self.spread.ms > DAY_MINUTES * MINUTE_MS:
            raise ValueError(f"CXP_SPIKE_WINDOW + CXP_SPIKE_SPREAD ({self.window} + {self.spread}) must be at most 1d: "
                             "the baseline compares with the same minutes of the previous days")
        return self

    def test(self) -> SpikeTest:
        minutes = lambda d: d.ms // MINUTE_MS  # noqa: E731
        return SpikeTest(minutes(self.window), minutes(self.spread), self.alpha, self.min_count, self.min_ratio,
                         self.weeks, minutes(self.hold))


@dataclass
class ComplaintSpikeCore(MetricCore[SpikeState]):
    test: SpikeTest
    _kept: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # tenant -> (key, gauges)
    _held: list = field(default_factory=list, init=False, repr=False, compare=False)
    name = "complaint_spikes"
    Settings = SpikeSettings
    consumes = (ComplaintOpened,)

    @classmethod
    def configure(cls, section: SpikeSettings, stream) -> "ComplaintSpikeCore":
        return cls(section.test())

    def new_state(self, partition: int) -> SpikeState:
        return SpikeState()

    def take(self, state: SpikeState, facts: Facts, out: Output) -> None:
        for opened in facts.of(ComplaintOpened):
            state.opened(opened.tenant, opened.opened_ms // MINUTE_MS)

    def tick(self, state: SpikeState, clock_ms: int, out: Output) -> None:
        if clock_ms // (60 * MINUTE_MS) != state.clock_ms // (60 * MINUTE_MS):  # forget, once an hour
            oldest = clock_ms // MINUTE_MS - self.test.history
            for tenant, counts in list(state.counts.items()):
                forgotten = [m for m in counts if m <= oldest]
                for minute in forgotten:
                    del counts[minute]
                if forgotten:
                    state.tenant_changed(tenant)
                if not counts:
                    del state.counts[tenant]
        state.clock_ms = clock_ms

    def restores(self) -> Sequence[Restore]:
        span_ms = (self.test.history + 1) * MINUTE_MS  # whole minutes of history, whatever the clock's second
        return (Restore("opened", "complaints", ("tenant", "opened_ms"), "opened_ms", span_ms, final=True),)

    def restore(self, state: SpikeState, name: str, rows: list, clock_ms: int) -> None:
        for tenant, opened_ms in rows:
            state.opened(tenant, int(opened_ms) // MINUTE_MS)
        state.clock_ms = max(state.clock_ms, clock_ms)

    # -- reading ---------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _openings(self, states: Sequence[SpikeState], tenant: str, now: int) -> Optional[Openings]:
        """The tenant's openings over the partitions, in the minutes the flag reads; None without an opening
        within the test's lookback (no series then)."""
        arrays = [(np.fromiter(counts.keys(), np.int64, len(counts)), np.fromiter(counts.values(), np.int64, len(counts)))
                  for counts in (state.counts.get(tenant) for state in states) if counts is not None]
        minutes, counts = np.concatenate([m for m, _ in arrays]), np.concatenate([c for _, c in arrays])
        read = (minutes > now - self.test.history) & (minutes <= now)
        openings = Openings(minutes[read], counts[read])
        return openings if openings.between(now - self.test.lookback, now) > 0 else None

    def _gauges(self, states: Sequence[SpikeState], tenant: str, now: int) -> Optional[tuple[float, float, float]]:
        """(spike, recent, expected: NaN without a baseline) of the tenant at minute ``now``; None: no series."""
        openings = self._openings(states, tenant, now)
        if openings is None:
            return None
        evaluation = self.test.evaluate(openings, np.arange(now - self.test.hold + 1, now + 1))
        return (1.0 if self.test.held(evaluation.flagged)[-1] else 0.0, float(evaluation.recent[-1]),
                float(evaluation.expected[-1]))

    def collect(self, states: Sequence[SpikeState], clocks: Sequence[int]) -> Iterable[Metric]:
        """The gauges at the newest partition's minute. A tenant's are a function of that minute and its
        openings alone (counted per absolute event-time minute, so the partitions' counts add up exactly): they
        are kept from the last scrape while both stay as they were (issue 17), the openings told by each
        partition's count of its changes to the tenant."""
        now = max(clocks, default=0) // MINUTE_MS
        spike, recent, expected = families = self._families()
        kept = {}
        for tenant in sorted({tenant for state in states for tenant in state.counts}):
            key = (now, [(id(state), state.changed.get(tenant)) for state in states])
            before = self._kept.get(tenant)
            gauges = before[1] if before is not None and before[0] == key else self._gauges(states, tenant, now)
            kept[tenant] = (key, gauges)
            if gauges is not None:
                spike.add_metric([tenant], gauges[0])
                recent.add_metric([tenant], gauges[1])
                if not math.isnan(gauges[2]):
                    expected.add_metric([tenant], gauges[2])
        self._kept, self._held = kept, list(states)  # the states are held so that their ids are not reused
        return families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("cx_complaint_spike", "1 while complaints opened in the sliding window were far above "
                              "the baseline for that time of the week at any minute of the hold.", labels=["tenant"]),
            GaugeMetricFamily("cx_complaints_opened_recent", "Complaints opened in the sliding window (default the "
                              "last 60 event-time minutes, the current minute included).", labels=["tenant"]),
            GaugeMetricFamily("cx_complaints_opened_expected", "Complaints the same window usually gets at this time "
                              "of the week (the spike test's baseline).", labels=["tenant"]),
        ]
