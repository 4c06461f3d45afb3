"""Schema changes must stay backward compatible: the current schemas read data written with every released one.

Two guards: the Avro schema-resolution rules applied to the schemas themselves, and records generated for
each released schema, written with it and read back with the current schema as the reader. Both are shown
to fail on breaking changes, so neither can pass vacuously.
"""
import copy
import io

import fastavro
import pytest
from fastavro.utils import generate_many

from pipeline.registry import load_schemas
from schemas import SCHEMA_DIR

PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
              "string": {"bytes"}, "bytes": {"string"}}


def _expanded(schema: dict):
    """Full names everywhere and every named reference replaced by its definition."""
    return fastavro.parse_schema(schema, expand=True, _write_hint=False)


def _type(schema) -> str:
    return "union" if isinstance(schema, list) else schema if isinstance(schema, str) else schema["type"]


def _names(schema: dict) -> set[str]:
    namespace = schema["name"].rpartition(".")[0]
    return {schema["name"]} | {a if "." in a or not namespace else f"{namespace}.{a}" for a in schema.get("aliases", [])}


def incompatibilities(reader, writer, path: str = "$") -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (both expanded); [] when it can.

    The Avro spec's resolution rules, plus one stricter rule: logical types must not change, because the
    pipeline reads timestamps as plain int millis and would silently misread e.g. timestamp-micros.
    """
    if isinstance(writer, list):  # each branch the writer may have chosen must be readable
        return [p for branch in writer for p in incompatibilities(reader, branch, path)]
    if isinstance(reader, list):
        attempts = [incompatibilities(branch, writer, path) for branch in reader]
        if [] in attempts:
            return []
        same_type = [problems for branch, problems in zip(reader, attempts) if _type(branch) == _type(writer)]
        return same_type[0] if same_type else [f"{path}: no branch of the reader's union reads {_type(writer)}"]
    rt, wt = _type(reader), _type(writer)
    if rt != wt:
        return [] if rt in PROMOTIONS.get(wt, ()) else [f"{path}: {wt} cannot be read as {rt}"]
    r_logical = reader.get("logicalType") if isinstance(reader, dict) else None
    w_logical = writer.get("logicalType") if isinstance(writer, dict) else None
    if r_logical != w_logical:
        return [f"{path}: logical type {w_logical} changed to {r_logical}"]
    if rt in ("record", "enum", "fixed") and writer["name"] not in _names(reader):
        return [f"{path}: {writer['name']} renamed to {reader['name']} without an alias"]
    if rt == "record":
        written = {f["name"]: f for f in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            source = next((written[n] for n in [field["name"], *field.get("aliases", [])] if n in written), None)
            if source is not None:
                problems += incompatibilities(field["type"], source["type"], f"{path}.{field['name']}")
            elif "default" not in field:
                problems.append(f"{path}.{field['name']}: new field without a default")
        return problems
    if rt == "enum":
        removed = [s for s in writer["symbols"] if s not in reader["symbols"]]
        return [f"{path}: enum symbols {removed} removed"] if removed and "default" not in reader else []
    if rt == "array":
        return incompatibilities(reader["items"], writer["items"], f"{path}[]")
    if rt == "map":
        return incompatibilities(reader["values"], writer["values"], f"{path}{{}}")
    if rt == "fixed" and reader["size"] != writer["size"]:
        return [f"{path}: fixed size {writer['size']} changed to {reader['size']}"]
    return []


def read_generated(old: dict, new: dict, count: int = 50) -> None:
    """Write random records with ``old``, read each back with ``new`` as the reader schema."""
    writer, reader = fastavro.parse_schema(old), fastavro.parse_schema(new)
    for record in generate_many(writer, count):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer, record)
        out.seek(0)
        fastavro.schemaless_reader(out, writer, reader)
        assert out.tell() == len(out.getvalue())


CURRENT = load_schemas()
RELEASED = [(folder.name, name, schema)
            for folder in sorted(p for p in (SCHEMA_DIR / "released").iterdir() if p.is_dir())
            for name, schema in load_schemas(folder).items()]


def test_every_current_schema_has_been_released():
    assert RELEASED, "schemas/released/ holds no release"
    unreleased = set(CURRENT) - {name for _, name, _ in RELEASED}
    assert not unreleased, f"freeze {sorted(unreleased)} in a new schemas/released/<version>/ folder"


@pytest.mark.parametrize("version,name,old", RELEASED, ids=[f"{v}:{n}" for v, n, _ in RELEASED])
def test_current_reads_released(version, name, old):
    assert name in CURRENT, f"{name} of release {version} was removed: readers of its data would break"
    assert incompatibilities(_expanded(CURRENT[name]), _expanded(old)) == []
    read_generated(old, CURRENT[name])


def _event(name: str, mutate) -> dict:
    schema = copy.deepcopy(CURRENT[name])
    mutate(schema)
    return schema


def _field(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["name"] == name)


def _survey(schema: dict) -> dict:
    return _field(schema, "survey")["type"][1]


BREAKING = {
    "new field without default": lambda s: s["fields"].append({"name": "sla_hours", "type": "int"}),
    "new nested field without default": lambda s: _survey(s)["fields"].append({"name": "scale", "type": "int"}),
    "enum symbol removed": lambda s: _field(s, "event_type")["type"]["symbols"].remove("purchase"),
    "type changed": lambda s: _field(s, "event_id").update(type="int"),
    "long narrowed to int": lambda s: _field(s, "event_time").update(type="int"),
    "nullable made required": lambda s: _field(s, "customer_id").update(type="string", default=""),
    "map values changed": lambda s: _field(s, "attributes").update(type={"type": "map", "values": "long"}),
    "record renamed": lambda s: s.update(name="Visit"),
    "logical type changed": lambda s: _field(s, "event_time").update(
        type={"type": "long", "logicalType": "timestamp-micros"}),
}
COMPATIBLE = {
    "new field with default": lambda s: s["fields"].append({"name": "campaign", "type": ["null", "string"],
                                                            "default": None}),
    "enum symbol added": lambda s: _field(s, "event_type")["type"]["symbols"].append("refund"),
    "field dropped": lambda s: s["fields"].remove(_field(s, "currency")),
    "int promoted to long": lambda s: _field(_survey(s), "score").update(type="long"),
    "required made nullable": lambda s: _field(s, "event_id").update(type=["null", "string"], default=None),
    "renamed with alias": lambda s: s.update(name="Visit", aliases=["WebEvent"]),
}


@pytest.mark.parametrize("change", BREAKING)
def test_the_guard_rejects_breaking_changes(change):
    new = _event("cx.WebEvent", BREAKING[change])
    assert incompatibilities(_expanded(new), _expanded(CURRENT["cx.WebEvent"]))


@pytest.mark.parametrize("change", COMPATIBLE)
def test_the_guard_accepts_compatible_changes(change):
    new = _event("cx.WebEvent", COMPATIBLE[change])
    assert incompatibilities(_expanded(new), _expanded(CURRENT["cx.WebEvent"])) == []
    read_generated(CURRENT["cx.WebEvent"], new, 10)


def test_the_data_check_fails_on_a_breaking_change():
    new = _event("cx.WebEvent", BREAKING["new field without default"])
    with pytest.raises(fastavro.read.SchemaResolutionError):
        read_generated(CURRENT["cx.WebEvent"], new, 1)
