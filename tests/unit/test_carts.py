"""The cart abandonment core: for input in time order, the plain walk of docs/metrics.md at every clock
(the deadline decides as the clock passes it, never before); in any order, each cart decided once and
counted once; restore equals live; a replay changes nothing."""
from __future__ import annotations

import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.carts import CartCore
from tests.unit.cores import restore

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_780_000_000_000
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}
LATENESS = 7 * DAY
T = DAY  # CXP_CART_ABANDON_AFTER


def core() -> CartCore:
    return CartCore(WINDOWS, T, LATENESS)


def event(i: int, kind: str, at: int, buyer: str = "c1", tenant: str = "acme") -> dict:
    anonymous = buyer.startswith("anon")
    return {"event_id": f"e{i}", "event_type": kind, "event_time": at, "tenant": tenant,
            "customer_id": None if anonymous else buyer, "anonymous_id": buyer if anonymous else None}


def walk(events: list[dict], clock: int) -> dict[tuple[str, str, int], tuple[str, int | None]]:
    """The definition, read plainly: per buyer, adds and purchases in time order (an add first in a tie); a cart
    starts at an add when none is open, converts at a purchase up to its deadline, is abandoned once the clock
    is past the deadline. (tenant, buyer, start) -> (outcome, end)."""
    by_buyer: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for e in events:
        if e["event_type"] in ("add_to_cart", "purchase"):
            key = (e["tenant"], e["customer_id"] or e["anonymous_id"])
            by_buyer.setdefault(key, []).append((e["event_time"], 0 if e["event_type"] == "add_to_cart" else 1))
    carts = {}
    for (tenant, buyer), steps in by_buyer.items():
        start = None
        for at, kind in sorted(steps):
            if start is not None and start + T < at:
                carts[(tenant, buyer, start)] = ("abandoned", start + T)
                start = None
            if kind == 0 and start is None:
                start = at
                carts[(tenant, buyer, start)] = ("open", None)
            elif kind == 1 and start is not None:
                carts[(tenant, buyer, start)] = ("converted", at)
                start = None
        if start is not None and start + T < clock:
            carts[(tenant, buyer, start)] = ("abandoned", start + T)
    return carts


def open_by_scan(states) -> dict[str, int]:
    """tenant -> buyers with an open cart, counted over every buyer: the recomputation the kept count replaces."""
    out: dict[str, int] = {}
    for state in states:
        for tenant, of_tenant in state.buyers.items():
            for buyer in of_tenant.values():
                if buyer.start:
                    out[tenant] = out.get(tenant, 0) + 1
    return out


def table(rows) -> dict[tuple[str, str, int], tuple[str, int | None]]:
    """The carts table under FINAL: the newest version of each cart."""
    newest = {}
    for row in rows:
        key = (row.tenant, row.buyer, row.started_ms)
        if key not in newest or row.updated_ms > newest[key].updated_ms:
            newest[key] = row
    return {key: (row.outcome, row.ended_ms) for key, row in newest.items()}


def counted(carts: dict, clock: int) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for (tenant, _, _), (outcome, end) in carts.items():
        if outcome == "open":
            continue
        for label, window in WINDOWS.items():
            if end // MIN > (clock - window) // MIN:
                out.setdefault((tenant, label), [0, 0])[outcome == "abandoned"] += 1
    return out


steps = st.lists(st.tuples(st.sampled_from(["c1", "c2", "anon-1"]), st.sampled_from(["add_to_cart", "purchase"]),
                           st.integers(0, 50 * 60)), min_size=1, max_size=40)


def timeline(raw) -> list[dict]:
    """Events every few minutes to a few hours apart, ties included, in time order."""
    events, at = [], T0
    for i, (buyer, kind, gap) in enumerate(raw):
        at += (gap % 7) * gap * MIN // 7  # many small gaps, some beyond a day
        events.append(event(i, kind, at, buyer, "acme" if i % 5 else "globex"))
    return events


@settings(max_examples=150, deadline=None)
@given(steps, st.randoms(use_true_random=False))
def test_in_time_order_every_clock_sees_the_plain_walk_and_no_cart_is_decided_before_its_deadline(raw, rng):
    events = timeline(raw)
    carts = core()
    state, out, i = carts.new_state(0), Output(), 0
    while i < len(events):
        chunk = events[i:i + rng.randint(1, 4)]
        carts.add(state, Batch.of(0, [("web", e) for e in chunk]), out)
        i += len(chunk)
        clock = chunk[-1]["event_time"] + rng.choice([0, 0, MIN, 6 * HOUR, DAY, DAY + 1])  # other events move it too,
        if i < len(events):  # but in time order never past the next one
            clock = min(clock, events[i]["event_time"])
        carts.tick(state, clock, out)
        want = walk(events[:i], clock)
        assert table(out.rows["carts"]) == want
        assert {k: v for k, v in carts.totals([state], [clock]).items() if any(v)} == counted(want, clock)
        assert sum(carts.open_carts([state]).values()) == sum(outcome == "open" for outcome, _ in want.values())
        assert carts.open_carts([state]) == open_by_scan([state])


@settings(max_examples=150, deadline=None)
@given(steps, st.randoms(use_true_random=False), st.integers(0, 40))
def test_in_any_order_each_cart_is_decided_once_and_a_rebuilt_state_fed_everything_again_writes_nothing(raw, rng, cut):
    events = timeline(raw)
    shuffled = events[:]
    rng.shuffle(shuffled)
    carts = core()
    state, out, clock = carts.new_state(3), Output(), 0
    for i in range(0, len(shuffled), 3):
        chunk = shuffled[i:i + 3]
        carts.add(state, Batch.of(3, [("web", e) for e in chunk]), out)
        clock = max([clock] + [e["event_time"] for e in chunk])
        carts.tick(state, clock, out)
        assert carts.open_carts([state]) == open_by_scan([state])
    decided = {}
    for row in out.rows["carts"]:
        if row.outcome != "open":  # a decided cart is final: decided once, never rewritten
            assert (row.tenant, row.buyer, row.started_ms) not in decided
            decided[(row.tenant, row.buyer, row.started_ms)] = (row.outcome, row.ended_ms)
    final = table(out.rows["carts"])
    assert {k: v for k, v in final.items() if v[0] != "open"} == decided
    assert {k: v for k, v in carts.totals([state], [clock]).items() if any(v)} == counted(final, clock)
    for (_, _, start), (outcome, end) in decided.items():
        assert (outcome == "abandoned") == (end == start + T) and start <= end <= start + T
    # rebuilt from the table and the purchases, then fed everything again
    rebuilt = carts.new_state(3)
    rows = {}
    for row in out.rows["carts"]:
        key = (row.tenant, row.buyer, row.started_ms)
        if key not in rows or row.updated_ms > rows[key].updated_ms:
            rows[key] = row
    restore(carts, rebuilt, "carts", [(r.tenant, r.buyer, r.customer_id, r.started_ms, r.outcome, r.ended_ms,
                                       r.updated_ms) for r in rows.values()], clock)
    for name, kind in (("purchases", "purchase"), ("adds", "add_to_cart")):  # in the declared order
        restore(carts, rebuilt, name, [(e["tenant"], e["customer_id"], e["anonymous_id"], e["event_time"])
                                       for e in events if e["event_type"] == kind], clock)
        assert carts.open_carts([rebuilt]) == open_by_scan([rebuilt])
    again = Output()
    replay = shuffled[cut:] + shuffled[:cut]
    for i in range(0, len(replay), 4):
        carts.add(rebuilt, Batch.of(3, [("web", e) for e in replay[i:i + 4]]), again)
        carts.tick(rebuilt, clock, again)
        assert carts.open_carts([rebuilt]) == open_by_scan([rebuilt])
    assert again.row_count() == 0
    assert carts.totals([rebuilt], [clock]) == carts.totals([state], [clock])
    assert carts.open_carts([rebuilt]) == carts.open_carts([state])
    assert carts.open_carts([rebuilt, state]) == open_by_scan([rebuilt, state])


def test_the_deadline_decides_as_the_clock_passes_it():
    carts = core()
    state, out = carts.new_state(0), Output()
    carts.add(state, Batch.of(0, [("web", event(1, "add_to_cart", T0)), ("web", event(2, "add_to_cart", T0 + HOUR))]), out)
    carts.tick(state, T0 + T, out)  # at the deadline: still open (a purchase now would convert it)
    assert carts.open_carts([state]) == {"acme": 1} and carts.totals([state], [T0 + T]) == {}
    carts.tick(state, T0 + T + 1, out)  # past it: abandoned at the deadline, whatever came after
    assert carts.open_carts([state]) == {} and carts.totals([state], [T0 + T + 1])[("acme", "24h")] == [0, 1]
    assert [(r.outcome, r.ended_ms) for r in out.rows["carts"]] == [("open", None), ("abandoned", T0 + T)]
    # a purchase exactly at its deadline converts the next cart; one arriving before its add, too
    carts.add(state, Batch.of(0, [("web", event(3, "add_to_cart", T0 + 2 * T)), ("web", event(4, "purchase", T0 + 3 * T))]),
              out)
    carts.add(state, Batch.of(0, [("web", event(5, "purchase", T0 + 4 * T)), ("web", event(6, "add_to_cart", T0 + 4 * T - HOUR))]),
              out)
    carts.tick(state, T0 + 4 * T, out)
    assert [(r.started_ms - T0, r.outcome, r.ended_ms - T0) for r in out.rows["carts"][2:]] == [
        (2 * T, "converted", 3 * T), (4 * T - HOUR, "converted", 4 * T)]
    ratio = {tuple(s.labels.values()): s.value for f in carts.collect([state], [T0 + 4 * T]) for s in f.samples
             if f.name == "cx_cart_abandonment_ratio"}
    assert ratio[("acme", "7d")] == 1 / 3


def test_idle_buyers_are_forgotten():
    carts = core()
    state, out = carts.new_state(0), Output()
    carts.add(state, Batch.of(0, [("web", event(1, "add_to_cart", T0, "anon-9")), ("web", event(2, "purchase", T0 + MIN, "anon-9"))]), out)
    carts.tick(state, T0 + MIN, out)
    carts.tick(state, T0 + LATENESS + T + 2 * HOUR, out)  # other sources ahead: a web event that old is still valid
    assert {tenant: set(of_tenant) for tenant, of_tenant in state.buyers.items()} == {"acme": {"anon-9"}}
    later = T0 + LATENESS + T + 3 * HOUR  # the web's own clock moves past
    carts.add(state, Batch.of(0, [("web", dict(event(3, "add_to_cart", later, "c2"), event_type="page_view"))]), out)
    carts.tick(state, later, out)
    assert state.buyers == {}


def test_a_late_add_of_a_decided_cart_starts_none_when_the_topic_is_behind():
    """The web topic consumed days behind the others (lateness is judged per topic-partition): an add that
    belongs to a converted cart comes when the partition's clock is past what the buyer is kept for. The
    buyer is still known, so the add changes nothing, as in time order: no second cart, row or count."""
    carts = core()
    state, out = carts.new_state(0), Output()
    carts.add(state, Batch.of(0, [("web", event(1, "add_to_cart", T0)), ("web", event(2, "purchase", T0 + MIN))]), out)
    carts.tick(state, T0 + MIN, out)
    clock = T0 + LATENESS + T + 2 * HOUR  # web, complaints, crm events of this partition
    carts.tick(state, clock, out)
    written = len(out.rows["carts"])
    carts.add(state, Batch.of(0, [("web", event(3, "add_to_cart", T0 + MIN // 2))]), out)  # within max_lateness
    carts.tick(state, clock + 1, out)
    assert len(out.rows["carts"]) == written and carts.open_carts([state]) == {}


def test_bytes_per_buyer():
    """One cart each, converted, kept until max lateness + 24 h (figure for docs/performance.md)."""
    carts = core()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state, out = carts.new_state(0), Output()
    for i in range(0, 5000, 500):
        items = [("web", event(2 * j, "add_to_cart", T0 + j, f"cust-{j:06d}")) for j in range(i, i + 500)]
        items += [("web", event(2 * j + 1, "purchase", T0 + j + MIN, f"cust-{j:06d}")) for j in range(i, i + 500)]
        carts.add(state, Batch.of(0, items), out)
        carts.tick(state, T0 + i + MIN, out)
    del out, items
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_buyer = sum(s.size_diff for s in after.compare_to(before, "filename")) / sum(map(len, state.buyers.values()))
    print(f"cart state: {per_buyer:.0f} bytes per buyer")
    assert per_buyer < 650
