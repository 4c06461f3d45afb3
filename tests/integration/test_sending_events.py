"""docs/sending-events.md, run as a reader would: its curl calls (bash) and its Python SDK code (python -c),
copied from the page itself, against a real `cxp worker` with a collector token on a Tansu broker and a
ClickHouse 18.16 server. Only the host, port, broker address and topic prefix are substituted. The
answers must be the ones the page prints, the events must reach ClickHouse, a retry of the same event
must be a duplicate, and the page's table of answers must be what the collector says (the 500 and 503
rows excepted: those need a bug or a broker outage, which tests/integration/test_collector_http.py
produces for the 503)."""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agents.web_security import too_many
from runtime.local.metrics import total
from sinks.clickhouse.backend import NativeBackend
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sending-events.md"
# A fenced block right after an HTML comment naming it: <!-- test: NAME -->
MARKED = re.compile(r"^<!-- test: ([\w-]+) -->\n```[\w]*\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
TABLE_ROW = re.compile(r"^\| (\d{3}) \| .* \| `(\{.*\})` \|$", re.MULTILINE)
TOKEN = f"tok-{uuid.uuid4().hex}"


def snippets() -> dict[str, str]:
    found = dict(MARKED.findall(PAGE.read_text()))
    assert {"curl-one-event", "curl-batch", "curl-no-token", "curl-invalid", "python-sdk"} <= set(found)
    return found


def page_answers() -> dict[int, dict]:
    """Status -> the JSON body of that row of the page's table of answers."""
    return {int(status): json.loads(body) for status, body in TABLE_ROW.findall(PAGE.read_text())}


@pytest.fixture(scope="module")
def database(clickhouse_server):
    return clickhouse_server.url(f"cx_sending_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def worker(broker, database, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sending-events")
    prefix = f"s{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, data_dir, database, CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"cxp-send-{prefix}",
                     CXP_COLLECTOR_TOKENS=TOKEN, CXP_TENANTS="acme,globex")
    running = WorkerProcess(env, data_dir / "worker.log").start()
    running.prefix, running.broker = prefix, broker.bootstrap_servers
    yield running
    running.stop()


@pytest.fixture(scope="module")
def clickhouse(database):
    backend = NativeBackend(database)
    yield backend
    backend.close()


def for_this_worker(code: str, worker: WorkerProcess) -> str:
    """The page's code with this worker's addresses and topic prefix in place of the page's defaults."""
    replaced = (code.replace("localhost:6066", f"127.0.0.1:{worker.web_port}")
                .replace("localhost:9092", worker.broker).replace('topic_prefix="cx."', f'topic_prefix="{worker.prefix}"'))
    assert replaced != code, "the snippet names no address to substitute"
    return replaced


def run_curl(name: str, worker: WorkerProcess) -> list[str]:
    result = subprocess.run(["bash", "-c", for_this_worker(snippets()[name], worker)], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "CXP_COLLECTOR_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def assert_answer_as_printed(name: str, lines: list[str]) -> None:
    """Body (as JSON) and status line equal to the page's answer block for ``name``."""
    printed = snippets()[f"{name}-answer"].splitlines()
    assert len(lines) == len(printed) == 2, lines
    assert json.loads(lines[0]) == json.loads(printed[0]) and lines[1] == printed[1]


def rows(clickhouse: NativeBackend, sql: str, expected: int, timeout_s: float = 60.0) -> list[tuple]:
    deadline = time.monotonic() + timeout_s
    while len(found := clickhouse.query(sql)) != expected:
        assert time.monotonic() < deadline, f"{sql}: {found}"
        time.sleep(0.3)
    return found


@pytest.fixture(scope="module")
def curl_answers(worker):
    """Every curl call of the page, once, in page order: name -> output lines; and "sent_ms", the wall clock
    before and after them."""
    before = int(time.time() * 1000)
    answers = {name: run_curl(name, worker) for name in ("curl-one-event", "curl-batch", "curl-no-token", "curl-invalid")}
    return {**answers, "sent_ms": (before, int(time.time() * 1000))}


def test_the_curl_calls_answer_what_the_page_prints(curl_answers):
    for name in ("curl-one-event", "curl-batch", "curl-no-token", "curl-invalid"):
        assert_answer_as_printed(name, curl_answers[name])


def test_the_accepted_events_arrive_and_the_refused_ones_do_not(curl_answers, clickhouse, worker):
    db = clickhouse.database
    found = rows(clickhouse, f"SELECT event_id, source, event_type, tenant, customer_id, event_ms FROM {db}.events FINAL "
                             "WHERE event_id IN ('web-9f2c41d7-purchase', 'crm-nps-7731', 'crm-sub-7732') "
                             "ORDER BY event_id", 3)
    assert [row[:5] for row in found] == [
        ("crm-nps-7731", "crm", "survey_response", "acme", "cust-000042"),
        ("crm-sub-7732", "crm", "subscription_downgraded", "acme", "cust-000042"),
        ("web-9f2c41d7-purchase", "web", "purchase", "acme", "cust-000042"),
    ]
    # The ISO-8601 event_time of the first call (`date -u`, whole seconds) became epoch milliseconds.
    sent_from, sent_to = curl_answers["sent_ms"]
    assert sent_from // 1000 * 1000 <= found[2][5] <= sent_to and found[2][5] % 1000 == 0
    assert rows(clickhouse, f"SELECT score FROM {db}.survey_responses FINAL WHERE event_id = 'crm-nps-7731'", 1) == [(4,)]
    # The 422 request accepted nothing, its valid event included.
    assert clickhouse.query(f"SELECT count() FROM {db}.events WHERE event_id IN ('crm-nps-7740', 'crm-nps-7741')") == [(0,)]
    assert total(worker.metrics(), "cxp_events_rejected_total") == 0


def test_a_retry_with_the_same_event_id_is_a_duplicate(curl_answers, clickhouse, worker):
    rows(clickhouse, f"SELECT 1 FROM {clickhouse.database}.events WHERE event_id = 'web-9f2c41d7-purchase'", 1)
    before = worker.metrics()
    assert_answer_as_printed("curl-one-event", run_curl("curl-one-event", worker))  # the same event, sent again
    after = worker.wait_for(lambda s: total(s, "cxp_events_duplicate_total", source="web")
                            == total(before, "cxp_events_duplicate_total", source="web") + 1, what="the duplicate")
    assert total(after, "cxp_events_processed_total") == total(before, "cxp_events_processed_total")
    assert clickhouse.query(f"SELECT count() FROM {clickhouse.database}.events "
                            "WHERE event_id = 'web-9f2c41d7-purchase'") == [(1,)]


def test_the_python_sdk_code_sends_events_that_arrive(worker, clickhouse):
    result = subprocess.run([sys.executable, "-c", for_this_worker(snippets()["python-sdk"], worker)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Kafka acknowledged 2 events in 2 messages"
    db = clickhouse.database
    assert rows(clickhouse, f"SELECT tenant, customer_id, score FROM {db}.survey_responses FINAL "
                            "WHERE comment = 'sorted in minutes'", 1) == [("acme", "cust-000042", 10)]
    assert rows(clickhouse, f"SELECT source, event_type, customer_id FROM {db}.events FINAL "
                            "WHERE anonymous_id = 'anon-8d1e'", 1) == [("web", "page_view", None)]


def post(worker: WorkerProcess, path: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", worker.web_port, timeout=60)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_table_of_answers_is_what_the_collector_says(worker, curl_answers):
    table = page_answers()
    assert set(table) == {202, 400, 401, 404, 413, 422, 429, 503, 500}
    assert table[202] == json.loads(curl_answers["curl-batch"][0])
    assert table[422] == json.loads(curl_answers["curl-invalid"][0])
    assert post(worker, "/v1/events/web", b"") == (400, table[400])
    assert post(worker, "/v1/events/web", b"{}", token=None) == (401, table[401])
    assert post(worker, "/v1/events/fax", b"{}") == (404, table[404])
    assert post(worker, "/v1/events/web", b" " * 2_000_000) == (413, table[413])
    assert json.loads(too_many(1, "requests").body) == table[429]  # the 429 the rate limiter answers, same shape
    # The workers' CXP_TENANTS applies here too: a tenant outside it is named in a 422.
    event = {"event_id": "web-typo-1", "event_type": "login", "event_time": int(time.time() * 1000),
             "tenant": "acme-eu", "customer_id": "cust-000042"}
    status, body = post(worker, "/v1/events/web", json.dumps(event).encode())
    assert status == 422 and body["details"] == [
        {"index": 0, "reason": "unknown_tenant", "error": "tenant 'acme-eu' is not in CXP_TENANTS (acme, globex)"}]
