"""A small protocol-buffers (proto3) codec: the wire format and declared messages.

Enough for V2Ray's API messages (:mod:`raybridge.api.messages`): varints (``uint32``,
``uint64``, ``int64``, ``bool``, enums), length-delimited fields (``string``, ``bytes``,
sub-messages, ``map<string, string>``), repeated fields (varints packed, as proto3 writes
them, and read packed or not), and skipping the fields and wire types a message does not
declare (fixed32/fixed64 included), as any protobuf reader does. Groups (wire types 3 and
4, proto2 only) and anything malformed raise :class:`ProtobufError`.

A message is a dataclass listing its fields once::

    @dataclass
    class Stat(Message):
        FIELDS = (Field(1, "name", STRING), Field(2, "value", INT64))
        name: str = ""
        value: int = 0

    Stat(name="x", value=3).encode() == b"\\n\\x01x\\x10\\x03"

As in proto3, fields at their default value are not written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "BOOL",
    "BYTES",
    "INT64",
    "MAP",
    "MESSAGE",
    "STRING",
    "UINT32",
    "UINT64",
    "Field",
    "Message",
    "ProtobufError",
    "decode_varint",
    "encode_varint",
]


class ProtobufError(ValueError):
    """Bytes that are not a valid encoding of the message asked for."""


# Field kinds.
UINT32 = "uint32"
UINT64 = "uint64"
INT64 = "int64"
BOOL = "bool"
STRING = "string"
BYTES = "bytes"
MESSAGE = "message"
MAP = "map"  # map<string, string>
_VARINTS = frozenset({UINT32, UINT64, INT64, BOOL})
_LIMITS = {UINT32: 1 << 32, UINT64: 1 << 64}

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)
_MAX_DEPTH = 32


def encode_varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64; callers wrap negative int64s) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for varints and fixed
    fields, a memoryview for length-delimited ones."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0 or number >= 1 << 29:
            raise ProtobufError(f"invalid field number {number}")
        value: Any
        if wire == VARINT:
            value, pos = decode_varint(view, pos)
        elif wire == LENGTH:
            size, pos = decode_varint(view, pos)
            if size > end - pos:
                raise ProtobufError(f"field {number}: {size} bytes announced, {end - pos} left")
            value, pos = view[pos : pos + size], pos + size
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if width > end - pos:
                raise ProtobufError(f"field {number}: truncated fixed{width * 8}")
            value, pos = int.from_bytes(view[pos : pos + width], "little"), pos + width
        else:
            raise ProtobufError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


@dataclass(frozen=True, slots=True)
class Field:
    """One declared field: its number, the dataclass attribute, its kind, whether it is
    ``repeated``, and the message class for ``MESSAGE`` fields."""

    number: int
    name: str
    kind: str
    repeated: bool = False
    message: type[Message] | None = None


M = TypeVar("M", bound="Message")


class Message:
    """Base of the declared messages (dataclasses with a ``FIELDS`` table)."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()
    #: The full proto name, for ``TypedMessage.type`` (e.g. ``v2ray.core.proxy.socks.Account``).
    TYPE: ClassVar[str] = ""

    def encode(self) -> bytes:
        out = bytearray()
        for field in self.FIELDS:
            value = getattr(self, field.name)
            if field.kind == MAP:
                for key in value:
                    entry = _string(1, key) + _string(2, value[key])
                    out += _key(field.number, LENGTH) + encode_varint(len(entry)) + entry
            elif field.repeated:
                if field.kind in _VARINTS:
                    if value:
                        packed = b"".join(encode_varint(_wrap(v)) for v in value)
                        out += _key(field.number, LENGTH) + encode_varint(len(packed)) + packed
                else:
                    for item in value:
                        out += _one(field, item)
            elif value is not None and (value or field.kind == MESSAGE):
                out += _one(field, value)
        return bytes(out)

    @classmethod
    def decode(cls: type[M], data: bytes | memoryview, depth: int = 0) -> M:
        """The message in ``data``; :class:`ProtobufError` if it is not one."""
        if depth > _MAX_DEPTH:
            raise ProtobufError("messages nested too deep")
        by_number = {f.number: f for f in cls.FIELDS}
        values: dict[str, Any] = {}
        for number, wire, raw in _fields(data):
            field = by_number.get(number)
            if field is None:
                continue  # unknown fields are skipped, as proto3 readers do
            if field.kind == MAP:
                key, item = _map_entry(field, wire, raw)
                values.setdefault(field.name, {})[key] = item
            elif field.repeated and field.kind in _VARINTS and wire == LENGTH:
                items = values.setdefault(field.name, [])
                pos, view = 0, raw
                while pos < len(view):
                    number_value, pos = decode_varint(view, pos)
                    items.append(_scalar(field, number_value))
            elif field.repeated:
                values.setdefault(field.name, []).append(_value(field, wire, raw, depth))
            else:
                values[field.name] = _value(field, wire, raw, depth)
        return cls(**values)


def _key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _string(number: int, text: str) -> bytes:
    data = text.encode()
    return _key(number, LENGTH) + encode_varint(len(data)) + data


def _wrap(value: int | bool) -> int:
    return int(value) & 0xFFFFFFFFFFFFFFFF  # int64: two's complement in 10 bytes


def _one(field: Field, value: Any) -> bytes:
    if field.kind in _VARINTS:
        return _key(field.number, VARINT) + encode_varint(_wrap(value))
    data: bytes = bytes(value) if field.kind == BYTES else value.encode()
    return _key(field.number, LENGTH) + encode_varint(len(data)) + data


def _scalar(field: Field, value: int) -> int | bool:
    if field.kind == BOOL:
        return value != 0
    if field.kind == INT64:
        return value - (1 << 64) if value >= 1 << 63 else value
    return value & (_LIMITS[field.kind] - 1)  # a uint32 written wide is truncated, as Go does


def _value(field: Field, wire: int, raw: Any, depth: int) -> Any:
    expected = VARINT if field.kind in _VARINTS else LENGTH
    if wire != expected:
        raise ProtobufError(f"field {field.number} ({field.name}): wire type {wire}")
    if field.kind in _VARINTS:
        return _scalar(field, raw)
    if field.kind == STRING:
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise ProtobufError(f"field {field.number} ({field.name}): not UTF-8") from None
    if field.kind == BYTES:
        return bytes(raw)
    assert field.message is not None
    return field.message.decode(raw, depth + 1)


def _map_entry(field: Field, wire: int, raw: Any) -> tuple[str, str]:
    if wire != LENGTH:
        raise ProtobufError(f"field {field.number} ({field.name}): wire type {wire}")
    key = value = ""
    entry = Field(0, "", STRING)
    for number, entry_wire, item in _fields(raw):
        if number in (1, 2):
            text = _value(entry, entry_wire, item, 0)
            if number == 1:
                key = text
            else:
                value = text
    return key, value
