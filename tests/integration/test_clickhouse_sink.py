"""The ClickHouse sink on both backends: a real server (18.16 on CI) and embedded chdb. Nothing is mocked."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from pipeline.dedup import id_hash
from pipeline.metrics.carts import CartCore
from pipeline.metrics.chatbot import ChatbotCore
from pipeline.metrics.complaints import ComplaintCore
from pipeline.metrics.orders import OrdersCore
from pipeline.metrics.subscriptions import SubscriptionCore
from pipeline.tables import COLUMNS, ROWS, TABLES
from sinks.clickhouse.backend import ChdbBackend, OutdatedTables, open_backend
from sinks.clickhouse.sink import ClickHouseSink, SinkError
from sinks.clickhouse.state import read_partitions

pytestmark = pytest.mark.integration
T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC

SAMPLES = {
    "events": [
        ("e1", "web", "page_view", T0, T0 * 1000 + 123, "acme", "c1", None, "s1", ["region", "plan"], ["eu", "pro"], 3, 42, 1),
        ("e2", "web", "search", T0 + 1, T0 * 1000 + 1999, "acme", None, "anon-7", None, [], [], 0, 9_007_199_254_740_993,
         18_446_744_073_709_551_615),
    ],
    "survey_responses": [
        ("s1", T0, T0 * 1000, "acme", "c1", "crm", "NPS", 9, "checkout", "fast, thanks", 2, 7, ["region"], ["eu"]),
        ("s2", T0 + 60, T0 * 1000 + 60_000, "acme", None, "chatbot", "CES", 7, None, None, 1, 8, [], []),
    ],
    "dead_letters": [
        (T0, T0 * 1000 + 5, "cx.events.web", 1, 7, -1, "undecodable", "bad magic byte", None, b"not avro"),
        (T0, T0 * 1000 + 5, "cx.events.crm", 0, 8, 3, "invalid_value", "score 11 > 10", "c9", b"{}"),
    ],
    "metric_snapshots": [(T0, "acme", "nps", "24h", 41.5, 200, "0,1"),
                         (T0 + 60, "acme", "csat", "1h", 80.0, 18_446_744_073_709_551_615, "0,1,2,3")],
    "complaints": [
        ("k1", "acme", "c1", "high", "billing", "phone", "resolved", T0, T0 + 600, T0 + 3600, 1, T0 * 1000 + 3_600_000,
         T0 * 1000, T0 * 1000 + 600_000, T0 * 1000 + 3_600_000, 0, 1, T0 * 1000 + 3_600_000, 2, 0,
         [18_446_744_073_709_551_615, 7], ["opened", "resolved"], [T0 * 1000, T0 * 1000 + 3_600_000]),
        ("k2", "acme", "c2", "normal", None, None, "opened", T0, None, None, 0, T0 * 1000,
         T0 * 1000, None, None, 1, 0, T0 * 1000, 0, 0, [], [], []),
    ],
    "actions": [
        ("3f2a", "complaint_sla_breach", "acme", "c1", "first response SLA breached", ["complaint_id", "stage"],
         ["k1", "first_response"], T0, T0 * 1000, T0 + 3600, T0 * 1000 + 3_600_000, 2),
    ],
    "funnel_progress": [
        ("purchase", "acme", "c1", T0, T0 * 1000 + 1, 3, [T0 * 1000 + 1, T0 * 1000 + 5000, T0 * 1000 + 9000, 0], T0 * 1000 + 9000, 2),
        ("purchase", "acme", "c2", T0 + 5, T0 * 1000 + 5000, 1, [T0 * 1000 + 5000, 0, 0, 0], T0 * 1000 + 5000, 0),
    ],
    "churn_signals": [
        ("c1", "acme", 0.8125, "high", ["inactivity", "detractor"], T0, T0 * 1000 + 1, "medium", 3, 2, T0 * 1000 - 60_000),
        ("c2", "acme", 0.0, "low", [], T0 + 1, T0 * 1000 + 2, "high", 0, 7, T0 * 1000 + 2),
    ],
    "churn_evidence": [
        ("acme", "c1", "complaint_opened", "k1", T0 * 1000, "", 3),
        ("acme", "c1", "sla_breach", "k1|first_response", T0 * 1000 + 600_000, "high|first_response|3600000", 3),
    ],
    "orders": [  # 2**53 - 1 minor units: the largest amount kept, exact
        ("acme", "c1", "o-1", "c1", T0, T0 * 1000 + 7, "EUR", 1999, 2, "e1", T0 * 1000 + 7, 3),
        ("acme", "anon-7", "o-2", None, T0 + 1, T0 * 1000 + 1001, "JPY", 9_007_199_254_740_991, 0, "e2", T0 * 1000 + 1001, 0),
    ],
    "carts": [
        ("acme", "c1", "c1", T0 * 1000, T0 * 1000 + 86_400_000, "converted", T0 * 1000 + 60_000, T0 * 1000 + 60_000, 3),
        ("acme", "anon-7", None, T0 * 1000, T0 * 1000 + 86_400_000, "open", None, T0 * 1000, 0),
    ],
    "customer_firsts": [
        ("acme", "c1", T0 * 1000, T0 * 1000, T0 * 1000 + 60_000, 60_000, T0 * 1000 + 60_000, T0 * 1000 + 60_000, 3),
        ("acme", "c2", T0 * 1000 + 5, None, None, None, T0 * 1000 + 5, T0 * 1000 + 5, 1),
    ],
}


def event_rows(n: int) -> list[tuple]:
    return [(f"e{i}", "web", ("page_view", "search", "purchase")[i % 3], T0 + i, (T0 + i) * 1000, ("acme", "globex")[i % 2],
             None if i % 5 == 0 else f"c{i % 17}", f"a{i}" if i % 5 == 0 else None, None, ["region"], ["eu"], i % 4, i,
             id_hash(f"e{i}"))
            for i in range(n)]


def count(backend, table: str) -> int:
    return backend.query(f"SELECT count() FROM {backend.database}.{table} FINAL")[0][0]


def test_ddl_creates_every_table_with_the_contract_columns(any_backend):
    db = any_backend.database
    assert {r[0] for r in any_backend.query(f"SELECT name FROM system.tables WHERE database = '{db}'")} == set(TABLES)
    for table in TABLES.values():
        assert [tuple(r[:2]) for r in any_backend.query(f"DESCRIBE TABLE {db}.{table.name}")] == list(table.columns)
    any_backend.create_tables()  # idempotent


def test_a_table_from_an_older_version_is_refused_with_the_alter_that_fixes_it(any_backend):
    """metric_snapshots as it was before the partitions column: the DDL (IF NOT EXISTS) leaves it alone,
    so the start is refused with the statement to run, and that statement makes it current."""
    db = any_backend.database
    columns = ", ".join(f"`{name}` {kind}" for name, kind in TABLES["metric_snapshots"].columns if name != "partitions")
    any_backend.execute(f"DROP TABLE {db}.metric_snapshots")
    any_backend.execute(f"CREATE TABLE {db}.metric_snapshots ({columns}) ENGINE = ReplacingMergeTree() "
                        "PARTITION BY toYYYYMM(ts) ORDER BY (tenant, metric, `window`, ts)")
    with pytest.raises(OutdatedTables) as refused:
        any_backend.create_tables()
    fixes = [line.strip().rstrip(";") for line in str(refused.value).splitlines() if line.strip().startswith("ALTER")]
    assert fixes == [f"ALTER TABLE {db}.metric_snapshots ADD COLUMN `partitions` String"]
    for fix in fixes:
        any_backend.execute(fix)
    any_backend.create_tables()
    assert [tuple(r[:2]) for r in any_backend.query(f"DESCRIBE TABLE {db}.metric_snapshots")] == \
        list(TABLES["metric_snapshots"].columns)


@pytest.mark.parametrize("table", list(SAMPLES))
def test_rows_read_back_exactly(any_backend, table):
    ClickHouseSink(any_backend).insert(table, SAMPLES[table])

    zone = ZoneInfo(any_backend.query("SELECT timezone()")[0][0])  # naive datetimes come in the engine's zone
    kinds = dict(TABLES[table].columns)

    def expected(name, value):
        if value is not None and "DateTime" in kinds[name]:
            return datetime.fromtimestamp(value, zone).replace(tzinfo=None)
        return value.decode() if isinstance(value, bytes) else value

    want = [tuple(expected(n, v) for n, v in zip(COLUMNS[table], row)) for row in SAMPLES[table]]
    names = ", ".join(f"`{c}`" for c in COLUMNS[table])
    got = any_backend.query(f"SELECT {names} FROM {any_backend.database}.{table}")
    assert sorted(got, key=repr) == sorted(want, key=repr)


def test_dead_letter_payload_keeps_its_bytes(any_backend):
    payload = b"\x00\x00\x00\x00\x01\xff\xfenot-utf8"
    ClickHouseSink(any_backend).insert(
        "dead_letters", [(T0, T0 * 1000, "cx.events.web", 1, 7, -1, "undecodable", "bad magic", None, payload)])
    assert any_backend.query(f"SELECT hex(payload) FROM {any_backend.database}.dead_letters") == [(payload.hex().upper(),)]


def test_replay_does_not_double_documented_counts(any_backend):
    """Rows written again after a crash between flush and offset commit, and an older complaint state
    replayed after a newer one: the documented queries give what plain Python computes once."""
    db, sink = any_backend.database, ClickHouseSink(any_backend)
    events = event_rows(300)
    surveys = [(f"s{i}", T0 + i, (T0 + i) * 1000, ("acme", "globex")[i % 2], f"c{i}", "web", "NPS", i % 11, None, None, 0,
                id_hash(f"s{i}"), [], []) for i in range(120)]
    newer = SAMPLES["complaints"][0]
    older = newer[:6] + ("opened", T0, None, None, 0, T0 * 1000) + newer[12:]
    for replay in (events, events[100:200], events):  # whole batches and a partial overlap
        sink.insert("survey_responses", surveys)
        sink.insert("events", replay)
    for state in (newer, older, newer, older):
        sink.insert("complaints", [state])

    by_type = Counter((r[5], r[2]) for r in {r[0]: r for r in events}.values())
    got = any_backend.query(f"SELECT tenant, event_type, count() FROM {db}.events FINAL GROUP BY tenant, event_type")
    assert {(t, e): n for t, e, n in got} == by_type
    assert any_backend.query(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0] == len(events)
    assert count(any_backend, "events") == len(events)

    expected_nps = {}
    for tenant in ("acme", "globex"):
        scores = [r[7] for r in surveys if r[3] == tenant]
        expected_nps[tenant] = 100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)
    got = any_backend.query(f"SELECT tenant, 100 * (countIf(score >= 9) - countIf(score <= 6)) / count() "
                            f"FROM {db}.survey_responses FINAL WHERE kind = 'NPS' GROUP BY tenant")
    assert dict(got) == pytest.approx(expected_nps)

    assert any_backend.query(f"SELECT complaint_id, status, reopen_count FROM {db}.complaints FINAL") == [("k1", "resolved", 1)]


def _settled_complaint(cid: str, last_ms: int) -> tuple:
    return ROWS["complaints"](*SAMPLES["complaints"][0])._replace(complaint_id=cid, last_event_ms=last_ms)  # resolved


def _ended_conversation(cid: str, last_ms: int) -> tuple:
    return ROWS["chatbot_conversations"](tenant="acme", conversation_id=cid, customer_id="c1", handoff_ms=None,
                                         resolved_ms=last_ms, abandoned_ms=None, ended_ms=last_ms, outcome="contained",
                                         last_event_ms=last_ms, updated_ms=last_ms, kafka_partition=2)


def _decided_cart(buyer: str, deadline_ms: int) -> tuple:
    return ROWS["carts"](tenant="acme", buyer=buyer, customer_id=buyer, started_ms=deadline_ms - 86_400_000,
                         deadline_ms=deadline_ms, outcome="abandoned", ended_ms=deadline_ms, updated_ms=deadline_ms,
                         kafka_partition=2)


def _superseded_subscription_event(event_id: str, event_ms: int) -> tuple:
    return ROWS["subscriptions"](tenant="acme", customer_id="c1", event_id=event_id, event_type="subscription_renewed",
                                 event_time=event_ms // 1000, event_ms=event_ms, plan="pro", mrr_minor=1999,
                                 mrr_before_minor=1999, held=0, updated_ms=event_ms, kafka_partition=2)


def _order(order_id: str, order_ms: int) -> tuple:
    return ROWS["orders"](tenant="acme", buyer="c1", order_id=order_id, customer_id="c1", order_time=order_ms // 1000,
                          order_ms=order_ms, currency="EUR", amount_minor=1999, minor_unit=2, event_id=f"e-{order_id}",
                          updated_ms=order_ms, kafka_partition=2)


@pytest.mark.parametrize("source, table, restore_name, key, row, core", [
    ("complaints", "complaints", "settled", "complaint_id", _settled_complaint, lambda day: ComplaintCore({}, 7 * day)),
    ("chatbot", "chatbot_conversations", "conversations", "conversation_id", _ended_conversation,
     lambda day: ChatbotCore({"24h": day}, 7 * day)),
    ("web", "carts", "carts", "buyer", _decided_cart, lambda day: CartCore({"24h": day}, day, 7 * day)),
    ("crm", "subscriptions", "recent", "event_id", _superseded_subscription_event,
     lambda day: SubscriptionCore({"1d": day}, 20, 7 * day)),
    ("web", "orders", "orders", "order_id", _order, lambda day: OrdersCore({"1d": day}, ("1d", day), 20, 7 * day)),
], ids=["complaints", "chatbot", "carts", "subscriptions", "orders"])
def test_forgettable_state_is_restored_by_its_sources_own_clock(any_backend, source, table, restore_name, key, row,
                                                                core):
    """A partition whose events of another source are ten days ahead of this source's: an entity whose last
    event is a day after the source's newest event time minus what the core keeps may still get a valid
    event, so a restart reads it back; one older than that can get none and is not read."""
    day, partition, sink = 86_400_000, 2, ClickHouseSink(any_backend)
    start, ahead = T0 * 1000, "web" if source == "crm" else "crm"
    sink.insert("events", [ROWS["events"](
        event_id=f"e-{name}", source=name, event_type=kind, event_time=ms // 1000, event_ms=ms, tenant="acme",
        customer_id="c1", anonymous_id=None, session_id=None, attr_keys=[], attr_values=[], kafka_partition=partition,
        kafka_offset=0, id_hash=id_hash(f"e-{name}"))
        for name, kind, ms in ((ahead, "note", start + 10 * day), (source, "resolved", start + 2 * day))])
    sink.insert(table, [row(cid, last) for cid, last in (("recent", start + day), ("old", start - 6 * day))])
    restored = read_partitions(any_backend, [partition], [core(day)], 60_000)
    rows = restored.core_rows[0][restore_name]
    assert [getattr(r, key) for r in rows.get(partition, [])] == ["recent"]


def test_one_attempt_and_a_clear_error(any_backend):
    """The sink makes one attempt; retrying is the delivery path's (tests/integration/test_delivery.py)."""
    any_backend.execute(f"DROP TABLE {any_backend.database}.survey_responses")
    with pytest.raises(SinkError, match=rf"insert of 1 rows into {any_backend.database}\.survey_responses failed"):
        ClickHouseSink(any_backend).insert("survey_responses", [SAMPLES["survey_responses"][0]])


def test_insert_rejects_unknown_tables_and_rows_of_the_wrong_width(chdb_backend):
    sink = ClickHouseSink(chdb_backend)
    with pytest.raises(KeyError, match="unknown table 'event'"):
        sink.insert("event", [])
    with pytest.raises(ValueError, match="events rows have 14 columns"):
        sink.insert("events", event_rows(2) + [("e9", "web")])
    assert count(chdb_backend, "events") == 0


def test_server_url_names_the_database_and_carries_settings(clickhouse_url):
    backend = open_backend(clickhouse_url + "?max_threads=3&send_receive_timeout=7", data_dir=None)
    try:
        assert backend.database == clickhouse_url.rsplit("/", 1)[1]
        assert backend.query("SELECT value FROM system.settings WHERE name = 'max_threads'") == [("3",)]
        assert backend.client.connection.send_receive_timeout == 7
    finally:
        backend.close()


def test_embedded_default_persists_in_the_data_folder(tmp_path):
    backend = open_backend(None, tmp_path)
    assert isinstance(backend, ChdbBackend) and (tmp_path / "clickhouse").is_dir()
    ClickHouseSink(backend).insert("events", event_rows(5))
    backend.close()
    backend = open_backend(None, tmp_path)  # one process may hold a folder at a time: reopened after close
    try:
        assert count(backend, "events") == 5
    finally:
        backend.close()
