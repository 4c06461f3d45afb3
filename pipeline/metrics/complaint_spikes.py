"""Complaint spikes: are more complaints being opened than usual for this hour of the week?

Openings per tenant are counted in event-time buckets (1 h by default). The bucket the clock is in,
count ``x`` so far, is compared with its baseline ``λ``, the openings a bucket at this time of the week
usually gets:

- ``λ`` = mean of the same bucket of the week over the last ``weeks`` weeks. While there is less
  history, each missing week is filled in with an EWMA over the same bucket of the previous days
  (so the daily rhythm is kept); with less than a day of history there is no baseline and no flag.
  The first bucket with history never counts: it is partial (history, or the restore window, starts
  inside it), and its low count would pull the baseline down.
- The bucket is flagged when the Poisson tail P(X >= x | λ) < α, x >= ``min_count`` and x >= ``ratio``·λ.
  The same test also runs on the last two buckets together against 2λ, so a moderate surge that
  straddles a bucket boundary is caught by the end of its second bucket.
- ``cx_complaint_spike`` is 1 while the current or the previous bucket is flagged: an ongoing surge
  keeps the flag across the boundary, where the fresh bucket has few openings yet.

Counting the current bucket so far against a whole bucket's baseline can only under-flag, never
over-flag, early in the bucket. The input is the fact :class:`~pipeline.metrics.facts.ComplaintOpened` of
the complaints core (each complaint once), so replays count nothing twice; the state is rebuilt from ``complaints``.
Gauges are computed over the partitions a worker owns (alerts take the max over workers).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Duration, Section
from pipeline.metrics.base import Facts, MetricCore, Output, Restore
from pipeline.metrics.facts import ComplaintOpened

WEEK_MS, DAY_MS, HOUR_MS = 7 * 86_400_000, 86_400_000, 3_600_000
EWMA_WEIGHT = 0.3  # weight of the most recent day in the short-history baseline


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


@dataclass(frozen=True)
class SpikeTest:
    bucket_ms: int
    alpha: float
    min_count: int
    min_ratio: float
    weeks: int

    def significant(self, x: int, lam: float) -> bool:
        return x >= self.min_count and x >= self.min_ratio * lam and poisson_tail(x, lam) < self.alpha

    def baseline(self, counts: dict[int, int], first: int, bucket: int) -> Optional[float]:
        """λ for ``bucket`` from per-bucket counts; ``first`` is the first bucket with history. That bucket
        is partial (history starts inside it, or the restore window cuts it), so only later ones count."""
        per_week, per_day, complete = WEEK_MS // self.bucket_ms, DAY_MS // self.bucket_ms, first + 1
        same = [counts.get(bucket - k * per_week, 0) for k in range(1, self.weeks + 1)
                if bucket - k * per_week >= complete]
        if len(same) == self.weeks:
            return sum(same) / self.weeks
        days = [bucket - d * per_day for d in range(min(7, (bucket - complete) // per_day), 0, -1)]
        if not days:
            return None
        ewma = float(counts.get(days[0], 0))
        for day in days[1:]:
            ewma += EWMA_WEIGHT * (counts.get(day, 0) - ewma)
        return (sum(same) + (self.weeks - len(same)) * ewma) / self.weeks

    def flagged(self, counts: dict[int, int], first: int, bucket: int) -> bool:
        """Whether ``bucket`` (its count so far), alone or with the bucket before, is a spike."""
        lam = self.baseline(counts, first, bucket)
        if lam is None:
            return False
        x = counts.get(bucket, 0)
        if self.significant(x, lam):
            return True
        before = self.baseline(counts, first, bucket - 1)
        return before is not None and self.significant(x + counts.get(bucket - 1, 0), lam + before)


@dataclass
class SpikeState:
    counts: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    first: dict[str, int] = field(default_factory=dict)  # tenant -> first bucket with history
    clock_ms: int = 0


class SpikeSettings(Section):
    prefix = "spike_"
    bucket: Duration = Field(Duration("1h"), description="Complaint spike detection: width of the event-time bucket "
                             "whose opened count is tested against the baseline.")
    alpha: float = Field(1e-4, gt=0, lt=1, description="Complaint spike: flag when the Poisson tail "
                         "P(X >= opened | baseline) is below this.")
    min_count: int = Field(5, ge=1, description="Complaint spike: never flag a bucket with fewer openings.")
    min_ratio: float = Field(2.0, ge=1, description="Complaint spike: never flag a bucket with fewer than this many "
                             "times the baseline openings.")
    weeks: int = Field(4, ge=1, description="Complaint spike: weeks of same-hour-of-week history in the baseline (an "
                       "EWMA of recent buckets stands in while history is shorter).")


@dataclass
class ComplaintSpikeCore(MetricCore[SpikeState]):
    test: SpikeTest
    name = "complaint_spikes"
    Settings = SpikeSettings
    consumes = (ComplaintOpened,)

    @classmethod
    def configure(cls, section: SpikeSettings, stream) -> "ComplaintSpikeCore":
        return cls(SpikeTest(section.bucket.ms, section.alpha, section.min_count, section.min_ratio, section.weeks))

    @property
    def horizon_ms(self) -> int:
        return (self.test.weeks + 1) * WEEK_MS

    def new_state(self, partition: int) -> SpikeState:
        return SpikeState()

    def _count(self, state: SpikeState, tenant: str, opened_ms: int) -> None:
        bucket = opened_ms // self.test.bucket_ms
        state.counts[tenant][bucket] += 1
        state.first[tenant] = min(state.first.get(tenant, bucket), bucket)

    def take(self, state: SpikeState, facts: Facts, out: Output) -> None:
        for opened in facts.of(ComplaintOpened):
            self._count(state, opened.tenant, opened.opened_ms)

    def tick(self, state: SpikeState, clock_ms: int, out: Output) -> None:
        bucket_now = clock_ms // self.test.bucket_ms
        if bucket_now != state.clock_ms // self.test.bucket_ms:
            oldest = (clock_ms - self.horizon_ms) // self.test.bucket_ms
            for counts in state.counts.values():
                for bucket in [b for b in counts if b < oldest]:
                    del counts[bucket]
        state.clock_ms = clock_ms

    def restores(self) -> Sequence[Restore]:
        return (Restore("opened", "complaints", ("tenant", "opened_ms"), "opened_ms", self.horizon_ms, final=True),)

    def restore(self, state: SpikeState, name: str, rows: list, clock_ms: int) -> None:
        for tenant, opened_ms in rows:
            self._count(state, tenant, int(opened_ms))
        state.clock_ms = max(state.clock_ms, clock_ms)

    # -- reading ---------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[SpikeState], clocks: Sequence[int]) -> Iterable[Metric]:
        # Openings are counted in absolute event-time buckets, so per-partition counts add up exactly; the
        # bucket tested is the current one of the newest partition.
        clock_ms = max(clocks, default=0)
        counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        first: dict[str, int] = {}
        for state in states:
            for tenant, by_bucket in state.counts.items():
                for bucket, n in by_bucket.items():
                    counts[tenant][bucket] += n
                first[tenant] = min(first.get(tenant, state.first[tenant]), state.first[tenant])
        spike, rate, baseline = families = self._families()
        bucket, per_hour = clock_ms // self.test.bucket_ms, HOUR_MS / self.test.bucket_ms
        for tenant in sorted(counts):
            by_bucket = counts[tenant]
            flagged = self.test.flagged(by_bucket, first[tenant], bucket) or \
                self.test.flagged(by_bucket, first[tenant], bucket - 1)
            spike.add_metric([tenant], 1.0 if flagged else 0.0)
            rate.add_metric([tenant], by_bucket.get(bucket, 0) * per_hour)
            lam = self.test.baseline(by_bucket, first[tenant], bucket)
            if lam is not None:
                baseline.add_metric([tenant], lam * per_hour)
        return families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("cx_complaint_spike", "1 while complaints opened in the current or previous bucket are "
                              "far above the baseline for that time of the week.", labels=["tenant"]),
            GaugeMetricFamily("cx_complaints_opened_rate", "Complaints opened in the current event-time bucket, "
                              "per hour.", labels=["tenant"]),
            GaugeMetricFamily("cx_complaints_opened_baseline", "Baseline of complaints opened for the current bucket's "
                              "time of the week, per hour.", labels=["tenant"]),
        ]
