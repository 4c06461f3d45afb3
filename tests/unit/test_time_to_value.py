"""The time-to-value core against a plain recomputation: for input in time order, each customer measured once
from their signup (else first event) to their first purchase; exact quantiles as ClickHouse's quantileExact
takes them; restore equals live; a replay observes nothing."""
from __future__ import annotations

import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.time_to_value import BUCKETS, HISTOGRAM, Measured, TimeToValueCore, exact_quantile, nth
from tests.unit.cores import restore

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_780_000_000_000
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}
FORGET = 90 * DAY


def core() -> TimeToValueCore:
    return TimeToValueCore(WINDOWS, FORGET)


def event(i: int, source: str, kind: str, at: int, customer: str | None = "c1", tenant: str = "acme") -> tuple[str, dict]:
    return source, {"event_id": f"e{i}", "event_type": kind, "event_time": at, "tenant": tenant,
                    "customer_id": customer, "anonymous_id": None if customer else "anon-1"}


def measured(events: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(tenant, customer) -> (first purchase ms, time to value ms): from the earliest signup at or before the
    first purchase, else the earliest event. What the raw-events query of docs/metrics.md computes."""
    by_customer: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for source, e in events:
        if e["customer_id"]:
            by_customer.setdefault((e["tenant"], e["customer_id"]), []).append((source, e["event_type"], e["event_time"]))
    out = {}
    for key, mine in by_customer.items():
        purchases = [at for source, kind, at in mine if source == "web" and kind == "purchase"]
        if not purchases:
            continue
        first = min(purchases)
        signups = [at for source, kind, at in mine if source == "web" and kind == "signup" and at <= first]
        start = min(signups) if signups else min(at for _, _, at in mine)
        out[key] = (first, first - start)
    return out


def in_windows(purchases, clock: int) -> dict[tuple[str, str], list[int]]:
    """(tenant, window) -> the sorted times to value (ms) of the (purchase ms, tenant, time to value ms) in the
    window at ``clock``, filtered over all of them: the recomputation the kept samples replace."""
    want: dict[tuple[str, str], list[float]] = {}
    for at, tenant, ms in purchases:
        for label, window in WINDOWS.items():
            if at // MIN > (clock - window) // MIN:
                want.setdefault((tenant, label), []).append(ms)
    return {key: sorted(times) for key, times in want.items()}


def merged(ttv: TimeToValueCore, states, clock: int) -> dict[tuple[str, str], list[int]]:
    """(tenant, window) -> the kept times of the partitions, merged and sorted."""
    parts_of = ttv.times(states, [clock] * len(states))
    return {key: sorted(ms for times in parts for ms in times) for key, parts in parts_of.items()}


KINDS = [("web", "page_view"), ("web", "signup"), ("web", "purchase"), ("crm", "contact_logged"), ("web", "add_to_cart")]
raw_events = st.lists(st.tuples(st.sampled_from(["acme", "globex"]), st.sampled_from(["c1", "c2", "c3", None]),
                                st.sampled_from(KINDS), st.integers(0, 6 * 24 * 60)), min_size=1, max_size=40)


def feed(ttv: TimeToValueCore, state, items: list[tuple[str, dict]], rng: random.Random) -> Output:
    out, clock, i = Output(), state.clock_ms, 0
    while i < len(items):
        chunk = items[i:i + rng.randint(1, 4)]
        ttv.add(state, Batch.of(state.partition, chunk), out)
        clock = max([clock] + [e["event_time"] for _, e in chunk])
        ttv.tick(state, clock, out)
        i += len(chunk)
    return out


@settings(max_examples=150, deadline=None)
@given(raw_events, st.randoms(use_true_random=False), st.integers(0, 40))
def test_in_time_order_each_customer_is_measured_once_as_defined_and_a_rebuild_observes_nothing_again(raw, rng, cut):
    items = sorted((event(i, source, kind, T0 + minute * MIN + i, customer, tenant)
                    for i, (tenant, customer, (source, kind), minute) in enumerate(raw)), key=lambda x: x[1]["event_time"])
    ttv = core()
    state = ttv.new_state(2)
    out = feed(ttv, state, items, rng)
    truth = measured(items)
    assert sorted((labels[0], value) for name, labels, value in out.observations) == sorted(
        (tenant, ms / 1000) for (tenant, _), (_, ms) in truth.items())
    assert {name for name, _, _ in out.observations} <= {HISTOGRAM}
    clock = items[-1][1]["event_time"]
    purchases = [(at, tenant, ms) for (tenant, _), (at, ms) in truth.items()]
    assert merged(ttv, [state], clock) == in_windows(purchases, clock)
    # rebuilt from the newest rows, then fed everything again: no observation, no row, the same gauges
    newest = {}
    for row in out.rows["customer_firsts"]:
        key = (row.tenant, row.customer_id)
        assert key not in newest or row.updated_ms > newest[key].updated_ms
        newest[key] = row
    assert {k: (r.first_purchase_ms, r.time_to_value_ms) for k, r in newest.items() if r.first_purchase_ms} == truth
    rebuilt = ttv.new_state(2)
    restore(ttv, rebuilt, "customers", [(r.tenant, r.customer_id, r.first_event_ms, r.signup_ms, r.first_purchase_ms,
                                         r.time_to_value_ms, r.last_event_ms, r.updated_ms) for r in newest.values()],
            clock)
    assert merged(ttv, [rebuilt], clock) == in_windows(purchases, clock)
    again = feed(ttv, rebuilt, items[cut:] + items[:cut], rng)
    assert again.observations == [] and again.row_count() == 0
    families = lambda s: {f.name: {tuple(x.labels.values()): x.value for x in f.samples}  # noqa: E731
                          for f in ttv.collect([s], [clock])}
    assert families(rebuilt) == families(state)
    # two partitions: counts and exact quantiles over both
    want = in_windows(purchases * 2, clock)
    assert merged(ttv, [state, rebuilt], clock) == want
    gauges = {f.name: {tuple(x.labels.values()): x.value for x in f.samples}
              for f in ttv.collect([state, rebuilt], [clock] * 2)}
    assert gauges["cx_first_purchases"] == {key: len(times) for key, times in want.items()}
    assert gauges["cx_time_to_first_purchase_exact_seconds"] == {
        (tenant, label, f"{q * 100:g}"): exact_quantile([ms / 1000 for ms in times], q)
        for (tenant, label), times in want.items() for q in (0.5, 0.9)}
    for step in (MIN, 59 * MIN, 5 * HOUR, DAY, 3 * DAY, 8 * DAY):  # the windows move with the clock
        for s in (state, rebuilt):
            ttv.tick(s, clock + step, Output())
            assert merged(ttv, [s], clock + step) == in_windows(purchases, clock + step)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 24 * 60), st.sampled_from(["acme", "globex"]), st.integers(0, 5),
                          st.integers(0, 12 * 60)), max_size=40))
def test_the_kept_first_purchases_per_window_equal_a_filter_over_all_of_them_as_the_clock_moves(steps):
    """Purchases (late ones too) and clock moves interleaved: after each, every window holds exactly the
    purchases a filter over all of them finds, sorted."""
    kept, purchases, clock = Measured(WINDOWS), [], T0
    for minute, tenant, ttv_minutes, forward in steps:
        at = T0 + minute * MIN - DAY + minute % 7  # up to a day before T0: some are outside a window when they come
        kept.add(at, tenant, ttv_minutes * MIN)
        purchases.append((at, tenant, ttv_minutes * MIN))
        clock += forward * MIN + minute % 3
        kept.advance(clock)
        assert {(tenant, label): times for label, tenants in kept.values.items()
                for tenant, times in tenants.items()} == in_windows(purchases, clock)


def test_signup_wins_over_earlier_events_and_a_late_earlier_purchase_does_not_measure_again():
    ttv = core()
    state, out = ttv.new_state(0), Output()
    batch = [event(1, "crm", "contact_logged", T0), event(2, "web", "signup", T0 + HOUR),
             event(3, "web", "purchase", T0 + 3 * HOUR), event(4, "web", "purchase", T0 + 4 * HOUR, "c2"),
             event(5, "web", "purchase", T0 + 5 * HOUR, None)]  # anonymous: nobody to measure
    ttv.add(state, Batch.of(0, batch), out)
    ttv.tick(state, T0 + 5 * HOUR, out)
    assert out.observations == [(HISTOGRAM, ("acme",), 7200.0), (HISTOGRAM, ("acme",), 0.0)]
    ttv.add(state, Batch.of(0, [event(6, "web", "purchase", T0 + 2 * HOUR)]), out)  # earlier, but late: measured already
    ttv.tick(state, T0 + 5 * HOUR, out)
    assert len(out.observations) == 2 and state.customers.get("acme", "c1").purchase_ms == T0 + 3 * HOUR


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 40), min_size=1, max_size=12), min_size=1, max_size=4), st.data())
def test_the_nth_of_sorted_lists_is_the_nth_of_their_union_from_any_guess(parts, data):
    """From no guess, and from any guess (in the union or not, near or far: the walk's steps run out)."""
    parts = [sorted(times) for times in parts]
    union = sorted(ms for times in parts for ms in times)
    k = data.draw(st.integers(0, len(union) - 1))
    assert nth(parts, k) == union[k]
    for near in (data.draw(st.sampled_from(union)), data.draw(st.integers(-50, 90))):
        assert nth(parts, k, near) == union[k], near


def test_exact_quantiles_take_the_element_at_floor_q_n():
    assert exact_quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 3.0 and exact_quantile([4.0, 1.0, 3.0, 2.0], 0.9) == 4.0
    assert exact_quantile([5.0], 0.9) == 5.0 and exact_quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert list(BUCKETS) == sorted(BUCKETS)


def test_customers_are_forgotten_by_whole_days_and_rows_come_once_a_day():
    ttv = core()
    state, out = ttv.new_state(0), Output()
    for i, at in enumerate((T0, T0 + MIN, T0 + 2 * MIN, T0 + DAY)):
        ttv.add(state, Batch.of(0, [event(i, "web", "page_view", at)]), out)
        ttv.tick(state, at, out)
    assert len(out.rows["customer_firsts"]) == 2  # the first event, then the first of the next day
    day = (T0 + DAY) // DAY * DAY
    ttv.tick(state, day + FORGET + DAY - 1, out)
    assert state.customers.get("acme", "c1") is not None
    ttv.tick(state, day + FORGET + DAY + HOUR, out)  # swept at most once an hour of event time
    assert len(state.customers) == 0 and state.customers.get("acme", "c1") is None


def test_bytes_per_customer():
    """A month of customers who signed up, browsed and bought (figure for docs/performance.md)."""
    ttv = core()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state, out = ttv.new_state(0), Output()
    for day in range(0, 30, 3):
        items = [event(i, "web", "signup" if day == 0 else "purchase" if day == 9 else "page_view",
                       T0 + day * DAY + i, f"cust-{i:06d}") for i in range(5000)]
        ttv.add(state, Batch.of(0, items), out)
        ttv.tick(state, T0 + day * DAY + 5000, out)
        out = Output()  # the rows are delivered and dropped
    del items
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_customer = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(state.customers)
    print(f"time-to-value state: {per_customer:.0f} bytes per customer")
    assert per_customer < 300  # 510 with an object and a row tuple per customer
