"""Rolling event-time windows over minute buckets, with a running sum per window. Pure.

A value at event time t counts in window W when ``t // 60000 > (clock - W) // 60000``: the window's
lower boundary is rounded down to the minute; clock is the largest event time processed. Each key
(e.g. (tenant, kind)) has a vector of counts per minute bucket. Every window keeps the running sum of
the buckets inside it: adding updates the windows the bucket falls in, and moving the clock subtracts
the buckets a window leaves, so reading a total costs nothing per bucket. Buckets older than the
largest window are pruned, so state is bounded by the windows, not by traffic.

A key's buckets are two flat containers, not an object per minute: its minutes, sorted, in an
``array('q')``, and their counts in one list, ``width`` numbers per minute (a key of a 30-day window has up
to 43,200 minutes; a list per minute cost ~170 bytes and an object for the garbage collector to walk,
this ~8 bytes per number). Events come mostly in time order, so a bucket is nearly always the last
minute or a new one appended; a late minute is inserted. Pruning cuts the oldest minutes off the front.

``version`` moves whenever a total may have changed (an add, a window's lower bound moving a minute, a key
pruned away), so a reader can keep what it computed from the totals until it moves (issue 17: a scrape).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate
from operator import add, sub
from typing import Hashable, Sequence

BUCKET_MS = 60_000


class _Series:
    __slots__ = ("minutes", "values", "sums", "starts", "width")

    def __init__(self, labels: Sequence[str], width: int):
        self.width = width
        self.minutes = array("q")  # the minutes with a bucket, sorted
        self.values: list[int] = []  # their counts: width numbers per minute, in the order of minutes
        self.sums = {label: [0] * width for label in labels}
        self.starts = {label: -(2**62) for label in labels}  # minutes <= start are outside the window

    def _bucket(self, minute: int) -> int:
        """Where the minute's counts start in ``values``, its bucket made (zeros) if new."""
        minutes, width = self.minutes, self.width
        if minutes and minutes[-1] == minute:
            return (len(minutes) - 1) * width
        if not minutes or minutes[-1] < minute:
            minutes.append(minute)
            self.values.extend([0] * width)
            return len(self.values) - width
        i = bisect_left(minutes, minute)  # a late minute
        if minutes[i] != minute:
            minutes.insert(i, minute)
            self.values[i * width:i * width] = [0] * width
        return i * width

    def add(self, minute: int, counts: Sequence[int]) -> None:
        at = self._bucket(minute)
        nonzero = [(i, value) for i, value in enumerate(counts) if value]  # adding 0 changes nothing
        values = self.values
        for i, value in nonzero:
            values[at + i] += value
        sums = self.sums
        for label, start in self.starts.items():
            if minute > start:
                acc = sums[label]
                for i, value in nonzero:
                    acc[i] += value

    def add_many(self, minutes: Sequence[int], counts: Sequence[Sequence[int]]) -> None:
        """:meth:`add` for each of several ascending minutes and its counts, each window's sums updated once (from
        the counts' sums over the minutes after the window's start, summed from the last minute back)."""
        values, bucket = self.values, self._bucket
        for minute, vector in zip(minutes, counts):
            at = bucket(minute)
            for i, value in enumerate(vector):
                values[at + i] += value
        after = [list(accumulate(column[::-1]))[::-1] for column in zip(*counts)]  # per count: sums from a minute on
        for label, start in self.starts.items():
            first = bisect_right(minutes, start)
            if first < len(minutes):
                acc = self.sums[label]
                for i, sums in enumerate(after):
                    acc[i] += sums[first]

    def advance(self, label: str, start: int) -> None:
        """Move a window's lower bound forward, subtracting the buckets it leaves behind."""
        old = self.starts[label]
        if start <= old:
            return
        first, last = bisect_right(self.minutes, old), bisect_right(self.minutes, start)
        if first < last:
            acc, values, width = self.sums[label], self.values, self.width
            for i in range(width):
                acc[i] -= sum(values[first * width + i:last * width:width])
        self.starts[label] = start

    def prune(self, oldest: int) -> None:
        """Drop the buckets at or before minute ``oldest``."""
        cut = bisect_right(self.minutes, oldest)
        if cut:
            del self.minutes[:cut]
            del self.values[:cut * self.width]


class RollingCounts:
    """Count vectors of ``width`` numbers per key, in minute buckets, summed per rolling window."""

    def __init__(self, windows_ms: dict[str, int], width: int):
        self.windows_ms = windows_ms
        self.width = width
        self.largest_ms = max(windows_ms.values())
        self._series: dict[Hashable, _Series] = {}
        self.clock_ms = -(2**62)  # the latest clock the windows were moved to: totals are right from it on
        self._pruned = -(2**62)  # buckets up to this minute are gone (prune)
        self._starts = dict.fromkeys(windows_ms, -(2**62))  # each window's lower bound, as last advanced to
        self.version = 0  # moves whenever a total may have changed
        self._lagging: list[_Series] = []  # series whose windows may start before ``_starts`` (new ones)

    def __len__(self) -> int:
        return len(self._series)

    def add(self, key: Hashable, event_ms: int, counts: Sequence[int]) -> None:
        self.add_bucket(key, event_ms // BUCKET_MS, counts)

    def add_bucket(self, key: Hashable, minute: int, counts: Sequence[int]) -> None:
        if minute <= self._pruned:
            return  # outside every window already (prune would drop it next)
        self._changed(key).add(minute, counts)

    def add_buckets(self, key: Hashable, minutes: Sequence[int], counts: Sequence[Sequence[int]]) -> None:
        """:meth:`add_bucket` for each of several ascending minutes with its counts, at once."""
        first = bisect_right(minutes, self._pruned)
        if first == len(minutes):
            return
        if first:
            minutes, counts = minutes[first:], counts[first:]
        self._changed(key).add_many(minutes, counts)

    def _changed(self, key: Hashable) -> _Series:
        """The key's series, about to change (made if new: its windows start before ours until advanced)."""
        self.version += 1
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.windows_ms, self.width)
            self._lagging.append(series)
        return series

    def advance(self, clock_ms: int) -> None:
        """Move the windows to this clock (never back)."""
        self.clock_ms = max(self.clock_ms, clock_ms)
        starts = self._starts
        for label, window in self.windows_ms.items():
            start = (clock_ms - window) // BUCKET_MS
            if start > starts[label]:
                starts[label] = start
                self.version += 1
                for series in self._series.values():
                    series.advance(label, start)
            else:  # the others are at this window's bound, or past this start
                for series in self._lagging:
                    series.advance(label, start)
        self._lagging = [series for series in self._lagging
                         if any(series.starts[label] < start for label, start in starts.items())]

    def totals(self, clock_ms: int) -> dict[tuple[Hashable, str], list[int]]:
        """(key, window label) -> summed counts at this clock (copies)."""
        self.advance(clock_ms)
        return self.current_totals()

    def current_totals(self) -> dict[tuple[Hashable, str], list[int]]:
        """(key, window label) -> summed counts at the clock last advanced to (copies)."""
        return {(key, label): list(acc) for key, series in self._series.items() for label, acc in series.sums.items()}

    def prune(self, clock_ms: int) -> None:
        """Drop buckets older than the largest window, and keys left with none: nothing when the window has
        not left a minute since the last prune, else each key's expired minutes off the front."""
        self.advance(clock_ms)
        oldest = (clock_ms - self.largest_ms) // BUCKET_MS
        if oldest <= self._pruned:
            return
        for key in list(self._series):
            series = self._series[key]
            series.prune(oldest)
            if not series.minutes:
                del self._series[key]
                self.version += 1
        self._pruned = oldest


class SummedTotals:
    """Several partitions' :class:`RollingCounts` totals summed per (key, window label), kept up to date between
    reads instead of summed afresh (issue 17: a scrape): a partition's totals are read again only when its
    ``version`` moved, and only their changes are added to the sums. A key is in ``sums`` while some
    partition has it, with zeros as the partitions have them; a sum changed is a new list (a reader may hold the
    old one). The partitions are held, so their ids stay theirs."""

    def __init__(self):
        self.sums: dict[tuple, list[int]] = {}
        self._holders: dict[tuple, int] = {}  # key -> partitions that have it
        self._read: dict[int, tuple[RollingCounts, int, dict]] = {}  # id(state) -> (state, version, totals read)
        self._order: list[tuple] | None = []  # sums' keys sorted (None: keys came or went since)

    def update(self, states: Sequence[RollingCounts], clocks: Sequence[int]) -> None:
        """The sums over ``states`` (each moved to its clock), whatever partitions the last update summed."""
        read = self._read
        owned = set()
        for state, clock_ms in zip(states, clocks):
            state.advance(clock_ms)
            owned.add(id(state))
            before = read.get(id(state))
            if before is None or before[1] != state.version:
                totals = state.current_totals()
                self._replace(before[2] if before is not None else {}, totals)
                read[id(state)] = (state, state.version, totals)
        for gone in [key for key in read if key not in owned]:  # revoked partitions
            self._replace(read.pop(gone)[2], {})

    def order(self) -> list[tuple]:
        """The keys of ``sums``, sorted."""
        if self._order is None:
            self._order = sorted(self.sums)
        return self._order

    def _replace(self, old: dict[tuple, list[int]], new: dict[tuple, list[int]]) -> None:
        """Take one partition's totals ``old`` out of the sums and put ``new`` in, key by key where they differ."""
        sums, holders = self.sums, self._holders
        for key, counts in new.items():
            before = old.get(key)
            if before is None:
                held = sums.get(key)
                if held is None:
                    sums[key], holders[key] = list(counts), 1
                    self._order = None
                else:
                    sums[key], holders[key] = list(map(add, held, counts)), holders[key] + 1
            elif before != counts:
                sums[key] = [total + now - was for total, now, was in zip(sums[key], counts, before)]
        for key, before in old.items():
            if key not in new:
                if holders[key] == 1:
                    del sums[key], holders[key]
                    self._order = None
                else:
                    sums[key], holders[key] = list(map(sub, sums[key], before)), holders[key] - 1
