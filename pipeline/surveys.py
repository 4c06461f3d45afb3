"""Rolling NPS / CSAT / CES by event time (SPEC §5). Pure: counts in minute buckets, no I/O.

A response at event time t counts in window W when ``t // 60000 > (clock - W) // 60000``: the
window's boundary is rounded down to the minute, as SPEC §5 allows; clock is the largest event
time processed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

BUCKET_MS = 60_000
CLASSES = {
    "NPS": ("promoter", "passive", "detractor"),
    "CSAT": ("satisfied", "neutral", "dissatisfied"),
    "CES": ("all",),
}


def classify(kind: str, score: int) -> int:
    """Index into CLASSES[kind] of a valid score."""
    if kind == "NPS":
        return 0 if score >= 9 else 1 if score >= 7 else 2
    if kind == "CSAT":
        return 0 if score >= 4 else 1 if score == 3 else 2
    return 0


@dataclass
class Totals:
    """Responses of one (tenant, kind) within one window: n, per-class counts, sum of scores."""

    n: int = 0
    classes: tuple[int, int, int] = (0, 0, 0)
    score_sum: int = 0

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(
            self.n + other.n,
            tuple(a + b for a, b in zip(self.classes, other.classes)),
            self.score_sum + other.score_sum,
        )


def nps(t: Totals) -> Optional[float]:
    return 100.0 * (t.classes[0] - t.classes[2]) / t.n if t.n else None


def nps_margin_of_error(t: Totals) -> Optional[float]:
    """95 % margin: 1.96 × 100 × sqrt((p + d − (p − d)²) / n), p and d the promoter and detractor shares."""
    if not t.n:
        return None
    p, d = t.classes[0] / t.n, t.classes[2] / t.n
    return 1.96 * 100.0 * math.sqrt(max(p + d - (p - d) ** 2, 0.0) / t.n)


def csat(t: Totals) -> Optional[float]:
    return 100.0 * t.classes[0] / t.n if t.n else None


def ces(t: Totals) -> Optional[float]:
    return t.score_sum / t.n if t.n else None


class _Series:
    """One (tenant, kind): minute buckets plus a running sum per window, so reading is O(1)."""

    __slots__ = ("buckets", "sums", "starts")

    def __init__(self, labels: Iterable[str]):
        self.buckets: dict[int, list[int]] = {}
        self.sums = {label: [0, 0, 0, 0, 0] for label in labels}
        self.starts = {label: -(2**62) for label in labels}  # minutes <= start are outside the window

    def add(self, minute: int, counts: Sequence[int]) -> None:
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = [0, 0, 0, 0, 0]
        targets = [bucket] + [self.sums[label] for label, start in self.starts.items() if minute > start]
        for acc in targets:
            for i, value in enumerate(counts):
                acc[i] += value

    def advance(self, label: str, start: int) -> None:
        """Move a window's lower bound forward, subtracting the buckets it leaves behind."""
        old = self.starts[label]
        if start <= old:
            return
        acc = self.sums[label]
        leaving = range(old + 1, start + 1) if start - old <= len(self.buckets) else \
            [m for m in self.buckets if old < m <= start]
        for minute in leaving:
            bucket = self.buckets.get(minute)
            if bucket is not None:
                for i in range(5):
                    acc[i] -= bucket[i]
        self.starts[label] = start


class SurveyWindows:
    """Survey counts per (tenant, kind) in minute buckets of event time, with running window sums.

    A bucket is [n, class0, class1, class2, score_sum]. Each window keeps the sum of the buckets
    inside it: a response adds to the windows it falls in, and moving the clock subtracts the
    buckets a window leaves, so a scrape costs nothing per bucket. Buckets older than the largest
    window are pruned, so the state is bounded by windows, not by traffic.
    """

    def __init__(self, windows_ms: dict[str, int]):
        self.windows_ms = windows_ms
        self._series: dict[tuple[str, str], _Series] = {}

    def _get(self, tenant: str, kind: str) -> _Series:
        series = self._series.get((tenant, kind))
        if series is None:
            series = self._series[(tenant, kind)] = _Series(self.windows_ms)
        return series

    def add(self, tenant: str, kind: str, score: int, event_ms: int) -> None:
        counts = [1, 0, 0, 0, score]
        counts[1 + classify(kind, score)] = 1
        self._get(tenant, kind).add(event_ms // BUCKET_MS, counts)

    def add_bucket(self, tenant: str, kind: str, minute: int, counts: Sequence[int]) -> None:
        """Merge pre-counted [n, c0, c1, c2, score_sum] into one minute (used to rebuild state)."""
        self._get(tenant, kind).add(minute, counts)

    def _advance(self, clock_ms: int) -> None:
        for label, window in self.windows_ms.items():
            start = (clock_ms - window) // BUCKET_MS
            for series in self._series.values():
                series.advance(label, start)

    def totals(self, clock_ms: int) -> dict[tuple[str, str, str], Totals]:
        """(tenant, kind, window label) -> Totals at this clock."""
        self._advance(clock_ms)
        return {(tenant, kind, label): Totals(acc[0], (acc[1], acc[2], acc[3]), acc[4])
                for (tenant, kind), series in self._series.items() for label, acc in series.sums.items()}

    def prune(self, clock_ms: int) -> None:
        self._advance(clock_ms)
        oldest = (clock_ms - max(self.windows_ms.values())) // BUCKET_MS
        for series in self._series.values():
            for minute in [m for m in series.buckets if m <= oldest]:
                del series.buckets[minute]
