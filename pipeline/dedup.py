"""Drop events whose event_id was already seen within the dedup horizon (event time). Pure, in memory.

Ids are kept as stable 64-bit hashes (:func:`id_hash`, xxh3): the worker writes the hash with each
event to ClickHouse (``events.id_hash``), so rebuilding a partition's ids reads numbers, not strings.

Memory: a two-choice hash table of 8-slot blocks in two numpy arrays, a uint64 hash and a uint16 hour
tag per slot (10 bytes). An id lives in the emptier of its two blocks, so a lookup reads two cache
lines and never chains; the rare id whose blocks are both full goes to a small dict (the stash). The
table is rebuilt 72 % full and kept 65-85 % full: 12-16 bytes per remembered id, where a Python set
of ints costs ~80. A rebuild (restore, growth past 85 %, shrink below 65 %) sorts every id once and
briefly needs ~60 bytes per id; growth rebuilds come every ~18 % of growth, so not in a steady state.

Collisions: two distinct ids with the same 64-bit hash inside one horizon make the second a false
duplicate; with n ids in the horizon that happens with probability ~n²/2**65 (3e-8 at a million ids,
3e-6 at ten million). Hash 0 marks an empty slot, so it is stored as 1 (one more such pair).
"""
from __future__ import annotations

import math
import sys
from typing import Sequence, Union

import numpy as np
from xxhash import xxh3_64_intdigest

BUCKET_MS = 3_600_000
BLOCK = 8  # slots per block: 64 bytes of hashes, one cache line
BUILD_LOAD = 0.72  # remembered ids per slot right after a rebuild
MAX_LOAD = 0.85  # grow past this (above it, both blocks are full too often)
MIN_LOAD = 0.65  # shrink below this, when expiry has emptied slots (10 bytes / 0.65 < 16)
FIRST_PASS = 6  # a bulk build fills each first block to this, then second blocks, then first again
BUILD_CHUNK = 1 << 20  # ids laid out per step of a bulk build's first pass
SCALAR_CALL = 48  # shorter calls probe id by id in Python (~3 µs an id); a numpy call costs ~150 µs whatever its size
MAX_TAG = 65535  # hour tags are uint16 offsets from a base hour
MAX_SPAN = MAX_TAG // 2  # hours kept behind the newest id; as many stay free ahead of it before a rebase
NEVER = -(1 << 62)  # the expiry bound before the first expire()
_LOW32 = np.uint64(0xFFFFFFFF)
_OFFSETS = np.arange(BLOCK)


def id_hash(event_id: str) -> int:
    """Stable across processes and machines (unlike ``hash``), so ClickHouse can store it."""
    return xxh3_64_intdigest(event_id.encode())


EventIdKey = Union[int, str]


def id_key(event_id: str) -> EventIdKey:
    """The event id in the form a core keeps when it only compares ids: a canonical (lowercase) UUID as its
    128-bit int (48 bytes, not an 88-byte string), any other id as itself. Exact both ways (:func:`id_text`), so
    equal ids have equal keys, and :func:`id_before` orders keys as their ids."""
    if len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-":
        digits = event_id.replace("-", "")
        try:
            value = int(digits, 16)
        except ValueError:
            return event_id
        if len(digits) == 32 and f"{value:032x}" == digits:  # not "0x…", "+…", "_", spaces or capitals
            return value
    return event_id


def id_text(key: EventIdKey) -> str:
    """The event id an :func:`id_key` was made from."""
    if type(key) is str:
        return key
    h = f"{key:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_before(a: EventIdKey, b: EventIdKey) -> bool:
    """Whether the id of key ``a`` sorts before that of ``b`` (as strings; UUID keys compare as their ints)."""
    return a < b if type(a) is type(b) else id_text(a) < id_text(b)


class Deduper:
    """Remembers id hashes with the hour bucket of their event time and forgets whole hours past the horizon.

    An id is remembered for at least ``horizon_ms`` of event time and at most one bucket longer: after
    ``expire(clock)`` it is remembered iff its hour is >= (clock - horizon) // BUCKET_MS. Expiry only
    clears expired slots (one pass over the table per hour). An event already older than the bound is reported
    new and not remembered (it lies outside the horizon). Ids more than MAX_SPAN hours (3.7 years) older
    than the newest one are forgotten too.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self._oldest_hour = NEVER
        self._build(np.empty(0, np.uint64), np.empty(0, np.int64))

    def __len__(self) -> int:
        return self._live

    def nbytes(self) -> int:
        """Bytes held: the arrays, and the stash with its int objects."""
        stash = sys.getsizeof(self._stash) + 2 * 32 * len(self._stash)
        return self._keys.nbytes + self._tags.nbytes + stash

    # -- public API ------------------------------------------------------------------------
    def check(self, hashes: Sequence[int], times_ms: Sequence[int]) -> list[bool]:
        """For each id: True if new (it is remembered from now on), False if a duplicate. A repeat
        within the same call is a duplicate of its first occurrence. Accepts lists or numpy arrays."""
        if len(hashes) < SCALAR_CALL:
            return self._check_each(hashes, times_ms)
        keys = np.maximum(np.asarray(hashes, dtype=np.uint64), 1)
        hours = np.asarray(times_ms, dtype=np.int64) // BUCKET_MS
        ordered = np.sort(keys)
        first = None
        if (ordered[1:] == ordered[:-1]).any():
            keys, first = np.unique(keys, return_index=True)
            hours = hours[first]
        slots = self._windows(keys)
        stored = np.take(self._keys, slots)
        free = stored == 0
        empties = _empties(free)
        absent = ~(stored == keys[:, None]).any(axis=1)
        if self._stash:
            rows = np.flatnonzero(absent & (empties.max(axis=1) == 0))  # only such ids can be stashed
            absent[rows] = [key not in self._stash for key in keys[rows].tolist()]
        remember = absent & (hours >= self._oldest_hour)
        self._insert(keys[remember], hours[remember], slots[remember], free[remember], empties[remember])
        if first is None:
            return absent.tolist()
        new = np.zeros(len(hashes), dtype=bool)
        new[first[absent]] = True
        return new.tolist()

    def seen(self, hashes: Sequence[int]) -> list[bool]:
        """For each id: True if it is remembered. Reads only, so a caller can decide many calls of
        :meth:`check` in advance (:meth:`pipeline.processor.Processor.process` does, per run of records)."""
        if len(hashes) < SCALAR_CALL:
            keys, stash, nblocks = memoryview(self._keys), self._stash, self._nblocks
            found = []
            for key in hashes:
                key = int(key) or 1
                first = ((key >> 32) * nblocks >> 32) * BLOCK
                second = ((key & 0xFFFFFFFF) * nblocks >> 32) * BLOCK
                found.append(key in keys[first:first + BLOCK].tolist() or key in keys[second:second + BLOCK].tolist()
                             or key in stash)
            return found
        keys = np.maximum(np.asarray(hashes, dtype=np.uint64), 1)
        present = (np.take(self._keys, self._windows(keys)) == keys[:, None]).any(axis=1)
        if self._stash:
            present |= np.fromiter((key in self._stash for key in keys.tolist()), bool, len(keys))
        return present.tolist()

    def keeps(self, time_ms: int) -> bool:
        """Whether :meth:`check` remembers a new id of this time (older ones lie outside the horizon)."""
        return time_ms // BUCKET_MS >= self._oldest_hour

    def restore(self, hashes: Sequence[int], times_ms: Sequence[int]) -> None:
        """Remember ids read back from ClickHouse (lists or numpy arrays); an id given twice keeps its
        latest hour. One sort and a few linear passes."""
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
        self._keys[self._tags < oldest - self._base] = 0
        if self._stash:  # stashed ids move to blocks that have room now, so both blocks stay full
            stashed, self._stash = self._stash, {}
            keys = np.fromiter(stashed, np.uint64, len(stashed))
            hours = np.fromiter(stashed.values(), np.int64, len(stashed))
            keys, hours = keys[hours >= oldest], hours[hours >= oldest]
            slots = self._windows(keys)
            free = np.take(self._keys, slots) == 0
            self._place(keys, hours, slots, free, _empties(free))
        self._live = int(np.count_nonzero(self._keys)) + len(self._stash)
        if self._live < MIN_LOAD * len(self._keys):
            self._rebuild()

    # -- table layout ------------------------------------------------------------------------
    def _build(self, keys: np.ndarray, hours: np.ndarray) -> None:
        """Lay out a fresh table from the ids sorted by key (so by first block): up to FIRST_PASS per
        first block, the rest in their second block, what is left in its first block again, then the stash."""
        if len(keys):  # tags must reach the newest hour and beyond: ids older than MAX_SPAN before it go
            self._oldest_hour = max(self._oldest_hour, int(hours.max()) - MAX_SPAN)
            kept = hours >= self._oldest_hour
            if not kept.all():
                keys, hours = keys[kept], hours[kept]
            keys, hours = _latest_per_key(keys, hours)
        self._base = self._oldest_hour
        self._nblocks = max(1, math.ceil(len(keys) / (BUILD_LOAD * BLOCK)))
        self._keys = np.zeros(self._nblocks * BLOCK, dtype=np.uint64)
        self._tags = np.zeros(self._nblocks * BLOCK, dtype=np.uint16)
        filled = np.zeros(self._nblocks, dtype=np.int64)
        waiting = [self._fill(keys, hours, np.arange(start, min(start + BUILD_CHUNK, len(keys))), 0, FIRST_PASS, filled)
                   for start in range(0, len(keys), BUILD_CHUNK)]  # in chunks, to bound the temporaries
        waiting = np.concatenate(waiting) if waiting else np.empty(0, np.int64)
        waiting = waiting[np.argsort(_blocks(keys[waiting], self._nblocks)[:, 1], kind="stable")]
        waiting = self._fill(keys, hours, np.sort(self._fill(keys, hours, waiting, 1, BLOCK, filled)), 0, BLOCK, filled)
        self._stash = dict(zip(keys[waiting].tolist(), hours[waiting].tolist()))
        self._live = len(keys)

    def _fill(self, keys: np.ndarray, hours: np.ndarray, waiting: np.ndarray, column: int, limit: int,
              filled: np.ndarray) -> np.ndarray:
        """Put the waiting ids, in order of their block (first or second), into that block while it has
        fewer than limit ids; count them in filled and return the ids left waiting."""
        block = _blocks(keys[waiting], self._nblocks)[:, column]
        slot_in_block = filled[block] + _rank_in_runs(block)
        fits = slot_in_block < limit
        placed = waiting[fits]
        slots = block[fits] * BLOCK + slot_in_block[fits]
        self._keys[slots], self._tags[slots] = keys[placed], hours[placed] - self._base
        filled += np.bincount(block[fits], minlength=self._nblocks)
        return waiting[~fits]

    def _rebuild(self, keys: np.ndarray | None = None, hours: np.ndarray | None = None) -> None:
        """Rebuild from the remembered ids plus the given ones, sized for them."""
        live = self._keys != 0
        parts = [(self._keys[live], self._tags[live].astype(np.int64) + self._base),
                 (np.fromiter(self._stash, np.uint64, len(self._stash)),
                  np.fromiter(self._stash.values(), np.int64, len(self._stash)))]
        if keys is not None:
            parts.append((keys, hours))
        parts = [part for part in parts if len(part[0])] or parts[:1]
        if len(parts) == 1:  # no copy, as for a restore into an empty table
            self._build(*parts[0])
        else:
            self._build(np.concatenate([k for k, _ in parts]), np.concatenate([h for _, h in parts]))

    # -- vectorised probing (calls of SCALAR_CALL ids or more) ---------------------------------
    def _windows(self, keys: np.ndarray) -> np.ndarray:
        """Slot numbers of each key's two blocks, first block then second, as rows of 2 * BLOCK."""
        return ((_blocks(keys, self._nblocks) * BLOCK)[:, :, None] + _OFFSETS).reshape(len(keys), 2 * BLOCK)

    def _insert(self, keys: np.ndarray, hours: np.ndarray, slots: np.ndarray, free: np.ndarray,
                empties: np.ndarray) -> None:
        """Remember absent keys of a remembered hour, given their windows, which slots there are free and
        how many per block; grow or rebase the table when they do not fit."""
        if not len(keys):
            return
        if int(hours.max()) - self._base > MAX_TAG:
            return self._rebuild(keys, hours)
        self._place(keys, hours, slots, free, empties)
        if self._live > MAX_LOAD * len(self._keys):
            self._rebuild()

    def _place(self, keys: np.ndarray, hours: np.ndarray, slots: np.ndarray, free: np.ndarray,
               empties: np.ndarray) -> None:
        """Put each key in the first empty slot of its emptier block; both blocks full: the stash. Keys of
        one call that pick the same slot all write it; the one that reads back won, the others pick again."""
        tags = (hours - self._base).astype(np.uint16)
        while len(keys):
            block = empties.argmax(axis=1)  # the emptier; the first on a tie
            room = empties[np.arange(len(keys)), block] > 0
            if not room.all():
                self._stash.update(zip(keys[~room].tolist(), hours[~room].tolist()))
                self._live += int(np.count_nonzero(~room))
                keys, hours, tags, slots, free, block = keys[room], hours[room], tags[room], slots[room], free[room], block[room]
            rows = np.arange(len(keys))
            targets = slots.reshape(-1, 2, BLOCK)[rows, block, free.reshape(-1, 2, BLOCK)[rows, block].argmax(axis=1)]
            self._keys[targets] = keys
            won = np.take(self._keys, targets) == keys
            self._tags[targets[won]] = tags[won]
            self._live += int(np.count_nonzero(won))
            if won.all():
                return
            lost = ~won
            keys, hours, tags, slots = keys[lost], hours[lost], tags[lost], slots[lost]
            free = np.take(self._keys, slots) == 0
            empties = _empties(free)

    # -- id-by-id probing (short calls) -------------------------------------------------------------
    def _check_each(self, hashes: Sequence[int], times_ms: Sequence[int]) -> list[bool]:
        """The same table walked in plain Python: a memoryview slice costs ~0.2 µs, a numpy call several."""
        new: list[bool] = []
        this_call: set[int] = set()
        keys, tags, stash, nblocks = memoryview(self._keys), memoryview(self._tags), self._stash, self._nblocks
        for key, event_ms in zip(hashes, times_ms):
            key = int(key) or 1
            first = ((key >> 32) * nblocks >> 32) * BLOCK
            second = ((key & 0xFFFFFFFF) * nblocks >> 32) * BLOCK
            in_first, in_second = keys[first:first + BLOCK].tolist(), keys[second:second + BLOCK].tolist()
            is_new = not (key in this_call or key in in_first or key in in_second or key in stash)
            new.append(is_new)
            this_call.add(key)
            hour = int(event_ms) // BUCKET_MS
            if not is_new or hour < self._oldest_hour:
                continue
            empty_first, empty_second = in_first.count(0), in_second.count(0)
            if hour - self._base > MAX_TAG or self._live + 1 > MAX_LOAD * len(keys):
                one = np.array([key], dtype=np.uint64)
                window = self._windows(one)
                free = self._keys[window] == 0
                self._insert(one, np.array([hour]), window, free, _empties(free))
                keys, tags, stash, nblocks = memoryview(self._keys), memoryview(self._tags), self._stash, self._nblocks
                continue
            if empty_first or empty_second:
                slot = first + in_first.index(0) if empty_first >= empty_second else second + in_second.index(0)
                keys[slot], tags[slot] = key, hour - self._base
            else:
                stash[key] = hour
            self._live += 1
        return new


def _blocks(keys: np.ndarray, nblocks: int) -> np.ndarray:
    """Each key's two blocks as rows (first, second), by multiply-shift of its top and of its bottom 32
    bits: uniform for any block count, and the first is monotone in the key, so keys sorted are sorted
    by first block."""
    halves = np.empty((len(keys), 2), dtype=np.uint64)
    np.right_shift(keys, np.uint64(32), out=halves[:, 0])
    np.bitwise_and(keys, _LOW32, out=halves[:, 1])
    halves *= np.uint64(nblocks)
    halves >>= np.uint64(32)
    return halves.view(np.int64)


def _empties(free: np.ndarray) -> np.ndarray:
    """Empty slots in each key's two blocks, from rows of 2 * BLOCK booleans: each block's 8 bytes read
    as one integer have one bit set per empty slot."""
    return np.bitwise_count(free.view(np.uint64))


def _rank_in_runs(values: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values."""
    index = np.arange(len(values))
    run_start = np.concatenate(([True], values[1:] != values[:-1])) if len(values) else np.empty(0, bool)
    return index - np.maximum.accumulate(np.where(run_start, index, 0))


def _latest_per_key(keys: np.ndarray, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys sorted, each once with its latest hour. A plain sort of (top 32 bits | position) integers and
    a stable sort of the then nearly sorted keys is ~4x faster than ``argsort`` of random uint64s.
    Positions take 32 bits: up to 4e9 ids."""
    if not len(keys):
        return keys, hours
    order = keys >> np.uint64(32)
    order <<= np.uint64(32)
    order |= np.arange(len(keys), dtype=np.uint64)
    order.sort()
    order &= _LOW32
    order = order.view(np.int64)
    order = order[np.argsort(keys[order], kind="stable")]
    keys, hours = keys[order], hours[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    if len(starts) == len(keys):
        return keys, hours
    return keys[starts], np.maximum.reduceat(hours, starts)
