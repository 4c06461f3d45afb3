"""End to end on real parts: Tansu broker, `cxp worker` subprocess, ClickHouse 18.16 server, Prometheus.

Input is written by a client that is not the project's own (kafka-python sending bytes encoded here
by plain fastavro), good and malformed alike. (kcat, the librdkafka client, cannot talk to Tansu
0.6.0: its ApiVersion request fails with "read underflow".) The checks compare /metrics, ClickHouse rows
and the dead-letter topic with a plain recomputation from that input.
"""
from __future__ import annotations

import io
import struct
import time
import uuid
from collections import Counter, defaultdict

import fastavro
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from sinks.clickhouse.backend import NativeBackend
from tests.foreign import RECORD, SCHEMAS, avro
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

N_EVENTS = 3000
PARTITIONS = 4
HOUR = 3_600_000
SOURCES = ("web", "chatbot", "crm", "complaints")


def nps_oracle(responses: list[tuple[str, int, int, int]], clocks: dict[int, int],
               window_ms: int) -> dict[str, tuple[float, int]]:
    """tenant -> (NPS, n) over the (tenant, score, t, partition) responses with minute(t) > minute(clock - W),
    clock being the stream time of the response's partition."""
    per_tenant: dict[str, list[int]] = defaultdict(list)
    for tenant, score, t, partition in responses:
        if t // 60_000 > (clocks[partition] - window_ms) // 60_000:
            per_tenant[tenant].append(score)
    return {tenant: (100.0 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores), len(scores))
            for tenant, scores in per_tenant.items()}


class Input:
    """The test input and what a plain recomputation says the pipeline must make of it."""

    def __init__(self, now_ms: int):
        sim = Simulator(seed=42, customers=300, start_ms=now_ms - 3 * HOUR)
        self.valid = list(sim.events(count=N_EVENTS, rate=N_EVENTS / (3 * 3600)))
        self.valid = [(s, e) for s, e in self.valid if e["event_time"] <= now_ms]
        base = next(e for s, e in self.valid if s == "crm")
        nps_event = next(e for s, e in self.valid if e.get("survey") and e["survey"]["kind"] == "NPS")
        self.bad_events = [  # (source, event, reason): encodable, but against docs/contract.md, Bad input
            ("crm", dict(base, event_id=f"bad-score-{uuid.uuid4()}", event_type="survey_response",
                         survey=dict(nps_event["survey"], score=11)), "invalid_value"),
            ("crm", dict(base, event_id=f"bad-survey-{uuid.uuid4()}", event_type="survey_response", survey=None),
             "invalid_value"),
            ("crm", dict(base, event_id=f"no-customer-{uuid.uuid4()}", customer_id=None), "missing_field"),
            ("crm", dict(base, event_id="", customer_id="c-empty-id"), "missing_field"),
            ("crm", dict(base, event_id=f"future-{uuid.uuid4()}", event_time=now_ms + 3_600_000), "future_timestamp"),
            ("crm", dict(base, event_id=f"late-{uuid.uuid4()}", event_time=now_ms - 9 * 24 * HOUR), "too_late"),
        ]
        self.duplicates = [self.valid[i] for i in range(0, len(self.valid), 97)]
        self.undecodable = [  # (source, key, value) sent as raw bytes
            ("web", b"c-1", b'{"event_id": "json-not-avro"}'),  # bad magic byte
            ("web", b"c-2", struct.pack(">bI", 0, 999) + b"\x02"),  # unknown schema id
            ("crm", b"c-3", avro("CrmEvent", base)[:12]),  # truncated body
            ("crm", b"\xff\xfe", avro("CrmEvent", dict(base, event_id=f"badkey-{uuid.uuid4()}"))),  # key not UTF-8
        ]

    def expected_consumed(self) -> Counter:
        c = Counter(s for s, _ in self.valid) + Counter(s for s, _ in self.duplicates)
        c += Counter(s for s, _, _ in self.bad_events) + Counter(s for s, _, _ in self.undecodable)
        return c

    def expected_rejected(self) -> Counter:
        return Counter(r for *_, r in self.bad_events) + Counter({"undecodable": len(self.undecodable)})

    def surveys(self) -> list[tuple[str, int, int, int]]:
        return [(e["tenant"], e["survey"]["score"], e["event_time"], partition_for(event_key(s, e), PARTITIONS))
                for s, e in self.valid if e.get("survey") and e["survey"]["kind"] == "NPS"]

    def clocks(self) -> dict[int, int]:
        """partition -> its stream time (newest event time)."""
        out: dict[int, int] = {}
        for s, e in self.valid:
            partition = partition_for(event_key(s, e), PARTITIONS)
            out[partition] = max(out.get(partition, 0), e["event_time"])
        return out


def produce_valid(bootstrap: str, prefix: str, inp: Input, batched: bool) -> None:
    """Write the valid input with plain kafka-python (its default partitioner is murmur2 on the key)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    topic = lambda source: f"{prefix}events.{source}"  # noqa: E731
    if batched:
        groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for source, event in inp.valid:
            groups[(source, partition_for(event_key(source, event), PARTITIONS))].append(event)
        for (source, partition), events in groups.items():
            for i in range(0, len(events), 200):
                chunk = events[i:i + 200]
                producer.send(topic(source), avro(f"{RECORD[source]}Batch", {"events": chunk}),
                              key=event_key(source, chunk[0]), partition=partition)
    else:
        for source, event in inp.valid:
            producer.send(topic(source), avro(RECORD[source], event), key=event_key(source, event))
    producer.close()


def produce_bad(bootstrap: str, prefix: str, inp: Input) -> None:
    """Duplicates, rule-breaking events and undecodable records, after the valid input was consumed."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    topic = lambda source: f"{prefix}events.{source}"  # noqa: E731
    for source, event in inp.duplicates:
        producer.send(topic(source), avro(RECORD[source], event), key=event_key(source, event))
    for source, event, _ in inp.bad_events:
        producer.send(topic(source), avro(RECORD[source], event), key=b"c-bad")
    for source, key, value in inp.undecodable:
        producer.send(topic(source), value, key=key)
    producer.flush()
    producer.close()


MODES = ("single", "batched")


@pytest.fixture(scope="module")
def runs(broker, clickhouse_server, tmp_path_factory):
    """Two workers side by side, one per input shape, each with its own topics and database, same input."""
    inp = Input(int(time.time() * 1000))
    started = {}
    for mode in MODES:
        prefix, database = f"t{uuid.uuid4().hex[:6]}.", f"cx_{mode}_{uuid.uuid4().hex[:6]}"
        data_dir = tmp_path_factory.mktemp(f"worker-{mode}")
        env = worker_env(broker.url, data_dir, clickhouse_server.url(database), CXP_TOPIC_PREFIX=prefix,
                         CXP_CLICKHOUSE_DATABASE=database, CXP_PARTITIONS=str(PARTITIONS),
                         CXP_APP_ID=f"cxp-test-{prefix}")
        worker = WorkerProcess(env, data_dir / "worker.log").start()
        started[mode] = {"mode": mode, "worker": worker, "input": inp, "prefix": prefix, "database": database,
                         "clickhouse": NativeBackend(clickhouse_server.url(database)), "bootstrap": broker.bootstrap_servers}
    try:
        for mode, run in started.items():
            produce_valid(broker.bootstrap_servers, run["prefix"], inp, batched=(mode == "batched"))
        for run in started.values():
            # the event-time clock must have advanced before too_late can be judged
            run["worker"].wait_for(lambda s: _sum(s, "cxp_events_consumed_total") >= len(inp.valid), timeout_s=120,
                                   what="the valid input consumed")
            produce_bad(broker.bootstrap_servers, run["prefix"], inp)
        expected = sum(inp.expected_consumed().values())
        for run in started.values():
            run["worker"].wait_for(lambda s: _sum(s, "cxp_events_consumed_total") >= expected, timeout_s=120,
                                   what=f"{expected} events consumed")
            # rows are acknowledged only once durable: wait until every processed event has its row
            run["worker"].wait_for(
                lambda s: _sum(s, "cxp_sink_rows_total", table="events") >= _sum(s, "cxp_events_processed_total")
                and _sum(s, "cxp_sink_rows_total", table="dead_letters") >= _sum(s, "cxp_events_rejected_total"),
                what="events and dead letters flushed to ClickHouse")
        yield started
    finally:
        for run in started.values():
            run["worker"].stop()


@pytest.fixture(params=MODES)
def run(request, runs):
    return runs[request.param]


def _sum(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def test_every_record_is_accounted_for(run):
    samples, inp = run["worker"].metrics(), run["input"]
    for source, n in inp.expected_consumed().items():
        assert _sum(samples, "cxp_events_consumed_total", source=source) == n, source
    for reason, n in inp.expected_rejected().items():
        assert _sum(samples, "cxp_events_rejected_total", reason=reason) == n, reason
    assert _sum(samples, "cxp_events_duplicate_total") == len(inp.duplicates)
    assert _sum(samples, "cxp_events_processed_total") == len(inp.valid)
    assert _sum(samples, "cxp_events_consumed_total") == (
        _sum(samples, "cxp_events_processed_total") + _sum(samples, "cxp_events_duplicate_total")
        + _sum(samples, "cxp_events_rejected_total"))
    assert run["worker"].process.poll() is None, "a poison record stopped the worker"


def test_nps_matches_recomputation(run):
    samples, inp = run["worker"].metrics(), run["input"]
    nps = {(l["tenant"], l["window"]): v for l, v in samples["cx_nps"]}
    margin = {(l["tenant"], l["window"]) for l, _ in samples["cx_nps_margin_of_error"]}
    for window, w_ms in {"1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR}.items():
        expected = nps_oracle(inp.surveys(), inp.clocks(), w_ms)
        assert expected, "the input must contain NPS answers"
        for tenant, (value, n) in expected.items():
            assert nps[(tenant, window)] == pytest.approx(value, abs=1e-9), (tenant, window)
            assert _sum(samples, "cx_survey_responses", tenant=tenant, window=window, kind="NPS") == n
            assert (tenant, window) in margin


def test_clickhouse_rows_match_input(run):
    ch, db, inp = run["clickhouse"], run["database"], run["input"]
    assert ch.query(f"SELECT count() FROM {db}.events FINAL")[0][0] == len(inp.valid)
    assert ch.query(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0] == len(inp.valid)
    n_surveys = sum(1 for _, e in inp.valid if e.get("survey"))
    assert ch.query(f"SELECT count() FROM {db}.survey_responses FINAL")[0][0] == n_surveys
    # ClickHouse's own aggregation over the raw rows agrees with the worker's NPS
    for tenant, (value, n) in nps_oracle(inp.surveys(), inp.clocks(), 24 * HOUR).items():
        row = ch.query(f"SELECT 100 * (countIf(score >= 9) - countIf(score <= 6)) / count(), count() "
                       f"FROM (SELECT * FROM {db}.survey_responses FINAL) ANY INNER JOIN (SELECT kafka_partition, "
                       f"max(event_ms) AS clock FROM {db}.events GROUP BY kafka_partition) USING kafka_partition "
                       f"WHERE kind = 'NPS' AND tenant = '{tenant}' "
                       f"AND intDiv(event_ms, 60000) > intDiv(clock - {24 * HOUR}, 60000)")[0]
        assert row[0] == pytest.approx(value) and row[1] == n
    reasons = dict(ch.query(f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason"))
    assert reasons == dict(inp.expected_rejected())


def test_dead_letter_topic_has_reasons_and_original_bytes(run):
    consumer = KafkaConsumer(bootstrap_servers=run["bootstrap"], auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, enable_auto_commit=False)
    topic = f"{run['prefix']}deadletter"
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    letters = []
    for message in consumer:
        assert message.value[0] == 0
        letters.append(fastavro.schemaless_reader(io.BytesIO(message.value[5:]), SCHEMAS["DeadLetter"]))
    consumer.close()
    assert Counter(dl["reason"] for dl in letters) == run["input"].expected_rejected()
    json_letter = next(dl for dl in letters if dl["original_value"].startswith(b'{"event_id"'))
    assert json_letter["reason"] == "undecodable" and "magic" in json_letter["error"]
    assert json_letter["source_topic"] == f"{run['prefix']}events.web"


def test_single_and_batched_input_agree(runs):
    nps = {mode: {(l["tenant"], l["window"]): v for l, v in run["worker"].metrics()["cx_nps"]} for mode, run in runs.items()}
    assert nps["single"] == nps["batched"]
    query = "SELECT source, event_type, count() FROM {}.events FINAL GROUP BY source, event_type ORDER BY source, event_type"
    rows = {mode: run["clickhouse"].query(query.format(run["database"])) for mode, run in runs.items()}
    assert rows["single"] == rows["batched"] and rows["single"]
