"""Schema registry client: a Confluent-compatible registry when configured, the bundled schemas otherwise.

Every schema is parsed once, when the registry is built (or when an unknown id is first fetched).
The bundled .avsc files refer to ``cx.Survey`` and to the event records by name; they are loaded in
dependency order and registered with a Confluent registry fully expanded, under the record's full
name (RecordNameStrategy), because a topic carries both single-event and batch schemas.
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlparse

import fastavro

from schemas import SCHEMA_DIR

SOURCES = ("web", "chatbot", "crm", "complaints")
EVENT_SCHEMAS = {"web": "cx.WebEvent", "chatbot": "cx.ChatbotEvent", "crm": "cx.CrmEvent", "complaints": "cx.ComplaintEvent"}
BATCH_SCHEMAS = {source: f"{name}Batch" for source, name in EVENT_SCHEMAS.items()}

# Stable ids of the bundled schemas. Never reuse or change one: data on disk and in topics names them.
BUNDLED_IDS = {
    "cx.WebEvent": 1, "cx.ChatbotEvent": 2, "cx.CrmEvent": 3, "cx.ComplaintEvent": 4,
    "cx.WebEventBatch": 11, "cx.ChatbotEventBatch": 12, "cx.CrmEventBatch": 13, "cx.ComplaintEventBatch": 14,
    "cx.DeadLetter": 21, "cx.ChurnSignal": 22, "cx.FollowUpAction": 23,
}
_LOAD_ORDER = ["Survey", "WebEvent", "ChatbotEvent", "CrmEvent", "ComplaintEvent", "WebEventBatch",
               "ChatbotEventBatch", "CrmEventBatch", "ComplaintEventBatch", "DeadLetter", "ChurnSignal", "FollowUpAction"]
_SOURCE_OF = {name: source for source, name in EVENT_SCHEMAS.items()} | {name: source for source, name in BATCH_SCHEMAS.items()}


def _strip_logical_types(schema: Any) -> Any:
    """The same schema without logicalType, so timestamp-millis decode to plain int millis (no datetimes)."""
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True)
class RegisteredSchema:
    id: int
    name: str
    schema: dict  # the expanded JSON schema
    parsed: Any  # for encoding
    decoder_parsed: Any  # for decoding: logical types stripped
    source: Optional[str]
    is_batch: bool


def load_bundled() -> dict[str, dict]:
    """Full name -> JSON schema of every bundled .avsc, with named references inlined (self-contained)."""
    raw = {f"cx.{stem}": json.loads((SCHEMA_DIR / f"{stem}.avsc").read_text()) for stem in _LOAD_ORDER}
    return {name: expand_references(schema, raw) for name, schema in raw.items() if name != "cx.Survey"}


def expand_references(schema: dict, raw: dict[str, dict]) -> dict:
    """Replace the first reference to each bundled record by its definition; later ones stay names."""
    defined: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            if node in raw and node not in defined:
                return walk(raw[node])
            return node
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            if node.get("type") == "record":
                defined.add(f"{node.get('namespace', 'cx')}.{node['name']}")
            return {k: walk(v) if k in ("type", "items", "values", "fields") else v for k, v in node.items()}
        return node

    return walk(schema)


def _register(schema_id: int, schema: dict) -> RegisteredSchema:
    name = f"{schema.get('namespace', 'cx')}.{schema['name']}" if "." not in schema["name"] else schema["name"]
    return RegisteredSchema(
        id=schema_id, name=name, schema=schema,
        parsed=fastavro.parse_schema(schema, _write_hint=False),
        decoder_parsed=fastavro.parse_schema(_strip_logical_types(schema), _write_hint=False),
        source=_SOURCE_OF.get(name), is_batch=name.endswith("Batch"),
    )


class SchemaRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, RegisteredSchema] = {}
        self._by_id: dict[int, RegisteredSchema] = {}

    def _add(self, registered: RegisteredSchema) -> None:
        self._by_name.setdefault(registered.name, registered)
        self._by_id[registered.id] = registered

    def by_name(self, name: str) -> RegisteredSchema:
        return self._by_name[name]

    def by_id(self, schema_id: int) -> RegisteredSchema:
        return self._by_id[schema_id]


class BundledRegistry(SchemaRegistry):
    """The schemas shipped in schemas/, with the fixed ids of BUNDLED_IDS."""

    def __init__(self) -> None:
        super().__init__()
        for name, schema in load_bundled().items():
            self._add(_register(BUNDLED_IDS[name], schema))


class ConfluentRegistry(SchemaRegistry):
    """A Confluent-compatible registry: bundled schemas registered on start, unknown ids fetched once."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        super().__init__()
        parsed = urlparse(url)
        self.base = f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}{parsed.path}".rstrip("/")
        self.timeout_s = timeout_s
        self._auth = None
        if parsed.username:
            token = f"{parsed.username}:{parsed.password or ''}".encode()
            self._auth = "Basic " + base64.b64encode(token).decode()
        for name, schema in load_bundled().items():
            body = self._call("POST", f"/subjects/{name}/versions", {"schema": json.dumps(schema)})
            self._add(_register(int(body["id"]), schema))

    def by_id(self, schema_id: int) -> RegisteredSchema:
        try:
            return super().by_id(schema_id)
        except KeyError:
            body = self._call("GET", f"/schemas/ids/{int(schema_id)}")
            schema = json.loads(body["schema"])
            if not isinstance(schema, dict) or schema.get("type") != "record":
                raise KeyError(schema_id) from None
            registered = _register(schema_id, schema)
            self._by_id[schema_id] = registered
            return registered

    def _call(self, method: str, path: str, payload: Optional[dict] = None) -> dict:
        request = urllib.request.Request(
            self.base + path, method=method, data=json.dumps(payload).encode() if payload is not None else None,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json", "Accept": "application/json"})
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                raise KeyError(path) from None
            raise RuntimeError(f"schema registry {self.base} answered {exc.code} to {method} {path}: "
                               f"{exc.read()[:300]!r}") from None
        except OSError as exc:
            raise RuntimeError(f"schema registry {self.base} is unreachable ({exc}); check CXP_SCHEMA_REGISTRY_URL "
                               "or unset it to use the bundled schemas") from None


def make_registry(url: Optional[str]) -> SchemaRegistry:
    return ConfluentRegistry(url) if url else BundledRegistry()
