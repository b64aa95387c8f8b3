"""The reverse proxy's control channel: the ``Control`` message (docs/protocols.md 3.3).

The portal (mux client) opens session 1 of every tunnel as a UDP session to
``reverse.internal.v2ray.com:0`` and sends one ``Control`` message per frame every 2 s; the
bridge (mux server) reads them and only uses ``state``. Wire layout of the message
(``app/reverse/config.proto``, proto3, fields in the order Go writes them)::

    [ 08 <varint state> ]                    field 1, varint; omitted when ACTIVE (0)
    [ 9a 06 <varint len> <random bytes> ]    field 99, length-delimited; omitted when empty

    ACTIVE, random 010203  ->  9a 06 03 01 02 03
    DRAIN,  random 010203  ->  08 01 9a 06 03 01 02 03
    ACTIVE, no random      ->  (zero bytes: V2Ray drops the empty write, nothing is sent)

The decoder is a small hand-written protobuf wire parser rather than the ``protobuf``
package: the message has two fields, only one of which matters, and a large dependency (and
generated code) for that is not worth it. It follows golang/protobuf 1.3's table unmarshaler,
which V2Ray 4.34 uses: varints of at most 10 bytes, unknown fields (and known fields with the
wrong wire type) skipped, groups skipped to their unpaired end tag, field number 0 skipped
like any unknown field; truncation, wire types 6 and 7 and a stray end-group tag are errors.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from raybridge.address import Destination, Network
from raybridge.errors import RemoteProtocolError
from raybridge.protocols.protobuf import encode_varint

__all__ = [
    "CONTROL_DOMAIN",
    "CONTROL_DOMAINS",
    "CONTROL_TARGET",
    "MAX_PADDING",
    "ControlError",
    "ControlState",
    "decode_control",
    "encode_control",
    "heartbeat",
    "is_control_target",
]

#: The control session's domain as V2Ray 4.34 writes it (docs/protocols.md 3.3).
CONTROL_DOMAIN = "reverse.internal.v2ray.com"
#: What a bridge accepts: 4.34's domain and the one of v2fly 4.35+ and Xray.
CONTROL_DOMAINS = frozenset({CONTROL_DOMAIN, "reverse.internal.v2fly.org"})
#: Target of the control session's New frame: UDP, so every Control message is one frame.
CONTROL_TARGET = Destination(Network.UDP, CONTROL_DOMAIN, 0)
#: A heartbeat carries 0..MAX_PADDING random bytes (V2Ray: ``dice.Roll(64)``).
MAX_PADDING = 63

_KEY_STATE = 0x08  # field 1, wire type 0
_KEY_RANDOM = b"\x9a\x06"  # field 99, wire type 2
_MAX_VARINT = 10


class ControlState(IntEnum):
    """``Control.State`` (docs/protocols.md 3.3): a bridge opens no new work on a DRAIN tunnel."""

    ACTIVE = 0
    DRAIN = 1


class ControlError(RemoteProtocolError):
    """A Control message that is not valid protobuf."""


def is_control_target(target: Destination) -> bool:
    """Whether a New frame opens the control session (any network and port, like V2Ray)."""
    return isinstance(target.host, str) and target.host in CONTROL_DOMAINS


def encode_control(state: ControlState, random: bytes) -> bytes:
    """Serialize as Go's proto3 marshaller does: zero and empty fields omitted."""
    parts: list[bytes] = []
    if state != ControlState.ACTIVE:
        parts.append(bytes((_KEY_STATE,)) + encode_varint(int(state)))
    if random:
        parts.append(_KEY_RANDOM + encode_varint(len(random)) + bytes(random))
    return b"".join(parts)


def heartbeat(urandom: Callable[[int], bytes], drain: bool = False) -> bytes:
    """One portal heartbeat: ``Control`` with 0..63 random bytes of padding.

    An ACTIVE heartbeat that draws no padding is ``b""``; like V2Ray, don't send it
    (``MuxConnection.send_data`` ignores empty data).
    """
    size = urandom(1)[0] % (MAX_PADDING + 1)  # 256 is a multiple of 64: uniform
    padding = urandom(size) if size else b""
    return encode_control(ControlState.DRAIN if drain else ControlState.ACTIVE, padding)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(pos, min(pos + _MAX_VARINT, len(buf))):
        byte = buf[i]
        if i - pos == _MAX_VARINT - 1 and byte > 1:
            raise ControlError("varint overflows 64 bits")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ControlError("truncated or overlong varint")


def _skip(buf: bytes, pos: int, wire: int) -> int:
    """Skip one field value of wire type ``wire`` at ``pos``; return the next position."""
    n = len(buf)
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 1 or wire == 5:
        end = pos + (8 if wire == 1 else 4)
    elif wire == 2:
        length, pos = _read_varint(buf, pos)
        end = pos + length
    elif wire == 3:
        # A group: skip nested fields until the unpaired end-group tag (Go doesn't check
        # that its field number matches, neither do we).
        depth = 1
        while depth:
            if pos >= n:
                raise ControlError("unterminated group")
            key, pos = _read_varint(buf, pos)
            inner = key & 7
            if inner == 3:
                depth += 1
            elif inner == 4:
                depth -= 1
            else:
                pos = _skip(buf, pos, inner)
        return pos
    else:
        raise ControlError(f"unexpected protobuf wire type {wire}")
    if end > n:
        raise ControlError("truncated protobuf field")
    return end


def decode_control(data: bytes | bytearray | memoryview) -> ControlState:
    """Parse a ``Control`` message and return its state.

    Repeated ``state`` fields: the last one wins. Go stores the enum as ``int32(varint)``
    and the bridge only asks "is it ACTIVE?", so any value whose low 32 bits are not zero
    reads as DRAIN (the bridge stops using the tunnel either way).
    """
    buf = bytes(data)  # one frame, <= 2048 bytes
    n = len(buf)
    pos = 0
    state = 0
    while pos < n:
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        if key >> 3 == 1 and wire == 0:
            value, pos = _read_varint(buf, pos)
            state = value & 0xFFFFFFFF
        else:
            pos = _skip(buf, pos, wire)
    return ControlState.ACTIVE if state == 0 else ControlState.DRAIN
