"""packetaddr: UDP datagrams that carry their own address, inside one VMess UDP request.

v2fly v5 (``packetEncoding: "packet"``) and sing-box (``packet_encoding: "packetaddr"``)
send a VMess UDP request to the magic domain :data:`MAGIC_DOMAIN` (port 0), and prefix every
datagram in both directions with the address it goes to (or comes from)::

    ATYP(1) | ADDRESS(4 or 16) | PORT(2) | payload        ATYP 0x01 IPv4, 0x02 IPv6

No domain names (``common/net/packetaddr/packetaddr.go`` in v2fly/v2ray-core v5,
``packetaddr/packetaddr.go`` in SagerNet/sing-vmess). Sans-IO: pure functions.
"""

from __future__ import annotations

import ipaddress

from raybridge.address import Destination, Network
from raybridge.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["MAGIC_DOMAIN", "PacketAddrError", "decode_packet", "encode_packet"]

MAGIC_DOMAIN = "sp.packet-addr.v2fly.arpa"

_IPV4 = 0x01
_IPV6 = 0x02


class PacketAddrError(RemoteProtocolError):
    """A datagram whose address prefix is malformed (that datagram is dropped)."""


def encode_packet(dest: Destination, payload: bytes | bytearray | memoryview) -> bytes:
    """``payload`` prefixed with ``dest``; a domain name raises LocalProtocolError."""
    host = dest.host
    if isinstance(host, ipaddress.IPv4Address):
        head = bytes((_IPV4,)) + host.packed
    elif isinstance(host, ipaddress.IPv6Address):
        head = bytes((_IPV6,)) + host.packed
    else:
        raise LocalProtocolError(f"packetaddr carries IP addresses only, not {host!r}")
    return b"".join((head, dest.port.to_bytes(2, "big"), payload))


def decode_packet(datagram: bytes | bytearray | memoryview) -> tuple[Destination, bytes]:
    """Split one datagram into its address and payload."""
    view = memoryview(datagram)
    if not len(view):
        raise PacketAddrError("empty datagram")
    atyp = view[0]
    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    if atyp == _IPV4:
        if len(view) < 7:
            raise PacketAddrError("datagram shorter than its IPv4 address")
        host = ipaddress.IPv4Address(bytes(view[1:5]))
        pos = 5
    elif atyp == _IPV6:
        if len(view) < 19:
            raise PacketAddrError("datagram shorter than its IPv6 address")
        ip6 = ipaddress.IPv6Address(bytes(view[1:17]))
        host = ip6.ipv4_mapped or ip6
        pos = 17
    else:
        raise PacketAddrError(f"unknown packetaddr address type: {atyp}")
    port = (view[pos] << 8) | view[pos + 1]
    return Destination(Network.UDP, host, port), bytes(view[pos + 2 :])
