"""Mux.Cool over a link: the asyncio side of :mod:`raybridge.protocols.mux`.

A :class:`MuxWorker` is the end of a link whose medium is a mux byte stream (its *carrier*:
a VMess connection to ``v1.mux.cool``, or a reverse tunnel). It feeds what the carrier
delivers to the codec and turns each mux session into a :class:`MuxSessionEnd`, an ordinary
:class:`~raybridge.link.End`, so the rest of the program never knows a stream is
multiplexed (aioquic's ``QuicStreamAdapter`` idea)::

    carrier end  <-->  MuxWorker  ==(codec)==  MuxSessionEnd <--> peer end (socket, ...)
                                               MuxSessionEnd <--> peer end
                                               ...

Flow control. Mux.Cool has none per session (PROTOCOLS.md 2.4). When a session's peer
cannot take more, its data is buffered in that session up to :data:`SESSION_BUFFER`, then
the carrier is paused (head-of-line blocking, as in V2Ray, but only past the buffer). When
the carrier cannot take more, every session's peer is paused.

Half-close. A session's peer ending its input sends End and keeps receiving; the peer's End
is delivered as ``write_eof``; the session is gone once both Ends have passed (or either
side sends End+Error).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from raybridge.address import Destination, Network
from raybridge.errors import LocalProtocolError
from raybridge.link import End, IdleTimer, PacketEnd, Session
from raybridge.protocols.mux import (
    KeepAliveReceived,
    MuxConnection,
    MuxError,
    MuxEvent,
    Role,
    SessionData,
    SessionEnded,
    SessionOpened,
)
from raybridge.protocols.vmess import Command, Option, Security, max_payload
from raybridge.stats import Stats

_SMP = Option.CHUNK_STREAM | Option.CHUNK_MASKING | Option.GLOBAL_PADDING

logger = logging.getLogger("raybridge.mux")

#: Bytes a session buffers for a slow peer before the whole carrier is paused.
SESSION_BUFFER = 512 * 1024
#: Data per Keep frame: with its 8-byte header a full frame is exactly the largest payload a
#: VMess chunk carries with padding (16305 bytes in a 16 KiB chunk, ``SEND_CHUNK_SIZE``), so
#: on a VMess carrier frames and chunks line up and a decrypted chunk is one whole frame.
#: Every Mux.Cool reader in use takes frames of any uint16 length (V2Ray 4.34 and v5
#: ``common/mux/reader.go``, Xray the same, sing-vmess ``mux.go`` ``buf.NewSize(length)``).
FRAME_DATA = max_payload(Security.AES_128_GCM, _SMP, Command.MUX) - 8
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
        "_buffer",
        "_buffered",
        "_eof_pending",
        "_first",
        "_first_eof",
        "_idle",
        "_paused",
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
        self._first: list[bytes] = []  # data written before the New frame went out
        self._first_eof = False
        self.network = network
        self.session = session
        self.inbound_side = inbound_side
        self.peer: End | None = None
        self.closed = False
        self._paused = False  # our peer asked us to stop delivering
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._eof_pending = False
        self._idle = IdleTimer(session, idle, self._expire) if idle > 0 else None

    # -- byte counts: what the carrier delivered ("received") and what we send on it --
    def _received(self, size: int) -> None:
        session = self.session
        session.active = True
        if self.inbound_side:
            session.bytes_up += size
        else:
            session.bytes_down += size

    def _sent(self, size: int) -> None:
        session = self.session
        session.active = True
        if self.inbound_side:
            session.bytes_down += size
        else:
            session.bytes_up += size

    # -- from the worker ---------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        self._received(len(data))
        if self._paused:
            # Own the bytes: a view would keep its whole (larger) source buffer alive.
            self._buffer.append(data if type(data) is bytes else bytes(data))
            self._buffered += len(data)
            if self._buffered > SESSION_BUFFER:
                self.worker.pause_carrier(self)
            return
        if self.peer is not None:
            self.peer.write(data)

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
            self._first_eof = True  # sent right after the New frame
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
        buffer, self._buffer, self._buffered = self._buffer, [], 0
        peer = self.peer
        if peer is not None:
            for index, data in enumerate(buffer):
                peer.write(data)
                if self._paused:  # the peer filled up again: keep the rest
                    self._buffer = buffer[index + 1 :]
                    self._buffered = sum(len(b) for b in self._buffer)
                    return
            if self._eof_pending:
                self._eof_pending = False
                peer.write_eof()
        self.worker.resume_carrier(self)


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
    ) -> None:
        self.codec = MuxConnection(role, max_sessions=max_sessions, max_frame_data=FRAME_DATA)
        self.role = role
        self.on_open = on_open
        self.name = name
        self.peer: End | None = None  # the carrier
        self.sessions: dict[int, MuxSessionEnd] = {}
        self.closed = False
        self.close_callbacks: list[Callable[[MuxWorker], None]] = []
        self.session_callbacks: list[Callable[[MuxWorker], None]] = []  # a session ended
        self.keepalive_callbacks: list[Callable[[MuxWorker], None]] = []
        self._pending: list[MuxSessionEnd] = []  # client sessions whose New is not out yet
        self._paused_by: set[MuxSessionEnd] = set()  # sessions that paused the carrier
        self._out_paused = False  # the carrier paused us
        self._flush_handle: asyncio.Handle | None = None
        self._queued = 0  # payload bytes waiting for the scheduled flush
        self._loop = asyncio.get_running_loop()
        #: Where sessions this worker accepted are counted when they end (server role).
        self.stats: Stats | None = None
        #: Loop time of the last bytes from the carrier (liveness checks).
        self.last_received = self._loop.time()
        self.keepalives_received = 0
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
        end.peer = peer
        peer.peer = end
        self._pending.append(end)
        if self._out_paused:
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
            first, end._first = end._first, []
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
            if end._first_eof:
                end._first_eof = False
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
        if end in self._paused_by:
            self.resume_carrier(end)
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
            end._first.append(data)  # rides in the New frame (the flush is scheduled)
            return
        try:
            self.codec.send_data(end.sid, data, address)
        except LocalProtocolError as exc:
            # A datagram over 2048 bytes, or a session the peer has just ended.
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
            end._first.extend(parts)
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

    def send_keepalive(self) -> None:
        """A KeepAlive frame (V2Ray accepts and ignores them, PROTOCOLS.md 2.4)."""
        if not self.closed:
            self.codec.send_keepalive()
            self.flush()

    def silent_for(self, now: float) -> float:
        """Seconds since the carrier last delivered anything; 0 while we are not reading
        it ourselves (a slow session paused it), since silence then proves nothing."""
        if self._paused_by:
            self.last_received = now
            return 0.0
        return now - self.last_received

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

    # -- flow control between sessions and the carrier ---------------------------------
    def pause_carrier(self, end: MuxSessionEnd) -> None:
        if not self._paused_by and self.peer is not None:
            self.peer.pause_reading()
        self._paused_by.add(end)

    def resume_carrier(self, end: MuxSessionEnd) -> None:
        self._paused_by.discard(end)
        if not self._paused_by and self.peer is not None and not self.closed:
            self.peer.resume_reading()

    @property
    def carrier_paused(self) -> bool:
        return bool(self._paused_by)

    # -- End (called by the carrier) ------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = self._loop.time()
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
                run.append(event.data)
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
            elif type(event) is KeepAliveReceived:
                self.keepalives_received += 1
                for callback in self.keepalive_callbacks:
                    callback(self)
        if run_end is not None:
            run_end.deliver_many(run)

    def write_eof(self) -> None:
        """The carrier ended: so does every session (V2Ray: EOS ends the mux connection)."""
        self.close()

    def abort(self, exc: BaseException | None = None) -> None:
        self._fail(exc, notify_carrier=False)

    def pause_reading(self) -> None:
        if self._out_paused:
            return
        self._out_paused = True
        # Sessions whose New frame is still to go out have peers too (open_session pauses
        # those it adds while we are paused; resuming must reach them as well).
        for end in [*self.sessions.values(), *self._pending]:
            if end.peer is not None:
                end.peer.pause_reading()

    def resume_reading(self) -> None:
        if not self._out_paused:
            return
        self._out_paused = False
        for end in [*self.sessions.values(), *self._pending]:
            if end.peer is not None:
                end.peer.resume_reading()

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
