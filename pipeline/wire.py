"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, then the Avro binary body.

A message holds one event (the source's event schema) or a batch (``<Source>Batch``: a record whose
``events`` array holds that source's events). Decoding returns plain dicts with timestamps as int epoch
millis, and raises :class:`UndecodableError` with an actionable message for anything that is not exactly
one complete record of a known schema.
"""
from __future__ import annotations

import io
import struct
from typing import NamedTuple, Optional

from fastavro import schemaless_reader, schemaless_writer

from pipeline.avro_reader import Reader, compile_reader
from pipeline.messages import as_avro, schema_name
from pipeline.registry import BATCH_SCHEMAS, EVENT_SCHEMAS, RegisteredSchema, SchemaRegistry

_HEADER = struct.Struct(">BI")
_new_tuple = tuple.__new__


class UndecodableError(ValueError):
    """The message is not a decodable Confluent-framed Avro record (docs/contract.md, Bad input reason ``undecodable``)."""


class Decoded(NamedTuple):
    schema: RegisteredSchema  # the writer's schema
    events: list[dict]
    is_batch: bool


class Codec:
    def __init__(self, registry: SchemaRegistry):
        self.registry = registry
        self._readers: dict[RegisteredSchema, Optional[Reader]] = {}  # None: a schema left to fastavro
        self._schemas: dict[bytes, RegisteredSchema] = {}  # by the 5 header bytes naming it

    def encode(self, schema_name: str, record: dict) -> bytes:
        """``record`` framed under the registry's id for ``schema_name``; timestamps as int millis (or datetimes)."""
        schema = self.registry.by_name(schema_name)
        out = io.BytesIO()
        out.write(_HEADER.pack(0, schema.id))
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def encode_message(self, message: NamedTuple) -> bytes:
        """An output message of :mod:`pipeline.messages`, under its schema ``cx.<class name>``."""
        return self.encode(schema_name(message), as_avro(message))

    def encode_event(self, source: str, event: dict) -> bytes:
        return self.encode(EVENT_SCHEMAS[source], event)

    def encode_batch(self, source: str, events: list[dict]) -> bytes:
        return self.encode(BATCH_SCHEMAS[source], {"events": events})

    def event_body(self, source: str, event: dict) -> bytes:
        """One event's Avro body, unframed: what :meth:`batch_of_bodies` assembles a batch from."""
        out = io.BytesIO()
        schemaless_writer(out, self.registry.by_name(EVENT_SCHEMAS[source]).parsed, event)
        return out.getvalue()

    def batch_of_bodies(self, source: str, bodies: list[bytes]) -> bytes:
        """A framed ``<Source>Batch`` of already encoded event bodies, byte for byte what
        :meth:`encode_batch` writes for those events: Avro writes the array as one block (its item
        count, the items) and a zero count that ends it. Its length is :func:`batch_size`."""
        header = _HEADER.pack(0, self.registry.by_name(BATCH_SCHEMAS[source]).id)
        return b"".join((header, _avro_long(len(bodies)) if bodies else b"", *bodies, b"\x00"))

    def decode(self, data: Optional[bytes]) -> Decoded:
        """The events of one message. A registry that cannot be reached raises SchemaRegistryError instead:
        that is not the message's fault, so it must not be dead-lettered."""
        # A header read before names its schema directly: per message, the checks and the registry lookup
        # cost as much as reading a small event.
        schema = self._schemas.get(data[:_HEADER.size]) if type(data) is bytes else None
        if schema is None:
            schema = self._schema(data)
        record = self._read_fast(schema, data)
        if record is None:
            record = self._read(schema, data)
        # tuple.__new__: a NamedTuple's own constructor is a Python function, a call per message
        if schema.is_batch:
            return _new_tuple(Decoded, (schema, record["events"], True))
        return _new_tuple(Decoded, (schema, [record], False))

    def _schema(self, data: Optional[bytes]) -> RegisteredSchema:
        """The writer's schema named by the message's header, or UndecodableError saying what is wrong."""
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
        except ValueError as exc:
            raise UndecodableError(str(exc)) from None
        self._schemas[bytes(data[:_HEADER.size])] = schema  # a schema id names one schema for good
        return schema

    def _read_fast(self, schema: RegisteredSchema, data: bytes) -> Optional[dict]:
        """The record by the schema's compiled reader (:mod:`pipeline.avro_reader`); None when it has none
        or cannot read these bytes exactly, so that fastavro decides and words the error."""
        try:
            reader = self._readers[schema]
        except KeyError:
            try:
                reader = compile_reader(schema.decoder_parsed)
            except Exception:  # noqa: BLE001 - Unreadable, or a foreign schema shaped unlike any we know
                reader = None
            self._readers[schema] = reader
        if reader is None or type(data) is not bytes:  # a bytearray's slices would not be bytes
            return None
        try:
            record, end = reader(data, _HEADER.size)
        except Exception:  # noqa: BLE001 - any failure of the fast path is fastavro's to judge
            return None
        return record if end == len(data) else None

    @staticmethod
    def _read(schema: RegisteredSchema, data: bytes) -> dict:
        """The record by fastavro, or UndecodableError saying what is wrong with the bytes."""
        schema_id = _HEADER.unpack_from(data)[1]
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, schema.decoder_parsed, None)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes make fastavro raise many kinds of error
            # fastavro signals running out of bytes with EOFError or IndexError, depending on where it was
            problem = "truncated" if isinstance(exc, EOFError) or body.tell() >= len(data) else "corrupt"
            raise UndecodableError(f"{problem} Avro body for {schema.name} (schema id {schema_id}, {len(data)} "
                                   f"bytes): {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise UndecodableError(f"{len(data) - body.tell()} trailing bytes after the {schema.name} body "
                                   f"(schema id {schema_id}): corrupt message, or written with another schema")
        return record


def _avro_long(value: int) -> bytes:
    """Avro's long: zigzag, then little-endian base-128 varint."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def batch_size(count: int, body_bytes: int) -> int:
    """Length of the framed batch of ``count`` event bodies totalling ``body_bytes``."""
    return _HEADER.size + (len(_avro_long(count)) if count else 0) + body_bytes + 1
