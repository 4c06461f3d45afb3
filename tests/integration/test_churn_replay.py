"""Engagement and churn end to end on real parts, then the whole input replayed: Tansu broker, `cxp worker`,
ClickHouse 18.16.

A seeded simulation of 40 days (50k events, inactive customers, detractors, downgrades, cancellations)
is written with plain kafka-python + fastavro. Checks: cx_active_customers equals ClickHouse's
uniqExact over cx.events per window; every level change is one ChurnSignal on the topic and one row in
churn_signals, each a real change; the final levels equal a plain recomputation of the weighted
definition from the input; a replay of the whole input adds no signal and changes no gauge, neither in
the same worker nor in a new one that rebuilt its state from ClickHouse.

The complaint core is not on this branch, so no complaints_opened / sla_breaches facts exist here:
the complaint signal and cx_complaint_customers are covered by the unit tests.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter, defaultdict

import fastavro
import pytest
from kafka import KafkaConsumer, TopicPartition

from runtime.local.metrics import scrape
from pipeline.partitioner import event_key, partition_for
from pipeline.settings import Settings
from pipeline.simulate import Simulator
from schemas import SCHEMA_DIR
from sinks.clickhouse.backend import NativeBackend
from tests.integration.test_pipeline import _sum, produce_valid
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

DAY = 86_400_000
N_EVENTS = 50_000
SPAN_DAYS = 40
WINDOWS = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
SIGNAL_SCHEMA = fastavro.parse_schema(json.loads((SCHEMA_DIR / "ChurnSignal.avsc").read_text()))


class Input:
    def __init__(self, now_ms: int):
        sim = Simulator(seed=9, customers=1500, start_ms=now_ms - SPAN_DAYS * DAY)
        events = sim.events(count=N_EVENTS, rate=N_EVENTS / (SPAN_DAYS * 86_400))
        self.valid = [(s, e) for s, e in events if e["event_time"] <= now_ms]
        self.clock = max(e["event_time"] for _, e in self.valid)
        # stream time per partition: a customer is judged at the newest event time of its partition
        self.clocks: dict[int, int] = {}
        for source, e in self.valid:
            partition = partition_for(event_key(source, e), 4)
            self.clocks[partition] = max(self.clocks.get(partition, 0), e["event_time"])
        self.partition_of = {(e["tenant"], e["customer_id"]): partition_for(event_key(s, e), 4)
                             for s, e in self.valid if e["customer_id"]}


def expected_levels(inp: Input) -> dict[tuple[str, str], str]:
    """(tenant, customer) -> level at the final clock, straight from the definition in docs/metrics.md
    (default settings)."""
    settings = Settings()
    weights = settings.churn.weights
    facts: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(int, days=set()))
    for source, e in inp.valid:
        if e["customer_id"] is None:
            continue
        f, t = facts[(e["tenant"], e["customer_id"])], e["event_time"]
        f["last"] = max(f["last"], t)
        f["days"].add(t // DAY)
        if e.get("survey") and e["survey"]["kind"] == "NPS" and (
                t > f["nps_ms"] or (t == f["nps_ms"] and e["survey"]["score"] < f["nps"])):
            f["nps_ms"], f["nps"] = t, e["survey"]["score"]  # the latest answer; in one millisecond the lowest
        if source == "complaints" and e["event_type"] == "opened":
            opened = f.setdefault("opened", {})
            opened[e["complaint_id"]] = min(t, opened.get(e["complaint_id"], t))
        kind = {("crm", "subscription_downgraded"): "downgrade", ("crm", "subscription_cancelled"): "cancelled",
                ("crm", "subscription_started"): "started", ("chatbot", "conversation_abandoned"): "abandoned",
                ("chatbot", "handoff_requested"): "handoff", ("chatbot", "conversation_resolved"): "resolved",
                }.get((source, e["event_type"]))
        if kind:
            f[kind] = max(f[kind], t)
    memory = 30 * DAY
    levels = {}
    for key, f in facts.items():
        clock = inp.clocks[inp.partition_of[key]]
        today = clock // DAY
        within = lambda t: t and clock - t < memory  # noqa: E731
        present = {
            "inactivity": clock - f["last"] >= 14 * DAY,
            "detractor": within(f["nps_ms"]) and f["nps"] <= 6,
            "complaints": sum(1 for t in f.get("opened", {}).values() if clock - t < memory) >= 2,
            "downgrade": within(f["downgrade"]),
            "chatbot": within(f["abandoned"]) or (f["handoff"] > f["resolved"] and clock - f["handoff"] >= DAY
                                                  and within(f["handoff"])),
            "activity_drop": (lambda last, before: before >= 2 and last < settings.churn.activity_drop * before)(
                sum(today - 7 <= d <= today - 1 for d in f["days"]),
                sum(today - 28 <= d <= today - 8 for d in f["days"]) / 3),
        }
        score = min(1.0, sum(weights[name] for name, on in present.items() if on))
        levels[key] = ("churned" if f["cancelled"] > f["started"] else "high" if score >= settings.churn.high - 1e-9
                       else "medium" if score >= settings.churn.medium - 1e-9 else "low")
    return levels


def read_signals(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    signals = []
    for message in consumer:
        assert message.value[0] == 0 and message.key.decode() == fastavro.schemaless_reader(
            io.BytesIO(message.value[5:]), SIGNAL_SCHEMA)["customer_id"]
        signal = fastavro.schemaless_reader(io.BytesIO(message.value[5:]), SIGNAL_SCHEMA)
        signal["signal_time"] = round(signal["signal_time"].timestamp() * 1000)  # timestamp-millis -> int ms
        signals.append(signal)
    consumer.close()
    return signals


@pytest.fixture(scope="module")
def run(broker, clickhouse_server, tmp_path_factory):
    inp = Input(int(time.time() * 1000))
    prefix, database = f"t{uuid.uuid4().hex[:6]}.", f"cx_churn_{uuid.uuid4().hex[:6]}"
    data_dir = tmp_path_factory.mktemp("worker-churn")
    # Batches of one source and partition arrive out of event-time order across topics: accept 40 days.
    # 5 messages of 200 events a batch: the worker answers /metrics between batches.
    env = worker_env(broker.url, data_dir, clickhouse_server.url(database), CXP_TOPIC_PREFIX=prefix,
                     CXP_CLICKHOUSE_DATABASE=database, CXP_PARTITIONS="4", CXP_APP_ID=f"cxp-test-{prefix}",
                     CXP_MAX_LATENESS="60d", CXP_BATCH_MAX_MESSAGES="5",
                     # SLA targets no complaint here can miss: the oracle below recomputes every churn signal
                     # but complaint SLA breaches (that evidence is covered by tests/unit/test_churn.py)
                     CXP_COMPLAINT_SLA="urgent=90d/90d,high=90d/90d,normal=90d/90d,low=90d/90d")
    worker = WorkerProcess(env, data_dir / "worker.log").start()
    backend = NativeBackend(clickhouse_server.url(database))
    state = {"input": inp, "worker": worker, "ch": backend, "db": database, "bootstrap": broker.bootstrap_servers,
             "topic": f"{prefix}signals.churn", "prefix": prefix}
    try:
        produce_valid(broker.bootstrap_servers, prefix, inp, batched=True)
        settle(state, len(inp.valid))
        yield state
    finally:
        state["worker"].stop()  # the restart test replaces it


def metrics(worker: WorkerProcess) -> dict:
    """/metrics with a patient timeout: the worker answers between batches, and 2 cores are busy here."""
    return scrape(worker.metrics_url, timeout=60)


def wait_for(worker: WorkerProcess, predicate, what: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate(metrics(worker)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{worker.log_tail()}"
        time.sleep(1)


def settle(state: dict, consumed: int) -> None:
    """Wait until ``consumed`` events went through and every signal is on the topic and in the table."""
    worker = state["worker"]
    wait_for(worker, lambda s: _sum(s, "cxp_events_consumed_total") >= consumed, f"{consumed} events consumed")
    wait_for(worker, lambda s: _sum(s, "cxp_sink_rows_total", table="events") >= _sum(s, "cxp_events_processed_total"),
             "events flushed")
    # Signals of the last batches may still be in flight: wait until topic and table stop growing.
    counts, deadline = None, time.monotonic() + 300
    while counts != (counts := (len(read_signals(state["bootstrap"], state["topic"])), table_count(state))):
        assert time.monotonic() < deadline, f"signals still growing: {counts}"
        time.sleep(2)


def table_count(state: dict) -> int:
    return state["ch"].query(f"SELECT count() FROM {state['db']}.churn_signals FINAL")[0][0]


def test_input_has_what_churn_needs(run):
    types = Counter(e["event_type"] for _, e in run["input"].valid)
    assert len(run["input"].valid) >= N_EVENTS - 10
    assert types["subscription_downgraded"] and types["subscription_cancelled"] and types["conversation_abandoned"]
    nps = [e for _, e in run["input"].valid if e.get("survey") and e["survey"]["kind"] == "NPS"]
    assert sum(e["survey"]["score"] <= 6 for e in nps) >= 50
    levels = expected_levels(run["input"])
    assert {"low", "medium", "high", "churned"} <= set(levels.values())
    last = defaultdict(int)
    for _, e in run["input"].valid:
        if e["customer_id"]:
            last[e["customer_id"]] = max(last[e["customer_id"]], e["event_time"])
    assert sum(run["input"].clock - t >= 14 * DAY for t in last.values()) >= 50, "inactive customers"


def test_active_customers_equal_uniq_exact_over_events(run):
    samples, ch, db = metrics(run["worker"]), run["ch"], run["db"]
    clocks = dict(ch.query(f"SELECT kafka_partition, max(event_ms) FROM {db}.events GROUP BY kafka_partition"))
    assert clocks == run["input"].clocks
    for window, w_ms in WINDOWS.items():
        rows = dict(ch.query(f"SELECT tenant, uniqExact(customer_id) FROM {db}.events ANY INNER JOIN "
                             f"(SELECT kafka_partition, max(event_ms) AS clock FROM {db}.events GROUP BY kafka_partition) "
                             f"USING kafka_partition WHERE intDiv(event_ms, 60000) > intDiv(clock - {w_ms}, 60000) "
                             "GROUP BY tenant"))
        assert rows and all(n > 0 for n in rows.values())
        got = {l["tenant"]: v for l, v in samples["cx_active_customers"] if l["window"] == window}
        assert got == rows, window


def test_every_level_change_is_one_signal_on_the_topic_and_one_row(run):
    signals = read_signals(run["bootstrap"], run["topic"])
    rows = run["ch"].query(f"SELECT tenant, customer_id, seq, previous_level, level, signal_ms "
                           f"FROM {run['db']}.churn_signals FINAL")
    # (tenant, customer, n-th change) -> the change: one on the topic, one in the table, the same
    on_topic = Counter((s["tenant"], s["customer_id"], s["sequence"]) for s in signals)
    assert len(signals) >= 100 and max(on_topic.values()) == 1
    assert {(s["tenant"], s["customer_id"], s["sequence"]): (s["previous_level"], s["level"], s["signal_time"])
            for s in signals} == {tuple(r[:3]): tuple(r[3:]) for r in rows}
    assert len(rows) == len(signals)
    by_customer = defaultdict(list)
    for s in signals:  # keyed by customer: one partition, in the order they were emitted
        by_customer[(s["tenant"], s["customer_id"])].append(s)
    for history in by_customer.values():
        previous = "low"
        for n, s in enumerate(history, 1):
            assert s["sequence"] == n and s["previous_level"] == previous != s["level"], history  # a real change
            assert s["reasons"] == [f"{c['signal']} ({c['weight']:g}): {c['evidence']}" for c in s["contributions"]]
            assert (s["level"] == "churned") == any(c["signal"] == "cancelled" for c in s["contributions"])
            previous = s["level"]


def test_final_levels_match_the_weighted_definition(run):
    expected = expected_levels(run["input"])
    latest = {(s["tenant"], s["customer_id"]): s["level"] for s in read_signals(run["bootstrap"], run["topic"])}
    got = {key: latest.get(key, "low") for key in expected}
    assert got == expected
    gauge = {(l["tenant"], l["level"]): v for l, v in metrics(run["worker"])["cx_churn_risk_customers"]}
    assert {k: v for k, v in gauge.items() if v} == dict(Counter((tenant, level) for (tenant, _), level
                                                                in expected.items()))


def test_replaying_the_whole_input_adds_no_signal(run):
    before_topic, before_table = len(read_signals(run["bootstrap"], run["topic"])), table_count(run)
    before = {name: metrics(run["worker"])[name] for name in ("cx_churn_risk_customers", "cx_active_customers")}
    produce_valid(run["bootstrap"], run["prefix"], run["input"], batched=True)
    settle(run, 2 * len(run["input"].valid))
    assert len(read_signals(run["bootstrap"], run["topic"])) == before_topic
    assert table_count(run) == before_table
    after = metrics(run["worker"])
    for name, samples in before.items():
        assert sorted(after[name], key=repr) == sorted(samples, key=repr), name
    assert _sum(after, "cx_churn_signals_total") >= before_topic


def test_a_restarted_worker_rebuilds_its_state_and_a_replay_still_adds_nothing(run):
    """A new worker process rebuilds engagement and churn state from ClickHouse (the restore queries on
    the real server), then gets the whole input once more: no signal, the same gauges."""
    before_topic, before_table = len(read_signals(run["bootstrap"], run["topic"])), table_count(run)
    names = ("cx_churn_risk_customers", "cx_active_customers", "cx_detractor_followups")
    before = {name: sorted(metrics(run["worker"])[name], key=repr) for name in names}
    run["worker"].stop()
    run["worker"] = WorkerProcess(run["worker"].env, run["worker"].log_path).start()
    produce_valid(run["bootstrap"], run["prefix"], run["input"], batched=True)
    settle(run, len(run["input"].valid))
    assert len(read_signals(run["bootstrap"], run["topic"])) == before_topic and table_count(run) == before_table
    after = metrics(run["worker"])
    assert {name: sorted(after[name], key=repr) for name in names} == before
