"""The bundled registry, and the Confluent client against a small in-test server speaking the registry's REST API."""
import base64
import io
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
import pytest

from pipeline.registry import (BATCH_SCHEMAS, BUNDLED_IDS, EVENT_SCHEMAS, BundledRegistry, ConfluentRegistry,
                               SchemaRegistryError, load_schemas, make_registry)
from pipeline.wire import Codec, UndecodableError

EVENT = {"event_id": "e1", "event_type": "login", "event_time": 1_700_000_000_000, "customer_id": "c1"}


# -- bundled ------------------------------------------------------------------------------------------

def test_bundled_ids_are_the_fixed_table():
    registry = BundledRegistry()
    for name, schema_id in BUNDLED_IDS.items():
        assert registry.by_name(name).id == schema_id
        assert registry.by_id(schema_id) is registry.by_name(name)
    with pytest.raises(KeyError):
        registry.by_id(99)
    with pytest.raises(KeyError):
        registry.by_name("cx.Nope")


def test_every_schema_file_is_registered_or_nested():
    assert set(load_schemas()) == set(BUNDLED_IDS) | {"cx.Survey"}


def test_loaded_schemas_are_self_contained():
    for name, schema in load_schemas().items():
        assert fastavro.parse_schema(schema, _write_hint=False)["name"] == name  # no named_schemas needed


def test_flags_and_decoder_schema():
    registry = BundledRegistry()
    for source, name in EVENT_SCHEMAS.items():
        assert (registry.by_name(name).source, registry.by_name(name).is_batch) == (source, False)
        assert (registry.by_name(BATCH_SCHEMAS[source]).source, registry.by_name(BATCH_SCHEMAS[source]).is_batch) == (source, True)
    assert registry.by_name("cx.ChurnSignal").source is None
    assert "logicalType" in json.dumps(registry.by_name("cx.WebEvent").parsed)
    assert "logicalType" not in json.dumps(registry.by_name("cx.WebEvent").decoder_parsed)


def test_no_url_means_bundled():
    assert isinstance(make_registry(None), BundledRegistry)
    assert make_registry("").by_name("cx.DeadLetter").id == BUNDLED_IDS["cx.DeadLetter"]


# -- Confluent ----------------------------------------------------------------------------------------

class FakeRegistry(ThreadingHTTPServer):
    """Just enough of the Confluent API: POST /subjects/{subject}/versions and GET /schemas/ids/{id}."""

    def __init__(self):
        self.schemas: dict[int, dict] = {}  # id -> {"schema": ..., optional "schemaType"}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        self.status: int = 200  # answer every request with this status when not 200
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def do_POST(self):
        self.server.requests.append(("POST", self.path, self.headers.get("Authorization")))
        schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        schema_id = next((i for i, s in self.server.schemas.items() if s["schema"] == schema), None)
        if schema_id is None:
            schema_id = 100 + len(self.server.schemas)
            self.server.schemas[schema_id] = {"schema": schema}
        self._reply({"id": schema_id})

    def do_GET(self):
        self.server.requests.append(("GET", self.path, self.headers.get("Authorization")))
        found = self.server.schemas.get(int(self.path.rsplit("/", 1)[-1]))
        self._reply(found, 200 if found else 404)

    def _reply(self, body, code=200):
        if self.server.status != 200:
            code, body = self.server.status, {"error_code": self.server.status * 100, "message": "refused"}
        elif code == 404:
            body = {"error_code": 40403, "message": "Schema not found"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    server = FakeRegistry()
    yield server
    server.shutdown()
    server.server_close()


def _framed(schema_id: int, schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_schemas_are_registered_on_first_use_and_ids_come_from_the_registry(fake):
    registry = ConfluentRegistry(fake.url())
    assert fake.requests == []  # nothing until used
    web = registry.by_name("cx.WebEvent")
    assert fake.requests == [("POST", "/subjects/cx.WebEvent/versions", None)]  # RecordNameStrategy
    assert web.id >= 100 and json.loads(fake.schemas[web.id]["schema"]) == web.schema == load_schemas()["cx.WebEvent"]
    assert registry.by_name("cx.WebEvent") is web and registry.by_id(web.id) is web
    assert len(fake.requests) == 1  # cached

    codec = Codec(registry)
    data = codec.encode_event("web", EVENT)
    assert data[:5] == b"\x00" + struct.pack(">I", web.id)
    assert codec.decode(data).events[0]["event_id"] == "e1"
    batch = registry.by_name("cx.WebEventBatch")
    assert batch.id not in (web.id, BUNDLED_IDS["cx.WebEventBatch"]) and batch.is_batch
    assert len(fake.requests) == 2


def test_unknown_ids_are_fetched_once_and_decode_with_the_writer_schema(fake):
    registry = ConfluentRegistry(fake.url())
    # another producer registered a newer, compatible WebEvent with one more field
    newer = json.loads(json.dumps(load_schemas()["cx.WebEvent"]))
    newer["fields"].append({"name": "campaign", "type": ["null", "string"], "default": None})
    fake.schemas[555] = {"schema": json.dumps(newer)}
    codec = Codec(registry)
    data = _framed(555, newer, dict(EVENT, campaign="spring"))
    for _ in range(3):
        decoded = codec.decode(data)
        assert decoded.schema.id == 555 and decoded.schema.source == "web" and not decoded.is_batch
        assert decoded.events[0]["campaign"] == "spring" and decoded.events[0]["event_time"] == EVENT["event_time"]
    assert fake.requests == [("GET", "/schemas/ids/555", None)]


def test_ids_the_registry_does_not_know_are_undecodable_and_not_refetched(fake):
    codec = Codec(ConfluentRegistry(fake.url()))
    for _ in range(3):
        with pytest.raises(UndecodableError, match="unknown schema id 77"):
            codec.decode(b"\x00\x00\x00\x00\x4d\x02")
    assert fake.requests == [("GET", "/schemas/ids/77", None)]


def test_a_schema_that_is_not_avro_is_undecodable(fake):
    fake.schemas[8] = {"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}
    fake.schemas[9] = {"schema": json.dumps("string")}
    codec = Codec(ConfluentRegistry(fake.url()))
    with pytest.raises(UndecodableError, match="schema id 8 is a PROTOBUF schema"):
        codec.decode(b"\x00\x00\x00\x00\x08\x02")
    with pytest.raises(UndecodableError, match="schema id 9 .* unusable"):
        codec.decode(b"\x00\x00\x00\x00\x09\x02")


def test_basic_auth_from_the_url(fake):
    registry = ConfluentRegistry(fake.url("svc%40cx:s3cret@"))
    registry.by_name("cx.DeadLetter")
    assert fake.requests[0][2] == "Basic " + base64.b64encode(b"svc@cx:s3cret").decode()
    assert "s3cret" not in registry.url


def test_basic_auth_given_explicitly(fake):
    ConfluentRegistry(fake.url(), auth="svc:pw").by_name("cx.DeadLetter")
    assert fake.requests[0][2] == "Basic " + base64.b64encode(b"svc:pw").decode()


@pytest.mark.parametrize("status,message", [(401, "check the credentials"), (409, "incompatible"), (500, "answered 500")])
def test_registry_refusals_name_the_url_and_the_fix(fake, status, message):
    fake.status = status
    with pytest.raises(SchemaRegistryError, match=message) as info:
        ConfluentRegistry(fake.url("u:secret@")).by_name("cx.WebEvent")
    assert fake.url() in str(info.value) and "secret" not in str(info.value)


def test_unreachable_registry_names_the_url_and_the_fix():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    registry = ConfluentRegistry(url, timeout_s=2)
    with pytest.raises(SchemaRegistryError, match=f"{url} is unreachable.*CXP_SCHEMA_REGISTRY_URL"):
        registry.by_name("cx.WebEvent")
    # decoding a message of an unknown id must not turn an outage into dead letters
    with pytest.raises(SchemaRegistryError):
        Codec(registry).decode(b"\x00\x00\x00\x00\x05\x02")
