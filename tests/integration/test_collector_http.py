"""The HTTP collector of a real worker under hostile input: every answer a 2xx or 4xx with a JSON body,
every answer counted in cxp_collector_requests_total, and big requests split into messages that the
broker takes and the worker writes to ClickHouse."""
from __future__ import annotations

import http.client
import json
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from runtime.local.broker import LocalBroker
from pipeline.partitioner import partition_for
from pipeline.registry import SOURCES, BundledRegistry
from pipeline.wire import Codec
from sinks.clickhouse.backend import NativeBackend
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration
CODEC = Codec(BundledRegistry())
PARTITIONS = 4
MIB = 1_048_576


def post(port: int, path: str, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    """Raw bytes to the worker: (status, JSON body). Chunked bodies carry no Content-Length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            connection.request("POST", path, body=iter([body[i:i + 65_536] for i in range(0, len(body), 65_536)]),
                               headers={"Content-Type": "application/json"}, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read()
        try:
            return response.status, json.loads(text)
        except ValueError:
            raise AssertionError(f"a {response.status} answer that is not JSON: {text[:300]!r}") from None
    finally:
        connection.close()


def answered(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    return {(labels["source"], labels["code"]): value
            for labels, value in worker.metrics().get("cxp_collector_requests_total", [])}


def count_delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


@pytest.fixture(scope="module")
def database(clickhouse_server):
    return clickhouse_server.url(f"cx_collector_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def worker(broker, database, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("collector-worker")
    prefix = f"h{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, data_dir, database, CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"cxp-http-{prefix}",
                     CXP_PARTITIONS=str(PARTITIONS))
    running = WorkerProcess(env, data_dir / "worker.log").start()
    running.prefix = prefix
    yield running
    running.stop()


def login(event_id: str, customer: str = "c1", **fields) -> dict:
    return {"event_id": event_id, "event_type": "login", "event_time": int(time.time() * 1000),
            "customer_id": customer, **fields}


def test_the_three_fault_cases_are_4xx_with_json_bodies(worker):
    before = answered(worker)
    status, body = post(worker.web_port, "/v1/events/web", b"[" * 10_000 + b"]" * 10_000)
    assert status == 400 and "too deeply" in body["error"]
    status, body = post(worker.web_port, "/v1/events/web",
                        json.dumps({"events": [login("ok-1"), login("bad-1", attributes={"plan": "\udc80"})]}).encode())
    assert status == 422 and [(d["index"], d["field"]) for d in body["details"]] == [(1, "attributes.plan")]
    status, body = post(worker.web_port, "/v1/events/web", json.dumps(login("bad-2", revenue=10 ** 400)).encode())
    assert status == 422 and body["details"][0]["field"] == "revenue"
    status, body = post(worker.web_port, "/v1/events/web", json.dumps(login("big", attributes={"x": "y" * 950_000})).encode())
    assert status == 422 and body["details"][0]["reason"] == "too_large"
    assert count_delta(before, answered(worker)) == {("web", "400"): 1, ("web", "422"): 3}


@pytest.fixture(scope="module")
def split_request(worker):
    """A body just under the 1 MiB cap, all for one customer, so one partition: as a single batch its
    Avro value would exceed the producer's 1,000,000-byte limit. Returns (events, status, answer)."""
    run = uuid.uuid4().hex[:8]
    events = [login(f"{run}-{i}", customer="c-split", attributes={"blob": "z" * 10_300}) for i in range(100)]
    body = json.dumps({"events": events}).encode()
    assert 1_000_000 < len(body) < MIB
    assert len(CODEC.encode_batch("web", [{**e, "tenant": "default"} for e in events])) > 1_000_000
    return events, *post(worker.web_port, "/v1/events/web", body)


def test_a_body_just_under_the_cap_is_split_into_messages_under_the_budget(worker, split_request):
    events, status, answer = split_request
    assert status == 202 and answer == {"accepted": 100, "messages": 2}
    ids = {e["event_id"] for e in events}
    consumer = KafkaConsumer(bootstrap_servers=worker.env["CXP_KAFKA_URL"].split("://")[1], enable_auto_commit=False,
                             fetch_max_wait_ms=50)
    consumer.assign([TopicPartition(f"{worker.prefix}events.web", partition_for(b"c-split", PARTITIONS))])
    consumer.seek_to_beginning()
    found, deadline = [], time.monotonic() + 60
    while len(found) < 100 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                decoded = [e["event_id"] for e in CODEC.decode(record.value).events if e["event_id"] in ids]
                assert not decoded or len(record.key) + len(record.value) <= 900_000
                found += decoded
    consumer.close()
    assert found == [e["event_id"] for e in events]  # all of them, once, in request order


def test_the_split_events_reach_clickhouse(split_request, database):
    events, status, _ = split_request
    assert status == 202
    clickhouse = NativeBackend(database)
    try:
        run = events[0]["event_id"].split("-")[0]
        query = f"SELECT count() FROM {clickhouse.database}.events FINAL WHERE startsWith(event_id, '{run}-')"
        deadline, rows = time.monotonic() + 60, 0
        while rows < len(events) and time.monotonic() < deadline:
            rows = clickhouse.query(query)[0][0]
            time.sleep(0.3)
        assert rows == len(events)
    finally:
        clickhouse.close()


def test_a_body_over_the_web_servers_cap_is_a_counted_json_413(worker):
    before = answered(worker)
    oversized = b'{"events": [' + b" " * MIB + b"]}"
    status, body = post(worker.web_port, "/v1/events/web", oversized, chunked=True)  # no Content-Length: aiohttp's 413
    assert status == 413 and "error" in body
    status, body = post(worker.web_port, "/v1/events/crm", oversized)  # Content-Length over the cap: the view's 413
    assert status == 413 and "error" in body
    status, body = post(worker.web_port, "/v1/events/no-such-source", b"{}")
    assert status == 404 and "error" in body
    assert count_delta(before, answered(worker)) == {("web", "413"): 1, ("crm", "413"): 1, ("unknown", "404"): 1}


strings = st.text(st.characters(exclude_categories=()), max_size=30) | st.sampled_from(["\udc80", "a\ud800b", "", "x" * 200])
numbers = st.integers(-(10 ** 30), 10 ** 30) | st.just(10 ** 400) | st.floats() | st.sampled_from([0, 1, -1, 2 ** 63])
json_values = st.recursive(st.none() | st.booleans() | numbers | strings,
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(strings, children, max_size=4),
                           max_leaves=12)
field_values = {
    "event_id": strings, "event_type": st.sampled_from(["login", "order_placed", "opened", "message_sent"]) | strings,
    "event_time": st.just(int(time.time() * 1000)) | st.just("2026-11-29T10:00:00Z") | numbers | strings,
    "customer_id": st.sampled_from(["c1", "c2"]) | strings, "conversation_id": strings, "complaint_id": strings,
    "priority": st.sampled_from(["low", "urgent"]) | strings, "attributes": st.dictionaries(strings, strings) | json_values,
    "survey": st.fixed_dictionaries({"kind": st.sampled_from(["NPS", "CSAT"]) | strings, "score": numbers}) | json_values,
    "revenue": numbers, "tenant": strings,
}
VALID = {  # one valid event per source, for the fuzz to mutate
    "web": {"event_type": "login", "customer_id": "c1"},
    "chatbot": {"event_type": "user_message", "customer_id": "c1", "conversation_id": "v1"},
    "crm": {"event_type": "subscription_started", "customer_id": "c2"},
    "complaints": {"event_type": "opened", "customer_id": "c2", "complaint_id": "k1"},
    "fax": {},
}


def events_for(source: str) -> st.SearchStrategy:
    """Valid events of ``source`` with up to two fields replaced by anything, and arbitrary JSON."""
    overrides = st.lists(st.sampled_from(sorted(field_values)), max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: field_values[name] | json_values for name in names}))
    mutated = st.builds(lambda event_id, changed: {"event_id": event_id, "event_time": int(time.time() * 1000),
                                                   **VALID[source], **changed}, st.uuids().map(str), overrides)
    return mutated | json_values


def bodies_for(source: str) -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda events: json.dumps({"events": events}), st.lists(events_for(source), max_size=5)),
        st.builds(json.dumps, events_for(source)),
        st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(1, 50_000)),
    ).map(str.encode) | st.binary(max_size=200)


requests = st.sampled_from(SOURCES + ("fax",)).flatmap(lambda source: st.tuples(st.just(source), bodies_for(source)))


def test_fuzzed_json_is_always_answered_2xx_or_4xx_and_always_counted(worker):
    before, sent = answered(worker), []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=requests)
    def one_request(request):
        source, body = request
        status, answer = post(worker.web_port, f"/v1/events/{source}", body)
        sent.append(status)
        assert 200 <= status < 500 and isinstance(answer, dict), (status, answer, body[:300])
        assert ("accepted" in answer) if status < 300 else ("error" in answer)

    one_request()
    assert sum(count_delta(before, answered(worker)).values()) == len(sent)
    assert 202 in sent and 422 in sent  # the fuzz reached both sides of validation


def test_a_broker_that_is_gone_is_a_counted_json_503(clickhouse_server, tmp_path):
    own_broker = LocalBroker(tmp_path / "broker").start()
    env = worker_env(own_broker.url, tmp_path, clickhouse_server.url(f"cx_gone_{uuid.uuid4().hex[:8]}"),
                     CXP_COLLECTOR_SEND_TIMEOUT="3")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()
        status, _ = post(worker.web_port, "/v1/events/web", json.dumps(login("before")).encode())
        assert status == 202
        own_broker.stop()
        before = answered(worker)
        status, body = post(worker.web_port, "/v1/events/web", json.dumps(login("after")).encode())
        assert status == 503 and "retry later" in body["error"]
        assert count_delta(before, answered(worker)) == {("web", "503"): 1}
    finally:
        worker.stop()
        own_broker.stop()
