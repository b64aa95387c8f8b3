"""PROXY protocol v1 and v2 header reader (server side), sans-IO.

V2Ray 4.34 wraps a listener in go-proxyproto with the REQUIRE policy when
``acceptProxyProtocol`` is set (``transport/internet/system_listener.go``; ws and tcp take
the flag from their own settings, h2 from ``sockopt``: docs/transports.md 6). The header comes
first on the connection, before TLS; whatever follows it is the ordinary stream. Layouts
(HAProxy's proxy-protocol.txt, sections 2.1 and 2.2)::

    v1  "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP srcport SP dstport CRLF
        "PROXY UNKNOWN" [anything] CRLF          at most 107 bytes, CRLF included

    v2  0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a       12-byte signature
        ver_cmd (1)   0x20 LOCAL | 0x21 PROXY     version 2 in the high nibble
        fam (1)       0x00 UNSPEC | 0x11 TCP4 | 0x12 UDP4 | 0x21 TCP6 | 0x22 UDP6
                      | 0x31 UNIX stream | 0x32 UNIX datagram
        len (2, BE)   bytes that follow: addresses, then TLVs (ignored)
        INET   src(4)  dst(4)  srcport(2) dstport(2)          12 bytes
        INET6  src(16) dst(16) srcport(2) dstport(2)          36 bytes
        UNIX   src(108) dst(108)                              216 bytes

What V2Ray's go-proxyproto does, and where this reader differs:

* A connection whose first bytes are neither signature is refused (REQUIRE). On a ws
  listener, Go's HTTP server then answers ``400 Bad Request`` [interop]; pass that answer
  as ``error_reply`` to reproduce it (a tcp listener just closes).
* v2: the command must be LOCAL or PROXY; UNSPEC goes with LOCAL only; the length must
  cover the family's addresses. A LOCAL header carries no usable address (the real
  endpoints stand). go-proxyproto peeks the whole block through a 4096-byte
  ``bufio.Reader``, so V2Ray refuses blocks longer than 4096 bytes: that is our default
  bound too (``max_v2_length``, at most 65535).
* v1: go-proxyproto accepts the header only if it arrived in one read; we accept it split
  anywhere (the spec recommends tolerance). It also lets extra tokens through, which the
  spec's grammar does not: we refuse them. Family values the spec does not list are
  refused, as it asks.

``Established.info``: ``source`` (``(ip, port)``, the client's real address) for v1
TCP4/TCP6 and v2 PROXY over INET/INET6 (TCP or UDP); nothing for v1 UNKNOWN, v2 LOCAL or
UNIX addresses; and ``proxy_version`` (1 or 2).
"""

from __future__ import annotations

import ipaddress
import re
from enum import IntEnum
from typing import Any

from raybridge.protocols.stream import (
    EndReceived,
    Established,
    LayerError,
    LayerEvent,
    QueuedLayer,
    Received,
)

__all__ = [
    "V1_MAX",
    "V2_SIGNATURE",
    "Command",
    "Family",
    "ProxyProtocolError",
    "ProxyProtocolLayer",
    "encode_v1",
    "encode_v2",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
#: The longest v1 line, CRLF included (spec 2.1: "PROXY UNKNOWN ffff:...:ffff ... 65535\r\n").
V1_MAX = 107
#: go-proxyproto's bufio.Reader size: the longest v2 block V2Ray can take in.
V2_DEFAULT_MAX = 4096
_PORT = re.compile(r"[0-9]{1,5}")


class ProxyProtocolError(LayerError):
    """No PROXY header where one is required, or a malformed one."""


class Command(IntEnum):
    """v2 command, the low nibble of byte 13 (spec 2.2)."""

    LOCAL = 0x0
    PROXY = 0x1


class Family(IntEnum):
    """v2 address family and transport, byte 14 (spec 2.2)."""

    UNSPEC = 0x00
    TCP4 = 0x11
    UDP4 = 0x12
    TCP6 = 0x21
    UDP6 = 0x22
    UNIX_STREAM = 0x31
    UNIX_DGRAM = 0x32


_PROXY_FAMILIES = frozenset(f.value for f in Family if f is not Family.UNSPEC)
#: Bytes of addresses (and ports) each family needs at the start of the v2 block.
_ADDRESS_BYTES = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}


class ProxyProtocolLayer(QueuedLayer):
    """Reads one PROXY header (v1 or v2), then passes the stream through unchanged."""

    name = "proxy"

    def __init__(self, *, max_v2_length: int = V2_DEFAULT_MAX, error_reply: bytes = b"") -> None:
        if not 0 <= max_v2_length <= 0xFFFF:
            raise ValueError("max_v2_length must be within 0..65535")
        self._max_v2 = max_v2_length
        self._error_reply = error_reply
        self._buf = bytearray()
        self._done = False
        self._out: list[bytes] = []

    # -- from below ----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[LayerEvent]:
        if self._done:
            return [Received(data)] if data else []
        self._buf += data
        try:
            parsed = self._parse()
        except ProxyProtocolError:
            self._fail()
            raise
        if parsed is None:
            return []
        info, used = parsed
        rest = bytes(self._buf[used:])
        self._buf = bytearray()
        self._done = True
        events: list[LayerEvent] = [Established(info=info)]
        if rest:
            events.append(Received(rest))
        return events

    def receive_eof(self) -> list[LayerEvent]:
        if self._done:
            return [EndReceived()]
        self._fail()
        raise ProxyProtocolError("connection closed before the end of the PROXY header")

    def _fail(self) -> None:
        self._buf = bytearray()
        if self._error_reply:
            self._out.append(self._error_reply)
            self._error_reply = b""

    def _parse(self) -> tuple[dict[str, Any], int] | None:
        buf = self._buf
        n = len(buf)
        if buf[:12] == V2_SIGNATURE[:n]:
            return self._parse_v2() if n >= 16 else None
        if buf[:6] == _V1_PREFIX[:n]:
            return self._parse_v1() if n > 6 else None
        raise ProxyProtocolError("no PROXY protocol header")

    def _parse_v1(self) -> tuple[dict[str, Any], int] | None:
        end = self._buf.find(b"\n", 0, V1_MAX)
        if end < 0:
            if len(self._buf) >= V1_MAX:
                raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
            return None
        line = bytes(self._buf[: end + 1])
        if not line.endswith(b"\r\n"):
            raise ProxyProtocolError("PROXY v1 header does not end with CRLF")
        try:
            tokens = line[:-2].decode("ascii").split(" ")
        except UnicodeDecodeError:
            raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
        info: dict[str, Any] = {"proxy_version": 1}
        if tokens[1] == "UNKNOWN":  # the rest of the line is to be ignored (spec 2.1)
            return info, end + 1
        if tokens[1] not in ("TCP4", "TCP6"):
            raise ProxyProtocolError(f"PROXY v1 protocol {tokens[1][:8]!r} is not known")
        if len(tokens) != 6:
            raise ProxyProtocolError("PROXY v1 header needs 4 address fields")
        version = 4 if tokens[1] == "TCP4" else 6
        src, _dst = (_v1_ip(text, version) for text in tokens[2:4])
        sport, _dport = (_v1_port(text) for text in tokens[4:6])
        info["source"] = (src, sport)
        return info, end + 1

    def _parse_v2(self) -> tuple[dict[str, Any], int] | None:
        buf = self._buf
        ver_cmd, fam = buf[12], buf[13]
        length = int.from_bytes(buf[14:16], "big")
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2 version {ver_cmd >> 4} is not 2")
        command = ver_cmd & 0x0F
        if command not in (Command.LOCAL, Command.PROXY):
            raise ProxyProtocolError(f"PROXY v2 command {command:#x} is not LOCAL or PROXY")
        if length > self._max_v2:
            raise ProxyProtocolError(f"PROXY v2 block of {length} bytes (at most {self._max_v2})")
        info: dict[str, Any] = {"proxy_version": 2}
        if command == Command.LOCAL:
            # "the receiver must ... discard the protocol block including the family"
            return (info, 16 + length) if len(buf) >= 16 + length else None
        if fam not in _PROXY_FAMILIES:
            raise ProxyProtocolError(f"PROXY v2 family {fam:#04x} is not usable with PROXY")
        need = _ADDRESS_BYTES[fam >> 4]
        if length < need:
            raise ProxyProtocolError(f"PROXY v2 block of {length} bytes is too short")
        if len(buf) < 16 + length:
            return None
        if fam >> 4 in (1, 2):
            size = 4 if fam >> 4 == 1 else 16
            ip = ipaddress.ip_address(bytes(buf[16 : 16 + size]))
            port = int.from_bytes(buf[16 + 2 * size : 18 + 2 * size], "big")
            info["source"] = (str(ip), port)
        return info, 16 + length

    # -- from above: the stream passes through -------------------------------------------
    def send_data(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def send_eof(self) -> None:
        """Nothing of its own: the TCP half-close below carries the end."""


def _v1_ip(text: str, version: int) -> str:
    try:
        ip = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address {text[:45]!r} is not IPv{version}") from None
    if "%" in text:  # Python accepts an IPv6 scope; the spec's grammar does not
        raise ProxyProtocolError(f"PROXY v1 address {text[:45]!r} has a scope")
    return str(ip)


def _v1_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 port {text[:8]!r} is not within 0..65535")
    return int(text)


# -- writers (what a load balancer in front sends; used by the tests) -------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line: TCP4/TCP6 from the addresses, or ``PROXY UNKNOWN`` when either is None."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    udp: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: PROXY over INET/INET6 from the addresses, or LOCAL when either is None."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes((0x20, Family.UNSPEC)) + len(tlvs).to_bytes(2, "big") + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    fam = (0x10 if src.version == 4 else 0x20) | (0x2 if udp else 0x1)
    block = (
        src.packed
        + dst.packed
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
        + tlvs
    )
    return V2_SIGNATURE + bytes((0x21, fam)) + len(block).to_bytes(2, "big") + block
