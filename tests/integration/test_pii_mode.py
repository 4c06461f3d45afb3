"""PII mode end to end: no raw id or free text reaches ClickHouse or an output topic, and the metrics
are those of the same input without the mode.

Real parts: Tansu broker, two `cxp worker` subprocesses (one with CXP_PII_KEY, one without, each with
its own topics and database), the ClickHouse 18.16 server. The input is a seeded simulator run with
bad records, sent by a foreign client (kafka-python + plain fastavro) in batches, plus undecodable
messages that carry a raw id in their key and bytes. The scan reads every String, Nullable(String)
and Array(String) column that system.columns lists, and every message of the output topics.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import random
import re
import time
import uuid
from collections import defaultdict

import fastavro
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import INTENTS, Simulator
from sinks.clickhouse.backend import NativeBackend
from tests.foreign import RECORD, SCHEMAS, avro
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEY = "pii-test-key-" + uuid.uuid4().hex  # a fresh secret per run
RAW_ID = re.compile(r"cust-\d{6}|anon-[0-9a-f]{12}|s-[0-9a-f]{12}")  # the simulator's personal ids; no pseudonym matches
TEXTS = {"Too slow.", "Nobody answered.", "Too expensive.", "Great service!", "Quick and easy.", "Works as expected.",
         "Thanks.", "That didn't help.", "Let me check that for you.", *INTENTS.values()}
OUTPUT_TOPICS = ("deadletter", "actions", "signals.churn")
STRING_TYPES = ("String", "Nullable(String)", "Array(String)")


def pseudonym(identifier: str) -> str:
    """The recipe of docs/security.md (PII mode), computed here independently of pipeline.pii."""
    return hmac.new(KEY.encode(), identifier.encode(), hashlib.sha256).hexdigest()[:32]


def messages(now_ms: int) -> list[tuple[str, int, bytes, bytes]]:
    """(source, partition, key, value): batches of up to 50 events per partition, bad records inside the
    batches, and one undecodable message per source whose key and bytes hold a raw customer id."""
    sim = Simulator(seed=23, customers=400, start_ms=now_ms - 4 * 3_600_000, bad_rate=0.03)
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    out = []
    for source, event in sim.events(count=6000, rate=0.5):
        key = event_key(source, event)
        group = groups[(source, partition_for(key, PARTITIONS))]
        group.append(event)
        if len(group) == 50:
            out.append((source, partition_for(key, PARTITIONS), event_key(source, group[0]),
                        avro(f"{RECORD[source]}Batch", {"events": list(group)})))
            group.clear()
    out.extend((source, p, event_key(source, events[0]), avro(f"{RECORD[source]}Batch", {"events": events}))
               for (source, p), events in groups.items() if events)
    for source in RECORD:
        key = b"cust-000007"
        out.append((source, partition_for(key, PARTITIONS), key, b'{"customer_id": "cust-000007", "text": "Thanks."}'))
    random.Random(3).shuffle(out)
    return out


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def comparable(samples: dict) -> dict:
    """The CX metric families and the event outcome counters, as {(name, labels): value}."""
    return {(name, tuple(sorted(labels.items()))): value for name, series in samples.items()
            if name.startswith("cx_") or re.fullmatch(r"cxp_events_\w+_total", name) for labels, value in series}


@pytest.fixture(scope="module")
def runs(broker, clickhouse_server, tmp_path_factory):
    data = messages(int(time.time() * 1000))
    started = {}
    try:
        for mode in ("plain", "pii"):
            prefix, database = f"pii{uuid.uuid4().hex[:6]}.", f"cx_{mode}_{uuid.uuid4().hex[:8]}"
            folder = tmp_path_factory.mktemp(f"worker-{mode}")
            extra = {"CXP_PII_KEY": KEY} if mode == "pii" else {}
            env = worker_env(broker.url, folder, clickhouse_server.url(database), CXP_TOPIC_PREFIX=prefix,
                             CXP_CLICKHOUSE_DATABASE=database, CXP_PARTITIONS=str(PARTITIONS),
                             CXP_APP_ID=f"cxp-{mode}-{uuid.uuid4().hex[:6]}", **extra)
            started[mode] = {"worker": WorkerProcess(env, folder / "worker.log").start(), "prefix": prefix,
                             "database": database, "clickhouse": NativeBackend(clickhouse_server.url(database))}
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        for run in started.values():
            for source, partition, key, value in data:
                producer.send(f"{run['prefix']}events.{source}", value, key=key, partition=partition)
        producer.flush()
        producer.close()
        for run in started.values():
            run["samples"] = run["worker"].wait_for(
                lambda s: total(s, "cxp_events_consumed_total") >= 6000 + len(RECORD)
                and total(s, "cxp_sink_rows_total", table="events") >= total(s, "cxp_events_processed_total")
                and total(s, "cxp_sink_rows_total", table="dead_letters") >= total(s, "cxp_events_rejected_total")
                and total(s, "cxp_oldest_unacked_seconds") == 0,
                timeout_s=240, what="the input consumed and durable")
        yield started
    finally:
        for run in started.values():
            run["worker"].stop()


def stored_strings(run) -> dict[tuple[str, str], list[str]]:
    """(table, column) -> every value of every string column of the run's database."""
    ch, db = run["clickhouse"], run["database"]
    columns = ch.query(f"SELECT table, name, type FROM system.columns WHERE database = '{db}' "
                       f"AND type IN ({', '.join(repr(t) for t in STRING_TYPES)})")
    found = {}
    for table, column, kind in columns:
        values = [row[0] for row in ch.query(f"SELECT `{column}` FROM {db}.`{table}`")]
        if kind == "Array(String)":
            values = [item for array in values for item in array]
        found[(table, column)] = [v.decode("latin-1") if isinstance(v, bytes) else v for v in values if v is not None]
    return found


def topic_messages(bootstrap: str, run) -> dict[str, list[tuple[bytes, bytes]]]:
    """Output topic -> its (key, value) messages, read from the start."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             enable_auto_commit=False)
    found = {}
    for name in OUTPUT_TOPICS:
        topic = f"{run['prefix']}{name}"
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        found[name] = [(m.key or b"", m.value) for m in consumer]
    consumer.close()
    return found


def leaks(values: list[str]) -> list[str]:
    return [v for v in values if RAW_ID.search(v) or any(text in v for text in TEXTS)]


def test_no_raw_id_or_text_in_any_table(runs):
    plain, private = stored_strings(runs["plain"]), stored_strings(runs["pii"])
    assert set(plain) == set(private) and ("events", "customer_id") in private and ("dead_letters", "payload") in private
    assert {place: leaks(values) for place, values in private.items() if leaks(values)} == {}
    # the scan does find raw values where the mode is off: ids in events, comments in survey_responses
    assert leaks(plain[("events", "session_id")]) and leaks(plain[("survey_responses", "comment")])
    assert leaks(plain[("dead_letters", "payload")]) and leaks(plain[("dead_letters", "key")])


def test_every_id_is_its_documented_pseudonym(runs):
    """Event by event, the stored ids are the docs/security.md recipe applied to the raw ones: the same customer
    always maps to the same pseudonym, so per-customer state (funnels) joins as without the mode."""
    query = "SELECT event_id, customer_id, anonymous_id, session_id FROM {}.events FINAL ORDER BY event_id"
    plain, private = (run["clickhouse"].query(query.format(run["database"])) for run in (runs["plain"], runs["pii"]))
    assert len(plain) == len(private) > 5000
    assert private == [(event_id, *(None if v is None else pseudonym(v) for v in ids)) for event_id, *ids in plain]
    query = "SELECT funnel, customer_id, started_ms, level FROM {}.funnel_progress FINAL ORDER BY funnel, started_ms, level"
    plain, private = (run["clickhouse"].query(query.format(run["database"])) for run in (runs["plain"], runs["pii"]))
    assert plain and sorted(private) == sorted((f, pseudonym(c), s, level) for f, c, s, level in plain)


def test_no_raw_id_or_text_in_output_topics(runs, broker):
    plain, private = (topic_messages(broker.bootstrap_servers, runs[mode]) for mode in ("plain", "pii"))
    assert len(private["deadletter"]) == len(plain["deadletter"]) == total(runs["pii"]["samples"],
                                                                          "cxp_events_rejected_total") > 0
    for name, found in private.items():
        assert leaks([key.decode("latin-1") + value.decode("latin-1") for key, value in found]) == [], name
    letters = [fastavro.schemaless_reader(io.BytesIO(value[5:]), SCHEMAS["DeadLetter"]) for _, value in private["deadletter"]]
    undecodable = [letter for letter in letters if letter["reason"] == "undecodable"]
    assert len(undecodable) == len(RECORD)
    assert all(letter["original_value"] == b"" and letter["original_key"] == pseudonym("cust-000007").encode()
               for letter in undecodable)
    assert all(letter["original_value"][:1] == b"\x00" for letter in letters if letter["reason"] != "undecodable")
    assert leaks([key.decode("latin-1") + value.decode("latin-1") for key, value in plain["deadletter"]])


# Families that depend on how the worker's fetches interleave the four topics, which differs between two
# workers (docs/metrics.md): counts of churn level changes (which intermediate levels a customer passes
# through), time to value, measured when the first purchase is seen against the earliest event seen by then
# (a customer's earlier event on a topic fetched later is not its start), and carts, decided when the
# partition's clock, moved by every topic, passes their deadline.
INTERLEAVING_DEPENDENT = {"cx_churn_signals_total", "cx_carts", "cx_cart_abandonment_ratio", "cx_carts_open", "cx_first_purchases", "cx_time_to_first_purchase_exact_seconds",
                          "cx_time_to_first_purchase_seconds_bucket", "cx_time_to_first_purchase_seconds_count",
                          "cx_time_to_first_purchase_seconds_sum"}


def test_metrics_equal_those_without_the_mode(runs):
    plain, private = (comparable(runs[mode]["worker"].metrics()) for mode in ("plain", "pii"))
    names = {name for name, _ in plain}
    assert {"cx_nps", "cx_survey_responses", "cx_funnel_customers", "cx_churn_risk_customers",
            "cxp_events_rejected_total"} <= names
    # which series of these families exist depends on the interleaving too (a level change seen or not)
    private, plain = ({key: value for key, value in run.items() if key[0] not in INTERLEAVING_DEPENDENT}
                      for run in (private, plain))
    assert private.keys() == plain.keys()
    # sums of seconds are added in fetch order, so they may differ in the last bits
    assert {key: pytest.approx(value, rel=1e-9) for key, value in private.items()} == plain
