"""The suite's own tools checked against the project's decoder and partitioner, so that a failing fault
test points at the worker, not at its input."""
from __future__ import annotations

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec, UndecodableError
from tests.faults.harness import PARTITIONS, SOURCES, now_ms, sentinel_ids, simulated, valid_workload, with_sentinels
from tests.faults.test_poison import fuzzed_workload, oversized_workload

CODEC = Codec(BundledRegistry())


def undecodable_on(source: str, value: bytes | None) -> bool:
    try:
        decoded = CODEC.decode(value)
    except UndecodableError:
        return True
    return decoded.schema.source != source


def test_the_independent_encoder_writes_what_the_project_decodes():
    work = valid_workload(simulated(seed=1, count=500, end_ms=now_ms()), batched=True)
    decoded = [e for m in work.messages for e in CODEC.decode(m.value).events]
    assert sorted(decoded, key=lambda e: e["event_id"]) == sorted((e for _, e in work.valid), key=lambda e: e["event_id"])


def test_every_fuzzed_value_is_undecodable_for_the_project_too():
    work = fuzzed_workload(seed=1010, n_junk=400)
    assert len(work.rejected) == 400
    assert all(undecodable_on(m.source, m.value) for m, _ in work.rejected)
    assert {reason for _, reason in work.rejected} == {"undecodable"}


def test_oversized_input_holds_exactly_three_bad_records():
    work, originals = oversized_workload()
    bad = [m for m, _ in work.rejected]
    assert undecodable_on("web", originals["junk"]) and min(len(m.value) for m in bad) >= 1_000_000
    batch = CODEC.decode(bad[0].value)
    assert batch.is_batch and [len(e["event_id"]) for e in batch.events] == [len("valid-next-to-huge"), 1_200_000]


def test_sentinels_come_last_on_every_input_partition_and_match_their_key():
    work = with_sentinels(valid_workload(simulated(seed=2, count=300, end_ms=now_ms())), "t")
    last = {}
    for m in work.messages:
        partition = m.partition if m.partition is not None else partition_for(m.key, PARTITIONS)
        last[(m.source, partition)] = CODEC.decode(m.value).events[-1]
    assert set(last) == {(s, p) for s in SOURCES for p in range(PARTITIONS)}
    assert {e["event_id"] for e in last.values()} == sentinel_ids("t")
    for (source, partition), event in last.items():
        assert partition_for(event_key(source, event), PARTITIONS) == partition
