"""The last minute each customer was seen, in a few numpy arrays: 14 bytes per customer.

A customer is "active in window W" when they had an event with ``t // 60000 > (clock - W) // 60000``
(the rounding of :mod:`pipeline.metrics.windows`). That holds exactly when their *latest* minute does,
so one number per customer answers every window, and a replayed or late event changes nothing (it
cannot raise the maximum twice). Customers are keyed by a 64-bit hash of (tenant, customer id).

A batch's customers are merged into the sorted arrays at once (``note_customers``); single updates
(``note``) go to a small dict merged in bulk (``merge``): inserting into a sorted numpy array one key at a
time would copy the array each time.

Given windows, it also keeps the number of customers per tenant and last minute in
:class:`~pipeline.metrics.windows.RollingCounts` (a customer moves from their old minute to the new one
in each merge), so the customers active in a window are read from running sums, never from the arrays.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Mapping, Optional, Sequence

import numpy as np

from pipeline.dedup import id_hash
from pipeline.metrics.windows import RollingCounts

if TYPE_CHECKING:
    from pipeline.metrics.base import Customers

MINUTE_MS = 60_000


def customer_key(tenant: str, customer_id: str) -> int:
    return id_hash(f"{tenant}\x1f{customer_id}")


def insert_sorted(arrays: Sequence[np.ndarray], at: np.ndarray, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``np.insert(array, at, new)`` for each array and its new values, with ``at`` sorted: the positions of
    the merged arrays are worked out once for all of them (np.insert sorts and checks them per call, which
    cost more than the copies at a batch's few hundred keys)."""
    if not len(at):
        return list(arrays)
    size = len(arrays[0]) + len(at)
    placed = at + np.arange(len(at))
    kept = np.ones(size, bool)
    kept[placed] = False
    merged = []
    for array, new in zip(arrays, values):
        out = np.empty(size, array.dtype)
        out[placed] = new
        out[kept] = array
        merged.append(out)
    return merged


class LastSeen:
    __slots__ = ("keys", "minutes", "tenants", "tenant_names", "_tenant_index", "_pending", "_recent", "windows")

    def __init__(self, windows_ms: Optional[Mapping[Hashable, int]] = None) -> None:
        # tenant -> customers by last minute, summed per window (None: no windows kept)
        self.windows = RollingCounts(dict(windows_ms), 1) if windows_ms else None
        self.keys = np.empty(0, np.uint64)  # sorted
        self.minutes = np.empty(0, np.int32)  # epoch minutes: int32 lasts until the year 6053
        self.tenants = np.empty(0, np.uint16)  # index into tenant_names
        self.tenant_names: list[str] = []
        self._tenant_index: dict[str, int] = {}
        self._pending: dict[int, tuple[int, int]] = {}  # key -> (minute, tenant index), not merged yet
        # (tenant, customer id) -> (key, tenant index) of the pending customers: a customer seen again before
        # the merge is not hashed again (cleared with _pending, so it never outgrows it)
        self._recent: dict[tuple[str, str], tuple[int, int]] = {}

    def __len__(self) -> int:
        self.merge()
        return len(self.keys)

    def note(self, tenant: str, customer_id: str, event_ms: int) -> None:
        known = self._recent.get((tenant, customer_id))
        if known is None:
            index = self._tenant_index.get(tenant)
            if index is None:
                index = self._tenant_index[tenant] = len(self.tenant_names)
                self.tenant_names.append(tenant)
            known = self._recent[(tenant, customer_id)] = (customer_key(tenant, customer_id), index)
        key, index = known
        minute = event_ms // MINUTE_MS
        seen = self._pending.get(key)
        if seen is None or seen[0] < minute:
            self._pending[key] = (minute, index)

    def note_customers(self, customers: "Customers") -> None:
        """Every customer of a batch at their latest minute, merged at once (the batch has their keys hashed)."""
        if not len(customers):
            return
        self.merge()
        index = self._tenant_index
        names, codes = customers.tenants()
        for tenant in names:  # new tenants in order of appearance
            if tenant not in index:
                index[tenant] = len(self.tenant_names)
                self.tenant_names.append(tenant)
        order, keys, distinct = customers.sorted_hashes()
        if not distinct:  # two customers share a 64-bit key: event by event, as note() keeps the first at a minute
            for event in customers.events:
                customer_id = event.get("customer_id")
                if customer_id is not None:
                    self.note(event["tenant"], customer_id, event["event_time"])
            self.merge()
            return
        tenants = np.array([index[tenant] for tenant in names], np.int64)[codes]
        self._merge_sorted(keys, customers.last_minutes()[order], tenants[order])

    def merge(self) -> None:
        if not self._pending:
            return
        keys = np.fromiter(self._pending, np.uint64, len(self._pending))
        values = np.array(list(self._pending.values()), np.int64).reshape(-1, 2)
        self._pending, self._recent = {}, {}
        order = np.argsort(keys)
        self._merge_sorted(keys[order], values[order, 0], values[order, 1])

    def _merge_sorted(self, keys: np.ndarray, minutes: np.ndarray, tenants: np.ndarray) -> None:
        """Merge distinct, sorted keys with their last minutes and tenant indices into the arrays."""
        minutes, tenants = minutes.astype(np.int32), tenants.astype(np.uint16)
        at = np.searchsorted(self.keys, keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == keys[known]
        hit = at[known]
        if self.windows is not None:
            self._move(tenants, minutes, known, self.minutes[hit])
        self.minutes[hit] = np.maximum(self.minutes[hit], minutes[known])
        new = ~known
        self.keys, self.minutes, self.tenants = insert_sorted(
            (self.keys, self.minutes, self.tenants), at[new], (keys[new], minutes[new], tenants[new]))

    def _move(self, tenants: np.ndarray, minutes: np.ndarray, known: np.ndarray, was: np.ndarray) -> None:
        """Count the merged customers in their new last minute, and the known ones that moved on no longer
        in the minute they leave: the net change per (tenant, minute), added per tenant at once."""
        later = minutes[known] > was
        moved = tenants[known][later].astype(np.int64)
        codes = np.concatenate((tenants[~known].astype(np.int64) << 32 | minutes[~known].astype(np.int64),
                                moved << 32 | minutes[known][later].astype(np.int64),
                                moved << 32 | was[later].astype(np.int64)))
        if not len(codes):
            return
        signs = np.ones(len(codes), np.int64)
        signs[len(codes) - len(moved):] = -1
        order = codes.argsort()
        codes, signs = codes[order], signs[order]
        starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
        net = np.add.reduceat(signs, starts)
        changed = net != 0
        codes, net = codes[starts][changed], net[changed]
        if not len(codes):
            return
        tenant_codes = codes >> 32
        bounds = [0, *(np.flatnonzero(tenant_codes[1:] != tenant_codes[:-1]) + 1).tolist(), len(codes)]
        minutes_of, counts = (codes & 0xFFFFFFFF).tolist(), [(n,) for n in net.tolist()]
        for start, end in zip(bounds, bounds[1:]):  # one run of ascending minutes per tenant
            self.windows.add_buckets(self.tenant_names[int(tenant_codes[start])], minutes_of[start:end],
                                     counts[start:end])

    def expire(self, oldest_minute: int) -> None:
        """Forget customers last seen at or before ``oldest_minute``."""
        self.merge()
        keep = self.minutes > oldest_minute
        if not keep.all():
            self.keys, self.minutes, self.tenants = self.keys[keep], self.minutes[keep], self.tenants[keep]

    def count_since(self, start_minute: int) -> dict[str, int]:
        """tenant -> customers whose last minute is after ``start_minute``, from the arrays."""
        self.merge()
        counts = np.bincount(self.tenants[self.minutes > start_minute], minlength=len(self.tenant_names))
        return {tenant: int(n) for tenant, n in zip(self.tenant_names, counts)}

    def nbytes(self) -> int:
        self.merge()
        return self.keys.nbytes + self.minutes.nbytes + self.tenants.nbytes
