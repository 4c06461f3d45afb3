"""An Avro writer that is not the project's own: plain fastavro over the .avsc files, the Confluent
header packed by hand. Tests produce their input with it (and kafka-python), so a bug in the
project's codec or producer cannot hide behind a matching bug on the reading side."""
from __future__ import annotations

import io
import json
import struct

import fastavro

from schemas import SCHEMA_DIR

RECORD = {"web": "WebEvent", "chatbot": "ChatbotEvent", "crm": "CrmEvent", "complaints": "ComplaintEvent"}
IDS = {"WebEvent": 1, "ChatbotEvent": 2, "CrmEvent": 3, "ComplaintEvent": 4,
       "WebEventBatch": 11, "ChatbotEventBatch": 12, "CrmEventBatch": 13, "ComplaintEventBatch": 14}


def _load_schemas():
    named: dict = {}
    for name in ["Survey"] + list(RECORD.values()) + [f"{r}Batch" for r in RECORD.values()] + ["DeadLetter"]:
        schema = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        named[name] = fastavro.parse_schema(schema, named_schemas=named)
    return named


SCHEMAS = _load_schemas()


def avro(name: str, record: dict, schema_id: int | None = None) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, IDS[name] if schema_id is None else schema_id))
    fastavro.schemaless_writer(out, SCHEMAS[name], record)
    return out.getvalue()
