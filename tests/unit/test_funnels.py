"""The funnel core against a brute-force reading of its definition.

Oracles, written independently of the core:
* ``window_funnel``: ClickHouse 18.16's windowFunnel, transcribed (events sorted by time with ties in
  event_id order, each event expanded into its matching steps from the highest down, one pass that
  keeps the latest start of each level);
* ``all_chains``: every in-order combination of events from a step-1 event (itertools), for the
  attempts, the step times, and the conversions.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.funnel_defs import FunnelConfigError, load_funnels, parse_funnels
from pipeline.metrics import funnels as funnels_module
from pipeline.metrics.funnels import CONVERSION_SECONDS, FunnelCore, conversion_buckets
from pipeline.settings import Settings
from pipeline.tables import COLUMNS
from tests.unit.cores import batch as batch_of
from tests.unit.cores import mixed_event_id, restore

MIN = 60_000
T0 = 1_790_000_000_000 - 1_790_000_000_000 % MIN
WINDOWS = {"2m": 2 * MIN, "6m": 6 * MIN}  # short, so state expires within a drawn stream
LATENESS = 8 * MIN
FUNNELS = parse_funnels({"funnels": [
    {"name": "buy", "window": "5m", "steps": ["view", "cart", "pay"]},
    # "view" with plan=pro matches steps 1 and 2 of "pro": one event, two steps
    {"name": "pro", "window": "3m", "steps": [
        "view", {"event_type": "view", "name": "pro_view", "where": {"plan": "pro"}},
        {"event_type": "pay", "source": "crm"}]},
]})


# -- oracles ------------------------------------------------------------------------------------
def step_masks(funnel, source, event) -> int:
    """Which steps an event matches (bit 32: an exclusion), read straight from the definition."""
    def matches(step):
        return (event["event_type"] == step.event_type and step.source in (None, source)
                and all(event["attributes"].get(k) == v for k, v in step.where))

    return sum(1 << i for i, step in enumerate(funnel.steps) if matches(step)) | \
        (any(map(matches, funnel.exclusions)) << 32)


def customer_events(funnel, delivered, tenant, customer, since_ms=-(2**62)):
    """[(ms, event_id, mask)] of one customer in funnel order, from since_ms on."""
    return sorted((e["event_time"], e["event_id"], step_masks(funnel, source, e)) for source, e in delivered
                  if (e["tenant"], e["customer_id"]) == (tenant, customer) and e["event_time"] >= since_ms
                  and step_masks(funnel, source, e))


def window_funnel(events, steps: int, window_ms: int) -> int:
    entries = [(ms, i) for ms, _, mask in events for i in reversed(range(steps)) if mask >> i & 1]
    latest_start = [None] * steps
    for ms, i in entries:
        if i == 0:
            latest_start[0] = ms
        elif latest_start[i - 1] is not None and ms <= latest_start[i - 1] + window_ms:
            latest_start[i] = latest_start[i - 1]
            if i + 1 == steps:
                return steps
    return max((i + 1 for i, s in enumerate(latest_start) if s is not None), default=0)


def all_chains(events, start: int, steps: int, window_ms: int):
    """Every valid attempt from event index start: index tuples, in order."""
    later = range(start + 1, len(events))
    for length in range(1, steps + 1):
        for rest in itertools.combinations(later, length - 1):
            chain = (start, *rest)
            if all(events[j][2] >> k & 1 for k, j in enumerate(chain)) and \
                    events[chain[-1]][0] <= events[start][0] + window_ms:
                yield chain


def attempts_and_conversions(funnel, events):
    """start_ms -> (level, step times) and last-step event id -> seconds from the latest start."""
    steps, attempts, conversions = len(funnel.steps), {}, {}
    for i, (ms, _, mask) in enumerate(events):
        if not mask & 1:
            continue
        chains = list(all_chains(events, i, steps, funnel.window_ms))
        longest = max(map(len, chains))
        first = min(c for c in chains if len(c) == longest)
        if longest > attempts.get(ms, (0,))[0]:
            attempts[ms] = (longest, tuple(events[j][0] for j in first))
        full = [c for c in chains if len(c) == steps]
        if full:
            end = min(c[-1] for c in full)  # the attempt ends at its earliest possible last step
            conversions[events[end][1]] = (events[end][0] - ms) / 1000  # later starts overwrite
    return attempts, conversions


# -- driving the core ----------------------------------------------------------------------------
def make_core(funnels=FUNNELS) -> FunnelCore:
    return FunnelCore(funnels, WINDOWS, LATENESS)


def deliver(core, state, messages, out=None):
    """Feed messages [(source, [events])] with a tick after each, as the processor does."""
    out = out or Output()
    clock = state.clock_ms
    for offset, (source, events) in enumerate(messages):
        core.add(state, batch_of(source, 3, events), out)
        clock = max([clock] + [e["event_time"] for e in events])
        core.tick(state, clock, out)
    return out


event_strategy = st.tuples(
    st.sampled_from(["acme", "globex"]), st.sampled_from(["c1", "c1", "c2", None]),
    st.sampled_from(["view", "view", "cart", "pay", "other"]),
    st.one_of(st.integers(0, 3), st.integers(0, 40)),  # half minutes over 20 min; often the same one
    st.sampled_from(["web", "crm"]), st.sampled_from(["pro", "free"]),
)


def build_stream(raw, seed: int, lateness_ms: int = LATENESS):
    """Events from drawn tuples, then an arrival order in which none is more than lateness_ms behind
    anything delivered before it, cut into messages of 1 to 3 events of one source."""
    events = [(source, {"event_id": mixed_event_id(i), "event_type": kind, "event_time": T0 + slot * 30_000,
                        "tenant": tenant, "customer_id": customer, "session_id": None,
                        "attributes": {"plan": plan}})
              for i, (tenant, customer, kind, slot, source, plan) in enumerate(raw)]
    rng = random.Random(seed)
    order = sorted(events, key=lambda se: se[1]["event_time"] + rng.uniform(0, lateness_ms))
    messages, i = [], 0
    while i < len(order):
        source, batch = order[i][0], []
        for s, e in order[i:i + rng.randint(1, 3)]:
            if s != source:
                break
            batch.append(e)
        messages.append((source, batch))
        i += len(batch)
    return events, messages


def latest_rows(out):
    """funnel_progress as ReplacingMergeTree(updated_ms) leaves it; versions must strictly increase."""
    names = COLUMNS["funnel_progress"]
    latest = {}
    for row in out.rows["funnel_progress"]:
        r = dict(zip(names, row))
        key = (r["tenant"], r["funnel"], r["customer_id"], r["started_ms"])
        assert key not in latest or r["updated_ms"] > latest[key]["updated_ms"]
        latest[key] = r
    return latest


def customers_of(events):
    return sorted({(e["tenant"], e["customer_id"]) for _, e in events if e["customer_id"] is not None})


# -- properties ----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=14), st.integers(0, 10**6))
def test_levels_windows_rows_and_conversions_match_brute_force(raw, seed):
    events, messages = build_stream(raw, seed)
    core, state = make_core(), make_core().new_state(3)
    out = deliver(core, state, messages)
    clock = max(e["event_time"] for _, e in events)
    rows = latest_rows(out)
    expected_counts = {}
    converted = Counter()
    for funnel in FUNNELS:
        steps = len(funnel.steps)
        for tenant, customer in customers_of(events):
            mine = customer_events(funnel, events, tenant, customer)
            attempts, conversions = attempts_and_conversions(funnel, mine)
            for start_ms, (level, times) in attempts.items():
                row = rows.pop((tenant, funnel.name, customer, start_ms))
                assert (row["level"], row["step_ms"]) == (level, list(times) + [0] * (steps - level))
                assert row["started_at"] == start_ms // 1000 and row["kafka_partition"] == 3
            converted[(tenant, funnel.name)] += len(conversions)
            for label, window in WINDOWS.items():
                first = ((clock - window) // MIN + 1) * MIN
                level = window_funnel(customer_events(funnel, events, tenant, customer, first), steps, funnel.window_ms)
                counts = expected_counts.setdefault((tenant, FUNNELS.index(funnel), label), [0] * steps)
                for k in range(level):
                    counts[k] += 1
    assert rows == {}  # no row for an attempt that does not exist
    got = {key: counts for key, counts in core.at_least([state], [clock]).items() if any(counts)}
    assert got == {key: counts for key, counts in expected_counts.items() if any(counts)}
    # each conversion observed once at most, and every final one at least once
    observed = Counter(labels for name, labels, _ in out.observations if name == CONVERSION_SECONDS)
    for label in set(observed) | set(converted):
        assert converted[label] <= observed[label]
    last_steps = Counter((e["tenant"], f.name) for f in FUNNELS for s, e in events
                         if e["customer_id"] and step_masks(f, s, e) >> (len(f.steps) - 1) & 1)
    assert all(observed[label] <= last_steps[label] for label in observed)
    # the same input again (what is not too late by now) changes nothing and observes nothing
    replay = [(s, [e for e in batch if e["event_time"] >= clock - LATENESS]) for s, batch in messages]
    again = deliver(core, state, [(s, batch) for s, batch in replay if batch])
    assert again.row_count() == 0 and again.observations == []
    assert funnels_module._NONE == []  # the new tracks' shared empty list was never added to


@settings(max_examples=100, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=14))
def test_whole_history_level_is_window_funnel_and_in_order_conversions_are_exact(raw):
    events, _ = build_stream(raw, 0)
    in_order = [(s, [e]) for s, e in sorted(events, key=lambda se: (se[1]["event_time"], se[1]["event_id"]))]
    core = make_core()
    state = core.new_state(3)
    out = Output()
    for offset, (source, batch) in enumerate(in_order):  # no tick: nothing expires
        core.add(state, batch_of(source, 0, batch), out)
    levels = core.levels(state)
    expected_seconds = Counter()
    for funnel in FUNNELS:
        for tenant, customer in customers_of(events):
            mine = customer_events(funnel, events, tenant, customer)
            assert levels.get((tenant, customer, funnel.name), 0) == window_funnel(mine, len(funnel.steps), funnel.window_ms)
            for seconds in attempts_and_conversions(funnel, mine)[1].values():
                expected_seconds[((tenant, funnel.name), seconds)] += 1
    assert Counter((labels, v) for _, labels, v in out.observations) == expected_seconds


@settings(max_examples=60, deadline=None)
@given(st.lists(event_strategy, min_size=2, max_size=14), st.integers(0, 10**6), st.integers(1, 10))
def test_restore_from_the_events_table_continues_exactly(raw, seed, cut):
    """A worker restored from what the first messages wrote carries on like the one that never stopped."""
    _, messages = build_stream(raw, seed)
    cut = min(cut, len(messages) - 1)
    core = make_core()
    original = core.new_state(3)
    written = deliver(core, original, messages[:cut])
    clock = original.clock_ms
    since = clock - core.restore_span_ms()
    restored = core.new_state(3)
    assert {spec.name for spec in core.restores()} == {"funnel_versions", "funnel_events"}
    names = COLUMNS["funnel_progress"]
    versions = {}
    for row in written.rows["funnel_progress"]:
        r = dict(zip(names, row))
        key = (r["tenant"], r["funnel"], r["customer_id"], r["started_ms"])
        versions[key] = max(versions.get(key, 0), r["updated_ms"])
    restore(core, restored, "funnel_versions", [k + (v,) for k, v in versions.items() if k[3] >= since], clock)
    event_rows = [(source, e["event_type"], e["event_time"], e["event_id"], e["tenant"], e["customer_id"],
                   list(e["attributes"]), list(e["attributes"].values()))
                  for source, batch in messages[:cut] for e in batch
                  if e["customer_id"] is not None and e["event_time"] >= since and e["event_type"] in ("view", "cart", "pay")]
    restore_out = Output()
    restore(core, restored, "funnel_events", event_rows, clock)
    core.tick(restored, clock, restore_out)
    assert restore_out.row_count() == 0 and restore_out.observations == []
    assert core.at_least([restored], [clock]) == core.at_least([original], [clock])
    rest_original, rest_restored = deliver(core, original, messages[cut:]), deliver(core, restored, messages[cut:])
    assert rest_restored.rows == rest_original.rows
    assert rest_restored.observations == rest_original.observations
    assert core.at_least([restored], [restored.clock_ms]) == core.at_least([original], [original.clock_ms])


@settings(max_examples=200, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=14), st.integers(0, 10**6),
       st.lists(st.integers(0, 4 * MIN), min_size=1, max_size=6))
def test_kept_gauge_equals_counting_every_track(raw, seed, quiet_steps):
    """The gauge kept per batch (what a scrape reads) equals counting every track afresh, after every
    batch and as the clock moves on without events (window boundaries passing attempts, expiry)."""
    _, messages = build_stream(raw, seed)
    core = make_core()
    state, out = core.new_state(3), Output()
    for source, events in messages:
        core.add(state, batch_of(source, 3, events), out)
        clock = max([state.clock_ms] + [e["event_time"] for e in events])
        core.tick(state, clock, out)
        assert core.at_least([state], [clock]) == core.count_tracks(state, clock)
    clock = state.clock_ms
    for step in quiet_steps:
        clock += step
        core.tick(state, clock, out)
        assert core.at_least([state], [clock]) == core.count_tracks(state, clock)
    assert core.at_least([state], [clock + 5 * MIN]) == core.count_tracks(state, clock + 5 * MIN)  # read ahead
    assert core.at_least([state], [T0]) == core.count_tracks(state, T0)  # an earlier clock: counted afresh


# -- examples a CX analyst would ask about --------------------------------------------------------
def run(events, funnels=FUNNELS):
    """Deliver (event_type, minute offset, event_id[, attrs]) for one customer, in the given order."""
    core = make_core(funnels)
    state = core.new_state(3)
    out = Output()
    for i, (kind, minutes, event_id, *attrs) in enumerate(events):
        event = {"event_id": event_id, "event_type": kind, "event_time": T0 + int(minutes * MIN), "tenant": "acme",
                 "customer_id": "c1", "attributes": attrs[0] if attrs else {}}
        core.add(state, batch_of("web", 0, [event]), out)
    return core.levels(state).get(("acme", "c1", "buy"), 0), out


def test_same_millisecond_is_taken_in_event_id_order():
    assert run([("view", 0, "b"), ("cart", 0, "a")])[0] == 1  # the cart "came first"
    assert run([("view", 0, "a"), ("cart", 0, "b")])[0] == 2


def test_one_event_matching_two_steps_counts_as_one_of_them():
    core = make_core()
    state = core.new_state(3)
    pro_view = {"event_id": "x", "event_type": "view", "event_time": T0, "tenant": "acme", "customer_id": "c1",
                "attributes": {"plan": "pro"}}
    core.add(state, batch_of("web", 0, [pro_view]), Output())
    assert core.levels(state)[("acme", "c1", "pro")] == 1
    core.add(state, batch_of("web", 0, [dict(pro_view, event_id="y", event_time=T0 + 1)]), Output())
    assert core.levels(state)[("acme", "c1", "pro")] == 2


def test_conversion_is_timed_from_the_latest_restart_and_counted_once():
    level, out = run([("view", 0, "a"), ("view", 2, "b"), ("cart", 3, "c"), ("pay", 4, "d"), ("pay", 4.5, "e")])
    assert level == 3
    assert [(labels, v) for _, labels, v in out.observations] == [(("acme", "buy"), 120.0)]
    rows = latest_rows(out)
    assert {k[3]: (r["level"], r["step_ms"]) for k, r in rows.items() if k[1] == "buy"} == {
        T0: (3, [T0, T0 + 3 * MIN, T0 + 4 * MIN]), T0 + 2 * MIN: (3, [T0 + 2 * MIN, T0 + 3 * MIN, T0 + 4 * MIN])}


def test_a_late_step_fills_the_gap_and_the_window_is_inclusive():
    level, out = run([("view", 0, "a"), ("pay", 5, "c"), ("cart", 1, "b")])
    assert level == 3 and [v for _, _, v in out.observations] == [300.0]
    assert run([("view", 0, "a"), ("cart", 1, "b"), ("pay", 5.001, "c")])[0] == 2


def test_a_step_up_to_max_lateness_late_still_joins_its_attempt():
    """The view is 9 minutes behind the clock when its cart arrives 7 minutes late: its attempt has
    left every metric window, but a late step may still reach it, so it is kept and updated."""
    core = make_core()
    state = core.new_state(3)
    out = Output()
    view, cart, other = ({"event_id": i, "event_type": k, "event_time": T0 + m * MIN, "tenant": "acme",
                          "customer_id": c, "attributes": {}}
                         for i, k, m, c in (("v", "view", 0, "c1"), ("c", "cart", 2, "c1"), ("o", "view", 9, "c2")))
    deliver(core, state, [("web", [view]), ("web", [other]), ("web", [cart])], out)
    assert latest_rows(out)[("acme", "buy", "c1", T0)]["level"] == 2


def test_anonymous_and_unrelated_events_leave_no_state():
    core = make_core()
    state = core.new_state(3)
    out = Output()
    core.add(state, batch_of("web", 0, [
        {"event_id": "a", "event_type": "view", "event_time": T0, "tenant": "acme", "customer_id": None, "attributes": {}},
        {"event_id": "b", "event_type": "search", "event_time": T0, "tenant": "acme", "customer_id": "c1", "attributes": {}},
    ]), out)
    assert state.tracks == {} and out.row_count() == 0


def test_gauges_and_snapshot():
    core = make_core()
    state = core.new_state(3)
    for i, kinds in enumerate([("view", "cart", "pay"), ("view", "cart"), ("view",)]):
        events = [{"event_id": f"{i}{j}", "event_type": k, "event_time": T0 + j * MIN, "tenant": "acme",
                   "customer_id": f"c{i}", "attributes": {}} for j, k in enumerate(kinds)]
        core.add(state, batch_of("web", 0, events), Output())
    clock = T0 + 2 * MIN  # the 2m window starts at T0 + 1 min: no attempt started in it
    customers, ratio = core.collect([state, core.new_state(3)], [clock, 0])
    buy = {(s.labels["step"], s.labels["window"]): s.value for s in customers.samples if s.labels["funnel"] == "buy"}
    assert buy == {("view", "6m"): 3, ("cart", "6m"): 2, ("pay", "6m"): 1,
                   ("view", "2m"): 0, ("cart", "2m"): 0, ("pay", "2m"): 0}
    # nobody started an attempt in the 2m window: no ratio there
    assert {(s.labels["funnel"], s.labels["window"]): s.value for s in ratio.samples} == {
        ("buy", "6m"): 1 / 3, ("pro", "6m"): 0.0}
    assert list(core.snapshot([state], [clock])) == [("acme", "funnel_conversion:buy", "6m", 1 / 3, 3),
                                                   ("acme", "funnel_conversion:pro", "6m", 0.0, 3)]
    later = {(s.labels["step"], s.labels["window"]): s.value for s in core.collect([state], [T0 + 7 * MIN])[0].samples
             if s.labels["funnel"] == "buy"}
    assert later[("view", "6m")] == 0
    assert [m.name for m in core.describe()] == ["cx_funnel_customers", "cx_funnel_conversion_ratio"]


def test_state_stays_bounded_on_an_endless_stream():
    """Ten thousand customers, one every 6 s of event time for ~17 h: the state holds what the
    horizon (lateness + conversion window, or the largest metric window) can still reach."""
    core = make_core()
    state = core.new_state(3)
    peak = 0
    for i in range(10_000):
        t = T0 + i * 6_000
        events = [{"event_id": f"e{i}-{k}", "event_type": kind, "event_time": t + k, "tenant": "acme",
                   "customer_id": f"c{i}", "attributes": {}} for k, kind in enumerate(("view", "cart", "pay"))]
        out = Output()
        core.add(state, batch_of("web", 0, events), out)
        core.tick(state, t + 2, out)
        peak = max(peak, len(state.tracks))
    horizon = T0 + 9_999 * 6_000 + 2 - core.horizon_ms(T0 + 9_999 * 6_000 + 2)
    customers_in_horizon = horizon // 6_000 + 1
    assert len(state.tracks) <= 2 * (customers_in_horizon + 10)  # 2 funnels per customer (+1 min of slack)
    assert peak <= 2 * (customers_in_horizon + 10)
    assert sum(len(t.events) // 3 for t in state.tracks.values()) <= 3 * 2 * (customers_in_horizon + 10)  # 3 items each


def test_conversion_buckets_run_from_10s_to_the_window():
    assert conversion_buckets(FUNNELS) == (10.0, 30.0, 60.0, 120.0, 300.0)
    assert conversion_buckets(load_funnels(Settings().funnels.file))[-3:] == (1200.0, 1800.0, 3600.0)


# -- definitions ---------------------------------------------------------------------------------
def test_bundled_default_is_the_purchase_funnel():
    (purchase,) = load_funnels(Settings().funnels.file)
    assert purchase.name == "purchase" and purchase.window_ms == 3_600_000
    assert [s.name for s in purchase.steps] == ["product_view", "add_to_cart", "checkout_started", "purchase"]


def test_funnels_file_setting_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"funnels": [{"name": "signup", "window": "30m", "steps": [
        "visit", {"event_type": "signup", "where": {"plan": "pro"}, "source": "web"}]}]}))
    monkeypatch.setenv("CXP_FUNNELS_FILE", str(path))
    (signup,) = load_funnels(Settings().funnels.file)
    assert signup.window_ms == 1_800_000 and signup.steps[1].where == (("plan", "pro"),)
    assert signup.steps[1].matches("web", {"event_type": "signup", "attributes": {"plan": "pro"}})
    assert not signup.steps[1].matches("crm", {"event_type": "signup", "attributes": {"plan": "pro"}})
    assert not signup.steps[1].matches("web", {"event_type": "signup", "attributes": {"plan": "free"}})


def funnel_doc(**overrides):
    return {"funnels": [{"name": "buy", "window": "1h", "steps": ["view", "cart"], **overrides}]}


@pytest.mark.parametrize("document, message", [
    ({}, "expected a top-level `funnels:` list"),
    ({"funnels": [{"window": "1h", "steps": ["a", "b"]}]}, "funnel #1: needs a `name`"),
    ({"funnels": [{"name": "buy", "window": "1h", "steps": ["a", "b"]}] * 2}, "funnel 'buy': defined twice"),
    (funnel_doc(colour="red"), "funnel 'buy': unknown key(s) ['colour']"),
    ({"funnels": [{"name": "buy", "steps": ["a", "b"]}]}, "funnel 'buy': needs a conversion `window`"),
    (funnel_doc(window="soon"), "funnel 'buy': window: not a duration: 'soon'"),
    (funnel_doc(window="0s"), "funnel 'buy': window must be above 0 and at most 24 days"),
    (funnel_doc(window="30d"), "funnel 'buy': window must be above 0 and at most 24 days"),
    (funnel_doc(steps=["view"]), "funnel 'buy': needs a `steps` list of 2 to 32 steps"),
    (funnel_doc(steps=["view", 7]), "funnel 'buy', step 2: expected an event type or a mapping"),
    (funnel_doc(steps=["view", {"name": "x"}]), "funnel 'buy', step 2: needs an `event_type`"),
    (funnel_doc(steps=["view", "bad type"]), "funnel 'buy', step 2: needs an `event_type`"),
    (funnel_doc(steps=["view", {"event_type": "cart", "when": 1}]), "funnel 'buy', step 2 (cart): unknown key(s) ['when']"),
    (funnel_doc(steps=["view", {"event_type": "cart", "name": "a b"}]), "funnel 'buy', step 2 (a b): `name` must be"),
    (funnel_doc(steps=["view", {"event_type": "cart", "where": {"n": 3}}]), "funnel 'buy', step 2 (cart): `where` must map"),
    (funnel_doc(steps=["view", {"event_type": "cart", "source": "fax"}]), "funnel 'buy', step 2 (cart): `source` must be one of"),
    (funnel_doc(steps=["view", "view"]), "funnel 'buy', step 2 (view): step name used twice"),
])
def test_bad_definitions_name_the_funnel_and_the_step(document, message):
    with pytest.raises(FunnelConfigError) as error:
        parse_funnels(document)
    assert message in str(error.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(FunnelConfigError, match="not found"):
        load_funnels(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("funnels: [")
    with pytest.raises(FunnelConfigError, match="not valid YAML"):
        load_funnels(tmp_path / "bad.yaml")


def test_a_bad_funnels_file_fails_when_the_settings_load(tmp_path, monkeypatch):
    path = tmp_path / "f.yaml"
    path.write_text("funnels:\n  - {name: buy, window: 1h, steps: [view, {event_type: cart, source: fax}]}\n")
    monkeypatch.setenv("CXP_FUNNELS_FILE", str(path))
    with pytest.raises(ValueError, match=r"funnel 'buy', step 2 \(cart\): `source` must be one of"):
        Settings()
    monkeypatch.delenv("CXP_FUNNELS_FILE")
    settings = Settings()
    core = FunnelCore.configure(settings.funnels, settings.stream)
    assert [f.name for f in core.funnels] == ["purchase"] and core.horizon_ms(10**13) == 10**13 - 7 * 86_400_000 - 3_600_000


# -- exclusion steps (no windowFunnel equivalent: brute force only) ------------------------------
EXCLUDING = parse_funnels({"funnels": [{"name": "buy", "window": "5m", "steps": ["view", "cart", "pay"],
                                        "exclude": [{"event_type": "complaint", "where": {"plan": "pro"}}]}]})


def level_without_exclusions_between(events, starts, steps: int, window_ms: int) -> int:
    """Longest in-order chain from one of the starts (indices) with no exclusion event anywhere
    between its first and last step."""
    return max((len(chain) for i in starts for chain in all_chains(events, i, steps, window_ms)
                if not any(events[j][2] >> 32 & 1 for j in range(chain[0], chain[-1]))), default=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["acme"]), st.sampled_from(["c1", "c2"]), st.sampled_from(["view", "cart", "pay", "complaint"]),
    st.one_of(st.integers(0, 3), st.integers(0, 40)), st.sampled_from(["web"]), st.sampled_from(["pro", "free"]),
), min_size=1, max_size=12), st.integers(0, 10**6))
def test_exclusion_ends_an_attempt_brute_force(raw, seed):
    events, messages = build_stream(raw, seed)
    core = make_core(EXCLUDING)
    state = core.new_state(3)
    out = deliver(core, state, messages)
    clock = max(e["event_time"] for _, e in events)
    (funnel,) = EXCLUDING
    rows = latest_rows(out)
    expected = {}
    for tenant, customer in customers_of(events):
        mine = customer_events(funnel, events, tenant, customer)
        starts = [i for i, (_, _, mask) in enumerate(mine) if mask & 1]
        for start_ms in {mine[i][0] for i in starts}:
            level = level_without_exclusions_between(mine, [i for i in starts if mine[i][0] == start_ms], 3,
                                                     funnel.window_ms)
            assert rows[(tenant, "buy", customer, start_ms)]["level"] == level
        for label, window in WINDOWS.items():
            first = ((clock - window) // MIN + 1) * MIN
            level = level_without_exclusions_between(mine, [i for i in starts if mine[i][0] >= first], 3,
                                                     funnel.window_ms)
            counts = expected.setdefault((tenant, 0, label), [0, 0, 0])
            for k in range(level):
                counts[k] += 1
    got = {key: counts for key, counts in core.at_least([state], [clock]).items() if any(counts)}
    assert got == {key: counts for key, counts in expected.items() if any(counts)}


# every funnel above in one core: one event matching two steps, sources, attributes, an exclusion
ALL_FUNNELS = FUNNELS + parse_funnels({"funnels": [
    {"name": "calm", "window": "4m", "steps": ["view", "pay"], "exclude": ["complaint"]}]})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["acme", "globex"]), st.sampled_from(["c1", "c1", "c2", None]),
    st.sampled_from(["view", "view", "cart", "pay", "complaint"]), st.one_of(st.integers(0, 3), st.integers(0, 40)),
    st.sampled_from(["web", "crm"]), st.sampled_from(["pro", "free"]),
), min_size=1, max_size=16), st.integers(0, 10**6), st.integers(1, 6))
def test_one_reassessment_per_batch_equals_one_per_event(raw, seed, messages_per_batch):
    """Batches of several messages, whose events of one track are reassessed together (or one at a time when
    one arrives before an event held): the same attempts, conversions and counts as reassessing after every
    event (each event its own ``add``, the batch's tick after the last)."""
    _, messages = build_stream(raw, seed)
    core = make_core(ALL_FUNNELS)
    together, apart = core.new_state(3), core.new_state(3)
    out_together, out_apart = Output(), Output()
    for i in range(0, len(messages), messages_per_batch):
        items = [(source, event) for source, events in messages[i:i + messages_per_batch] for event in events]
        core.add(together, Batch.of(3, items), out_together)
        for item in items:
            core.add(apart, Batch.of(3, [item]), out_apart)
        clock = max([together.clock_ms] + [event["event_time"] for _, event in items])
        core.tick(together, clock, out_together)
        core.tick(apart, clock, out_apart)
        assert core.at_least([together], [clock]) == core.at_least([apart], [clock]) == core.count_tracks(together, clock)
    rows = {key: {k: v for k, v in row.items() if k != "updated_ms"} for key, row in latest_rows(out_together).items()}
    assert rows == {key: {k: v for k, v in row.items() if k != "updated_ms"}
                    for key, row in latest_rows(out_apart).items()}
    assert sorted(out_together.observations) == sorted(out_apart.observations)


def test_exclusion_definitions():
    (funnel,) = EXCLUDING
    assert funnel.exclusions[0].where == (("plan", "pro"),)
    assert run([("view", 0, "a"), ("complaint", 1, "b", {"plan": "pro"}), ("cart", 2, "c")], EXCLUDING)[0] == 1
    assert run([("view", 0, "a"), ("complaint", 1, "b", {"plan": "free"}), ("cart", 2, "c")], EXCLUDING)[0] == 2
    with pytest.raises(FunnelConfigError, match=r"funnel 'buy', exclusion 1 \(view\): view is also a step"):
        parse_funnels(funnel_doc(exclude=["view"]))
    with pytest.raises(FunnelConfigError, match=r"funnel 'buy', exclusion 2: needs an `event_type`"):
        parse_funnels(funnel_doc(exclude=["complaint", {"where": {"a": "b"}}]))
    with pytest.raises(FunnelConfigError, match=r"funnel 'buy': `exclude` must be a list"):
        parse_funnels(funnel_doc(exclude="complaint"))
    assert "complaint" in make_core(EXCLUDING).restores()[1].where[1].values
