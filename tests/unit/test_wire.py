"""Confluent wire format: round trips, the header byte by byte, and every way a message can be undecodable."""
import io
import struct

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.registry import BUNDLED_IDS, EVENT_SCHEMAS, SOURCES, BundledRegistry
from pipeline.wire import Codec, UndecodableError

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
                   "category": "billing", "origin_channel": "email", "agent_id": None},
}


@pytest.mark.parametrize("source", SOURCES)
def test_single_event_round_trip(source):
    decoded = CODEC.decode(CODEC.encode_event(source, EXAMPLES[source]))
    assert decoded.is_batch is False and decoded.schema.source == source
    assert decoded.events == [EXAMPLES[source]]


@pytest.mark.parametrize("source", SOURCES)
def test_batch_round_trip(source):
    events = [dict(EXAMPLES[source], event_id=f"e{i}", event_time=T + i) for i in range(50)]
    decoded = CODEC.decode(CODEC.encode_batch(source, events))
    assert decoded.is_batch is True and decoded.events == events
    assert decoded.schema.name == EVENT_SCHEMAS[source] + "Batch"


def test_header_layout():
    data = CODEC.encode_event("crm", EXAMPLES["crm"])
    assert data[0] == 0
    assert data[1:5] == BUNDLED_IDS["cx.CrmEvent"].to_bytes(4, "big")
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), REGISTRY.by_name("cx.CrmEvent").decoder_parsed, None)
    assert body == EXAMPLES["crm"]


def test_decodes_bytes_from_an_independent_writer():
    """Plain fastavro with a hand-built header, as any other producer would write it."""
    schema = fastavro.parse_schema(REGISTRY.by_name("cx.ComplaintEvent").schema)
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", 4))
    fastavro.schemaless_writer(out, schema, EXAMPLES["complaints"])
    assert CODEC.decode(out.getvalue()).events == [EXAMPLES["complaints"]]


def test_defaults_fill_in_on_encode():
    minimal = {"event_id": "m1", "event_type": "login", "event_time": T, "customer_id": "c9"}
    event = CODEC.decode(CODEC.encode_event("web", minimal)).events[0]
    assert event["tenant"] == "default" and event["attributes"] == {} and event["survey"] is None


@pytest.mark.parametrize("data,message", [
    (None, "empty message"),
    (b"", "empty message"),
    (b'{"event_id": 1}', "bad magic byte 0x7b"),
    (b"\x00\x00\x00", "shorter than the 5-byte"),
    (b"\x00\x00\x00\x03\xe7\x02", "unknown schema id 999"),
])
def test_undecodable(data, message):
    with pytest.raises(UndecodableError, match=message):
        CODEC.decode(data)


def test_truncated_and_trailing_bytes():
    data = CODEC.encode_event("web", EXAMPLES["web"])
    for cut in (6, 10, len(data) - 1):
        with pytest.raises(UndecodableError, match="cx.WebEvent"):
            CODEC.decode(data[:cut])
    with pytest.raises(UndecodableError, match="trailing bytes"):
        CODEC.decode(data + b"\x00")


text = st.text(max_size=20)
web_events = st.fixed_dictionaries({
    "event_id": st.text(min_size=1, max_size=128), "event_type": st.sampled_from(["page_view", "search", "purchase"]),
    "event_time": st.integers(0, 2**62), "tenant": text, "customer_id": st.none() | text,
    "session_id": st.none() | text, "attributes": st.dictionaries(text, text, max_size=3),
    "anonymous_id": st.none() | text, "url": st.none() | text, "product_id": st.none() | text,
    "order_id": st.none() | text, "revenue": st.none() | st.floats(allow_nan=False), "currency": st.none() | text,
    "survey": st.none() | st.fixed_dictionaries({"kind": st.sampled_from(["NPS", "CSAT", "CES"]),
                                                 "score": st.integers(-2**31, 2**31 - 1),
                                                 "comment": st.none() | text, "touchpoint": st.none() | text}),
})


@given(st.lists(web_events, min_size=1, max_size=20))
def test_any_batch_round_trips(events):
    assert CODEC.decode(CODEC.encode_batch("web", events)).events == events
