"""Mux.Cool: the frame codec and a sans-IO session table for both ends (docs/protocols.md 2).

Byte layout (docs/protocols.md 2.2; big-endian)::

    frame = META_LEN(2) | META(META_LEN) | [ DATA_LEN(2) | DATA(DATA_LEN) ]   iff OPTION & 0x01
    META  = SESSION_ID(2) | STATUS(1) | OPTION(1) | [ New extras ]
    New extras (STATUS 0x01 only) = NETWORK(1) | PORT(2) | ATYP(1) | ADDRESS
        NETWORK 0x01 TCP, 0x02 UDP; ATYP 0x01 IPv4, 0x02 domain (LEN(1) + bytes), 0x03 IPv6

    4 <= META_LEN <= 512 (New: >= 8); META bytes beyond what STATUS needs are ignored,
    except the address of a UDP session's Keep frame (XUDP, below).
    DATA_LEN <= 65535; one datagram per frame on UDP sessions, which V2Ray 4.34 reads only
    up to 2048 bytes (so that is what we send on them, unless the session is XUDP).

Per-session flow control (raybridge's own; Mux.Cool has none): KeepAlive frames carry
it, since V2Ray 4.34 (``common/mux/{client,server}.go`` ``handleStatusKeepAlive``), Xray and
sing-vmess read a KeepAlive's data and discard it. A raybridge end announces itself with
``KeepAlive(session 0, data FC_HELLO)``; once it has heard the peer's announcement it may
send ``KeepAlive(session N, data FC_PAUSE)`` ("stop sending data on N: my reader is slow")
and later ``FC_RESUME``. To any other peer these are KeepAlives like any other.

XUDP (Xray, sing-box ``packet_encoding: "xudp"``; not in 4.34): a UDP session whose Keep
frames carry the datagram's address, ``NETWORK(1) | PORT(2) | ATYP(1) | ADDRESS`` after
OPTION as in New, so one session reaches many destinations (full-cone UDP). Clients open it
as session 0 and Xray appends an 8-byte GlobalID to the New frame's META (ignored here).
A session is XUDP once it is session 0 or a Keep frame of it has carried an address; only
then do our Keep frames carry addresses, and may carry datagrams over 2048 bytes
(SagerNet/sing-vmess ``xudp.go``, ``mux.go``; XTLS/Xray-core ``common/mux``).

Two layers:

* :func:`encode_frame` / :class:`FrameDecoder` / :class:`Frame`: the frame syntax, nothing else.
* :class:`MuxConnection`: the session table of one mux connection, modelled on h2's
  ``receive_data`` / ``data_to_send``. The *client* role opens sessions (V2Ray's mux client
  and the reverse portal), the *server* role accepts them (V2Ray's mux server and the reverse
  bridge). User sends and the protocol's own replies (End for an unknown session, End+Error
  for a refused one) go to one outgoing queue, drained by :meth:`MuxConnection.data_to_send`.

Behaviour taken from V2Ray 4.34 (``common/mux/{client,server,session}.go``), docs/protocols.md 2.3:

* Keep+Data for an unknown session: queue End (OPTION 0) for that ID, discard the data.
  End, KeepAlive and Keep without data for unknown sessions: ignored.
* A New frame received by the client role is ignored (its data discarded).
* End without the Error bit ends the *peer's direction* only, so that TCP half-close
  crosses a mux connection. 4.34 does the same (docs/protocols.md 2.3: only End+Error "aborts
  both directions"): on End its server and client close the writer towards their local side
  (EOF) and drop the session from their map, while the goroutine copying the local side's
  data back goes on sending Keep frames for it until that side ends, then sends its own End.
  So End yields ``SessionEnded(error=False)`` ("deliver EOF"), nothing is sent in reply, and
  the session stays open for our sends until we end our direction too
  (:meth:`MuxConnection.half_close` or :meth:`MuxConnection.end_session`). A session is
  gone once both sides have sent End, or either side has sent End+Error, or the caller
  called ``end_session``. (A 4.34 peer forgets a session as it sends its End, and answers
  our later Keep frames with End, dropping their data; a raybridge peer delivers them.)
* End+Error aborts the session at once (``SessionEnded(error=True)``, nothing sent back:
  whatever we still had to send is moot).
* Anything malformed raises :class:`MuxError`; the whole connection is then dead (every later
  ``receive_data`` raises again) and the caller should fail all sessions
  (:meth:`MuxConnection.connection_lost`). Misuse by the caller raises LocalProtocolError;
  a send on a session that is not open raises its subclass :class:`SessionClosedError` (the
  peer may have ended it while the caller's data was on its way: check ``is_open``).

raybridge's own decisions where V2Ray is silent or unsafe:

* A New frame for an ID that is already open on the server: V2Ray overwrites its session map
  entry and leaks the old session, whose replies then interleave with the new one's under the
  same ID. We end the old session locally (``SessionEnded(error=True)``) and open the new
  one. No End frame is sent for the old session: the peer would apply it to the new one.
* ``max_sessions`` on the server: a New beyond the cap is answered with End+Error and not
  opened. (V2Ray's server has no cap; its client stops at ``concurrency``.)
* Zero-length data is never an event and never sent: V2Ray turns an empty write into a Keep
  frame *without* data, so it cannot carry an empty datagram either.
* Received TCP data is delivered as it arrives: one ``SessionData`` per contiguous piece of
  a frame's DATA in one ``receive_data`` call (frame boundaries mean nothing on a stream), so
  a 64 KiB frame that trickles in over many VMess chunks is copied once and never buffered
  whole. UDP datagrams and the first payload of a New frame are delivered whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TypeAlias

from raybridge.address import VMESS_ADDRESS, Destination, Network
from raybridge.errors import LocalProtocolError, RemoteProtocolError
from raybridge.protocols.stream import Role

__all__ = [
    "FC_HELLO",
    "FC_PAUSE",
    "FC_RESUME",
    "MAX_FRAME_DATA",
    "MAX_KEEPALIVE_DATA",
    "MAX_META_LEN",
    "MAX_UDP_DATA",
    "V2RAY_FRAME_DATA",
    "Frame",
    "FrameDecoder",
    "FrameOption",
    "KeepAliveReceived",
    "MuxConnection",
    "MuxError",
    "MuxEvent",
    "Role",
    "SessionClosedError",
    "SessionData",
    "SessionEnded",
    "SessionOpened",
    "Status",
    "encode_frame",
]

#: Receivers reject a longer META (docs/protocols.md 2.2).
MAX_META_LEN = 512
#: Largest DATA we send in a UDP (packet) session's frame: more tears down a 4.34 peer's
#: connection (2.2). We read up to MAX_FRAME_DATA, and send that much on XUDP sessions.
MAX_UDP_DATA = 2048
#: Largest DATA of a TCP (stream) session's frame: what the uint16 DATA_LEN allows (2.2).
MAX_FRAME_DATA = 0xFFFF
#: What V2Ray 4.34 itself writes per TCP frame (2.2); it accepts up to MAX_FRAME_DATA.
V2RAY_FRAME_DATA = 8192
#: KeepAlive data longer than this is not delivered (ours is 1 to 13 bytes).
MAX_KEEPALIVE_DATA = 64
#: Flow control in KeepAlive data (see the module docstring).
FC_HELLO = b"raybridge/fc1"
FC_PAUSE = b"\x01"
FC_RESUME = b"\x02"


class MuxError(RemoteProtocolError):
    """The peer broke Mux.Cool framing; this ends the whole mux connection."""


class SessionClosedError(LocalProtocolError):
    """A send on a session ID that is not open (never opened, ended by us or by the peer)."""


class Status(IntEnum):
    """STATUS byte of a frame (docs/protocols.md 2.2)."""

    NEW = 1
    KEEP = 2
    END = 3
    KEEPALIVE = 4


class FrameOption(IntFlag):
    """OPTION bits of a frame (docs/protocols.md 2.2); unknown bits are kept and ignored."""

    DATA = 1
    ERROR = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One decoded frame. ``data`` is ``None`` iff OPTION lacks the Data bit."""

    session_id: int
    status: Status
    option: FrameOption
    target: Destination | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened:
    """Server role: the peer opened a session (a New frame); ``data`` is its first payload."""

    session_id: int
    target: Destination
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionData:
    """Payload for an open session: a piece of the stream (TCP) or one datagram (UDP).

    A TCP piece fed in as immutable ``bytes`` is a read-only ``memoryview`` of those bytes
    (no copy: on a relay the next step reads it once, e.g. to encrypt it); anything else is
    ``bytes``. ``address``: the address an XUDP frame carried (the datagram's destination
    from a client, its source from a server); ``None`` for the session's own target.
    """

    session_id: int
    data: bytes | memoryview
    address: Destination | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded:
    """``error=False``: the peer sent End, i.e. it has finished sending (deliver EOF locally).
    The session is gone if we had half-closed it already, else it stays open for our sends
    (:meth:`MuxConnection.is_remote_ended`) until we end our direction too.

    ``error=True``: the session is gone, aborted: the peer sent End+Error, a duplicate New
    replaced it, or :meth:`MuxConnection.connection_lost`. May follow an ``error=False`` one.
    """

    session_id: int
    error: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAliveReceived:
    """A KeepAlive frame arrived (V2Ray 4.34 never sends one; docs/protocols.md 2.4).

    ``session_id`` and ``data`` (at most :data:`MAX_KEEPALIVE_DATA` bytes; longer data is
    dropped) carry raybridge's per-session flow control (see the module docstring):
    every Mux.Cool reader in use reads a KeepAlive's data and discards it.
    """

    session_id: int = 0
    data: bytes = b""


MuxEvent: TypeAlias = SessionOpened | SessionData | SessionEnded | KeepAliveReceived
_Buffer: TypeAlias = bytes | bytearray | memoryview

_U16 = struct.Struct(">H")
_META = struct.Struct(">HHBB")  # META_LEN, SESSION_ID, STATUS, OPTION
_META_DATA = struct.Struct(">HHBBH")  # ... and DATA_LEN, for a META without extras
_SID_STATUS_OPTION = struct.Struct(">HBB")

_NEW, _KEEP, _END, _KEEPALIVE = 1, 2, 3, 4
_OPT_DATA, _OPT_ERROR = 1, 2


def _encode_target(target: Destination) -> bytes:
    try:
        network = target.network
        if type(network) is not Network:  # (the enum call is slow: only when it checks)
            network = Network(network)
        return bytes((network,)) + VMESS_ADDRESS.encode(target.host, target.port)
    except ValueError as exc:  # includes UnicodeEncodeError
        raise LocalProtocolError(f"cannot encode mux target {target}: {exc}") from None


def encode_frame(
    session_id: int,
    status: Status,
    *,
    data: bytes | bytearray | memoryview | None = None,
    target: Destination | None = None,
    error: bool = False,
) -> bytes:
    """One frame. ``data=None`` leaves the Data bit clear; ``data=b""`` sets it with DATA_LEN 0.

    ``target`` is required for New and refused otherwise (4.34 never writes extras elsewhere).
    """
    if not 0 <= session_id <= 0xFFFF:
        raise LocalProtocolError(f"session ID out of range: {session_id}")
    if status not in (_NEW, _KEEP, _END, _KEEPALIVE):
        raise LocalProtocolError(f"unknown mux status: {status!r}")
    extras = b""
    if status == _NEW:
        if target is None:
            raise LocalProtocolError("a New frame needs a target")
        extras = _encode_target(target)
    elif target is not None:
        raise LocalProtocolError("only a New frame carries a target")
    option = (_OPT_DATA if data is not None else 0) | (_OPT_ERROR if error else 0)
    head = _META.pack(4 + len(extras), session_id, status, option) + extras
    if data is None:
        return head
    size = memoryview(data).nbytes
    if size > MAX_FRAME_DATA:
        raise LocalProtocolError(f"frame data too long: {size} > {MAX_FRAME_DATA}")
    return b"".join((head, _U16.pack(size), data))


# --- header parsing, shared by FrameDecoder and MuxConnection -------------------------------


def _header_length(buf: _Buffer, pos: int, end: int) -> int:
    """Bytes of the header (META_LEN .. DATA_LEN) starting at ``pos``.

    With too few bytes to tell, a lower bound that grows as more arrive, so a caller can ask
    again; the bad-META_LEN checks fire as soon as the two length bytes are there.
    """
    if end - pos < 2:
        return 2
    meta_len = (buf[pos] << 8) | buf[pos + 1]
    if meta_len > MAX_META_LEN:
        raise MuxError(f"META_LEN {meta_len} > {MAX_META_LEN}")
    if meta_len < 4:
        raise MuxError(f"META_LEN {meta_len} < 4")
    if end - pos < 2 + meta_len:
        return 2 + meta_len
    return 4 + meta_len if buf[pos + 5] & _OPT_DATA else 2 + meta_len


def _decode_target(buf: _Buffer, start: int, meta_end: int) -> Destination:
    if meta_end - start < 4:  # NETWORK, PORT, ATYP: META_LEN < 8
        raise MuxError(f"New frame META_LEN {meta_end - start + 4} < 8")
    extras = bytes(buf[start:meta_end])  # <= 508 bytes, New frames only
    network = extras[0]
    if network != 1 and network != 2:
        raise MuxError(f"unknown mux network type: {network}")
    decoded = VMESS_ADDRESS.decode(extras, 1, MuxError)
    if decoded is None:
        raise MuxError("New frame address runs past the end of META")
    host, port, _ = decoded
    return Destination(Network.TCP if network == 1 else Network.UDP, host, port)


#: A decoded header: session ID, status, option, target (New and XUDP Keep), DATA length.
_Header = tuple[int, int, int, Destination | None, int]


def _decode_header(buf: _Buffer, pos: int, length: int) -> _Header:
    """Decode a complete header of ``length`` bytes at ``pos``.

    Returns ``(session_id, status, option, target, data_len)``, ``data_len = -1`` without
    the Data bit.
    """
    session_id, status, option = _SID_STATUS_OPTION.unpack_from(buf, pos + 2)
    has_data = option & _OPT_DATA
    meta_end = pos + length - 2 if has_data else pos + length
    target = None
    if status == _NEW:
        target = _decode_target(buf, pos + 6, meta_end)
    elif status == _KEEP:
        if meta_end - pos > 6:  # extras: an XUDP address (anything else is ignored)
            target = _keep_address(buf, pos + 6, meta_end)
    elif status != _END and status != _KEEPALIVE:
        raise MuxError(f"unknown mux session status: {status}")
    data_len = ((buf[meta_end] << 8) | buf[meta_end + 1]) if has_data else -1
    return session_id, status, option, target, data_len


def _keep_address(buf: _Buffer, start: int, meta_end: int) -> Destination | None:
    """The address in a Keep frame's META extras, or None if they are not one (4.34 ignores
    extras it does not expect; so do we)."""
    if meta_end - start < 4:
        return None
    try:
        return _decode_target(buf, start, meta_end)
    except MuxError:
        return None


class FrameDecoder:
    """Incremental frame parser: whole frames only, no session semantics.

    The one session-independent DATA_LEN rule is checked: a New frame for a UDP target may
    carry at most 2048 bytes. (A Keep frame's limit depends on its session: MuxConnection.)
    """

    __slots__ = ("_buf", "_failed", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: _Buffer) -> list[Frame]:
        if self._failed:
            raise MuxError("the mux stream has already failed")
        buf = self._buf
        buf += data
        end = len(buf)
        pos = self._pos
        frames: list[Frame] = []
        try:
            while True:
                need = _header_length(buf, pos, end)
                if end - pos < need:
                    break
                session_id, status, option, target, data_len = _decode_header(buf, pos, need)
                body = pos + need
                payload = None
                if data_len >= 0:
                    if end - body < data_len:
                        break
                    payload = bytes(buf[body : body + data_len])
                    body += data_len
                frames.append(
                    Frame(
                        session_id=session_id,
                        status=Status(status),
                        option=FrameOption(option),
                        target=target,
                        data=payload,
                    )
                )
                pos = body
        except MuxError:
            self._failed = True
            raise
        if pos == end:
            buf.clear()
            pos = 0
        elif pos >= 4096:  # bytearray deletes from the front cheaply; don't do it every call
            del buf[:pos]
            pos = 0
        self._pos = pos
        return frames


# --- the connection state machine ------------------------------------------------------------

# What to do with the DATA of the frame being received.
_DISCARD = 0  # unknown session, End/KeepAlive data, New on the client side, refused New
_STREAM = 1  # TCP session: deliver each piece as it arrives
_DATAGRAM = 2  # UDP session: collect the whole frame, deliver one datagram
_OPEN = 3  # New frame on the server: collect the first payload, then SessionOpened
_KEEPALIVE_DATA = 4  # a short KeepAlive payload: collect it, then KeepAliveReceived

_PayloadPiece: TypeAlias = bytes | memoryview


def _owned(data: _Buffer) -> bytes | memoryview:
    """``data`` itself if nobody can change it before it is sent, else a copy."""
    if type(data) is bytes:
        return data
    if (
        isinstance(data, memoryview)
        and isinstance(data.obj, bytes)
        and data.itemsize == 1
        and data.ndim == 1
        and data.c_contiguous
    ):
        return data
    return bytes(data)


class MuxConnection:
    """The session table of one mux connection, either role (see the module docstring).

    Each session is *open*, *half-closed* (we sent End, the peer may still send) or
    *remote-ended* (the peer sent End, we may still send); it is forgotten when the second
    End is sent or received, on End+Error from either side, or on :meth:`end_session`. Both
    directions of a session thus end independently, like the two halves of a TCP connection
    (see the module docstring for 4.34's matching behaviour).

    ``data_to_send()`` returns one ``bytes`` object: the transport under a mux connection is a
    VMess body encoder, which cuts its input into chunks anyway and is cheapest with one
    contiguous buffer. Sends keep references to ``bytes`` (and memoryviews of ``bytes``)
    rather than copying them, so each payload byte is copied once, by the join in
    ``data_to_send``; mutable buffers are copied when queued.
    """

    __slots__ = (
        "_allocated",
        "_collect",
        "_current_id",
        "_current_target",
        "_failed",
        "_half_closed",
        "_header",
        "_max_frame_data",
        "_max_sessions",
        "_mode",
        "_next_id",
        "_out",
        "_remaining",
        "_remote_ended",
        "_sessions",
        "_xudp",
        "role",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_sessions: int = 0,
        first_session_id: int = 1,
        max_frame_data: int = MAX_FRAME_DATA,
    ) -> None:
        if max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0: {max_sessions}")
        if not 0 <= first_session_id <= 0xFFFF:
            raise ValueError(f"first_session_id out of range: {first_session_id}")
        if not 1 <= max_frame_data <= MAX_FRAME_DATA:
            raise ValueError(f"max_frame_data must be 1..{MAX_FRAME_DATA}: {max_frame_data}")
        self.role = role
        self._max_sessions = max_sessions
        self._max_frame_data = max_frame_data
        self._next_id = first_session_id
        self._allocated = 0
        self._sessions: dict[int, Network] = {}
        self._xudp: set[int] = set()  # UDP sessions that are XUDP (see the module docstring)
        # A session ID is in at most one of these two sets: the second End forgets it.
        self._half_closed: set[int] = set()  # End sent by half_close(), still receiving
        self._remote_ended: set[int] = set()  # End received, still sending
        self._out: list[_PayloadPiece] = []
        self._failed = False
        # Receive state: a partial header (< 517 bytes) waits in _header; DATA is consumed
        # straight from the caller's buffer, _remaining bytes of it still to come.
        self._header = bytearray()
        self._remaining = 0
        self._mode = _DISCARD
        self._current_id = 0
        self._current_target: Destination | None = None
        self._collect = bytearray()

    # -- queries --------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        """Sessions open now, half-closed and remote-ended ones included (V2Ray's
        ``ActiveConnections``; checked against concurrency)."""
        return len(self._sessions)

    @property
    def allocated_total(self) -> int:
        """Sessions ever opened on this connection (V2Ray's ``TotalConnections``: its client
        stops at 128, the portal drains a tunnel above 256; docs/protocols.md 2.4, 3.2)."""
        return self._allocated

    def is_open(self, session_id: int) -> bool:
        """The session is in the table: not yet ended in both directions, nor aborted."""
        return session_id in self._sessions

    def is_remote_ended(self, session_id: int) -> bool:
        """The peer has sent End for this open session; we may still send on it."""
        return session_id in self._remote_ended

    def session_network(self, session_id: int) -> Network:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionClosedError(f"mux session {session_id} is not open") from None

    def session_ids(self) -> list[int]:
        return list(self._sessions)

    def is_xudp(self, session_id: int) -> bool:
        """An open UDP session that is XUDP (session 0, or it has received an address)."""
        return session_id in self._xudp

    # -- sending ----------------------------------------------------------------------------

    def open_session(
        self,
        target: Destination,
        data: bytes | bytearray | memoryview = b"",
        *,
        xudp: bool = False,
    ) -> int:
        """Client role: allocate the next ID (never reused) and queue a New frame.

        ``data`` rides in the New frame (V2Ray sends the first payload that way when it
        arrives within 100 ms); a TCP payload longer than ``max_frame_data`` continues in
        Keep frames. ``xudp``: open the UDP target as XUDP session 0 (the connection's
        first session). Raises LocalProtocolError on the server role, at ``max_sessions``,
        once the 16-bit IDs are used up, or for a datagram over 2048 bytes (not XUDP).
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client role opens mux sessions")
        if self._max_sessions and len(self._sessions) >= self._max_sessions:
            raise LocalProtocolError(f"mux session limit reached ({self._max_sessions})")
        udp = target.network is Network.UDP
        if xudp:
            if not udp or self._allocated or 0 in self._sessions:
                raise LocalProtocolError("XUDP is the first session, and a UDP one")
            session_id = 0
        else:
            session_id = self._next_id
        if session_id > 0xFFFF:
            raise LocalProtocolError("mux session IDs exhausted on this connection")
        extras = _encode_target(target)
        payload = _owned(data)
        size = len(payload)
        limit = MAX_FRAME_DATA if xudp else MAX_UDP_DATA
        if udp and size > limit:
            raise LocalProtocolError(f"UDP datagram too long for mux: {size} > {limit}")
        if xudp:
            self._xudp.add(0)
        else:
            self._next_id = session_id + 1
        self._sessions[session_id] = target.network
        self._allocated += 1
        meta_len = 4 + len(extras)
        if not size:
            self._out.append(_META.pack(meta_len, session_id, _NEW, 0) + extras)
            return session_id
        limit = self._max_frame_data
        first = payload if udp or size <= limit else memoryview(payload)[:limit]
        head = _META.pack(meta_len, session_id, _NEW, _OPT_DATA) + extras + _U16.pack(len(first))
        self._out += (head, first)
        if len(first) < size:
            self._queue_stream(session_id, memoryview(payload)[len(first) :])
        return session_id

    def send_data(
        self,
        session_id: int,
        data: bytes | bytearray | memoryview,
        address: Destination | None = None,
    ) -> None:
        """Queue Keep frames: a TCP payload is cut into frames of at most ``max_frame_data``
        bytes; a UDP payload is one datagram, one frame, at most 2048 bytes (65535 on an
        XUDP session, whose frame also carries ``address`` if given; elsewhere ``address``
        is not sent: a 4.34 peer knows only the session's target).

        Works on remote-ended sessions too (the peer's End ended its direction only);
        raises :class:`SessionClosedError` once our own direction is ended or the session
        is gone.
        """
        network = self._sessions.get(session_id)
        if network is None or (self._half_closed and session_id in self._half_closed):
            raise SessionClosedError(f"mux session {session_id} is not open for sending")
        payload = _owned(data)
        size = len(payload)
        if not size:
            return
        if network is Network.UDP:
            if session_id in self._xudp:
                if address is not None:
                    extras = _encode_target(address)
                    self._out += (
                        _META.pack(4 + len(extras), session_id, _KEEP, _OPT_DATA),
                        extras,
                        _U16.pack(size),
                        payload,
                    )
                    return
            elif size > MAX_UDP_DATA:
                raise LocalProtocolError(f"UDP datagram too long for mux: {size} > {MAX_UDP_DATA}")
        elif size > self._max_frame_data:
            self._queue_stream(session_id, memoryview(payload))
            return
        self._out += (_META_DATA.pack(4, session_id, _KEEP, _OPT_DATA, size), payload)

    def _queue_stream(self, session_id: int, view: memoryview) -> None:
        out = self._out
        step = self._max_frame_data
        for start in range(0, len(view), step):
            piece = view[start : start + step]
            out += (_META_DATA.pack(4, session_id, _KEEP, _OPT_DATA, len(piece)), piece)

    def end_session(self, session_id: int, error: bool = False) -> None:
        """Queue End (with the Error bit if ``error``) and forget the session, in any state:
        data the peer still sends for it is then answered with End and dropped (2.3).

        Idempotent: a session that is not open (already gone) sends nothing; neither does a
        half-closed one (its End is out already).
        """
        if self._sessions.pop(session_id, None) is None:
            return
        self._xudp.discard(session_id)
        if self._half_closed and session_id in self._half_closed:
            self._half_closed.remove(session_id)
        else:
            self._remote_ended.discard(session_id)
            self._out.append(_META.pack(4, session_id, _END, _OPT_ERROR if error else 0))

    def half_close(self, session_id: int) -> None:
        """Queue End for our direction (a local FIN) and keep delivering the peer's data
        until its own End arrives; if that End is already here (remote-ended), both
        directions are done and the session is forgotten.

        Both a 4.34 peer and a raybridge peer treat End as the end of our direction only
        (see the module docstring). Sends fail afterwards; idempotent.
        """
        if session_id not in self._sessions or session_id in self._half_closed:
            return
        self._out.append(_META.pack(4, session_id, _END, 0))
        if self._remote_ended and session_id in self._remote_ended:
            self._remote_ended.remove(session_id)
            del self._sessions[session_id]
            self._xudp.discard(session_id)
        else:
            self._half_closed.add(session_id)

    def send_keepalive(self, session_id: int = 0, data: bytes = b"") -> None:
        """Queue a KeepAlive frame (session 0 and no data unless given). V2Ray ignores them
        and their data (docs/protocols.md 2.4); raybridge's flow control rides in them."""
        if not data:
            self._out.append(_META.pack(4, session_id, _KEEPALIVE, 0))
            return
        if len(data) > MAX_KEEPALIVE_DATA:
            raise LocalProtocolError(f"KeepAlive data over {MAX_KEEPALIVE_DATA} bytes")
        self._out += (_META_DATA.pack(4, session_id, _KEEPALIVE, _OPT_DATA, len(data)), data)

    def data_to_send(self) -> bytes:
        """Everything queued so far, as one ``bytes`` (``b""`` if nothing)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        if len(out) == 1 and type(out[0]) is bytes:
            return out[0]
        return b"".join(out)

    def connection_lost(self) -> list[SessionEnded]:
        """The transport under this connection is gone (or ``receive_data`` raised): forget
        every session and return ``SessionEnded(error=True)`` for each."""
        ended = [SessionEnded(session_id=sid, error=True) for sid in self._sessions]
        self._sessions.clear()
        self._xudp.clear()
        self._half_closed.clear()
        self._remote_ended.clear()
        return ended

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[MuxEvent]:
        """Feed bytes from the peer; returns the events they complete.

        Replies the protocol needs (End for an unknown session, End+Error for a refused New)
        are queued for :meth:`data_to_send`; the peer's End is never answered (see
        :meth:`half_close`). Raises :class:`MuxError` on malformed input; the
        connection is then unusable.
        """
        if self._failed:
            raise MuxError("the mux connection has already failed")
        with memoryview(data) as raw, raw.cast("B") as view:
            try:
                return self._receive(view, type(data) is bytes)
            except MuxError:
                self._failed = True
                raise

    def _receive(self, view: memoryview, immutable: bool) -> list[MuxEvent]:
        events: list[MuxEvent] = []
        sessions = self._sessions
        header = self._header
        end = len(view)
        pos = 0
        while True:
            remaining = self._remaining
            if remaining:
                # DATA phase: consume straight from the caller's buffer.
                if pos >= end:
                    break
                stop = pos + remaining if end - pos >= remaining else end
                self._remaining = remaining - (stop - pos)
                mode = self._mode
                if mode == _STREAM:
                    session_id = self._current_id
                    if session_id in sessions:  # else ended locally mid-frame: drop the rest
                        piece = view[pos:stop]
                        events.append(
                            SessionData(
                                session_id=session_id,
                                data=piece if immutable else piece.tobytes(),
                            )
                        )
                elif mode != _DISCARD:
                    if self._remaining:
                        self._collect += view[pos:stop]
                    elif self._collect:
                        self._collect += view[pos:stop]
                        self._finish(bytes(self._collect), events)
                        self._collect.clear()
                    else:  # the whole DATA is here: copy it once
                        self._finish(view[pos:stop].tobytes(), events)
                pos = stop
                continue
            # HEADER phase.
            if header:
                topped, pos = self._top_up_header(view, pos, end)
                if topped is None:
                    return events  # still not whole: wait for more
                parsed = topped
            else:
                if pos >= end:
                    break
                need = _header_length(view, pos, end)
                if end - pos < need:
                    header += view[pos:end]  # shorter than one header: < 517 bytes
                    break
                parsed = _decode_header(view, pos, need)
                pos += need
            self._on_header(*parsed, events)
        return events

    def _top_up_header(self, view: memoryview, pos: int, end: int) -> tuple[_Header | None, int]:
        """A header split across calls: top it up with just the bytes it needs. Returns it
        decoded (None while it is still short) and where the bytes after it start."""
        header = self._header
        while True:
            need = _header_length(header, 0, len(header))
            have = len(header)
            if have >= need:
                break
            if pos >= end:
                return None, pos
            stop = min(end, pos + need - have)
            header += view[pos:stop]
            pos = stop
        parsed = _decode_header(header, 0, need)
        header.clear()
        return parsed, pos

    def _on_header(
        self,
        session_id: int,
        status: int,
        option: int,
        target: Destination | None,
        data_len: int,
        events: list[MuxEvent],
    ) -> None:
        sessions = self._sessions
        mode = _DISCARD
        if status == _KEEP:
            if data_len < 0:
                return
            network = sessions.get(session_id)
            if network is None:
                # V2Ray's answer to data for a session it doesn't know (docs/protocols.md 2.3).
                self._out.append(_META.pack(4, session_id, _END, 0))
            elif network is Network.TCP:
                mode = _STREAM
            else:
                mode = _DATAGRAM
                self._current_target = target  # the datagram's XUDP address, if any
                if target is not None:
                    self._xudp.add(session_id)
            if mode and self._remote_ended and session_id in self._remote_ended:
                # Data after the peer's own End: a peer bug. Dropped without a reply, since
                # an End from us would read as the end of our direction, which may go on.
                mode = _DISCARD
        elif status == _END:
            self._on_end(session_id, option, events)
        elif status == _KEEPALIVE:
            if data_len <= 0:
                events.append(KeepAliveReceived(session_id=session_id))
            elif data_len <= MAX_KEEPALIVE_DATA:
                mode = _KEEPALIVE_DATA
        elif self.role is Role.SERVER:  # New (the client role ignores New: 2.3)
            assert target is not None  # _decode_header guarantees one for New
            mode = self._on_new(session_id, target, data_len, events)
        if data_len > 0:
            self._remaining = data_len
            self._mode = mode
            self._current_id = session_id

    def _forget(self, session_id: int, error: bool, events: list[MuxEvent]) -> None:
        """The session is over in both directions: drop it and report it ended."""
        del self._sessions[session_id]
        self._xudp.discard(session_id)
        self._half_closed.discard(session_id)
        self._remote_ended.discard(session_id)
        events.append(SessionEnded(session_id=session_id, error=error))

    def _on_end(self, session_id: int, option: int, events: list[MuxEvent]) -> None:
        """The peer's End for ``session_id`` (docs/protocols.md 2.3)."""
        if session_id not in self._sessions:
            pass  # ignored, as 4.34 does (2.3)
        elif option & _OPT_ERROR:
            # The peer aborted both directions (2.3): forget it, nothing to send back.
            self._forget(session_id, True, events)
        elif session_id in self._half_closed:
            # The second End: both directions are done.
            self._forget(session_id, False, events)
        elif session_id not in self._remote_ended:
            # The peer's direction ends; ours stays open (see the module docstring).
            self._remote_ended.add(session_id)
            events.append(SessionEnded(session_id=session_id, error=False))
        else:
            # A second End: the peer has forgotten the session. A 4.34 peer drops a
            # session once it has sent End and answers our later Keep frames with End,
            # discarding their data (2.3), so what we still send goes nowhere: abort.
            self._forget(session_id, True, events)

    def _on_new(
        self, session_id: int, target: Destination, data_len: int, events: list[MuxEvent]
    ) -> int:
        """A New frame (server role); returns how to take its DATA, if it has any."""
        if session_id in self._sessions:
            # Duplicate ID: replace the old session (see the module docstring).
            self._forget(session_id, True, events)
        if self._max_sessions and len(self._sessions) >= self._max_sessions:
            self._out.append(_META.pack(4, session_id, _END, _OPT_ERROR))
        elif data_len <= 0:
            self._open(session_id, target, b"", events)
        else:
            self._current_target = target
            return _OPEN
        return _DISCARD

    def _finish(self, payload: bytes, events: list[MuxEvent]) -> None:
        """The DATA of a collected frame (datagram or New payload) is complete."""
        session_id = self._current_id
        if self._mode == _OPEN:
            target = self._current_target
            assert target is not None
            self._current_target = None
            self._open(session_id, target, payload, events)
        elif self._mode == _KEEPALIVE_DATA:
            events.append(KeepAliveReceived(session_id=session_id, data=payload))
        elif session_id in self._sessions:
            address = self._current_target
            self._current_target = None
            events.append(SessionData(session_id=session_id, data=payload, address=address))

    def _open(
        self, session_id: int, target: Destination, payload: bytes, events: list[MuxEvent]
    ) -> None:
        self._sessions[session_id] = target.network
        self._allocated += 1
        if session_id == 0 and target.network is Network.UDP:
            self._xudp.add(0)
        events.append(SessionOpened(session_id=session_id, target=target, data=payload))
