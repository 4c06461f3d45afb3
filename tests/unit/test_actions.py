"""The follow-up actions core: one message, row and count per action id, also across restores."""
from __future__ import annotations

import io

import fastavro

from pipeline.messages import FollowUpAction
from pipeline.metrics.actions import ActionCore
from pipeline.metrics.base import Facts, Output
from pipeline.metrics.facts import ActionRequested, action_id
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec

DAY = 86_400_000


def fact(complaint: str, stage: str, created: int) -> ActionRequested:
    return ActionRequested(action_id("complaint_sla_breach", complaint, stage), "complaint_sla_breach", "acme", "c-7",
                           "first response SLA breached", {"complaint_id": complaint, "stage": stage},
                           created + 3_600_000, created)


def round_with(core: ActionCore, state, facts: list[ActionRequested], clock: int) -> Output:
    out = Output()
    core.take(state, Facts(facts), out)
    core.tick(state, clock, out)
    return out


def test_each_action_once_with_its_avro_message_row_and_count():
    codec = Codec(BundledRegistry())
    core = ActionCore(7 * DAY)
    state = core.new_state(2)
    first = round_with(core, state, [fact("k1", "first_response", 1000), fact("k1", "first_response", 1000)], 1000)
    again = round_with(core, state, [fact("k1", "first_response", 5000), fact("k1", "resolution", 5000)], 5000)
    assert len(first.messages["actions"]) == 1 and len(again.messages["actions"]) == 1
    key, message = first.messages["actions"][0]
    assert isinstance(message, FollowUpAction)
    value = codec.encode_message(message)
    schema = codec.registry.by_name("cx.FollowUpAction")
    assert key == b"c-7" and int.from_bytes(value[1:5], "big") == schema.id
    record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema.decoder_parsed)
    assert record["action_id"] == action_id("complaint_sla_breach", "k1", "first_response")
    assert record["context"] == {"complaint_id": "k1", "stage": "first_response"} and record["due_time"] == 3_601_000
    row = first.rows["actions"][0]
    assert (row.created_at, row.due_ms, row.kafka_partition, row.context_keys) == (1, 3_601_000, 2, ["complaint_id", "stage"])
    assert first.counts == {("cx_actions", ("acme", "complaint_sla_breach")): 1}


def test_restored_ids_are_not_sent_again_and_ids_are_forgotten_after_the_horizon():
    core = ActionCore(7 * DAY)
    state = core.new_state(2)
    (spec,) = core.restores()
    core.restore(state, "actions", [spec.row_type()(action_id("complaint_sla_breach", "k1", "resolution"), 1000)], 1000)
    assert not round_with(core, state, [fact("k1", "resolution", 2000)], 2000).messages
    round_with(core, state, [], 9 * DAY)
    assert state.emitted == {}


def test_action_ids_are_deterministic_per_cause():
    assert action_id("complaint_sla_breach", "k1", "resolution") == action_id("complaint_sla_breach", "k1", "resolution")
    assert len({action_id("complaint_sla_breach", c, s) for c in ("k1", "k2") for s in ("a", "b")}) == 4
