"""Stream time per partition: a partition held back during a backfill keeps its valid events.

30 days of simulated history go into 8 partitions, as `cxp replay` sends a history: batches per topic and
partition, in event-time order across topics. One partition is held back: its records reach the worker
only after the other seven partitions' 30 days are processed, as when that partition is paused or stuck
behind a slow consumer. With one event-time clock per worker, its first 23 days would be more than
`max_lateness` (7 d) behind the clock the other partitions pushed to day 30, and dead-lettered as
`too_late`; the four topics are fetched at their own pace too, so within a partition one source can also
run ahead of another. With stream time per partition, lateness judged per topic-partition, nothing is too
late, every row is stored once, and every gauge family equals its reproducing query of docs/metrics.md.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.metrics.registry import build_cores
from pipeline.partitioner import event_key, partition_for
from pipeline.settings import Settings
from pipeline.simulate import JsonlWriter
from runtime.local.metrics import total
from sinks.clickhouse.backend import NativeBackend
from tests.faults.harness import (
    RECORD,
    Message,
    Stage,
    Tally,
    Workload,
    encode,
    create_topics,
    expected_counts,
    identity_holds,
    now_ms,
    produce,
    record_fault,
    sentinel_ids,
    sentinels,
    simulated,
    wait_until,
)
from tests.gauge_queries import assert_gauges_match

pytestmark = pytest.mark.integration
DAY = 86_400_000
PARTITIONS, HELD = 8, 5


def in_time_order(events: list[tuple[str, dict]]) -> Workload:
    """Batch messages of up to 200 events per topic and partition, sent in the order of their first event."""
    work = Workload(valid=list(events))
    chunks: dict[tuple[str, int], list[dict]] = {}
    timed = []
    for source, event in events:
        chunk = chunks.setdefault((source, partition_for(event_key(source, event), PARTITIONS)), [])
        chunk.append(event)
        if len(chunk) == 200:
            timed.append((chunk[0]["event_time"], source, list(chunk)))
            chunk.clear()
    timed += [(chunk[0]["event_time"], source, list(chunk)) for (source, _), chunk in chunks.items() if chunk]
    for _, source, chunk in sorted(timed, key=lambda item: item[0]):
        work.messages.append(Message(source, event_key(source, chunk[0]), encode(f"{RECORD[source]}Batch", {"events": chunk}),
                                     partition_for(event_key(source, chunk[0]), PARTITIONS)))
    return work


def test_a_partition_held_back_during_a_30_day_backfill_rejects_none_of_its_valid_events(broker, clickhouse_url,
                                                                                         tmp_path):
    stage = Stage(broker.url, clickhouse_url, tmp_path, partitions=PARTITIONS)
    try:
        create_topics(stage.bootstrap, stage.prefix, partitions=PARTITIONS)
        events = simulated(seed=31, count=16_000, end_ms=now_ms() - 60_000, span_ms=30 * DAY, customers=800)
        held = [(s, e) for s, e in events if partition_for(event_key(s, e), PARTITIONS) == HELD]
        others = [(s, e) for s, e in events if partition_for(event_key(s, e), PARTITIONS) != HELD]
        clock = max(e["event_time"] for _, e in events)
        assert len(held) > 1000 and min(e["event_time"] for _, e in held) < clock - 20 * DAY

        worker = stage.worker().start()
        first = in_time_order(others)
        started = time.monotonic()
        first.extend(sentinels("others", events, clock, [p for p in range(PARTITIONS) if p != HELD], PARTITIONS))
        produce(stage.bootstrap, stage.prefix, first.messages)
        wait_until(lambda: stage.tables.has_all(sentinel_ids("others", [p for p in range(PARTITIONS) if p != HELD])),
                   bool, 180, "the seven partitions' backfill in ClickHouse")

        second = in_time_order(held)  # the held partition, released
        second.extend(sentinels("held", events, clock, [HELD], PARTITIONS))
        produce(stage.bootstrap, stage.prefix, second.messages)
        wait_until(lambda: stage.tables.has_all(sentinel_ids("held", [HELD])), bool, 180,
                   "the held partition's backfill in ClickHouse")

        first.extend(second)
        samples = worker.wait_for(lambda s: total(s, "cxp_events_consumed_total") == len(first.valid), 60,
                                  "every event consumed")
        recovery_s = time.monotonic() - started
        assert total(samples, "cxp_events_rejected_total") == 0, samples["cxp_events_rejected_total"]  # none too_late
        assert total(samples, "cxp_events_processed_total") == len(first.valid) and identity_holds(samples)
        assert stage.tables.counts() == expected_counts(first)
        families = gauges_equal_their_queries(stage, samples)
        record_fault("13", "one partition held back during a 30-day backfill",
                     f"partition {HELD} of {PARTITIONS} sent after the other seven's 30 days were processed",
                     len(first.valid), tally_of(stage, len(first.valid)), recovery_s,
                     "from the first input sent until every event is stored and consumed",
                     note=f"0 too_late; {families} gauge families equal their reproducing queries")
    finally:
        stage.stop_all()


def gauges_equal_their_queries(stage: Stage, samples: dict) -> int:
    """Every gauge family equals its reproducing query over the stored rows, each partition at its own
    clock; returns how many families were compared."""
    backend = NativeBackend(stage.clickhouse_url)
    try:
        families = assert_gauges_match(samples, build_cores(Settings()), backend.client, backend.database)
    finally:
        backend.close()
    assert families >= 20
    return families


def tally_of(stage: Stage, sent: int) -> Tally:
    """Events missing from, or beyond the input in, the events table."""
    counts = stage.tables.counts()
    return Tally(max(0, sent - counts["events_uniq"]), max(0, counts["events_final"] - sent))


def test_cxp_replay_of_three_months_of_history_stays_exact(broker, clickhouse_url, tmp_path):
    """`cxp replay` sends a history merged by event time through the producer SDK; the worker fetches the
    four topics at their own pace. Three months later every event is stored once, none is too late, and
    every gauge family equals its reproducing query."""
    stage = Stage(broker.url, clickhouse_url, tmp_path)
    try:
        events = simulated(seed=41, count=12_000, end_ms=now_ms() - 60_000, span_ms=90 * DAY, customers=600)
        history = tmp_path / "history.jsonl"
        with JsonlWriter(history) as out:
            for source, event in events:
                out.send(source, event)
        worker = stage.worker().start()
        started = time.monotonic()
        env = dict(worker.env, CXP_LOG_LEVEL="warning")
        replayed = subprocess.run([sys.executable, "-m", "runtime.cli", "replay", str(history)], env=env,
                                  capture_output=True, text=True, timeout=300)
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        samples = worker.wait_for(lambda s: total(s, "cxp_events_consumed_total") == len(events)
                                  and total(s, "cxp_oldest_unacked_seconds") == 0, 180, "the history consumed")
        recovery_s = time.monotonic() - started
        assert total(samples, "cxp_events_rejected_total") == 0, samples["cxp_events_rejected_total"]
        assert total(samples, "cxp_events_processed_total") == len(events)
        assert stage.tables.scalar("SELECT count() FROM {db}.events FINAL") == len(events)
        families = gauges_equal_their_queries(stage, samples)
        record_fault("14", "three months of history replayed", "`cxp replay` of a 90-day JSON-lines history, "
                     "merged by event time, into a running worker", len(events), tally_of(stage, len(events)),
                     recovery_s, "from the replay's start until every event is consumed and durable",
                     note=f"0 too_late; {families} gauge families equal their reproducing queries")
    finally:
        stage.stop_all()
