"""UDP as link ends.

A UDP link carries datagrams to one destination (each ``End.write`` is one datagram), as in
V2Ray, where a SOCKS or dokodemo-door UDP client talking to N destinations makes N flows
(docs/protocols.md 5.1). Two kinds of end:

* :class:`DatagramFlowEnd`: the outbound side, a connected UDP socket to the destination;
* :class:`UdpServer` + :class:`UdpClientFlow`: the inbound side, one listening socket
  shared by every client, one flow per (client address, destination).

UDP has no backpressure: when a medium is full, datagrams are dropped, never queued
without bound. Flows end after ``idle`` seconds without traffic in either direction.

Bounds of a :class:`UdpServer` (a flood from one source must not lock out the others):

* at most ``max_flows`` flows (4096), and at most ``max_client_flows`` (256) per client IP
  address, so one source cannot take the whole table (a flood with many spoofed sources
  still can: UDP sources are not authenticated, which is why password-protected SOCKS
  inbounds admit only the addresses of live associations, see ``group_for``);
* every dropped datagram is counted by reason (:class:`DropLog`), but logged at most once
  per :data:`DROP_LOG_INTERVAL` seconds per reason, with the count.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from raybridge.address import Destination, Network, parse_host
from raybridge.link import End, IdleTimer, PacketEnd, Session, UnpacedEnd, abort_links

logger = logging.getLogger("raybridge.transport")

#: V2Ray reads UDP into 2048-byte buffers; we accept full-size datagrams on our sockets.
MAX_DATAGRAM = 65535
#: Datagrams a flow holds while its socket is being set up.
MAX_PENDING = 64
UDP_IDLE = 60.0
#: Flows per UdpServer, and per client IP address within that.
MAX_FLOWS = 4096
MAX_CLIENT_FLOWS = 256
#: Seconds between two log lines about dropped datagrams of one reason.
DROP_LOG_INTERVAL = 10.0


class DropLog:
    """Counts dropped datagrams by reason, and logs them without flooding the log: the first
    drop of a reason is logged at once, later ones within ``interval`` seconds only counted;
    the next line (the next drop after the interval, or :meth:`flush`, which a timer calls
    one interval after the first unlogged drop) says how many there were."""

    def __init__(
        self,
        name: str,
        *,
        interval: float = DROP_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.interval = interval
        self.clock = clock
        #: Drops by reason since the start (for tests and statistics).
        self.counts: Counter[str] = Counter()
        self._unlogged: dict[str, tuple[int, int]] = {}  # reason -> (count, level)
        self._last: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def drop(self, reason: str, detail: str = "", level: int = logging.WARNING) -> None:
        self.counts[reason] += 1
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            count, _ = self._unlogged.get(reason, (0, level))
            self._unlogged[reason] = (count + 1, level)
            self._schedule()
            return
        self._last[reason] = now
        count, _ = self._unlogged.pop(reason, (0, level))
        more = f" (and {count} more since the last line)" if count else ""
        logger.log(level, "%s: dropped UDP datagram: %s%s%s", self.name, reason, detail, more)

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Log what was counted but not logged yet."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.clock()
        for reason, (count, level) in self._unlogged.items():
            self._last[reason] = now
            logger.log(
                level,
                "%s: dropped %d more UDP datagrams: %s (in the last %g s at most)",
                self.name,
                count,
                reason,
                self.interval,
            )
        self._unlogged.clear()

    def close(self) -> None:
        self.flush()


class FlowGroup:
    """UDP flows that share a fate: those of one SOCKS UDP association (RFC 1928 section
    7). Traffic on any of them marks ``session`` (the association's) active, so the
    association's idle timer sees it; :meth:`close` ends them all (the association's TCP
    connection closed)."""

    __slots__ = ("closed", "flows", "session")

    def __init__(self, session: Session | None = None) -> None:
        self.session = session
        self.flows: set[UdpClientFlow] = set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        abort_links(self.flows, ConnectionResetError("UDP association closed"))
        self.flows.clear()


class DatagramFlowEnd(asyncio.DatagramProtocol, UnpacedEnd):
    """A UDP socket for one destination, as the outbound end of a UDP link.

    The socket is not connected, so that replies from other addresses reach it too
    (full-cone, what XUDP and packetaddr clients expect): a peer that is a
    :class:`~raybridge.link.PacketEnd` gets those with their source; any other peer gets only
    the destination's own replies, as from a connected socket.
    """

    #: The outbound's traffic counters (see ``StreamEnd.rx``/``tx``), bound by the outbound.
    rx: Any = None
    tx: Any = None

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
        self.transport = datagrams = cast(asyncio.DatagramTransport, transport)
        if self._closed:
            datagrams.close()
            return
        for datagram in self._pending:
            datagrams.sendto(datagram, self._remote)
        self._pending.clear()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
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
        if self.rx is not None:
            self.rx.value += len(data)

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
        if self.tx is not None:
            self.tx.value += len(data)
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


class FlowEnd(UnpacedEnd, PacketEnd):
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
        self.group: FlowGroup | None = None
        #: The session whose idle timer this flow's traffic also feeds (its group's).
        self._owner: Session | None = None

    def join_group(self, group: FlowGroup) -> None:
        self.group = group
        self._owner = group.session
        group.flows.add(self)

    def deliver(self, payload: bytes) -> None:
        """A datagram from the client for this flow's destination."""
        self.session.active = True
        self.session.bytes_up += len(payload)
        if self._owner is not None:
            self._owner.active = True
        if self.peer is not None:
            self.peer.write(payload)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.session.active = True
        self.session.bytes_down += len(data)
        if self._owner is not None:
            self._owner.active = True
        self.server.reply(self, self.reply_header + data if self.reply_header else data)

    def write_to(self, data: bytes, address: Destination) -> None:
        encode = self.server.encode_reply
        if self.closed or encode is None:
            return
        self.session.active = True
        self.session.bytes_down += len(data)
        if self._owner is not None:
            self._owner.active = True
        self.server.send(encode(address, data), self.client)

    def forget(self) -> None:
        if self.group is not None:
            self.group.flows.discard(self)
        self.server.forget(self)


class UdpServer(asyncio.DatagramProtocol):
    """A listening UDP socket that sorts datagrams into flows.

    ``classify(data, addr)`` decodes one datagram into ``(destination, payload,
    reply_header)`` or returns ``None`` to drop it; ``open_flow(flow)`` dispatches a new
    flow and must join it to an outbound end.

    ``group_for(addr)``: the :class:`FlowGroup` a new flow from ``addr`` joins (the client's
    UDP association), or ``None``; with ``require_group`` a datagram that would start a flow
    outside any group is dropped (RFC 1928 section 7: only the association's client may use
    the relay).
    """

    #: The inbound's traffic counters for the datagrams read and sent (``StreamEnd.rx``).
    rx: Any = None
    tx: Any = None

    def __init__(
        self,
        classify: Callable[[bytes, tuple[str, int]], tuple[Destination, bytes, bytes] | None],
        open_flow: Callable[[UdpClientFlow], None],
        new_session: Callable[[tuple[str, int]], Session],
        *,
        idle: float = UDP_IDLE,
        max_flows: int = MAX_FLOWS,
        max_client_flows: int = MAX_CLIENT_FLOWS,
        closed: Callable[[Session], None] | None = None,
        encode_reply: Callable[[Destination, bytes], bytes] | None = None,
        group_for: Callable[[tuple[str, int]], FlowGroup | None] | None = None,
        require_group: bool = False,
        name: str = "UDP",
        drops: DropLog | None = None,
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
        self.max_client_flows = max_client_flows
        self.group_for = group_for
        self.require_group = require_group
        self.drops = drops or DropLog(name)
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[tuple[str, int], Destination], UdpClientFlow] = {}
        self._client_flows: dict[str, int] = {}  # client IP -> open flows

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
        if self.rx is not None:
            self.rx.value += len(data)
        try:
            parsed = self.classify(data, addr)
        except Exception as exc:  # a bad datagram is dropped, never fatal
            self.drops.drop("malformed", f" (from {addr[0]}:{addr[1]}: {exc})", logging.INFO)
            return
        if parsed is None:
            return
        dest, payload, reply_header = parsed
        key = (addr, dest)
        flow = self.flows.get(key)
        if flow is None:
            flow = self._new_flow(addr, dest, reply_header)
            if flow is None:
                return
        flow.deliver(payload)

    def _new_flow(
        self, addr: tuple[str, int], dest: Destination, reply_header: bytes
    ) -> UdpClientFlow | None:
        group = self.group_for(addr) if self.group_for is not None else None
        if group is None and self.require_group:
            self.drops.drop("no UDP association from this address", f" (from {addr[0]}:{addr[1]})")
            return None
        if len(self.flows) >= self.max_flows:
            self.drops.drop(f"flow table full ({self.max_flows} flows)")
            return None
        ip = addr[0]
        count = self._client_flows.get(ip, 0)
        if count >= self.max_client_flows:
            self.drops.drop(
                f"client's share of the flow table full ({self.max_client_flows} flows)",
                f" (from {ip})",
            )
            return None
        flow = UdpClientFlow(self, addr, dest, reply_header, self.new_session(addr))
        if group is not None:
            flow.join_group(group)
        self.flows[(addr, dest)] = flow
        self._client_flows[ip] = count + 1
        self.open_flow(flow)
        return flow

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            if self.tx is not None:
                self.tx.value += len(data)
            self.transport.sendto(data, addr)

    def reply(self, flow: UdpClientFlow, data: bytes) -> None:
        """A reply of ``flow``'s destination to its client (from the listening socket)."""
        self.send(data, flow.client)

    def forget(self, flow: UdpClientFlow) -> None:
        if self.closed is not None:
            self.closed(flow.session)
        key = (flow.client, flow.dest)
        if self.flows.get(key) is flow:
            del self.flows[key]
            ip = flow.client[0]
            left = self._client_flows.get(ip, 1) - 1
            if left > 0:
                self._client_flows[ip] = left
            else:
                self._client_flows.pop(ip, None)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP socket error: %s", exc)

    def close(self) -> None:
        abort_links(self.flows.values())
        self.flows.clear()
        self._client_flows.clear()
        self.drops.close()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
