"""Every dashboard query against real servers: a Prometheus with the shipped recording rules scraping a real
`cxp worker`, and the ClickHouse 18.16 server the worker writes to.

Input: two days of seeded simulator traffic (surveys, funnels, complaints, CRM changes), after four sparser
weeks of the same customers (weekly retention and 30-day subscription figures need them), with duplicates
and invalid records mixed in, sent by a foreign client (kafka-python + plain fastavro) after Prometheus
has scraped the idle worker once, so rates and histogram quantiles see the increase. Variables are filled
in the way Grafana does ($tenant -> a tenant of the input, $window -> 24h) and ClickHouse macros the way
grafana-clickhouse-datasource does (deploy/grafana/queries.py). A query passes when it returns at least
one finite value (PromQL) or one row (SQL).
"""
from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaProducer

from deploy.grafana.queries import Query, clickhouse_sql, promql, queries
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from sinks.clickhouse.backend import NativeBackend
from tests.foreign import RECORD, avro
from tests.services.prometheus import PrometheusServer
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = [json.loads(path.read_text()) for path in sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))]
RULES = REPO / "deploy/prometheus/recording_rules.yml"
DAY = 86_400_000
PARTITIONS = 4
N_EVENTS = 6000
HISTORY_EVENTS = 3000
VARIABLES = {"tenant": ["acme"], "window": ["24h"]}
# SLA targets the simulator's handling times often miss, so two days of input breach some for every tenant
# (the defaults are rarely missed by its exponential delays); read by the complaints core.
TIGHT_SLA = "urgent=5m/30m,high=10m/1h,normal=30m/3h,low=1h/6h"


def inputs(now_ms: int) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Two days of the simulator's events in two halves; the second also repeats every 50th event of the
    first and carries 20 invalid ones. Prometheus scrapes between the halves, so every source's counters
    are seen growing (a counter first scraped at its final value has a rate of 0). Four sparser weeks of the
    same customers come first, so weekly retention has cohorts whose weeks +1 and later are over and the
    subscription panels have 30 days of changes."""
    past = Simulator(seed=6, customers=400, start_ms=now_ms - 30 * DAY)
    history = [(s, e) for s, e in past.events(count=HISTORY_EVENTS, rate=HISTORY_EVENTS / (28 * 86_400))
               if e["event_time"] <= now_ms - 2 * DAY]
    sim = Simulator(seed=5, customers=400, start_ms=now_ms - 2 * DAY, spike_at_ms=now_ms - 3 * 3_600_000)
    events = [(s, e) for s, e in sim.events(count=N_EVENTS, rate=N_EVENTS / (2 * 86_400)) if e["event_time"] <= now_ms]
    crm = next(e for s, e in events if s == "crm")
    invalid = [("crm", dict(crm, event_id=f"bad-{uuid.uuid4()}", event_type="survey_response",
                            survey={"kind": "NPS", "score": 42, "comment": None, "touchpoint": None}))
               for _ in range(20)]
    half = len(events) // 2
    return history + events[:half], events[half:] + events[:half:50] + invalid


def produce(bootstrap: str, prefix: str, events: list[tuple[str, dict]]) -> None:
    """Avro batches of up to 50 events per topic partition, by a foreign client."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for source, event in events:
        groups[(source, partition_for(event_key(source, event), PARTITIONS))].append(event)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=2_000_000)
    for (source, partition), group in groups.items():
        for batch in (group[i:i + 50] for i in range(0, len(group), 50)):
            producer.send(f"{prefix}events.{source}", avro(f"{RECORD[source]}Batch", {"events": batch}),
                          key=event_key(source, batch[0]), partition=partition)
    producer.flush()
    producer.close()


def consumed(samples: dict) -> float:
    return sum(value for _, value in samples.get("cxp_events_consumed_total", []))


@pytest.fixture(scope="module")
def stack(broker, clickhouse_server, tmp_path_factory):
    prefix, database = f"dash{uuid.uuid4().hex[:6]}.", f"cx_dash_{uuid.uuid4().hex[:8]}"
    env = worker_env(broker.url, tmp_path_factory.mktemp("dash"), clickhouse_server.url(database),
                     CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"dash-{uuid.uuid4().hex[:6]}", CXP_SNAPSHOT_INTERVAL="1",
                     CXP_COMPLAINT_SLA=TIGHT_SLA)
    worker = WorkerProcess(env, tmp_path_factory.mktemp("dash-log") / "worker.log").start()
    prometheus = PrometheusServer(tmp_path_factory.mktemp("dash-prom"), [f"127.0.0.1:{worker.web_port}"],
                                  rule_files=(RULES,), job="cx-pipeline")
    try:
        prometheus.wait_for('up{job="cx-pipeline"} == 1', timeout_s=60)
        now_ms = int(time.time() * 1000)
        sent = 0
        for half in inputs(now_ms):
            produce(broker.bootstrap_servers, prefix, half)
            sent += len(half)
            worker.wait_for(lambda s: consumed(s) >= sent and s["cxp_oldest_unacked_seconds"][0][1] == 0,
                            timeout_s=240, what=f"{sent} events consumed and durable")
            prometheus.wait_for(f"sum(cxp_events_consumed_total) >= {sent}", timeout_s=60)
        for rule in ("source:cxp_events_consumed:rate5m > 0", "tenant_window:cx_nps:score"):  # rules evaluated
            prometheus.wait_for(rule)
        yield {"worker": worker, "prometheus": prometheus, "clickhouse": NativeBackend(clickhouse_server.url(database)),
               "database": database, "now_ms": now_ms}
    finally:
        prometheus.stop()
        worker.stop()


ALL = [query for dashboard in DASHBOARDS for query in queries(dashboard)]


def test_the_dashboards_have_queries_of_both_kinds():
    assert {q.language for q in ALL} == {"promql", "sql"} and len(ALL) >= 40


@pytest.mark.parametrize("query", [q for q in ALL if q.language == "promql"], ids=lambda q: q.name)
def test_promql_query_returns_data(stack, query: Query):
    expr = promql(query.text, VARIABLES)
    deadline = time.monotonic() + 10  # a rule evaluation or two after the last scrape
    while True:
        values = [float(s["value"][1]) for s in stack["prometheus"].query(expr)]
        if any(math.isfinite(v) for v in values) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(math.isfinite(v) for v in values), f"{query.name}: no finite value for {expr}: {values}"


@pytest.mark.parametrize("query", [q for q in ALL if q.language == "sql"], ids=lambda q: q.name)
def test_sql_query_returns_rows(stack, query: Query):
    now_s = stack["now_ms"] // 1000
    text = clickhouse_sql(query.text, VARIABLES, from_s=now_s - 7 * 86_400, to_s=now_s + 3600, interval_s=60)
    rows = stack["clickhouse"].query(re.sub(r"\bcx\.", f"{stack['database']}.", text))
    assert rows, f"{query.name}: no rows from {text}"


@pytest.mark.parametrize("variable", [(d["uid"], v) for d in DASHBOARDS for v in d["templating"].get("list", [])
                                      if v["type"] == "query"], ids=lambda v: f"{v[0]}/${v[1]['name']}")
def test_template_variable_finds_values(stack, variable):
    """label_values(selector, label): the selector's series carry the label, with the value the tests use."""
    _, spec = variable
    selector, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", spec["query"]["query"]).groups()
    found = {s["metric"].get(label) for s in stack["prometheus"].query(promql(selector, VARIABLES))}
    assert set(VARIABLES[spec["name"]]) <= found


RULE_CHECKS = [q for q in ALL if q.panel == "Recording rules this dashboard reads"]


def test_recording_rule_check_says_ok_with_the_rules_and_missing_without(stack, tmp_path):
    """With recording_rules.yml loaded every rule the panels read reports 0 ("ok"); a second Prometheus scraping
    the same worker without the rule file reports 1 ("missing") for each one whose inputs it scrapes."""
    assert RULE_CHECKS
    loaded = {q.legend: [float(s["value"][1]) for s in stack["prometheus"].query(promql(q.text, VARIABLES))]
              for q in RULE_CHECKS}
    assert loaded == {rule: [0.0] for rule in loaded}, loaded
    bare = PrometheusServer(tmp_path, [f"127.0.0.1:{stack['worker'].web_port}"], job="cx-pipeline")
    try:
        bare.wait_for('up{job="cx-pipeline"} == 1', timeout_s=60)
        bare.wait_for("cxp_events_consumed_total")
        without = {q.legend: [float(s["value"][1]) for s in bare.query(promql(q.text, VARIABLES))] for q in RULE_CHECKS}
    finally:
        bare.stop()
    # a rule whose inputs the worker does not export yet (no sink error, say) is not missing, only without data
    inputs = {q.legend: re.findall(r'\{__name__="[^"]*"\}', q.text) for q in RULE_CHECKS}
    no_inputs = {rule for rule, selectors in inputs.items() if not all(map(stack["prometheus"].query, selectors))}
    assert without == {rule: [0.0 if rule in no_inputs else 1.0] for rule in without}, without
    assert len(no_inputs) < len(without) // 2, no_inputs
