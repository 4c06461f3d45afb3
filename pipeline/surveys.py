"""Rolling NPS / CSAT / CES by event time (SPEC §5). Pure: counts in minute buckets, no I/O.

A response at event time t counts in window W when ``t // 60000 > (clock - W) // 60000``: the
window's boundary is rounded down to the minute, as SPEC §5 allows; clock is the largest event
time processed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

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


class SurveyWindows:
    """Survey counts per (tenant, kind) in minute buckets of event time.

    A bucket is [n, class0, class1, class2, score_sum]. Buckets older than the largest window are
    pruned, so the state is bounded by windows, not by traffic.
    """

    def __init__(self, windows_ms: dict[str, int]):
        self.windows_ms = windows_ms
        self._buckets: dict[tuple[str, str], dict[int, list[int]]] = {}

    def add(self, tenant: str, kind: str, score: int, event_ms: int) -> None:
        buckets = self._buckets.setdefault((tenant, kind), {})
        bucket = buckets.get(event_ms // BUCKET_MS)
        if bucket is None:
            bucket = buckets[event_ms // BUCKET_MS] = [0, 0, 0, 0, 0]
        bucket[0] += 1
        bucket[1 + classify(kind, score)] += 1
        bucket[4] += score

    def add_bucket(self, tenant: str, kind: str, minute: int, counts: Iterable[int]) -> None:
        """Merge pre-counted [n, c0, c1, c2, score_sum] into one minute (used to rebuild state)."""
        bucket = self._buckets.setdefault((tenant, kind), {}).setdefault(minute, [0, 0, 0, 0, 0])
        for i, value in enumerate(counts):
            bucket[i] += value

    def totals(self, clock_ms: int) -> dict[tuple[str, str, str], Totals]:
        """(tenant, kind, window label) -> Totals at this clock; one pass over the buckets."""
        starts = {label: (clock_ms - w) // BUCKET_MS for label, w in self.windows_ms.items()}
        out: dict[tuple[str, str, str], Totals] = {}
        for (tenant, kind), buckets in self._buckets.items():
            sums = {label: [0, 0, 0, 0, 0] for label in starts}
            for minute, bucket in buckets.items():
                for label, start in starts.items():
                    if minute > start:
                        acc = sums[label]
                        for i in range(5):
                            acc[i] += bucket[i]
            for label, acc in sums.items():
                out[(tenant, kind, label)] = Totals(acc[0], (acc[1], acc[2], acc[3]), acc[4])
        return out

    def prune(self, clock_ms: int) -> None:
        oldest = (clock_ms - max(self.windows_ms.values())) // BUCKET_MS
        for buckets in self._buckets.values():
            for minute in [m for m in buckets if m <= oldest]:
                del buckets[minute]
