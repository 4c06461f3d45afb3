"""The subscriptions core against a plain recount of the definition in docs/metrics.md (in any order,
replayed, rebuilt from its table), money exact to the cent over a long replay, and the LTV guard."""
from __future__ import annotations

import random
import tracemalloc
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.subscriptions import CANCELLED, MOVEMENTS, SubscriptionCore, minor_units
from tests.unit.cores import mixed_event_id, restore

MIN, DAY = 60_000, 86_400_000
T0 = 1_780_000_000_000
WINDOWS = {"7d": 7 * DAY, "30d": 30 * DAY}
LATENESS = 7 * DAY
TYPES = ("subscription_started", "subscription_renewed", "subscription_upgraded", "subscription_downgraded",
         CANCELLED)
PRICES = (0.0, 9.99, 19.0, 19.99, 99.0, 0.1)


def core(max_plans: int = 20) -> SubscriptionCore:
    return SubscriptionCore(WINDOWS, max_plans, LATENESS)


def after(e: dict) -> int:
    return 0 if e["event_type"] == CANCELLED else minor_units(e["mrr"])


def recount(events: list[dict], clock: int) -> tuple[dict, dict]:
    """From the definition: (tenant, plan) -> [paying, MRR in hundredths], and (tenant, window) -> events per
    movement then MRR moved per movement."""
    by_customer: dict[tuple[str, str], list[dict]] = {}
    for e in events:
        by_customer.setdefault((e["tenant"], e["customer_id"]), []).append(e)
    plans: dict[tuple[str, str], list[int]] = {}
    moves: dict[tuple[str, str], list[int]] = {}
    for (tenant, _), mine in by_customer.items():
        mine.sort(key=lambda e: (e["event_time"], e["event_id"]))
        if after(mine[-1]) > 0:
            acc = plans.setdefault((tenant, mine[-1]["plan"] or "unknown"), [0, 0])
            acc[0] += 1
            acc[1] += after(mine[-1])
        before = 0
        for e in mine:
            now = after(e)
            if now != before:
                kind = 0 if before == 0 else 3 if now == 0 else 1 if now > before else 2
                for label, window in WINDOWS.items():
                    if e["event_time"] // MIN > (clock - window) // MIN:
                        acc = moves.setdefault((tenant, label), [0] * 8)
                        acc[kind] += 1
                        acc[4 + kind] += abs(now - before)
            before = now
    return plans, moves


def feed(sub: SubscriptionCore, state, events: list[dict], rng: random.Random, clock: int = 0) -> tuple[Output, int]:
    out, i = Output(), 0
    while i < len(events):
        chunk = events[i:i + rng.randint(1, 5)]
        sub.add(state, Batch.of(state.partition, [("crm", e) for e in chunk]), out)
        clock = max([clock] + [e["event_time"] for e in chunk])
        sub.tick(state, clock, out)
        i += len(chunk)
    return out, clock


def nonzero(counts: dict) -> dict:
    return {key: value for key, value in counts.items() if any(value)}


def newest(rows: list) -> dict:
    latest = {}
    for row in rows:
        if row.event_id not in latest or row.updated_ms >= latest[row.event_id].updated_ms:
            latest[row.event_id] = row
    return latest


def restore_rows(sub: SubscriptionCore, state, rows: list, clock: int) -> None:
    """What the two restores read: the newest row per event in the held span, and every held one."""
    span = sub.span_ms
    columns = [spec.columns for spec in sub.restores()][0]
    recent = [tuple(getattr(r, c) for c in columns) for r in rows if r.event_ms > clock - span]
    held = [tuple(getattr(r, c) for c in columns) for r in rows if r.held]
    restore(sub, state, "recent", recent, clock)
    restore(sub, state, "held", held, clock)


def event(i: int, tenant: str, customer: int, kind: str, minute: int, price: float, plan) -> dict:
    return {"event_id": mixed_event_id(i), "event_type": kind, "event_time": T0 + minute * MIN, "tenant": tenant,
            "customer_id": f"c{customer}", "plan": plan, "mrr": None if kind == CANCELLED and price == 0 else price,
            "account_id": None, "attributes": {}}


event_strategy = st.tuples(st.sampled_from(["acme", "globex"]), st.integers(0, 5), st.sampled_from(TYPES),
                           st.integers(0, 40 * 24 * 60), st.sampled_from(PRICES), st.sampled_from(["basic", "pro", None]))


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=40), st.randoms(use_true_random=False), st.integers(0, 40))
def test_gauges_follow_the_definition_in_any_order_and_a_restore_or_replay_changes_nothing(raw, rng, cut):
    events = [event(i, *item) for i, item in enumerate(raw)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    sub = SubscriptionCore(WINDOWS, 20, 60 * DAY)  # any order is in time: nothing is too old for the core
    state = sub.new_state(1)
    out, clock = feed(sub, state, shuffled, rng)
    plans, moves = recount(events, clock)
    assert sub.plan_totals([state]) == plans
    assert nonzero(sub.movements([state], [clock])) == moves
    rows = list(newest(out.rows["subscriptions"]).values())
    assert sorted(r.event_id for r in rows) == sorted(e["event_id"] for e in events)
    # what the rows say agrees with the recount: every event's MRR before, one held (latest) per customer
    by_customer: dict = {}
    for e in sorted(events, key=lambda e: (e["event_time"], e["event_id"])):
        by_customer.setdefault((e["tenant"], e["customer_id"]), []).append(e)
    latest = newest(out.rows["subscriptions"])
    for mine in by_customer.values():
        befores = [0] + [after(e) for e in mine[:-1]]
        assert [latest[e["event_id"]].mrr_before_minor for e in mine] == befores
        assert [latest[e["event_id"]].held for e in mine] == [0] * (len(mine) - 1) + [1]
    restored = sub.new_state(1)
    restore_rows(sub, restored, rows, clock)
    assert sub.plan_totals([restored]) == plans and nonzero(sub.movements([restored], [clock])) == moves
    again, _ = feed(sub, restored, shuffled[cut:] + shuffled[:cut], rng, clock)
    assert again.row_count() == 0


def test_a_late_upgrade_moves_the_next_event_and_rewrites_its_row():
    sub = core()
    state, out = sub.new_state(0), Output()
    start = event(1, "acme", 1, "subscription_started", 0, 19.0, "basic")
    cancel = event(2, "acme", 1, CANCELLED, 120, 0.0, None)
    feed(sub, state, [start, cancel], random.Random(1))
    assert sub.movements([state], [T0 + 120 * MIN])[("acme", "7d")][4:] == [1900, 0, 0, 1900]
    upgrade = event(3, "acme", 1, "subscription_upgraded", 60, 99.0, "pro")
    out, _ = feed(sub, state, [upgrade], random.Random(1), T0 + 120 * MIN)
    counts = sub.movements([state], [T0 + 120 * MIN])[("acme", "7d")]
    assert counts == [1, 1, 0, 1, 1900, 8000, 0, 9900]  # churned MRR is now the pro price
    assert {(r.event_id, r.mrr_before_minor, r.held) for r in out.rows["subscriptions"]} == {
        (upgrade["event_id"], 1900, 0), (cancel["event_id"], 9900, 1)}


def test_mrr_sums_are_exact_to_the_cent_over_a_long_replay():
    """60 000 subscription events of 12 000 customers at prices with cents (0.10, 19.99, ...), in batches, then
    all of them again: the MRR and the MRR moved are the exact decimal sums, where summing the doubles drifts."""
    rng = random.Random(3)
    prices = [0.1, 0.2, 0.3, 19.99, 9.95, 1234.56, 0.07]
    events = []
    for i in range(60_000):
        price = rng.choice(prices)
        events.append({"event_id": f"e{i}", "event_type": rng.choice(TYPES[:4]), "tenant": "acme",
                       "customer_id": f"c{i % 12_000}", "event_time": T0 + i * 30_000, "plan": "p", "mrr": price})
    sub = core()
    state = sub.new_state(0)
    clock = 0
    for replay in range(2):
        for start in range(0, len(events), 2000):
            chunk = events[start:start + 2000]
            sub.add(state, Batch.of(0, [("crm", e) for e in chunk]), Output())
            clock = max(clock, chunk[-1]["event_time"])
            sub.tick(state, clock, Output())
    latest = {}
    for e in events:
        latest[e["customer_id"]] = e
    exact = sum(Decimal(repr(e["mrr"])) for e in latest.values())
    assert Decimal(sub.plan_totals([state])[("acme", "p")][1]) / 100 == exact
    drifting = 0.0
    for e in latest.values():
        drifting += e["mrr"]
    assert Decimal(drifting) != exact  # the doubles' sum is not the cents
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in sub.collect([state], [clock])}
    assert families["cx_subscription_mrr"][("acme", "p")] == float(exact)
    moved = Decimal(0)
    before: dict[str, Decimal] = {}
    for e in events:
        now = Decimal(repr(e["mrr"]))
        if e["event_time"] // MIN > (clock - 7 * DAY) // MIN and now > before.get(e["customer_id"], Decimal(0)) > 0:
            moved += now - before[e["customer_id"]]
        before[e["customer_id"]] = now
    assert Decimal(sub.movements([state], [clock])[("acme", "7d")][4 + 1]) / 100 == moved > 0


@pytest.mark.parametrize("amount, minor", [(19.99, 1999), (0.1, 10), (1234567.89, 123456789), (0.125, 12),
                                           (0.135, 14), (0.0, 0), (-1.0, None), (float("inf"), None), (None, None)])
def test_minor_units_come_from_the_written_decimal(amount, minor):
    assert minor_units(amount) == minor


def test_ltv_is_arpu_over_the_monthly_churn_rate_and_absent_without_churn():
    sub = core()
    state = sub.new_state(0)
    events = [event(i, "acme", i, "subscription_started", i, price, "basic") for i, price in enumerate([10.0, 20.0, 30.0])]
    _, clock = feed(sub, state, events, random.Random(2))
    gauges = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in sub.collect([state], [clock])}
    assert gauges["cx_subscription_arpu"] == {("acme",): 20.0}
    assert gauges["cx_subscription_churn_ratio"] == {("acme", "7d"): 0.0, ("acme", "30d"): 0.0}
    assert gauges["cx_subscription_ltv"] == {}  # no churn: no finite lifetime, no value
    _, clock = feed(sub, state, [event(9, "acme", 0, CANCELLED, 10, 0.0, None)], random.Random(2), clock)
    gauges = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in sub.collect([state], [clock])}
    # 2 paying (ARPU 25), 1 churned of the 3 paying spells in 30 days: LTV = 25 / (1/3)
    assert gauges["cx_subscription_arpu"] == {("acme",): 25.0}
    assert gauges["cx_subscription_churn_ratio"][("acme", "30d")] == pytest.approx(1 / 3)
    assert gauges["cx_subscription_ltv"] == {("acme",): pytest.approx(75.0)}
    assert gauges["cx_subscription_mrr_movement"][("acme", "30d", "churned")] == 10.0


def test_non_paying_customers_are_forgotten_after_the_span_and_paying_ones_kept():
    sub = core()
    state = sub.new_state(0)
    events = [event(1, "acme", 1, "subscription_started", 0, 19.0, "basic"),
              event(2, "acme", 2, "subscription_started", 0, 19.0, "basic"),
              event(3, "acme", 2, CANCELLED, 10, 0.0, None),
              event(4, "acme", 1, "subscription_renewed", 20, 19.0, "basic")]
    out, clock = feed(sub, state, events, random.Random(4))
    later = clock + sub.span_ms + MIN
    out = Output()
    sub.tick(state, later, out)  # other sources ahead: a CRM event of the span is still valid
    assert set(state.subscribers) == {("acme", "c1"), ("acme", "c2")}
    sub.add(state, Batch.of(0, [("crm", dict(event(5, "acme", 3, "note_added", 0, 0.0, None), event_time=later))]),
            out)  # the CRM's own clock moves past
    sub.tick(state, later, out)
    assert set(state.subscribers) == {("acme", "c1")} and len(state.subscribers[("acme", "c1")].changes) == 1
    forgotten = [(mixed_event_id(3), 0)]  # the forgotten one's row
    assert [(r.event_id, r.held) for r in out.rows["subscriptions"]] == forgotten
    assert sub.plan_totals([state]) == {("acme", "basic"): [1, 1900]}
    assert nonzero(sub.movements([state], [later])) == {}


def test_a_late_cancellation_ends_the_subscription_when_the_topic_is_behind():
    """The CRM topic consumed weeks behind the others (lateness is judged per topic-partition): a cancellation
    comes when the partition's clock is past the span held after it. It is valid, so it is taken: the customer
    no longer pays, and their held row is the cancellation's."""
    sub = core()
    state, out = sub.new_state(0), Output()
    feed(sub, state, [event(1, "acme", 1, "subscription_started", 0, 19.0, "basic")], random.Random(5))
    clock = T0 + sub.span_ms + DAY  # web, chatbot, complaints events of this partition
    sub.tick(state, clock, out)
    cancelled = event(2, "acme", 1, CANCELLED, 60, 0.0, None)  # within max_lateness of the CRM clock
    sub.add(state, Batch.of(0, [("crm", cancelled)]), out)
    sub.tick(state, clock, out)
    assert sub.plan_totals([state]) == {}
    assert [(r.event_id, r.held) for r in newest(out.rows["subscriptions"]).values()] == [
        (mixed_event_id(1), 0), (mixed_event_id(2), 1)]
    later = T0 + sub.span_ms + 61 * MIN  # the CRM's own clock moves past the span: the non-payer is forgotten
    sub.add(state, Batch.of(0, [("crm", dict(event(3, "acme", 2, "note_added", 0, 0.0, None), event_time=later))]), out)
    sub.tick(state, clock, out)
    assert state.subscribers == {}


def test_plans_beyond_the_cap_are_summed_as_other():
    sub = core(max_plans=2)
    state = sub.new_state(0)
    events = [event(i, "acme", i, "subscription_started", 0, 10.0, plan)
              for i, plan in enumerate(["a", "a", "a", "b", "b", "c", None])]
    feed(sub, state, events, random.Random(5))
    assert sub.plan_totals([state]) == {("acme", "a"): [3, 3000], ("acme", "b"): [2, 2000], ("acme", "other"): [2, 2000]}


def test_events_that_are_not_subscriptions_or_carry_no_price_are_not_taken():
    sub = core()
    state = sub.new_state(0)
    events = [event(1, "acme", 1, "subscription_started", 0, 19.0, "basic"),
              dict(event(2, "acme", 2, "subscription_started", 0, 19.0, "basic"), mrr=None),
              dict(event(3, "acme", 3, "subscription_started", 0, 19.0, "basic"), mrr=float("nan")),
              dict(event(4, "acme", 4, "subscription_started", 0, 19.0, "basic"), event_type="order_placed")]
    out, _ = feed(sub, state, events, random.Random(6))
    assert [r.event_id for r in out.rows["subscriptions"]] == [mixed_event_id(1)]


def test_bytes_per_subscriber():
    """What a paying customer costs in subscription state with a month of monthly renewals held (figure for
    docs/performance.md)."""
    sub = core()
    warm = sub.new_state(0)
    feed(sub, warm, [event(0, "acme", 0, "subscription_started", 0, 1.0, "basic")], random.Random(0))
    n = 5000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = sub.new_state(0)
    clock = 0
    for month in range(3):
        for start in range(0, n, 500):
            batch = [event(month * n + i, "acme", i, "subscription_renewed", month * 30 * 24 * 60 + i, 19.99,
                           "basic") for i in range(start, start + 500)]
            sub.add(state, Batch.of(0, [("crm", e) for e in batch]), Output())
            clock = max(clock, batch[-1]["event_time"])
            sub.tick(state, clock, Output())
    del batch
    after_ = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_customer = sum(s.size_diff for s in after_.compare_to(before, "filename")) / n
    held = sum(len(s.changes) for s in state.subscribers.values()) / n
    print(f"subscription state: {per_customer:.0f} bytes per paying customer ({held:.1f} events held each)")
    assert per_customer < 2000 and 1 <= held <= 3
