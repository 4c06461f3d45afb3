"""The retention core against a plain recount of the definition in docs/metrics.md: in any order, replayed,
rebuilt from its table, and with old cohorts dropped from memory on a long stream."""
from __future__ import annotations

import random
import tracemalloc
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.retention import AGES, RetentionCore, week_of, week_start_ms
from tests.unit.cores import restore

DAY = 86_400_000
WEEK = 7 * DAY
T0 = week_start_ms(week_of(1_780_000_000_000))  # a Monday, 00:00 UTC
COHORTS = 4


def history(events: list[dict]) -> tuple[dict, dict]:
    """(tenant, customer) -> first event ms, and -> the weeks with an event."""
    first: dict[tuple[str, str], int] = {}
    weeks: dict[tuple[str, str], set[int]] = defaultdict(set)
    for e in events:
        key = (e["tenant"], e["customer_id"])
        first[key] = min(first.get(key, e["event_time"]), e["event_time"])
        weeks[key].add(week_of(e["event_time"]))
    return first, weeks


def recount(events: list[dict], clock: int, cohorts: int = COHORTS) -> dict[tuple[str, int], list[int]]:
    """(tenant, age) -> [customers of the cohorts read at that age, those active in week +age]."""
    first, weeks = history(events)
    now, out = week_of(clock), {}
    for key, first_ms in first.items():
        cohort = week_of(first_ms)
        for age in range(1, AGES + 1):
            if now - age - cohorts <= cohort <= now - age - 1:
                acc = out.setdefault((key[0], age), [0, 0])
                acc[0] += 1
                acc[1] += (cohort + age) in weeks[key]
    return out


def matrix(events: list[dict]) -> dict[tuple[str, int, int], int]:
    """(tenant, cohort week, age 0..8) -> customers active then: the full cohort matrix."""
    first, weeks = history(events)
    out: dict[tuple[str, int, int], int] = defaultdict(int)
    for key, first_ms in first.items():
        cohort = week_of(first_ms)
        for age in range(AGES + 1):
            if cohort + age in weeks[key]:
                out[(key[0], cohort, age)] += 1
    return dict(out)


def matrix_of_rows(rows: list) -> dict[tuple[str, int, int], int]:
    """The same from the newest row per customer, as the docs' query reads the `retention` table."""
    latest = {}
    for row in rows:
        key = (row.tenant, row.customer_id)
        if key not in latest or row.version >= latest[key].version:
            latest[key] = row
    out: dict[tuple[str, int, int], int] = defaultdict(int)
    for row in latest.values():
        assert row.cohort_week * 1000 == week_start_ms(week_of(row.first_ms))
        for age in range(AGES + 1):
            if row.active_weeks >> age & 1:
                out[(row.tenant, week_of(row.first_ms), age)] += 1
    return dict(out)


def feed(core: RetentionCore, state, events: list[dict], rng: random.Random, clock: int = 0) -> tuple[Output, int]:
    """The events in random batches, a tick after each, as the processor drives the core."""
    out, i = Output(), 0
    while i < len(events):
        chunk = events[i:i + rng.randint(1, 6)]
        core.add(state, Batch.of(3, [("web", e) for e in chunk]), out)
        clock = max([clock] + [e["event_time"] for e in chunk])
        core.tick(state, clock, out)
        i += len(chunk)
    return out, clock


def build(raw) -> list[dict]:
    return [{"event_id": f"e{i}", "event_type": "page_view", "event_time": T0 + ms, "tenant": tenant,
             "customer_id": None if customer is None else f"c{customer}"}
            for i, (tenant, customer, ms) in enumerate(raw)]


event_strategy = st.tuples(st.sampled_from(["acme", "globex"]), st.one_of(st.none(), st.integers(0, 12)),
                           st.integers(0, 14 * WEEK))


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=60), st.randoms(use_true_random=False), st.integers(0, 60))
def test_counts_follow_the_definition_in_any_order_and_a_restore_or_replay_changes_nothing(raw, rng, cut):
    events = build(raw)
    known = [e for e in events if e["customer_id"] is not None]
    shuffled = events[:]
    rng.shuffle(shuffled)
    core = RetentionCore(COHORTS, max_lateness_ms=20 * WEEK)  # any order is in time: every cohort stays tracked
    state = core.new_state(3)
    out, clock = feed(core, state, shuffled, rng)
    assert {k: v for k, v in core.totals([state], [clock]).items()} == recount(known, clock)
    rows = out.rows["retention"]
    assert matrix_of_rows(rows) == matrix(known) and {row.kafka_partition for row in rows} <= {3}
    # the newest row per customer rebuilds the same state; everything again writes nothing
    latest = {}
    for row in rows:
        if (row.tenant, row.customer_id) not in latest or row.version > latest[(row.tenant, row.customer_id)].version:
            latest[(row.tenant, row.customer_id)] = row
    restored = core.new_state(3)
    restore(core, restored, "customers", [(r.tenant, r.customer_id, r.first_ms, r.active_weeks) for r in latest.values()],
            clock)
    assert core.totals([restored], [clock]) == core.totals([state], [clock])
    again, _ = feed(core, restored, shuffled[cut:] + shuffled[:cut], rng, clock)
    assert again.row_count() == 0
    assert core.totals([restored], [clock]) == core.totals([state], [clock])


def test_a_late_earlier_event_moves_the_customer_to_an_older_cohort_and_its_row_version_grows():
    core = RetentionCore(COHORTS, 7 * DAY)
    state, out = core.new_state(0), Output()
    visit = {"event_id": "a", "event_type": "login", "tenant": "acme", "customer_id": "c"}
    core.add(state, Batch.of(0, [("web", dict(visit, event_time=T0 + 8 * DAY))]), out)  # week 1, a Tuesday
    core.add(state, Batch.of(0, [("web", dict(visit, event_id="b", event_time=T0 + 6 * DAY))]), out)  # week 0, Sunday
    first, second = out.rows["retention"]
    assert (first.first_ms, first.active_weeks) == (T0 + 8 * DAY, 0b1)
    assert (second.first_ms, second.active_weeks, second.cohort_week) == (T0 + 6 * DAY, 0b11, T0 // 1000)
    assert second.version > first.version
    assert state.counts == {(0, week_of(T0)): [1, 1] + [0] * (AGES - 1)}


def test_old_cohorts_leave_memory_but_their_customers_are_not_new_when_they_return():
    """Thirty weeks of a growing customer base, in time order with disorder inside max lateness."""
    rng = random.Random(7)
    lateness = 3 * DAY
    events = []
    for c in range(300):
        start = rng.randrange(0, 28 * WEEK)
        for _ in range(rng.randint(1, 12)):
            events.append({"event_id": f"e{len(events)}", "event_type": "login", "tenant": ("acme", "globex")[c % 2],
                           "customer_id": f"c{c}", "event_time": T0 + start + rng.randrange(0, 10 * WEEK)})
    events.sort(key=lambda e: e["event_time"] + rng.randrange(0, lateness))  # arrival: late by up to 3 days
    core = RetentionCore(COHORTS, lateness)
    state, clock = core.new_state(0), 0
    checked = 0
    for i in range(0, len(events), 40):
        _, clock = feed(core, state, events[i:i + 40], rng, clock)
        seen = events[:i + 40]
        assert core.totals([state], [clock]) == recount(seen, clock)
        checked += bool(recount(seen, clock))
    assert checked > 20
    oldest = core.oldest_week(clock)
    first, _ = history(events)
    old = {key for key, ms in first.items() if week_of(ms) < oldest}
    assert len(state.members) == len(old) > 100 and len(state.keys) == len(first) - len(old)
    assert all(cohort >= oldest for _, cohort in state.counts)
    # a customer of a dropped cohort comes back: nobody new, no row
    tenant, customer = sorted(old)[0]
    out = Output()
    core.add(state, Batch.of(0, [("web", {"event_id": "back", "event_type": "login", "tenant": tenant,
                                          "customer_id": customer, "event_time": clock})]), out)
    core.tick(state, clock, out)
    assert out.row_count() == 0 and core.totals([state], [clock]) == recount(events, clock)


def test_gauges_name_ages_not_dates_and_the_ratio_divides_the_counts():
    core = RetentionCore(1, 7 * DAY)
    state, out = core.new_state(0), Output()
    visits = [("a", 0), ("a", WEEK + 1), ("b", 2 * DAY), ("c", WEEK)]
    core.add(state, Batch.of(0, [("web", {"event_id": f"{c}{t}", "event_type": "login", "tenant": "acme",
                                          "customer_id": c, "event_time": T0 + t}) for c, t in visits]), out)
    clock = T0 + 2 * WEEK + DAY  # week 2: cohort 0's week +1 has ended
    core.tick(state, clock, out)
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in core.collect([state], [clock])}
    assert families["cx_retention_cohort_customers"] == {("acme", "1"): 2}
    assert families["cx_retention_customers"] == {("acme", "1"): 1}
    assert families["cx_retention_ratio"] == {("acme", "1"): 0.5}


def test_bytes_per_customer():
    """What a customer costs in retention state: tracked (a recent cohort) and after their cohort is dropped
    (the figures of docs/performance.md)."""
    core = RetentionCore(COHORTS, 7 * DAY)
    warm = core.new_state(0)  # numpy imports what union1d needs on first use: not state
    core.add(warm, Batch.of(0, [("web", {"event_id": "w", "event_time": T0, "tenant": "acme", "customer_id": "w"})]),
             Output())
    core.tick(warm, T0 + 20 * WEEK, Output())
    n = 20_000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state, out = core.new_state(0), Output()
    for start in range(0, n, 500):
        batch = [("web", {"event_id": f"e{i}", "event_type": "login", "tenant": "acme", "customer_id": f"cust-{i:07d}",
                          "event_time": T0 + i * 1000}) for i in range(start, start + 500)]
        core.add(state, Batch.of(0, batch), out)
        core.tick(state, T0 + (start + 500) * 1000, out)
    del batch, out  # delivered, not kept
    state.merge()
    tracked = tracemalloc.take_snapshot()
    core.tick(state, T0 + 20 * WEEK, Output())
    dropped = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_tracked = sum(s.size_diff for s in tracked.compare_to(before, "filename")) / n
    per_member = sum(s.size_diff for s in dropped.compare_to(before, "filename")) / n
    print(f"retention state: {per_tracked:.0f} bytes per tracked customer, {per_member:.0f} after the cohort is dropped")
    assert len(state.keys) == 0 and len(state.members) == n
    assert per_tracked < 40 and per_member < 16  # payload: 20 and 8 bytes
