"""The ClickHouse sink on both backends: the real 18.16 server and embedded chdb."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.ddl import COLUMNS, TABLES
from sinks.clickhouse.sink import ClickHouseSink, SinkError
from sinks.prometheus import SINK_ERRORS, SINK_ROWS

pytestmark = pytest.mark.integration


def event_rows(n: int, offset: int = 0) -> list[tuple]:
    return [(f"e{i}", "web", "page_view", 1_700_000_000 + i, 1_700_000_000_000 + i * 1000, "acme",
             None if i % 3 == 0 else f"c{i}", "anon" if i % 3 == 0 else None, None,
             ["region", "plan"], ["eu", "pro"], i % 4, offset + i) for i in range(n)]


def test_ddl_creates_every_table(any_backend):
    tables = {row[0] for row in any_backend.query(f"SELECT name FROM system.tables WHERE database = '{any_backend.database}'")}
    assert tables == set(TABLES)
    any_backend.create_tables()  # idempotent


def test_rows_read_back_exactly(any_backend):
    sink = ClickHouseSink(any_backend)
    rows = event_rows(500)
    sink.add("events", rows)
    assert sink.pending() == 500
    assert sink.flush() == {"events": 500} and sink.pending() == 0
    got = any_backend.query(f"SELECT {', '.join(f'`{c}`' for c in COLUMNS['events'][:1] + COLUMNS['events'][3:])}, "
                            f"toUnixTimestamp(event_time) FROM {any_backend.database}.events ORDER BY kafka_offset")
    assert len(got) == 500
    for row, back in zip(rows, got):
        assert back[0] == row[0] and back[-1] == row[3]
        assert back[2] == row[4] and back[3] == row[5] and back[4] == row[6] and back[5] == row[7]
        assert list(back[7]) == row[9] and list(back[8]) == row[10] and back[9] == row[11] and back[10] == row[12]


def test_dead_letter_payload_keeps_bytes(any_backend):
    sink = ClickHouseSink(any_backend)
    payload = b"\x00\x00\x00\x00\x01\xffnot-utf8"
    sink.add("dead_letters", [(1_700_000_000, 1_700_000_000_000, "cx.events.web", 1, 7, -1, "undecodable",
                               "bad magic", None, payload)])
    sink.flush()
    got = any_backend.query(f"SELECT hex(payload), reason FROM {any_backend.database}.dead_letters")
    assert got == [(payload.hex().upper(), "undecodable")]


def test_replay_does_not_double_documented_counts(any_backend):
    sink = ClickHouseSink(any_backend)
    rows = event_rows(300)
    for _ in range(2):  # the same rows written twice, as after a crash between flush and commit
        sink.add("events", rows)
        sink.flush()
    db = any_backend.database
    assert any_backend.query(f"SELECT count() FROM {db}.events FINAL")[0][0] == len(rows)
    assert any_backend.query(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0] == len(rows)
    expected_customers = len({r[6] for r in rows if r[6] is not None})
    assert any_backend.query(f"SELECT uniqExact(customer_id) FROM {db}.events FINAL")[0][0] == expected_customers


def test_retries_until_the_server_answers_again(clickhouse_server, clickhouse_url):
    backend = NativeBackend(clickhouse_url)
    backend.create_tables()
    sink = ClickHouseSink(backend, max_retries=8, retry_backoff_s=0.1)
    errors_before = SINK_ERRORS.labels("events")._value.get()
    rows_before = SINK_ROWS.labels("events")._value.get()
    backend.client.disconnect()
    os.kill(clickhouse_server.pid, signal.SIGSTOP)  # the server stops answering
    threading.Timer(1.0, os.kill, (clickhouse_server.pid, signal.SIGCONT)).start()
    backend.client.connection.send_receive_timeout = 0.5
    backend.client.connection.connect_timeout = 0.5
    sink.add("events", event_rows(100))
    try:
        sink.flush()
    finally:
        os.kill(clickhouse_server.pid, signal.SIGCONT)
    assert SINK_ERRORS.labels("events")._value.get() > errors_before
    assert SINK_ROWS.labels("events")._value.get() == rows_before + 100
    backend.client.connection.send_receive_timeout = 30
    assert backend.query(f"SELECT count() FROM {backend.database}.events FINAL")[0][0] == 100


def test_rows_are_kept_when_retries_run_out(clickhouse_url):
    backend = NativeBackend(clickhouse_url)
    backend.create_tables()
    backend.execute(f"DROP TABLE {backend.database}.survey_responses")
    sink = ClickHouseSink(backend, max_retries=2, retry_backoff_s=0.01)
    rows = [("s1", 1_700_000_000, 1_700_000_000_000, "acme", "c1", "web", "NPS", 9, None, None, 0)]
    sink.add("survey_responses", rows)
    with pytest.raises(SinkError, match="survey_responses failed 3 times"):
        sink.flush()
    assert sink.pending() == 1  # nothing lost
    backend.create_tables()  # the table is back: the same rows now go through
    time.sleep(0.1)
    assert sink.flush() == {"survey_responses": 1}
    assert backend.query(f"SELECT event_id, score FROM {backend.database}.survey_responses") == [("s1", 9)]
