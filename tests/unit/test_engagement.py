"""Active customers, complaint customers and stickiness against a naive distinct count over the input."""
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Facts, Output
from pipeline.metrics.engagement import EngagementCore
from pipeline.metrics.facts import ComplaintOpened
from pipeline.metrics.lastseen import LastSeen

DAY = 86_400_000
WINDOWS = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
T0 = 1_780_000_000_000


def naive(events, clock, window):
    """(tenant -> distinct customers) with an event in the window, minute-rounded like every core."""
    out = {}
    for tenant, customer, t in events:
        if t // 60_000 > (clock - window) // 60_000:
            out.setdefault(tenant, set()).add(customer)
    return {tenant: len(customers) for tenant, customers in out.items()}


def feed(core, state, messages, complaints=()):
    """Each message is a list of (tenant, customer or None, t); complaints are published as the fact."""
    clock = 0
    for i, message in enumerate(messages):
        out = Output()
        events = [{"event_id": f"e{i}-{j}", "tenant": tenant, "customer_id": c, "event_time": t}
                  for j, (tenant, c, t) in enumerate(message)]
        core.add(state, Batch(0, ["web"] * len(events), events, list(range(len(events)))), out)
        clock = max([clock] + [t for _, _, t in message])
        core.take(state, Facts(ComplaintOpened(tenant, c, f"k{i}-{j}", t) for j, (tenant, c, t) in enumerate(complaints)
                               if j % len(messages) == i), out)  # published in tick, taken before the tick
        core.tick(state, clock, Output())
    return clock


event = st.tuples(st.sampled_from(["acme", "globex"]), st.one_of(st.none(), st.sampled_from([f"c{i}" for i in range(40)])),
                  st.integers(T0, T0 + 45 * DAY))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(event, min_size=1, max_size=8), min_size=1, max_size=30),
       st.lists(event.filter(lambda e: e[1] is not None), max_size=10), st.booleans())
def test_counts_equal_a_naive_distinct_count(messages, complaints, replay):
    core = EngagementCore(WINDOWS)
    state = core.new_state(0)
    clock = feed(core, state, messages * (2 if replay else 1), complaints)
    events = [e for message in messages for e in message if e[1] is not None]
    for label, window in WINDOWS.items():
        expected_active = naive(events, clock, window)
        expected_complained = naive(complaints, clock, window)
        for tenant in {"acme", "globex"}:
            got = core.totals([state], [clock]).get((tenant, label), (0, 0))
            assert got == (expected_active.get(tenant, 0), expected_complained.get(tenant, 0)), (tenant, label)
    for later in (clock + DAY, clock + 8 * DAY, clock + 29 * DAY):  # the windows move on without events
        for label, window in WINDOWS.items():
            got = {tenant: active for (tenant, w), (active, _) in core.totals([state], [later]).items() if w == label}
            assert {t: n for t, n in got.items() if n} == naive(events, later, window)
    for label, window in WINDOWS.items():  # the clock of the last tick, now before the kept one: counted afresh
        got = {tenant: active for (tenant, w), (active, _) in core.totals([state], [clock]).items() if w == label}
        assert {t: n for t, n in got.items() if n} == naive(events, clock, window)
    month = naive(events, clock, 30 * DAY)
    expected_sticky = {t: naive(events, clock, DAY).get(t, 0) / n for t, n in month.items()}
    assert core.stickiness([state], [clock]) == expected_sticky


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(event, min_size=1, max_size=8), min_size=2, max_size=20), st.integers(1, 19))
def test_partitions_add_up_and_restore_rebuilds_the_same_counts(messages, cut):
    """Two partitions summed equal one naive count; a state restored from (tenant, customer, max t) rows
    and then fed the rest of the input equals one that saw everything."""
    core = EngagementCore(WINDOWS)
    by_partition = [core.new_state(0), core.new_state(0)]
    for message in messages:
        for p in (0, 1):
            part = [e for e in message if e[1] is not None and int(e[1][1:]) % 2 == p]
            if part:
                feed(core, by_partition[p], [part])
    cut = min(cut, len(messages) - 1)
    whole, restored = core.new_state(0), core.new_state(0)
    feed(core, whole, messages)
    seen = {}
    for tenant, customer, t in (e for message in messages[:cut] for e in message if e[1] is not None):
        seen[(tenant, customer)] = max(seen.get((tenant, customer), 0), t)
    active = next(spec for spec in core.restores() if spec.name == "active")
    core.restore(restored, "active", [active.row_type()(tenant, c, t) for (tenant, c), t in seen.items()], 0)
    feed(core, restored, messages[cut:])
    clock = max(t for message in messages for _, _, t in message)  # anonymous events move the clock too
    events = [e for message in messages for e in message if e[1] is not None]
    for label, window in WINDOWS.items():
        expected = naive(events, clock, window)
        for totals in (core.totals(by_partition, [clock] * 2), core.totals([whole], [clock]), core.totals([restored], [clock])):
            assert {t: a for (t, w), (a, _) in totals.items() if w == label and a} == expected


def test_expiry_after_the_largest_window_and_bytes_per_customer():
    core = EngagementCore(WINDOWS)
    state = core.new_state(0)
    feed(core, state, [[("acme", f"c{i}", T0 + i * 1000) for i in range(10_000)]])
    store = state.active
    assert len(store) == 10_000 and store.nbytes() / len(store) == 14  # 8 key + 4 minute + 2 tenant
    core.tick(state, T0 + 30 * DAY + 60_000 + 5_000, Output())
    assert 0 < len(store) < 10_000  # those seen in the first minute left the 30-day window
    core.tick(state, T0 + 31 * DAY, Output())
    assert len(store) == 0


def test_later_and_earlier_events_keep_the_latest_minute():
    store = LastSeen()
    store.note("acme", "c1", 10 * 60_000)
    store.merge()
    store.note("acme", "c1", 5 * 60_000)  # late event: must not move the customer back
    store.note("acme", "c2", 7 * 60_000)
    assert store.count_since(9) == {"acme": 1}
    assert store.count_since(6) == {"acme": 2}


def test_gauges():
    core = EngagementCore(WINDOWS)
    state = core.new_state(0)
    clock = feed(core, state, [[("acme", "c1", T0), ("acme", "c2", T0 + 20 * DAY)]], [("acme", "c2", T0 + 20 * DAY)])
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in core.collect([state], [clock])}
    assert families["cx_active_customers"] == {("acme", "1d"): 1, ("acme", "7d"): 1, ("acme", "30d"): 2}
    assert families["cx_complaint_customers"] == {("acme", "1d"): 1, ("acme", "7d"): 1, ("acme", "30d"): 1}
    assert families["cx_complaint_customer_ratio"][("acme", "30d")] == 0.5
    assert families["cx_stickiness_ratio"] == {("acme",): 0.5}
