"""Schema registry client: a Confluent-compatible registry when configured, the bundled schemas otherwise.

Schema files: ``schemas/*.avsc`` hold one record each, namespace ``cx``. A record used inside another
(``cx.Survey`` in every event, each event in its ``<Source>Batch``) is referred to by its full name, never
copied, so every type has one definition. :func:`load_schemas` inlines each reference at its first use, which makes every
loaded schema self-contained: what fastavro parses and what a Confluent registry stores.

Every schema is parsed once, when it enters the registry, in two forms: ``parsed`` for encoding (logical
types kept, so datetimes and int millis are both accepted) and ``decoder_parsed`` with the logical types
stripped, so timestamps decode to plain int epoch millis (the pipeline's time unit, and much faster).
"""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, unquote, urlsplit

import fastavro

from schemas import SCHEMA_DIR

SOURCES = ("web", "chatbot", "crm", "complaints")
EVENT_SCHEMAS = {"web": "cx.WebEvent", "chatbot": "cx.ChatbotEvent", "crm": "cx.CrmEvent", "complaints": "cx.ComplaintEvent"}
BATCH_SCHEMAS = {source: f"{name}Batch" for source, name in EVENT_SCHEMAS.items()}

# Ids of the bundled schemas. Never change or reuse one: messages in topics name them.
BUNDLED_IDS = {
    "cx.WebEvent": 1, "cx.ChatbotEvent": 2, "cx.CrmEvent": 3, "cx.ComplaintEvent": 4,
    "cx.WebEventBatch": 11, "cx.ChatbotEventBatch": 12, "cx.CrmEventBatch": 13, "cx.ComplaintEventBatch": 14,
    "cx.DeadLetter": 21, "cx.ChurnSignal": 22, "cx.FollowUpAction": 23,
}
_SOURCE_OF = {name: source for names in (EVENT_SCHEMAS, BATCH_SCHEMAS) for source, name in names.items()}


def full_name(schema: dict) -> str:
    """A named type's full name: "cx.Survey" for name "Survey" in namespace "cx"."""
    name, namespace = schema["name"], schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def load_schemas(folder: Path = SCHEMA_DIR) -> dict[str, dict]:
    """Full name -> self-contained JSON schema of every .avsc in ``folder``."""
    raw = {}
    for path in sorted(folder.glob("*.avsc")):
        schema = json.loads(path.read_text())
        raw[full_name(schema)] = schema
    return {name: _inline_references(schema, raw) for name, schema in raw.items()}


def _inline_references(schema: dict, raw: dict[str, dict]) -> dict:
    """Replace the first reference to each record of ``raw`` by its definition; Avro wants later ones as names."""
    defined: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return walk(raw[node]) if node in raw and node not in defined else node
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            if node.get("type") == "record":
                defined.add(full_name(node))
            return {k: walk(v) if k in ("type", "items", "values", "fields") else v for k, v in node.items()}
        return node

    return walk(schema)


def enum_symbols(record: str, field_name: str) -> tuple[str, ...]:
    """The symbols of an enum field of a bundled record: the schema is the one owner of such a vocabulary."""
    field_schema = next(f for f in load_schemas()[record]["fields"] if f["name"] == field_name)["type"]
    return tuple(field_schema["symbols"])


PRIORITIES = enum_symbols("cx.ComplaintEvent", "priority")  # low, normal, high, urgent


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity (parsed schemas are self-referential)
class RegisteredSchema:
    id: int
    name: str
    schema: dict = field(repr=False)  # the raw, self-contained JSON schema
    parsed: Any = field(repr=False)  # fastavro-parsed, for encoding
    decoder_parsed: Any = field(repr=False)  # fastavro-parsed without logical types, for decoding
    source: Optional[str]  # "web", ... for event and batch schemas
    is_batch: bool

    @classmethod
    def build(cls, schema_id: int, schema: dict) -> "RegisteredSchema":
        name = full_name(schema)
        return cls(id=schema_id, name=name, schema=schema, parsed=fastavro.parse_schema(schema),
                   decoder_parsed=fastavro.parse_schema(_strip_logical_types(schema)),
                   source=_SOURCE_OF.get(name), is_batch=name in BATCH_SCHEMAS.values())


class SchemaRegistry:
    """Schemas by full name (what this program writes) and by id (what a message names)."""

    def __init__(self) -> None:
        self._by_name: dict[str, RegisteredSchema] = {}
        self._by_id: dict[int, RegisteredSchema] = {}

    def _add(self, registered: RegisteredSchema) -> RegisteredSchema:
        self._by_name[registered.name] = self._by_id[registered.id] = registered
        return registered

    def by_name(self, name: str) -> RegisteredSchema:
        return self._by_name[name]

    def by_id(self, schema_id: int) -> RegisteredSchema:
        return self._by_id[schema_id]


class BundledRegistry(SchemaRegistry):
    """The schemas shipped in schemas/, under the fixed ids of BUNDLED_IDS."""

    def __init__(self) -> None:
        super().__init__()
        schemas = load_schemas()
        for name, schema_id in BUNDLED_IDS.items():
            self._add(RegisteredSchema.build(schema_id, schemas[name]))


class SchemaRegistryError(RuntimeError):
    """The registry could not be used (unreachable, refused, rejected a schema): not the message's fault."""


class ConfluentRegistry(SchemaRegistry):
    """A Confluent-compatible registry over its REST API.

    A bundled schema is registered on first use under its full record name (RecordNameStrategy: one topic
    carries both event and batch schemas) and the registry's id is used. Unknown ids are fetched, so messages
    of other producers' newer compatible schemas decode with their writer schema; ids the registry does not
    know are remembered for ``miss_ttl_s`` so garbage with random ids does not flood it with requests.
    """

    def __init__(self, url: str, timeout_s: float = 10.0, auth: Optional[str] = None, miss_ttl_s: float = 60.0):
        """Credentials: ``auth`` ("user:password") or the URL's userinfo (CXP_SCHEMA_REGISTRY_URL from the environment)."""
        super().__init__()
        parts = urlsplit(url)
        self.url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")  # no credentials
        if parts.username is not None:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        self._auth = "Basic " + base64.b64encode(auth.encode()).decode() if auth else None
        self.timeout_s, self.miss_ttl_s = timeout_s, miss_ttl_s
        self._bundled = load_schemas()
        self._missing: dict[int, float] = {}  # id -> monotonic time until which it counts as unknown

    def by_name(self, name: str) -> RegisteredSchema:
        registered = self._by_name.get(name)
        if registered is None:
            schema = self._bundled[name]
            body = self._call("POST", f"/subjects/{quote(name, safe='')}/versions", {"schema": json.dumps(schema)})
            registered = self._add(RegisteredSchema.build(int(body["id"]), schema))
        return registered

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """Raises KeyError for an id the registry does not know, ValueError for a schema that is not an Avro record."""
        registered = self._by_id.get(schema_id)
        if registered is not None:
            return registered
        if self._missing.get(schema_id, 0.0) > time.monotonic():
            raise KeyError(schema_id)
        try:
            body = self._call("GET", f"/schemas/ids/{int(schema_id)}")
        except KeyError:
            self._missing[schema_id] = time.monotonic() + self.miss_ttl_s
            raise KeyError(schema_id) from None
        if body.get("schemaType", "AVRO") != "AVRO":
            raise ValueError(f"schema id {schema_id} is a {body['schemaType']} schema, not Avro")
        try:
            schema = json.loads(body["schema"])
            if not isinstance(schema, dict) or schema.get("type") != "record":
                raise ValueError("not a record schema")
            registered = RegisteredSchema.build(schema_id, schema)
        except Exception as exc:  # noqa: BLE001 - whatever a foreign schema does wrong, it is unusable
            raise ValueError(f"schema id {schema_id} from {self.url} is unusable: {exc}") from None
        self._by_id[schema_id] = registered  # not by name: by_name is for what this program writes
        return registered

    def _call(self, method: str, path: str, payload: Optional[dict] = None) -> dict:
        """One REST call. A GET answered 404 raises KeyError; any other failure SchemaRegistryError."""
        request = urllib.request.Request(
            self.url + path, method=method, data=None if payload is None else json.dumps(payload).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json", "Accept": "application/json"})
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                raise KeyError(path) from None
            detail = exc.read()[:300].decode("utf-8", "replace")
            hint = {401: "check the credentials (user:password@ in CXP_SCHEMA_REGISTRY_URL)",
                    403: "the credentials lack permission for this subject",
                    409: "the schema is incompatible with the versions registered under this subject"}.get(exc.code, "")
            raise SchemaRegistryError(f"schema registry {self.url} answered {exc.code} to {method} {path}: {detail}"
                                      + (f"; {hint}" if hint else "")) from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, a body that is not JSON
            raise SchemaRegistryError(
                f"schema registry {self.url} is unreachable or not a schema registry ({exc}); check "
                "CXP_SCHEMA_REGISTRY_URL, or unset it to use the bundled schemas") from None


def make_registry(url: Optional[str]) -> SchemaRegistry:
    """The Confluent registry at ``url``; the bundled schemas when ``url`` is None or empty."""
    return ConfluentRegistry(url) if url else BundledRegistry()
