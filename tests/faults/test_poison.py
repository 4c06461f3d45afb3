"""Poison input: oversized records and raw-byte fuzz, written by kafka-python (not the project's client)
between valid events. Each bad record is dead-lettered once, no valid event is lost, the worker goes on."""
from __future__ import annotations

import struct
import time
from collections import Counter
from random import Random

import pytest

from tests.faults.harness import (
    RECORD,
    SCHEMA_IDS,
    SOURCES,
    Message,
    Workload,
    decodes_on,
    encode,
    expected_counts,
    identity_holds,
    now_ms,
    outcome_totals,
    produce,
    read_dead_letters,
    record_fault,
    simulated,
    topic,
    valid_workload,
    wait_until,
    with_sentinels,
)

pytestmark = pytest.mark.integration

MAX_KEPT = 65_536  # CXP_DEADLETTER_MAX_BYTES, set explicitly below


def oversized_workload() -> tuple[Workload, dict[str, bytes]]:
    """~20k valid events in batch messages, and three bad records over 1 MB: an event with a 1.2 MB
    event_id inside a batch next to a valid event, the same alone in a single message, and 1 MB of junk.

    Returns the workload and, per bad record, the bytes its dead letter must start with: the batch
    event is dead-lettered alone, re-encoded as a single-event message."""
    events = simulated(seed=303, count=20_000, end_ms=now_ms())
    work = valid_workload(events, batched=True)
    source, base = next((s, e) for s, e in events if s == "crm" and not e.get("survey"))
    huge_id = "x" * 1_200_000
    neighbour = dict(base, event_id="valid-next-to-huge")
    in_batch = dict(base, event_id=huge_id)
    alone = dict(base, event_id="y" * 1_200_000)
    junk = bytes([0x7F]) + Random(3).randbytes(1_000_000 - 1)
    assert not decodes_on(source, junk)
    key = base["customer_id"].encode()
    work.valid.append((source, neighbour))
    bad = [Message(source, key, encode(f"{RECORD[source]}Batch", {"events": [neighbour, in_batch]})),
           Message(source, key, encode(RECORD[source], alone)),
           Message("web", b"junk-key", junk)]
    middle = len(work.messages) // 2
    work.messages[middle:middle] = bad
    work.rejected = [(bad[0], "invalid_value"), (bad[1], "invalid_value"), (bad[2], "undecodable")]
    originals = {"in-batch": encode(RECORD[source], in_batch), "alone": bad[1].value, "junk": junk}
    return work, originals


def test_oversized_records_are_dead_lettered_truncated_and_never_loop(stage):
    work, originals = oversized_workload()
    full = with_sentinels(work, "end")
    worker = stage.worker(CXP_DEADLETTER_MAX_BYTES=str(MAX_KEPT)).start()
    produce(stage.bootstrap, stage.prefix, full.messages)
    sent = time.monotonic()
    stage.wait_drained(["end"])
    stage.wait_exact(full, lambda: [worker.metrics()])
    catch_up_s = time.monotonic() - sent
    samples = worker.metrics()
    assert identity_holds(samples), outcome_totals(samples)
    assert outcome_totals(samples)["rejected"] == 3
    assert sum(v for _, v in samples.get("cxp_sink_errors_total", [])) == 0, "a big payload made an insert fail"
    assert worker.process.poll() is None

    letters = wait_until(lambda: read_dead_letters(stage.bootstrap, stage.prefix), lambda ls: len(ls) >= 3, 60,
                         "three dead letters")
    assert len(letters) == 3, [(dl["reason"], dl["error"][:80]) for dl in letters]
    by_kind = {"in-batch": next(dl for dl in letters if dl["batch_index"] is not None),
               "alone": next(dl for dl in letters if dl["reason"] == "invalid_value" and dl["batch_index"] is None),
               "junk": next(dl for dl in letters if dl["reason"] == "undecodable")}
    for kind, letter in by_kind.items():
        original = originals[kind]
        assert letter["truncated"] is True, kind
        assert letter["original_size"] == len(original), kind
        assert letter["original_value"] == original[:MAX_KEPT], kind
    assert by_kind["junk"]["source_topic"] == topic(stage.prefix, "web")
    stored = stage.tables.query("SELECT reason, length(payload) FROM {db}.dead_letters FINAL ORDER BY reason")
    assert stored == [("invalid_value", MAX_KEPT), ("invalid_value", MAX_KEPT), ("undecodable", MAX_KEPT)]

    # A restart may meet the bad records once more (at-least-once), but they must not make new dead
    # letters: a re-sent letter names the same record and collapses with its row in FINAL.
    where = {(dl["source_topic"], dl["source_partition"], dl["source_offset"], dl["batch_index"]) for dl in letters}
    worker.stop()
    after = stage.worker(CXP_DEADLETTER_MAX_BYTES=str(MAX_KEPT)).start()
    more = with_sentinels(valid_workload(simulated(seed=304, count=500, end_ms=work.clock())), "after")
    produce(stage.bootstrap, stage.prefix, more.messages)
    stage.wait_drained(["after"])
    everything = Workload(full.valid + more.valid)
    counted = stage.wait_exact(everything, lambda: [after.metrics()])
    assert outcome_totals(after.metrics())["rejected"] <= 3
    assert stage.tables.dead_letter_reasons() == work.expected_rejected()
    again = Counter((dl["source_topic"], dl["source_partition"], dl["source_offset"], dl["batch_index"])
                    for dl in read_dead_letters(stage.bootstrap, stage.prefix))
    assert set(again) == where and max(again.values()) <= 2, again
    record_fault("3", "oversized records", "two 1.2 MB events (one inside a batch) and 1 MB of junk amid valid events",
                 len(everything.valid), counted, catch_up_s,
                 "from the broker acknowledging the last record until the sentinels are stored and the rows and series "
                 "equal the recomputation (the worker never stops)", junk_sent=len(work.rejected),
                 note=f"3 dead letters, each truncated to {MAX_KEPT:,} bytes; a restart re-sent "
                      f"{sum(again.values()) - len(again)} of them, dead_letters FINAL unchanged")


# -- fuzz ---------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    """Avro's zig-zag varint of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def junk_value(rng: Random, source: str, valid: bytes) -> bytes | None:
    """One malformed value for a topic of source, in one of the shapes real producers get wrong."""
    header = valid[:5]
    other = rng.choice([s for s in SOURCES if s != source])
    shapes = [
        lambda: rng.randbytes(rng.randint(1, 3000)),  # anything
        lambda: b"",  # empty
        lambda: None,  # a tombstone
        lambda: valid[:rng.randint(1, len(valid) - 1)],  # truncated
        lambda: bytes([rng.randint(1, 255)]) + valid[1:],  # wrong magic byte
        lambda: b"\x00" + struct.pack(">I", rng.choice([0, 5, 999, 2**32 - 1])) + valid[5:],  # unknown schema id
        lambda: struct.pack(">bI", 0, SCHEMA_IDS[RECORD[other]]) + valid[5:],  # another source's schema
        lambda: header + _varint(rng.choice([2**31, 2**62, -5])) + rng.randbytes(8),  # huge or negative length
        lambda: header + rng.randbytes(rng.randint(1, 500)),  # valid header, garbage body
        lambda: valid + rng.randbytes(rng.randint(1, 20)),  # trailing bytes
        lambda: b'{"event_id": "%d", "event_type": "page_view"}' % rng.getrandbits(32),  # JSON, not Avro
    ]
    while True:
        value = rng.choice(shapes)()
        if not decodes_on(source, value):  # garbage that happens to decode is not junk
            return value


def fuzzed_workload(seed: int, n_junk: int) -> Workload:
    """Valid single-event messages with n_junk malformed ones spliced in at random places."""
    rng = Random(seed)
    work = valid_workload(simulated(seed=seed, count=3000, end_ms=now_ms()))
    models = list(work.messages)
    for _ in range(n_junk):
        model = rng.choice(models)
        value = junk_value(rng, model.source, model.value)
        key = rng.choice([None, model.key, rng.randbytes(rng.randint(0, 40))])
        message = Message(model.source, model.key if value is None else key, value)  # a tombstone needs a key
        work.messages.insert(rng.randint(0, len(work.messages)), message)
        work.rejected.append((message, "undecodable"))
    return work


def test_raw_byte_fuzz_is_dead_lettered_as_undecodable(stage):
    work = with_sentinels(fuzzed_workload(seed=1010, n_junk=400), "end")
    worker = stage.worker().start()
    produce(stage.bootstrap, stage.prefix, work.messages)
    sent_at = time.monotonic()
    stage.wait_drained(["end"])
    counted = stage.wait_exact(work, lambda: [worker.metrics()])
    catch_up_s = time.monotonic() - sent_at
    samples = worker.metrics()
    totals = outcome_totals(samples)
    assert totals == {"consumed": len(work.valid) + 400, "processed": len(work.valid), "duplicate": 0, "rejected": 400}
    assert identity_holds(samples)
    assert worker.process.poll() is None
    assert stage.tables.counts() == expected_counts(work)
    assert stage.tables.dead_letter_reasons() == work.expected_rejected() == {"undecodable": 400}

    letters = wait_until(lambda: read_dead_letters(stage.bootstrap, stage.prefix), lambda ls: len(ls) >= 400, 60,
                         "400 dead letters")
    assert Counter(dl["reason"] for dl in letters) == {"undecodable": 400}
    sent = Counter((topic(stage.prefix, m.source), m.key, m.value or b"") for m, _ in work.rejected)
    got = Counter((dl["source_topic"], dl["original_key"], dl["original_value"]) for dl in letters)
    assert got == sent
    record_fault("10", "raw-byte fuzz", "400 seeded junk values of 11 shapes, random keys, among valid events",
                 len(work.valid), counted, catch_up_s,
                 "from the broker acknowledging the last record until the sentinels are stored and the rows and series "
                 "equal the recomputation (the worker never stops)", junk_sent=len(work.rejected),
                 note="400 dead letters, each with its record's topic, key and bytes")
