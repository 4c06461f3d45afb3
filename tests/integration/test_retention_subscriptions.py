"""Cohort retention and subscription revenue against ClickHouse's own functions over the stored rows.

Real parts: the ClickHouse server (18.16 on CI) and the worker's processing path in process (`Processor`:
decode, validation, dedup, partition clocks, the `events` rows and the cores' rows), fed fourteen weeks of
customers who come back week after week less often and of subscriptions with prices in cents, in
arrival disorder within max lateness, with re-sent events; halfway a new processor rebuilds its state
from ClickHouse (`read_partitions`, as a worker does on assignment) and takes the rest. The oracles:
`retention()` over `events` for the cohort matrix and, through the reproducing queries of docs/metrics.md,
for every gauge; exact decimal sums of the input's prices for the money.
"""
from __future__ import annotations

import itertools
import random
from collections import defaultdict
from decimal import Decimal

import pytest

from pipeline.metrics.registry import build_cores
from pipeline.metrics.retention import week_of, week_start_ms
from pipeline.metrics.subscriptions import CANCELLED
from pipeline.settings import Settings
from pipeline.simulate import EXTRA_FIELDS
from pipeline.tables import COLUMNS
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.state import read_partitions
from tests.gauge_queries import assert_gauges_match, families_of
from tests.unit.test_processor import processor, records

pytestmark = pytest.mark.integration

DAY, WEEK = 86_400_000, 7 * 86_400_000
END = week_start_ms(week_of(1_790_000_000_000)) + 3 * DAY + 5 * 3_600_000  # a Thursday afternoon
START = END - 14 * WEEK
PLANS = {"basic": 19.99, "pro": 99.95, "team": 249.9, "starter": 0.1}
CORES = ("retention", "subscriptions")


IDS = itertools.count()


def event(source: str, kind: str, ms: int, tenant: str, customer: str, **fields) -> dict:
    e = {"event_id": f"{source}-{next(IDS):06d}", "event_type": kind, "event_time": ms, "tenant": tenant,
         "customer_id": customer, "session_id": None, "attributes": {}}
    e.update(dict.fromkeys(EXTRA_FIELDS[source]))
    e.update(fields)
    return e


def stream(seed: int = 5) -> list[tuple[str, dict]]:
    """Customers arriving over fourteen weeks who return in a week with a falling chance (a retention curve),
    a third of them subscribing and then renewing, upgrading, downgrading or cancelling now and then."""
    rng = random.Random(seed)
    items = []
    for c in range(700):
        tenant, customer = ("acme", "globex")[c % 2], f"cust-{c:05d}"
        first = START + rng.randrange(0, 14 * WEEK - DAY)
        for week in range(0, 15):
            if week and rng.random() > 0.15 + 0.7 * 0.75 ** week:
                continue
            for _ in range(rng.randint(1, 3)):
                ms = first + week * WEEK + rng.randrange(0, WEEK)
                if ms < END:
                    items.append(("web", event("web", rng.choice(["page_view", "login", "search"]), ms, tenant,
                                               customer)))
        if rng.random() < 0.35:
            plan = rng.choice(list(PLANS))
            ms = first + rng.randrange(0, DAY)
            items.append(("crm", event("crm", "subscription_started", ms, tenant, customer, plan=plan, mrr=PLANS[plan])))
            while (ms := ms + rng.randrange(3 * DAY, 30 * DAY)) < END:
                kind = rng.choices(["subscription_renewed", "subscription_upgraded", "subscription_downgraded",
                                    CANCELLED, "subscription_started"], weights=[6, 2, 2, 2, 1])[0]
                if kind in ("subscription_upgraded", "subscription_downgraded", "subscription_started"):
                    plan = rng.choice(list(PLANS))
                items.append(("crm", event("crm", kind, ms, tenant, customer, plan=None if kind == CANCELLED else plan,
                                           mrr=0.0 if kind == CANCELLED else PLANS[plan])))
    for i in range(200):  # anonymous visits move the clocks but belong to no cohort
        ms = START + rng.randrange(0, END - START)
        items.append(("web", event("web", "page_view", ms, "acme", None, anonymous_id=f"anon-{i}")))
    items.sort(key=lambda item: item[1]["event_time"] + rng.randrange(0, 2 * DAY))  # late by up to two days
    return items


def deliver(backend: NativeBackend, out) -> None:
    for table in ("events", "retention", "subscriptions"):
        rows = out.rows.get(table)
        if rows:
            backend.insert(table, COLUMNS[table], [list(column) for column in zip(*rows)])


def run(p, backend, items, now_ms: int) -> None:
    for start in range(0, len(items), 300):
        deliver(backend, p.process(records(items[start:start + 300], batched=True), now_ms))


def samples_of(p) -> dict:
    states = p.owned_states()
    samples: dict = defaultdict(list)
    for i, core in enumerate(p.cores):
        for family in core.collect([s.cores[i] for s in states], [s.clock_ms for s in states]):
            samples[family.name] += [(dict(s.labels), s.value) for s in family.samples]
    return samples


@pytest.fixture(scope="module")
def replayed(clickhouse_server):
    import uuid

    database = f"cx_cohorts_{uuid.uuid4().hex[:8]}"
    backend = NativeBackend(clickhouse_server.url(database))
    backend.create_tables()
    items = stream()
    half = len(items) // 2
    now = END + 60_000
    cores = build_cores(Settings(metrics=list(CORES)))
    first = processor(cores=cores)
    run(first, backend, items[:half], now)
    second = processor(cores=build_cores(Settings(metrics=list(CORES))))
    second.restore(read_partitions(backend, sorted(second.owned), second.cores, 86_400_000))
    rng = random.Random(9)
    resent = rng.sample(items[:half], 300)  # older than the dedup horizon: they reach the cores again
    run(second, backend, items[half:] + resent, now)
    whole = processor(cores=build_cores(Settings(metrics=list(CORES))))
    run(whole, type("Nowhere", (), {"insert": lambda *a: None})(), items, now)
    yield {"items": items, "backend": backend, "database": database, "second": second, "whole": whole}
    backend.close()


def test_the_cohort_matrix_of_the_table_equals_clickhouse_retention_over_events(replayed):
    ch, db = replayed["backend"], replayed["database"]
    from_table = ch.query(f"""
        SELECT tenant, toUInt32(cohort_week) AS cohort, age, count()
        FROM {db}.retention FINAL ARRAY JOIN range(9) AS age
        WHERE bitTest(active_weeks, age) GROUP BY tenant, cohort, age""")
    from_retention = ch.query(f"""
        SELECT tenant, toUInt32((cohort * 7 - 3) * 86400) AS monday, k, sum(r[k + 1]) AS customers
        FROM (SELECT tenant, cohort,
                     retention(week = cohort, week = cohort + 1, week = cohort + 2, week = cohort + 3,
                               week = cohort + 4, week = cohort + 5, week = cohort + 6, week = cohort + 7,
                               week = cohort + 8) AS r
              FROM (SELECT tenant, assumeNotNull(customer_id) AS customer_id,
                           intDiv(intDiv(event_ms, 86400000) + 3, 7) AS week
                    FROM (SELECT * FROM {db}.events WHERE customer_id IS NOT NULL))
              ANY INNER JOIN (SELECT tenant, assumeNotNull(customer_id) AS customer_id,
                                     min(intDiv(intDiv(event_ms, 86400000) + 3, 7)) AS cohort
                              FROM (SELECT * FROM {db}.events WHERE customer_id IS NOT NULL) GROUP BY tenant, customer_id)
              USING tenant, customer_id
              GROUP BY tenant, customer_id, cohort)
        ARRAY JOIN range(9) AS k
        GROUP BY tenant, cohort, k
        HAVING customers > 0""")
    assert len(from_table) > 150 and sorted(from_table) == sorted(from_retention)
    # and both equal a plain recount of the input
    first: dict = {}
    weeks: dict = defaultdict(set)
    for _, e in replayed["items"]:
        if e["customer_id"] is not None:
            key = (e["tenant"], e["customer_id"])
            first[key] = min(first.get(key, e["event_time"]), e["event_time"])
            weeks[key].add(week_of(e["event_time"]))
    recount: dict = defaultdict(int)
    for key, ms in first.items():
        for age in range(9):
            if week_of(ms) + age in weeks[key]:
                recount[(key[0], week_start_ms(week_of(ms)) // 1000, age)] += 1
    assert {(t, c, a): n for t, c, a, n in from_table} == recount


def test_every_gauge_equals_its_reproducing_query_after_the_rebuild(replayed):
    ch, db, second = replayed["backend"], replayed["database"], replayed["second"]
    samples = samples_of(second)
    assert assert_gauges_match(samples, second.cores, ch.client, db) == len(families_of(second.cores))
    ages = {labels["age"] for labels, value in samples["cx_retention_customers"] if value}
    assert ages == {str(age) for age in range(1, 9)}  # fourteen weeks reach every age
    movements = {labels["movement"] for labels, value in samples["cx_subscription_changes"] if value}
    assert movements == {"new", "expansion", "contraction", "churned"} and samples["cx_subscription_ltv"]
    # the rebuilt worker ends where one that never stopped does
    assert samples == samples_of(replayed["whole"])


def test_mrr_is_exact_to_the_cent_in_the_gauges_and_in_clickhouse(replayed):
    latest: dict = {}
    for _, e in replayed["items"]:
        if e["event_type"].startswith("subscription_"):
            key = (e["tenant"], e["customer_id"])
            if key not in latest or (e["event_time"], e["event_id"]) > (latest[key]["event_time"], latest[key]["event_id"]):
                latest[key] = e
    exact: dict = defaultdict(Decimal)
    for (tenant, _), e in latest.items():
        if e["event_type"] != CANCELLED:
            exact[tenant] += Decimal(repr(e["mrr"]))
    ch, db = replayed["backend"], replayed["database"]
    stored = dict(ch.query(f"""
        SELECT tenant, sum(mrr) FROM (
            SELECT tenant, customer_id, argMax(if(event_type = 'subscription_cancelled', 0, assumeNotNull(mrr_minor)),
                                               (event_ms, event_id)) AS mrr
            FROM {db}.subscriptions FINAL GROUP BY tenant, customer_id)
        GROUP BY tenant"""))
    assert {tenant: Decimal(n) / 100 for tenant, n in stored.items()} == exact
    gauges = defaultdict(float)
    for labels, value in samples_of(replayed["second"])["cx_subscription_mrr"]:
        gauges[labels["tenant"]] += value
    assert {tenant: round(Decimal(value), 2) for tenant, value in gauges.items()} == exact
