"""Schema changes must stay backward compatible: the current schemas read data written with every released one.

Two checks: the Avro schema-resolution rules applied to the schemas themselves, and records generated
for each released schema, written with it and read back with the current one as reader.
"""
import copy
import io
import json
from pathlib import Path

import fastavro
import pytest
from fastavro.utils import generate_many

from pipeline.registry import expand_references, load_bundled
from schemas import SCHEMA_DIR

PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
              "string": {"bytes"}, "bytes": {"string"}}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _name(schema: dict, namespace: str) -> str:
    return schema["name"] if "." in schema["name"] else f"{schema.get('namespace', namespace)}.{schema['name']}"


def incompatibilities(reader, writer, path="", names=None, namespace="cx") -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (Avro spec, schema resolution)."""
    names = {} if names is None else names
    reader, writer = _resolve(reader, names, namespace), _resolve(writer, names, namespace)
    if isinstance(writer, list):
        return [p for branch in writer for p in incompatibilities(reader, branch, path, names, namespace)]
    if isinstance(reader, list):
        options = [incompatibilities(r, writer, path, names, namespace) for r in reader]
        return [] if any(not o for o in options) else [f"{path}: no union branch of the reader takes {_type(writer)}"]
    rt, wt = _type(reader), _type(writer)
    if rt != wt:
        return [] if rt in PROMOTIONS.get(wt, ()) else [f"{path}: {wt} cannot be read as {rt}"]
    if rt == "record":
        problems = []
        if _name(reader, namespace) != _name(writer, namespace) and _name(writer, namespace) not in reader.get("aliases", []):
            problems.append(f"{path}: record {_name(writer, namespace)} renamed to {_name(reader, namespace)}")
        written = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            source = written.get(field["name"]) or next((written[a] for a in field.get("aliases", []) if a in written), None)
            if source is None:
                if "default" not in field:
                    problems.append(f"{path}.{field['name']}: new field without a default")
            else:
                problems += incompatibilities(field["type"], source["type"], f"{path}.{field['name']}", names, namespace)
        return problems
    if rt == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        return [f"{path}: enum symbols {sorted(missing)} removed"] if missing and "default" not in reader else []
    if rt == "array":
        return incompatibilities(reader["items"], writer["items"], f"{path}[]", names, namespace)
    if rt == "map":
        return incompatibilities(reader["values"], writer["values"], f"{path}{{}}", names, namespace)
    if rt == "fixed" and reader["size"] != writer["size"]:
        return [f"{path}: fixed size changed"]
    return []


def _type(schema) -> str:
    return schema if isinstance(schema, str) else schema["type"] if isinstance(schema, dict) else "union"


def _resolve(schema, names, namespace):
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) and "name" not in schema:
        schema = schema["type"]  # {"type": {...}} wrapper
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        names.setdefault(_name(schema, namespace), schema)
    if isinstance(schema, str) and schema not in PRIMITIVES:
        return names[schema if "." in schema else f"{namespace}.{schema}"]
    return schema


def released() -> list[tuple[str, str, dict]]:
    out = []
    for folder in sorted((SCHEMA_DIR / "released").iterdir()):
        if folder.is_dir():
            raw = {f"cx.{p.stem}": json.loads(p.read_text()) for p in folder.glob("*.avsc")}
            out += [(folder.name, name, expand_references(schema, raw)) for name, schema in raw.items() if name != "cx.Survey"]
    return out


CURRENT = load_bundled()
RELEASED = released()


def test_every_release_is_checked():
    assert {name for _, name, _ in RELEASED} == set(CURRENT), "every current schema needs a released version"


@pytest.mark.parametrize("version,name,old", RELEASED, ids=[f"{v}:{n}" for v, n, _ in RELEASED])
def test_current_reads_released(version, name, old):
    assert incompatibilities(CURRENT[name], old) == []
    writer, reader = fastavro.parse_schema(old), fastavro.parse_schema(CURRENT[name])
    for record in generate_many(writer, 50):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer, record)
        out.seek(0)
        fastavro.schemaless_reader(out, writer, reader)


def _changed(mutate):
    schema = copy.deepcopy(CURRENT["cx.ComplaintEvent"])
    mutate(schema)
    return incompatibilities(schema, CURRENT["cx.ComplaintEvent"])


def test_the_guard_rejects_breaking_changes():
    assert _changed(lambda s: s["fields"].append({"name": "sla_hours", "type": "int"}))  # no default
    assert _changed(lambda s: s["fields"][1]["type"]["symbols"].remove("reopened"))  # enum symbol removed
    assert _changed(lambda s: s["fields"][0].update(type="int"))  # event_id string -> int
    assert _changed(lambda s: s.update(name="Grievance"))  # renamed without alias


def test_the_guard_accepts_compatible_changes():
    assert not _changed(lambda s: s["fields"].append({"name": "sla_hours", "type": ["null", "int"], "default": None}))
    assert not _changed(lambda s: s["fields"][1]["type"]["symbols"].append("merged"))
    assert not _changed(lambda s: s["fields"].pop(-1))  # a reader may drop a field
