"""Confluent wire format: round trips, the header byte by byte, and every way a message can be undecodable."""
import datetime as dt
import io
import json
import re
import struct

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.registry import BATCH_SCHEMAS, BUNDLED_IDS, EVENT_SCHEMAS, SOURCES, BundledRegistry
from pipeline.avro_reader import compile_reader
from pipeline.wire import Codec, UndecodableError
from schemas import SCHEMA_DIR

REGISTRY = BundledRegistry()
CODEC = Codec(REGISTRY)
T = 1_700_000_000_123

EXAMPLES = {
    "web": {"event_id": "w1", "event_type": "purchase", "event_time": T, "tenant": "acme", "customer_id": "c1",
            "session_id": "s1", "attributes": {"region": "eu"}, "anonymous_id": None, "url": "/p/1", "product_id": "p1",
            "order_id": "o1", "revenue": 12.5, "currency": "EUR", "survey": None},
    "chatbot": {"event_id": "b1", "event_type": "survey_response", "event_time": T, "tenant": "acme", "customer_id": "c1",
                "session_id": None, "attributes": {}, "conversation_id": "conv1", "text": None, "intent": None,
                "survey": {"kind": "CSAT", "score": 4, "comment": "ok", "touchpoint": None}},
    "crm": {"event_id": "r1", "event_type": "subscription_downgraded", "event_time": T, "tenant": "globex",
            "customer_id": "c2", "session_id": None, "attributes": {"plan": "pro"}, "account_id": "a1", "plan": "basic",
            "mrr": 19.0, "survey": None},
    "complaints": {"event_id": "k1", "event_type": "opened", "event_time": T, "tenant": "acme", "customer_id": "c3",
                   "session_id": None, "attributes": {}, "complaint_id": "cmp1", "priority": "urgent",
                   "category": "billing", "origin_channel": "email", "agent_id": "agent-7"},
}


@pytest.mark.parametrize("source", SOURCES)
def test_single_event_round_trip(source):
    decoded = CODEC.decode(CODEC.encode_event(source, EXAMPLES[source]))
    assert decoded.schema is REGISTRY.by_name(EVENT_SCHEMAS[source])
    assert decoded.is_batch is False and decoded.schema.source == source
    assert decoded.events == [EXAMPLES[source]]
    assert type(decoded.events[0]["event_time"]) is int  # int millis, not datetime


@pytest.mark.parametrize("source", SOURCES)
def test_batch_round_trip(source):
    events = [dict(EXAMPLES[source], event_id=f"e{i}", event_time=T + i) for i in range(50)]
    decoded = CODEC.decode(CODEC.encode_batch(source, events))
    assert decoded.schema is REGISTRY.by_name(BATCH_SCHEMAS[source])
    assert decoded.is_batch is True and decoded.schema.source == source
    assert decoded.events == events


def test_other_records_round_trip():
    letter = {"reason": "undecodable", "error": "bad magic byte", "source_topic": "cx.events.web", "source_partition": 3,
              "source_offset": 2**40, "batch_index": None, "original_key": b"c1", "original_value": b"{}",
              "received_time": T, "truncated": False, "original_size": 2}
    decoded = CODEC.decode(CODEC.encode("cx.DeadLetter", letter))
    assert decoded.events == [letter] and decoded.schema.source is None and not decoded.is_batch


def test_encode_takes_datetimes_and_fills_defaults():
    minimal = {"event_id": "m1", "event_type": "login", "customer_id": "c9",
               "event_time": dt.datetime.fromtimestamp(T / 1000, dt.timezone.utc)}
    event = CODEC.decode(CODEC.encode_event("web", minimal)).events[0]
    assert event["event_time"] == T
    assert event["tenant"] == "default" and event["attributes"] == {} and event["survey"] is None


@pytest.mark.parametrize("source", SOURCES)
def test_header_layout(source):
    for data, name in [(CODEC.encode_event(source, EXAMPLES[source]), EVENT_SCHEMAS[source]),
                       (CODEC.encode_batch(source, [EXAMPLES[source]]), BATCH_SCHEMAS[source])]:
        schema_id = BUNDLED_IDS[name]
        assert data[0] == 0x00
        assert list(data[1:5]) == [schema_id >> 24, (schema_id >> 16) & 0xFF, (schema_id >> 8) & 0xFF, schema_id & 0xFF]
        body = io.BytesIO(data[5:])
        fastavro.schemaless_reader(body, REGISTRY.by_name(name).decoder_parsed, None)
        assert body.tell() == len(data) - 5  # the rest is exactly one Avro body


def _independent_schemas() -> dict:
    """The .avsc files parsed by plain fastavro, without the project's loader."""
    named: dict = {}
    order = ["Survey", "WebEvent", "ChatbotEvent", "CrmEvent", "ComplaintEvent"]
    for stem in order + [f"{s}Batch" for s in order[1:]]:
        named[f"cx.{stem}"] = fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{stem}.avsc").read_text()), named)
    return named


@pytest.mark.parametrize("source", SOURCES)
def test_decodes_bytes_from_an_independent_writer(source):
    """Plain fastavro with a hand-built header, as any other producer would write it."""
    schemas = _independent_schemas()
    for name, record, expected in [(EVENT_SCHEMAS[source], EXAMPLES[source], [EXAMPLES[source]]),
                                   (BATCH_SCHEMAS[source], {"events": [EXAMPLES[source]] * 3}, [EXAMPLES[source]] * 3)]:
        out = io.BytesIO()
        out.write(b"\x00" + struct.pack(">I", BUNDLED_IDS[name]))
        fastavro.schemaless_writer(out, schemas[name], record)
        assert CODEC.decode(out.getvalue()).events == expected


@pytest.mark.parametrize("data,message", [
    (None, "empty message value"),
    (b"", "empty message value"),
    (b'{"event_id": "e1"}', r"bad magic byte 0x7b \(expected 0x00\): not Confluent wire format; is the producer sending JSON\?"),
    (b"\x01\x00\x00\x00\x01\x02", "bad magic byte 0x01"),
    (b"\x00\x00\x00", "3 bytes is shorter than the 5-byte wire-format header"),
    (b"\x00\x00\x00\x00", "shorter than the 5-byte"),
    (b"\x00\x00\x00\x03\xe7\x02", "unknown schema id 999"),
    (b"\x00\x00\x00\x00\x00", "unknown schema id 0"),
])
def test_undecodable_framing(data, message):
    with pytest.raises(UndecodableError, match=message):
        CODEC.decode(data)


@pytest.mark.parametrize("source", SOURCES)
def test_every_truncation_is_undecodable(source):
    for data in (CODEC.encode_event(source, EXAMPLES[source]), CODEC.encode_batch(source, [EXAMPLES[source]] * 2)):
        for cut in range(5, len(data)):
            with pytest.raises(UndecodableError, match="truncated Avro body for cx"):
                CODEC.decode(data[:cut])


def test_trailing_bytes_are_undecodable():
    data = CODEC.encode_event("web", EXAMPLES["web"])
    with pytest.raises(UndecodableError, match="1 trailing bytes after the cx.WebEvent body"):
        CODEC.decode(data + b"\x00")
    with pytest.raises(UndecodableError, match="trailing bytes"):
        CODEC.decode(CODEC.encode_event("crm", EXAMPLES["crm"]) + data)


def _corrupt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def test_corrupt_bodies_are_undecodable():
    data = CODEC.encode_event("web", EXAMPLES["web"])
    event_type_at = 5 + 1 + len("w1")  # after the header and event_id (length byte + 2 bytes)
    bad = {
        "enum index out of range": _corrupt(data, event_type_at, b"\x7e"),
        "invalid UTF-8": _corrupt(data, 5 + 1, b"\xff\xfe"),
        "union branch out of range": data[:-1] + b"\x08",  # survey: ["null", Survey] has no branch 4
    }
    for case, value in bad.items():
        with pytest.raises(UndecodableError, match="cx.WebEvent") as info:
            CODEC.decode(value)
        assert "schema id 1" in str(info.value), case


# -- property: any record valid for a schema round-trips, for every bundled schema -------------------------

def _strategy(schema):
    """Records valid for an expanded, parsed schema (timestamps as int millis, like the pipeline uses)."""
    if isinstance(schema, list):
        return st.one_of([_strategy(branch) for branch in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    simple = {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
              "long": st.integers(-2**63, 2**63 - 1), "double": st.floats(allow_nan=False),
              "string": st.text(max_size=12), "bytes": st.binary(max_size=12)}
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_strategy(schema["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _strategy(schema["values"]), max_size=3)
    assert kind == "record", kind
    return st.fixed_dictionaries({f["name"]: _strategy(f["type"]) for f in schema["fields"]})


STRATEGIES = {name: _strategy(fastavro.parse_schema(REGISTRY.by_name(name).schema, expand=True, _write_hint=False))
              for name in BUNDLED_IDS}


@given(st.sampled_from(sorted(BUNDLED_IDS)).flatmap(lambda name: st.tuples(st.just(name), STRATEGIES[name])))
def test_any_record_round_trips(case):
    name, record = case
    decoded = CODEC.decode(CODEC.encode(name, record))
    assert decoded.schema.name == name
    assert decoded.events == (record["events"] if decoded.is_batch else [record])


# -- the compiled reader (pipeline/avro_reader.py) against fastavro ---------------------------------------

def _fastavro(parsed, data: bytes, pos: int = 0):
    body = io.BytesIO(data)
    body.seek(pos)
    return fastavro.schemaless_reader(body, parsed, None), body.tell()


@pytest.mark.parametrize("name", sorted(BUNDLED_IDS))
def test_every_bundled_schema_has_a_compiled_reader(name):
    """So the equality properties below check the fast path, not the fallback."""
    schema = REGISTRY.by_name(name)
    assert compile_reader(schema.decoder_parsed) is not None


# Every Avro type the reader compiles, named types referred to by name, and a recursive record.
EVERY_TYPE = fastavro.parse_schema({
    "type": "record", "name": "t.All", "fields": [
        {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
        {"name": "f", "type": "float"}, {"name": "d", "type": "double"}, {"name": "s", "type": "string"},
        {"name": "y", "type": "bytes"}, {"name": "x", "type": {"type": "fixed", "name": "t.F", "size": 3}},
        {"name": "e", "type": {"type": "enum", "name": "t.E", "symbols": ["A", "B", "C"]}},
        {"name": "e2", "type": ["null", "t.E"]}, {"name": "x2", "type": "t.F"},
        {"name": "a", "type": {"type": "array", "items": ["null", "long", "string"]}},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "double"}}},
        {"name": "next", "type": ["null", "t.All"]},
    ]})


def _every_type_strategy(depth: int = 0):
    return st.fixed_dictionaries({
        "b": st.booleans(), "i": st.integers(-2**31, 2**31 - 1), "l": st.integers(-2**63, 2**63 - 1),
        "f": st.floats(width=32, allow_nan=False), "d": st.floats(allow_nan=False), "s": st.text(max_size=70),
        "y": st.binary(max_size=70), "x": st.binary(min_size=3, max_size=3), "e": st.sampled_from("ABC"),
        "e2": st.none() | st.sampled_from("ABC"), "x2": st.binary(min_size=3, max_size=3),
        "a": st.lists(st.none() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=5), max_size=4),
        "m": st.dictionaries(st.text(max_size=5), st.lists(st.floats(allow_nan=False), max_size=3), max_size=3),
        "next": st.none() if depth >= 2 else st.none() | st.deferred(lambda: _every_type_strategy(depth + 1)),
    })


def _write(parsed, record) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


@given(_every_type_strategy())
def test_compiled_reader_reads_every_type_as_fastavro_does(record):
    data = _write(EVERY_TYPE, record)
    assert compile_reader(EVERY_TYPE)(data, 0) == _fastavro(EVERY_TYPE, data)


def test_compiled_reader_reads_blocks_with_byte_sizes():
    """Arrays and maps may be written as blocks of a negative count followed by the block's size in bytes."""
    parsed = fastavro.parse_schema({"type": "record", "name": "t.Blocks", "fields": [
        {"name": "a", "type": {"type": "array", "items": "string"}},
        {"name": "m", "type": {"type": "map", "values": "long"}}]})
    # a: a block of -2 items (4 bytes), then a block of 1, then the end; m: a block of -1 item (3 bytes), the end
    data = b"\x03\x08\x02x\x02y" b"\x02\x02z" b"\x00" b"\x01\x06\x02k\x04" b"\x00"
    assert compile_reader(parsed)(data, 0) == _fastavro(parsed, data) == ({"a": ["x", "y", "z"], "m": {"k": 2}}, len(data))


def test_compiled_reader_interns_tenant_and_customer_id():
    """Two events decoded apart share one string per tenant and per customer id (the cores keep them per
    customer); other strings are their own copies."""
    event = {"event_id": "e-1", "event_type": "page_view", "event_time": 1_700_000_000_000, "tenant": "acme-" + "x" * 3,
             "customer_id": "customer-" + "7" * 4, "session_id": "s-" + "1" * 6, "attributes": {}}
    first, second = (CODEC.decode(CODEC.encode_event("web", dict(event, event_id=f"e-{i}"))).events[0] for i in (1, 2))
    assert (first["tenant"], first["customer_id"]) == (event["tenant"], event["customer_id"])
    assert first["tenant"] is second["tenant"] and first["customer_id"] is second["customer_id"]
    assert first["session_id"] == second["session_id"] and first["session_id"] is not second["session_id"]


def _mutations():
    """A valid message of any bundled schema, then cut, extended or with one byte overwritten."""
    record = st.sampled_from(sorted(BUNDLED_IDS)).flatmap(lambda name: st.tuples(st.just(name), STRATEGIES[name]))

    def mutate(case, how, where, value):
        data = CODEC.encode(*case)
        at = 5 + where % max(1, len(data) - 5)
        return {"cut": data[:at], "append": data + bytes([value]), "overwrite": _corrupt(data, at, bytes([value]))}[how]

    return st.builds(mutate, record, st.sampled_from(["cut", "append", "overwrite"]), st.integers(0, 10_000),
                     st.integers(0, 255))


def _outcome(decode, data):
    try:
        decoded = decode(data)
        return decoded.schema.name, decoded.events, decoded.is_batch
    except UndecodableError as exc:  # fastavro names its BytesIO by address: one per decode, so left out
        return "undecodable", re.sub(r" at 0x[0-9a-f]+", "", str(exc))


class _FastavroOnly(Codec):
    def _read_fast(self, schema, data):
        return None


@given(_mutations())
def test_damaged_messages_decode_as_by_fastavro_alone(data):
    """Whatever the bytes, the compiled reader changes nothing: the same events, or the same error."""
    assert _outcome(CODEC.decode, data) == _outcome(_FastavroOnly(REGISTRY).decode, data)
