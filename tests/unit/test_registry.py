"""The Confluent registry client against a small HTTP server speaking the registry's REST API."""
import io
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
import pytest

from pipeline.registry import BUNDLED_IDS, BundledRegistry, ConfluentRegistry, make_registry
from pipeline.wire import Codec


class FakeRegistry(BaseHTTPRequestHandler):
    """Just enough of the Confluent API: POST /subjects/{s}/versions and GET /schemas/ids/{id}."""

    schemas: dict[int, str] = {}
    auth: list = []

    def do_POST(self):
        self.auth.append(self.headers.get("Authorization"))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schema_id = next((i for i, s in self.schemas.items() if s == body["schema"]), None)
        if schema_id is None:
            schema_id = 100 + len(self.schemas)
            self.schemas[schema_id] = body["schema"]
        self._reply(200, {"id": schema_id})

    def do_GET(self):
        schema_id = int(self.path.rsplit("/", 1)[-1])
        if schema_id in self.schemas:
            self._reply(200, {"schema": self.schemas[schema_id]})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry_url():
    FakeRegistry.schemas, FakeRegistry.auth = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://user:secret@127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ids_come_from_the_registry(registry_url):
    registry = ConfluentRegistry(registry_url)
    assert len(FakeRegistry.schemas) == len(BUNDLED_IDS)
    web = registry.by_name("cx.WebEvent")
    assert web.id >= 100 and web.id != BUNDLED_IDS["cx.WebEvent"]
    assert json.loads(FakeRegistry.schemas[web.id]) == web.schema
    assert all(a and a.startswith("Basic ") for a in FakeRegistry.auth)  # credentials from the URL


def test_unknown_ids_are_fetched_once_and_decode(registry_url):
    ours = ConfluentRegistry(registry_url)
    # another producer registers a newer, compatible WebEvent with one more field
    newer = json.loads(json.dumps(ours.by_name("cx.WebEvent").schema))
    newer["fields"].append({"name": "campaign", "type": ["null", "string"], "default": None})
    FakeRegistry.schemas[555] = json.dumps(newer)
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", 555))
    fastavro.schemaless_writer(out, fastavro.parse_schema(newer), {
        "event_id": "e", "event_type": "login", "event_time": 1, "customer_id": "c", "campaign": "spring"})
    decoded = Codec(ours).decode(out.getvalue())
    assert decoded.schema.id == 555 and decoded.schema.source == "web"
    assert decoded.events[0]["campaign"] == "spring" and decoded.events[0]["event_id"] == "e"


def test_unreachable_registry_names_the_fix():
    with pytest.raises(RuntimeError, match="CXP_SCHEMA_REGISTRY_URL"):
        ConfluentRegistry("http://127.0.0.1:1", timeout_s=1)


def test_no_url_means_bundled():
    assert isinstance(make_registry(None), BundledRegistry)
    assert make_registry("").by_name("cx.DeadLetter").id == BUNDLED_IDS["cx.DeadLetter"]
