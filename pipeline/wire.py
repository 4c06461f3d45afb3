"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, then the Avro binary body.

Decoding returns plain dicts with timestamps as int epoch millis (the decoder schemas have their
logical types stripped), and raises :class:`UndecodableError` with an actionable message for
anything that is not a complete record of a known schema.
"""
from __future__ import annotations

import io
import struct
from typing import NamedTuple, Optional

from fastavro import schemaless_reader, schemaless_writer

from pipeline.registry import BATCH_SCHEMAS, EVENT_SCHEMAS, RegisteredSchema, SchemaRegistry

_HEADER = struct.Struct(">bI")


class UndecodableError(ValueError):
    pass


class Decoded(NamedTuple):
    schema: RegisteredSchema
    events: list[dict]
    is_batch: bool


class Codec:
    def __init__(self, registry: SchemaRegistry):
        self.registry = registry

    def encode(self, schema_name: str, record: dict) -> bytes:
        schema = self.registry.by_name(schema_name)
        out = io.BytesIO()
        out.write(_HEADER.pack(0, schema.id))
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def encode_event(self, source: str, event: dict) -> bytes:
        return self.encode(EVENT_SCHEMAS[source], event)

    def encode_batch(self, source: str, events: list[dict]) -> bytes:
        return self.encode(BATCH_SCHEMAS[source], {"events": events})

    def decode(self, data: Optional[bytes]) -> Decoded:
        if not data:
            raise UndecodableError("empty message value (a tombstone?): expected Confluent-framed Avro")
        if data[0] != 0:
            hint = "; is the producer sending JSON?" if data[:1] in (b"{", b"[") else ""
            raise UndecodableError(f"bad magic byte 0x{data[0]:02x} (expected 0x00): not Confluent wire format{hint}")
        if len(data) < _HEADER.size:
            raise UndecodableError(f"message of {len(data)} bytes is shorter than the 5-byte wire-format header")
        schema_id = _HEADER.unpack_from(data)[1]
        try:
            schema = self.registry.by_id(schema_id)
        except KeyError:
            raise UndecodableError(f"unknown schema id {schema_id}: not in the schema registry") from None
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, schema.decoder_parsed, None)
        except (EOFError, StopIteration):
            raise UndecodableError(f"truncated Avro body for {schema.name} (schema id {schema_id})") from None
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
            raise UndecodableError(f"corrupt Avro body for {schema.name} (schema id {schema_id}): {exc!r}") from None
        if body.tell() != len(data):
            raise UndecodableError(f"{len(data) - body.tell()} trailing bytes after the {schema.name} body: corrupt message")
        if schema.is_batch:
            return Decoded(schema, record["events"], True)
        return Decoded(schema, [record], False)
