"""The small set of interfaces that connects inbounds, outbounds and the dispatcher.

A proxied connection is a *link*: two :class:`End` objects wired to each other
(``a.peer is b`` and ``b.peer is a``). Each end sits on a medium (a TCP socket, a VMess
stream, a Mux.Cool session, a UDP flow). What an end reads from its medium it hands to its
peer with ``peer.write()``; what its peer hands it, it sends out on its medium. The calls
mirror asyncio's transport API so that the hot path is plain method calls, with no
coroutines, queues or copies between the two sockets::

    client socket --data_received--> [inbound End] --peer.write()--> [outbound End] --> server
                  <--transport.write-- [inbound End] <--peer.write()-- [outbound End] <--

Flow control is asyncio's: when an end's medium cannot take more (its transport called
``pause_writing``), the end calls ``peer.pause_reading()`` and the peer stops reading its
own medium until ``resume_reading()``. A slow reader therefore stalls the sender instead of
growing memory.

A link whose destination network is UDP carries datagrams: each ``write()`` is exactly one
datagram.

Interfaces (``Inbound``, ``Outbound``) live here too; the :class:`Dispatcher
<raybridge.dispatcher.Dispatcher>` turns an inbound's request into an outbound's end.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raybridge.address import Destination, IPAddress

if TYPE_CHECKING:
    from raybridge.stats import Stats  # which imports this module

#: Bytes an end buffers (before its medium is ready, or in its own queues) before it asks its
#: peer to pause. Also used as the transports' high write-buffer mark.
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
#: Bytes an end holds for its peer while its medium does not exist yet (a dial in
#: progress, a client waiting for a tunnel) before it pauses the peer: small, since many
#: such ends can wait at once and their peers' kernel buffers hold the rest.
PENDING_LIMIT = 64 * 1024

_session_ids = itertools.count(1)


class End(abc.ABC):
    """One end of a bidirectional link. Its peer calls these methods."""

    peer: End | None

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send ``data`` out on this end's medium (for UDP links: one datagram)."""

    def write_many(self, parts: list[bytes]) -> None:
        """``write`` each of ``parts`` in order (a stream link only); ends that can send
        them in one go (one ``writev``, one flush) override this."""
        for data in parts:
            self.write(data)

    @abc.abstractmethod
    def write_eof(self) -> None:
        """The peer's input ended cleanly: finish this direction (TCP half-close, EOS, End)."""

    @abc.abstractmethod
    def abort(self, exc: BaseException | None = None) -> None:
        """The peer failed: tear down this end at once, without calling the peer back."""

    @abc.abstractmethod
    def pause_reading(self) -> None:
        """The peer's medium is full: stop reading this end's medium."""

    @abc.abstractmethod
    def resume_reading(self) -> None:
        """The peer's medium drained: read again."""


class UnpacedEnd(End):
    """An end with nothing to pace: its medium has no backpressure (UDP) or it reads
    nothing (a sink, a refusal), so pausing and resuming its reading do nothing."""

    def pause_reading(self) -> None:
        """Nothing to pause."""

    def resume_reading(self) -> None:
        """Nothing to resume."""


class PacketEnd(End):
    """An end of a UDP link whose datagrams may each name their own address (XUDP,
    packetaddr): a source with many destinations, or replies from many sources."""

    @abc.abstractmethod
    def write_to(self, data: bytes, address: Destination) -> None:
        """One datagram for (or from) ``address``; plain ``write`` means the link's own
        destination."""


def join(a: End, b: End) -> None:
    a.peer = b
    b.peer = a


def abort_links(ends: Iterable[End], exc: BaseException | None = None) -> None:
    """Abort each of ``ends`` and then the peer it had (``exc``: what the peers are told),
    so that both sides of each link go down: an end's own abort never calls its peer."""
    for end in list(ends):
        peer = end.peer
        end.abort()
        if peer is not None:
            peer.abort(exc)


@dataclass(slots=True, eq=False, weakref_slot=True)
class Session:
    """What routing and logging know about one proxied connection (V2Ray's context)."""

    inbound_tag: str
    source: Destination | None = None
    user: str | None = None  # the authenticated user's email / username
    level: int = 0
    protocol: str = ""  # sniffed or known application protocol, e.g. "http/1.1"
    #: The inbound's ``sniffing``: ``None`` when off, else its ``destOverride`` protocols
    #: (V2Ray's ``SniffingRequest``; the dispatcher sniffs TCP links, docs/protocols.md 4.10).
    sniffing: frozenset[str] | None = None
    muxed: bool = False  # carried inside a Mux.Cool session (which may not nest another)
    id: int = field(default_factory=_session_ids.__next__)  # (no lambda: a call fewer)
    started: float = field(default_factory=time.monotonic)
    # Counters the ends update on the hot path (plain attribute arithmetic).
    bytes_up: int = 0
    bytes_down: int = 0
    active: bool = True  # set by ends on traffic; cleared by the idle timer
    outbound_tag: str = ""  # set when dispatched (for statistics)
    counted: bool = False  # folded into the node's totals (raybridge.stats)
    #: The ``StatCounter``s following this session's byte counts (user counters).
    counters: tuple[Any, ...] = ()

    def child(self, inbound_tag: str | None = None) -> Session:
        """A new session for a stream carried inside this one (mux sessions, tunnels)."""
        return Session(
            inbound_tag=self.inbound_tag if inbound_tag is None else inbound_tag,
            source=self.source,
            user=self.user,
            level=self.level,
            sniffing=self.sniffing,  # V2Ray's mux server dispatches in the inbound's context
            muxed=self.muxed,
        )


class Inbound(abc.ABC):
    """Listens for clients, runs a protocol handshake, and hands each request to
    :meth:`Dispatcher.dispatch`."""

    tag: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def stop_accepting(self) -> None:  # noqa: B027 - optional hook
        """Take no new clients from now on; live connections go on (a removed inbound
        drains, then :meth:`close` ends what is left)."""

    @property
    def live(self) -> int:
        """Client connections open now (0 for an inbound that does not track them)."""
        return 0

    def close_idle_carriers(self) -> int:
        """Close connections that only carry sessions and carry none now (idle mux)."""
        return 0

    def can_take_over(self, old: Inbound) -> bool:
        """Whether this (new, not started) inbound can serve on ``old``'s sockets."""
        return False

    async def take_over(self, old: Inbound) -> None:
        """Start on ``old``'s sockets (only if :meth:`can_take_over`)."""
        raise NotImplementedError


class Outbound(abc.ABC):
    """Carries links to their destination."""

    tag: str
    #: V2Ray's ``outbound>>>TAG>>>traffic>>>uplink/downlink`` counters for the connections
    #: it opens (``raybridge.stats.StatCounter``), or ``None`` (the default: off).
    uplink: Any = None
    downlink: Any = None

    def bind_counters(self, uplink: Any, downlink: Any) -> None:
        """Count what this outbound's connections write (``uplink``) and read."""
        self.uplink = uplink
        self.downlink = downlink

    @abc.abstractmethod
    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        """Return the end that carries ``dest`` for ``peer``, already joined to it.

        Must not block: an end whose medium is not ready yet (a dial in progress) buffers
        what it is given, up to :data:`PENDING_LIMIT`, then pauses its peer.
        """

    def use_resolver(self, resolver: Resolver) -> None:  # noqa: B027 - optional hook
        """Called once by the node with the resolver of its ``dns`` section, for outbounds
        that look names up themselves (freedom's ``UseIP``)."""

    def chain(self, hop: Outbound, stats: Stats | None = None) -> bool:
        """``proxySettings``: carry this outbound's connections through ``hop`` from now
        on (counted in ``stats`` as the hop's). ``False`` if it makes no connection of its
        own to carry (blackhole)."""
        return False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once before the node serves traffic."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown."""


class Resolver(abc.ABC):
    """Turns a name into addresses: the system's resolver, or the ``dns`` section's client
    (``raybridge.dns``)."""

    @abc.abstractmethod
    async def lookup(self, host: str, family: int = 0) -> list[IPAddress]:
        """The addresses of ``host`` (``family``: ``socket.AF_INET``/``AF_INET6``, 0 for
        both); an empty list when the name cannot be resolved. Never raises for a name."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown."""


class IdleTimer:
    """Closes a link that has carried no traffic for ``timeout`` seconds.

    Like V2Ray's ``signal.ActivityTimer``, it checks once per period whether any traffic
    passed (ends set ``session.active = True``) instead of re-arming a timer per chunk, so an
    idle link is closed between ``timeout`` and ``2 * timeout`` after its last byte.
    """

    __slots__ = ("_handle", "_loop", "_on_idle", "_session", "timeout")

    def __init__(self, session: Session, timeout: float, on_idle: Callable[[], None]) -> None:
        self._session = session
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        if timeout > 0:
            self._handle = self._loop.call_later(timeout, self._check)

    def set_timeout(self, timeout: float) -> None:
        """Switch to a new period (e.g. V2Ray's uplinkOnly after one direction ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.timeout = timeout
        if timeout > 0:
            self._session.active = False
            self._handle = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        if self._session.active:
            self._session.active = False
            self._handle = self._loop.call_later(self.timeout, self._check)
        else:
            self._handle = None
            self._on_idle()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Backlog:
    """What an end holds for its peer while its medium is not ready yet: a dial in
    progress (``StreamEnd``), a route not chosen yet or a tunnel not there yet
    (``DeferredEnd``), a mux session whose New frame is not out yet (``MuxSessionEnd``).

    One mechanism for all of them: the parts in order, then EOF; past ``limit`` bytes the
    peer is paused, and it is resumed when the backlog is handed over.
    """

    __slots__ = ("eof", "limit", "parts", "paused_peer", "size")

    def __init__(self, limit: int = PENDING_LIMIT) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.eof = False
        self.limit = limit
        self.paused_peer = False

    def add(self, data: bytes | bytearray | memoryview, peer: End | None) -> None:
        # Own the bytes: a view would keep its (larger) source buffer alive meanwhile.
        self.parts.append(data if type(data) is bytes else bytes(data))
        self.size += len(data)
        if self.size > self.limit and not self.paused_peer and peer is not None:
            self.paused_peer = True
            peer.pause_reading()

    def take(self) -> list[bytes]:
        """Everything held, in order; the backlog is empty afterwards (EOF stays set)."""
        parts, self.parts, self.size = self.parts, [], 0
        return parts

    def release(self, peer: End | None) -> None:
        """The medium is ready: let the peer send again if we had paused it."""
        if self.paused_peer:
            self.paused_peer = False
            if peer is not None:
                peer.resume_reading()

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0


class DeferredEnd(End):
    """Stands in for an end that does not exist yet (routing waits for DNS, a client waits
    for a tunnel).

    It holds what its peer sends in a :class:`Backlog` and replays everything into the real
    end once :meth:`bind` is called.
    """

    def __init__(self) -> None:
        self.peer: End | None = None
        self._backlog = Backlog()
        self._reading_paused = False
        self._aborted = False
        self._target: End | None = None

    def write(self, data: bytes) -> None:
        if self._target is not None:
            self._target.write(data)
        elif not self._aborted:
            self._backlog.add(data, self.peer)

    def write_eof(self) -> None:
        if self._target is not None:
            self._target.write_eof()
        else:
            self._backlog.eof = True

    def abort(self, exc: BaseException | None = None) -> None:
        if self._target is not None:
            self._target.abort(exc)
            return
        self._aborted = True
        self._backlog.clear()

    def pause_reading(self) -> None:
        if self._target is not None:
            self._target.pause_reading()
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._target is not None:
            self._target.resume_reading()
        self._reading_paused = False

    @property
    def aborted(self) -> bool:
        return self._aborted

    def bind(self, real: End) -> None:
        """``real`` has been joined to our peer; hand it everything we held."""
        self._target = real
        if self._aborted:
            real.abort()
            return
        if self._reading_paused:
            real.pause_reading()
        backlog = self._backlog
        for data in backlog.take():
            real.write(data)
        if backlog.eof:
            real.write_eof()
        backlog.release(self.peer)

    def fail(self, exc: BaseException) -> None:
        """No real end will come: abort our peer."""
        self._aborted = True
        self._backlog.clear()
        if self.peer is not None:
            self.peer.abort(exc)


class ClosedEnd(UnpacedEnd):
    """An end for a link that was refused: it aborts its peer as soon as it is joined."""

    def __init__(self, reason: BaseException) -> None:
        self.peer: End | None = None
        self.reason = reason

    def start(self) -> None:
        if self.peer is not None:
            asyncio.get_running_loop().call_soon(self.peer.abort, self.reason)

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        pass
