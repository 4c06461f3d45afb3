"""Rolling event-time windows over minute buckets, with a running sum per window. Pure.

A value at event time t counts in window W when ``t // 60000 > (clock - W) // 60000``: the window's
lower boundary is rounded down to the minute; clock is the largest event time processed. Each key
(e.g. (tenant, kind)) has a vector of counts per minute bucket. Every window keeps the running sum of
the buckets inside it: adding updates the windows the bucket falls in, and moving the clock subtracts
the buckets a window leaves, so reading a total costs nothing per bucket. Buckets older than the
largest window are pruned, so state is bounded by the windows, not by traffic; a heap of the bucket
minutes makes pruning cost the buckets it drops, not all the buckets (43,200 per key in a 30-day window).
"""
from __future__ import annotations

import heapq
from typing import Hashable, Sequence

BUCKET_MS = 60_000


class _Series:
    __slots__ = ("buckets", "minutes", "sums", "starts", "width")

    def __init__(self, labels: Sequence[str], width: int):
        self.width = width
        self.buckets: dict[int, list[int]] = {}
        self.minutes: list[int] = []  # heap of the minutes in buckets
        self.sums = {label: [0] * width for label in labels}
        self.starts = {label: -(2**62) for label in labels}  # minutes <= start are outside the window

    def add(self, minute: int, counts: Sequence[int]) -> None:
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = [0] * self.width
            heapq.heappush(self.minutes, minute)
        nonzero = [(i, value) for i, value in enumerate(counts) if value]  # adding 0 changes nothing
        for i, value in nonzero:
            bucket[i] += value
        sums = self.sums
        for label, start in self.starts.items():
            if minute > start:
                acc = sums[label]
                for i, value in nonzero:
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
                for i in range(self.width):
                    acc[i] -= bucket[i]
        self.starts[label] = start


class RollingCounts:
    """Count vectors of ``width`` numbers per key, in minute buckets, summed per rolling window."""

    def __init__(self, windows_ms: dict[str, int], width: int):
        self.windows_ms = windows_ms
        self.width = width
        self.largest_ms = max(windows_ms.values())
        self._series: dict[Hashable, _Series] = {}
        self.clock_ms = -(2**62)  # the latest clock the windows were moved to: totals are right from it on
        self._pruned = -(2**62)  # buckets up to this minute are gone (prune)

    def __len__(self) -> int:
        return len(self._series)

    def add(self, key: Hashable, event_ms: int, counts: Sequence[int]) -> None:
        self.add_bucket(key, event_ms // BUCKET_MS, counts)

    def add_bucket(self, key: Hashable, minute: int, counts: Sequence[int]) -> None:
        if minute <= self._pruned:
            return  # outside every window already (prune would drop it next)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.windows_ms, self.width)
        series.add(minute, counts)

    def _advance(self, clock_ms: int) -> None:
        self.clock_ms = max(self.clock_ms, clock_ms)
        for label, window in self.windows_ms.items():
            start = (clock_ms - window) // BUCKET_MS
            for series in self._series.values():
                series.advance(label, start)

    def totals(self, clock_ms: int) -> dict[tuple[Hashable, str], list[int]]:
        """(key, window label) -> summed counts at this clock (copies)."""
        self._advance(clock_ms)
        return {(key, label): list(acc) for key, series in self._series.items() for label, acc in series.sums.items()}

    def prune(self, clock_ms: int) -> None:
        """Drop buckets older than the largest window, and keys left with none: nothing when the window has
        not left a minute since the last prune, else each key's expired minutes from its heap."""
        self._advance(clock_ms)
        oldest = (clock_ms - self.largest_ms) // BUCKET_MS
        if oldest <= self._pruned:
            return
        for key in list(self._series):
            series = self._series[key]
            while series.minutes and series.minutes[0] <= oldest:
                del series.buckets[heapq.heappop(series.minutes)]
            if not series.buckets:
                del self._series[key]
        self._pruned = oldest
