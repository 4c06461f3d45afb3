"""The batch processor without a broker: every event ends processed, duplicate or rejected, and counts agree."""
from collections import Counter

import pytest

from pipeline.dedup import id_hash
from pipeline.metrics.base import Restored
from pipeline.metrics.surveys import SurveyCore
from pipeline.partitioner import event_key, partition_for
from pipeline.processor import Processor, Record
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.simulate import Simulator
from pipeline.validate import Rules, check_fields
from pipeline.wire import Codec

REGISTRY = BundledRegistry()
CODEC = Codec(REGISTRY)
NOW = 1_700_000_000_000
WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
TOPICS = {f"cx.events.{s}": s for s in ("web", "chatbot", "crm", "complaints")}
ANSWER_ROW = SurveyCore(WINDOWS).restores()[0].row_type()


def processor(deadletter_max_bytes: int = 65_536, cores=None, partitions=range(4), tenants=()) -> Processor:
    """The survey core alone unless ``cores`` are given, owning ``partitions``."""
    rules = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000,
                               tenants=tenants)
    p = Processor(CODEC, rules, TOPICS, 86_400_000, cores or [SurveyCore(WINDOWS)], deadletter_max_bytes)
    p.assign(partitions)
    return p


def counts(out, name: str) -> Counter:
    """Label values -> increments of one instrument in an Output."""
    return Counter({labels: n for (metric, labels), n in out.counts.items() if metric == name})


def total(out, name: str) -> int:
    return sum(counts(out, name).values())


def survey_totals(p: Processor):
    return SurveyCore.totals([s.cores[0] for s in p.owned_states()], [s.clock_ms for s in p.owned_states()])


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
    out = processor().process(records(events, batched), NOW)
    consumed = total(out, "cxp_events_consumed")
    assert consumed == len(events)
    assert consumed == total(out, "cxp_events_processed") + total(out, "cxp_events_duplicate") + total(out, "cxp_events_rejected")
    assert len(out.rows["events"]) == total(out, "cxp_events_processed")
    assert len(out.rows["dead_letters"]) == len(out.messages["deadletter"]) == total(out, "cxp_events_rejected")


def test_single_and_batched_agree(events):
    a, b = processor(), processor()
    ra, rb = a.process(records(events, False), NOW), b.process(records(events, True), NOW)
    for name in ("cxp_events_consumed", "cxp_events_processed", "cxp_events_duplicate", "cxp_events_rejected"):
        assert counts(ra, name) == counts(rb, name)
    assert survey_totals(a) == survey_totals(b)
    assert sorted(r.event_id for r in ra.rows["events"]) == sorted(r.event_id for r in rb.rows["events"])


def test_matches_the_simulators_own_count_of_bad_records(events):
    sim = Simulator(seed=3, customers=200, start_ms=NOW - 3_600_000, bad_rate=0.05)
    list(sim.events(count=3000, rate=1.0))
    out = processor().process(records(events, False), NOW)
    assert total(out, "cxp_events_duplicate") == sim.stats["duplicate"]
    rejected = total(out, "cxp_events_rejected")
    assert rejected == sim.stats["bad_score"] + sim.stats["missing_survey"] + sim.stats["empty_event_id"] + sim.stats["missing_customer"]


def test_replay_after_restore_counts_only_duplicates(events):
    first = processor()
    out = first.process(records(events, True), NOW)
    # what ClickHouse would hold, read back into a fresh worker (see sinks/clickhouse/state.py)
    restored = Restored(list(range(4)), source_clocks=dict(first.source_clock_ms))
    for row in out.rows["events"]:
        hashes, times = restored.ids.setdefault(row.kafka_partition, ([], []))
        hashes.append(row.id_hash)
        times.append(row.event_ms)
    answers: dict = {}
    for r in out.rows["survey_responses"]:
        answers.setdefault(r.kafka_partition, []).append(ANSWER_ROW(r.tenant, r.kind, r.score, r.event_ms, r.id_hash))
    restored.core_rows = [{"answers": answers}]
    second = processor()
    second.restore(restored)
    assert survey_totals(second) == survey_totals(first)
    again = second.process(records(events, True), NOW)
    assert total(again, "cxp_events_processed") == 0
    assert survey_totals(second) == survey_totals(first)


def test_bad_event_in_a_batch_is_dead_lettered_alone():
    good = {"event_id": "g1", "event_type": "login", "event_time": NOW, "customer_id": "c1"}
    bad = {"event_id": "b1", "event_type": "survey_response", "event_time": NOW, "customer_id": "c1",
           "survey": {"kind": "NPS", "score": 42}}
    out = processor().process([Record("cx.events.web", 0, 7, b"c1", CODEC.encode_batch("web", [good, bad, good | {"event_id": "g2"}]))], NOW)
    assert total(out, "cxp_events_processed") == 2 and counts(out, "cxp_events_rejected") == {("web", "invalid_value"): 1}
    row = out.rows["dead_letters"][0]
    assert row.offset == 7 and row.batch_index == 1
    alone = CODEC.decode(row.payload)
    assert not alone.is_batch and alone.events[0]["event_id"] == "b1"  # replayable on its own


def test_undecodable_and_wrong_topic():
    web_event = CODEC.encode_event("web", {"event_id": "w", "event_type": "login", "event_time": NOW, "customer_id": "c"})
    out = processor().process([
        Record("cx.events.crm", 0, 0, b"c", web_event),  # a WebEvent on the CRM topic
        Record("cx.events.web", 0, 1, b"\xff", web_event),  # key not UTF-8
        Record("cx.events.web", 0, 2, b"c", b"garbage"),
    ], NOW)
    assert counts(out, "cxp_events_rejected") == {("crm", "undecodable"): 1, ("web", "undecodable"): 2}
    assert total(out, "cxp_events_consumed") == 3


def test_revoked_partitions_stop_counting():
    p = processor()
    survey = {"event_id": "s", "event_type": "survey_response", "event_time": NOW, "customer_id": "c1",
              "survey": {"kind": "NPS", "score": 10}}
    p.process([Record("cx.events.web", 2, 0, b"c1", CODEC.encode_event("web", survey))], NOW)
    assert survey_totals(p)[("default", "NPS", "1h")].n == 1
    p.revoke(forget=False)
    assert not p.owns(2) and survey_totals(p) == {}
    assert p.assign([0, 1, 2]) == [0, 1]  # 2 kept its state across the rebalance: no rebuild
    assert survey_totals(p)[("default", "NPS", "1h")].n == 1
    assert p.assign([0, 1]) == [0, 1] and survey_totals(p) == {}
    p.revoke(forget=True)
    assert p.assign([0, 1]) == [0, 1]  # forgotten: rebuilt from ClickHouse


@pytest.mark.parametrize("oversized", ["event_id", "undecodable"])
def test_oversized_bad_record_gives_a_dead_letter_that_fits(oversized):
    """A 1.2 MB bad record is dead-lettered truncated, with its size, and the valid events go on."""
    limit = 65_536
    good = {"event_id": "g1", "event_type": "login", "event_time": NOW, "customer_id": "c1"}
    if oversized == "event_id":
        bad = Record("cx.events.web", 0, 1, b"c1", CODEC.encode_event("web", good | {"event_id": "x" * 1_200_000}))
    else:
        bad = Record("cx.events.web", 0, 1, b"k" * 200_000, b"\x00junk" * 150_000)
    out = processor(limit).process([bad, Record("cx.events.web", 0, 2, b"c1", CODEC.encode_event("web", good))], NOW)
    assert total(out, "cxp_events_processed") == 1 and total(out, "cxp_events_rejected") == 1
    (key, message), = out.messages["deadletter"]
    value = CODEC.encode_message(message)
    assert len(value) < 3 * limit and (key is None or len(key) <= limit)
    letter = CODEC.decode(value).events[0]
    assert letter["truncated"] and letter["original_size"] == len(bad.value) and len(letter["original_value"]) == limit
    assert "truncated" in letter["error"] and len(out.rows["dead_letters"][0].payload) == limit


def test_events_of_a_tenant_outside_the_allow_list_are_dead_lettered_and_never_counted(events):
    """CXP_TENANTS=acme: globex's events (the simulator's second tenant) go to the dead letters with the reason
    unknown_tenant, are counted by that reason, and reach no table and no core."""
    p = processor(tenants=["acme"])
    out = p.process(records(events, batched=True), NOW)
    # The oracle: globex's events that pass every other field rule (duplicates included: validation comes first).
    globex = Counter(source for source, event in events
                     if event.get("tenant") == "globex" and check_fields(source, event, processor().rules) is None)
    assert sum(globex.values()) > 100
    rejected = counts(out, "cxp_events_rejected")
    assert {source: n for (source, reason), n in rejected.items() if reason == "unknown_tenant"} == dict(globex)
    letters = [row for row in out.rows["dead_letters"] if row.reason == "unknown_tenant"]
    assert len(letters) == sum(globex.values())
    assert {row.error for row in letters} == {"tenant 'globex' is not in CXP_TENANTS (acme)"}
    assert {row.tenant for row in out.rows["events"]} == {"acme"}
    assert {tenant for tenant, _, _ in survey_totals(p)} == {"acme"}


def test_a_run_of_records_is_decided_as_record_by_record():
    """The records of one topic-partition are deduped in one go (``Deduper.seen``, then one ``check``); the
    outcome must be what one ``process`` call per record gives: a repeat of an id remembered earlier in the
    run is a duplicate (an old one too: it is remembered on the partition's clock), an event made late by
    the clock that earlier records of the run moved is rejected, and a repeat inside one batch message is
    a duplicate of its first occurrence."""
    hour = 3_600_000
    base = dict(Simulator(seed=4, customers=5, start_ms=NOW - hour).events(count=1, rate=1.0).__next__()[1],
                tenant="acme", customer_id="c1", event_type="page_view", attributes={})
    base.pop("survey", None)

    def event(event_id: str, at_ms: int) -> dict:
        return dict(base, event_id=event_id, event_time=at_ms)

    recent, old_ms = NOW - hour, NOW - 3 * 86_400_000  # old: past the 1-day dedup horizon, within 7 days' lateness
    messages = [[event("a", recent)], [event("b", recent + 1)], [event("a", recent)],  # a repeated: duplicate
                [event("old", old_ms)], [event("old", old_ms)],
                [event("far", NOW + 60_000)],  # moves the clock on: the next one is now too late
                [event("late", NOW + 60_000 - 8 * 86_400_000)],
                [event("c", recent), event("c", recent), event("d", recent)]]  # a batch message with a repeat
    topic, partition = "cx.events.web", 0
    as_records = [Record(topic, partition, offset, b"k",
                         CODEC.encode_event("web", items[0]) if len(items) == 1 else CODEC.encode_batch("web", items))
                  for offset, items in enumerate(messages)]

    def outcome(out):
        return ([row.event_id for row in out.rows["events"]],
                sorted((row.offset, row.batch_index, row.reason) for row in out.rows["dead_letters"]),
                {name: total(out, name) for name in ("cxp_events_consumed", "cxp_events_processed",
                                                      "cxp_events_duplicate", "cxp_events_rejected")})

    alone = processor()
    one_by_one = [outcome(alone.process([record], NOW)) for record in as_records]
    together = processor()
    rows, letters, totals = outcome(together.process(as_records, NOW))
    assert rows == [event_id for ids, _, _ in one_by_one for event_id in ids] == ["a", "b", "old", "far", "c", "d"]
    assert letters == sorted(letter for _, ls, _ in one_by_one for letter in ls) and [reason for *_, reason in letters] == ["too_late"]
    assert totals == {name: sum(t[name] for *_, t in one_by_one) for name in totals}
    assert totals["cxp_events_duplicate"] == 3
    assert together.partitions[partition].clock_ms == alone.partitions[partition].clock_ms
    remembered = [id_hash(i) for i in ("a", "b", "c", "d", "far", "old", "never")]
    assert together.partitions[partition].dedup.seen(remembered) == alone.partitions[partition].dedup.seen(remembered) == [True] * 6 + [False]


def test_the_events_of_one_record_are_judged_by_the_clocks_before_it():
    """Lateness is judged by the clock as the records before a record left it, whatever an earlier event of
    the same batch message moved it to; the next record is judged by the moved clock. In one run as alone."""
    day = 86_400_000
    base = dict(Simulator(seed=4, customers=5, start_ms=NOW - day).events(count=1, rate=1.0).__next__()[1],
                tenant="acme", customer_id="c1", event_type="page_view", attributes={})
    base.pop("survey", None)
    messages = [[dict(base, event_id="x1", event_time=NOW - 10 * day)],
                [dict(base, event_id="x2", event_time=NOW), dict(base, event_id="x3", event_time=NOW - 9 * day)],
                [dict(base, event_id="x4", event_time=NOW - 9 * day)]]  # 9 days behind x2: too late (7 days allowed)
    as_records = [Record("cx.events.web", 1, offset, b"k",
                         CODEC.encode_event("web", items[0]) if len(items) == 1 else CODEC.encode_batch("web", items))
                  for offset, items in enumerate(messages)]
    alone = processor()
    one_by_one = [alone.process([record], NOW) for record in as_records]
    together = processor().process(as_records, NOW)
    assert [row.event_id for row in together.rows["events"]] == ["x1", "x2", "x3"]
    assert [(row.offset, row.reason) for row in together.rows["dead_letters"]] == [(2, "too_late")]
    assert [row.event_id for out in one_by_one for row in out.rows["events"]] == ["x1", "x2", "x3"]
    assert [(row.offset, row.reason) for out in one_by_one for row in out.rows["dead_letters"]] == [(2, "too_late")]
