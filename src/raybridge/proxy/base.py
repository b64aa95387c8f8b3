"""What every stream inbound shares: listening, the handshake deadline, starting the relay,
idle timeouts, and closing bad connections without disturbing the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from raybridge import log as logs
from raybridge.address import Destination, Network, parse_host
from raybridge.dispatcher import Dispatcher
from raybridge.link import End, IdleTimer, Inbound, Session
from raybridge.transport.tcp import StreamEnd, describe_peer, start_tcp_server

logger = logging.getLogger("raybridge.proxy")


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-level timeouts in seconds (V2Ray's ``policy.levels``; PROTOCOLS.md 6).

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
        self.inbound.tracker.ends.add(self)
        if self.policy.handshake > 0:
            loop = asyncio.get_running_loop()
            self._handshake_timer = loop.call_later(self.policy.handshake, self._handshake_expired)
        self.handshake_started()

    def handshake_started(self) -> None:
        """Hook: the connection is up (dokodemo-door dispatches right here)."""

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.relaying:
            self.reject("handshake timed out")

    def new_session(self, user: str | None = None, level: int = 0) -> Session:
        self.session = Session(
            inbound_tag=self.inbound.tag, source=self.source, user=user, level=level
        )
        return self.session

    def start_relay(self, dest: Destination, first: bytes = b"") -> End:
        """The handshake is done: dispatch ``dest`` and relay from now on."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        session = self.session or self.new_session()
        self.relaying = True
        peer = self.inbound.dispatcher.dispatch(session, dest, self)
        self._idle = IdleTimer(session, self.policy.conn_idle, self._on_idle)
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
        self._half_closed(self.policy.uplink_only)
        return keep

    def write_eof(self) -> None:
        super().write_eof()
        self._half_closed(self.policy.downlink_only)

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
            transport.write(reply)
            self.close()
        else:
            self.abort()

    def on_closed(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.inbound.dispatcher.stats.closed(self.session)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.inbound.tracker.ends.discard(self)


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

    def __init__(
        self,
        tag: str,
        listen: str,
        port: int,
        dispatcher: Dispatcher,
        policy: Policy | None = None,
    ) -> None:
        self.tag = tag
        self.listen = listen
        self.port = port
        self.dispatcher = dispatcher
        self.policy = policy or Policy()
        self.tracker = Tracker()
        self.server: asyncio.Server | None = None

    def describe(self) -> str:
        tag = f" [{self.tag}]" if self.tag else ""
        return f"{self.protocol_name} inbound{tag} on {self.listen}:{self.bound_port}"

    @property
    def bound_port(self) -> int:
        if self.server is not None and self.server.sockets:
            return int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def start(self) -> None:
        self.server = await start_tcp_server(lambda: self.end_class(self), self.listen, self.port)
        logger.info("%s listening", self.describe())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for end in list(self.tracker.ends):
            peer = end.peer
            end.abort()
            if peer is not None:
                peer.abort()
        self.tracker.ends.clear()
