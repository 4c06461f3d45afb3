"""Security of a real worker: collector tokens (missing, wrong, two at once, one revoked by a restart),
the /metrics token, the per-client rate limit, secrets kept out of the start-up log, and SQL-looking
input in every free-text field stored verbatim in ClickHouse 18.16."""
from __future__ import annotations

import http.client
import json
import time
import uuid

import pytest
from clickhouse_driver.errors import ServerException

from pipeline.secret_values import clickhouse_security
from pipeline.settings import Settings
from sinks.clickhouse.backend import NativeBackend
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration
METRICS_TOKEN = "metrics-token-5d1f"
SASL_PASSWORD = "sasl-password-77ab"  # set but unused (PLAINTEXT): it must still never be logged
HOSTILE = ["'; DROP TABLE cx.events; --", "`events`; DROP DATABASE cx; --`", "\\'; SELECT 1; --\\",
           "it's \"quoted\" \\ and \\\\ escaped", "%(tenant)s {db} ${x} ? :name", "tab\tnew\nline\r\x00nul",
           "Robert'); DROP TABLE students;--  ☃ 𝄞", "*/ /* -- #"]


def post(port: int, source: str, payload, token: str | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a POST to the collector."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", f"/v1/events/{source}", body=json.dumps(payload), headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def get_metrics_status(port: int, token: str | None, path: str = "/metrics") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        return connection.getresponse().status
    finally:
        connection.close()


def answered(worker: WorkerProcess, code: str) -> float:
    return sum(value for labels, value in worker.metrics().get("cxp_collector_requests_total", [])
               if labels["code"] == code)


def login(customer: str = "c1") -> dict:
    return {"event_id": uuid.uuid4().hex, "event_type": "login", "event_time": int(time.time() * 1000),
            "tenant": "acme", "customer_id": customer}


@pytest.fixture(scope="module")
def guarded(broker, clickhouse_server, tmp_path_factory):
    """A worker with two collector tokens from a file, a metrics token and 3 requests/s per client."""
    data_dir = tmp_path_factory.mktemp("guarded-worker")
    tokens = data_dir / "collector-tokens"
    tokens.write_text("# one per line\ntoken-alpha-9c2e\ntoken-beta-41d0\n")
    prefix = f"s{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, data_dir, clickhouse_server.url(f"cx_sec_{uuid.uuid4().hex[:8]}"),
                     CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"cxp-sec-{prefix}", CXP_COLLECTOR_TOKENS_FILE=str(tokens),
                     CXP_METRICS_TOKEN=METRICS_TOKEN, CXP_COLLECTOR_RATE_LIMIT_REQUESTS="3",
                     CXP_KAFKA_SASL_USERNAME="cx", CXP_KAFKA_SASL_PASSWORD=SASL_PASSWORD)
    running = WorkerProcess(env, data_dir / "worker.log").start()
    running.tokens_file = tokens
    yield running
    running.stop()


def test_collector_needs_a_token_and_both_rotated_tokens_work(guarded):
    port = guarded.web_port
    before = answered(guarded, "401")
    status, headers, body = post(port, "web", login())
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "token" in body["error"]
    status, headers, _ = post(port, "web", login(), token="token-alpha-9c2e-wrong")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert post(port, "web", login(), token=METRICS_TOKEN)[0] == 401  # the metrics token is not a collector token
    assert post(port, "web", login(), token="token-alpha-9c2e")[0] == 202
    assert post(port, "web", login(), token="token-beta-41d0")[0] == 202
    assert answered(guarded, "401") - before == 3


@pytest.mark.parametrize("path", ["/metrics", "/progress"])
def test_metrics_and_progress_need_the_metrics_token(guarded, path):
    assert get_metrics_status(guarded.web_port, None, path) == 401
    assert get_metrics_status(guarded.web_port, "token-alpha-9c2e", path) == 401
    assert get_metrics_status(guarded.web_port, METRICS_TOKEN, path) == 200


def test_rate_limit_answers_429_with_retry_after_then_recovers(guarded):
    before = answered(guarded, "429")
    answers = [post(guarded.web_port, "web", login(), token="token-beta-41d0") for _ in range(40)]
    refused = [(headers, body) for status, headers, body in answers if status == 429]
    assert refused, [status for status, _, _ in answers]
    assert {status for status, _, _ in answers} <= {202, 429}
    headers, body = refused[0]
    retry_after = int(headers["Retry-After"])
    assert retry_after >= 1 and body["retry_after"] == retry_after and "rate limit" in body["error"]
    assert answered(guarded, "429") - before == len(refused)
    time.sleep(retry_after)
    assert post(guarded.web_port, "web", login(), token="token-beta-41d0")[0] == 202


def test_start_up_log_has_the_settings_but_no_secret(guarded):
    log = guarded.log_path.read_text(errors="replace")
    settings_lines = [json.loads(line) for line in log.splitlines() if '"worker settings"' in line]
    assert settings_lines and settings_lines[0]["settings"]["CXP_METRICS_TOKEN"] == "***"
    assert settings_lines[0]["settings"]["CXP_KAFKA_SASL_PASSWORD"] == "***"
    for secret in (METRICS_TOKEN, SASL_PASSWORD, "token-alpha-9c2e", "token-beta-41d0"):
        assert secret not in log


def test_a_token_removed_from_the_file_stops_working_after_restart(guarded):
    guarded.stop()
    guarded.tokens_file.write_text("token-beta-41d0\n")
    guarded.start()
    assert post(guarded.web_port, "web", login(), token="token-alpha-9c2e")[0] == 401
    assert post(guarded.web_port, "web", login(), token="token-beta-41d0")[0] == 202


def hostile_events(now_ms: int) -> tuple[list[dict], list[dict]]:
    """Web events (every other one with a survey) and complaints with SQL-looking text in every free-text
    field. Complaint-specific columns are not checked here: no core of this branch writes them yet."""
    web, complaints = [], []
    for i, text in enumerate(HOSTILE):
        web.append({"event_id": f"{i}{text}", "event_type": "survey_response" if i % 2 else "page_view",
                    "event_time": now_ms + i, "tenant": text, "customer_id": f"c{i}{text}", "session_id": text,
                    "anonymous_id": text[::-1], "url": text, "attributes": {text: text[::-1], "plan": text},
                    "survey": {"kind": "NPS", "score": i, "comment": text, "touchpoint": text[::-1]} if i % 2 else None})
        complaints.append({"event_id": f"k{i}{text}", "event_type": "opened", "event_time": now_ms + i,
                           "tenant": text, "customer_id": f"c{i}{text}", "complaint_id": f"{i}{text}",
                           "priority": "high", "category": text, "agent_id": text})
    return web, complaints


def test_sql_looking_input_is_stored_verbatim(broker, clickhouse_server, tmp_path):
    """Through the collector of a worker bound to all interfaces without tokens (it warns), into ClickHouse."""
    database = f"cx_sql_{uuid.uuid4().hex[:8]}"
    prefix = f"q{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, tmp_path, clickhouse_server.url(database), CXP_TOPIC_PREFIX=prefix,
                     CXP_APP_ID=f"cxp-sql-{prefix}", CXP_WEB_HOST="0.0.0.0")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        web, complaints = hostile_events(int(time.time() * 1000))
        assert post(worker.web_port, "web", {"events": web})[0] == 202
        assert post(worker.web_port, "complaints", {"events": complaints})[0] == 202
        clickhouse = NativeBackend(clickhouse_server.url(database))
        deadline = time.monotonic() + 90
        while clickhouse.query(f"SELECT count() FROM {database}.events FINAL")[0][0] < len(web) + len(complaints):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        warnings = [json.loads(line) for line in worker.log_path.read_text().splitlines()
                    if line.startswith("{") and "no collector token is set" in line]
    finally:
        worker.stop()

    assert warnings and warnings[0]["level"] == "warning" and "0.0.0.0" in warnings[0]["msg"]
    stored = {row[0]: (*row[1:5], dict(zip(row[5], row[6]))) for row in clickhouse.query(
        f"SELECT event_id, tenant, customer_id, session_id, anonymous_id, attr_keys, attr_values "
        f"FROM {database}.events FINAL WHERE source = 'web'")}
    assert stored == {e["event_id"]: (e["tenant"], e["customer_id"], e["session_id"], e["anonymous_id"], e["attributes"])
                      for e in web}
    surveys = set(clickhouse.query(f"SELECT event_id, tenant, comment, touchpoint FROM {database}.survey_responses FINAL"))
    assert surveys == {(e["event_id"], e["tenant"], e["survey"]["comment"], e["survey"]["touchpoint"])
                       for e in web if e["survey"]}
    opened = set(clickhouse.query(f"SELECT event_id, tenant, customer_id FROM {database}.events FINAL "
                                  "WHERE source = 'complaints'"))
    assert opened == {(e["event_id"], e["tenant"], e["customer_id"]) for e in complaints}
    tables = {name for name, in clickhouse.query(f"SELECT name FROM system.tables WHERE database = '{database}'")}
    assert {"events", "survey_responses", "complaints", "dead_letters"} <= tables
    clickhouse.close()


def test_the_clickhouse_password_file_is_what_the_server_checks(clickhouse_url, tmp_path):
    """The test server's default user has no password: the URL alone connects, and a password from
    the file, which overrides the URL's, is sent and refused."""
    assert NativeBackend(clickhouse_url).query("SELECT 1") == [(1,)]
    secret = tmp_path / "clickhouse-password"
    secret.write_text("not-the-password\n")
    options = clickhouse_security(Settings(clickhouse_url=clickhouse_url, clickhouse_password_file=secret).clickhouse)
    with pytest.raises(ServerException, match="(?i)password"):
        NativeBackend(clickhouse_url, **options).query("SELECT 1")
