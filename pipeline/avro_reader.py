"""Avro binary decoding compiled per schema: the fast path of :meth:`pipeline.wire.Codec.decode`.

fastavro's schemaless reader pulls every varint byte and every string through a ``read`` call on a
file object, so most of its time per event goes to those calls. :func:`compile_reader` turns a
fastavro-parsed schema into one Python function per record type that reads the message's bytes by
position, with the common one-byte varint inline.

It only has to be right where it succeeds: whenever the bytes are not exactly what the schema says
(too short, a union branch or enum index it does not expect, a varint longer than 64 bits, bad
UTF-8...), it raises, and the caller decodes the message again with fastavro, which then decides
what it is and words the error. Where it succeeds its result equals fastavro's: the same dicts with
keys in field order, lists, ints, floats, str and bytes.

The strings of the fields in :data:`INTERNED` are interned (``sys.intern``): one string object per tenant
and per customer id, however many events carry it, so that the metric cores that keep one per customer
(each in its own key or record) share it instead of each keeping the copy its event decoded.
"""
from __future__ import annotations

import struct
import sys
from typing import Any, Callable

_MASK64 = (1 << 64) - 1
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
INTERNED = frozenset(("tenant", "customer_id"))  # string fields (of any record) read as interned strings

Reader = Callable[[bytes, int], tuple[Any, int]]


class Unreadable(Exception):
    """The fast path cannot read these bytes (fastavro decides what they are)."""


def _long(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a zigzag varint whose first byte (with its continuation bit set) was ``first``."""
    n, shift = first & 0x7F, 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise Unreadable("varint longer than 10 bytes")
    n &= _MASK64  # as fastavro's unsigned 64-bit arithmetic
    return (n >> 1) ^ -(n & 1), pos


def _size(data: bytes, pos: int) -> tuple[int, int]:
    """A string's or bytes' length of more than one byte (or negative: left to fastavro)."""
    first = data[pos]
    if first < 0x80:  # one byte, odd: negative
        raise Unreadable("negative length")
    size, pos = _long(data, pos + 1, first)
    if size < 0:
        raise Unreadable("negative length")
    return size, pos


class _Compiler:
    def __init__(self, named: dict[str, Any]):
        self.named = named
        self.globals: dict[str, Any] = {"_long": _long, "_size": _size, "Unreadable": Unreadable, "_intern": sys.intern,
                                        "_float": struct.Struct("<f").unpack_from,
                                        "_double": struct.Struct("<d").unpack_from}
        self.functions: dict[str, str] = {}  # record name -> its function's name
        self.sources: list[str] = []
        self._names = 0

    def fresh(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        name = self.fresh("_c")
        self.globals[name] = value
        return name

    def record_function(self, schema: dict) -> str:
        """The name of the function reading this record type, compiling it on first use."""
        name = schema["name"]
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = self.fresh("_record")
            body: list[str] = []
            values = []
            for field in schema["fields"]:
                value = self.fresh("v")
                self.emit(field["type"], value, body, 1, field["name"] in INTERNED)
                values.append(f"{field['name']!r}: {value}")
            self.sources.append("\n".join([f"def {function}(data, text, pos):", *body,
                                           f"    return {{{', '.join(values)}}}, pos"]))
        return function

    def emit(self, schema: Any, target: str, out: list[str], depth: int, intern: bool = False) -> None:
        """Statements that read one value of ``schema`` at ``pos`` into ``target`` and advance ``pos`` (a string
        interned when ``intern``)."""
        pad = "    " * depth
        if isinstance(schema, list):
            # The branch index as its raw one-byte varint (index i is byte 2i); more than 63 branches or a
            # negative index is left to fastavro.
            if len(schema) > 64:
                raise Unreadable("union of more than 64 branches")
            byte = self.fresh("b")
            out.append(f"{pad}{byte} = data[pos]")
            out.append(f"{pad}pos += 1")
            for number, branch in enumerate(schema):
                out.append(f"{pad}{'if' if number == 0 else 'elif'} {byte} == {2 * number}:")
                self.emit(branch, target, out, depth + 1, intern)
            out.append(f"{pad}else:")
            out.append(f"{pad}    raise Unreadable('union branch')")
            return
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error"):
                out.append(f"{pad}{target}, pos = {self.record_function(schema)}(data, text, pos)")
            elif kind == "enum":
                byte = self.fresh("b")
                out.append(f"{pad}{byte} = data[pos]")
                out.append(f"{pad}if {byte} & 0x81:")  # a negative index or one of more than one byte
                out.append(f"{pad}    raise Unreadable('enum index')")
                out.append(f"{pad}{target} = {self.constant(list(schema['symbols']))}[{byte} >> 1]")
                out.append(f"{pad}pos += 1")
            elif kind == "fixed":
                size = int(schema["size"])
                out.append(f"{pad}{target} = data[pos:pos + {size}]")
                out.append(f"{pad}pos += {size}")
            elif kind == "array":
                self.emit_blocks(schema["items"], None, target, out, depth)
            elif kind == "map":
                self.emit_blocks(schema["values"], "string", target, out, depth)
            elif kind in _PRIMITIVES:
                self.emit(kind, target, out, depth, intern)
            else:
                raise Unreadable(f"type {kind!r}")
            return
        if schema in ("int", "long"):
            byte = self.fresh("b")
            out.append(f"{pad}{byte} = data[pos]")
            out.append(f"{pad}pos += 1")
            out.append(f"{pad}if {byte} < 128:")
            out.append(f"{pad}    {target} = ({byte} >> 1) ^ -({byte} & 1)")
            out.append(f"{pad}else:")
            out.append(f"{pad}    {target}, pos = _long(data, pos, {byte})")
        elif schema in ("string", "bytes"):
            # No bounds check: a slice past the end is short, and leaves ``pos`` past the end, which the
            # caller takes as truncated (every later read there raises IndexError).
            size, byte = self.fresh("n"), self.fresh("b")
            out.append(f"{pad}{byte} = data[pos]")
            out.append(f"{pad}if {byte} & 0x81:")
            out.append(f"{pad}    {size}, pos = _size(data, pos)")
            out.append(f"{pad}else:")
            out.append(f"{pad}    {size} = {byte} >> 1")
            out.append(f"{pad}    pos += 1")
            if schema == "string":
                out.append(f"{pad}{target} = text[pos:pos + {size}]")
                out.append(f"{pad}if not {target}.isascii():")
                out.append(f"{pad}    {target} = data[pos:pos + {size}].decode()")
                if intern:
                    out.append(f"{pad}{target} = _intern({target})")
            else:
                out.append(f"{pad}{target} = data[pos:pos + {size}]")
            out.append(f"{pad}pos += {size}")
        elif schema == "null":
            out.append(f"{pad}{target} = None")
        elif schema == "boolean":
            out.append(f"{pad}{target} = data[pos] != 0")
            out.append(f"{pad}pos += 1")
        elif schema == "float":
            out.append(f"{pad}{target} = _float(data, pos)[0]")
            out.append(f"{pad}pos += 4")
        elif schema == "double":
            out.append(f"{pad}{target} = _double(data, pos)[0]")
            out.append(f"{pad}pos += 8")
        elif isinstance(schema, str) and schema in self.named:
            self.emit(self.named[schema], target, out, depth, intern)
        else:
            raise Unreadable(f"type {schema!r}")

    def emit_blocks(self, items: Any, keys: Any, target: str, out: list[str], depth: int) -> None:
        """An array (``keys`` None) or a map: blocks of a count and that many items, ended by a zero count;
        a negative count is followed by the block's size in bytes."""
        pad = "    " * depth
        count, item, key = self.fresh("k"), self.fresh("w"), self.fresh("q")
        out.append(f"{pad}{target} = {{}}" if keys else f"{pad}{target} = []")
        self.emit("long", count, out, depth)
        out.append(f"{pad}while {count}:")
        out.append(f"{pad}    if {count} < 0:")
        out.append(f"{pad}        {count} = -{count}")
        self.emit("long", self.fresh("s"), out, depth + 2)
        out.append(f"{pad}    for _ in range({count}):")
        if keys:
            self.emit(keys, key, out, depth + 2)
        self.emit(items, item, out, depth + 2)
        out.append(f"{pad}        {target}[{key}] = {item}" if keys else f"{pad}        {target}.append({item})")
        self.emit("long", count, out, depth + 1)


def compile_reader(parsed: dict) -> Reader:
    """``reader(data, pos) -> (record, position after it)`` for a fastavro-parsed record schema. A position
    past the end means the bytes were short. Raises :class:`Unreadable` for a schema it does not cover
    (the caller then keeps to fastavro), and whatever reading raises for bytes it cannot read."""
    if not isinstance(parsed, dict) or parsed.get("type") not in ("record", "error"):
        raise Unreadable("not a record schema")
    compiler = _Compiler(parsed.get("__named_schemas", {}))
    entry = compiler.record_function(parsed)
    namespace = dict(compiler.globals)
    exec(compile("\n\n".join(compiler.sources), f"<avro reader {parsed['name']}>", "exec"), namespace)  # noqa: S102
    function = namespace[entry]

    def reader(data: bytes, pos: int) -> tuple[Any, int]:
        return function(data, data.decode("latin-1"), pos)

    return reader
