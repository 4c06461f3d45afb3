"""Drop events whose event_id was already seen within the dedup horizon (event time). Pure, in memory."""
from __future__ import annotations

from collections import deque

BUCKET_MS = 3_600_000


class Deduper:
    """Remembers event ids in hourly buckets of event time and forgets whole buckets past the horizon.

    Expiry is by bucket so it costs nothing per event; an id may be kept up to one bucket longer than
    the horizon, never shorter. Only the 64-bit hash of an id is kept (a few dozen bytes per event
    instead of the string); two distinct ids colliding within one horizon is a ~1e-8 event at
    millions of ids.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self._ids: set[int] = set()
        self._buckets: deque[tuple[int, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, event_id: str, event_ms: int) -> bool:
        """True if event_id is a duplicate; otherwise remember it and return False."""
        key = hash(event_id)
        if key in self._ids:
            return True
        self._ids.add(key)
        bucket = event_ms // BUCKET_MS
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1].append(key)
        else:
            # A late event opens a bucket out of order; expiring from the front stays conservative.
            self._buckets.append((bucket, [key]))
        return False

    def expire(self, clock_ms: int) -> None:
        """Forget ids from buckets that end before clock - horizon."""
        oldest_kept = (clock_ms - self.horizon_ms) // BUCKET_MS
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, keys = self._buckets.popleft()
            self._ids.difference_update(keys)
