"""The complaint lifecycle core against plain recomputations, and the follow-up actions it causes."""
from __future__ import annotations

import io

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import id_hash
from pipeline.metrics.actions import ActionCore
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.complaints import ComplaintCore
from pipeline.metrics.facts import ComplaintOpened, action_id
from pipeline.metrics.rounds import Rounds
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec

MIN, HOUR = 60_000, 3_600_000
SLA = {"low": (72 * HOUR, 168 * HOUR), "normal": (24 * HOUR, 72 * HOUR), "high": (4 * HOUR, 24 * HOUR),
       "urgent": (1 * HOUR, 8 * HOUR)}
TYPES = ("opened", "acknowledged", "escalated", "resolved", "reopened", "closed")
OPEN = {"opened", "acknowledged", "escalated", "reopened"}
LATENESS = 30 * 24 * HOUR


def make_cores():
    return ComplaintCore(SLA, LATENESS), ActionCore(LATENESS), Codec(BundledRegistry())


PARTITION = 3


class Harness:
    """The complaints core and the actions core after it, driven the way the processor drives them."""

    def __init__(self):
        self.complaints, self.actions, self.codec = make_cores()
        self.rounds = Rounds([self.complaints, self.actions])
        self.states = [self.complaints.new_state(PARTITION), self.actions.new_state(PARTITION)]
        self.out = Output()
        self.clock = 0

    def deliver(self, event: dict, tick: bool = True) -> None:
        out = Output()
        self.rounds.add(self.states, Batch(PARTITION, ["complaints"], [event], [id_hash(event["event_id"])]), out)
        self.clock = max(self.clock, event["event_time"])
        if tick:
            self.tick(self.clock, out)
        self.out.merge(out)

    def tick(self, clock: int, out: Output | None = None) -> None:
        target = out if out is not None else Output()
        if clock > self.clock:  # the partition's clock moves with its events of any source
            self.clock = clock
            web = {"event_id": f"web-{clock}", "event_type": "page_view", "event_time": clock, "tenant": "acme"}
            self.rounds.add(self.states, Batch(PARTITION, ["web"], [web], [id_hash(web["event_id"])]), target)
        self.rounds.tick(self.states, self.clock, target)
        if out is None:
            self.out.merge(target)

    def latest_rows(self) -> dict:
        rows = {}
        for row in self.out.rows["complaints"]:
            if row.complaint_id not in rows or rows[row.complaint_id].updated_ms < row.updated_ms:
                rows[row.complaint_id] = row
        return rows

    def backlog(self) -> dict:
        family = list(self.complaints.collect([self.states[0]], self.clock))[0]
        return {(s.labels["tenant"], s.labels["priority"]): s.value for s in family.samples}

    def count(self, name: str, **labels) -> int:
        return sum(n for (metric, values), n in self.out.counts.items() if metric == name
                   and all(v in values for v in labels.values()))


def event(cid: str, event_type: str, t: int, n: int, priority: str = "normal", customer: str = "c-1") -> dict:
    return {"event_id": f"{cid}-{n}", "event_type": event_type, "event_time": t, "tenant": "acme",
            "customer_id": customer, "complaint_id": cid, "priority": priority, "category": "billing",
            "origin_channel": "email", "agent_id": None}


# -- an independent recomputation from the events sorted by time ----------------------------------
def expected_state(events: list[dict]) -> dict:
    ordered = sorted(events, key=lambda e: (e["event_time"], TYPES.index(e["event_type"]), id_hash(e["event_id"])))
    status = ordered[-1]["event_type"]
    opened = [e["event_time"] for e in ordered if e["event_type"] == "opened"]
    opened_ms = opened[0] if opened else None
    acks = [e["event_time"] for e in ordered if e["event_type"] == "acknowledged" and opened and e["event_time"] >= opened_ms]
    resolves = [e["event_time"] for e in ordered if e["event_type"] == "resolved" and opened and e["event_time"] >= opened_ms]
    return {"status": status, "opened_ms": opened_ms, "first_response_ms": acks[0] if acks else None,
            "resolved_ms": resolves[-1] if resolves and status not in OPEN else None,
            "reopen_count": sum(e["event_type"] == "reopened" for e in ordered)}


def brute_force_breaches(events: list[dict], priority: str, clock: int) -> set[str]:
    """Stages breached at ``clock``: walk the open intervals of the complaint against each deadline."""
    ordered = sorted(events, key=lambda e: (e["event_time"], TYPES.index(e["event_type"]), id_hash(e["event_id"])))
    opened = [e["event_time"] for e in ordered if e["event_type"] == "opened"]
    if not opened:
        return set()
    start = opened[0]
    breached = set()
    first_deadline, resolution_deadline = start + SLA[priority][0], start + SLA[priority][1]
    answers = [e["event_time"] for e in ordered
               if e["event_type"] in ("acknowledged", "resolved", "closed") and e["event_time"] >= start]
    if clock > first_deadline and not any(t <= first_deadline for t in answers):
        breached.add("first_response")
    intervals, open_since = [], None  # [since, until) while open; until None = still open
    for e in ordered:
        if e["event_type"] in OPEN and open_since is None:
            open_since = e["event_time"]
        elif e["event_type"] not in OPEN and open_since is not None:
            intervals.append((open_since, e["event_time"]))
            open_since = None
    if open_since is not None:
        intervals.append((open_since, None))
    for since, until in intervals:  # open at some moment t in [deadline, clock]
        t = max(since, resolution_deadline)
        if clock > resolution_deadline and t <= clock and (until is None or t < until):
            breached.add("resolution")
    return breached


lifecycle = st.lists(st.tuples(st.sampled_from(TYPES), st.integers(0, 200 * HOUR)), min_size=1, max_size=8)
complaints_strategy = st.lists(st.tuples(lifecycle, st.sampled_from(tuple(SLA)), st.booleans()), min_size=1, max_size=6)


def build(spec) -> tuple[list[dict], dict[str, str]]:
    events, priorities = [], {}
    for i, (steps, priority, starts_opened) in enumerate(spec):
        cid = f"cmp-{i}"
        priorities[cid] = priority
        if starts_opened:
            steps = [("opened", steps[0][1])] + steps[1:]
        events += [event(cid, kind, t, n, priority, customer=f"c-{i}") for n, (kind, t) in enumerate(steps)]
    return events, priorities


@settings(max_examples=300, deadline=None)
@given(complaints_strategy, st.randoms(use_true_random=False))
def test_state_equals_recomputation_from_sorted_events_in_any_order(spec, rnd):
    events, priorities = build(spec)
    rnd.shuffle(events)
    h = Harness()
    for e in events:
        h.deliver(e)
    rows = h.latest_rows()
    backlog: dict = {}
    for cid, priority in priorities.items():
        mine = [e for e in events if e["complaint_id"] == cid]
        want = expected_state(mine)
        row = rows[cid]
        assert (row.status, row.opened_ms, row.first_response_ms, row.resolved_ms, row.reopen_count) == (
            want["status"], want["opened_ms"], want["first_response_ms"], want["resolved_ms"], want["reopen_count"])
        assert row.event_times_ms == sorted(e["event_time"] for e in mine)
        if want["status"] in OPEN:
            backlog[("acme", priority)] = backlog.get(("acme", priority), 0) + 1
    assert h.backlog() == backlog
    opened = sum(1 for cid in priorities if expected_state([e for e in events if e["complaint_id"] == cid])["opened_ms"]
                 is not None)
    assert h.count("cx_complaints_opened") == opened


@settings(max_examples=300, deadline=None)
@given(complaints_strategy, st.integers(0, 400 * HOUR))
def test_sla_breaches_equal_a_brute_force_scan_of_deadlines(spec, extra_ms):
    events, priorities = build(spec)
    events.sort(key=lambda e: e["event_time"])
    h = Harness()
    for i, e in enumerate(events):
        # the clock ticks between milliseconds, not inside one: events of the same millisecond arrive together
        h.deliver(e, tick=i + 1 == len(events) or events[i + 1]["event_time"] != e["event_time"])
    final_clock = h.clock + extra_ms
    h.tick(final_clock)  # the clock moves on without events: still-open complaints breach now
    want = {(cid, stage) for cid, p in priorities.items()
            for stage in brute_force_breaches([e for e in events if e["complaint_id"] == cid], p, final_clock)}
    got = {(a.complaint_id, stage) for a in h.latest_rows().values()
           for stage, flag in (("first_response", a.sla_first_response_breached),
                               ("resolution", a.sla_resolution_breached)) if flag}
    assert got == want
    assert h.count("cx_complaint_sla_breaches") == len(want)
    encoded = [h.codec.encode_message(m) for _, m in h.out.messages["actions"]]
    sent = [fastavro.schemaless_reader(io.BytesIO(v[5:]), h.codec.registry.by_name("cx.FollowUpAction").parsed)
            for v in encoded]
    assert sorted(a["action_id"] for a in sent) == sorted(action_id("complaint_sla_breach", c, s) for c, s in want)
    assert {(a["context"]["complaint_id"], a["context"]["stage"]) for a in sent} == want
    assert all(a["kind"] == "complaint_sla_breach" and a["due_time"] > a["created_time"] for a in sent)


@settings(max_examples=100, deadline=None)
@given(complaints_strategy, st.randoms(use_true_random=False))
def test_replay_after_restore_counts_and_writes_nothing(spec, rnd):
    events, _ = build(spec)
    events.sort(key=lambda e: e["event_time"])
    first = Harness()
    for e in events:
        first.deliver(e)
    first.tick(first.clock + 500 * HOUR)
    assert {row.kafka_partition for row in first.latest_rows().values()} == {PARTITION}  # rows name their partition
    # a new owner restores from the tables (latest row per complaint / action) and gets the whole input again
    second = Harness()
    for spec in second.complaints.restores():  # "open" and "settled": all rows are recent enough here
        rows = [spec.row_type()(*(getattr(r, c) for c in spec.columns)) for r in first.latest_rows().values()
                if (r.status in ("opened", "acknowledged", "escalated", "reopened")) == (spec.name == "open")]
        second.complaints.restore(second.states[0], spec.name, rows, first.clock)
    (spec,) = second.actions.restores()
    second.actions.restore(second.states[1], "actions",
                           [spec.row_type()(r.action_id, r.created_ms) for r in first.out.rows["actions"]], first.clock)
    assert second.backlog() == first.backlog()
    replay = events[:]
    rnd.shuffle(replay)
    for e in replay:
        second.deliver(e)
    second.tick(first.clock)
    assert not second.out.counts and not second.out.observations
    assert not second.out.rows and not second.out.messages


def test_histograms_and_actions_of_one_complaint():
    h = Harness()
    start = 1_700_000_000_000
    h.deliver(event("a", "opened", start, 0, "urgent"))
    h.tick(start + 2 * HOUR)  # no first response within the 1 h target: breached while the customer waits
    assert h.count("cx_complaint_sla_breaches", stage="first_response") == 1
    h.deliver(event("a", "acknowledged", start + 2 * HOUR + MIN, 1, "urgent"))
    h.deliver(event("a", "resolved", start + 3 * HOUR, 2, "urgent"))
    h.deliver(event("a", "resolved", start + 3 * HOUR, 2, "urgent"))  # the same event again: nothing happens
    assert h.out.observations == [("cx_complaint_first_response_seconds", ("acme", "urgent"), 7260.0),
                                  ("cx_complaint_resolution_seconds", ("acme", "urgent"), 10800.0)]
    assert h.count("cx_complaint_sla_breaches") == 1 and len(h.out.messages["actions"]) == 1
    assert h.count("cx_actions", kind="complaint_sla_breach") == 1
    row = h.out.rows["actions"][0]
    assert dict(zip(row.context_keys, row.context_values))["late_seconds"] == "3600"
    assert row.due_ms == start + 2 * HOUR + HOUR and row.customer_id == "c-1"
    assert len(h.out.rows["complaints"]) == 4  # opened, breach, acknowledged, resolved: one row per change


def test_unknown_complaint_and_resolved_before_opened_are_kept():
    h = Harness()
    h.deliver(event("b", "resolved", 10 * HOUR, 0))  # nothing known yet: kept, no times
    row = h.latest_rows()["b"]
    assert (row.status, row.opened_ms, row.resolved_ms) == ("resolved", None, None)
    h.deliver(event("b", "opened", 12 * HOUR, 1))  # opened after the resolution: open, the earlier event ignored
    row = h.latest_rows()["b"]
    assert (row.status, row.opened_ms, row.resolved_ms) == ("opened", 12 * HOUR, None)
    assert h.backlog() == {("acme", "normal"): 1} and h.count("cx_complaints_opened") == 1


def test_the_sla_clock_is_the_partitions_own():
    h = Harness()
    h.deliver(event("f", "opened", 0, 0, "urgent"))
    h.complaints.tick(h.states[0], 10 * HOUR, Output())  # other partitions are further: not this one's time
    assert not h.states[0].complaints["f"].breached
    h.tick(2 * HOUR)  # an event of any source in this partition moves its clock
    assert h.states[0].complaints["f"].breached == {"first_response"}


def test_closed_complaints_expire_after_max_lateness_open_ones_stay():
    h = Harness()
    h.deliver(event("c", "opened", 0, 0))
    h.deliver(event("c", "closed", HOUR, 1))
    h.deliver(event("d", "opened", HOUR, 0))
    h.tick(HOUR + LATENESS + 1)  # other sources ahead: a complaint event up to max_lateness old is still valid
    assert set(h.states[0].complaints) == {"c", "d"}
    h.deliver(event("e", "opened", HOUR + LATENESS + 1, 0))  # the complaints' own clock moves past
    assert set(h.states[0].complaints) == {"d", "e"}


def test_a_late_event_of_a_settled_complaint_does_not_restart_it_when_the_topic_is_behind():
    """The complaints topic consumed days behind the others (lateness is judged per topic-partition): its
    ``closed`` comes when the partition's clock is past max_lateness after the resolution. The complaint is
    still known, so its row keeps the opening (the complaint-rate query and restore read it) and it is not
    counted as opened again."""
    h = Harness()
    h.deliver(event("c", "opened", 0, 0, customer="c-9"))
    h.deliver(event("c", "resolved", HOUR, 1, customer="c-9"))
    h.tick(HOUR + LATENESS + HOUR)  # web, chatbot, crm events of this partition
    h.deliver(event("c", "closed", 2 * HOUR, 2, customer="c-9"))  # within max_lateness of the complaints' clock
    row = h.latest_rows()["c"]
    assert (row.status, row.opened_ms, row.resolved_ms, row.event_types) == \
        ("closed", 0, HOUR, ["opened", "resolved", "closed"])
    assert h.count("cx_complaints_opened") == 1  # counted with the ComplaintOpened fact, once


def test_categories_are_capped_per_tenant():
    complaints, _, _ = make_cores()
    complaints.category_max_values = 2
    state, out = complaints.new_state(0), Output()
    for i, category in enumerate(("billing", "delivery", "fraud", "billing")):
        e = dict(event(f"k{i}", "opened", i, 0), category=category)
        complaints.add(state, Batch(0, ["complaints"], [e], [id_hash(e["event_id"])]), out)
    complaints.tick(state, 10, out)
    assert {labels[2]: n for (_, labels), n in out.counts.items()} == {"billing": 2, "delivery": 1, "other": 1}


def test_kept_events_are_bounded():
    complaints, _, _ = make_cores()
    complaints.max_events = 5
    state, out = complaints.new_state(0), Output()
    kinds = ["opened", "acknowledged"] + ["resolved", "reopened"] * 5
    for n, kind in enumerate(kinds):
        e = event("e", kind, n * MIN, n)
        complaints.add(state, Batch(0, ["complaints"], [e], [id_hash(e["event_id"])]), out)
    complaints.tick(state, len(kinds) * MIN, out)
    row = out.rows["complaints"][-1]
    assert len(row.event_types) == 5 and row.event_types[:2] == ["opened", "acknowledged"]
    assert row.reopen_count == 5 and row.first_response_ms == MIN


def test_an_opened_complaint_is_published_with_its_customer_for_the_churn_core():
    complaints, _, _ = make_cores()
    state, out = complaints.new_state(3), Output()
    opened = event("k", "opened", HOUR, 0, customer="c-7")
    complaints.add(state, Batch(3, ["complaints"], [opened], [id_hash(opened["event_id"])]), out)
    complaints.tick(state, HOUR, out)
    assert out.facts == [ComplaintOpened("acme", "c-7", "k", HOUR)]
