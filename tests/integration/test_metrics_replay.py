"""Every metric family against an independent recomputation, after a replay of 50k+ events.

Real parts: Tansu broker, a `cxp worker` subprocess, the ClickHouse 18.16 server. The input is a seeded
simulator run over six days of event time (partitions are consumed at
different paces, so a longer history could put one source more than max_lateness behind another), sent by a foreign client (kafka-python + plain fastavro)
with duplicates, arrival disorder and bad records mixed in, and then the whole of it sent again. The
oracles are plain Python over the input and ClickHouse's own aggregate functions over the raw events.
"""
from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from typing import NamedTuple, Optional

import pytest
from kafka import KafkaProducer

from pipeline.scores import CLASSES, classify
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.queries import window_funnel_sql
from tests.foreign import RECORD, avro
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

N_EVENTS = 52_000
PARTITIONS = 4
DAY = 86_400_000
WINDOWS = {"1h": 3_600_000, "24h": DAY, "7d": 7 * DAY}
DIMENSIONS = ("region", "plan", "source")


class Message(NamedTuple):
    source: str
    partition: int
    key: bytes
    value: bytes
    events: int


class Dataset:
    """The simulator's events, what gets sent (with duplicates, disorder and bad records), and the truth."""

    def __init__(self, now_ms: int, seed: int = 11, events: int = N_EVENTS, days: int = 6):
        sim = Simulator(seed=seed, customers=3000, start_ms=now_ms - days * DAY)
        self.valid = [(s, e) for s, e in sim.events(count=events, rate=events / (days * 86_400))
                      if e["event_time"] <= now_ms]
        rng = random.Random(seed)
        self.duplicates = rng.sample(self.valid, 500)
        crm = next(e for s, e in self.valid if s == "crm")
        self.bad = [("crm", dict(crm, event_id=f"bad-{uuid.uuid4()}", event_type="survey_response",
                                 survey={"kind": "NPS", "score": 42, "comment": None, "touchpoint": None}))
                    for _ in range(50)]
        # stream time per partition (docs/metrics.md): the newest event of each partition
        self.clocks: dict[int, int] = {}
        for source, e in self.valid:
            partition = self.partition_of(source, e)
            self.clocks[partition] = max(self.clocks.get(partition, 0), e["event_time"])

    @staticmethod
    def partition_of(source: str, event: dict) -> int:
        return partition_for(event_key(source, event), PARTITIONS)

    def in_window(self, source: str, event: dict, window_ms: int) -> bool:
        """Inside the window of its partition's clock, minute-rounded as every core does."""
        return event["event_time"] // 60_000 > (self.clocks[self.partition_of(source, event)] - window_ms) // 60_000

    @property
    def sent(self) -> int:
        """Events in one sending of the whole input."""
        return len(self.valid) + len(self.duplicates) + len(self.bad)

    @staticmethod
    def events_in(messages: list[Message]) -> int:
        return sum(message.events for message in messages)

    def messages(self, rng: random.Random, items: Optional[list[tuple[str, dict]]] = None) -> list[Message]:
        """Batches of up to 100 events per partition, in an order shuffled within two-hour slices of
        event time (disorder well inside max_lateness); of the whole input unless ``items`` are given."""
        items = list(self.valid + self.duplicates + self.bad if items is None else items)
        items.sort(key=lambda item: item[1]["event_time"] // (2 * 3_600_000) + rng.random())
        groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
        out = []
        for source, event in items:
            group = groups[(source, partition_for(event_key(source, event), PARTITIONS))]
            group.append(event)
            if len(group) == 100:
                out.append(self._message(source, group))
                group.clear()
        out.extend(self._message(source, events) for (source, _), events in groups.items() if events)
        return out

    @staticmethod
    def _message(source: str, events: list[dict]) -> Message:
        key = event_key(source, events[0])
        return Message(source, partition_for(key, PARTITIONS), key, avro(f"{RECORD[source]}Batch", {"events": list(events)}),
                       len(events))

    def answers(self):
        return [(s, e) for s, e in self.valid if e.get("survey")]

    def survey_truth(self) -> dict[tuple[str, str, str, str], int]:
        """(tenant, kind, window, class) -> responses."""
        truth: Counter = Counter()
        for source, e in self.answers():
            kind, score = e["survey"]["kind"], e["survey"]["score"]
            for window, w in WINDOWS.items():
                if self.in_window(source, e, w):
                    truth[(e["tenant"], kind, window, CLASSES[kind][classify(kind, score)])] += 1
        return dict(truth)

    def segment_truth(self) -> dict[tuple[str, str, str, str, str], int]:
        """(tenant, kind, window, dimension, segment) -> responses (no capping: few segments here)."""
        truth: Counter = Counter()
        for source, e in self.answers():
            for window, w in WINDOWS.items():
                if self.in_window(source, e, w):
                    for dimension in DIMENSIONS:
                        segment = source if dimension == "source" else (e.get("attributes") or {}).get(dimension, "unknown")
                        truth[(e["tenant"], e["survey"]["kind"], window, dimension, segment)] += 1
        return dict(truth)


def produce(bootstrap: str, prefix: str, messages) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=2_000_000)
    for message in messages:
        producer.send(f"{prefix}events.{message.source}", message.value, key=message.key, partition=message.partition)
    producer.flush()
    producer.close()


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


@pytest.fixture(scope="module")
def replayed(broker, clickhouse_server, tmp_path_factory):
    import time

    now = int(time.time() * 1000)
    data = Dataset(now)
    prefix, database = f"replay{uuid.uuid4().hex[:6]}.", f"cx_replay_{uuid.uuid4().hex[:8]}"
    env = worker_env(broker.url, tmp_path_factory.mktemp("replay"), clickhouse_server.url(database),
                     CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"replay-{uuid.uuid4().hex[:6]}", CXP_SEGMENT_MAX_VALUES="50")
    worker = WorkerProcess(env, tmp_path_factory.mktemp("replay-log") / "worker.log").start()
    sent = data.sent

    def drained(expected_consumed: int):
        return worker.wait_for(
            lambda s: total(s, "cxp_events_consumed_total") >= expected_consumed
            and total(s, "cxp_sink_rows_total", table="events") >= total(s, "cxp_events_processed_total")
            and worker.metrics().get("cxp_oldest_unacked_seconds", [({}, 1)])[0][1] == 0,
            timeout_s=240, what=f"{expected_consumed} events consumed and durable")

    try:
        produce(broker.bootstrap_servers, prefix, data.messages(random.Random(1)))
        first = drained(sent)
        produce(broker.bootstrap_servers, prefix, data.messages(random.Random(2)))  # the whole input again
        second = drained(2 * sent)
        yield {"data": data, "first": first, "second": second, "worker": worker,
               "clickhouse": NativeBackend(clickhouse_server.url(database)), "db": database}
    finally:
        worker.stop()


def test_every_record_accounted_for_and_nothing_stored_twice(replayed):
    """An event older than the dedup horizon (24 h) may be processed again by the replay: the identity
    still holds, FINAL still counts it once, and no metric counts it twice (the tests below)."""
    data, first, second = replayed["data"], replayed["first"], replayed["second"]
    sent = len(data.valid) + len(data.duplicates) + len(data.bad)
    assert total(first, "cxp_events_consumed_total") == sent and total(second, "cxp_events_consumed_total") == 2 * sent
    assert total(first, "cxp_events_processed_total") >= len(data.valid)
    assert total(second, "cxp_events_rejected_total", reason="invalid_value") == 2 * len(data.bad)
    for samples in (first, second):
        assert total(samples, "cxp_events_consumed_total") == total(samples, "cxp_events_processed_total") + \
            total(samples, "cxp_events_duplicate_total") + total(samples, "cxp_events_rejected_total")
    ch, db = replayed["clickhouse"], replayed["db"]
    assert ch.query(f"SELECT count() FROM {db}.events FINAL")[0][0] == len(data.valid)
    assert ch.query(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0] == len(data.valid)
    assert ch.query(f"SELECT count() FROM {db}.survey_responses FINAL")[0][0] == len(data.answers())


def test_survey_series_equal_recomputation_after_replay(replayed):
    truth = replayed["data"].survey_truth()
    for samples in (replayed["first"], replayed["second"]):
        got = {(l["tenant"], l["kind"], l["window"], l["class"]): v for l, v in samples["cx_survey_responses"] if v}
        assert got == truth


def test_segment_series_equal_recomputation_after_replay(replayed):
    truth = replayed["data"].segment_truth()
    for samples in (replayed["first"], replayed["second"]):
        got: Counter = Counter()
        for labels, value in samples["cx_segment_responses"]:
            got[(labels["tenant"], labels["kind"], labels["window"], labels["dimension"], labels["segment"])] += value
        assert {k: v for k, v in got.items() if v} == truth


def test_clickhouse_segment_query_agrees(replayed):
    """The documented segment query over survey_responses gives the worker's 7d NPS per region."""
    ch, db = replayed["clickhouse"], replayed["db"]
    rows = ch.query(
        f"SELECT tenant, attr_values[indexOf(attr_keys, 'region')] AS region, "
        f"100 * (countIf(score >= 9) - countIf(score <= 6)) / count() FROM (SELECT * FROM {db}.survey_responses FINAL) "
        f"ANY INNER JOIN (SELECT kafka_partition, max(event_ms) AS clock FROM {db}.events GROUP BY kafka_partition) "
        f"USING kafka_partition WHERE kind = 'NPS' AND intDiv(event_ms, 60000) > intDiv(clock - {WINDOWS['7d']}, 60000) "
        "GROUP BY tenant, region")
    gauges = {(l["tenant"], l["segment"]): v for l, v in replayed["second"]["cx_segment_nps"]
              if l["window"] == "7d" and l["dimension"] == "region"}
    assert rows and {(t, r): pytest.approx(v) for t, r, v in rows} == gauges


def test_funnel_levels_equal_clickhouse_window_funnel(replayed):
    """Each customer's best level in funnel_progress equals ClickHouse's own windowFunnel over events, and
    cx_funnel_customers{step, window} equals the count of customers windowFunnel puts at or past that step."""
    from pipeline.metrics.funnel_defs import load_funnels
    from pipeline.settings import Settings

    ch, db, data = replayed["clickhouse"], replayed["db"], replayed["data"]
    (funnel,) = load_funnels(Settings().funnels.file)
    first_ms = min(e["event_time"] for _, e in data.valid)
    truth = {(t, c): level for t, c, level in ch.query(window_funnel_sql(funnel, db, first_ms)) if level}
    stored = {(t, c): level for t, c, level in ch.query(
        f"SELECT tenant, customer_id, max(level) FROM {db}.funnel_progress FINAL WHERE funnel = '{funnel.name}' "
        "GROUP BY tenant, customer_id")}
    assert len(truth) > 100 and max(truth.values()) == len(funnel.steps)
    assert stored == truth

    gauges = {(l["tenant"], l["step"], l["window"]): v for l, v in replayed["second"]["cx_funnel_customers"]}
    for window, w in WINDOWS.items():
        levels = []  # per partition, from its own window's first millisecond
        for partition, clock in data.clocks.items():
            since = ((clock - w) // 60_000) * 60_000 + 60_000
            levels += ch.query(window_funnel_sql(funnel, db, since, partition))
        for tenant in {t for t, _, _ in levels}:
            for k, step in enumerate(funnel.steps, 1):
                expected = sum(1 for t, _, level in levels if t == tenant and level >= k)
                assert gauges.get((tenant, step.name, window), 0) == expected, (tenant, step.name, window)
