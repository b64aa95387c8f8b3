"""UDP as link ends.

A UDP link carries datagrams to one destination (each ``End.write`` is one datagram), as in
V2Ray, where a SOCKS or dokodemo-door UDP client talking to N destinations makes N flows
(PROTOCOLS.md 5.1). Two kinds of end:

* :class:`DatagramFlowEnd`: the outbound side, a connected UDP socket to the destination;
* :class:`UdpServer` + :class:`UdpClientFlow`: the inbound side, one listening socket
  shared by every client, one flow per (client address, destination).

UDP has no backpressure: when a medium is full, datagrams are dropped, never queued
without bound. Flows end after ``idle`` seconds without traffic in either direction.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from raybridge.address import Destination, Network, parse_host
from raybridge.link import End, IdleTimer, PacketEnd, Session

logger = logging.getLogger("raybridge.transport")

#: V2Ray reads UDP into 2048-byte buffers; we accept full-size datagrams on our sockets.
MAX_DATAGRAM = 65535
#: Datagrams a flow holds while its socket is being set up.
MAX_PENDING = 64
UDP_IDLE = 60.0


class DatagramFlowEnd(asyncio.DatagramProtocol, End):
    """A UDP socket for one destination, as the outbound end of a UDP link.

    The socket is not connected, so that replies from other addresses reach it too
    (full-cone, what XUDP and packetaddr clients expect): a peer that is a
    :class:`~raybridge.link.PacketEnd` gets those with their source; any other peer gets only
    the destination's own replies, as from a connected socket.
    """

    def __init__(self, session: Session | None = None) -> None:
        self.peer: End | None = None
        self.session = session
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: list[bytes] = []
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._remote: tuple[str, int] = ("", 0)

    def start_async(self, address: Awaitable[tuple[str, int]]) -> None:
        """Open the socket once ``address`` (host, port) is known."""
        self._task = asyncio.ensure_future(self._open(address))

    async def _open(self, address: Awaitable[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        host, port = "?", 0
        try:
            host, port = await address
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            self._remote = (str(sockaddr[0]), int(sockaddr[1]))
            local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
            await loop.create_datagram_endpoint(lambda: self, local_addr=local, family=family)
        except OSError as exc:
            logger.info("failed to open UDP flow to %s:%s: %s", host, port, exc)
            self._closed = True
            if self.peer is not None:
                self.peer.abort(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._closed:
            transport.close()
            return
        for datagram in self._pending:
            self.transport.sendto(datagram, self._remote)
        self._pending.clear()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        peer = self.peer
        if peer is None:
            return
        if (addr[0], addr[1]) != self._remote:
            if not isinstance(peer, PacketEnd):
                return  # what a connected socket would never have delivered
            source = Destination(Network.UDP, parse_host(addr[0]), addr[1])
            self._count(data)
            peer.write_to(data, source)
            return
        self._count(data)
        peer.write(data)

    def _count(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.active = True
            session.bytes_down += len(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: UDP carries on, as V2Ray does.
        logger.debug("UDP flow error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._closed:
            self._closed = True
            if self.peer is not None:
                self.peer.abort(exc)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        session = self.session
        if session is not None:
            session.active = True
            session.bytes_up += len(data)
        if self.transport is not None:
            self.transport.sendto(data, self._remote)
        elif len(self._pending) < MAX_PENDING:
            self._pending.append(data)

    def write_eof(self) -> None:
        # The sender is done: nothing more will go out, but replies may still come; the
        # flow's idle timer ends it.
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FlowEnd(PacketEnd):
    """The inbound end of one UDP flow: ends after ``idle`` seconds without traffic, or
    when its peer ends; then :meth:`forget` tells its owner. UDP has no backpressure."""

    def __init__(self, session: Session, idle: float) -> None:
        self.peer: End | None = None
        self.session = session
        self.closed = False
        self.idle = IdleTimer(session, idle, self._expire)

    def forget(self) -> None:
        """Hook: the flow is over (its owner drops it and counts its session)."""

    def write_eof(self) -> None:
        self._finish()

    def abort(self, exc: BaseException | None = None) -> None:
        self._finish()

    def _expire(self) -> None:
        peer = self.peer
        self._finish()
        if peer is not None:
            peer.abort(TimeoutError("UDP flow idle"))

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.idle.cancel()
        self.forget()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class UdpClientFlow(FlowEnd):
    """One (client address, destination) flow of a :class:`UdpServer`. A reply from another
    source (full-cone, through XUDP or packetaddr) is sent to the client with that source
    where the protocol can say so (SOCKS); otherwise it is dropped."""

    def __init__(
        self,
        server: UdpServer,
        client: tuple[str, int],
        dest: Destination,
        reply_header: bytes,
        session: Session,
    ) -> None:
        super().__init__(session, server.idle)
        self.server = server
        self.client = client
        self.dest = dest
        self.reply_header = reply_header  # prepended to every reply (SOCKS); b"" for raw

    def deliver(self, payload: bytes) -> None:
        """A datagram from the client for this flow's destination."""
        self.session.active = True
        self.session.bytes_up += len(payload)
        if self.peer is not None:
            self.peer.write(payload)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.session.active = True
        self.session.bytes_down += len(data)
        self.server.send(self.reply_header + data if self.reply_header else data, self.client)

    def write_to(self, data: bytes, address: Destination) -> None:
        encode = self.server.encode_reply
        if self.closed or encode is None:
            return
        self.session.active = True
        self.session.bytes_down += len(data)
        self.server.send(encode(address, data), self.client)

    def forget(self) -> None:
        self.server.forget(self)


class UdpServer(asyncio.DatagramProtocol):
    """A listening UDP socket that sorts datagrams into flows.

    ``classify(data, addr)`` decodes one datagram into ``(destination, payload,
    reply_header)`` or returns ``None`` to drop it; ``open_flow(flow)`` dispatches a new
    flow and must join it to an outbound end.
    """

    def __init__(
        self,
        classify: Callable[[bytes, tuple[str, int]], tuple[Destination, bytes, bytes] | None],
        open_flow: Callable[[UdpClientFlow], None],
        new_session: Callable[[tuple[str, int]], Session],
        *,
        idle: float = UDP_IDLE,
        max_flows: int = 4096,
        closed: Callable[[Session], None] | None = None,
        encode_reply: Callable[[Destination, bytes], bytes] | None = None,
    ) -> None:
        """``encode_reply(source, payload)``: a reply datagram naming its source, for
        replies from an address other than the flow's destination (full-cone)."""
        self.encode_reply = encode_reply
        self.closed = closed
        self.classify = classify
        self.open_flow = open_flow
        self.new_session = new_session
        self.idle = idle
        self.max_flows = max_flows
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[tuple[str, int], Destination], UdpClientFlow] = {}

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            parsed = self.classify(data, addr)
        except Exception as exc:  # a bad datagram is dropped, never fatal
            logger.info("dropped UDP datagram from %s:%s: %s", addr[0], addr[1], exc)
            return
        if parsed is None:
            return
        dest, payload, reply_header = parsed
        key = (addr, dest)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                logger.warning("UDP flow table full (%d): dropped datagram", self.max_flows)
                return
            flow = UdpClientFlow(self, addr, dest, reply_header, self.new_session(addr))
            self.flows[key] = flow
            self.open_flow(flow)
        flow.deliver(payload)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def forget(self, flow: UdpClientFlow) -> None:
        if self.closed is not None:
            self.closed(flow.session)
        key = (flow.client, flow.dest)
        if self.flows.get(key) is flow:
            del self.flows[key]

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP socket error: %s", exc)

    def close(self) -> None:
        for flow in list(self.flows.values()):
            peer = flow.peer
            flow.abort()
            if peer is not None:
                peer.abort()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
