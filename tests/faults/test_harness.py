"""The suite's own tools checked against the project's decoder and partitioner, so that a failing fault
test points at the worker, not at its input."""
from __future__ import annotations

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec, UndecodableError
from tests.faults.harness import (
    PARTITIONS,
    REPORT_ENV,
    SOURCES,
    Tally,
    now_ms,
    record_fault,
    sentinel_ids,
    simulated,
    tally,
    valid_workload,
    with_sentinels,
)
from tests.faults.report import load, markdown
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


def test_tally_counts_what_is_missing_as_lost_and_what_is_beyond_as_double_counted():
    want = {"events_final": 10, "events_uniq": 10, "surveys_final": 4, "surveys_uniq": 4}
    got = {"events_final": 11, "events_uniq": 9, "surveys_final": 4, "surveys_uniq": 3}
    want_series = {("t", "NPS", "1h", "promoter"): 3, ("t", "NPS", "1h", "detractor"): 1}
    got_series = {("t", "NPS", "1h", "promoter"): 5.0, ("t", "CES", "1h", "all"): 1.0}
    assert tally(want, want_series, got, got_series) == Tally(lost=1 + 1 + 1, double_counted=1 + 2 + 1)
    assert tally(want, want_series, want, want_series) == Tally(0, 0)


def test_recorded_figures_become_one_row_per_test_the_last_run_winning(tmp_path, monkeypatch):
    report = tmp_path / "faults.jsonl"
    monkeypatch.delenv(REPORT_ENV, raising=False)
    record_fault("1", "kill", "SIGKILL", 10, Tally(0, 0), 1.0, "from the restart")
    assert not report.exists()

    monkeypatch.setenv(REPORT_ENV, str(report))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/faults/t.py::test_fuzz (call)")
    for seconds in (9.0, 2.04):
        record_fault("10", "fuzz", "junk", 3000, Tally(0, 0), seconds, "from the last record sent", junk_sent=400)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/faults/t.py::test_demo (call)")
    record_fault("7a", "demo", "SIGINT", None, None, [1.0, 2.0, 6.0], "from the signal to exit", note="3 processes")
    assert markdown(load(report)).splitlines()[2:] == [
        "| 7a | demo | SIGINT | – (its own simulator) | – | – | median 2.0 s, max 6.0 s (3 times) |",
        "| 10 | fuzz | junk | 3,000 + 400 bad | 0 | 0 | 2.0 s |",
        "",
        "- **7a** recovery: from the signal to exit. 3 processes.",
        "- **10** recovery: from the last record sent.",
    ]
