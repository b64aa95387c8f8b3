"""Transparent proxying on Linux: where a redirected connection was going.

dokodemo-door with ``followRedirect`` (V2Ray 4.34's ``app/proxyman/inbound/worker.go``)
takes the destination of each accepted TCP connection from the kernel:

* ``redirect`` (the default; iptables ``REDIRECT`` / nft ``redirect``, which rewrite the
  destination): ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` returns the address before NAT
  (``SOL_IPV6``/``IP6T_SO_ORIGINAL_DST`` for IPv6; V2Ray reads IPv4 only);
* ``tproxy`` (iptables/nft ``TPROXY``, which delivers without rewriting): the socket's own
  local address is the destination. The listener needs ``IP_TRANSPARENT`` (set by
  :func:`raybridge.transport.tcp.apply_sockopt`, CAP_NET_ADMIN).

UDP (TPROXY only; transport/tproxy_udp.py): ``IP_RECVORIGDSTADDR`` gives each datagram's
destination, :func:`original_datagram_destination` reads it. After a REDIRECT a datagram
does not tell, so the config loader refuses ``followRedirect`` for UDP without TPROXY.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

#: ``<linux/netfilter_ipv4.h>`` and ``<linux/netfilter_ipv6/ip6_tables.h>`` (both 80).
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
SUPPORTED = sys.platform.startswith("linux")


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """A ``struct sockaddr_in`` / ``sockaddr_in6`` as (address, port); ``None`` if it is
    neither. ``sa_family`` is in host byte order, the port in network order."""
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if address.startswith("::ffff:") and "." in address:
            address = address.removeprefix("::ffff:")
        return address, port
    return None


def original_destination(sock: Any) -> tuple[str, int] | None:
    """The destination a REDIRECTed connection had before NAT (``None``: not known,
    e.g. no conntrack entry or not Linux). ``sock``: the socket, or asyncio's/uvloop's
    stand-in for it (``transport.get_extra_info("socket")``)."""
    if not SUPPORTED or sock is None:
        return None
    attempts = [(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)]
    if getattr(sock, "family", None) == socket.AF_INET6:
        attempts.insert(0, (SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
    for level, option, size in attempts:
        try:
            raw = sock.getsockopt(level, option, size)
        except OSError:
            continue
        found = parse_sockaddr(raw)
        if found is not None:
            return found
    return None


# -- UDP with TPROXY ---------------------------------------------------------------------

#: ``<linux/in.h>``: ask for, and the type of, the ancillary datum with the destination a
#: TPROXYed datagram had.
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR
_CMSG_SPACE = socket.CMSG_SPACE(28) if hasattr(socket, "CMSG_SPACE") else 64


def original_datagram_destination(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The ``IP_ORIGDSTADDR`` datum of a ``recvmsg`` (V2Ray's ``udp/hub_linux.go``)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_ORIGDSTADDR:
            return parse_sockaddr(data)
    return None
