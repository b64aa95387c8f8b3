"""Destinations and the address-and-port codec shared by SOCKS5, VMess and Mux.Cool.

Wire layouts (docs/protocols.md 1.3, 2.2, 5.1)::

    VMess, Mux.Cool (port first):  PORT(2) ATYP(1) ADDR
    SOCKS5          (port last):   ATYP(1) ADDR PORT(2)

    ATYP       VMess/Mux   SOCKS5   ADDR
    IPv4       0x01        0x01     4 bytes
    domain     0x02        0x03     LEN(1) + LEN bytes, [0-9A-Za-z._-] only
    IPv6       0x03        0x04     16 bytes

A domain whose first character is a digit or ``[`` and which parses as an IP literal becomes
that IP (V2Ray's ``common/protocol/address.go`` does the same); a zero-length domain is
rejected. Writers refuse domains longer than 255 bytes.

Addresses from the wire are validated more strictly than V2Ray does (:func:`decode_domain`):

* an IP literal may not carry an IPv6 scope id (``[::1%eth0]``): a scope id may hold any
  byte, and ``[::1%\n<text>]`` would otherwise reach the logs as a forged line;
* a name whose last label is a number (``127.1``, ``0x7f.1``, ``0177.0.0.1``,
  ``2130706433``, ``1.2.3.4.``) is refused: the system resolver (``inet_aton``) reads such
  names as IPv4 addresses, so they would reach 127.0.0.1 past IP routing rules. Go's
  resolver refuses them, and no real domain has a numeric top-level label.

Both are refused like a malformed domain (the caller's error class). :func:`parse_host`
(config values, socket addresses) is unchanged: link-local peers do have scope ids.

This module is sans-IO: it never touches a socket.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from enum import IntEnum

from raybridge.errors import ProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: A host is an IP address or a domain name (``str``).
Host = IPAddress | str

_VALID_DOMAIN = re.compile(rb"[0-9A-Za-z._-]+\Z")
#: What an IP literal from the wire may hold: hex digits, dots, colons, one pair of brackets.
_IP_LITERAL = re.compile(rb"\[?[0-9A-Fa-f:.]+\]?\Z")
#: A label ``inet_aton`` reads as a number: decimal (or octal with a leading 0), or 0x hex.
_NUMBER_LABEL = re.compile(rb"[0-9]+|0[xX][0-9A-Fa-f]*")


class Network(IntEnum):
    """Transport of a destination; values are Mux.Cool's NETWORK byte (docs/protocols.md 2.2)."""

    TCP = 1
    UDP = 2

    def __str__(self) -> str:
        return self.name.lower()


@functools.lru_cache(maxsize=4096)
def parse_host(text: str) -> Host:
    """An IP literal (``1.2.3.4``, ``::1``, ``[::1]``) becomes an IP address, anything else
    a domain."""
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalize_ip(text: str) -> str | None:
    """``text`` as a canonical IP string, or ``None`` if it is not an IP address.

    Like V2Ray's ``net.ParseAddress``: ``[v6]`` brackets are removed, surrounding spaces
    are trimmed, and IPv4-mapped IPv6 becomes IPv4.
    """
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    text = text.strip()
    if not text or "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@functools.lru_cache(maxsize=1024)
def _ipv4(packed: bytes) -> ipaddress.IPv4Address:
    """An IPv4 address from the wire: the same few come again and again (addresses are
    immutable, so one object serves them all; a hit calls no Python code)."""
    return ipaddress.IPv4Address(packed)


def format_host(host: Host) -> str:
    return host if isinstance(host, str) else str(host)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a connection goes: network, host (IP or domain) and port."""

    network: Network
    host: Host
    port: int

    @property
    def is_domain(self) -> bool:
        return isinstance(self.host, str)

    def __str__(self) -> str:
        """V2Ray's spelling, as in access logs: ``tcp:example.com:443``."""
        host = format_host(self.host)
        if isinstance(self.host, ipaddress.IPv6Address):
            host = f"[{host}]"
        return f"{self.network}:{host}:{self.port}"


def tcp(host: Host | str, port: int) -> Destination:
    return Destination(Network.TCP, parse_host(host) if isinstance(host, str) else host, port)


def udp(host: Host | str, port: int) -> Destination:
    return Destination(Network.UDP, parse_host(host) if isinstance(host, str) else host, port)


class AddressCodec:
    """Encodes and decodes ``(host, port)`` in one of the two wire layouts above.

    ``decode`` is incremental: it returns ``None`` when ``data`` holds too few bytes, so a
    caller can keep its buffer and try again when more arrive. Malformed input raises
    ``error`` (the calling protocol module's own :class:`ProtocolError` subclass), so a codec
    built on this one never leaks a foreign exception type.
    """

    __slots__ = ("_domain", "_ipv4", "_ipv6", "_kinds", "port_first")

    def __init__(self, *, ipv4: int, domain: int, ipv6: int, port_first: bool) -> None:
        self._ipv4 = ipv4
        self._domain = domain
        self._ipv6 = ipv6
        self.port_first = port_first
        self._kinds = {ipv4: 4, domain: 0, ipv6: 16}

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        offset: int = 0,
        error: type[ProtocolError] = ProtocolError,
    ) -> tuple[Host, int, int] | None:
        """Return ``(host, port, end_offset)``, or ``None`` if more bytes are needed."""
        n = len(data)
        pos = offset
        port = 0
        if self.port_first:
            if n < pos + 2:
                return None
            port = (data[pos] << 8) | data[pos + 1]
            pos += 2
        if n < pos + 1:
            return None
        atyp = data[pos]
        pos += 1
        size = self._kinds.get(atyp)
        host: Host
        if size is None:
            raise error(f"unknown address type: {atyp}")
        if size == 4:
            if n < pos + 4:
                return None
            host = _ipv4(bytes(data[pos : pos + 4]))
            pos += 4
        elif size == 16:
            if n < pos + 16:
                return None
            ip6 = ipaddress.IPv6Address(bytes(data[pos : pos + 16]))
            host = ip6.ipv4_mapped or ip6
            pos += 16
        else:
            if n < pos + 1:
                return None
            length = data[pos]
            pos += 1
            if n < pos + length:
                return None
            raw = bytes(data[pos : pos + length])
            pos += length
            host = decode_domain(raw, error)
        if not self.port_first:
            if n < pos + 2:
                return None
            port = (data[pos] << 8) | data[pos + 1]
            pos += 2
        return host, port, pos

    def encode(self, host: Host, port: int) -> bytes:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        port_bytes = port.to_bytes(2, "big")
        if isinstance(host, ipaddress.IPv4Address):
            addr = bytes((self._ipv4,)) + host.packed
        elif isinstance(host, ipaddress.IPv6Address):
            addr = bytes((self._ipv6,)) + host.packed
        else:
            raw = host.encode("ascii", "strict")
            if not 0 < len(raw) <= 255:
                raise ValueError(f"domain length must be 1..255: {host!r}")
            addr = bytes((self._domain, len(raw))) + raw
        return port_bytes + addr if self.port_first else addr + port_bytes


def decode_domain(raw: bytes, error: type[ProtocolError] = ProtocolError) -> Host:
    """Validate a domain from the wire the way V2Ray does (IP literals become IPs), and
    more strictly (see the module docstring): no scope ids, no numeric last label. What it
    returns holds only ``[0-9A-Za-z._-]`` (a domain) or is an IP address without scope."""
    if not raw:
        raise error("empty domain name")
    if raw[0] == 0x5B or 0x30 <= raw[0] <= 0x39:  # '[' or a digit: maybe an IP literal
        if b"%" in raw:
            raise error(f"invalid address (IPv6 scope id): {raw[:64]!r}")
        if _IP_LITERAL.match(raw) is not None:
            host = parse_host(raw.decode("ascii"))
            if not isinstance(host, str):
                return host
    if _VALID_DOMAIN.match(raw) is None:
        raise error(f"invalid domain name: {raw[:64]!r}")
    if _NUMBER_LABEL.fullmatch(raw.rstrip(b".").rpartition(b".")[2]) is not None:
        raise error(f"invalid address (not a canonical IPv4 address): {raw[:64]!r}")
    return raw.decode("ascii")


#: VMess and Mux.Cool: port first, ATYP 1/2/3.
VMESS_ADDRESS = AddressCodec(ipv4=1, domain=2, ipv6=3, port_first=True)
#: SOCKS5 (and its UDP datagrams): port last, ATYP 1/3/4.
SOCKS_ADDRESS = AddressCodec(ipv4=1, domain=3, ipv6=4, port_first=False)
