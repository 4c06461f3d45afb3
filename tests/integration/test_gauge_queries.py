"""Every gauge family equals its reproducing query of docs/metrics.md, after a messy replay with a restart.

Real parts: Tansu, `cxp worker` subprocesses, ClickHouse 18.16. A seeded simulator stream of five days
(two tenants, complaints, surveys, funnels, churn signals) is sent by a foreign client with duplicates,
arrival disorder and bad records: the first half, then the worker is stopped and a new one started on
the same group and database (it rebuilds its state from ClickHouse), then the second half and the whole
input once more. The oracle is ClickHouse over the stored rows, through the queries users read in
docs/metrics.md; a gauge family without a query fails the test.
"""
from __future__ import annotations

import random
import time
import uuid

import pytest

from pipeline.metrics.registry import build_cores
from pipeline.settings import Settings
from sinks.clickhouse.backend import NativeBackend
from tests.gauge_queries import assert_gauges_match
from tests.integration.test_metrics_replay import Dataset, produce, total
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration
SETTINGS = {"CXP_SEGMENT_MAX_VALUES": "50"}  # above the number of segments: the queries reproduce no cap


def drained(worker: WorkerProcess, consumed: int) -> dict:
    return worker.wait_for(
        lambda s: total(s, "cxp_events_consumed_total") >= consumed
        and total(s, "cxp_sink_rows_total", table="events") >= total(s, "cxp_events_processed_total")
        and worker.metrics().get("cxp_oldest_unacked_seconds", [({}, 1)])[0][1] == 0,
        timeout_s=240, what=f"{consumed} events consumed and durable")


@pytest.fixture(scope="module")
def replayed(broker, clickhouse_server, tmp_path_factory):
    data = Dataset(int(time.time() * 1000), seed=23, events=24_000, days=5)
    items = data.valid + data.duplicates + data.bad
    middle = sorted(e["event_time"] for _, e in items)[len(items) // 2]
    first_half = data.messages(random.Random(3), [(s, e) for s, e in items if e["event_time"] < middle])
    second_half = data.messages(random.Random(3), [(s, e) for s, e in items if e["event_time"] >= middle])
    prefix, database = f"gauges{uuid.uuid4().hex[:6]}.", f"cx_gauges_{uuid.uuid4().hex[:8]}"
    env = worker_env(broker.url, tmp_path_factory.mktemp("gauges"), clickhouse_server.url(database),
                     CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"gauges-{uuid.uuid4().hex[:6]}", **SETTINGS)
    logs = tmp_path_factory.mktemp("gauges-log")
    first = WorkerProcess(env, logs / "first.log").start()
    try:
        produce(broker.bootstrap_servers, prefix, first_half)
        before = drained(first, data.events_in(first_half))
    finally:
        first.stop()
    second = WorkerProcess(env, logs / "second.log").start()
    try:
        produce(broker.bootstrap_servers, prefix, second_half)
        produce(broker.bootstrap_servers, prefix, data.messages(random.Random(4)))  # everything again
        after = drained(second, data.events_in(second_half) + data.sent)
        yield {"data": data, "before": before, "samples": after, "database": database,
               "clickhouse": NativeBackend(clickhouse_server.url(database))}
    finally:
        second.stop()


def test_every_gauge_family_equals_its_reproducing_query(replayed):
    cores = build_cores(Settings(**{k[4:].lower(): v for k, v in SETTINGS.items()}))
    client = replayed["clickhouse"].client
    compared = assert_gauges_match(replayed["samples"], cores, client, replayed["database"])
    assert compared >= 20
    # not vacuous for the subscription families (five days hold no ended cohort week: the retention families
    # are compared with series in tests/integration/test_retention_subscriptions.py)
    for family in ("cx_subscription_mrr", "cx_subscription_changes", "cx_subscription_ltv"):
        assert any(value for _, value in replayed["samples"].get(family, [])), f"{family} has no series"


def test_the_restart_rebuilt_state_and_counted_nothing_twice(replayed):
    data, samples = replayed["data"], replayed["samples"]
    ch, db = replayed["clickhouse"], replayed["database"]
    assert ch.query(f"SELECT count() FROM {db}.events FINAL")[0][0] == len(data.valid)
    assert total(samples, "cxp_events_consumed_total") == total(samples, "cxp_events_processed_total") + \
        total(samples, "cxp_events_duplicate_total") + total(samples, "cxp_events_rejected_total")
    # the complaint rate, 0 everywhere before the facts were declared, is counted
    assert total(samples, "cx_complaint_customers") > 0 and total(replayed["before"], "cx_complaint_customers") > 0
