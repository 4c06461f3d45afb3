"""The orders core against a plain recomputation from its purchases: each order once per order_id whatever the
copies, event ids and arrival order, revenue summed exactly in minor units, restore equals live, a replay
changes nothing."""
from __future__ import annotations

import random
import tracemalloc
from collections import Counter, defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import id_hash
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.orders import OrdersCore
from pipeline.money import minor_unit
from tests.unit.cores import restore

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_780_000_000_000
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
LATENESS = 7 * DAY


def core(max_currencies: int = 20) -> OrdersCore:
    return OrdersCore(WINDOWS, ("30d", 30 * DAY), max_currencies, LATENESS)


def purchase(event_id: str, at: int, order_id: str, revenue: float, currency: str = "EUR", tenant: str = "acme",
             customer_id: str | None = "c1", anonymous_id: str | None = None) -> dict:
    return {"event_id": event_id, "event_type": "purchase", "event_time": at, "tenant": tenant,
            "customer_id": customer_id, "anonymous_id": anonymous_id, "order_id": order_id, "revenue": revenue,
            "currency": currency}


def feed(orders: OrdersCore, state, items: list[tuple[str, dict]], rng: random.Random,
         accepted: list | None = None) -> Output:
    """The events in random batches, a tick after each, as the processor drives the core: events more than the
    max lateness behind the clock are left out (the processor rejects them as too_late) and the others appended
    to ``accepted``."""
    out, clock, i = Output(), state.clock_ms, 0
    while i < len(items):
        n = rng.randint(1, 5)
        chunk = [item for item in items[i:i + n] if not clock or item[1]["event_time"] >= clock - LATENESS]
        if accepted is not None:
            accepted += chunk
        orders.add(state, Batch.of(state.partition, chunk), out)
        clock = max([clock] + [e["event_time"] for _, e in chunk])
        orders.tick(state, clock, out)
        i += n
    return out


def winners(events: list[dict]) -> dict[tuple, dict]:
    """Each order (tenant, buyer, order_id) -> its earliest purchase event (ties: smaller hash of the event id)."""
    best: dict[tuple, dict] = {}
    for e in events:
        if e["event_type"] != "purchase":
            continue
        key = (e["tenant"], e["customer_id"] or e["anonymous_id"], e["order_id"])
        if key not in best or (e["event_time"], id_hash(e["event_id"])) < (best[key]["event_time"],
                                                                            id_hash(best[key]["event_id"])):
            best[key] = e
    return best


def recount(events: list[dict], clock: int) -> tuple[dict, dict, dict]:
    """(tenant, window, currency) -> [orders, minor units]; (tenant, window) -> active customers; tenant ->
    (purchasing, repeat) customers in 30d: straight from the definitions in docs/metrics.md."""
    money: dict = {}
    per_customer: Counter = Counter()
    for e in winners(events).values():
        exponent = minor_unit(e["currency"])
        minor = int((Decimal(repr(e["revenue"])) * 10 ** exponent).to_integral_value())
        for label, window in WINDOWS.items():
            if e["event_time"] // MIN > (clock - window) // MIN:
                acc = money.setdefault((e["tenant"], label, e["currency"]), [0, 0])
                acc[0] += 1
                acc[1] += minor
        if e["customer_id"] and e["event_time"] // MIN > (clock - 30 * DAY) // MIN:
            per_customer[(e["tenant"], e["customer_id"])] += 1
    active: dict = defaultdict(set)
    for e in events:
        for label, window in WINDOWS.items():
            if e["customer_id"] and e["event_time"] // MIN > (clock - window) // MIN:
                active[(e["tenant"], label)].add(e["customer_id"])
    buyers: dict = {}
    for (tenant, _), n in per_customer.items():
        buying, repeat = buyers.get(tenant, (0, 0))
        buyers[tenant] = (buying + 1, repeat + (n >= 2))
    return money, {k: len(v) for k, v in active.items()}, buyers


def scanned(orders: OrdersCore, state, clock: int) -> tuple[dict, dict]:
    """(tenant, window) -> active customers and tenant -> (purchasing, repeat) customers, counted over the state's
    customers and orders at every call: the recomputation the kept counts replace."""
    active = {(tenant, label): n for label, window in WINDOWS.items()
              for tenant, n in state.active.count_since((clock - window) // MIN).items() if n}
    start = (clock - orders.repeat_window[1]) // MIN
    per_customer = Counter((o.tenant, o.customer) for o in state.orders.values() if o.customer and o.ms // MIN > start)
    buyers: dict = {}
    for (tenant, _), n in per_customer.items():
        buying, repeat = buyers.get(tenant, (0, 0))
        buyers[tenant] = (buying + 1, repeat + (n >= 2))
    return active, buyers


def kept(orders: OrdersCore, state, clock: int) -> tuple[dict, dict]:
    return orders.active_customers([state], [clock]), orders.buyers([state], [clock])


def gauges(orders: OrdersCore, states, clock: int) -> dict[str, dict[tuple, float]]:
    return {f.name: {tuple(s.labels.values()): s.value for s in f.samples}
            for f in orders.collect(states, [clock] * len(states))}


order_strategy = st.tuples(
    st.sampled_from(["acme", "globex"]), st.sampled_from(["c1", "c2", "c3", None]),
    st.integers(0, 40 * 24 * 60), st.sampled_from([0.0, 0.01, 0.1, 0.2, 19.99, 59.9, 1234.56]),
    st.sampled_from(["EUR", "JPY", "KWD"]), st.lists(st.integers(-3 * 24 * 60, 3 * 24 * 60), max_size=3))


def build(raw) -> list[tuple[str, dict]]:
    """Orders with their copies: each copy is the same purchase re-sent under a new event id up to three days
    earlier or later (an order id reused after the core's memory would be a new order)."""
    items, n = [], 0
    for number, (tenant, customer, minute, revenue, currency, copies) in enumerate(raw):
        buyer = {"customer_id": customer, "anonymous_id": None if customer else "anon-1"}
        for shift in [0, *copies]:
            n += 1
            at = T0 + max(minute + shift, 0) * MIN + n
            items.append(("web", purchase(f"e{n:04d}", at, f"o{number % 7}-{minute}", revenue, currency, tenant,
                                          **buyer)))
    # other events of the customers, for the active count behind ARPU
    items += [("crm", {"event_id": f"x{i}", "event_type": "contact_logged", "event_time": T0 + i * 7 * HOUR,
                       "tenant": "acme", "customer_id": f"c{4 + i % 3}"}) for i in range(0, 140, 9)]
    return items


@settings(max_examples=120, deadline=None)
@given(st.lists(order_strategy, min_size=1, max_size=30), st.randoms(use_true_random=False), st.integers(0, 60))
def test_each_order_counts_once_whatever_the_copies_and_their_order_and_a_replay_changes_nothing(raw, rng, cut):
    items = build(raw)
    shuffled = items[:]
    rng.shuffle(shuffled)
    orders = core()
    state, accepted = orders.new_state(1), []
    out = feed(orders, state, shuffled, rng, accepted)
    events = [e for _, e in accepted]
    clock = max(e["event_time"] for e in events)
    money, active, buyers = recount(events, clock)
    assert orders.totals([state], [clock]) == money
    assert orders.active_customers([state], [clock]) == active
    assert orders.buyers([state], [clock]) == buyers
    assert kept(orders, state, clock) == scanned(orders, state, clock)
    # the newest row of each order is its earliest purchase, in minor units
    latest = {}
    for row in out.rows["orders"]:
        key = (row.tenant, row.buyer, row.order_id)
        assert key not in latest or row.updated_ms > latest[key].updated_ms
        latest[key] = row
    assert {k: (r.order_ms, r.event_id, r.currency) for k, r in latest.items()} == {
        k: (e["event_time"], e["event_id"], e["currency"]) for k, e in winners(events).items()}
    # rebuilt from those rows and the events, then fed everything again: the same numbers, no new row
    rebuilt = orders.new_state(1)
    restore(orders, rebuilt, "orders", [(r.tenant, r.buyer, r.order_id, r.customer_id, r.order_ms, r.event_id,
                                         r.currency, r.amount_minor, r.updated_ms) for r in latest.values()], clock)
    last_seen = {}
    for e in events:
        if e["customer_id"]:
            key = (e["tenant"], e["customer_id"])
            last_seen[key] = max(last_seen.get(key, 0), e["event_time"])
    restore(orders, rebuilt, "active", [(t, c, ms) for (t, c), ms in last_seen.items()], clock)
    assert kept(orders, rebuilt, clock) == scanned(orders, rebuilt, clock) == (active, buyers)
    again = feed(orders, rebuilt, shuffled[cut:] + shuffled[:cut], rng)
    assert again.row_count() == 0
    assert gauges(orders, [rebuilt], clock) == gauges(orders, [state], clock)
    # the clock moves on (the windows, the expiry and the sweep with it): the kept counts follow it
    for step in (MIN, HOUR, 7 * HOUR, 2 * DAY, 9 * DAY, 31 * DAY):
        for s in (state, rebuilt):
            orders.tick(s, clock + step, Output())
            assert kept(orders, s, clock + step) == scanned(orders, s, clock + step)


def test_gauges_divide_exact_sums_and_an_earlier_copy_moves_the_order():
    orders = core()
    state, out = orders.new_state(0), Output()
    items = [("web", purchase("a", T0, "o1", 0.1)), ("web", purchase("b", T0 + MIN, "o2", 0.2)),
             ("web", purchase("c", T0 + 2 * MIN, "o3", 1500.0, "JPY", customer_id="c2")),
             ("web", purchase("d", T0 + 3 * MIN, "o1", 0.1))]  # o1 re-sent under a new id: nothing changes
    orders.add(state, Batch.of(0, items), out)
    orders.tick(state, T0 + 3 * MIN, out)
    got = gauges(orders, [state], T0 + 3 * MIN)
    assert got["cx_orders"][("acme", "1h", "EUR")] == 2 and got["cx_revenue"][("acme", "1h", "EUR")] == 0.3  # not 0.30000000000000004
    assert got["cx_average_order_value"][("acme", "1h", "EUR")] == 0.15
    assert got["cx_revenue"][("acme", "1h", "JPY")] == 1500 and got["cx_orders_active_customers"][("acme", "1h")] == 2
    assert got["cx_revenue_per_active_customer"][("acme", "1h", "JPY")] == 750
    assert got["cx_repeat_customers"][("acme", "30d")] == 1 and got["cx_repeat_purchase_ratio"][("acme", "30d")] == 0.5
    assert [(r.order_id, r.amount_minor, r.minor_unit) for r in out.rows["orders"]] == [
        ("o1", 10, 2), ("o2", 20, 2), ("o3", 1500, 0)]
    # a copy of o2 with an earlier time (the original, delivered late) moves the order to it, out of the 1h window
    orders.add(state, Batch.of(0, [("web", purchase("e", T0 - 2 * HOUR, "o2", 0.2))]), out)
    orders.tick(state, T0 + 3 * MIN, out)
    got = gauges(orders, [state], T0 + 3 * MIN)
    assert got["cx_orders"][("acme", "1h", "EUR")] == 1 and got["cx_orders"][("acme", "24h", "EUR")] == 2
    assert out.rows["orders"][-1].order_ms == T0 - 2 * HOUR and out.rows["orders"][-1].updated_ms > out.rows["orders"][1].updated_ms


def test_currencies_beyond_the_cap_count_as_other_orders_without_revenue():
    orders = core(max_currencies=2)
    state, out = orders.new_state(0), Output()
    items = [("web", purchase(f"e{i}", T0 + i, f"o{i}", 10.0, currency))
             for i, currency in enumerate(["EUR"] * 3 + ["USD"] * 2 + ["GBP", "CHF"])]
    orders.add(state, Batch.of(0, items), out)
    orders.tick(state, T0 + 10, out)
    got = gauges(orders, [state], T0 + 10)
    assert {k[2]: v for k, v in got["cx_orders"].items() if k[1] == "1h"} == {"EUR": 3, "USD": 2, "other": 2}
    assert {k[2] for k in got["cx_revenue"]} == {"EUR", "USD"} and not any("other" in k for k in got["cx_average_order_value"])


def test_revenue_is_exact_to_the_cent_over_a_long_replay():
    """120,000 orders in three currencies (two, zero and three decimals), each sent once or twice, in batches:
    the gauges equal the exact decimal sums, where adding the doubles as sent drifts."""
    rng = random.Random(5)
    orders = core()
    state, out = orders.new_state(0), Output()
    exact: dict[str, Decimal] = Counter()
    floats: dict[str, float] = Counter()
    start = T0 - 20 * DAY
    batch = []
    for i in range(120_000):
        currency = ("EUR", "JPY", "KWD")[i % 3]
        digits = minor_unit(currency)
        text = f"{rng.randrange(1, 10**6) / 10**digits:.{digits}f}"
        exact[currency] += Decimal(text)
        floats[currency] += float(text)
        event = purchase(f"e{i}", start + i * 12_000, f"o{i}", float(text), currency, customer_id=f"c{i % 5000}")
        batch += [("web", event)] * (1 + (i % 7 == 0))  # every 7th sent twice
        if len(batch) >= 500:
            orders.add(state, Batch.of(0, batch), out)
            orders.tick(state, event["event_time"], out)
            batch = []
    orders.add(state, Batch.of(0, batch), out)
    clock = start + 119_999 * 12_000
    orders.tick(state, clock, out)
    revenue = {k[2]: v for k, v in gauges(orders, [state], clock)["cx_revenue"].items() if k[1] == "30d"}
    assert {c: Decimal(repr(v)) for c, v in revenue.items()} == exact
    assert sum(r.amount_minor for r in out.rows["orders"]) == sum(int(v.scaleb(minor_unit(c))) for c, v in exact.items())
    assert any(Decimal(repr(floats[c])) != exact[c] for c in exact), "the doubles did not drift: the test can't tell"


def test_orders_and_customers_are_forgotten_after_the_memory():
    orders = core()
    state, out = orders.new_state(0), Output()
    orders.add(state, Batch.of(0, [("web", purchase("a", T0, "o1", 5.0))]), out)
    orders.tick(state, T0, out)
    orders.tick(state, T0 + 31 * DAY, out)  # other sources ahead: a copy of the order may still come
    assert len(state.orders) == 1 and len(state.active) == 0 and orders.totals([state], [T0 + 31 * DAY]) == {}
    page_view = dict(purchase("b", T0 + 31 * DAY, "-", 0.0), event_type="page_view")  # the web's own clock moves past
    orders.add(state, Batch.of(0, [("web", page_view)]), out)
    orders.tick(state, T0 + 32 * DAY, out)
    assert state.orders == {}


def test_a_late_copy_of_an_order_is_no_new_order_when_the_topic_is_behind():
    """The web topic consumed weeks behind the others (lateness is judged per topic-partition): a copy of an
    order comes, within max lateness of the web's clock, when the partition's clock is past the memory after the
    order. The order is still known: it is not counted again, and its row is not rewritten."""
    orders = core()
    state, out = orders.new_state(0), Output()
    orders.add(state, Batch.of(0, [("web", purchase("a", T0, "o1", 5.0))]), out)
    orders.tick(state, T0, out)
    clock = T0 + 31 * DAY + HOUR  # crm, chatbot, complaints events of this partition
    orders.tick(state, clock, out)
    orders.add(state, Batch.of(0, [("web", purchase("a2", T0 + 2 * DAY, "o1", 5.0))]), out)  # re-sent 2 days later
    orders.tick(state, clock, out)
    assert len(out.rows["orders"]) == 1
    assert orders.totals([state], [clock]) == {}  # the order is before the 30d window; its copy counts nowhere


def test_bytes_per_customer():
    """What a month of orders costs per customer (two orders each), with their last-seen minute (figure for
    docs/performance.md)."""
    orders = core()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state, out = orders.new_state(0), Output()
    for day in (0, 15):
        items = [("web", purchase(f"e{day}-{i}", T0 + day * DAY + i, f"order-{day}-{i:06d}", 42.5,
                                  customer_id=f"cust-{i:06d}")) for i in range(5000)]
        orders.add(state, Batch.of(0, items), out)
        orders.tick(state, T0 + day * DAY + 5000, out)
    del out, items
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_customer = sum(s.size_diff for s in after.compare_to(before, "filename")) / 5000
    print(f"orders state: {per_customer:.0f} bytes per customer with two orders")
    assert per_customer < 1200
