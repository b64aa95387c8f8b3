"""dokodemo-door ``followRedirect`` for UDP with TPROXY (Linux).

V2Ray 4.34 (``transport/internet/udp/hub_linux.go``, ``proxy/dokodemo``): the listening
socket has IP_TRANSPARENT and IP_RECVORIGDSTADDR, so each datagram TPROXY delivers comes
with the destination it was sent to; replies go back to the client *from* that
destination, through a socket bound to it with IP_TRANSPARENT (the client expects its
answer from the address it asked). One such socket per destination is kept while flows
to it live. REDIRECT cannot be followed for UDP: after NAT the datagram says nothing of
where it was going, so a datagram without the datum is dropped (counted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

from raybridge.address import Destination, Network, format_host, parse_host
from raybridge.transport.redirect import (
    _CMSG_SPACE,
    IP_RECVORIGDSTADDR,
    IP_TRANSPARENT,
    original_datagram_destination,
)
from raybridge.transport.udp import MAX_DATAGRAM, UdpClientFlow, UdpServer

logger = logging.getLogger("raybridge.transport")


class TproxyUdpServer(UdpServer):
    """A :class:`UdpServer` whose flows go where each datagram was going."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(lambda data, addr: None, *args, **kwargs)  # type: ignore[arg-type]
        self._sock: socket.socket | None = None
        self._senders: dict[tuple[str, int], socket.socket] = {}
        self._users: Counter[tuple[str, int]] = Counter()

    async def start(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVORIGDSTADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def _readable(self) -> None:
        sock = self._sock
        for _ in range(64):  # then let the loop run other work
            if sock is None:
                return
            try:
                data, ancdata, _, addr = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("UDP socket error: %s", exc)
                return
            found = original_datagram_destination(ancdata)
            if found is None:
                self.drops.drop("no original destination (not TPROXYed)", f" (from {addr[0]})")
                continue
            dest = Destination(Network.UDP, parse_host(found[0]), found[1])
            client = (str(addr[0]), int(addr[1]))
            flow = self.flows.get((client, dest))
            if flow is None:
                flow = self._new_flow(client, dest, b"")
                if flow is None:
                    continue
                self._users[found] += 1
            flow.deliver(data)

    def reply(self, flow: UdpClientFlow, data: bytes) -> None:
        source = (format_host(flow.dest.host), flow.dest.port)
        sender = self._senders.get(source)
        if sender is None:
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sender.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
                sender.bind(source)
                sender.setblocking(False)
            except OSError as exc:
                sender.close()
                self.drops.drop("cannot send from the original destination", f" ({exc})")
                return
            self._senders[source] = sender
        try:
            sender.sendto(data, flow.client)
        except OSError:
            self.drops.drop("reply socket full")

    def forget(self, flow: UdpClientFlow) -> None:
        known = self.flows.get((flow.client, flow.dest)) is flow
        super().forget(flow)
        if not known:
            return
        source = (format_host(flow.dest.host), flow.dest.port)
        self._users[source] -= 1
        if self._users[source] <= 0:
            del self._users[source]
            sender = self._senders.pop(source, None)
            if sender is not None:
                sender.close()

    def close(self) -> None:
        super().close()
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        self._users.clear()
