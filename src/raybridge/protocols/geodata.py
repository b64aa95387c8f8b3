"""V2Ray's ``geoip.dat`` and ``geosite.dat``: a reader and a writer (docs/protocols.md 4.11).

Both files are one protobuf message (``app/router/config.proto``)::

    GeoIPList   { repeated GeoIP   entry = 1; }
    GeoIP       { string country_code = 1; repeated CIDR cidr = 2; }
    CIDR        { bytes ip = 1;  uint32 prefix = 2; }          ip: 4 or 16 bytes
    GeoSiteList { repeated GeoSite entry = 1; }
    GeoSite     { string country_code = 1; repeated Domain domain = 2; }
    Domain      { Type type = 1; string value = 2; repeated Attribute attribute = 3; }
                  Type: Plain 0 (substring), Regex 1, Domain 2 (name or subdomain), Full 3
    Attribute   { string key = 1; oneof { bool bool_value = 2; int64 int_value = 3; } }

On the wire a message is a sequence of fields, each ``key`` (a varint: field number << 3 |
wire type) and a value: wire type 0 a varint, 2 a varint length then that many bytes (a
string, bytes or a nested message), 1 and 5 eight and four fixed bytes.

Why a reader of our own rather than the ``protobuf`` package: only these few messages are
read, and only part of a file. :func:`index_entries` walks the list's entries by their
length prefixes and reads each entry's ``country_code`` (its first field, as every encoder
writes it), so the lists a config does not name are skipped without being decoded, where
``protobuf`` would parse the whole file (tens of MB of objects for a full geosite.dat)
before we could pick one list; it would also be a compiled dependency and a generated
module for five messages. The reader works on anything indexable as bytes (``bytes``,
``mmap``), so a file can be mapped and only the pages of the lists read are touched.

The reader follows proto3's rules where they matter: fields in any order, unknown fields
(wire types 0, 1, 2, 5) skipped, a repeated scalar's last value wins; groups (wire types 3
and 4, unused since proto2) are refused, as are truncated fields, over-long varints and
strings that are not UTF-8. Where an entry names its ``country_code`` twice, the first is
used. Bad input raises :class:`GeoDataError` and nothing else. The writer produces what
Go's encoder does: fields in number order, proto3 defaults left out, a ``oneof`` value
always written once set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol, SupportsIndex, overload

from raybridge.errors import RemoteProtocolError

PLAIN, REGEX, DOMAIN, FULL = 0, 1, 2, 3
DOMAIN_TYPES = {PLAIN: "plain", REGEX: "regex", DOMAIN: "domain", FULL: "full"}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class GeoDataError(RemoteProtocolError):
    """A ``.dat`` file that is not a well-formed GeoIPList / GeoSiteList."""


class Buffer(Protocol):
    """What the reader needs of its input: ``bytes``, ``bytearray`` and ``mmap`` have it."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, index: SupportsIndex, /) -> int: ...

    @overload
    def __getitem__(self, index: slice, /) -> bytes: ...


class CIDR(NamedTuple):
    ip: bytes  # 4 or 16 bytes
    prefix: int


class GeoIP(NamedTuple):
    code: str
    cidrs: list[CIDR]


class Attribute(NamedTuple):
    key: str
    value: bool | int | None = None  # bool_value, int_value, or neither set


class Domain(NamedTuple):
    type: int  # PLAIN, REGEX, DOMAIN or FULL (another number is kept as read)
    value: str
    attributes: tuple[Attribute, ...] = ()


class GeoSite(NamedTuple):
    code: str
    domains: list[Domain]


Span = tuple[int, int]  # [start, end) of a message's body in the buffer


# ---------------------------------------------------------------------------- reading


def _varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise GeoDataError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if shift == 63 and byte > 1:
                raise GeoDataError("varint longer than 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise GeoDataError("varint longer than 10 bytes")


def _field(data: Buffer, pos: int, end: int) -> tuple[int, int, int, int]:
    """The field at ``pos`` of a message body ending at ``end``: ``(field number, wire
    type, value, position after)``; for wire types 1, 2 and 5 the value is the start of
    its bytes, which end at the position after. One-byte keys and lengths (every field
    number here, strings under 128 bytes) take the short path."""
    key = data[pos]
    if key < 0x80:
        pos += 1
    else:
        key, pos = _varint(data, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise GeoDataError("field number 0")
    if wire == _BYTES:
        length = data[pos] if pos < end else 0x80
        if length < 0x80:
            pos += 1
        else:
            length, pos = _varint(data, pos, end)
        if length > end - pos:
            raise GeoDataError(f"field {number}: {length} bytes announced, {end - pos} left")
        return number, wire, pos, pos + length
    if wire == _VARINT:
        value, after = _varint(data, pos, end)
        return number, wire, value, after
    if wire in (_FIXED64, _FIXED32):
        size = 8 if wire == _FIXED64 else 4
        if size > end - pos:
            raise GeoDataError(f"field {number}: truncated fixed-size value")
        return number, wire, pos, pos + size
    raise GeoDataError(f"field {number}: unsupported wire type {wire}")


def _fields(data: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Each field of the message body ``[start, end)``, as :func:`_field` reads it."""
    pos = start
    while pos < end:
        field = _field(data, pos, end)
        yield field
        pos = field[3]


def _expect(number: int, wire: int, want: int) -> None:
    if wire != want:
        raise GeoDataError(f"field {number}: wire type {wire}, expected {want}")


def _text(data: Buffer, start: int, end: int) -> str:
    try:
        return data[start:end].decode()
    except UnicodeDecodeError:
        raise GeoDataError("a string that is not UTF-8") from None


def index_entries(data: Buffer) -> dict[str, Span]:
    """The entries of a GeoIPList or GeoSiteList by upper-cased ``country_code``: the span
    of each entry's body. Only the entries' codes are read; V2Ray compares codes without
    case and takes the first entry that matches, so the first wins here too."""
    index: dict[str, Span] = {}
    for span in _entries(data):
        index.setdefault(_code(data, span).upper(), span)
    return index


def read_cidrs(data: Buffer, span: Span) -> Iterator[CIDR]:
    """The CIDRs of one GeoIP entry (IPs are not checked here: see the matcher)."""
    pos, end = span
    while pos < end:
        number, wire, start, pos = _field(data, pos, end)
        if number != 2:
            continue
        _expect(number, wire, _BYTES)
        ip = b""
        prefix = 0
        inner_pos = start
        while inner_pos < pos:
            inner, inner_wire, value, inner_pos = _field(data, inner_pos, pos)
            if inner == 1:
                _expect(inner, inner_wire, _BYTES)
                ip = data[value:inner_pos]
            elif inner == 2:
                _expect(inner, inner_wire, _VARINT)
                prefix = value & 0xFFFFFFFF  # uint32: the low 32 bits, as Go keeps them
        yield CIDR(ip, prefix)


def _attribute(data: Buffer, start: int, end: int) -> Attribute:
    key = ""
    value: bool | int | None = None
    for number, wire, raw, after in _fields(data, start, end):
        if number == 1:
            _expect(number, wire, _BYTES)
            key = _text(data, raw, after)
        elif number == 2:
            _expect(number, wire, _VARINT)
            value = raw != 0
        elif number == 3:
            _expect(number, wire, _VARINT)
            value = raw - (1 << 64) if raw >= 1 << 63 else raw  # int64, two's complement
    return Attribute(key, value)


def read_domains(data: Buffer, span: Span) -> Iterator[Domain]:
    """The domains of one GeoSite entry, with their attributes. (The hot loop of loading
    a big list: plain loops over :func:`_field`, no generator per message.)"""
    pos, end = span
    while pos < end:
        if data[pos] == 0x12 and pos + 1 < end and data[pos + 1] < 0x80:
            start = pos + 2  # a domain (field 2) under 128 bytes: the usual case
            pos = start + data[pos + 1]
            if pos > end:
                raise GeoDataError(f"field 2: {pos - start} bytes announced, {end - start} left")
        else:
            number, wire, start, pos = _field(data, pos, end)
            if number != 2:
                continue
            _expect(number, wire, _BYTES)
        # What Go writes for a domain without attributes: [08 type] 12 len value.
        head = start + 2 if pos - start > 2 and data[start] == 0x08 else start
        if (
            head < pos - 1
            and data[head] == 0x12
            and data[head + 1] < 0x80
            and head + 2 + data[head + 1] == pos
        ):
            kind = data[start + 1] if head > start else 0
            if kind < 0x80:
                yield Domain(kind, _text(data, head + 2, pos), ())
                continue
        kind = 0
        value = ""
        attributes: list[Attribute] = []
        inner_pos = start
        while inner_pos < pos:
            inner, inner_wire, raw, inner_pos = _field(data, inner_pos, pos)
            if inner == 2:
                _expect(inner, inner_wire, _BYTES)
                value = _text(data, raw, inner_pos)
            elif inner == 1:
                _expect(inner, inner_wire, _VARINT)
                kind = raw & 0xFFFFFFFF  # an enum is an int32 on the wire
                if kind >= 1 << 31:
                    kind -= 1 << 32
            elif inner == 3:
                _expect(inner, inner_wire, _BYTES)
                attributes.append(_attribute(data, raw, inner_pos))
        yield Domain(kind, value, tuple(attributes))


def _code(data: Buffer, span: Span) -> str:
    code = ""
    for number, wire, start, end in _fields(data, *span):
        if number == 1:
            _expect(number, wire, _BYTES)
            code = _text(data, start, end)
            break
    return code


def _entries(data: Buffer) -> Iterator[Span]:
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number == 1:
            _expect(number, wire, _BYTES)
            yield start, end


def read_geoip_list(data: Buffer) -> list[GeoIP]:
    """Every entry of a GeoIPList, decoded (tests and tools; the router uses the index)."""
    return [GeoIP(_code(data, s), list(read_cidrs(data, s))) for s in _entries(data)]


def read_geosite_list(data: Buffer) -> list[GeoSite]:
    """Every entry of a GeoSiteList, decoded."""
    return [GeoSite(_code(data, s), list(read_domains(data, s))) for s in _entries(data)]


# ---------------------------------------------------------------------------- writing


def _put_varint(out: bytearray, value: int) -> None:
    value &= (1 << 64) - 1
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, number: int, value: bytes) -> None:
    _put_varint(out, number << 3 | _BYTES)
    _put_varint(out, len(value))
    out += value


def _put_uint(out: bytearray, number: int, value: int) -> None:
    _put_varint(out, number << 3 | _VARINT)
    _put_varint(out, value)


def _cidr(cidr: CIDR) -> bytes:
    out = bytearray()
    if cidr.ip:
        _put_bytes(out, 1, cidr.ip)
    if cidr.prefix:
        _put_uint(out, 2, cidr.prefix)
    return bytes(out)


def _domain(domain: Domain) -> bytes:
    out = bytearray()
    if domain.type:
        _put_uint(out, 1, domain.type)
    if domain.value:
        _put_bytes(out, 2, domain.value.encode())
    for attribute in domain.attributes:
        body = bytearray()
        if attribute.key:
            _put_bytes(body, 1, attribute.key.encode())
        if isinstance(attribute.value, bool):
            _put_uint(body, 2, int(attribute.value))
        elif attribute.value is not None:
            _put_uint(body, 3, attribute.value)
        _put_bytes(out, 3, bytes(body))
    return bytes(out)


def _entry(code: str, items: Iterable[bytes]) -> bytes:
    out = bytearray()
    if code:
        _put_bytes(out, 1, code.encode())
    for item in items:
        _put_bytes(out, 2, item)
    return bytes(out)


def write_geoip_list(entries: Iterable[GeoIP]) -> bytes:
    """A GeoIPList, as V2Ray's tools write ``geoip.dat``."""
    out = bytearray()
    for entry in entries:
        _put_bytes(out, 1, _entry(entry.code, map(_cidr, entry.cidrs)))
    return bytes(out)


def write_geosite_list(entries: Iterable[GeoSite]) -> bytes:
    """A GeoSiteList, as V2Ray's tools write ``geosite.dat``."""
    out = bytearray()
    for entry in entries:
        _put_bytes(out, 1, _entry(entry.code, map(_domain, entry.domains)))
    return bytes(out)
