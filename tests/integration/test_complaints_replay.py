"""Complaints end to end on the real broker, `cxp worker` and ClickHouse 18.16, then the whole input again.

Complaint lifecycles over the last five days are written with plain kafka-python and fastavro, in
event-time order. The checks compare /metrics, ``complaints FINAL`` and the cx.actions topic with a
plain recomputation of that input; then the worker restarts, rebuilds its partitions from ClickHouse,
and gets the whole input again (the part older than the dedup horizon reaches the metric cores):
it must count nothing and send no action twice.
"""
from __future__ import annotations

import io
import math
import time
import uuid
from collections import Counter
from random import Random

import fastavro
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import load_schemas
from sinks.clickhouse.backend import NativeBackend
from tests.integration.test_pipeline import avro
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

PARTITIONS = 4
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SLA = {"low": (72 * HOUR, 168 * HOUR), "normal": (24 * HOUR, 72 * HOUR), "high": (4 * HOUR, 24 * HOUR),
       "urgent": (1 * HOUR, 8 * HOUR)}
MEAN_ACK = {"low": 30 * HOUR, "normal": 12 * HOUR, "high": 3 * HOUR, "urgent": 40 * MIN}
OPEN = {"opened", "acknowledged", "escalated", "reopened"}
ORDER = ("opened", "acknowledged", "escalated", "resolved", "reopened", "closed")
LEVELS = (0.5, 0.9, 0.99)
FOLLOW_UP = fastavro.parse_schema(load_schemas()["cx.FollowUpAction"])


def lifecycles(now_ms: int, n: int = 240, seed: int = 5) -> list[dict]:
    """Seeded complaints opened over five days; only what happened before ``now_ms`` is sent."""
    rng, events = Random(seed), []
    for i in range(n):
        priority = rng.choices(tuple(SLA), weights=(3, 8, 4, 2))[0]
        base = {"tenant": ("acme", "globex")[i % 2], "customer_id": f"cust-{i % 70:03d}", "session_id": None,
                "attributes": {}, "complaint_id": f"cmp-{i:04d}", "priority": priority,
                "category": rng.choice(("billing", "delivery", "service")), "origin_channel": "email", "agent_id": None}
        t = now_ms - 5 * DAY + rng.randrange(5 * DAY - HOUR)
        steps = [("opened", t)]
        if rng.random() < 0.9:
            t += int(rng.expovariate(1 / MEAN_ACK[priority])) + 1000
            steps.append(("acknowledged", t))
            if rng.random() < 0.75:
                t += int(rng.expovariate(1 / (2 * MEAN_ACK[priority]))) + 1000
                steps.append(("resolved", t))
                if rng.random() < 0.15:
                    t += int(rng.expovariate(1 / (6 * HOUR))) + 1000
                    steps.append(("reopened", t))
                    t += int(rng.expovariate(1 / (4 * HOUR))) + 1000
                    steps.append(("resolved", t))
                if rng.random() < 0.5:
                    steps.append(("closed", t + int(rng.expovariate(1 / (12 * HOUR))) + 1000))
        events += [dict(base, event_id=f"{base['complaint_id']}-{k}", event_type=kind, event_time=at)
                   for k, (kind, at) in enumerate(steps) if at <= now_ms - MIN]
    return sorted(events, key=lambda e: e["event_time"])


class Oracle:
    """What the pipeline must make of the input, recomputed plainly."""

    def __init__(self, events: list[dict]):
        self.by_complaint: dict[str, list[dict]] = {}
        self.partition_clock: Counter = Counter()
        for e in events:
            self.by_complaint.setdefault(e["complaint_id"], []).append(e)
            p = partition_for(event_key("complaints", e), PARTITIONS)
            self.partition_clock[p] = max(self.partition_clock[p], e["event_time"])

    def complaints(self):
        for cid, evs in self.by_complaint.items():
            evs = sorted(evs, key=lambda e: (e["event_time"], ORDER.index(e["event_type"])))
            yield cid, evs

    def backlog(self) -> Counter:
        return Counter((evs[0]["tenant"], evs[0]["priority"]) for _, evs in self.complaints()
                       if evs[-1]["event_type"] in OPEN)

    def durations(self) -> tuple[list[float], list[float]]:
        first, resolution = [], []
        for _, evs in self.complaints():
            opened = evs[0]["event_time"]
            acks = [e["event_time"] for e in evs if e["event_type"] == "acknowledged"]
            if acks:
                first.append((acks[0] - opened) / 1000)
            resolves = [e["event_time"] for e in evs if e["event_type"] == "resolved"]
            if resolves and evs[-1]["event_type"] not in OPEN:
                resolution.append((resolves[-1] - opened) / 1000)
        return first, resolution

    def breaches(self) -> set[tuple[str, str]]:
        """(complaint, stage) breached at its partition's final clock (input is in time order)."""
        out = set()
        for cid, evs in self.complaints():
            clock = self.partition_clock[partition_for(event_key("complaints", evs[0]), PARTITIONS)]
            opened, (first_target, resolution_target) = evs[0]["event_time"], SLA[evs[0]["priority"]]
            answered = [e["event_time"] for e in evs if e["event_type"] in ("acknowledged", "resolved", "closed")]
            if clock > opened + first_target and not any(t <= opened + first_target for t in answered):
                out.add((cid, "first_response"))
            deadline = opened + resolution_target
            status_at_deadline = [e["event_type"] for e in evs if e["event_time"] <= deadline][-1]
            reopened_after = any(e["event_type"] == "reopened" and e["event_time"] > deadline for e in evs)
            if clock > deadline and (status_at_deadline in OPEN or reopened_after):
                out.add((cid, "resolution"))
        return out


def quantile_exact(values: list[float], level: float) -> float:
    """ClickHouse's quantileExact: the element at index floor(level * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(level * len(ordered)))]


def read_actions(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    actions = [fastavro.schemaless_reader(io.BytesIO(message.value[5:]), FOLLOW_UP) for message in consumer]
    consumer.close()
    return actions


def send(bootstrap: str, prefix: str, events: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for e in events:
        producer.send(f"{prefix}events.complaints", avro("ComplaintEvent", e), key=event_key("complaints", e))
    producer.close()


def wait_until(predicate, worker: WorkerProcess, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{worker.log_tail()}"
        time.sleep(0.3)


def total(samples: dict, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


@pytest.fixture(scope="module")
def setup(broker, clickhouse_server, tmp_path_factory):
    now = int(time.time() * 1000)
    events = lifecycles(now)
    prefix, database = f"r{uuid.uuid4().hex[:6]}.", f"cx_cmp_{uuid.uuid4().hex[:6]}"
    data_dir = tmp_path_factory.mktemp("complaints-worker")
    env = worker_env(broker.url, data_dir, clickhouse_server.url(database), CXP_APP_ID=f"cxp-cmp-{prefix}",
                     CXP_TOPIC_PREFIX=prefix, CXP_CLICKHOUSE_DATABASE=database, CXP_PARTITIONS=str(PARTITIONS))
    worker = WorkerProcess(env, data_dir / "worker.log").start()
    try:
        send(broker.bootstrap_servers, prefix, events)
        worker.wait_for(lambda s: total(s, "cxp_events_consumed_total") >= len(events), timeout_s=120,
                        what="the complaint input consumed")
        worker.wait_for(lambda s: sum(v for labels, v in s.get("cxp_sink_rows_total", [])
                                      if labels["table"] == "events") >= len(events), what="events flushed")
        yield {"events": events, "oracle": Oracle(events), "worker": worker, "samples": worker.metrics(),
               "ch": NativeBackend(clickhouse_server.url(database)), "db": database, "prefix": prefix,
               "bootstrap": broker.bootstrap_servers}
    finally:
        worker.stop()


def test_clickhouse_quantile_exact_is_the_floor_index_element(setup):
    ch = setup["ch"]
    for n in (1, 7, 10, 99, 101):
        values = [(i * 37) % 101 / 3 for i in range(n)]
        listed = ", ".join(repr(v) for v in values)
        got = ch.query(f"SELECT quantilesExact(0.5, 0.9, 0.99)(x) FROM (SELECT arrayJoin([{listed}]) AS x)")[0][0]
        assert list(got) == [quantile_exact(values, level) for level in LEVELS], n


def test_backlog_and_counts_match_recomputation(setup):
    samples, oracle = setup["samples"], setup["oracle"]
    backlog = {(l["tenant"], l["priority"]): v for l, v in samples["cx_complaints_open"]}
    assert backlog == dict(oracle.backlog())
    first, _ = oracle.durations()
    assert total(samples, "cx_complaint_first_response_seconds_count") == len(first)
    assert total(samples, "cx_complaints_opened_total") == len(oracle.by_complaint)
    assert total(samples, "cx_complaint_sla_breaches_total") == len(oracle.breaches())


def test_duration_quantiles_from_complaints_final_match_recomputation(setup):
    ch, db, oracle = setup["ch"], setup["db"], setup["oracle"]
    first, resolution = oracle.durations()
    assert len(first) > 50 and len(resolution) > 50
    for column, values in (("first_response_ms", first), ("resolved_ms", resolution)):
        got = ch.query(f"SELECT quantilesExact(0.5, 0.9, 0.99)(({column} - opened_ms) / 1000), count() "
                       f"FROM {db}.complaints FINAL WHERE {column} IS NOT NULL")[0]
        assert got[1] == len(values)
        assert list(got[0]) == [quantile_exact(values, level) for level in LEVELS], column


def test_each_breach_action_exactly_once_also_after_a_full_replay(setup, tmp_path):
    oracle, prefix = setup["oracle"], setup["prefix"]
    want = oracle.breaches()
    assert want, "the input must breach some SLAs"
    topic = f"{prefix}actions"
    actions = read_actions(setup["bootstrap"], topic)
    assert Counter((a["context"]["complaint_id"], a["context"]["stage"]) for a in actions) == Counter(want)
    flags = setup["ch"].query(f"SELECT complaint_id, sla_first_response_breached, sla_resolution_breached "
                              f"FROM {setup['db']}.complaints FINAL")
    assert {(c, s) for c, f, r in flags for s, flag in (("first_response", f), ("resolution", r)) if flag} == want

    # the worker restarts (rebuilding its partitions from ClickHouse), then the whole input is sent again
    setup["worker"].stop()
    restarted = WorkerProcess(setup["worker"].env, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: "partition state rebuilt from clickhouse" in restarted.log_path.read_text(),
                   restarted, "the partitions rebuilt from ClickHouse")
        send(setup["bootstrap"], prefix, setup["events"])
        n = len(setup["events"])
        samples = restarted.wait_for(lambda s: total(s, "cxp_events_consumed_total") >= n, timeout_s=120,
                                     what="the whole input consumed again")
        assert total(samples, "cxp_events_processed_total") > 0, "some input must be older than the dedup horizon"
        assert total(samples, "cx_complaint_sla_breaches_total") == 0
        assert total(samples, "cx_complaints_opened_total") == 0
        assert total(samples, "cx_complaint_first_response_seconds_count") == 0
        assert total(samples, "cx_actions_total") == 0
        backlog = {(l["tenant"], l["priority"]): v for l, v in samples["cx_complaints_open"]}
        assert backlog == dict(oracle.backlog())
    finally:
        restarted.stop()
    again = read_actions(setup["bootstrap"], topic)
    assert Counter(a["action_id"] for a in again) == Counter(a["action_id"] for a in actions)
    assert all(count == 1 for count in Counter(a["action_id"] for a in again).values())
