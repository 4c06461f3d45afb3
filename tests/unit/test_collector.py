import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from agents.collector import (
    MAX_DEPTH,
    CollectorError,
    counting_middleware,
    parse_request,
    source_label,
    split_messages,
)
from pipeline.partitioner import event_key, partition_for
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.validate import Rules
from pipeline.wire import Codec

REGISTRY = BundledRegistry()
CODEC = Codec(REGISTRY)
RULES = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)
LOGIN = {"event_id": "e1", "event_type": "login", "event_time": 1, "customer_id": "c"}


def parse(source, payload, max_body=100_000, max_message_bytes=900_000, rules=RULES):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_request(source, body, REGISTRY, rules, CODEC, max_body, max_message_bytes)


def status(source, payload, **kw):
    with pytest.raises(CollectorError) as info:
        parse(source, payload, **kw)
    # The answer must be writable as UTF-8 JSON, as strictly as the web server's encoder (orjson) does.
    json.dumps(info.value.body(), ensure_ascii=False).encode("utf-8")
    return info.value.status, info.value.body()


def test_single_and_batch_with_defaults_and_iso_time():
    [encoded] = parse("web", {"event_id": "e1", "event_type": "login", "event_time": "2026-11-23T10:00:00Z",
                              "customer_id": "c"})
    assert encoded.event["event_time"] == 1_795_428_000_000 and encoded.event["tenant"] == "default"
    assert encoded.key == b"c" and CODEC.batch_of_bodies("web", [encoded.body]) == CODEC.encode_batch("web", [encoded.event])
    assert len(parse("crm", {"events": [{"event_id": f"e{i}", "event_type": "order_placed", "event_time": 1,
                                         "customer_id": "c"} for i in range(3)]})) == 3


def test_errors_are_4xx_with_json_bodies():
    assert status("web", b"{nope")[0] == 400
    assert status("web", [1, 2])[0] == 400
    assert status("web", {"events": []})[0] == 400
    assert status("fax", {})[0] == 404
    assert status("web", {"event_id": "x" * 200}, max_body=100)[0] == 413
    code, body = status("web", {"events": [LOGIN, {"event_id": "b", "event_type": "teleport", "event_time": 1}]})
    assert code == 422 and [d["index"] for d in body["details"]] == [1]
    code, body = status("complaints", {"event_id": "k", "event_type": "opened", "event_time": 1, "customer_id": "c",
                                       "complaint_id": ""})
    assert code == 422 and body["details"][0]["reason"] == "missing_field"


def test_a_purchase_that_is_not_a_valid_order_is_a_422_naming_the_field():
    """The collector applies the worker's order rules (pipeline.validate.check_order)."""
    order = dict(LOGIN, event_type="purchase", order_id="o-1", revenue=19.99, currency="EUR")
    assert len(parse("web", order)) == 1
    code, body = status("web", {"events": [order, dict(order, revenue=-1.0), dict(order, currency="EURO"),
                                           dict(order, order_id=None)]})
    assert code == 422 and [(d["index"], d["reason"], d["error"].split()[0]) for d in body["details"]] == [
        (1, "invalid_value", "revenue"), (2, "invalid_value", "currency"), (3, "invalid_value", "order_id")]


def test_a_tenant_outside_the_allow_list_is_a_422_naming_it():
    """The collector applies CXP_TENANTS like the worker, so an HTTP sender learns it at once."""
    rules = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000,
                               7 * 86_400_000, tenants=["acme"])
    assert len(parse("web", dict(LOGIN, tenant="acme"), rules=rules)) == 1
    with pytest.raises(CollectorError) as info:
        parse("web", {"events": [dict(LOGIN, tenant="acme"), dict(LOGIN, tenant="acme-eu")]}, rules=rules)
    assert info.value.status == 422 and info.value.body()["details"] == [
        {"index": 1, "reason": "unknown_tenant", "error": "tenant 'acme-eu' is not in CXP_TENANTS (acme)"}]


def test_deeply_nested_json_is_a_400_not_a_recursion_error():
    assert status("web", b"[" * 10_000 + b"]" * 10_000)[0] == 400  # beyond the parser's recursion limit
    nested = {**LOGIN, "attributes": {"a": "x"}, "extra": json.loads("[" * 500 + "]" * 500)}  # parses, but too deep
    code, body = status("web", nested)
    assert code == 400 and "too deeply" in body["error"]
    assert len(parse("web", {**LOGIN, "extra": json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))})) == 1


def test_an_integer_of_more_digits_than_python_converts_is_a_400():
    assert status("web", b'{"event_id": "e", "event_time": ' + b"9" * 5000 + b"}")[0] == 400


def test_a_lone_surrogate_where_a_time_belongs_is_a_422_with_the_value_escaped():
    code, body = status("web", {**LOGIN, "event_time": "\ud800"})
    assert code == 422 and body["details"][0]["reason"] == "schema" and "\\ud800" in body["details"][0]["error"]


@pytest.mark.parametrize("event, field", [
    ({**LOGIN, "customer_id": "c\udc80"}, "customer_id"),
    ({**LOGIN, "attributes": {"plan": "\ud800"}}, "attributes.plan"),
    ({**LOGIN, "attributes": {"\udfff": "x"}}, "attributes.\\udfff (the key)"),  # quoted back escaped
    ({**LOGIN, "event_type": "survey_response", "survey": {"kind": "NPS", "score": 9, "comment": "ok\udc80"}},
     "survey.comment"),
    ({**LOGIN, "revenue": 10 ** 400}, "revenue"),  # an int fastavro validates for a double but cannot write
])
def test_values_avro_cannot_write_are_a_422_naming_index_and_field(event, field):
    code, body = status("web", {"events": [LOGIN, event]})
    assert code == 422 and body["details"] == [{"index": 1, "reason": "invalid_value", "field": field,
                                                "error": body["details"][0]["error"]}]


def test_keys_outside_the_schema_are_dropped_as_avro_drops_them():
    [encoded] = parse("web", {**LOGIN, "note": "\udc80", "big": 10 ** 400})
    assert "note" not in encoded.event and CODEC.decode(CODEC.batch_of_bodies("web", [encoded.body])).events == [encoded.event]
    # Found by the HTTP fuzz: complaints have no survey field, and a stray one reached the survey check (500).
    [encoded] = parse("complaints", {**LOGIN, "event_type": "opened", "complaint_id": "k1", "survey": []})
    assert "survey" not in encoded.event


def test_an_event_too_big_for_one_message_is_a_422_naming_it():
    big = {**LOGIN, "event_id": "big", "attributes": {"blob": "x" * 5_000}}
    code, body = status("web", {"events": [LOGIN, big]}, max_message_bytes=5_000)
    assert code == 422 and [(d["index"], d["reason"]) for d in body["details"]] == [(1, "too_large")]
    assert len(parse("web", {"events": [LOGIN, big]}, max_message_bytes=5_100)) == 2


def test_error_details_are_bounded():
    code, body = status("web", {**LOGIN, "session_id": ["y" * 50_000]})
    assert code == 422 and len(body["details"][0]["error"]) <= 500


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
web_events = st.fixed_dictionaries({
    "event_id": st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=128),
    "event_type": st.sampled_from(["page_view", "search", "login"]),  # a purchase needs a valid order: test_validate
    "event_time": st.integers(0, 2**62),
    "tenant": st.sampled_from(["default", "brand-a"]),
    "customer_id": st.one_of(st.none(), st.sampled_from([f"customer-{i}" for i in range(40)])),
    "session_id": st.one_of(st.none(), texts),
    "attributes": st.dictionaries(texts, st.text(st.characters(exclude_categories=("Cs",)), max_size=300), max_size=4),
    "anonymous_id": st.sampled_from(["anon-1", "anon-2", "anon-3"]),
    "url": st.one_of(st.none(), texts),
    "product_id": st.none(),
    "order_id": st.none(),
    "revenue": st.one_of(st.none(), st.floats(allow_nan=False)),
    "currency": st.one_of(st.none(), st.just("EUR")),
    "survey": st.none(),
})


@settings(max_examples=150, deadline=None)
@given(events=st.lists(web_events, min_size=1, max_size=60), partitions=st.integers(1, 8), data=st.data())
def test_split_messages_decode_to_the_input_in_the_right_partitions_under_the_budget(events, partitions, data):
    encoded = parse("web", {"events": events}, max_body=10**7)
    smallest = max(len(e.key) + 5 + 1 + len(e.body) + 1 for e in encoded)  # one event alone
    budget = data.draw(st.integers(smallest, smallest * 6), label="budget")
    messages = split_messages("web", encoded, partitions, CODEC, budget)

    per_partition: dict[int, list] = {}
    for message in messages:
        decoded = CODEC.decode(message.value)
        assert decoded.is_batch and len(decoded.events) == message.events
        assert len(message.key) + len(message.value) <= budget
        assert message.value == CODEC.encode_batch("web", decoded.events)  # byte for byte fastavro's own batch
        assert message.key == event_key("web", decoded.events[0])
        assert all(partition_for(event_key("web", e), partitions) == message.partition for e in decoded.events)
        per_partition.setdefault(message.partition, []).append((message, decoded.events))
    for partition, sent in per_partition.items():
        expected = [e.event for e in encoded if partition_for(e.key, partitions) == partition]
        assert [e for _, events_ in sent for e in events_] == expected  # all of them, in request order
        for (message, _), (_, following) in zip(sent, sent[1:]):  # greedy: the next event did not fit
            grown = CODEC.encode_batch("web", CODEC.decode(message.value).events + following[:1])
            assert len(message.key) + len(grown) > budget


def test_split_keeps_one_message_per_partition_when_everything_fits():
    events = parse("crm", {"events": [{**LOGIN, "event_type": "order_placed", "event_id": str(i),
                                       "customer_id": f"c{i}"} for i in range(100)]})
    messages = split_messages("crm", events, 4, CODEC, 900_000)
    assert sorted(m.partition for m in messages) == sorted({partition_for(e.key, 4) for e in events})
    assert sum(m.events for m in messages) == 100


def test_source_label_is_bounded():
    assert source_label("/v1/events/web") == "web"
    assert {source_label(p) for p in ("/v1/events/fax", "/v1/events/web/x", "/v1/events/")} == {"unknown"}


async def _answers(requests_to_send):
    """Each request's (status, JSON body) from a real aiohttp server running the middleware."""
    counter = Counter("requests", "test", ["source", "code"], registry=CollectorRegistry())

    async def broken(request):
        raise RuntimeError("a bug")

    async def read(request):
        return web.json_response({"read": len(await request.read())}, status=202)

    server = web.Application(client_max_size=1_000, middlewares=[counting_middleware(counter)])
    server.router.add_post("/v1/events/web", read)
    server.router.add_post("/v1/events/crm", broken)
    server.router.add_get("/elsewhere", read)
    answers = []
    async with TestClient(TestServer(server)) as client:
        for method, path, body in requests_to_send:
            response = await client.request(method, path, data=body)
            answers.append((response.status, await response.json()))
    counts = {(s.labels["source"], s.labels["code"]): s.value
              for metric in counter.collect() for s in metric.samples if s.name == "requests_total"}
    return answers, counts


def test_middleware_answers_json_and_counts_every_collector_answer(caplog):
    answers, counts = asyncio.run(_answers([
        ("POST", "/v1/events/web", b"x" * 10),
        ("POST", "/v1/events/web", b"x" * 5_000),  # over the server's client_max_size
        ("POST", "/v1/events/crm", b"{}"),  # an unexpected exception
        ("GET", "/v1/events/web", None),  # wrong method
        ("POST", "/v1/events/fax-1", b"{}"),  # no such route
        ("POST", "/v1/events/fax-2", b"{}"),
        ("GET", "/elsewhere", None),  # not the collector's: not counted
    ]))
    assert [code for code, _ in answers] == [202, 413, 500, 405, 404, 404, 202]
    assert all("error" in body for code, body in answers if code >= 400)
    assert counts == {("web", "202"): 1, ("web", "413"): 1, ("crm", "500"): 1, ("web", "405"): 1,
                      ("unknown", "404"): 2}
    [logged] = [r for r in caplog.records if r.name == "cxp.collector"]
    assert logged.exc_info[0] is RuntimeError  # the 500's traceback is in the log
