"""The churn core against a direct evaluation of the weighted definition, and its level-change signals."""
import io
import json
import tracemalloc
from collections import defaultdict

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Facts, Output
from pipeline.metrics.churn import WEIGHTS as CHURN_WEIGHTS
from pipeline.metrics.churn import DAY_BITS, ChurnConfig, ChurnCore, Customer, contributions, next_change_ms, present
from pipeline.metrics.facts import ChurnLevelChanged, ComplaintOpened, SlaBreached, SurveyAnswered
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec
from schemas import SCHEMA_DIR

DAY = 86_400_000
T0 = 1_780_000_000_000 // DAY * DAY
CONFIG = ChurnConfig(weights=CHURN_WEIGHTS)
CODEC = Codec(BundledRegistry())
SIGNAL_SCHEMA = fastavro.parse_schema(json.loads((SCHEMA_DIR / "ChurnSignal.avsc").read_text()))
CUSTOMERS = [("acme", "c1"), ("acme", "c2"), ("globex", "c1")]
TYPED = {"downgrade": ("crm", "subscription_downgraded"), "cancel": ("crm", "subscription_cancelled"),
         "start": ("crm", "subscription_started"), "abandon": ("chatbot", "conversation_abandoned"),
         "handoff": ("chatbot", "handoff_requested"), "resolve": ("chatbot", "conversation_resolved"),
         "visit": ("web", "page_view")}


def core() -> ChurnCore:
    return ChurnCore(CONFIG)


# -- the definition, evaluated directly from what happened ---------------------------------------------
def expected(history: list[tuple], clock: int) -> tuple[set[str], float, str]:
    """(signals present, score, level) of one customer from their (kind, t, detail) history."""
    last = {}
    for kind, t, _ in history:
        last[kind] = max(last.get(kind, 0), t)
    activity = [t for kind, t, _ in history if kind not in ("complaint_fact", "breach")]
    # the latest answer; of answers in the same millisecond, the lowest score
    nps = max(((t, -score, score) for kind, t, score in history if kind == "nps"), default=None)
    within = lambda t: t and clock - t < 30 * DAY  # noqa: E731
    days = {t // DAY for t in activity}
    today = clock // DAY
    last_week = len({d for d in days if today - 7 <= d <= today - 1})
    before = len({d for d in days if today - 28 <= d <= today - 8}) / 3
    signals = {
        "inactivity": bool(activity) and clock - max(activity) >= 14 * DAY,
        "detractor": nps is not None and within(nps[0]) and nps[2] <= 6,
        "complaints": sum(1 for kind, t, _ in history if kind == "complaint_fact" and within(t)) >= 2
        or within(last.get("breach", 0)),
        "downgrade": within(last.get("downgrade", 0)),
        "chatbot": within(last.get("abandon", 0)) or (
            last.get("handoff", 0) > last.get("resolve", 0) and DAY <= clock - last["handoff"] < 30 * DAY),
        "activity_drop": before >= 2 and last_week < 0.5 * before,
    }
    found = {name for name, on in signals.items() if on}
    score = min(1.0, sum(CHURN_WEIGHTS[name] for name in found))
    if last.get("cancel", 0) > last.get("start", 0):
        return found, score, "churned"
    return found, score, "high" if score >= 0.5 - 1e-9 else "medium" if score >= 0.3 - 1e-9 else "low"


# -- driving the core the way the processor does ---------------------------------------------------------
def step(churn: ChurnCore, state, op: tuple, clock: int, offset: int) -> Output:
    """Apply one op for one customer at event time t, then tick at ``clock``; returns both outputs merged."""
    kind, (tenant, customer), t, detail = op
    out = Output()
    if kind == "breach":
        tick_out = Output()
        churn.take(state, Facts([SlaBreached(tenant, customer, detail, "high", "resolution", 3_600_000, t)]), tick_out)
        churn.tick(state, clock, tick_out)
        return tick_out
    event = {"event_id": f"e{offset}", "tenant": tenant, "customer_id": customer, "event_time": t}
    source = "web"
    if kind == "nps":
        source = "crm"
        event.update(event_type="survey_response", survey={"kind": "NPS", "score": detail})
        churn.take(state, Facts([SurveyAnswered(f"e{offset}", source, tenant, customer, "NPS", detail, t, {}, None,
                                                None)]), out)
    elif kind == "complaint":
        source = "complaints"
        event.update(event_type="opened")
        churn.take(state, Facts([ComplaintOpened(tenant, customer, detail, t)]), out)
    else:
        source, event["event_type"] = TYPED[kind]
    churn.add(state, Batch(3, [source], [event], [offset]), out)
    tick_out = Output()
    churn.tick(state, clock, tick_out)
    out.merge(tick_out)
    return out


def history_entries(op: tuple) -> list[tuple]:
    kind, _, t, detail = op
    if kind == "complaint":
        return [("complaint", t, None), ("complaint_fact", t, detail)]
    return [(kind, t, detail)]


op = st.tuples(
    st.sampled_from(["visit", "visit", "visit", "nps", "complaint", "breach", "downgrade", "cancel", "start",
                     "abandon", "handoff", "resolve"]),
    st.sampled_from(CUSTOMERS),
    st.integers(0, 60 * DAY),
    st.integers(0, 10),
)


def ops_with_ids(raw: list[tuple]) -> list[tuple]:
    out = []
    for i, (kind, customer, dt, n) in enumerate(raw):
        detail = n if kind == "nps" else f"k{i}" if kind in ("complaint", "breach") else None
        out.append((kind, customer, T0 + dt, detail))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(op, min_size=1, max_size=40), st.lists(st.integers(0, 70 * DAY), max_size=5))
def test_levels_scores_and_signals_follow_the_definition(raw, quiet_ticks):
    ops = [("visit", customer, T0, None) for customer in CUSTOMERS] + ops_with_ids(raw)
    churn, state = core(), core().new_state(3)
    histories: dict[tuple, list] = defaultdict(list)
    levels = {customer: "low" for customer in CUSTOMERS}
    clock, signals = 0, defaultdict(int)
    steps = [("op", o) for o in ops] + [("tick", T0 + t) for t in sorted(quiet_ticks)]
    for offset, (what, item) in enumerate(steps):
        if what == "op":
            clock = max(clock, item[2])
            out = step(churn, state, item, clock, offset)
            histories[item[1]].extend(history_entries(item))
        else:
            clock = max(clock, item)
            out = Output()
            churn.tick(state, clock, out)
        changed = {}
        for customer in [c for c in CUSTOMERS if histories[c]]:
            found, score, level = expected(histories[customer], clock)
            c = next(c for c in state.customers().values() if (c.tenant, c.customer_id) == customer)
            assert set(present(c, clock, CONFIG)) == found, (customer, histories[customer], clock)
            assert c.level == level, (customer, histories[customer], clock)
            assert sum(f.weight for f in contributions(c, clock, CONFIG)) == pytest.approx(score)
            if level != levels[customer]:
                changed[customer] = (levels[customer], level, score)
                levels[customer] = level
        assert churn.levels([state]) == churn.count_customers([state])  # the kept gauge
        rows = out.rows["churn_signals"]
        assert {(r.tenant, r.customer_id): (r.previous_level, r.level, r.score) for r in rows} == {
            k: (prev, new, pytest.approx(score)) for k, (prev, new, score) in changed.items()}
        assert len(rows) == len(changed) == len(out.messages["signals.churn"])  # one per change, none without
        for r in rows:
            signals[(r.tenant, r.customer_id)] += 1
            assert r.seq == signals[(r.tenant, r.customer_id)]  # the customer's n-th change
    # the same input again, after everything: nothing changes, nothing is emitted
    for offset, (what, item) in enumerate(steps):
        out = step(churn, state, item, clock, offset) if what == "op" else Output()
        assert not out.rows["churn_signals"] and not out.messages["signals.churn"]


def test_inactivity_is_judged_on_the_clock_without_the_customers_events():
    churn, state = core(), core().new_state(3)
    step(churn, state, ("downgrade", ("acme", "c1"), T0, None), T0, 0)  # 0.15: low
    out = Output()
    churn.tick(state, T0 + 14 * DAY - 1, out)
    assert not out.rows["churn_signals"]
    churn.tick(state, T0 + 14 * DAY, out)  # inactivity 0.25 + downgrade 0.15 = 0.4: medium
    (row,) = out.rows["churn_signals"]
    assert (row.level, row.previous_level, row.score, row.signal_ms, row.seq) == ("medium", "low", 0.4, T0 + 14 * DAY, 1)
    day = "2026-05-28"
    assert row.reasons == [f"inactivity (0.25): no activity for 14 days (last on {day})",
                           f"downgrade (0.15): subscription downgraded on {day}"]
    assert out.counts == {("cx_churn_signals", ("acme", "inactivity")): 1, ("cx_churn_signals", ("acme", "downgrade")): 1}
    (key, message), = out.messages["signals.churn"]
    value = CODEC.encode_message(message)
    signal = fastavro.schemaless_reader(io.BytesIO(value[5:]), SIGNAL_SCHEMA)
    assert key == b"c1" and (signal["level"], signal["previous_level"], signal["sequence"]) == ("medium", "low", 1)
    assert signal["contributions"][1] == {"signal": "downgrade", "weight": 0.15,
                                          "evidence": f"subscription downgraded on {day}"}
    (change,) = out.facts
    assert isinstance(change, ChurnLevelChanged) and (change.level, change.sequence) == ("medium", 1)


def test_complaint_facts_count_once_per_complaint_and_are_kept_as_evidence():
    churn, state = core(), core().new_state(3)
    for i, complaint in enumerate(("k1", "k1", "k2")):  # k1 twice: a replayed fact
        out = step(churn, state, ("complaint", ("acme", "c1"), T0 + i * 1000, complaint), T0 + i * 1000, i)
    c = next(iter(state.customers().values()))
    assert [cid for _, cid in c.complaints] == ["k2", "k1"]
    assert present(c, T0 + 2000, CONFIG) == ["complaints"]
    assert out.rows["churn_evidence"][0][:5] == ("acme", "c1", "complaint_opened", "k2", T0 + 2000)
    assert contributions(c, T0 + 2000, CONFIG)[0].evidence == "2 complaints within 30 days (last on 2026-05-28)"


def test_restore_rebuilds_the_same_levels_without_signals():
    """State rebuilt from the rows the restore queries would return equals the live one, and emits nothing."""
    churn, live = core(), core().new_state(3)
    ops = [("visit", ("acme", "c1"), T0, None), ("nps", ("acme", "c1"), T0 + DAY, 2),
           ("complaint", ("acme", "c1"), T0 + 2 * DAY, "k1"), ("breach", ("acme", "c1"), T0 + 3 * DAY, "k1"),
           ("handoff", ("acme", "c2"), T0 + DAY, None), ("visit", ("acme", "c2"), T0 + 5 * DAY, None)]
    rows = []
    for i, o in enumerate(ops):
        out = step(churn, live, o, o[2], i)
        rows.extend(out.rows["churn_signals"] + out.rows["churn_evidence"])
    clock = T0 + 5 * DAY
    assert {c.customer_id: c.level for c in live.customers().values()} == {"c1": "medium", "c2": "low"}
    restored = churn.new_state(3)
    seen = {("acme", "c1"): T0 + 2 * DAY, ("acme", "c2"): T0 + 5 * DAY}
    restore = {
        "seen": [(t, c, ms) for (t, c), ms in seen.items()],
        "days": [("acme", "c1", T0), ("acme", "c1", T0 + DAY), ("acme", "c1", T0 + 2 * DAY),
                 ("acme", "c2", T0 + DAY), ("acme", "c2", T0 + 5 * DAY)],
        "typed": [("acme", "c2", "handoff_requested", T0 + DAY)],
        "nps": [("acme", "c1", 2, T0 + DAY)],
        "evidence": [(r.tenant, r.customer_id, r.kind, r.evidence_id, r.evidence_ms, r.detail) for r in rows
                     if hasattr(r, "evidence_id")],
        "levels": [(r.tenant, r.customer_id, r.level, r.seq) for r in rows if hasattr(r, "level")],
    }
    for spec in churn.restores():
        churn.restore(restored, spec.name, [spec.row_type()(*row) for row in restore[spec.name]], clock)
    out = Output()
    churn.tick(restored, clock, out)
    assert not out.rows["churn_signals"] and restored.partition == 3
    assert {c.customer_id: c.level for c in restored.customers().values()} == {"c1": "medium", "c2": "low"}
    assert churn.levels([restored]) == churn.count_customers([restored]) == {("acme", "medium"): 1, ("acme", "low"): 1}
    for key, c in live.customers().items():
        assert present(restored.customers()[key], clock + 2 * DAY, CONFIG) == present(c, clock + 2 * DAY, CONFIG)


def test_forgotten_customers_leave_the_kept_gauge():
    churn, state = core(), core().new_state(3)
    step(churn, state, ("visit", ("acme", "c1"), T0, None), T0, 0)
    step(churn, state, ("cancel", ("acme", "c2"), T0 + DAY, None), T0 + DAY, 1)
    assert churn.levels([state]) == churn.count_customers([state]) == {("acme", "low"): 1, ("acme", "churned"): 1}
    churn.tick(state, T0 + 90 * DAY, Output())  # c1 forgotten, c2 not yet
    assert churn.levels([state]) == churn.count_customers([state]) == {("acme", "churned"): 1}
    churn.tick(state, T0 + 200 * DAY, Output())
    assert churn.levels([state]) == churn.count_customers([state]) == {}
    assert list(churn.collect([state], [T0 + 200 * DAY]))[0].samples == []


def test_unknown_weights_and_inverted_thresholds_are_refused():
    with pytest.raises(ValueError, match="unknown churn signals"):
        ChurnConfig(weights={"moon_phase": 1.0})
    with pytest.raises(ValueError, match=r"CXP_CHURN_MEDIUM \(0.6\) must not be above CXP_CHURN_HIGH \(0.5\)"):
        ChurnConfig(weights=CHURN_WEIGHTS, medium=0.6, high=0.5)
    with pytest.raises(ValueError, match="CXP_CHURN_INACTIVITY must be below CXP_CHURN_FORGET"):
        ChurnConfig(weights=CHURN_WEIGHTS, inactivity_ms=90 * DAY, forget_ms=90 * DAY)


def test_bytes_per_customer():
    """What one customer costs in churn state after a month of activity (figure for docs/performance.md)."""
    churn = core()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = churn.new_state(0)
    for i in range(5000):
        customer = ("acme", f"cust-{i:06d}")
        for d in range(0, 30, 3):
            step(churn, state, ("visit", customer, T0 + d * DAY + i, None), T0 + d * DAY + i, i)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_customer = grown / len(state)
    print(f"churn state: {per_customer:.0f} bytes per customer")
    assert per_customer < 600


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40 * DAY), min_size=1, max_size=8), st.one_of(st.just(None), st.integers(0, 40 * DAY)))
def test_a_batch_of_times_sets_what_one_time_after_another_sets(times, earlier):
    """``seen_all`` (a customer's times in one batch) leaves the latest time and the day bits of ``seen`` called
    for each time in turn."""
    one, together = Customer("c1", "acme", key=1), Customer("c1", "acme", key=1)
    if earlier is not None:
        one.seen(T0 + earlier)
        together.seen(T0 + earlier)
    for ms in times:
        one.seen(T0 + ms)
    together.seen_all([T0 + ms for ms in times])
    assert (together.last_ms, together.days) == (one.last_ms, one.days)


times_or_never = st.one_of(st.just(0), st.integers(-40 * DAY, 40 * DAY).map(lambda t: T0 + t))


@settings(max_examples=300, deadline=None)
@given(times_or_never, st.integers(0, (1 << DAY_BITS) - 1), st.lists(times_or_never, min_size=6, max_size=6),
       st.lists(times_or_never, max_size=2), st.integers(-100 * DAY, 100 * DAY))
def test_next_change_is_the_earliest_change_time_after_the_clock(last, days, times, complaints, clock):
    """``next_change_ms`` (no list, min as it goes) against the plain reading: every time at which the clock alone
    may change the score, the earliest after the clock, else the clock plus ``forget``."""
    c = Customer("c1", "acme", key=1)
    c.last_ms, c.days = last, days
    c.nps_ms, c.downgrade_ms, c.abandoned_ms, c.handoff_ms, c.resolved_ms, breach = times
    c.complaints = tuple(sorted(((ms, f"k{i}") for i, ms in enumerate(complaints)), reverse=True))
    c.breach = (breach, "late") if breach else None
    clock = T0 + clock
    memory = CONFIG.memory_ms
    changes = [last + CONFIG.inactivity_ms, last + CONFIG.forget_ms]
    changes += [ms + memory for ms in (c.nps_ms, c.downgrade_ms, c.abandoned_ms, c.handoff_ms) if ms]
    changes += [ms + memory for ms, _ in c.complaints if ms] + ([breach + memory] if breach else [])
    if c.handoff_ms > c.resolved_ms:
        changes.append(c.handoff_ms + CONFIG.handoff_timeout_ms)
    if days and last // DAY + DAY_BITS > clock // DAY:
        changes.append((clock // DAY + 1) * DAY)
    after = [ms for ms in changes if ms > clock]
    assert next_change_ms(c, clock, CONFIG) == (min(after) if after else clock + CONFIG.forget_ms)
