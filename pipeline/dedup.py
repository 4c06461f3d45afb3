"""Drop events whose event_id was already seen within the dedup horizon (event time). Pure, in memory.

Ids are kept as stable 64-bit hashes (:func:`id_hash`, xxh3): the worker writes the hash with each
event to ClickHouse (``events.id_hash``), so rebuilding a partition's ids reads numbers, not strings.

Memory: one open-addressing hash table (linear probing) in two numpy arrays, a uint64 hash and a
uint16 hour tag per slot, 10 bytes a slot. The table is rebuilt to 75 % full and kept between 65 %
and 90 % full, so a remembered id costs 11-16 bytes (a Python set of ints costs ~80).

Collisions: two distinct ids with the same 64-bit hash inside one horizon make the second a false
duplicate; with n ids in the horizon that happens with probability ~n²/2**65 (3e-8 at a million ids,
3e-6 at ten million). Hash 0 marks an empty slot, so it is stored as 1 (one more such pair).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from xxhash import xxh3_64_intdigest

BUCKET_MS = 3_600_000
WINDOW = 8  # slots compared at once: one 64-byte cache line of hashes
BUILD_LOAD = 0.75  # remembered ids per slot right after a rebuild
MAX_USED = 0.9  # grow when remembered plus expired slots pass this share of the slots
MIN_LIVE = 0.65  # shrink when expiry leaves fewer remembered ids than this share
SPARE_SLOTS = 4 * WINDOW  # room after the last home slot for a cluster that runs off the end
SCALAR_CALL = 32  # shorter calls probe id by id in Python: numpy's fixed cost per call is ~50 µs
MAX_TAG = 65535  # hour tags are uint16 offsets from a base hour
NEVER = -(1 << 62)  # the expiry bound before the first expire()
_OFFSETS = np.arange(WINDOW)


def id_hash(event_id: str) -> int:
    """Stable across processes and machines (unlike ``hash``), so ClickHouse can store it."""
    return xxh3_64_intdigest(event_id.encode())


class Deduper:
    """Remembers id hashes with the hour bucket of their event time and forgets whole hours past the horizon.

    An id is remembered for at least ``horizon_ms`` of event time and at most one bucket longer: after
    ``expire(clock)`` it is remembered iff its hour is >= (clock - horizon) // BUCKET_MS. Expiry only
    moves that bound; expired slots are reused by inserts and dropped by the next rebuild. An event
    already older than the bound is reported new and not remembered (it lies outside the horizon).
    Ids more than 65535 hours (7.5 years) older than the newest one are forgotten too.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self._oldest_hour = NEVER
        self._build(np.empty(0, np.uint64), np.empty(0, np.int64))

    def __len__(self) -> int:
        return self._live

    def nbytes(self) -> int:
        """Bytes held by the table (the arrays; the object itself adds a few hundred)."""
        return self._keys.nbytes + self._tags.nbytes

    # -- public API ------------------------------------------------------------------------
    def check(self, hashes: Sequence[int], times_ms: Sequence[int]) -> list[bool]:
        """For each id: True if new (it is remembered from now on), False if a duplicate. A repeat
        within the same call is a duplicate of its first occurrence. Accepts lists or numpy arrays."""
        if len(hashes) < SCALAR_CALL:
            return self._check_each(hashes, times_ms)
        keys = np.maximum(np.asarray(hashes, dtype=np.uint64), 1)
        hours = np.asarray(times_ms, dtype=np.int64) // BUCKET_MS
        unique, first = np.unique(keys, return_index=True)
        absent = ~self._lookup(unique)
        first_new = first[absent]
        new = np.zeros(len(keys), dtype=bool)
        new[first_new] = True
        self._insert(unique[absent], hours[first_new])
        return new.tolist()

    def restore(self, hashes: Sequence[int], times_ms: Sequence[int]) -> None:
        """Remember ids read back from ClickHouse (lists or numpy arrays); an id given twice keeps its
        latest hour. One sort and one pass: O(n log n)."""
        keys = np.maximum(np.asarray(hashes, dtype=np.uint64), 1)
        self._rebuild(keys, np.asarray(times_ms, dtype=np.int64) // BUCKET_MS)

    def expire(self, clock_ms: int) -> None:
        """Forget ids whose hour bucket ends before clock - horizon."""
        oldest = (clock_ms - self.horizon_ms) // BUCKET_MS
        if oldest <= self._oldest_hour:
            return
        self._oldest_hour = oldest
        if oldest - self._base > MAX_TAG:  # every tag is older: nothing is left
            self._build(np.empty(0, np.uint64), np.empty(0, np.int64))
            return
        self._live = int(np.count_nonzero(self._live_slots()))
        if self._live < MIN_LIVE * self._capacity:
            self._rebuild()

    # -- table layout ------------------------------------------------------------------------
    def _build(self, keys: np.ndarray, hours: np.ndarray) -> None:
        """Lay out a fresh table: sorted by home slot, each id lands on its home or right after the
        previous id (linear probing without wrap-around), which a running maximum computes at once."""
        if len(keys):  # tags must reach the newest hour: older ids than 65535 hours before it go
            self._oldest_hour = max(self._oldest_hour, int(hours.max()) - MAX_TAG)
            kept = hours >= self._oldest_hour
            keys, hours = _latest_per_key(keys[kept], hours[kept])
        self._base = self._oldest_hour
        count = len(keys)
        self._nblocks = max(1, math.ceil(count / (BUILD_LOAD * WINDOW)))
        self._capacity = self._nblocks * WINDOW
        ranks = np.arange(count)
        slots = ranks + np.maximum.accumulate(_home(keys, self._nblocks) - ranks)
        end = max(self._capacity, int(slots[-1]) + 1 if count else 0)
        size = -(-end // WINDOW) * WINDOW + SPARE_SLOTS + WINDOW
        self._keys = np.zeros(size, dtype=np.uint64)
        self._tags = np.zeros(size, dtype=np.uint16)
        self._keys[slots] = keys
        self._tags[slots] = hours - self._base
        self._insert_limit = size - WINDOW  # the last window stays empty: every probe ends there
        self._used = self._live = count

    def _rebuild(self, keys: np.ndarray | None = None, hours: np.ndarray | None = None) -> None:
        """Rebuild from the remembered ids plus the given ones, sized for them."""
        live = self._live_slots()
        kept_keys, kept_hours = self._keys[live], self._tags[live].astype(np.int64) + self._base
        if keys is not None:
            kept_keys, kept_hours = np.concatenate([kept_keys, keys]), np.concatenate([kept_hours, hours])
        self._build(kept_keys, kept_hours)

    def _live_from(self) -> int:
        """The smallest tag still remembered."""
        return max(0, self._oldest_hour - self._base)

    def _live_slots(self) -> np.ndarray:
        return (self._keys != 0) & (self._tags >= self._live_from())

    # -- vectorised probing (calls of SCALAR_CALL ids or more) ---------------------------------
    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Which keys are remembered: scan windows from each home slot until the key or an empty slot."""
        found = np.zeros(len(keys), dtype=bool)
        pending, pos = np.arange(len(keys)), _home(keys, self._nblocks)
        live_from = self._live_from()
        while len(pending):
            slots = pos[:, None] + _OFFSETS
            window = self._keys[slots]
            rows, cols = np.nonzero(window == keys[pending, None])
            remembered = self._tags[slots[rows, cols]] >= live_from
            found[pending[rows[remembered]]] = True
            more = ~(window == 0).any(axis=1) & ~found[pending]
            pending, pos = pending[more], pos[more] + WINDOW
        return found

    def _insert(self, keys: np.ndarray, hours: np.ndarray) -> None:
        """Remember absent keys; grow or rebase the table when they do not fit."""
        inside = hours >= max(self._oldest_hour, self._base)
        keys, hours = keys[inside], hours[inside]
        if not len(keys):
            return
        if int(hours.max()) - self._base > MAX_TAG:
            return self._rebuild(keys, hours)
        unplaced = self._place(keys, (hours - self._base).astype(np.uint16))
        if len(unplaced) or self._used > MAX_USED * self._capacity:
            self._rebuild(keys[unplaced], hours[unplaced])

    def _place(self, keys: np.ndarray, tags: np.ndarray) -> np.ndarray:
        """Put each key in the first free (empty or expired) slot from its home; when several keys want
        the same slot the first wins and the others look again. Returns the keys that ran off the end."""
        pending, pos = np.arange(len(keys)), _home(keys, self._nblocks)
        live_from, unplaced = self._live_from(), []
        while len(pending):
            slots = pos[:, None] + _OFFSETS
            window = self._keys[slots]
            free = (window == 0) | (self._tags[slots] < live_from)
            has_free = free.any(axis=1)
            targets, first = np.unique((pos + free.argmax(axis=1))[has_free], return_index=True)
            winners = pending[has_free][first]
            self._used += int(np.count_nonzero(self._keys[targets] == 0))
            self._live += len(targets)
            self._keys[targets], self._tags[targets] = keys[winners], tags[winners]
            pos[~has_free] += WINDOW
            ran_off = pos >= self._insert_limit
            unplaced.append(pending[ran_off])
            waiting = ~ran_off
            waiting[np.flatnonzero(has_free)[first]] = False
            pending, pos = pending[waiting], pos[waiting]
        return np.concatenate(unplaced)

    # -- id-by-id probing (short calls) -------------------------------------------------------------
    def _check_each(self, hashes: Sequence[int], times_ms: Sequence[int]) -> list[bool]:
        """The same table walked in plain Python: a memoryview read costs ~40 ns, a numpy call ~1 µs."""
        new: list[bool] = []
        this_call: set[int] = set()
        keys, tags, nblocks, base, live_from, floor, limit, used_limit = self._scalar_state()
        for key, event_ms in zip(hashes, times_ms):
            key = int(key) or 1
            if key in this_call:
                new.append(False)
                continue
            this_call.add(key)
            slot, free = ((key >> 32) * nblocks >> 32) * WINDOW, -1
            while True:
                stored = keys[slot]
                if stored == 0:
                    break
                if stored == key and tags[slot] >= live_from:
                    break
                if free < 0 and tags[slot] < live_from:
                    free = slot
                slot += 1
            new.append(stored == 0)
            hour = int(event_ms) // BUCKET_MS
            if stored != 0 or hour < floor:
                continue
            target = slot if free < 0 else free
            if hour - base > MAX_TAG or target >= limit or self._used + (target == slot) > used_limit:
                self._insert(np.array([key], dtype=np.uint64), np.array([hour], dtype=np.int64))
                keys, tags, nblocks, base, live_from, floor, limit, used_limit = self._scalar_state()
                continue
            keys[target], tags[target] = key, hour - base
            self._live += 1
            self._used += target == slot
        return new

    def _scalar_state(self) -> tuple:
        return (memoryview(self._keys), memoryview(self._tags), self._nblocks, self._base, self._live_from(),
                max(self._oldest_hour, self._base), self._insert_limit, MAX_USED * self._capacity)


def _home(keys: np.ndarray, nblocks: int) -> np.ndarray:
    """First slot of each key's home block. Multiply-shift on the top 32 bits: uniform for any block
    count and monotone in the key, so sorting by key sorts by home."""
    return ((keys >> np.uint64(32)) * np.uint64(nblocks) >> np.uint64(32)).astype(np.int64) * WINDOW


def _latest_per_key(keys: np.ndarray, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys sorted, each once with its latest hour. A plain sort of (top 32 bits | position) integers and
    a stable sort of the then nearly sorted keys is ~4x faster than ``argsort`` of random uint64s."""
    if not len(keys):
        return keys, hours
    order = np.sort((keys >> np.uint64(32) << np.uint64(32)) | np.arange(len(keys), dtype=np.uint64))
    order = (order & np.uint64(0xFFFFFFFF)).astype(np.int64)
    order = order[np.argsort(keys[order], kind="stable")]
    keys, hours = keys[order], hours[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.maximum.reduceat(hours, starts)
