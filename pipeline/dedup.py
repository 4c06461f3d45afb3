"""Drop events whose event_id was already seen within the dedup horizon (event time). Pure, in memory.

Ids are kept as stable 64-bit hashes (:func:`id_hash`, xxh3): the worker writes the hash with each
event to ClickHouse (``events.id_hash``), so rebuilding a partition's ids reads numbers, not strings.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

from xxhash import xxh3_64_intdigest

BUCKET_MS = 3_600_000


def id_hash(event_id: str) -> int:
    """Stable across processes and machines (unlike ``hash``), so ClickHouse can store it."""
    return xxh3_64_intdigest(event_id.encode())


class Deduper:
    """Remembers id hashes in hourly buckets of event time and forgets whole buckets past the horizon.

    Expiry is by bucket so it costs nothing per event; an id may be kept up to one bucket longer than
    the horizon, never shorter. Two distinct ids colliding within one horizon is a ~1e-8 event at
    millions of ids.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self._ids: set[int] = set()
        self._buckets: deque[tuple[int, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def check(self, hashes: Sequence[int], times_ms: Sequence[int]) -> list[bool]:
        """For each id: True if new (it is remembered from now on), False if a duplicate. A repeat
        within the same call is a duplicate of its first occurrence."""
        ids, new = self._ids, []
        for key, event_ms in zip(hashes, times_ms):
            if key in ids:
                new.append(False)
                continue
            ids.add(key)
            self._remember(key, event_ms)
            new.append(True)
        return new

    def restore(self, hashes: Sequence[int], times_ms: Sequence[int]) -> None:
        """Remember ids read back from ClickHouse."""
        self.check(hashes, times_ms)

    def _remember(self, key: int, event_ms: int) -> None:
        bucket = event_ms // BUCKET_MS
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1].append(key)
        else:
            # A late event opens a bucket out of order; expiring from the front stays conservative.
            self._buckets.append((bucket, [key]))

    def expire(self, clock_ms: int) -> None:
        """Forget ids from buckets that end before clock - horizon."""
        oldest_kept = (clock_ms - self.horizon_ms) // BUCKET_MS
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, keys = self._buckets.popleft()
            self._ids.difference_update(keys)
