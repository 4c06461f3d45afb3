"""Every gauge family equals its reproducing query of docs/metrics.md, after a messy replay with a restart.

Real parts: Tansu, `cxp worker` subprocesses, ClickHouse 18.16. A seeded simulator stream of 22 days
(two tenants, complaints, surveys, funnels, churn signals) is sent by a foreign client with duplicates,
arrival disorder and bad records: the first half, then the worker is stopped and a new one started on
the same group and database (it rebuilds its state from ClickHouse), then the second half and the whole
input once more. 22 days are more than max_lateness (7d) and cross the 1d and 7d window edges: settled
complaints are forgotten, and the sparse complaints topic, sent in batches of 100 per partition, comes
days behind the partition's other sources (its events still valid). The oracle is ClickHouse over the
stored rows, through the queries users read in docs/metrics.md; a gauge family without a query fails
the test.
"""
from __future__ import annotations

import random
import time
import uuid

import pytest

from pipeline.metrics.registry import build_cores
from pipeline.settings import Settings
from sinks.clickhouse.backend import NativeBackend
from tests.gauge_queries import assert_gauges_match, exported
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


BAD_PURCHASES = ({"order_id": None}, {"revenue": None}, {"revenue": -0.01}, {"revenue": float("nan")},
                 {"currency": "ZZZ"}, {"currency": None})


def bad_purchases(data: Dataset) -> list[tuple[str, dict]]:
    """Copies of a valid purchase under new event ids, each with one defect of issue 18's Bad input."""
    purchase = next(e for s, e in data.valid if s == "web" and e["event_type"] == "purchase")
    return [("web", dict(purchase, event_id=str(uuid.uuid4()), **defect)) for defect in BAD_PURCHASES]


@pytest.fixture(scope="module")
def replayed(broker, clickhouse_server, tmp_path_factory):
    data = Dataset(int(time.time() * 1000), seed=23, events=24_000, days=22)
    data.bad += bad_purchases(data)
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
    # not vacuous for the subscription families (the retention families are also compared with series in
    # tests/integration/test_retention_subscriptions.py)
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


def test_the_comparison_covers_orders_carts_and_time_to_value(replayed):
    """The revenue families compared above are not empty: orders in several currencies of one tenant (some
    purchases sent twice), repeat buyers, carts of both outcomes and open ones, first purchases."""
    samples = replayed["samples"]
    for family in ("cx_orders", "cx_revenue", "cx_average_order_value", "cx_orders_active_customers",
                   "cx_revenue_per_active_customer", "cx_purchasing_customers", "cx_repeat_customers",
                   "cx_repeat_purchase_ratio", "cx_carts", "cx_cart_abandonment_ratio", "cx_carts_open",
                   "cx_first_purchases", "cx_time_to_first_purchase_exact_seconds"):
        assert exported(samples, family), f"{family}: nothing to compare"
    assert len({labels["currency"] for labels, value in samples["cx_revenue"] if value and labels["tenant"] == "acme"}) >= 3
    assert {labels["outcome"] for labels, value in samples["cx_carts"] if value} == {"converted", "abandoned"}
    purchases = [e for s, e in replayed["data"].valid if e["event_type"] == "purchase"]
    assert len({e["order_id"] for e in purchases}) < len(purchases), "no purchase was sent twice"


def test_orders_and_revenue_equal_uniq_exact_and_sum_over_the_purchases_as_sent(replayed):
    """The oracle is not the worker's `orders` table but every purchase as sent (re-sent copies included), loaded
    into ClickHouse: an order is (tenant, buyer, order_id), its amount counted once in the currency's minor unit.
    All 22 days lie in the 30d window, so the 30d series must equal these totals whatever the clocks."""
    client, db = replayed["clickhouse"].client, replayed["database"]
    purchases = [e for s, e in replayed["data"].valid if s == "web" and e["event_type"] == "purchase"]
    assert {e["currency"] for e in purchases} <= {"EUR", "USD", "BRL", "JPY"}  # JPY has no minor unit, the rest 2
    client.execute(f"CREATE TABLE {db}.sent_purchases (tenant String, customer_id String, buyer String, "
                   "order_id String, revenue Float64, currency String) ENGINE = Memory")
    client.execute(f"INSERT INTO {db}.sent_purchases VALUES",
                   [(e["tenant"], e["customer_id"] or "", e["customer_id"] or e["anonymous_id"], e["order_id"],
                     e["revenue"], e["currency"]) for e in purchases])
    rows = client.execute(f"""
        SELECT tenant, currency, uniqExact(buyer, order_id), sum(minor) / pow(10, any(digits))
        FROM (SELECT tenant, currency, buyer, order_id, if(currency = 'JPY', 0, 2) AS digits,
                     round(revenue * pow(10, digits)) AS minor
              FROM {db}.sent_purchases LIMIT 1 BY tenant, buyer, order_id)
        GROUP BY tenant, currency""")
    samples = replayed["samples"]
    month = {family: {(labels["tenant"], labels["currency"]): value for labels, value in samples[family]
                      if labels["window"] == "30d" and value} for family in ("cx_orders", "cx_revenue")}
    assert month["cx_orders"] == {(tenant, currency): orders for tenant, currency, orders, _ in rows}
    assert month["cx_revenue"] == pytest.approx({(tenant, currency): revenue for tenant, currency, _, revenue in rows},
                                                rel=1e-12)
    repeat = client.execute(f"""
        SELECT tenant, count(), countIf(orders >= 2)
        FROM (SELECT tenant, customer_id, uniqExact(order_id) AS orders FROM {db}.sent_purchases
              WHERE customer_id != '' GROUP BY tenant, customer_id)
        GROUP BY tenant""")
    for family, column in (("cx_purchasing_customers", 1), ("cx_repeat_customers", 2)):
        assert {labels["tenant"]: value for labels, value in samples[family]} == {row[0]: row[column] for row in repeat}
    assert len(purchases) > sum(month["cx_orders"].values()) > 100


def test_bad_purchases_are_dead_lettered_as_invalid_value_naming_the_field(replayed):
    """Each bad purchase was sent twice (its half, then everything again): two dead letters naming its field."""
    errors = [error for error, in replayed["clickhouse"].client.execute(
        f"SELECT error FROM {replayed['database']}.dead_letters FINAL "
        "WHERE reason = 'invalid_value' AND endsWith(error, 'on a purchase')")]
    assert len(errors) == 2 * len(BAD_PURCHASES)
    assert sorted(error.split()[0] for error in errors) == sorted(2 * [field for d in BAD_PURCHASES for field in d])
