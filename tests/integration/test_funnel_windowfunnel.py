"""The funnel core against ClickHouse's own windowFunnel on the real server (18.16 on CI).

Random event sequences with ties (same millisecond), repeats, restarts, attribute and source filters
and an event that matches two steps go into ``events``; the core gets them in shuffled order. Every
customer's level must equal windowFunnel over that customer's events, the per-window counts the SQL
recount, and the core's funnel_progress rows must reproduce the same counts (the queries of docs/metrics.md).
"""
from __future__ import annotations

import random

import pytest

from pipeline.dedup import id_hash
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.funnel_defs import parse_funnels
from pipeline.metrics.funnels import FunnelCore
from pipeline.tables import COLUMNS, ROWS
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.queries import window_funnel_sql
from sinks.clickhouse.state import restore_sql

pytestmark = pytest.mark.integration

MIN = 60_000
T0 = 1_790_000_000_000
WINDOWS = {"30m": 30 * MIN, "2h": 120 * MIN}
FUNNELS = parse_funnels({"funnels": [
    {"name": "purchase", "window": "10m", "steps": ["product_view", "add_to_cart", "checkout_started", "purchase"]},
    {"name": "pro_upgrade", "window": "5m", "steps": [
        "product_view", {"event_type": "product_view", "name": "pro_view", "where": {"plan": "pro"}},
        {"event_type": "purchase", "source": "web"}]},
]})
KINDS = ["product_view", "product_view", "add_to_cart", "checkout_started", "purchase", "page_view"]


def random_events(rng: random.Random, n_customers: int, per_customer: int) -> list[tuple[str, dict]]:
    events = []
    for c in range(n_customers):
        tenant, session = ("acme", "globex")[c % 2], rng.randrange(0, 140 * MIN, MIN)
        for _ in range(rng.randint(1, per_customer)):
            # mostly a session on a 1-minute grid (ties), sometimes any millisecond of the 2.5 hours
            t = T0 + rng.choice([session + rng.randrange(0, 12 * MIN, MIN)] * 3 + [rng.randrange(0, 150 * MIN)])
            source = rng.choice(["web", "web", "crm"])
            events.append((source, {
                "event_id": f"{rng.getrandbits(32):08x}", "event_type": rng.choice(KINDS), "event_time": t,
                "tenant": tenant, "customer_id": f"c{c:03d}", "session_id": None,
                "attributes": {"plan": rng.choice(["pro", "free"])}}))
    for source, event in events[::4]:  # more exact same-millisecond pairs
        events.append((source, dict(event, event_id=f"{rng.getrandbits(32):08x}", event_type=rng.choice(KINDS))))
    return events


def event_row(source: str, e: dict) -> tuple:
    return ROWS["events"](
        event_id=e["event_id"], source=source, event_type=e["event_type"], event_time=e["event_time"] // 1000,
        event_ms=e["event_time"], tenant=e["tenant"], customer_id=e["customer_id"], anonymous_id=None, session_id=None,
        attr_keys=list(e["attributes"]), attr_values=list(e["attributes"].values()), kafka_partition=0, kafka_offset=0,
        id_hash=id_hash(e["event_id"]))


def at_least_from_sql(backend, funnel, since_ms) -> dict[str, list[int]]:
    recount = ", ".join(f"sum(level >= {k})" for k in range(1, len(funnel.steps) + 1))
    rows = backend.query(f"SELECT tenant, {recount} FROM ({window_funnel_sql(funnel, backend.database, since_ms)}) "
                         "GROUP BY tenant")
    return {tenant: list(counts) for tenant, *counts in rows if any(counts)}


def at_least_from_progress(backend, funnel, since_ms) -> dict[str, list[int]]:
    """The docs/metrics.md query: per customer the best attempt started in the window, from funnel_progress."""
    recount = ", ".join(f"sum(best >= {k})" for k in range(1, len(funnel.steps) + 1))
    rows = backend.query(
        f"SELECT tenant, {recount} FROM (SELECT tenant, customer_id, max(level) AS best "
        f"FROM {backend.database}.funnel_progress FINAL WHERE funnel = '{funnel.name}' AND started_ms >= {since_ms} "
        "GROUP BY tenant, customer_id) GROUP BY tenant")
    return {tenant: list(counts) for tenant, *counts in rows if any(counts)}


def test_core_levels_and_window_counts_equal_window_funnel(clickhouse_url):
    backend = NativeBackend(clickhouse_url)
    backend.create_tables()
    try:
        rng = random.Random(20261129)
        events = random_events(rng, n_customers=120, per_customer=14)
        columns = COLUMNS["events"]
        rows = [event_row(source, e) for source, e in events]
        backend.insert("events", columns, list(zip(*rows)))
        backend.insert("events", columns, list(zip(*rows[: len(rows) // 3])))  # a replayed flush: FINAL drops it

        core = FunnelCore(FUNNELS, WINDOWS, max_lateness_ms=200 * MIN)
        state, out = core.new_state(0), Output()
        shuffled = events[:]
        rng.shuffle(shuffled)
        for offset in range(0, len(shuffled), 3):  # several events per message, one source per message
            core.add(state, Batch.of(0, shuffled[offset:offset + 3]), out)
        clock = max(e["event_time"] for _, e in events)
        core.tick(state, clock, out)  # nothing is old enough to expire
        backend.insert("funnel_progress", COLUMNS["funnel_progress"], list(zip(*out.rows["funnel_progress"])))

        levels = core.levels(state)
        for funnel in FUNNELS:
            sql_levels = backend.query(window_funnel_sql(funnel, backend.database, T0))
            assert len(sql_levels) == len({(e["tenant"], e["customer_id"]) for _, e in events})
            for tenant, customer, level in sql_levels:
                assert levels.get((tenant, customer, funnel.name), 0) == level, (funnel.name, tenant, customer)
            for label, window in WINDOWS.items():
                first_ms = ((clock - window) // MIN + 1) * MIN
                mine = {tenant: counts for (tenant, index, w), counts in core.at_least([state], [clock]).items()
                        if FUNNELS[index] is funnel and w == label and any(counts)}
                assert mine == at_least_from_sql(backend, funnel, first_ms), (funnel.name, label)
                assert mine == at_least_from_progress(backend, funnel, first_ms), (funnel.name, label)
        # the restore queries run on 18.16 and rebuild the same state, without a row or an observation
        restored, restore_out = core.new_state(0), Output()
        for spec in core.restores():
            rows = backend.query(restore_sql(spec, backend.database, {0: clock}))
            core.restore(restored, spec.name, [spec.row_type()(*row[1:]) for row in rows], clock)
        core.tick(restored, clock, restore_out)
        assert restore_out.row_count() == 0 and restore_out.observations == []
        assert core.levels(restored) == levels
        assert core.at_least([restored], [clock]) == core.at_least([state], [clock])
        times = [e["event_time"] for _, e in events]
        assert len(times) - len(set(times)) >= 20  # the data really had same-millisecond events
    finally:
        backend.close()


def test_window_funnel_on_18_16_takes_ties_in_row_order(clickhouse_url):
    """What the tie rule rests on: equal times are taken in the order rows reach the function, and
    a row matching two conditions counts as one step. Int64 times are rejected."""
    backend = NativeBackend(clickhouse_url)
    try:
        def level(rows: str) -> int:
            return backend.query(f"SELECT windowFunnel(10)(toUInt32(x.1), toUInt8(x.2), toUInt8(x.3)) "
                                 f"FROM (SELECT arrayJoin([{rows}]) AS x)")[0][0]

        assert level("(100, 0, 1), (100, 1, 0)") == 1  # step 2 read first: no progress
        assert level("(100, 1, 0), (100, 0, 1)") == 2
        assert level("(100, 1, 1)") == 1  # one row matching both steps
        assert level("(100, 1, 0), (101, 1, 1)") == 2  # ... can still continue an earlier start
        assert level("(100, 1, 0), (110, 0, 1)") == 2 and level("(100, 1, 0), (111, 0, 1)") == 1  # inclusive window
        with pytest.raises(Exception, match="must be DateTime or UInt32"):
            backend.query("SELECT windowFunnel(10)(toInt64(1), 1, 1)")
    finally:
        backend.close()
