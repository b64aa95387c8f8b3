"""HTTP/2 streams as asyncio transports: the asyncio side of :mod:`raybridge.protocols.h2stream`.

V2Ray 4.34's h2 transport carries each VMess connection as one HTTP/2 stream
(docs/transports.md 4). Here every stream is handed to the rest of the program as an ordinary
``asyncio.Transport`` (:class:`H2StreamTransport`), the way ``transport/mux.py`` hands out
Mux.Cool sessions and aioquic its ``QuicStreamAdapter``: the VMess ends (``StreamEnd``
subclasses) run on a stream exactly as on a socket::

    socket/TLS <-> H2ServerProtocol ==(h2stream)== H2StreamTransport <-> VMessInboundEnd
                                                   H2StreamTransport <-> VMessInboundEnd
    VMessOutboundEnd <-> H2StreamTransport ==(h2stream)== H2ClientProtocol <-> socket/TLS
        (H2ClientPool: one connection per destination key, a stream per VMess connection)

Server: ``loop.create_server(lambda: H2ServerProtocol(factory, hosts=..., path=...), ...)``
(over TLS, or under a ``LayerStack``); every accepted stream gets ``factory()``'s protocol,
connected at once (its 200 is on the way). Client: :meth:`H2ClientPool.connect` (awaitable,
as ``StreamEnd.start_connect`` wants) or :meth:`H2ClientPool.open` (callbacks) gives the
protocol ``connection_made`` once the stream's ``:status 200`` arrives, as V2Ray's dial
waits for it; the caller's ``dial`` makes the TCP (+TLS, ALPN ``h2``) connection.

Flow control, both ways, per stream (a slow reader or writer holds up only its own stream):

* reading: a stream whose protocol called ``pause_reading`` keeps what arrives (at most its
  HTTP/2 window: the peer cannot send more) and does not hand it back to the peer's window
  until ``resume_reading`` delivers it;
* writing: what a protocol writes waits in its stream's buffer until the peer's windows let it
  out; past the stream's high-water mark (``set_write_buffer_limits``) the protocol gets
  ``pause_writing``, below the low mark ``resume_writing``. When the socket itself is full
  (its ``pause_writing``), nothing more is framed, so every writer soon pauses on its own
  stream's mark.

Closing: ``write_eof`` sends END_STREAM, ``close`` does so after the buffered data and then,
if the peer has not ended, RST_STREAM (CANCEL from a client, as V2Ray; NO_ERROR from a
server, as Go); ``abort`` sends RST_STREAM(CANCEL) at once. The peer's END_STREAM is
``eof_received``; a reset, a GOAWAY or the connection's loss is ``connection_lost(exc)`` on
the streams concerned. A dead connection leaves the pool; the next stream dials anew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

from raybridge.errors import LocalProtocolError
from raybridge.link import HIGH_WATER, LOW_WATER
from raybridge.protocols.h2stream import (
    ConnectionRefused,
    ConnectionTerminated,
    ErrorCodes,
    H2Event,
    H2StreamConnection,
    H2StreamError,
    Role,
    StreamClosed,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)

logger = logging.getLogger("raybridge.h2")

__all__ = [
    "CLIENT_MAX_FRAME_SIZE",
    "HANDSHAKE_TIMEOUT",
    "Dial",
    "FailureHandler",
    "H2ClientPool",
    "H2ClientProtocol",
    "H2ServerProtocol",
    "H2StreamTransport",
]

#: Bytes framed per step before they are written to the socket: bounds what sits in the
#: socket's buffer beyond its high-water mark.
PUMP_STEP = 256 * 1024
#: While a flush is scheduled, writes wait for it (one socket write for several streams and
#: writes); past this many buffered bytes it runs at once.
FLUSH_AT = 256 * 1024
#: MAX_FRAME_SIZE a raybridge client advertises (V2Ray's client sends none, so servers send
#: it 16 KiB frames; bigger ones cost far less Python per byte). Invisible inside TLS, and
#: every server honours it; None sends V2Ray's exact preface.
CLIENT_MAX_FRAME_SIZE: int | None = 1 << 20
#: Seconds an accepted connection may take to show it speaks HTTP/2 (Go's
#: ReadHeaderTimeout in V2Ray's h2 server, docs/transports.md 4.2).
HANDSHAKE_TIMEOUT = 4.0

#: (layer name, reason): a refused stream or a broken connection, as LayerStack reports.
FailureHandler = Callable[[str, str], None]
#: Makes the connection for ``protocol``: TCP (+TLS with ALPN h2) to the destination, e.g.
#: ``lambda p: loop.create_connection(lambda: p, host, port, ssl=ctx)``.
Dial = Callable[[asyncio.Protocol], Awaitable[object]]


class H2StreamTransport(asyncio.Transport):
    """One HTTP/2 stream, as the transport of the protocol that runs on it."""

    __slots__ = (
        "_closing",
        "_conn",
        "_eof_pending",
        "_eof_written",
        "_gone",
        "_held",
        "_high",
        "_info",
        "_lost_pending",
        "_low",
        "_opened",
        "_protocol",
        "_reading_paused",
        "_waiter",
        "_writing_paused",
        "stream_id",
    )

    def __init__(
        self,
        conn: _H2Protocol,
        stream_id: int,
        protocol: asyncio.Protocol,
        extra: dict[str, Any],
    ) -> None:
        super().__init__()
        self._info = extra
        self._conn = conn
        self.stream_id = stream_id
        self._protocol = protocol
        self._opened = False  # connection_made called
        self._closing = False  # close() or abort() called, or the stream is gone
        self._gone = False  # connection_lost scheduled (or, unopened, the waiter failed)
        self._eof_written = False
        self._reading_paused = False
        self._held: list[bytes] = []  # arrived while reading was paused
        self._eof_pending = False
        self._lost_pending = False  # the stream ended cleanly, but _held is not delivered
        self._writing_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._waiter: asyncio.Future[None] | None = None

    # -- writing ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_written or not data:
            return
        conn = self._conn
        try:
            conn.codec.send_data(self.stream_id, data)
        except LocalProtocolError:
            return  # the stream is gone (its end is on the way)
        conn.wrote(self)

    def writelines(self, list_of_data: Any) -> None:
        if self._closing or self._eof_written:
            return
        conn = self._conn
        send = conn.codec.send_data
        sid = self.stream_id
        try:
            for data in list_of_data:
                if data:
                    send(sid, data)
        except LocalProtocolError:
            return  # the stream is gone (its end is on the way)
        conn.wrote(self)

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._conn.codec.end_stream(self.stream_id)
        self._conn.schedule_flush()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._conn.codec.buffered(self.stream_id)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_writing()

    def _check_writing(self) -> None:
        size = self._conn.codec.buffered(self.stream_id)
        if not self._writing_paused:
            if size > self._high and self._opened and not self._closing:
                self._writing_paused = True
                self._conn.write_paused.add(self)
                self._call(self._protocol.pause_writing)
        elif size <= self._low:
            self._writing_paused = False
            self._conn.write_paused.discard(self)
            if not self._closing:
                self._call(self._protocol.resume_writing)

    # -- reading ----------------------------------------------------------------------------
    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        held = self._held
        if held:
            self._held = []
            self._deliver(held[0] if len(held) == 1 else b"".join(held))
        if self._reading_paused:
            return
        if self._eof_pending:
            self._eof_pending = False
            self._eof()
        if self._lost_pending:
            self._lost_pending = False
            self._lost(None)

    def is_reading(self) -> bool:
        return not self._reading_paused

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._drop_held()
        codec = self._conn.codec
        if codec.is_open(self.stream_id):
            codec.close_stream(self.stream_id)
            self._conn.schedule_flush()
        else:
            self._lost(None)

    def abort(self) -> None:
        self._reset(ErrorCodes.CANCEL, None)

    def is_closing(self) -> bool:
        return self._closing

    async def wait_open(self) -> None:
        """Client: wait until the stream's 200 has arrived (its protocol is connected);
        raises the stream's failure if it fails first."""
        if self._waiter is not None:
            await self._waiter

    # -- the rest of asyncio.Transport --------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = self._info
        if name in info:
            return info[name]
        lower = self._conn.transport
        return lower.get_extra_info(name, default) if lower is not None else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        return f"<H2StreamTransport {self._conn.name} stream {self.stream_id}>"

    # -- from the connection ----------------------------------------------------------------
    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """A protocol callback; what it raises ends this stream only."""
        try:
            return method(*args)
        except Exception as exc:
            logger.exception("%s: stream %d: protocol failed", self._conn.name, self.stream_id)
            self._fail(exc)
            return None

    def _open(self) -> None:
        self._opened = True
        self._call(self._protocol.connection_made, self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._check_writing()

    def _deliver(self, data: bytes) -> None:
        if self._closing:
            self._conn.codec.consumed(self.stream_id, len(data))
            return
        if self._reading_paused or not self._opened:
            self._held.append(data)
            return
        self._call(self._protocol.data_received, data)
        conn = self._conn
        conn.codec.consumed(self.stream_id, len(data))
        if not conn.receiving:
            conn.schedule_flush()  # a WINDOW_UPDATE may be due (resume_reading, from outside)

    def _eof(self) -> None:
        if self._closing:
            return
        if self._held or self._reading_paused:
            self._eof_pending = True
            return
        if not self._call(self._protocol.eof_received):
            self.close()

    def _finished(self, exc: Exception | None) -> None:
        """The stream is gone: cleanly (``exc`` None, after what we hold is delivered) or
        not."""
        if exc is None and self._held and not self._closing:
            self._lost_pending = True
            return
        self._closing = True
        self._drop_held()
        self._lost(exc)

    def _fail(self, exc: Exception) -> None:
        self._reset(ErrorCodes.INTERNAL_ERROR, exc)

    def _reset(self, code: ErrorCodes, exc: Exception | None) -> None:
        """Reset the stream with ``code`` and report it lost (``exc``: why, if it failed)."""
        if self._gone:
            return
        self._closing = True
        self._drop_held()
        self._conn.codec.reset(self.stream_id, code)
        self._conn.schedule_flush()
        self._lost(exc)

    def _drop_held(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._conn.codec.consumed(self.stream_id, sum(map(len, held)))
            self._conn.schedule_flush()
        self._eof_pending = False

    def _lost(self, exc: Exception | None) -> None:
        if self._gone:
            return
        self._gone = True
        self._closing = True
        conn = self._conn
        conn.forget(self)
        if self._opened:
            conn.loop.call_soon(self._protocol.connection_lost, exc)
            return
        # Never connected (a client stream that got no 200): fail its dial instead.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("HTTP/2 stream closed"))
            waiter.exception()  # retrieved: whoever awaits it still gets it


class _H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection (either role) under its socket, TLS or LayerStack transport."""

    codec: H2StreamConnection

    def __init__(self, *, name: str, on_failure: FailureHandler | None) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, H2StreamTransport] = {}
        self.write_paused: set[H2StreamTransport] = set()
        self.closed = False
        self.close_callbacks: list[Callable[[_H2Protocol], None]] = []
        self._on_failure = on_failure
        self._socket_paused = False
        self._flush_handle: asyncio.Handle | None = None
        self.receiving = False  # in data_received: it flushes when done

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.codec.receive_data(data)
        except H2StreamError as exc:
            self._broken(str(exc))
            return
        if events:
            self.receiving = True
            try:
                self._dispatch(events)
            finally:
                self.receiving = False
        self.flush()

    def eof_received(self) -> bool:
        self._shut(ConnectionResetError(f"{self.name}: connection closed by the peer"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._shut(exc or ConnectionResetError(f"{self.name}: connection closed"))

    def pause_writing(self) -> None:
        self._socket_paused = True

    def resume_writing(self) -> None:
        self._socket_paused = False
        self.flush()

    # -- events -----------------------------------------------------------------------------
    def _dispatch(self, events: list[H2Event]) -> None:
        streams = self.streams
        run_sid = 0
        run: list[bytes] = []
        for event in events:
            if type(event) is StreamData:
                if event.stream_id != run_sid:
                    if run:
                        self._deliver(run_sid, run)
                    run_sid, run = event.stream_id, []
                run.append(event.data)
                continue
            if run:
                self._deliver(run_sid, run)
                run_sid, run = 0, []
            kind = type(event)
            if kind is StreamOpened:
                self._stream_opened(event)  # type: ignore[arg-type]
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._eof()
            elif kind is StreamClosed:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._finished(None)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    reason = f"{self.name}: stream {event.stream_id} {event.reason}"  # type: ignore[union-attr]
                    stream._finished(ConnectionResetError(reason))
            elif kind is StreamRefused:
                self._stream_refused(event)  # type: ignore[arg-type]
            elif kind is ConnectionTerminated:
                self._terminated(event.reason)  # type: ignore[union-attr]
                return
            elif kind is ConnectionRefused:
                self._broken(event.reason)  # type: ignore[union-attr]
                return
        if run:
            self._deliver(run_sid, run)

    def _deliver(self, sid: int, run: list[bytes]) -> None:
        data = run[0] if len(run) == 1 else b"".join(run)
        stream = self.streams.get(sid)
        if stream is None:
            self.codec.consumed(sid, len(data))
        else:
            stream._deliver(data)

    def _stream_opened(self, event: StreamOpened) -> None:
        raise NotImplementedError

    def _stream_refused(self, event: StreamRefused) -> None:
        pass

    # -- sending ----------------------------------------------------------------------------
    def wrote(self, stream: H2StreamTransport) -> None:
        """A stream queued data: flush soon (now, if much is waiting), then maybe pause it."""
        if self.codec.buffered_total >= FLUSH_AT:
            self.flush()
        else:
            self.schedule_flush()
        if not stream._writing_paused and self.codec.buffered(stream.stream_id) > stream._high:
            stream._check_writing()

    def schedule_flush(self) -> None:
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        transport = self.transport
        if transport is None or self.closed:
            return
        codec = self.codec
        events: list[H2Event] = []
        while True:
            if not self._socket_paused:
                events += codec.pump(PUMP_STEP)
            out = codec.data_to_send()
            if out:
                transport.write(out)
            if len(out) < PUMP_STEP or self._socket_paused:
                break
        if events:
            self._dispatch(events)
        if self.write_paused:
            for stream in list(self.write_paused):
                stream._check_writing()

    def forget(self, stream: H2StreamTransport) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        self.write_paused.discard(stream)

    # -- the end ----------------------------------------------------------------------------
    def _failure(self, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure("h2", reason)
        else:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            logger.info("%s: %s (peer %s)", self.name, reason, peer)

    def _broken(self, reason: str) -> None:
        """The peer broke HTTP/2 (or was refused as HTTP/1.1): send what the codec has for it
        (GOAWAY, an HTTP/1.1 answer), close, and end every stream."""
        self._failure(reason)
        transport = self.transport
        if transport is not None:
            out = self.codec.data_to_send()
            if out:
                transport.write(out)
            transport.close()
        self._shut(ConnectionResetError(f"{self.name}: {reason}"))

    def _terminated(self, reason: str) -> None:
        logger.info("%s: the peer sent %s", self.name, reason)
        if self.transport is not None:
            self.transport.close()
        self._shut(ConnectionResetError(f"{self.name}: the peer sent {reason}"))

    def close(self, reason: str = "") -> None:
        """GOAWAY(NO_ERROR), then close: every stream ends (h2 takes nothing after GOAWAY)."""
        if self.closed:
            return
        self.codec.close(ErrorCodes.NO_ERROR, reason)
        transport = self.transport
        if transport is not None:
            out = self.codec.data_to_send()
            if out:
                transport.write(out)
            transport.close()
        self._shut(ConnectionResetError(f"{self.name}: connection closed"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._shut(ConnectionAbortedError(f"{self.name}: connection aborted"))

    def _shut(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self.codec.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for stream in list(self.streams.values()):
            stream._closing = True
            stream._drop_held()
            stream._lost(exc)
        self.streams.clear()
        self.write_paused.clear()
        for callback in self.close_callbacks:
            callback(self)


class H2ServerProtocol(_H2Protocol):
    """An accepted connection (TCP, TLS, or under a LayerStack): every stream that passes
    V2Ray's checks gets ``factory()``'s protocol (a VMess inbound end), connected at once.

    Its transport's ``get_extra_info``: ``peername`` is the stream's X-Forwarded-For source
    ``(ip, 0)`` if it has one (V2Ray's), else the connection's; ``h2_stream`` (its id),
    ``h2_path``, ``h2_authority``, ``forwarded_for``; anything else is the connection's
    (``sockname``, ``ssl_object``, ``socket``...). Refused streams and broken connections go
    to ``on_failure("h2", reason)`` (default: logged)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        hosts: Sequence[str] = (),
        path: str = "/",
        clock: Callable[[], float] = time.time,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        on_failure: FailureHandler | None = None,
        name: str = "h2 server",
        **options: Any,
    ) -> None:
        super().__init__(name=name, on_failure=on_failure)
        self.codec = H2StreamConnection(Role.SERVER, hosts=hosts, path=path, clock=clock, **options)
        self.factory = factory
        self._handshake_timeout = handshake_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self.refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._handshake_timeout > 0:
            self._deadline = self.loop.call_later(self._handshake_timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.codec.handshake_done:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.closed and not self.codec.handshake_done:
            self._failure("no HTTP/2 preface in time")
            self.abort()

    def _shut(self, exc: Exception) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super()._shut(exc)

    def _stream_opened(self, event: StreamOpened) -> None:
        sid = event.stream_id
        extra: dict[str, Any] = {
            "h2_stream": sid,
            "h2_path": event.path,
            "h2_authority": event.authority,
            "forwarded_for": event.forwarded_for,
        }
        if event.forwarded_for is not None:
            extra["peername"] = (event.forwarded_for, 0)
        try:
            protocol = self.factory()
        except Exception:
            logger.exception("%s: stream %d: the protocol factory failed", self.name, sid)
            self.codec.reset(sid, ErrorCodes.INTERNAL_ERROR)
            return
        stream = H2StreamTransport(self, sid, protocol, extra)
        self.streams[sid] = stream
        stream._open()

    def _stream_refused(self, event: StreamRefused) -> None:
        self.refused += 1
        self._failure(f"stream {event.stream_id} refused: {event.reason}")


class H2ClientProtocol(_H2Protocol):
    """A client connection: streams opened with :meth:`open_stream` (usually through an
    :class:`H2ClientPool`)."""

    def __init__(
        self,
        *,
        urandom: Callable[[int], bytes] = os.urandom,
        max_frame_size: int | None = CLIENT_MAX_FRAME_SIZE,
        on_failure: FailureHandler | None = None,
        name: str = "h2 client",
        **options: Any,
    ) -> None:
        super().__init__(name=name, on_failure=on_failure)
        self.codec = H2StreamConnection(
            Role.CLIENT, urandom=urandom, max_frame_size=max_frame_size, **options
        )
        self._alpn_checked = False

    @property
    def usable(self) -> bool:
        """Connected, alive, and able to take another stream."""
        return self.transport is not None and not self.closed and self.codec.can_open_stream()

    def open_stream(
        self, protocol: asyncio.Protocol, path: str, hosts: Sequence[str] | str = ()
    ) -> H2StreamTransport:
        """Send a new stream's HEADERS; ``protocol`` gets ``connection_made`` when its 200
        arrives (:meth:`H2StreamTransport.wait_open`), nothing if it fails (``wait_open``
        raises)."""
        sid = self.codec.open_stream(path, hosts)
        stream = H2StreamTransport(self, sid, protocol, {"h2_stream": sid, "h2_path": path})
        stream._waiter = self.loop.create_future()
        self.streams[sid] = stream
        self.schedule_flush()
        return stream

    def data_received(self, data: bytes) -> None:
        if not self._alpn_checked:
            self._alpn_checked = True
            alpn = _alpn(self.transport)
            if alpn not in (None, "h2"):
                self._broken(f"the server negotiated ALPN {alpn!r}, not h2")
                return
        super().data_received(data)

    def _stream_opened(self, event: StreamOpened) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream._info["h2_authority"] = event.authority
            stream._open()


def _alpn(transport: asyncio.BaseTransport | None) -> str | None:
    """The ALPN protocol the TLS below settled, if it is known (asyncio's ssl or a
    LayerStack's TLS layer); None without TLS (h2c, tests)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        selected = ssl_object.selected_alpn_protocol()
        return str(selected) if selected is not None else ""
    alpn = transport.get_extra_info("alpn")
    return str(alpn) if alpn is not None else None


class H2ClientPool:
    """Client connections by destination key, a stream per VMess connection (V2Ray keeps
    one ``http2.Transport`` per destination, docs/transports.md 4.1). A key holds more than one
    connection only when the server's MAX_CONCURRENT_STREAMS is reached (as Go's transport
    does); a dead connection (lost, GOAWAY) leaves the pool and the next stream dials anew.

    ``key``: anything hashable naming the destination and what the connection depends on
    (address, port, TLS settings); ``dial``: see :data:`Dial`.
    """

    def __init__(
        self,
        *,
        urandom: Callable[[int], bytes] = os.urandom,
        max_frame_size: int | None = CLIENT_MAX_FRAME_SIZE,
        on_failure: FailureHandler | None = None,
        name: str = "h2",
        **options: Any,
    ) -> None:
        self._urandom = urandom
        self._max_frame_size = max_frame_size
        self._on_failure = on_failure
        self._options = options
        self.name = name
        self._connections: dict[Hashable, list[H2ClientProtocol]] = {}
        self._dialing: dict[Hashable, asyncio.Future[H2ClientProtocol]] = {}
        self.dials = 0  # connections made so far (statistics, tests)
        self._closed = False

    def connections(self, key: Hashable) -> list[H2ClientProtocol]:
        return list(self._connections.get(key, ()))

    async def connection(self, key: Hashable, dial: Dial) -> H2ClientProtocol:
        """A connection to ``key`` that can take another stream, dialled if need be."""
        while True:
            if self._closed:
                raise ConnectionError(f"{self.name}: the pool is closed")
            for conn in self._connections.get(key, ()):
                if conn.usable:
                    return conn
            pending = self._dialing.get(key)
            if pending is None:
                return await self._dial(key, dial)
            try:
                conn = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    continue  # the caller that dialled was cancelled, not us: dial again
                raise
            if conn.usable:
                return conn

    async def _dial(self, key: Hashable, dial: Dial) -> H2ClientProtocol:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[H2ClientProtocol] = loop.create_future()
        self._dialing[key] = future
        conn = H2ClientProtocol(
            urandom=self._urandom,
            max_frame_size=self._max_frame_size,
            on_failure=self._on_failure,
            name=f"{self.name} {key}",
            **self._options,
        )
        try:
            await dial(conn)
            if conn.transport is None or conn.closed:
                raise ConnectionError(f"{self.name}: the connection to {key} did not come up")
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
                    future.exception()  # retrieved: waiters re-raise it themselves
            conn.abort()
            raise
        finally:
            if self._dialing.get(key) is future:
                del self._dialing[key]
        if self._closed:
            conn.abort()
            raise ConnectionError(f"{self.name}: the pool is closed")
        self.dials += 1
        self._connections.setdefault(key, []).append(conn)
        conn.close_callbacks.append(lambda c: self._drop(key, c))
        if not future.done():
            future.set_result(conn)
        return conn

    def _drop(self, key: Hashable, conn: _H2Protocol) -> None:
        conns = self._connections.get(key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._connections[key]

    async def connect(
        self,
        protocol: asyncio.Protocol,
        key: Hashable,
        dial: Dial,
        *,
        path: str,
        hosts: Sequence[str] | str = (),
    ) -> H2StreamTransport:
        """Open a stream for ``protocol`` and return once its 200 has arrived and
        ``protocol.connection_made`` has been called (like ``loop.create_connection``);
        raises if the dial or the stream fails. Cancelled meanwhile, the stream is reset."""
        while True:
            conn = await self.connection(key, dial)
            if conn.usable:
                break
        stream = conn.open_stream(protocol, path, hosts)
        try:
            await stream.wait_open()
        except asyncio.CancelledError:
            stream.abort()
            raise
        return stream

    def open(
        self,
        protocol: asyncio.Protocol,
        key: Hashable,
        dial: Dial,
        *,
        path: str,
        hosts: Sequence[str] | str = (),
    ) -> asyncio.Task[H2StreamTransport]:
        """Callback form of :meth:`connect`: ``protocol`` gets ``connection_made`` on the 200,
        or ``connection_lost(exc)`` (without a ``connection_made``) if it fails."""

        async def run() -> H2StreamTransport:
            try:
                return await self.connect(protocol, key, dial, path=path, hosts=hosts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                protocol.connection_lost(exc)
                raise

        task = asyncio.ensure_future(run())
        task.add_done_callback(_retrieve)
        return task

    async def close(self) -> None:
        """Close every connection (GOAWAY, then the socket); their streams end."""
        self._closed = True
        for future in list(self._dialing.values()):
            future.cancel()
        for conns in list(self._connections.values()):
            for conn in list(conns):
                conn.close("shutting down")
        self._connections.clear()
        await asyncio.sleep(0)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
