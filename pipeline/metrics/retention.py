"""Weekly cohort retention: of the customers whose first event fell in a week, the share active in each of the
eight weeks after it.

**Weeks** are ISO weeks, Monday 00:00 to Monday 00:00 UTC, by event time; week number ``w`` of a time is
``(ms // day + 3) // 7`` (1970-01-01 was a Thursday). A customer's **cohort** is the week of their first
event of any source (the first the pipeline stored, not a signup: a signup event is optional, only some web
visits carry one, while every source has a first event, and the customer's events alone decide it, as in
ClickHouse's ``retention()`` over ``events``). They are **active at age k** when they have an event in week
cohort + k (k = 0..8; age 0 always holds). A late event earlier than the first moves the customer to its
week's cohort, so the state never depends on arrival order, and a replayed event changes nothing.

Gauges, for ages 1..8, each partition at its own clock: the cohorts read at age k are the ``cohorts`` (4)
latest whose week +k has **ended** (cohorts W-k-4 .. W-k-1, W the clock's week), so a week still in progress
never drags the curve down. ``cx_retention_cohort_customers{tenant,age}`` counts their customers,
``cx_retention_customers{tenant,age}`` those active at age k, ``cx_retention_ratio`` divides them.

**State**, per partition: the customers of the cohorts a gauge or a late event can still reach (the last
``8 + cohorts`` weeks, and the current one) in sorted numpy arrays (20 bytes a customer: key, first event,
active weeks, tenant), new customers in a dict until the next merge, and per (tenant, cohort) the customers
active at each age. Older cohorts are dropped, their customers kept only as 64-bit keys (8 bytes): they
are not new when they come back, and their cohort, complete, is in the table. The ``retention`` table
holds one row per customer (its ``version`` grows with every change: an earlier first event, or another
active week), and the state is rebuilt from every row of the partition on assignment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from operator import concat
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field

from pipeline.config import Section
from pipeline.metrics.base import Batch, Customers, MetricCore, Output, Restore
from pipeline.metrics.lastseen import customer_key, insert_sorted
from pipeline.tables import ROWS

DAY_MS = 86_400_000
AGES = 8  # weeks after the cohort's week that are tracked
ALL_WEEKS = (1 << (AGES + 1)) - 1  # active_weeks has one bit per age 0..AGES
FIRST_MS_CEILING = 1 << 44  # ms: year 2527; keeps the row version positive
RetentionRow = ROWS["retention"]


def week_of(ms: int) -> int:
    """The ISO week (Monday to Monday, UTC) of an epoch millisecond, numbered from the one of 1970-01-01 (also
    elementwise, of a numpy array of them)."""
    return (ms // DAY_MS + 3) // 7


def week_start_ms(week: int) -> int:
    return (week * 7 - 3) * DAY_MS


def fold(first_ms: Optional[int], active: int, times: Iterable[int]) -> tuple[int, int]:
    """A customer's (first event ms, active-weeks bits) after more events, in any order."""
    first_week = None if first_ms is None else week_of(first_ms)
    for ms in times:
        week = week_of(ms)
        if first_ms is None:
            first_ms, first_week, active = ms, week, 1
        elif ms < first_ms:
            first_ms, first_week, active = ms, week, ((active << (first_week - week)) | 1) & ALL_WEEKS
        else:
            age = week - first_week
            if age <= AGES:
                active |= 1 << age
    assert first_ms is not None
    return first_ms, active


def row_version(first_ms: int, active: int) -> int:
    """Grows with every change of a row: an earlier first event (by at least 16, more than the active weeks
    it can shift out) or, with the same first event, one more active week."""
    return (FIRST_MS_CEILING - first_ms) * 16 + active.bit_count()


class RetentionSettings(Section):
    prefix = "retention_"
    cohorts: int = Field(4, ge=1, le=52, description="Weekly cohorts summed in each age of `cx_retention_*`: the "
                         "latest ones whose week +age has ended.")


@dataclass
class RetentionState:
    tenant_names: list[str] = field(default_factory=list)
    tenant_index: dict[str, int] = field(default_factory=dict)
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))  # sorted; tracked customers
    first_ms: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    active: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint16))
    tenants: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint16))
    fresh: dict[int, list[int]] = field(default_factory=dict)  # key -> [first ms, active, tenant]: not merged yet
    members: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))  # sorted; older cohorts' customers
    counts: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (tenant, cohort) -> active per age
    oldest_week: int = -(2**62)  # cohorts before it are dropped

    def tenant(self, name: str) -> int:
        index = self.tenant_index.get(name)
        if index is None:
            index = self.tenant_index[name] = len(self.tenant_names)
            self.tenant_names.append(name)
        return index

    def merge(self) -> None:
        """Move the fresh customers into the sorted arrays."""
        if not self.fresh:
            return
        keys = np.fromiter(self.fresh, np.uint64, len(self.fresh))
        values = np.array(list(self.fresh.values()), np.int64).reshape(-1, 3)
        self.fresh = {}
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        at = np.searchsorted(self.keys, keys)
        self.keys, self.first_ms, self.active, self.tenants = insert_sorted(
            (self.keys, self.first_ms, self.active, self.tenants), at,
            (keys, values[:, 0], values[:, 1].astype(np.uint16), values[:, 2].astype(np.uint16)))

    def count(self, tenant: int, first_ms: int, active: int, by: int) -> None:
        """Add ``by`` customers (negative: remove them) with this first event and these active weeks."""
        cohort = week_of(first_ms)
        if cohort < self.oldest_week:
            return
        counts = self.counts.get((tenant, cohort))
        if counts is None:
            counts = self.counts[(tenant, cohort)] = [0] * (AGES + 1)
        active &= ALL_WEEKS
        while active:  # each set bit (age), lowest first
            low = active & -active
            counts[low.bit_length() - 1] += by
            active ^= low
        if not counts[0]:
            del self.counts[(tenant, cohort)]

    def make_members(self, keys: Sequence[int]) -> None:
        """Keep these tracked customers as members only."""
        self.merge()
        self._untrack(np.isin(self.keys, np.array(keys, np.uint64)))

    def _untrack(self, old: np.ndarray) -> None:
        if old.any():
            self.members = np.union1d(self.members, self.keys[old])
            keep = ~old
            self.keys, self.first_ms = self.keys[keep], self.first_ms[keep]
            self.active, self.tenants = self.active[keep], self.tenants[keep]

    def drop_before(self, week: int) -> None:
        """Keep the customers of cohorts before ``week`` as members only, and forget those cohorts' counts."""
        if week <= self.oldest_week:
            return
        self.merge()
        self._untrack((self.first_ms // DAY_MS + 3) // 7 < week)
        self.counts = {key: counts for key, counts in self.counts.items() if key[1] >= week}
        self.oldest_week = week

    def nbytes(self) -> int:
        self.merge()
        return sum(array.nbytes for array in (self.keys, self.first_ms, self.active, self.tenants, self.members))


def _found(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` and whether each is there."""
    at = np.searchsorted(sorted_keys, keys)
    hit = at < len(sorted_keys)
    hit[hit] = sorted_keys[at[hit]] == keys[hit]
    return at, hit


@dataclass
class RetentionCore(MetricCore[RetentionState]):
    cohorts: int
    max_lateness_ms: int
    name = "retention"
    Settings = RetentionSettings
    tables = ("retention",)

    @classmethod
    def configure(cls, section: RetentionSettings, stream: Any) -> "RetentionCore":
        return cls(section.cohorts, stream.max_lateness.ms)

    def new_state(self, partition: int) -> RetentionState:
        return RetentionState()

    def oldest_week(self, clock_ms: int) -> int:
        """The oldest cohort a gauge (at age 8) or a late event (up to max lateness) can still reach."""
        return min(week_of(clock_ms) - AGES - self.cohorts, week_of(clock_ms - self.max_lateness_ms) - AGES)

    def add(self, state: RetentionState, batch: Batch, out: Output) -> None:
        customers = batch.customers()
        if not len(customers):
            return
        keys = customers.hashes()
        at, tracked = _found(state.keys, keys)
        _, member = _found(state.members, keys)
        firsts = customers.firsts()
        first_weeks, last_weeks = week_of(firsts), week_of(customers.lasts())  # for the batch at once
        rows, late, partition = out.rows["retention"], [], batch.partition
        # customers the state has never seen, all of whose events share one week: added for the batch at once
        # (unless two customers share a key, when the second must see the first)
        first_seen = ~(tracked | member) & (first_weeks == last_weeks) & customers.sorted_hashes()[2]
        if state.fresh:
            first_seen &= ~np.fromiter(map(state.fresh.__contains__, keys.tolist()), bool, len(keys))
        if first_seen.any():
            self._add_first_seen(state, customers, np.flatnonzero(first_seen), rows, late, partition)
        others = np.flatnonzero(~first_seen)
        at = at[others]
        if len(state.keys):  # every customer's values in three array reads, not one numpy scalar at a time
            at = np.minimum(at, len(state.keys) - 1)
            known = zip(state.first_ms[at].tolist(), state.active[at].tolist(), state.tenants[at].tolist())
        else:
            known = iter(lambda: (0, 0, 0), None)
        new_row, batch_keys, batch_times = tuple.__new__, customers.keys, customers.times
        for i, key, j, in_arrays, old, values, batch_first, week, last_week in zip(
                others.tolist(), keys[others].tolist(), at.tolist(), tracked[others].tolist(), member[others].tolist(),
                known,
                firsts[others].tolist(), first_weeks[others].tolist(), last_weeks[others].tolist()):
            fresh = state.fresh.get(key)
            if fresh is not None:
                first, active, index = fresh
            elif in_arrays:
                first, active, index = values
            elif old:
                continue  # a customer of a dropped cohort: their row is final
            else:
                first, active, index = None, 0, state.tenant(batch_keys[i][0])
            # fold() without a step per event when the batch's events share one week, not before the first
            if week != last_week or (first is not None and batch_first < first):
                new_first, new_active = fold(first, active, batch_times[i])
                cohort = week_of(new_first)
            elif first is None:
                new_first, new_active, cohort = batch_first, 1, week
            else:
                new_first, cohort = first, week_of(first)
                new_active = active | 1 << (week - cohort) if week - cohort <= AGES else active
            if new_first == first and new_active == active:
                continue
            if first is not None:
                state.count(index, first, active, -1)
            state.count(index, new_first, new_active, 1)
            if cohort < state.oldest_week:
                late.append(key)  # an event older than every tracked cohort: the customer joins a dropped one
            if fresh is not None:
                fresh[0], fresh[1] = new_first, new_active
            elif in_arrays:
                state.first_ms[j], state.active[j] = new_first, new_active
            else:
                state.fresh[key] = [new_first, new_active, index]
            # RetentionRow's fields in order, made without keyword parsing (a row for every customer that changed)
            rows.append(new_row(RetentionRow, (*batch_keys[i], week_start_ms(cohort) // 1000, new_first, new_active,
                                               row_version(new_first, new_active), partition)))
        if late:
            state.make_members(late)
        elif len(state.fresh) > max(4096, len(state.keys) // 8):
            state.merge()

    @staticmethod
    def _add_first_seen(state: RetentionState, customers: Customers, seen: np.ndarray, rows: list, late: list,
                        partition: int) -> None:
        """The batch's customers at ``seen``, new to the state, each with events in one week only: their first
        event is the batch's earliest, their cohort its week, active at age 0 only (what the loop of ``add``
        makes of each), counted per (tenant, cohort) and their rows made at once."""
        names, codes = customers.tenants()
        codes = codes[seen]
        for code in dict.fromkeys(codes.tolist()):  # tenants new to the state, in order of appearance
            state.tenant(names[code])
        tenants = np.array([state.tenant_index.get(name, 0) for name in names], np.int64)[codes]
        firsts = customers.firsts()[seen]
        cohorts = week_of(firsts)
        oldest = int(cohorts.min())  # a batch's weeks are few: (tenant, week) as one number
        groups, sizes = np.unique(tenants << 32 | (cohorts - oldest), return_counts=True)
        for group, size in zip(groups.tolist(), sizes.tolist()):
            state.count(group >> 32, week_start_ms(oldest + (group & 0xFFFFFFFF)), 1, size)
        keys = customers.hashes()[seen]
        late.extend(keys[cohorts < state.oldest_week].tolist())  # they join dropped cohorts
        first_list = firsts.tolist()
        state.fresh.update(zip(keys.tolist(), map(list, zip(first_list, repeat(1), tenants.tolist()))))
        # the rows' fields in order: (tenant, customer id) + the rest, each made without a Python step
        rest = zip((week_start_ms(cohorts) // 1000).tolist(), first_list, repeat(1), row_version(firsts, 1).tolist(),
                   repeat(partition))
        rows.extend(map(tuple.__new__, repeat(RetentionRow),
                        map(concat, map(customers.keys.__getitem__, seen.tolist()), rest)))

    def tick(self, state: RetentionState, clock_ms: int, out: Output) -> None:
        state.drop_before(self.oldest_week(clock_ms))

    def restores(self) -> Sequence[Restore]:
        return (Restore("customers", "retention", ("tenant", "customer_id", "first_ms", "active_weeks"), None,
                        final=True),)

    def restore(self, state: RetentionState, name: str, rows: list, clock_ms: int) -> None:
        oldest = max(state.oldest_week, self.oldest_week(clock_ms))
        members = []
        for row in rows:
            key, first, active = customer_key(row.tenant, row.customer_id), int(row.first_ms), int(row.active_weeks)
            if week_of(first) < oldest:
                members.append(key)
            else:
                index = state.tenant(row.tenant)
                state.fresh[key] = [first, active, index]
                state.count(index, first, active, 1)
        state.merge()
        state.members = np.union1d(state.members, np.array(members, np.uint64))
        state.drop_before(oldest)

    # -- reading ---------------------------------------------------------------------------------
    def totals(self, states: Sequence[RetentionState], clocks: Sequence[int]) -> dict[tuple[str, int], list[int]]:
        """(tenant, age) -> [customers of the cohorts read at that age, those active at it]."""
        out: dict[tuple[str, int], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            week = week_of(clock_ms)
            for (index, cohort), counts in state.counts.items():
                for age in range(1, AGES + 1):
                    if week - age - self.cohorts <= cohort <= week - age - 1:
                        acc = out.setdefault((state.tenant_names[index], age), [0, 0])
                        acc[0] += counts[0]
                        acc[1] += counts[age]
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self, states: Sequence[RetentionState], clocks: Sequence[int]) -> Iterable[Metric]:
        cohort_g, active_g, ratio_g = families = self._families()
        for (tenant, age), (customers, active) in sorted(self.totals(states, clocks).items()):
            cohort_g.add_metric([tenant, str(age)], customers)
            active_g.add_metric([tenant, str(age)], active)
            if customers:
                ratio_g.add_metric([tenant, str(age)], active / customers)
        return families

    def _families(self) -> list[Metric]:
        labels = ["tenant", "age"]
        read = f"the {self.cohorts} latest weekly cohorts whose week +age has ended"
        return [
            GaugeMetricFamily("cx_retention_cohort_customers", f"Customers whose first event fell in {read}.",
                              labels=labels),
            GaugeMetricFamily("cx_retention_customers", f"Customers of {read} with an event in week +age.",
                              labels=labels),
            GaugeMetricFamily("cx_retention_ratio", "cx_retention_customers / cx_retention_cohort_customers of this "
                              "worker (fleet: tenant_age:cx_retention:ratio).", labels=labels),
        ]
