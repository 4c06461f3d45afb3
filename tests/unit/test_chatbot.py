"""The chatbot containment core against a plain recomputation from its events, in any order, replayed,
split over partitions and rebuilt from its table."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.chatbot import OUTCOMES, ChatbotCore
from tests.unit.cores import restore

MIN, DAY = 60_000, 86_400_000
T0 = 1_780_000_000_000
WINDOWS = {"1h": 3_600_000, "24h": DAY}
LATENESS = 7 * DAY
TYPES = ("conversation_started", "user_message", "handoff_requested", "agent_joined", "conversation_resolved",
         "conversation_abandoned")


def recount(events: list[dict], clock: int) -> dict[tuple[str, str], list[int]]:
    """(tenant, window) -> ended conversations per outcome, straight from the definition in docs/metrics.md."""
    conversations: dict[tuple[str, str], list[dict]] = {}
    for e in events:
        conversations.setdefault((e["tenant"], e["conversation_id"]), []).append(e)
    out: dict[tuple[str, str], list[int]] = {}
    for (tenant, _), mine in conversations.items():
        ends = [e["event_time"] for e in mine if e["event_type"] in ("conversation_resolved", "conversation_abandoned")]
        if not ends:
            continue
        end = min(ends)
        if any(e["event_type"] in ("handoff_requested", "agent_joined") for e in mine):
            outcome = 1
        else:
            resolved = [e["event_time"] for e in mine if e["event_type"] == "conversation_resolved"]
            outcome = 0 if resolved and min(resolved) == end else 2
        for label, window in WINDOWS.items():
            if end // MIN > (clock - window) // MIN:
                out.setdefault((tenant, label), [0, 0, 0])[outcome] += 1
    return out


def nonzero(totals: dict) -> dict:
    return {k: v for k, v in totals.items() if any(v)}


event_strategy = st.tuples(st.sampled_from(["acme", "globex"]), st.integers(0, 5), st.sampled_from(TYPES),
                           st.integers(0, 30 * 60))


def build(raw) -> list[dict]:
    return [{"event_id": f"e{i}", "event_type": kind, "event_time": T0 + minute * MIN + i, "tenant": tenant,
             "customer_id": f"c{conversation}", "conversation_id": f"conv{conversation}"}
            for i, (tenant, conversation, kind, minute) in enumerate(raw)]


def feed(core: ChatbotCore, state, events: list[dict], rng: random.Random) -> Output:
    """The events in random batches, a tick after each, as the processor drives the core."""
    out, clock = Output(), state.clock_ms
    i = 0
    while i < len(events):
        n = rng.randint(1, 4)
        chunk = events[i:i + n]
        core.add(state, Batch.of(state.partition, [("chatbot", e) for e in chunk]), out)
        clock = max([clock] + [e["event_time"] for e in chunk])
        core.tick(state, clock, out)
        i += n
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=40), st.randoms(use_true_random=False), st.integers(0, 40))
def test_outcomes_follow_the_definition_in_any_order_and_a_replay_changes_nothing(raw, rng, cut):
    events = build(raw)
    shuffled = events[:]
    rng.shuffle(shuffled)
    core = ChatbotCore(WINDOWS, LATENESS)
    state = core.new_state(2)
    out = feed(core, state, shuffled, rng)
    clock = max(e["event_time"] for e in events)
    assert nonzero(core.totals([state], [clock])) == recount(events, clock)
    latest = {}
    for row in out.rows["chatbot_conversations"]:
        if (row.tenant, row.conversation_id) not in latest or row.updated_ms > latest[(row.tenant, row.conversation_id)].updated_ms:
            latest[(row.tenant, row.conversation_id)] = row
    assert {row.outcome for row in latest.values()} <= set(OUTCOMES) | {""} and {r.kafka_partition for r in latest.values()} <= {2}
    # a restored state (from the newest rows) fed everything again equals the live one, and writes nothing
    restored = core.new_state(2)
    restore(core, restored, "conversations", [(r.tenant, r.conversation_id, r.customer_id, r.handoff_ms, r.resolved_ms,
                                               r.abandoned_ms, r.last_event_ms, r.updated_ms) for r in latest.values()], clock)
    again = feed(core, restored, shuffled[cut:] + shuffled[:cut], rng)
    assert again.row_count() == 0
    # a tenant whose conversations all slid out keeps a zero row live and none after a restore; both read as 0
    assert nonzero(core.totals([restored], [clock])) == nonzero(core.totals([state], [clock]))


def resolved_at_t0(core: ChatbotCore) -> tuple:
    """A state with conversation k resolved at T0, its output, and the resolution event."""
    state, out = core.new_state(0), Output()
    resolved = {"event_id": "r", "event_type": "conversation_resolved", "event_time": T0, "tenant": "acme",
                "conversation_id": "k", "customer_id": "c"}
    core.add(state, Batch.of(0, [("chatbot", resolved)]), out)
    core.tick(state, T0, out)
    return state, out, resolved


def test_a_late_handoff_moves_a_contained_conversation_and_the_ratio_follows():
    core = ChatbotCore(WINDOWS, LATENESS)
    state, out, resolved = resolved_at_t0(core)
    assert core.totals([state], [T0])[("acme", "1h")] == [1, 0, 0]
    handoff = dict(resolved, event_id="h", event_type="handoff_requested", event_time=T0 - MIN)
    core.add(state, Batch.of(0, [("chatbot", handoff)]), out)
    core.tick(state, T0, out)
    assert core.totals([state], [T0])[("acme", "1h")] == [0, 1, 0]
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in core.collect([state], [T0])}
    assert families["cx_chatbot_containment_ratio"][("acme", "1h")] == 0.0
    assert [row.outcome for row in out.rows["chatbot_conversations"]] == ["contained", "handed_off"]


def test_conversations_are_forgotten_after_max_lateness_and_windows_slide():
    core = ChatbotCore(WINDOWS, LATENESS)
    state, out = core.new_state(0), Output()
    events = build([("acme", i, "conversation_abandoned", i) for i in range(5)])
    core.add(state, Batch.of(0, [("chatbot", e) for e in events]), out)
    core.tick(state, T0 + 10 * MIN, out)
    assert len(state.conversations["acme"]) == 5 and core.totals([state], [T0 + 10 * MIN])[("acme", "1h")] == [0, 0, 5]
    core.tick(state, T0 + 2 * DAY, out)
    assert core.totals([state], [T0 + 2 * DAY]).get(("acme", "24h"), [0, 0, 0]) == [0, 0, 0]
    core.tick(state, T0 + 8 * DAY, out)  # other sources ahead: a chatbot event up to max_lateness old is still valid
    assert len(state.conversations["acme"]) == 5
    later = build([("acme", 9, "conversation_started", 8 * 24 * 60)])  # the chatbot's own clock moves past
    core.add(state, Batch.of(0, [("chatbot", e) for e in later]), out)
    core.tick(state, T0 + 8 * DAY, out)
    assert {tenant: set(of_tenant) for tenant, of_tenant in state.conversations.items()} == {"acme": {"conv9"}}


def test_a_late_event_of_an_ended_conversation_does_not_restart_it_when_the_topic_is_behind():
    """The chatbot topic consumed days behind the others (lateness is judged per topic-partition): a handoff
    comes when the partition's clock is past max_lateness after the conversation's end. The conversation is
    still known, so its row (latest wins in ClickHouse) keeps its resolution and says handed_off."""
    core = ChatbotCore(WINDOWS, LATENESS)
    state, out, resolved = resolved_at_t0(core)
    core.tick(state, T0 + LATENESS + DAY, out)  # web, complaints, crm events of this partition
    handoff = dict(resolved, event_id="h", event_type="agent_joined", event_time=T0 + MIN)  # within max_lateness
    core.add(state, Batch.of(0, [("chatbot", handoff)]), out)
    core.tick(state, T0 + LATENESS + DAY, out)
    row = out.rows["chatbot_conversations"][-1]
    assert (row.resolved_ms, row.handoff_ms, row.ended_ms, row.outcome) == (T0, T0 + MIN, T0, "handed_off")
    assert row.updated_ms > out.rows["chatbot_conversations"][0].updated_ms
