"""Mux.Cool over a link: the asyncio side of :mod:`raybridge.protocols.mux`.

A :class:`MuxWorker` is the end of a link whose medium is a mux byte stream (its *carrier*:
a VMess connection to ``v1.mux.cool``, or a reverse tunnel). It feeds what the carrier
delivers to the codec and turns each mux session into a :class:`MuxSessionEnd`, an ordinary
:class:`~raybridge.link.End`, so the rest of the program never knows a stream is
multiplexed (aioquic's ``QuicStreamAdapter`` idea)::

    carrier end  <-->  MuxWorker  ==(codec)==  MuxSessionEnd <--> peer end (socket, ...)
                                               MuxSessionEnd <--> peer end
                                               ...

Flow control. Mux.Cool has none per session (docs/protocols.md 2.4): V2Ray stops reading the
whole carrier when one session's reader is slow, which stalls every other session on it.
raybridge never does. A session whose peer cannot take more buffers what arrives, and:

* when the other end is raybridge (it sent ``FC_HELLO``: a client announces itself, a
  server answers a client that did), it asks that end to stop sending
  on this session (``FC_PAUSE``) past :attr:`FlowLimits.soft` bytes and to go on
  (``FC_RESUME``) once it has drained below half of that: the sender pauses reading that
  session's source only, so a slow reader is merely slow, like a TCP connection of its own;
* otherwise (V2Ray, Xray, sing-box) a session that stays over ``soft`` for
  :attr:`FlowLimits.grace` seconds, or exceeds :attr:`FlowLimits.hard`, is ended with an
  error and logged, so that it cannot hold up the others;
* all sessions of the process together buffer at most :attr:`FlowLimits.budget` bytes; a
  session that would exceed it is ended the same way.

When the carrier itself cannot take more (its write buffer is full), every session's peer
is paused: they share the link. (docs/RELIABILITY.md, "One slow reader".)

Half-close. A session's peer ending its input sends End and keeps receiving; the peer's End
is delivered as ``write_eof``; the session is gone once both Ends have passed (or either
side sends End+Error).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from raybridge.address import Destination, Network
from raybridge.errors import LocalProtocolError
from raybridge.link import Backlog, End, IdleTimer, PacketEnd, Session, join
from raybridge.protocols.mux import (
    FC_HELLO,
    FC_PAUSE,
    FC_RESUME,
    MAX_FRAME_DATA,
    MAX_UDP_DATA,
    KeepAliveReceived,
    MuxConnection,
    MuxError,
    MuxEvent,
    Role,
    SessionData,
    SessionEnded,
    SessionOpened,
)
from raybridge.stats import Stats

logger = logging.getLogger("raybridge.mux")


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """How much a mux session may buffer for a slow peer (see the module docstring)."""

    #: Past this, ask a raybridge sender to pause the session (or start the grace timer).
    soft: int = 512 * 1024
    #: A session over this is ended. Well above what can be in flight when FC_PAUSE is
    #: sent: all sessions of a carrier share its TCP connection, so that is bounded by its
    #: socket buffers (a few MB on loopback, where Linux autotunes them up to 6 MB).
    hard: int = 32 * 1024 * 1024
    #: Seconds a session may stay over ``soft`` when the sender cannot be asked to pause.
    grace: float = 3.0
    #: What all sessions of the process together may buffer: past it, the session holding
    #: the most is ended.
    budget: int = 128 * 1024 * 1024


#: Bytes buffered right now by every session of this process, against FlowLimits.budget,
#: and the sessions holding them.
_buffered_total = [0]
_holding: set[MuxSessionEnd] = set()


def buffered_total() -> int:
    """What every mux session of this process holds for slow peers right now."""
    return _buffered_total[0]


#: Bytes a session buffers for a slow peer before it asks the sender to pause.
SESSION_BUFFER = FlowLimits().soft
#: Data per Keep frame: the most a frame carries. Every Mux.Cool reader in use takes frames
#: of any uint16 length (V2Ray 4.34 and v5 ``common/mux/reader.go``, Xray the same,
#: sing-vmess ``mux.go`` ``buf.NewSize(length)``), and a frame is not bound to a VMess chunk
#: (a 16 KiB one, ``SEND_CHUNK_SIZE``): a long frame spans several, and the reader gets the
#: chunks of one socket read joined (``write_many``), so what costs Python per piece is per
#: frame and per read, not per chunk.
FRAME_DATA = MAX_FRAME_DATA
#: While a flush is scheduled, payload queues up to be sent with it in one write; past this
#: many bytes it goes at once. A read loop can hand over megabytes in one loop iteration
#: (libuv reads a ready socket up to 32 times), and none of it may wait unseen by the
#: carrier's backpressure.
FLUSH_AT = 4 * FRAME_DATA
#: Idle timeout of a mux session (V2Ray's connIdle).
SESSION_IDLE = 300.0


class MuxSessionEnd(End):
    """One mux session, as an end of a link."""

    __slots__ = (
        "_asked_pause",
        "_buffer",
        "_buffered",
        "_eof_pending",
        "_first",
        "_grace",
        "_idle",
        "_paused",
        "_remote_paused",
        "closed",
        "dest",
        "inbound_side",
        "network",
        "peer",
        "session",
        "sid",
        "worker",
    )

    def __init__(
        self,
        worker: MuxWorker,
        sid: int | None,
        network: Network,
        session: Session,
        *,
        inbound_side: bool,
        idle: float = SESSION_IDLE,
    ) -> None:
        self.worker = worker
        self.sid = sid  # None until the New frame is queued (client role)
        self.dest: Destination | None = None
        self._first = Backlog()  # what our peer sent before the New frame went out
        self.network = network
        self.session = session
        self.inbound_side = inbound_side
        self.peer: End | None = None
        self.closed = False
        self._paused = False  # our peer asked us to stop delivering
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._eof_pending = False
        self._asked_pause = False  # we sent FC_PAUSE for this session
        self._remote_paused = False  # the peer sent FC_PAUSE: don't read our peer
        self._grace: asyncio.TimerHandle | None = None
        self._idle = IdleTimer(session, idle, self._expire) if idle > 0 else None

    # -- byte counts: what the carrier delivered ("received") and what we send on it; a
    # session's payload is counted by its inbound side only (raybridge.stats) --
    def _received(self, size: int) -> None:
        session = self.session
        session.active = True
        if self.inbound_side:
            session.bytes_up += size

    def _sent(self, size: int) -> None:
        session = self.session
        session.active = True
        if self.inbound_side:
            session.bytes_down += size

    # -- from the worker ---------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        self._received(len(data))
        if self._paused:
            self._hold(data)
            return
        if self.peer is not None:
            self.peer.write(data)

    def _hold(self, data: bytes) -> None:
        """Our peer is paused: keep ``data`` within the limits (see the module docstring)."""
        # Own the bytes: a view would keep its whole (larger) source buffer alive.
        self._buffer.append(data if type(data) is bytes else bytes(data))
        size = len(data)
        self._buffered += size
        _buffered_total[0] += size
        _holding.add(self)
        limits = self.worker.limits
        if self._buffered > limits.hard:
            self.overflow(f"over {limits.hard} bytes buffered for a slow reader")
            return
        if _buffered_total[0] > limits.budget:
            largest = max(_holding, key=lambda end: end._buffered)
            largest.overflow(f"the node's mux buffers are full ({limits.budget} bytes)")
            if self.closed:
                return
        if self._buffered > limits.soft:
            if self.worker.peer_flow_control:
                if not self._asked_pause and self.sid is not None:
                    self._asked_pause = True
                    self.worker.send_flow(self.sid, pause=True)
            elif self._grace is None:
                self._grace = self.worker._loop.call_later(limits.grace, self._grace_over)

    def _release(self) -> None:
        _buffered_total[0] -= self._buffered
        self._buffered = 0
        _holding.discard(self)

    def _grace_over(self) -> None:
        self._grace = None
        if not self.closed and self._buffered > self.worker.limits.soft:
            self.overflow(f"reader too slow for {self.worker.limits.grace:.0f}s")

    def overflow(self, reason: str) -> None:
        """End this session with an error: it would hold up the others (logged)."""
        if self.closed:
            return
        self.worker.overflowed += 1
        self.worker.log_overflow(self, reason)
        peer = self.peer
        self.abort(ConnectionAbortedError(reason))
        if peer is not None:
            peer.abort(ConnectionAbortedError(reason))

    # -- flow control asked by the other end ---------------------------------------------
    def remote_pause(self) -> None:
        if not self._remote_paused:
            self._remote_paused = True
            if self.peer is not None:
                self.peer.pause_reading()

    def remote_resume(self) -> None:
        if self._remote_paused:
            self._remote_paused = False
            if self.peer is not None and not self.worker.out_paused:
                self.peer.resume_reading()

    def deliver_to(self, data: bytes, address: Destination) -> None:
        """An XUDP datagram that names its own address (the session is UDP)."""
        peer = self.peer
        if isinstance(peer, PacketEnd) and not self._paused:
            self._received(len(data))
            peer.write_to(data, address)
        else:
            self.deliver(data)

    def write_to(self, data: bytes, address: Destination) -> None:
        """A datagram from (or to) ``address``: on an XUDP session the frame says so."""
        if self.closed:
            return
        self._sent(len(data))
        self.worker.send(self, data, address)

    def remote_eof(self) -> None:
        """The peer sent End: its direction is finished."""
        if self._buffer:
            self._eof_pending = True
        elif self.peer is not None:
            self.peer.write_eof()
        if self.sid is not None and not self.worker.codec.is_open(self.sid):
            self._finished()

    def remote_abort(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self._finished()
        if self.peer is not None:
            self.peer.abort(exc or ConnectionResetError("mux session aborted"))

    def _finished(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        self._release()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        stats = self.worker.stats
        if self.inbound_side and stats is not None:
            stats.closed(self.session)
        if self._idle is not None:
            self._idle.cancel()
        self.worker.forget(self)

    def _expire(self) -> None:
        peer = self.peer
        self.abort(TimeoutError("mux session idle"))
        if peer is not None:
            peer.abort(TimeoutError("idle"))

    # -- End (called by our peer) --------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self._sent(len(data))
        self.worker.send(self, data)

    def write_many(self, parts: list[bytes]) -> None:
        if self.closed:
            return
        self._sent(sum(len(p) for p in parts))
        self.worker.send_many(self, parts)

    def deliver_many(self, parts: list[bytes]) -> None:
        if self._paused or self.network is Network.UDP or len(parts) == 1:
            for data in parts:
                self.deliver(data)
            return
        self._received(sum(len(p) for p in parts))
        if self.peer is not None:
            self.peer.write_many(parts)

    def write_eof(self) -> None:
        if self.closed:
            return
        if self.sid is None:
            self._first.eof = True  # sent right after the New frame
            return
        codec = self.worker.codec
        codec.half_close(self.sid)
        self.worker.schedule_flush()
        if not codec.is_open(self.sid):
            self._finished()

    def abort(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        if self.sid is not None:
            self.worker.codec.end_session(self.sid, error=exc is not None)
            self.worker.schedule_flush()
        self._finished()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        buffer, self._buffer = self._buffer, []
        self._release()
        peer = self.peer
        if peer is not None:
            for index, data in enumerate(buffer):
                peer.write(data)
                if self._paused:  # the peer filled up again: keep the rest
                    self._buffer = rest = buffer[index + 1 :]
                    self._buffered = sum(len(b) for b in rest)
                    _buffered_total[0] += self._buffered
                    _holding.add(self)
                    break
            else:
                if self._eof_pending:
                    self._eof_pending = False
                    peer.write_eof()
        limits = self.worker.limits
        if self._buffered <= limits.soft and self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._asked_pause and self._buffered <= limits.soft // 2 and self.sid is not None:
            self._asked_pause = False
            self.worker.send_flow(self.sid, pause=False)


OpenHandler = Callable[["MuxWorker", SessionOpened], None]


class MuxWorker(End):
    """One Mux.Cool connection over a carrier end (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        *,
        on_open: OpenHandler | None = None,
        max_sessions: int = 0,
        name: str = "mux",
        limits: FlowLimits | None = None,
    ) -> None:
        self.codec = MuxConnection(role, max_sessions=max_sessions, max_frame_data=FRAME_DATA)
        self.limits = limits or FlowLimits()
        #: The other end is raybridge: it takes FC_PAUSE / FC_RESUME (it sent FC_HELLO).
        self.peer_flow_control = False
        #: Sessions ended for holding up the others (see FlowLimits).
        self.overflowed = 0
        self._overflow_logged = 0.0
        if role is Role.CLIENT:
            # The client announces itself (with the first flush); a server answers only a
            # raybridge client's announcement: sing-box's XUDP client would take a
            # KeepAlive's data for a datagram (sing-vmess xudp.go ReadPacket).
            self.codec.send_keepalive(data=FC_HELLO)
        self.role = role
        self.on_open = on_open
        self.name = name
        self.peer: End | None = None  # the carrier
        self.sessions: dict[int, MuxSessionEnd] = {}
        self.closed = False
        self.close_callbacks: list[Callable[[MuxWorker], None]] = []
        self.session_callbacks: list[Callable[[MuxWorker], None]] = []  # a session ended
        self.keepalive_callbacks: list[Callable[[MuxWorker], None]] = []
        self.receive_callbacks: list[Callable[[MuxWorker], None]] = []  # each carrier read
        self.pause_callbacks: list[Callable[[MuxWorker], None]] = []  # out_paused changed
        #: Data on a session the codec keeps to itself (a portal's control session, where
        #: a raybridge bridge says DRAIN): (worker, session id, data).
        self.control_callbacks: list[Callable[[MuxWorker, int, bytes], None]] = []
        #: A portal's tunnel: its carrier is no client connection (a node that drains
        #: does not wait for it).
        self.carries_tunnel = False
        self._pending: list[MuxSessionEnd] = []  # client sessions whose New is not out yet
        self.out_paused = False  # the carrier cannot take more: every session waits
        self._flush_handle: asyncio.Handle | None = None
        self._queued = 0  # payload bytes waiting for the scheduled flush
        self._loop = asyncio.get_running_loop()
        #: Where sessions this worker accepted are counted when they end (server role).
        self.stats: Stats | None = None
        #: Loop time of the last bytes from the carrier (liveness checks).
        self.last_received = self._loop.time()
        self.keepalives_received = 0
        #: UDP datagrams dropped for being over MAX_UDP_DATA (V2Ray reads no more); logged
        #: once per session (the set holds session ids, at most 65536).
        self.oversized_dropped = 0
        self._oversized_logged: set[int] = set()
        # While one read's events are dispatched, "a session ended" waits for the last of
        # them: the codec has already forgotten every session whose End is in the read, and
        # a callback seeing that count (a draining tunnel closing) would drop the rest.
        self._dispatching = False
        self._ended_meanwhile = False

    # -- sessions --------------------------------------------------------------------------
    def open_session(self, session: Session, dest: Destination, peer: End) -> MuxSessionEnd:
        """Client role: a new session to ``dest`` for ``peer`` (joined). The New frame goes
        out at the end of this loop iteration, carrying what ``peer`` wrote meanwhile (V2Ray
        puts the first payload in the New frame too, but waits up to 100 ms for it)."""
        end = MuxSessionEnd(self, None, dest.network, session, inbound_side=False)
        end.dest = dest
        join(peer, end)
        self._pending.append(end)
        if self.out_paused:
            peer.pause_reading()
        self.schedule_flush()
        return end

    def _open_pending(self) -> None:
        pending, self._pending = self._pending, []
        codec = self.codec
        for end in pending:
            if end.closed:
                continue
            assert end.dest is not None
            first = end._first.take()
            rest: list[bytes] = []
            if end.network is Network.UDP:
                data, rest = (first[0], first[1:]) if first else (b"", [])
            else:
                data = first[0] if len(first) == 1 else b"".join(first)
            try:
                end.sid = codec.open_session(end.dest, data)
            except LocalProtocolError as exc:  # the session limit, or an oversized datagram
                logger.info("%s: cannot open a session to %s: %s", self.name, end.dest, exc)
                end.remote_abort(exc)
                continue
            self.sessions[end.sid] = end
            for datagram in rest:
                self.send(end, datagram)
            end._first.release(None if self.out_paused else end.peer)
            if end._first.eof:
                end._first.eof = False
                end.write_eof()

    def accept(self, event: SessionOpened, session: Session) -> MuxSessionEnd:
        """Server role: the end for a session the peer opened (join it to a peer next)."""
        end = MuxSessionEnd(
            self, event.session_id, event.target.network, session, inbound_side=True
        )
        self.sessions[event.session_id] = end
        return end

    def forget(self, end: MuxSessionEnd) -> None:
        if end.sid is not None and self.sessions.get(end.sid) is end:
            del self.sessions[end.sid]
        elif end.sid is None and end in self._pending:
            self._pending.remove(end)  # ended before its New frame went out
        if self._dispatching:
            self._ended_meanwhile = True
            return
        for callback in self.session_callbacks:
            callback(self)

    @property
    def session_count(self) -> int:
        """Open sessions, counting those whose New frame is about to go out."""
        return self.codec.session_count + len(self._pending)

    # -- sending ---------------------------------------------------------------------------
    def send(self, end: MuxSessionEnd, data: bytes, address: Destination | None = None) -> None:
        if end.sid is None:
            end._first.add(data, end.peer)  # rides in the New frame (the flush is scheduled)
            return
        try:
            self.codec.send_data(end.sid, data, address)
        except LocalProtocolError as exc:
            # A datagram over 2048 bytes, or a session the peer has just ended.
            if end.network is Network.UDP and len(data) > MAX_UDP_DATA:
                self.oversized_dropped += 1
                if end.sid not in self._oversized_logged:
                    self._oversized_logged.add(end.sid)
                    logger.info(
                        "%s: dropped a %d-byte UDP datagram for session %d (over %d bytes; "
                        "further ones on this session are counted, not logged)",
                        self.name,
                        len(data),
                        end.sid,
                        MAX_UDP_DATA,
                    )
                return
            logger.debug(
                "%s: dropped %d bytes for session %d: %s", self.name, len(data), end.sid, exc
            )
            return
        if self._flush_handle is None:
            self.flush()
        else:
            self._queued += len(data)
            if self._queued > FLUSH_AT:
                self.flush()

    def send_many(self, end: MuxSessionEnd, parts: list[bytes]) -> None:
        """Queue several payloads, then flush once (one VMess write)."""
        if end.sid is None:
            for data in parts:
                end._first.add(data, end.peer)
            return
        send = self.codec.send_data
        for data in parts:
            try:
                send(end.sid, data)
            except LocalProtocolError as exc:
                logger.debug("%s: dropped data for session %d: %s", self.name, end.sid, exc)
                return
            self._queued += len(data)
        if self._flush_handle is None or self._queued > FLUSH_AT:
            self.flush()

    def open_control(self, target: Destination, data: bytes) -> int:
        """Client role: open a session the codec keeps to itself (a portal's control
        session), ``data`` in its New frame, sent at once; returns its ID."""
        sid = self.codec.open_session(target, data)
        self.flush()
        return sid

    def send_control(self, sid: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` (if any) on such a session if it is still open, then End it if
        ``end``; at once."""
        codec = self.codec
        if self.closed or not codec.is_open(sid):
            return
        if data:
            codec.send_data(sid, data)
        if end:
            codec.end_session(sid)
        self.flush()

    def send_keepalive(self) -> None:
        """A KeepAlive frame (V2Ray accepts and ignores them, docs/protocols.md 2.4)."""
        if not self.closed:
            self.codec.send_keepalive()
            self.flush()

    def silent_for(self, now: float) -> float:
        """Seconds since the carrier last delivered anything (it is never paused for a
        session's sake, so silence is the other end's)."""
        return now - self.last_received

    def send_flow(self, sid: int, *, pause: bool) -> None:
        """Ask the other end (raybridge) to stop or go on sending on session ``sid``."""
        if not self.closed:
            self.codec.send_keepalive(sid, FC_PAUSE if pause else FC_RESUME)
            self.flush()

    def log_overflow(self, end: MuxSessionEnd, reason: str) -> None:
        now = self._loop.time()
        if now - self._overflow_logged >= 1.0:  # at most one line a second per carrier
            self._overflow_logged = now
            logger.warning(
                "%s: ended session %s to %s: %s (%d so far)",
                self.name,
                end.sid,
                end.dest or "?",
                reason,
                self.overflowed,
            )

    def schedule_flush(self) -> None:
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()  # (a no-op when this is that call)
            self._flush_handle = None
        self._queued = 0
        if self._pending:
            self._open_pending()
        out = self.codec.data_to_send()
        if out and self.peer is not None and not self.closed:
            self.peer.write(out)

    # -- End (called by the carrier) ------------------------------------------------------
    def write_many(self, parts: list[bytes]) -> None:
        """The payloads of one carrier read (several VMess chunks): one pass of the codec
        over them joined costs one copy, far less than a pass (and its events) per chunk."""
        self.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = self._loop.time()
        for callback in self.receive_callbacks:
            callback(self)
        try:
            events = self.codec.receive_data(data)
        except MuxError as exc:
            logger.info("%s: bad mux stream: %s", self.name, exc)
            self._fail(exc)
            return
        self._dispatching = True
        try:
            self._dispatch(events)
        finally:
            self._dispatching = False
        if self._ended_meanwhile:
            self._ended_meanwhile = False
            for callback in self.session_callbacks:
                callback(self)
        self.flush()

    def _dispatch(self, events: list[MuxEvent]) -> None:
        sessions = self.sessions
        # Consecutive data for one session is delivered in one call (one writev).
        run_end: MuxSessionEnd | None = None
        run: list[bytes] = []
        for event in events:
            if type(event) is SessionData:
                end = sessions.get(event.session_id)
                if end is None:
                    for control in self.control_callbacks:
                        control(self, event.session_id, bytes(event.data))
                    continue
                if event.address is not None:  # an XUDP datagram with its own address
                    if run_end is not None:
                        run_end.deliver_many(run)
                        run_end, run = None, []
                    end.deliver_to(event.data, event.address)  # type: ignore[arg-type]
                    continue
                if end is not run_end:
                    if run_end is not None:
                        run_end.deliver_many(run)
                    run_end, run = end, []
                run.append(event.data)  # type: ignore[arg-type]  # a read-only view of bytes
                continue
            if run_end is not None:
                run_end.deliver_many(run)
                run_end, run = None, []
            if type(event) is SessionOpened:
                if self.on_open is not None:
                    self.on_open(self, event)
                else:
                    self.codec.end_session(event.session_id, error=True)
            elif type(event) is SessionEnded:
                end = sessions.get(event.session_id)
                if end is not None:
                    if event.error:
                        end.remote_abort()
                    else:
                        end.remote_eof()
                else:  # one of the codec's own (a portal's control session): count changed
                    self._ended_meanwhile = True
            elif type(event) is KeepAliveReceived:
                self.keepalives_received += 1
                if event.data:
                    self._keepalive_data(event.session_id, event.data)
                for callback in self.keepalive_callbacks:
                    callback(self)
        if run_end is not None:
            run_end.deliver_many(run)

    def _keepalive_data(self, sid: int, data: bytes) -> None:
        if data == FC_HELLO:
            if not self.peer_flow_control and self.role is Role.SERVER:
                self.codec.send_keepalive(data=FC_HELLO)  # flushed after this read
            self.peer_flow_control = True
            return
        end = self.sessions.get(sid)
        if end is None:
            return
        if data == FC_PAUSE:
            end.remote_pause()
        elif data == FC_RESUME:
            end.remote_resume()

    def write_eof(self) -> None:
        """The carrier ended: so does every session (V2Ray: EOS ends the mux connection)."""
        self.close()

    def abort(self, exc: BaseException | None = None) -> None:
        self._fail(exc, notify_carrier=False)

    def pause_reading(self) -> None:
        if self.out_paused:
            return
        self.out_paused = True
        # Sessions whose New frame is still to go out have peers too (open_session pauses
        # those it adds while we are paused; resuming must reach them as well).
        for end in [*self.sessions.values(), *self._pending]:
            if end.peer is not None:
                end.peer.pause_reading()
        for callback in self.pause_callbacks:
            callback(self)

    def resume_reading(self) -> None:
        if not self.out_paused:
            return
        self.out_paused = False
        for end in [*self.sessions.values(), *self._pending]:
            if end.peer is not None and not end._remote_paused:
                end.peer.resume_reading()
        for callback in self.pause_callbacks:
            callback(self)

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """End every session and the carrier, cleanly (an EOS on VMess)."""
        if self.closed:
            return
        for sid in list(self.codec.session_ids()):
            self.codec.end_session(sid)
        self.flush()
        peer = self.peer
        self._fail(None, notify_carrier=False)
        if peer is not None:
            peer.write_eof()

    def _fail(self, exc: BaseException | None, *, notify_carrier: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.codec.connection_lost()
        pending, self._pending = self._pending, []
        for end in [*pending, *self.sessions.values()]:
            end.remote_abort(exc if isinstance(exc, Exception) else None)
        self.sessions.clear()
        if notify_carrier and self.peer is not None:
            self.peer.abort(exc)
        for callback in self.close_callbacks:
            callback(self)
