"""The batch processor without a broker: every event ends processed, duplicate or rejected, and counts agree."""
import pytest

from pipeline.partitioner import event_key, partition_for
from pipeline.processor import Processor, Record
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.simulate import Simulator
from pipeline.validate import Rules
from pipeline.wire import Codec

REGISTRY = BundledRegistry()
CODEC = Codec(REGISTRY)
NOW = 1_700_000_000_000
WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
TOPICS = {f"cx.events.{s}": s for s in ("web", "chatbot", "crm", "complaints")}


def processor() -> Processor:
    rules = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)
    return Processor(CODEC, rules, TOPICS, WINDOWS, 86_400_000)


def records(events, batched: bool):
    """The events as Kafka records, one per event or one batch per (topic, partition)."""
    offsets = {}
    out = []
    groups = {}
    for source, event in events:
        tp = (f"cx.events.{source}", partition_for(event_key(source, event), 4))
        if batched:
            groups.setdefault(tp, []).append((source, event))
        else:
            offsets[tp] = offsets.get(tp, -1) + 1
            out.append(Record(tp[0], tp[1], offsets[tp], event_key(source, event), CODEC.encode_event(source, event)))
    for (topic, partition), items in groups.items():
        out.append(Record(topic, partition, 0, event_key(*items[0]), CODEC.encode_batch(items[0][0], [e for _, e in items])))
    return out


@pytest.fixture(scope="module")
def events():
    return list(Simulator(seed=3, customers=200, start_ms=NOW - 3_600_000, bad_rate=0.05).events(count=3000, rate=1.0))


@pytest.mark.parametrize("batched", [False, True])
def test_every_event_has_one_outcome(events, batched):
    result = processor().process(records(events, batched), NOW)
    consumed = sum(result.consumed.values())
    assert consumed == len(events)
    assert consumed == sum(result.processed.values()) + sum(result.duplicates.values()) + sum(result.rejected.values())
    assert len(result.rows["events"]) == sum(result.processed.values())
    assert len(result.rows["dead_letters"]) == len(result.dead_letters) == sum(result.rejected.values())


def test_single_and_batched_agree(events):
    a, b = processor(), processor()
    ra, rb = a.process(records(events, False), NOW), b.process(records(events, True), NOW)
    assert (ra.processed, ra.duplicates, ra.rejected) == (rb.processed, rb.duplicates, rb.rejected)
    assert a.survey_totals() == b.survey_totals()
    assert sorted(r[0] for r in ra.rows["events"]) == sorted(r[0] for r in rb.rows["events"])


def test_matches_the_simulators_own_count_of_bad_records(events):
    sim = Simulator(seed=3, customers=200, start_ms=NOW - 3_600_000, bad_rate=0.05)
    list(sim.events(count=3000, rate=1.0))
    result = processor().process(records(events, False), NOW)
    assert sum(result.duplicates.values()) == sim.stats["duplicate"]
    rejected = sum(result.rejected.values())
    assert rejected == sim.stats["bad_score"] + sim.stats["missing_survey"] + sim.stats["empty_event_id"] + sim.stats["missing_customer"]


def test_replay_after_restore_counts_only_duplicates(events):
    first = processor()
    result = first.process(records(events, True), NOW)
    # what ClickHouse would hold, read back into a fresh worker (see sinks/clickhouse/state.py)
    from sinks.clickhouse.state import RestoredState
    restored = RestoredState(clock_ms=first.clock_ms, source_clocks=dict(first.source_clock_ms))
    restored.event_ids = [(r[11], r[0], r[4]) for r in result.rows["events"]]
    counts = {}
    for row in result.rows["survey_responses"]:
        key = (row[10], row[3], row[6], row[2] // 60_000, row[7])
        counts[key] = counts.get(key, 0) + 1
    restored.survey_counts = [k + (n,) for k, n in counts.items()]
    second = processor()
    second.restore(restored)
    assert second.survey_totals() == first.survey_totals()
    again = second.process(records(events, True), NOW)
    assert sum(again.processed.values()) == 0
    assert second.survey_totals() == first.survey_totals()


def test_bad_event_in_a_batch_is_dead_lettered_alone():
    good = {"event_id": "g1", "event_type": "login", "event_time": NOW, "customer_id": "c1"}
    bad = {"event_id": "b1", "event_type": "survey_response", "event_time": NOW, "customer_id": "c1",
           "survey": {"kind": "NPS", "score": 42}}
    result = processor().process([Record("cx.events.web", 0, 7, b"c1", CODEC.encode_batch("web", [good, bad, good | {"event_id": "g2"}]))], NOW)
    assert sum(result.processed.values()) == 2 and result.rejected == {("web", "invalid_value"): 1}
    row = result.rows["dead_letters"][0]
    assert row[4] == 7 and row[5] == 1  # offset, batch index
    alone = CODEC.decode(row[9])
    assert not alone.is_batch and alone.events[0]["event_id"] == "b1"  # replayable on its own


def test_undecodable_and_wrong_topic():
    web_event = CODEC.encode_event("web", {"event_id": "w", "event_type": "login", "event_time": NOW, "customer_id": "c"})
    result = processor().process([
        Record("cx.events.crm", 0, 0, b"c", web_event),  # a WebEvent on the CRM topic
        Record("cx.events.web", 0, 1, b"\xff", web_event),  # key not UTF-8
        Record("cx.events.web", 0, 2, b"c", b"garbage"),
    ], NOW)
    assert result.rejected == {("crm", "undecodable"): 1, ("web", "undecodable"): 2}
    assert sum(result.consumed.values()) == 3


def test_revoked_partitions_stop_counting():
    p = processor()
    survey = {"event_id": "s", "event_type": "survey_response", "event_time": NOW, "customer_id": "c1",
              "survey": {"kind": "NPS", "score": 10}}
    p.process([Record("cx.events.web", 2, 0, b"c1", CODEC.encode_event("web", survey))], NOW)
    assert p.survey_totals()[("default", "NPS", "1h")].n == 1
    assert p.keep_only([0, 1]) == [0, 1]
    assert p.survey_totals() == {}
