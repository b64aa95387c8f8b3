"""What every stream inbound shares: listening, the handshake deadline, starting the relay,
idle timeouts, and closing bad connections without disturbing the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from raybridge import log as logs
from raybridge.address import Destination, Network, parse_host
from raybridge.config.model import (
    PLAIN,
    InboundConfig,
    LevelPolicy,
    PolicyConfig,
    RaybridgeOptions,
    StreamSettings,
)
from raybridge.dispatcher import Dispatcher
from raybridge.link import End, IdleTimer, Inbound, Session
from raybridge.stats import StatCounter
from raybridge.transport.dial import ServerTransport
from raybridge.transport.tcp import StreamEnd, describe_peer, start_tcp_server
from raybridge.transport.udp import UdpClientFlow, UdpServer

logger = logging.getLogger("raybridge.proxy")


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-level timeouts in seconds (V2Ray's ``policy.levels``; docs/protocols.md 6).

    ``uplink_only``/``downlink_only``: once one direction has ended, the link is closed if
    the other stays idle this long. V2Ray 4.34 defaults both to 1 s and, because it does not
    propagate half-close, relies on them to end every connection. raybridge propagates
    half-close, so it only applies them when a config sets them; by default a half-closed
    link keeps ``conn_idle``.
    """

    handshake: float = 60.0
    conn_idle: float = 300.0
    uplink_only: float | None = None
    downlink_only: float | None = None
    buffer_size: int = 512 * 1024

    @classmethod
    def of(cls, level: LevelPolicy) -> Policy:
        """The timeouts of a configured ``policy.levels`` entry."""
        return cls(
            handshake=level.handshake,
            conn_idle=level.conn_idle,
            uplink_only=level.uplink_only,
            downlink_only=level.downlink_only,
            buffer_size=level.buffer_size,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundCommon:
    """What every stream inbound needs, whatever its protocol: its tag, where it listens,
    where its connections go, and the user level they get with its policy (V2Ray's
    ``userLevel``; VMess users carry their own levels, and the inbound takes level 0's)."""

    tag: str
    listen: str
    port: int
    dispatcher: Dispatcher
    policy: Policy = Policy()
    user_level: int = 0
    stream: StreamSettings = PLAIN  # the transport under it (docs/transports.md)
    #: ``sniffing``: ``None`` when off, else the ``destOverride`` protocols (Session.sniffing).
    sniffing: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundContext:
    """One port of one configured inbound, as its protocol's ``build_inbound`` sees it
    (the table of builders is :mod:`raybridge.registry`)."""

    config: InboundConfig
    port: int
    dispatcher: Dispatcher
    policies: PolicyConfig
    options: RaybridgeOptions

    def common(self, user_level: int = 0) -> InboundCommon:
        """The inbound's :class:`InboundCommon` on this port, serving ``user_level``."""
        return InboundCommon(
            tag=self.config.tag,
            listen=self.config.listen,
            port=self.port,
            dispatcher=self.dispatcher,
            policy=Policy.of(self.policies.level(user_level)),
            user_level=user_level,
            stream=self.config.stream,
            sniffing=(self.config.sniffing_dest_override if self.config.sniffing_enabled else None),
        )


class Tracker:
    """The live connections of an inbound, so shutdown can close them all."""

    def __init__(self) -> None:
        self.ends: set[InboundEnd] = set()


class InboundEnd(StreamEnd):
    """A client connection on a stream inbound: handshake first, then relay."""

    inbound_side = True

    def __init__(self, inbound: StreamInbound) -> None:
        super().__init__(None)
        self.inbound = inbound
        if inbound.uplink is not None:
            self.rx = inbound.uplink
        if inbound.downlink is not None:
            self.tx = inbound.downlink
        self.source: Destination | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._idle: IdleTimer | None = None
        self.relaying = False

    @property
    def policy(self) -> Policy:
        return self.inbound.policy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = describe_peer(transport)
        if peer is not None:
            self.source = Destination(Network.TCP, parse_host(peer[0]), peer[1])
        inbound = self.inbound
        inbound.tracker.ends.add(self)
        handshake = inbound.policy.handshake  # (not self.policy: a property, a call)
        if handshake > 0:
            loop = asyncio.get_running_loop()
            self._handshake_timer = loop.call_later(handshake, self._handshake_expired)
        self.handshake_started()

    def handshake_started(self) -> None:
        """Hook: the connection is up (dokodemo-door dispatches right here)."""

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            super().data_received(data)
        else:
            if self.rx is not None:
                self.rx.value += len(data)
            self.handshake_received(data)

    def handshake_received(self, data: bytes) -> None:
        """Hook: bytes from the client before the relay started (its handshake); nothing
        takes them by default."""

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.relaying:
            self.reject("handshake timed out")

    def _cancel_handshake_deadline(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None:
            timer.cancel()

    def new_session(self, user: str | None = None, level: int = 0) -> Session:
        self.session = Session(
            inbound_tag=self.inbound.tag,
            source=self.source,
            user=user,
            level=level,
            sniffing=self.inbound.sniffing,
        )
        return self.session

    def start_relay(self, dest: Destination, first: bytes = b"") -> End:
        """The handshake is done: dispatch ``dest`` and relay from now on."""
        self._cancel_handshake_deadline()
        session = self.session or self.new_session()
        self.relaying = True
        peer = self.inbound.dispatcher.dispatch(session, dest, self)
        self._idle = IdleTimer(session, self.inbound.policy.conn_idle, self._on_idle)
        if first:
            session.bytes_up += len(first)
            peer.write(first)
        return peer

    def _on_idle(self) -> None:
        logger.info("connection %s idle for %ss: closed", self.source_text, self.policy.conn_idle)
        peer = self.peer
        self.abort(TimeoutError("idle"))
        if peer is not None:
            peer.abort(TimeoutError("idle"))

    def eof_received(self) -> bool:
        if not self.relaying:
            self.reject(f"{self.inbound.protocol_name}: connection ended during the handshake")
            return False
        keep = super().eof_received()
        self._half_closed(self.inbound.policy.uplink_only)
        return keep

    def write_eof(self) -> None:
        super().write_eof()
        self._half_closed(self.inbound.policy.downlink_only)

    def _half_closed(self, timeout: float | None) -> None:
        if self._idle is not None and timeout is not None and not self.done:
            self._idle.set_timeout(timeout)

    @property
    def source_text(self) -> str:
        return logs.format_source(self.source)

    def reject(
        self, reason: str, *, reply: bytes = b"", level: int = logging.INFO, kind: str = ""
    ) -> None:
        """Close this one connection because of bad input, and log why. ``kind`` is the
        failure's short name for statistics (default: the reason up to its first colon)."""
        logger.log(level, "%s: %s from %s", self.inbound.describe(), reason, self.source_text)
        self.inbound.dispatcher.stats.handshake_failed(
            self.inbound.tag or self.inbound.protocol_name, kind or short_reason(reason)
        )
        logs.rejected(self.source, reason, self.inbound.tag)
        transport = self.transport
        if transport is not None and reply:
            self.send_wire(reply)
            self.close()
        else:
            self.abort()

    def on_closed(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.inbound.dispatcher.stats.closed(self.session)
        self._cancel_handshake_deadline()
        idle, self._idle = self._idle, None
        if idle is not None:
            idle.cancel()
        self.inbound.tracker.ends.discard(self)


class _Acceptor:
    """The inbound a listening socket's new connections go to (one per socket, handed
    from inbound to inbound by :meth:`StreamInbound.take_over`)."""

    __slots__ = ("owner",)

    def __init__(self, owner: StreamInbound) -> None:
        self.owner = owner

    def new_end(self) -> InboundEnd:
        owner = self.owner
        return owner.end_class(owner)


def _refuse_flow(flow: UdpClientFlow) -> None:
    """A new UDP flow on an inbound that takes no new clients (it drains)."""
    flow.abort(ConnectionRefusedError("the inbound is draining"))


def short_reason(reason: str) -> str:
    """``"VMess: invalid user (...)"`` -> ``"vmess: invalid user"``: a bounded label."""
    head, _, rest = reason.partition(": ")
    if not rest:
        return reason.split(" (")[0][:40]
    return f"{head.lower()}: {rest.split(' (')[0].split(': ')[0][:40]}"


class StreamInbound(Inbound):
    """Listens on TCP ``listen:port`` and runs one :class:`InboundEnd` per connection."""

    protocol_name = "?"
    end_class: Callable[[StreamInbound], InboundEnd]

    def __init__(self, common: InboundCommon) -> None:
        self.tag = common.tag
        self.listen = common.listen
        self.port = common.port
        self.dispatcher = common.dispatcher
        self.policy = common.policy
        self.user_level = common.user_level
        self.stream = common.stream
        self.sniffing = common.sniffing
        # Built now, so a bad certificate is a config error before anything listens.
        self.transport = ServerTransport(
            common.stream,
            handshake_timeout=common.policy.handshake,
            on_failure=self._transport_failed,
            describe=f"{self.protocol_name} inbound [{common.tag}]: " if common.tag else "",
        )
        self.tracker = Tracker()
        #: V2Ray's ``inbound>>>TAG>>>traffic>>>uplink/downlink`` counters, bound on each
        #: connection's end (``StreamEnd.rx``/``tx``); ``None``: off.
        self.uplink: StatCounter | None = None
        self.downlink: StatCounter | None = None
        self.server: asyncio.Server | None = None
        #: UDP on the same port (socks with ``udp``, dokodemo-door with ``network`` udp).
        self.udp_server: UdpServer | None = None
        #: Who serves the connections this inbound's listener accepts: itself, or the
        #: inbound that took the listener over on a reload (:meth:`take_over`); the heir
        #: takes the acceptor along, so no replaced inbound stays referenced.
        self._acceptor = _Acceptor(self)
        self._adopted: asyncio.Server | None = None
        self._adopted_udp: UdpServer | None = None
        self._owns_transport = True  # False once an heir took our stream layers over
        self.accepting = True

    def describe(self) -> str:
        tag = f" [{self.tag}]" if self.tag else ""
        return f"{self.protocol_name} inbound{tag} on {self.listen}:{self.bound_port}"

    @property
    def bound_port(self) -> int:
        if self.server is not None and self.server.sockets:
            return int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def start(self) -> None:
        if self._adopted is not None:
            self.server, self._adopted = self._adopted, None
            logger.info("%s: listening socket kept", self.describe())
            return
        self.server = await start_tcp_server(
            self.transport.factory(self._acceptor.new_end),
            self.listen,
            self.port,
            sockopt=self.stream.sockopt,
        )
        logger.info("%s listening (%s)", self.describe(), self.stream.describe())

    async def start_udp(self, server: UdpServer) -> None:
        """Serve UDP with ``server``'s settings: on a socket taken over from the inbound
        this one replaces (its live flows go on), else on a new one."""
        server.rx, server.tx = self.uplink, self.downlink  # V2Ray counts UDP inbounds too
        adopted, self._adopted_udp = self._adopted_udp, None
        if adopted is None:
            port = self.bound_port  # the TCP listener's (port 0: the one it got), or ours
            self.udp_server = server
            await server.start(self.listen, port)
            return
        for name in (
            "classify",
            "open_flow",
            "new_session",
            "idle",
            "max_flows",
            "max_client_flows",
            "closed",
            "encode_reply",
            "group_for",
            "require_group",
            "rx",
            "tx",
        ):
            setattr(adopted, name, getattr(server, name))
        self.udp_server = adopted

    def can_take_over(self, old: Inbound) -> bool:
        """Whether this inbound can serve on ``old``'s sockets: the same protocol, address,
        port and transport (only then are its listener's stream layers right for us)."""
        return (
            type(old) is type(self)
            and isinstance(old, StreamInbound)
            and (old.server is not None or old.udp_server is not None)
            and (old.listen, old.port) == (self.listen, self.port)
            and old.stream == self.stream
        )

    async def take_over(self, old: Inbound) -> None:
        """Start on ``old``'s listening sockets (nothing is rebound): connections accepted
        from now on are ours, ``old``'s live ones stay with it (it drains)."""
        assert isinstance(old, StreamInbound)
        self._adopted, old.server = old.server, None
        self._adopted_udp, old.udp_server = old.udp_server, None
        self._acceptor = old._acceptor
        self._acceptor.owner = self
        old.accepting = False
        old._owns_transport = False
        own, self.transport = self.transport, old.transport  # the listener's stream layers
        own.close()
        self.transport.on_failure = self._transport_failed  # (counted under our tag)
        await self.start()
        if self._adopted is not None:  # we take no TCP (dokodemo-door, network udp)
            self._adopted.close()
            self._adopted = None
        if self._adopted_udp is not None:  # we take no UDP
            self._adopted_udp.close()
            self._adopted_udp = None

    def stop_accepting(self) -> None:
        """Close the listening sockets; live connections (and UDP flows) go on."""
        self.accepting = False
        server, self.server = self.server, None
        if server is not None:
            server.close()
        udp = self.udp_server
        if udp is not None:
            udp.open_flow = _refuse_flow

    def close_idle_carriers(self) -> int:
        """Close the Mux.Cool connections (``v1.mux.cool``) that carry no session now: a
        draining node does not wait for a client's idle mux connection. Returns how many."""
        from raybridge.protocols.mux import Role
        from raybridge.transport.mux import MuxWorker

        closed = 0
        for end in list(self.tracker.ends):
            worker = end.peer
            if (
                isinstance(worker, MuxWorker)
                and worker.role is Role.SERVER
                and not worker.closed
                and worker.session_count == 0
            ):
                worker.close()
                closed += 1
        return closed

    @property
    def live(self) -> int:
        """Open client connections: TCP, without the tunnels a portal holds (they carry no
        client of their own); UDP flows are not waited for (they end when idle)."""
        return sum(1 for end in self.tracker.ends if not getattr(end.peer, "carries_tunnel", False))

    def _transport_failed(self, layer: str, reason: str) -> None:
        """A transport layer refused a client or broke: counted by layer and reason."""
        self.dispatcher.stats.handshake_failed(
            self.tag or self.protocol_name, short_reason(f"{layer}: {reason}")
        )

    async def close(self) -> None:
        udp_server, self.udp_server = self.udp_server, None
        server, self.server = self.server, None
        if udp_server is not None:
            udp_server.close()
        if server is not None:
            server.close()
        if self._owns_transport:
            self.transport.close()  # HTTP/2 connections outlive the listener
        for end in list(self.tracker.ends):
            peer = end.peer
            end.abort()
            if peer is not None:
                peer.abort()
        self.tracker.ends.clear()

    # -- the UDP server's callbacks ---------------------------------------------------------
    def udp_session(self, addr: tuple[str, int]) -> Session:
        """The session of a new UDP client flow from ``addr``."""
        source = Destination(Network.UDP, parse_host(addr[0]), addr[1])
        return Session(
            inbound_tag=self.tag, source=source, level=self.user_level, sniffing=self.sniffing
        )

    def open_flow(self, flow: UdpClientFlow) -> None:
        self.dispatcher.dispatch(flow.session, flow.dest, flow)
