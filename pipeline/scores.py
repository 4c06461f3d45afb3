"""Survey scores: valid ranges, classes, and the NPS, CSAT and CES formulas. The one place for each rule.

Ranges: NPS 0..10, CSAT 1..5, CES 1..7. NPS is a score from -100 to 100, CSAT a ratio from 0 to 1, CES a
mean score. Classes: promoter 9-10 / passive 7-8 / detractor 0-6 for NPS,
satisfied 4-5 / neutral 3 / dissatisfied 1-2 for CSAT, one class ``all`` for CES.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

SCORE_RANGES = {"NPS": (0, 10), "CSAT": (1, 5), "CES": (1, 7)}
CLASSES = {
    "NPS": ("promoter", "passive", "detractor"),
    "CSAT": ("satisfied", "neutral", "dissatisfied"),
    "CES": ("all",),
}
PROMOTER_MIN, PASSIVE_MIN = 9, 7  # NPS: below PASSIVE_MIN is a detractor
SATISFIED_MIN, NEUTRAL = 4, 3  # CSAT


def is_detractor(score: int) -> bool:
    """An NPS answer of 0..6."""
    return score < PASSIVE_MIN


def classify(kind: str, score: int) -> int:
    """Index into CLASSES[kind] of a valid score."""
    if kind == "NPS":
        return 0 if score >= PROMOTER_MIN else 1 if score >= PASSIVE_MIN else 2
    if kind == "CSAT":
        return 0 if score >= SATISFIED_MIN else 1 if score == NEUTRAL else 2
    return 0


def counts_of(kind: str, score: int) -> list[int]:
    """One answer as the count vector [answers, class 0, class 1, class 2, score] that windows sum."""
    counts = [1, 0, 0, 0, score]
    counts[1 + classify(kind, score)] = 1
    return counts


@dataclass(frozen=True)
class Totals:
    """Answers of one kind within one window: n, per-class counts, sum of scores."""

    n: int = 0
    classes: tuple[int, int, int] = (0, 0, 0)
    score_sum: int = 0

    @classmethod
    def of(cls, counts: Sequence[int]) -> "Totals":
        return cls(counts[0], (counts[1], counts[2], counts[3]), counts[4])

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(self.n + other.n, tuple(a + b for a, b in zip(self.classes, other.classes)),
                      self.score_sum + other.score_sum)


def nps(t: Totals) -> Optional[float]:
    """100 × (promoters − detractors) / answers."""
    return 100.0 * (t.classes[0] - t.classes[2]) / t.n if t.n else None


def nps_margin_of_error(t: Totals) -> Optional[float]:
    """95 % margin: 1.96 × 100 × sqrt((p + d − (p − d)²) / n), p and d the promoter and detractor shares."""
    if not t.n:
        return None
    p, d = t.classes[0] / t.n, t.classes[2] / t.n
    return 1.96 * 100.0 * math.sqrt(max(p + d - (p - d) ** 2, 0.0) / t.n)


def csat_ratio(t: Totals) -> Optional[float]:
    """Answers scoring 4 or 5 / answers, 0..1."""
    return t.classes[0] / t.n if t.n else None


def ces(t: Totals) -> Optional[float]:
    """Mean score."""
    return t.score_sum / t.n if t.n else None


# kind -> (metric name, formula) of every score a kind has: the gauges and the metric_snapshots rows
FORMULAS: dict[str, tuple[tuple[str, Callable[[Totals], Optional[float]]], ...]] = {
    "NPS": (("nps", nps), ("nps_margin_of_error", nps_margin_of_error)),
    "CSAT": (("csat_ratio", csat_ratio),),
    "CES": (("ces", ces),),
}
