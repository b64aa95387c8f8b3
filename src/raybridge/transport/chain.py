"""Outbound chaining (``proxySettings.tag``): an outbound's connection carried by another.

V2Ray 4.34 (``app/proxyman/outbound/handler.go``, ``Handler.Dial``): when an outbound has
``proxySettings``, the connection it would dial to its server is instead handed to the
named outbound's handler as a new link to that server's address, and the outbound speaks
its protocol over that link. Of its own ``streamSettings`` only TLS is applied, on top of
the link; the network (ws, h2), the TCP header, ``sockopt`` and ``sendThrough`` are not
(the config loader warns about them). The hop is reached directly, not through routing.

Here the link is a pair of objects: :class:`ChainEnd`, the :class:`~raybridge.link.End`
joined to the hop's end, and :class:`ChainTransport`, the ``asyncio.Transport`` the
outbound's protocol (a VMess client end, freedom's stream end, or a TLS stack above it)
writes to. Writes go straight to the hop's end and what it delivers goes straight to the
protocol: no queue, task or copy. Backpressure maps across as for a socket: the hop's
``pause_reading`` on us is the protocol's ``pause_writing``, and the protocol's
``pause_reading`` pauses the hop's medium.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from raybridge.address import Destination
from raybridge.link import End, Outbound, Session
from raybridge.stats import Stats

logger = logging.getLogger("raybridge.transport")


class ChainEnd(End):
    """Our end of the link through the hop: what the hop's end delivers, the protocol
    above receives."""

    def __init__(self, transport: ChainTransport) -> None:
        self.peer: End | None = None
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._transport.deliver(data)

    def write_eof(self) -> None:
        self._transport.deliver_eof()

    def abort(self, exc: BaseException | None = None) -> None:
        self._transport.lost(exc or ConnectionResetError("the chained connection was closed"))

    def pause_reading(self) -> None:  # the hop's medium is full: stop writing to it
        self._transport.pause_protocol()

    def resume_reading(self) -> None:
        self._transport.resume_protocol()


class ChainTransport(asyncio.Transport):
    """The transport of a protocol whose bytes travel through another outbound's link."""

    def __init__(self, protocol: asyncio.Protocol, peername: tuple[str, int]) -> None:
        super().__init__()
        self._protocol = protocol
        self._peername = peername
        self.end = ChainEnd(self)
        self._eof_sent = False
        self._eof_received = False
        self._closing = False
        self._lost = False
        self._reading = True
        self._protocol_paused = False
        self._made = False
        self._lost_early: tuple[BaseException | None] | None = None
        #: The hop's session and the node's counters it is folded into once the link ends.
        self.counted: tuple[Stats, Session] | None = None
        #: That session, whose bytes this transport counts: the payload crossing the hop
        #: (an inbound side counts a link's payload; here the chained outbound is the
        #: hop link's inbound side).
        self.session: Session | None = None

    def made(self) -> None:
        """Connect the protocol (after the hop's end exists, so that the protocol's first
        writes have somewhere to go)."""
        self._made = True
        self._protocol.connection_made(self)
        if self._lost_early is not None:
            self.lost(self._lost_early[0])

    # -- from the hop ------------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        if not self._closing and data and self._made:
            if self.session is not None:
                self.session.bytes_down += len(data)
            self._protocol.data_received(data)

    def deliver_eof(self) -> None:
        if self._closing or self._eof_received:
            return
        self._eof_received = True
        if not self._protocol.eof_received():
            self.close()
        elif self._eof_sent:
            self._finish()

    def lost(self, exc: BaseException | None) -> None:
        """The hop's end failed or was torn down."""
        if not self._made:
            self._lost_early = (exc,)
            return
        if self._lost:
            return
        self._closing = True
        self._lost = True
        self._count()
        self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)

    def pause_protocol(self) -> None:
        if not self._protocol_paused and not self._closing:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def resume_protocol(self) -> None:
        if self._protocol_paused and not self._closing:
            self._protocol_paused = False
            self._protocol.resume_writing()

    # -- asyncio.Transport: writing ------------------------------------------------------
    def _hop(self) -> End | None:
        return None if self._closing else self.end.peer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        hop = self._hop()
        if hop is not None and data:
            if self.session is not None:
                self.session.bytes_up += len(data)
            hop.write(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        hop = self._hop()
        if hop is not None:
            pieces = [bytes(d) for d in list_of_data]
            if self.session is not None:
                self.session.bytes_up += sum(map(len, pieces))
            hop.write_many(pieces)

    def write_eof(self) -> None:
        hop = self._hop()
        if hop is None or self._eof_sent:
            return
        self._eof_sent = True
        hop.write_eof()
        if self._eof_received:
            self._finish()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0  # the hop's end holds and accounts for what it cannot send yet

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the hop's end applies its own marks and pauses us past them

    # -- reading -------------------------------------------------------------------------
    def pause_reading(self) -> None:
        hop = self._hop()
        if hop is not None and self._reading:
            self._reading = False
            hop.pause_reading()

    def resume_reading(self) -> None:
        hop = self._hop()
        if hop is not None and not self._reading:
            self._reading = True
            hop.resume_reading()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Finish gracefully when both directions are done; before our peer has finished
        sending, the protocol wants nothing more from it: the hop's link is torn down."""
        hop = self._hop()
        if hop is None:
            return
        if self._eof_received:
            if not self._eof_sent:
                self._eof_sent = True
                hop.write_eof()
            self._finish()
        else:
            self._closing = True
            hop.abort(ConnectionAbortedError("closed by the chained outbound"))
            self._lost_soon(None)

    def abort(self) -> None:
        hop = self._hop()
        if hop is None:
            return
        self._closing = True
        hop.abort(ConnectionAbortedError("aborted by the chained outbound"))
        self._lost_soon(None)

    def _finish(self) -> None:
        """Both directions ended cleanly."""
        self._closing = True
        self._lost_soon(None)

    def _lost_soon(self, exc: Exception | None) -> None:
        asyncio.get_running_loop().call_soon(self._call_lost, exc)

    def _call_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._count()
            self._protocol.connection_lost(exc)

    def _count(self) -> None:
        counted, self.counted = self.counted, None
        if counted is not None:
            counted[0].closed(counted[1])

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def connect_through(
    hop: Outbound,
    session: Session | None,
    dest: Destination,
    protocol: asyncio.Protocol,
    stats: Stats | None = None,
) -> None:
    """Connect ``protocol`` to ``dest`` over a new link through ``hop``: the protocol
    gets its transport at once; the hop's end holds the first bytes until its own
    connection is up, and a failure there reaches the protocol as ``connection_lost``.
    ``stats``: the node's counters, where the link counts as a connection of the hop (as
    V2Ray counts it in both outbounds' traffic)."""
    logger.debug("proxying to %s for dest %s", hop.tag, dest)
    transport = ChainTransport(protocol, (str(dest.host), dest.port))
    parent = session or Session(inbound_tag="")
    # A session of its own, counted by this transport as the hop's traffic (the chained
    # outbound's session counts the same payload as its own).
    child = parent.child()
    if stats is not None:
        stats.opened(child, hop.tag)
        transport.counted = (stats, child)
        transport.session = child
    hop.connect(child, dest, transport.end)  # joins its end to ours
    transport.made()
