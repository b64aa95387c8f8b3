"""V2Ray 4.34's HTTP/2 transport ("network": "http"), sans-IO, over python-hyper's ``h2``.

Each VMess connection is one HTTP/2 stream: request DATA is upstream, response DATA is
downstream (docs/transports.md 4). A client shares one connection per destination among many
streams; a server takes every stream that passes its checks as a VMess connection. This is a
*multiplexing* layer, so it is not a :class:`~raybridge.protocols.stream.StreamLayer`: it
takes bytes and gives events that name a stream, and ``transport/h2.py`` turns each stream
into an ordinary asyncio transport. ``h2`` does the framing, HPACK and the state machines;
this module adds V2Ray's requests, answers and checks, send buffers, and flow control.

Byte layout (RFC 9113 4.1; what ``h2`` reads and writes)::

    frame   = LENGTH(3) | TYPE(1) | FLAGS(1) | R(1 bit) STREAM_ID(31 bits) | PAYLOAD(LENGTH)
    preface = "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" (client) then SETTINGS, both ways
    SETTINGS payload = (ID(2) | VALUE(4))*

What goes on the wire, as V2Ray 4.34 does it (docs/transports.md 4.1, 4.2; all [interop]):

* client preface: SETTINGS ENABLE_PUSH=0, INITIAL_WINDOW_SIZE=4194304,
  MAX_HEADER_LIST_SIZE=10485760, then WINDOW_UPDATE(0) +1073741824 (``max_frame_size`` adds
  a MAX_FRAME_SIZE, which V2Ray does not send: it only lets the server send larger frames);
* client HEADERS, in order: ``:authority`` (a random pick from ``host``, no port),
  ``:method PUT``, ``:path``, ``:scheme https``, ``accept-encoding: identity``,
  ``user-agent: Go-http-client/2.0``; no END_STREAM. Data waits for ``:status 200``;
  anything else fails the stream. Closing a stream the peer has not ended sends
  RST_STREAM(CANCEL);
* server preface: SETTINGS MAX_FRAME_SIZE=1048576, MAX_CONCURRENT_STREAMS=250,
  MAX_HEADER_LIST_SIZE=1048896, INITIAL_WINDOW_SIZE=1048576, then WINDOW_UPDATE(0) +983041;
* server checks: ``:authority`` (else ``host``) must equal one of the hosts exactly (an
  empty list means ``["www.example.com"]``), then the %-decoded ``:path`` without its query
  must start with the path; the method is not checked. A failure is answered ``:status
  404``, ``content-length: 0``, ``date`` with END_STREAM, then RST_STREAM(NO_ERROR), and the
  connection stays up (:class:`StreamRefused`). A malformed ``:path`` gets
  RST_STREAM(PROTOCOL_ERROR), as Go's server gives. A good stream is answered ``:status
  200``, ``cache-control: no-store``, ``date`` at once (:class:`StreamOpened`); the first
  X-Forwarded-For element, if it is an IP, is the stream's source (4.2).
* h2c, server side: a connection whose first bytes are not the client preface is read as
  HTTP/1.1 (h11). ``Upgrade: h2c`` with ``HTTP2-Settings`` is taken, as Go's ``h2c``
  handler takes it: ``101``, then the upgraded request is stream 1 (checked like any other;
  its request side has already ended, so it carries no VMess, but the connection goes on as
  HTTP/2). Any other HTTP/1.1 request is refused (:class:`ConnectionRefused`): ``404`` if it
  fails the checks (as V2Ray), else ``426 Upgrade Required`` (V2Ray would carry VMess in
  the HTTP/1.1 body; raybridge does not).

Flow control. Received DATA is handed back to the peer's windows only when the caller says
the stream's consumer took it (:meth:`H2StreamConnection.consumed`), so a slow reader stops
its own stream (its window: 1 MiB from a server, 4 MiB from a client) and nothing else: the
connection window is handed back as data arrives, unless the connection holds more than
``buffer_limit`` bytes nobody has consumed, which bounds a connection's memory. Updates go
out in steps of a quarter window. Sending: :meth:`~H2StreamConnection.send_data` only
queues; :meth:`~H2StreamConnection.pump` frames what the peer's windows allow (frames up to
its MAX_FRAME_SIZE, the streams taking turns a frame each) and
:meth:`~H2StreamConnection.buffered` says what waits, so the adapter can pause a writer.
Every byte handed out in :class:`StreamData` must be reported consumed once (taken or
dropped), or its stream's window stays shut.

Limits on what a peer can make us hold: per stream, its receive window; per connection,
``buffer_limit`` plus the connection window, and one frame in h2's receive buffer (a frame
header announcing more than our MAX_FRAME_SIZE is refused as soon as it arrives, h2 would
wait for the whole frame); an HTTP/1.1 request head of 16 KiB (h11); a header list of
64 KiB (HPACK). A server takes at most MAX_CONCURRENT_STREAMS (250) streams; more is a
connection error in h2 (Go answers REFUSED_STREAM), which well-behaved clients never hit.

GOAWAY: ``h2`` takes no frame at all after one (sent or received), so a GOAWAY ends every
stream of the connection (:class:`ConnectionTerminated`); V2Ray's server does not send one
to end gracefully (it closes the socket). Errors: malformed input raises
:class:`H2StreamError` (the connection is dead; ``data_to_send`` holds the GOAWAY or HTTP/1.1
400 to send before closing); what fails one stream is an event.
"""

from __future__ import annotations

import binascii
import contextlib
import ipaddress
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import TypeAlias
from urllib.parse import quote, unquote_to_bytes

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import hyperframe.frame
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from raybridge.errors import LocalProtocolError
from raybridge.protocols.stream import LayerError, Role

__all__ = [
    "CLIENT_SETTINGS",
    "DEFAULT_HOST",
    "SERVER_SETTINGS",
    "ConnectionRefused",
    "ConnectionTerminated",
    "ErrorCodes",
    "H2Event",
    "H2StreamConnection",
    "H2StreamError",
    "Role",
    "SettingCodes",
    "StreamClosed",
    "StreamData",
    "StreamEnded",
    "StreamOpened",
    "StreamRefused",
    "StreamReset",
    "normalize_path",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_HOST = "www.example.com"  # docs/transports.md 4: an empty host list means this, both sides

#: SETTINGS as V2Ray 4.34 sends them, in its order (docs/transports.md 4.1, 4.2).
CLIENT_SETTINGS: tuple[tuple[SettingCodes, int], ...] = (
    (SettingCodes.ENABLE_PUSH, 0),
    (SettingCodes.INITIAL_WINDOW_SIZE, 4194304),
    (SettingCodes.MAX_HEADER_LIST_SIZE, 10485760),
)
SERVER_SETTINGS: tuple[tuple[SettingCodes, int], ...] = (
    (SettingCodes.MAX_FRAME_SIZE, 1048576),
    (SettingCodes.MAX_CONCURRENT_STREAMS, 250),
    (SettingCodes.MAX_HEADER_LIST_SIZE, 1048896),
    (SettingCodes.INITIAL_WINDOW_SIZE, 1048576),
)
#: Connection receive windows after the preface's WINDOW_UPDATE(0) (65535 + the increment).
CLIENT_CONNECTION_WINDOW = 65535 + 1073741824
SERVER_CONNECTION_WINDOW = 65535 + 983041
#: Received bytes a connection may hold unconsumed before it stops opening its connection
#: window (then only consumption reopens it).
BUFFER_LIMIT = 64 * 1024 * 1024
#: HPACK's limit on a decoded header list: far above any V2Ray, Go or sing-box request,
#: whatever the advertised MAX_HEADER_LIST_SIZE (which RFC 9113 6.5.2 calls advisory).
HEADER_LIST_LIMIT = 65536

_CLIENT_HEADERS_TAIL = (
    (b":scheme", b"https"),
    (b"accept-encoding", b"identity"),
    (b"user-agent", b"Go-http-client/2.0"),
)
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Go's EscapedPath keeps these (and letters, digits, "-._~") in a path (net/url shouldEscape).
_PATH_SAFE = "$&+,/:;=@"


def _quiet_raw_data_repr(data: bytes | None) -> str:
    # Same text as hyperframe's helper, which h2 calls for a trace log on every received
    # frame (its arguments are built even with logging off) and which hex-encodes a whole
    # DATA payload only to keep 20 characters: that alone cost h2 three quarters of its
    # receive time on 1 MiB frames.
    if not data:
        return "None"
    text = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (text[:20] + "..." if len(text) > 20 else text) + ">"


if hasattr(hyperframe.frame, "_raw_data_repr"):
    hyperframe.frame._raw_data_repr = _quiet_raw_data_repr


class H2StreamError(LayerError):
    """The peer broke HTTP/2 (or the HTTP/1.1 before an h2c upgrade): the connection is dead."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened:
    """Server: a stream passed the checks (its 200 is queued). Client: its 200 arrived."""

    stream_id: int
    path: str
    authority: str
    #: Server: the first X-Forwarded-For element, if it is an IP address (V2Ray's source).
    forwarded_for: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRefused:
    """Server: a stream failed the checks; its 404 (or reset) is queued, the stream is gone."""

    stream_id: int
    reason: str
    path: str = ""
    authority: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    """Payload for a stream. Report it with :meth:`H2StreamConnection.consumed` once taken
    (or dropped): only then does the peer's window for the stream reopen."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    """The peer ended its side of the stream (END_STREAM): deliver EOF."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    """The stream failed and is gone: the peer reset it (``remote``), a client got a status
    other than 200, or h2 reset it for a stream-level error."""

    stream_id: int
    reason: str
    error_code: int = 0
    remote: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamClosed:
    """Both sides of the stream ended cleanly (or our graceful close finished): it is gone."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated:
    """The peer sent GOAWAY: every stream of the connection is over."""

    error_code: int
    last_stream_id: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRefused:
    """Server: an HTTP/1.1 request that is not an h2c upgrade; the answer is queued, then
    the adapter closes the connection and logs ``reason``."""

    reason: str


H2Event: TypeAlias = (
    StreamOpened
    | StreamRefused
    | StreamData
    | StreamEnded
    | StreamReset
    | StreamClosed
    | ConnectionTerminated
    | ConnectionRefused
)


def normalize_path(path: str) -> str:
    """V2Ray's ``getNormalizedPath``: "" is "/", and a leading "/" is added if missing."""
    if not path:
        return "/"
    return path if path.startswith("/") else "/" + path


class _Stream:
    __slots__ = (
        "authority",
        "buffered",
        "close_code",
        "eof_sent",
        "eof_wanted",
        "id",
        "opened",
        "owed",
        "parts",
        "path",
        "remote_ended",
    )

    def __init__(self, stream_id: int, *, opened: bool, path: str, authority: str) -> None:
        self.id = stream_id
        self.opened = opened  # client: the 200 has arrived; server: always
        self.parts: deque[bytes | memoryview] = deque()
        self.buffered = 0
        self.eof_wanted = False  # send END_STREAM once the buffer is out
        self.eof_sent = False
        self.close_code: int | None = None  # after END_STREAM, reset with this if still open
        self.remote_ended = False
        self.owed = 0  # consumed bytes not yet handed back to the stream window
        self.path = path
        self.authority = authority

    def take(self, size: int) -> bytes | memoryview:
        """The next ``size`` buffered bytes (no copy unless they span parts)."""
        parts = self.parts
        self.buffered -= size
        first = parts[0]
        if len(first) == size:
            return parts.popleft()
        if len(first) > size:
            view = first if type(first) is memoryview else memoryview(first)
            parts[0] = view[size:]
            return view[:size]
        pieces: list[bytes | memoryview] = []
        need = size
        while need:
            first = parts[0]
            if len(first) <= need:
                pieces.append(parts.popleft())
                need -= len(first)
            else:
                view = first if type(first) is memoryview else memoryview(first)
                pieces.append(view[:need])
                parts[0] = view[need:]
                need = 0
        return b"".join(pieces)


def _request_fields(
    headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]],
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The authority (Go's ``request.Host``: :authority, else the first Host header), the
    path and the first X-Forwarded-For of a request's headers."""
    authority: bytes | None = None
    host: bytes | None = None
    path: bytes | None = None
    xff: bytes | None = None
    for raw_name, raw_value in headers:
        name = bytes(raw_name) if not isinstance(raw_name, str) else raw_name.encode()
        value = bytes(raw_value) if not isinstance(raw_value, str) else raw_value.encode()
        if name == b":authority":
            authority = value
        elif name == b":path":
            path = value
        elif name == b"host" and host is None:
            host = value
        elif name == b"x-forwarded-for" and xff is None:
            xff = value
    return authority or host, path, xff


def _role_settings(
    client: bool,
    initial_window: int | None,
    max_frame_size: int | None,
    max_concurrent_streams: int | None,
) -> dict[SettingCodes, int]:
    """The SETTINGS we advertise: V2Ray's for the role, with the caller's overrides."""
    settings = dict(CLIENT_SETTINGS if client else SERVER_SETTINGS)
    if initial_window is not None and initial_window < 65535:
        raise ValueError("initial_window below HTTP/2's default (see below)")
    if initial_window is not None:
        settings[SettingCodes.INITIAL_WINDOW_SIZE] = initial_window
    if max_frame_size is not None:
        settings[SettingCodes.MAX_FRAME_SIZE] = max_frame_size
    if max_concurrent_streams is not None and not client:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
    return settings


def _h2_connection(client: bool, settings: dict[SettingCodes, int]) -> h2.connection.H2Connection:
    """An h2 connection that holds itself to ``settings`` from the start."""
    config = h2.config.H2Configuration(client_side=client, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    # What we advertise takes effect at once: only larger limits than the protocol's
    # defaults, which the peer uses until it reads our SETTINGS, so it never breaks them.
    initial = dict(settings)
    initial.setdefault(SettingCodes.MAX_CONCURRENT_STREAMS, 100)  # h2's own default
    conn.local_settings = Settings(client=client, initial_values=initial)
    conn.max_inbound_frame_size = settings.get(SettingCodes.MAX_FRAME_SIZE, 16384)
    conn.decoder.max_header_list_size = HEADER_LIST_LIMIT
    return conn


class H2StreamConnection:
    """One HTTP/2 connection carrying VMess streams, either role (see the module docstring).

    ``hosts`` and ``path``: the server's checks (``httpSettings``); a client passes its own to
    :meth:`open_stream`. ``urandom`` picks a client's ``:authority``; ``clock`` (wall time)
    dates a server's answers. ``initial_window``, ``connection_window``,
    ``max_concurrent_streams`` and ``max_frame_size`` default to V2Ray's values for the role.
    """

    def __init__(
        self,
        role: Role,
        *,
        hosts: Sequence[str] = (),
        path: str = "/",
        urandom: Callable[[int], bytes] | None = None,
        clock: Callable[[], float] | None = None,
        initial_window: int | None = None,
        connection_window: int | None = None,
        max_concurrent_streams: int | None = None,
        max_frame_size: int | None = None,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.role = role
        client = role is Role.CLIENT
        if client and urandom is None:
            raise ValueError("a client needs urandom (it picks the :authority)")
        if not client and clock is None:
            raise ValueError("a server needs a clock (it dates its answers)")
        self._urandom = urandom
        self._clock = clock
        self.hosts = list(hosts) or [DEFAULT_HOST]
        self._host_set = {h.encode("utf-8", "surrogateescape") for h in self.hosts}
        self.path = normalize_path(path)
        self._prefix = self.path.encode("utf-8", "surrogateescape")

        settings = _role_settings(client, initial_window, max_frame_size, max_concurrent_streams)
        self._settings = settings
        window = connection_window
        if window is None:
            window = CLIENT_CONNECTION_WINDOW if client else SERVER_CONNECTION_WINDOW
        self._connection_window = max(window, 65535)
        self._stream_window = settings[SettingCodes.INITIAL_WINDOW_SIZE]
        self._stream_step = max(self._stream_window // 4, 1)
        self._connection_step = max(self._connection_window // 4, 1)
        self._buffer_limit = buffer_limit

        self._conn = conn = _h2_connection(client, settings)

        self._out = bytearray()  # our own bytes that go before h2's (preface, HTTP/1.1)
        self._streams: dict[int, _Stream] = {}
        self._ready: dict[int, _Stream] = {}  # streams with something to send, in turn
        self._unconsumed: dict[int, int] = {}  # delivered, not yet reported consumed
        self.unconsumed_total = 0
        self.buffered_total = 0
        self._connection_owed = 0
        self._settings_seen = False  # the peer's SETTINGS have arrived
        self.closed = False  # GOAWAY sent or received, or the connection failed
        self.refused = False  # server: refused as HTTP/1.1
        self._mode: str | None = None  # server: None (first bytes pending), "h2", "h1"
        self._head = b""
        self._skip = 0 if client else len(PREFACE)  # see _watch
        self._partial = b""
        self._h11: h11.Connection | None = None
        self._h11_request: h11.Request | None = None
        if client:
            self._mode = "h2"
            conn.initiate_connection()
            self._start(PREFACE)

    # -- the preface ------------------------------------------------------------------------
    def _start(self, preamble: bytes) -> None:
        """Replace h2's preface (it lists every setting it knows) by V2Ray's."""
        conn = self._conn
        conn.clear_outbound_data_buffer()
        frame = hyperframe.frame.SettingsFrame(0)
        frame.settings = {int(code): value for code, value in self._settings.items()}
        self._out += preamble + frame.serialize()
        if self._connection_window > 65535:
            conn.increment_flow_control_window(self._connection_window - 65535)

    # -- output -----------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued for the wire (``b""`` if none). Call :meth:`pump` first to
        frame buffered stream data."""
        data = self._conn.data_to_send()
        if self._out:
            data = bytes(self._out) + data
            self._out.clear()
        return data

    def buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` that the peer's windows have not let out yet."""
        stream = self._streams.get(stream_id)
        return stream.buffered if stream is not None else 0

    @property
    def handshake_done(self) -> bool:
        """The connection is known to speak HTTP/2 (a server has seen the preface's start or
        taken an h2c upgrade; a client always)."""
        return self._mode == "h2"

    def is_open(self, stream_id: int) -> bool:
        """Is ``stream_id`` a stream of ours that is not gone yet?"""
        return stream_id in self._streams

    @property
    def stream_count(self) -> int:
        """Streams not yet gone (a client counts those still waiting for their 200)."""
        return len(self._streams)

    def can_open_stream(self) -> bool:
        """Client: may :meth:`open_stream` be called (not closed, under the server's
        MAX_CONCURRENT_STREAMS, stream ids left)?"""
        conn = self._conn
        limit = conn.remote_settings.max_concurrent_streams
        if not self._settings_seen:
            limit = min(limit, 100)  # Go's assumption until the server's SETTINGS arrive
        return (
            self.role is Role.CLIENT
            and not self.closed
            and len(self._streams) < limit
            and conn.highest_outbound_stream_id < conn.HIGHEST_ALLOWED_STREAM_ID - 2
        )

    # -- client -----------------------------------------------------------------------------
    def pick_host(self, hosts: Sequence[str]) -> str:
        """V2Ray's ``getRandomHost``: a random element (``www.example.com`` if none)."""
        if not hosts:
            return DEFAULT_HOST
        assert self._urandom is not None
        return hosts[int.from_bytes(self._urandom(4), "big") % len(hosts)]

    def open_stream(self, path: str, hosts: Sequence[str] | str = ()) -> int:
        """Client: send a new stream's HEADERS (V2Ray's request) and return its id. ``hosts``:
        the ``host`` list to pick the ``:authority`` from, or one authority as a string."""
        if not self.can_open_stream():
            raise LocalProtocolError("this HTTP/2 connection cannot open another stream")
        authority = hosts if isinstance(hosts, str) else self.pick_host(hosts)
        wire_path = quote(normalize_path(path), safe=_PATH_SAFE)
        conn = self._conn
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (b":authority", authority.encode("utf-8", "surrogateescape")),
            (b":method", b"PUT"),
            (b":path", wire_path.encode("ascii")),
            *_CLIENT_HEADERS_TAIL,
        ]
        try:
            conn.send_headers(stream_id, headers)
        except h2.exceptions.H2Error as exc:
            raise LocalProtocolError(f"cannot open an HTTP/2 stream: {exc}") from exc
        self._streams[stream_id] = _Stream(
            stream_id, opened=False, path=wire_path, authority=authority
        )
        return stream_id

    # -- sending ----------------------------------------------------------------------------
    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on a stream (it goes out with :meth:`pump`)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.eof_wanted:
            raise LocalProtocolError(f"HTTP/2 stream {stream_id} is not open for sending")
        if not data:
            return
        part: bytes | memoryview
        if type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes):
            part = data
        else:
            part = bytes(data)  # a mutable buffer the caller may reuse: copy it
        stream.parts.append(part)
        stream.buffered += len(part)
        self.buffered_total += len(part)
        self._ready[stream_id] = stream

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream (END_STREAM) once its buffered data is out."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.eof_wanted:
            return
        stream.eof_wanted = True
        self._ready[stream_id] = stream

    def close_stream(self, stream_id: int) -> None:
        """Graceful close: END_STREAM after the buffered data, then, if the peer has not
        ended its side, RST_STREAM: CANCEL from a client (V2Ray's), NO_ERROR from a server
        (Go's, RFC 9113 8.1)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        client = self.role is Role.CLIENT
        stream.close_code = ErrorCodes.CANCEL if client else ErrorCodes.NO_ERROR
        stream.eof_wanted = True
        self._ready[stream_id] = stream

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort a stream now (RST_STREAM); what it had buffered is dropped. No event."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._forget(stream)
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):  # h2 has closed it already
                self._conn.reset_stream(stream_id, error_code)

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY: the connection takes nothing more (h2 processes no frame after it)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self._conn.close_connection(error_code, reason.encode()[:256] or None)

    def pump(self, limit: int | None = None) -> list[H2Event]:
        """Frame buffered data as far as the peer's windows allow (at most ``limit`` bytes),
        one frame per stream in turn; send pending END_STREAMs and graceful resets. Returns
        the :class:`StreamClosed` (or, on a local h2 error, :class:`StreamReset`) events of
        streams that finished meanwhile."""
        events: list[H2Event] = []
        ready = self._ready
        if not ready or self.closed:
            return events
        conn = self._conn
        budget = limit if limit is not None else 1 << 62
        progress = True
        while ready and progress and budget > 0:
            progress = False
            max_frame = conn.max_outbound_frame_size
            for stream in list(ready.values()):
                if not stream.opened:
                    continue
                sid = stream.id
                try:
                    if stream.buffered:
                        size = min(
                            stream.buffered, budget, max_frame, conn.local_flow_control_window(sid)
                        )
                        if size <= 0:
                            continue
                        chunk = stream.take(size)
                        self.buffered_total -= size
                        budget -= size
                        progress = True
                        last = stream.eof_wanted and not stream.buffered
                        conn.send_data(sid, chunk, end_stream=last)
                        stream.eof_sent = last
                        if stream.buffered:
                            # To the back of the line: the next frame is another stream's,
                            # in this call or the next.
                            del ready[sid]
                            ready[sid] = stream
                            continue
                    if stream.eof_wanted and not stream.eof_sent:
                        conn.end_stream(sid)
                        stream.eof_sent = True
                    del ready[sid]
                    if stream.eof_sent:
                        if stream.remote_ended:
                            self._forget(stream)
                            events.append(StreamClosed(stream_id=sid))
                        elif stream.close_code is not None:
                            self._forget(stream)
                            conn.reset_stream(sid, stream.close_code)
                            events.append(StreamClosed(stream_id=sid))
                except h2.exceptions.H2Error as exc:
                    self._forget(stream)
                    reason = f"cannot send on the stream: {exc}"
                    events.append(StreamReset(stream_id=sid, reason=reason, remote=False))
        return events

    def _forget(self, stream: _Stream) -> None:
        self.buffered_total -= stream.buffered
        stream.parts.clear()
        stream.buffered = 0
        self._streams.pop(stream.id, None)
        self._ready.pop(stream.id, None)

    # -- receiving --------------------------------------------------------------------------
    def consumed(self, stream_id: int, size: int) -> None:
        """``size`` bytes of the stream's :class:`StreamData` were taken by its consumer (or
        dropped): reopen the windows for them, in steps of a quarter window."""
        if size <= 0:
            return
        left = self._unconsumed.get(stream_id)
        if left is not None:
            taken = min(left, size)
            left -= taken
            self.unconsumed_total -= taken
            if left:
                self._unconsumed[stream_id] = left
            else:
                del self._unconsumed[stream_id]
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.remote_ended and not self.closed:
            stream.owed += size
            if stream.owed >= self._stream_step:
                self._open_stream_window(stream)
        self._open_connection_window()

    def _open_stream_window(self, stream: _Stream) -> None:
        owed, stream.owed = stream.owed, 0
        with contextlib.suppress(h2.exceptions.H2Error, KeyError):  # closed meanwhile
            self._conn.increment_flow_control_window(owed, stream.id)

    def _open_connection_window(self) -> None:
        owed = self._connection_owed
        if owed >= self._connection_step and self.unconsumed_total <= self._buffer_limit:
            self._connection_owed = 0
            if not self.closed:
                self._conn.increment_flow_control_window(owed)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[H2Event]:
        """Bytes from the peer; raises :class:`H2StreamError` if the connection is broken."""
        if self.closed or self.refused:
            return []
        if self._mode != "h2":
            return self._receive_first(bytes(data))
        self._watch(data)
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self.closed = True
            raise H2StreamError(f"HTTP/2: {exc}") from exc
        except Exception as exc:  # h2 and hpack on hostile input: nothing else escapes
            self.closed = True
            raise H2StreamError(f"HTTP/2: {type(exc).__name__}: {exc}") from exc
        events: list[H2Event] = []
        for event in h2_events:
            self._translate(event, events)
        self._open_connection_window()
        return events

    def _watch(self, data: bytes | bytearray | memoryview) -> None:
        """Walk the frame headers, only to refuse an overlong frame at once: h2 checks a
        frame's length only when all of it has arrived, so a peer announcing 16 MiB would
        be buffered until it had sent them."""
        skip = self._skip
        size = len(data)
        if skip >= size:
            self._skip = skip - size
            return
        limit = self._conn.max_inbound_frame_size
        pos = skip
        if self._partial:
            head = self._partial + bytes(data[: 9 - len(self._partial)])
            if len(head) < 9:
                self._partial = head
                self._skip = 0
                return
            pos = 9 - len(self._partial)
            self._partial = b""
            length = int.from_bytes(head[:3], "big")
            if length > limit:
                self._overlong(length)
            pos += length
        while pos + 9 <= size:
            length = int.from_bytes(data[pos : pos + 3], "big")
            if length > limit:
                self._overlong(length)
            pos += 9 + length
        if pos < size:
            self._partial = bytes(data[pos:])
            self._skip = 0
        else:
            self._skip = pos - size

    def _overlong(self, length: int) -> None:
        self.close(ErrorCodes.FRAME_SIZE_ERROR)
        limit = self._conn.max_inbound_frame_size
        raise H2StreamError(f"HTTP/2: a {length}-byte frame, over the {limit}-byte limit")

    def _translate(self, event: h2.events.Event, events: list[H2Event]) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            assert isinstance(event, h2.events.DataReceived)
            self._data(event, events)
        elif kind is h2.events.StreamEnded:
            sid = event.stream_id  # type: ignore[attr-defined]
            stream = self._streams.get(sid)
            if stream is None:
                return
            stream.remote_ended = True
            events.append(StreamEnded(stream_id=sid))
            if stream.eof_sent:
                self._forget(stream)
                events.append(StreamClosed(stream_id=sid))
        elif kind is h2.events.RequestReceived:
            assert isinstance(event, h2.events.RequestReceived)
            self._request(event.stream_id, event.headers, events)
        elif kind is h2.events.ResponseReceived:
            assert isinstance(event, h2.events.ResponseReceived)
            self._response(event, events)
        elif kind is h2.events.StreamReset:
            assert isinstance(event, h2.events.StreamReset)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._forget(stream)
                code = int(event.error_code or 0)
                who = "the peer" if event.remote_reset else "h2"
                events.append(
                    StreamReset(
                        stream_id=event.stream_id,
                        reason=f"reset by {who} ({_code_name(code)})",
                        error_code=code,
                        remote=bool(event.remote_reset),
                    )
                )
        elif kind is h2.events.ConnectionTerminated:
            assert isinstance(event, h2.events.ConnectionTerminated)
            self.closed = True
            for stream in list(self._streams.values()):
                self._forget(stream)
            code = int(event.error_code or 0)
            extra = (event.additional_data or b"").decode("utf-8", "replace")
            reason = f"GOAWAY ({_code_name(code)}{': ' + extra if extra else ''})"
            events.append(
                ConnectionTerminated(
                    error_code=code, last_stream_id=event.last_stream_id or 0, reason=reason
                )
            )
        elif kind is h2.events.RemoteSettingsChanged:
            self._settings_seen = True
        # Settings ACKs, PING (h2 answers it), WINDOW_UPDATE (pump() looks at the
        # windows), PRIORITY, trailers, 1xx and unknown frames need nothing here.

    def _data(self, event: h2.events.DataReceived, events: list[H2Event]) -> None:
        sid = event.stream_id
        data = event.data
        flow = event.flow_controlled_length or 0
        self._connection_owed += flow
        stream = self._streams.get(sid)
        if stream is None:
            # Gone on our side (reset, refused): the bytes count for the connection only.
            return
        if flow > len(data):
            stream.owed += flow - len(data)  # padding: consumed at once
        if not data:
            return
        size = len(data)
        self._unconsumed[sid] = self._unconsumed.get(sid, 0) + size
        self.unconsumed_total += size
        events.append(StreamData(stream_id=sid, data=data))

    def _response(self, event: h2.events.ResponseReceived, events: list[H2Event]) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            return
        status = b""
        for name, value in event.headers:
            if name == b":status":
                status = bytes(value)
                break
        if status == b"200":
            stream.opened = True
            if stream.buffered or stream.eof_wanted:
                self._ready[sid] = stream
            events.append(StreamOpened(stream_id=sid, path=stream.path, authority=stream.authority))
            return
        # V2Ray's dial fails on anything but 200 (docs/transports.md 4.1).
        self._forget(stream)
        h2_stream = self._conn.streams.get(sid)
        if h2_stream is not None and not h2_stream.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self._conn.reset_stream(sid, ErrorCodes.CANCEL)
        reason = f"HTTP status {status.decode('ascii', 'replace') or '?'}"
        events.append(StreamReset(stream_id=sid, reason=reason, remote=True))

    # -- server -----------------------------------------------------------------------------
    def _date(self) -> bytes:
        assert self._clock is not None
        return formatdate(self._clock(), usegmt=True).encode("ascii")

    def _check(self, host: bytes | None, path: bytes | None) -> tuple[int, str]:
        """(0, "") if a request passes V2Ray's checks, else the status to answer (404, or 0
        for a reset) and why."""
        if host is None or host not in self._host_set:
            return 404, f"host {_text(host)!r} is not one of {self.hosts}"
        if path is None or not path.startswith(b"/") or _BAD_ESCAPE.search(path):
            return -1, f"malformed path {_text(path)!r}"
        decoded = unquote_to_bytes(path.split(b"?", 1)[0])
        if not decoded.startswith(self._prefix):
            return 404, f"path {_text(path)!r} does not start with {self.path!r}"
        return 0, ""

    def _request(
        self,
        sid: int,
        headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]],
        events: list[H2Event],
        *,
        request_ended: bool = False,
    ) -> None:
        authority, path, xff = _request_fields(headers)
        status, reason = self._check(authority, path)
        self._answer(sid, status)
        if status:
            events.append(
                StreamRefused(
                    stream_id=sid, reason=reason, path=_text(path), authority=_text(authority)
                )
            )
            return
        stream = _Stream(sid, opened=True, path=_text(path), authority=_text(authority))
        self._streams[sid] = stream
        events.append(
            StreamOpened(
                stream_id=sid,
                path=stream.path,
                authority=stream.authority,
                forwarded_for=_forwarded_for(xff),
            )
        )
        if request_ended:
            stream.remote_ended = True
            events.append(StreamEnded(stream_id=sid))

    def _answer(self, sid: int, status: int) -> None:
        """Answer a request: 200 and the stream stays open (``status`` 0), 404 and a reset,
        or a bare reset (any other refusal)."""
        conn = self._conn
        # A stream the client reset in the same read as its HEADERS gets no answer, but the
        # same events as if the reset had come later (so events never depend on where the
        # input was split).
        h2_stream = conn.streams.get(sid)
        with contextlib.suppress(h2.exceptions.H2Error):
            if h2_stream is not None and not h2_stream.closed:
                if status == 404:
                    conn.send_headers(
                        sid,
                        [(b":status", b"404"), (b"content-length", b"0"), (b"date", self._date())],
                        end_stream=True,
                    )
                elif not status:
                    conn.send_headers(
                        sid,
                        [
                            (b":status", b"200"),
                            (b"cache-control", b"no-store"),
                            (b"date", self._date()),
                        ],
                    )
                if status and not h2_stream.closed:
                    code = ErrorCodes.NO_ERROR if status == 404 else ErrorCodes.PROTOCOL_ERROR
                    conn.reset_stream(sid, code)

    def _receive_first(self, data: bytes) -> list[H2Event]:
        """Server, before the connection is known to be HTTP/2: prior knowledge or h2c."""
        if self._mode is None:
            head = self._head + data
            if PREFACE.startswith(head[:24]):
                if len(head) < 4:
                    self._head = head  # "P", "PR", "PRI": could still be HTTP/1.1 ("PUT")
                    return []
                self._head = b""
                self._mode = "h2"
                self._conn.initiate_connection()
                self._start(b"")
                return self.receive_data(head)
            self._head = b""
            self._mode = "h1"
            self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
            data = head
        assert self._h11 is not None
        return self._receive_h1(data)

    def _receive_h1(self, data: bytes) -> list[H2Event]:
        parser = self._h11
        assert parser is not None
        try:
            parser.receive_data(data)
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    return []
                if type(event) is h11.Request:
                    self._h11_request = event
                elif type(event) is h11.EndOfMessage or event is h11.PAUSED:
                    break
                elif type(event) is h11.ConnectionClosed:
                    raise H2StreamError("the connection ended during an HTTP/1.1 request")
                # Data (a body): dropped, it has no stream to go to.
        except h11.RemoteProtocolError as exc:
            self._out += (
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.refused = True
            raise H2StreamError(f"bad HTTP/1.1 request: {exc}") from exc
        request = self._h11_request
        assert request is not None
        headers: dict[bytes, bytes] = {}
        for name, value in request.headers:
            headers.setdefault(bytes(name), bytes(value))
        upgrade = headers.get(b"upgrade", b"").lower()
        settings = headers.get(b"http2-settings")
        if b"h2c" in [token.strip() for token in upgrade.split(b",")] and settings is not None:
            return self._upgrade(request, settings)
        self.refused = True
        status, reason = self._check(headers.get(b"host"), bytes(request.target))
        if status:
            self._out += (
                b"HTTP/1.1 404 Not Found\r\nDate: "
                + self._date()
                + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return [ConnectionRefused(reason=f"HTTP/1.1: {reason}")]
        self._out += (
            b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: h2c\r\nConnection: Upgrade, close\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        return [ConnectionRefused(reason="HTTP/1.1 without Upgrade: h2c is not supported")]

    def _upgrade(self, request: h11.Request, settings: bytes) -> list[H2Event]:
        parser = self._h11
        assert parser is not None
        # h11 holds what follows the request (the client preface) once it has paused, which
        # it does right after the request's end, since the request asked for an upgrade.
        if parser.next_event() is not h11.PAUSED:
            raise H2StreamError("HTTP/1.1 upgrade request did not end")
        rest, _closed = parser.trailing_data
        self._h11 = None
        self._mode = "h2"
        conn = self._conn
        try:
            # Go's clients send base64url without padding; Python's decoder wants it.
            conn.initiate_upgrade_connection(settings + b"=" * (-len(settings) % 4))
        except (h2.exceptions.H2Error, ValueError, binascii.Error) as exc:
            self.closed = True
            raise H2StreamError(f"bad HTTP2-Settings: {exc}") from exc
        self._out += (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        self._start(b"")
        events: list[H2Event] = []
        headers = [(b":path", bytes(request.target))]
        headers += [(bytes(n), bytes(v)) for n, v in request.headers if n != b"host"]
        host = next((bytes(v) for n, v in request.headers if n == b"host"), b"")
        headers.append((b":authority", host))
        self._request(1, headers, events, request_ended=True)
        if rest:
            events += self.receive_data(rest)
        return events


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code:#x}"


def _forwarded_for(value: bytes | None) -> str | None:
    """V2Ray's ``ParseXForwardedFor`` then ``ParseAddress``: the first element, brackets and
    spaces stripped, if it is an IP address."""
    if not value:
        return None
    first = value.split(b",", 1)[0].decode("latin-1")
    if first.startswith("[") and first.endswith("]"):
        first = first[1:-1]
    try:
        return str(ipaddress.ip_address(first.strip()))
    except ValueError:
        return None
