"""Content sniffing: the HTTP Host, the TLS ClientHello's server name, a BitTorrent handshake.

V2Ray 4.34 sniffs the first bytes a client sends on a TCP link before it routes the link
(``app/dispatcher/default.go``, ``sniffer.go``; docs/protocols.md 4.10). What it looks for::

    HTTP/1     METHOD ... LF  (name ":" value LF)*  LF        (CR before LF optional)
               METHOD, a case-insensitive prefix: GET POST HEAD PUT DELETE OPTIONS CONNECT
    TLS        record:    16  03 xx  LEN(2)                     handshake, version 3.x
               handshake: 01  LEN(3)  version(2) random(32)     ClientHello (RFC 8446 4.1.2)
                          SID_LEN(1) sid  SUITES_LEN(2) suites  COMP_LEN(1) comp
                          EXT_LEN(2)  (type(2) LEN(2) data)*
               server_name (type 0, RFC 6066 3): LIST_LEN(2) (NAME_TYPE(1) LEN(2) name)*
    BitTorrent 13 "BitTorrent protocol"                         (BEP 3 handshake, 20 bytes)

Results are V2Ray's: protocol ``http1`` with the Host (port removed, lower-cased), ``tls``
with the first host_name, ``bittorrent`` without a name. V2Ray's ``protocol`` routing
condition and ``destOverride`` compare by prefix, so ``"http"`` matches ``http1``.

The :class:`Sniffer` keeps V2Ray's bounds: it reads at most :data:`SNIFF_LIMIT` bytes (one
``buf.Buffer``) and waits at most two :data:`SNIFF_WINDOW` periods (the dispatcher's two
read attempts of 100 ms each: the first from the start, the second from the first data or
the end of the first). Where this differs from V2Ray, on purpose:

* every answer is the same however the bytes are split. V2Ray reads a half-received Host
  line (``Host: exa`` gives ``exa``); here only complete lines count, the first Host header
  wins, and the headers end at the first empty line (V2Ray reads on into the body unless
  the blank line is a bare LF). V2Ray also gives up after its second read even when the
  second window has time left; this sniffer keeps reading until the window closes.
* input that can no longer match is refused at once (a complete record that is no
  ClientHello, headers ended without Host), where V2Ray waits for its time-out; the
  outcome, no result, is the same.
* names are validated like any name from the wire (``address.decode_domain``: letters,
  digits, ``._-``, IP literals, no numeric last label, at most 255 bytes): a name V2Ray
  would dial blindly (``127.1``, spaces) gives no result here. The handshake type of the
  first TLS message must be ClientHello (V2Ray does not look).

Decoders raise :class:`SniffError` for input that is not (a well-formed start of) their
protocol; the :class:`Sniffer` turns that into :class:`Unsniffed` and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from raybridge.address import Host, decode_domain
from raybridge.errors import RemoteProtocolError

__all__ = [
    "BITTORRENT",
    "HTTP1",
    "SNIFF_LIMIT",
    "SNIFF_WINDOW",
    "TLS",
    "SniffError",
    "Sniffed",
    "Sniffer",
    "Unsniffed",
    "sniff_bittorrent",
    "sniff_http",
    "sniff_tls",
]

#: Protocol names as V2Ray's sniffers report them (``SniffResult.Protocol()``).
HTTP1 = "http1"
TLS = "tls"
BITTORRENT = "bittorrent"

#: What V2Ray sniffs at most: one ``buf.Buffer`` (``buf.Size``, 2048 bytes).
SNIFF_LIMIT = 2048
#: One read attempt of ``cachedReader.Cache`` (``ReadMultiBufferTimeout(100 ms)``); V2Ray
#: makes two before it gives up (``totalAttempt > 2``).
SNIFF_WINDOW = 0.1
#: The longest name a sniffed result may carry (a DNS name is at most 253 bytes; the address
#: writers of SOCKS, VMess and Mux.Cool take up to 255).
MAX_NAME = 255

Data = bytes | bytearray


class SniffError(RemoteProtocolError):
    """The bytes are not (a well-formed start of) the protocol a decoder looks for."""


class TlsValue(IntEnum):
    """The TLS values the sniffer checks: record type (RFC 8446 5.1), handshake type
    (RFC 8446 4), extension and name type of server_name (RFC 6066 3)."""

    HANDSHAKE_RECORD = 0x16
    CLIENT_HELLO = 0x01
    SERVER_NAME = 0x0000
    HOST_NAME = 0x00


@dataclass(frozen=True, slots=True, kw_only=True)
class Sniffed:
    """A sniffer's result: the protocol, and the name it carries (``None`` for BitTorrent).
    ``host`` is an IP address when an HTTP Host header names one."""

    protocol: str
    host: Host | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsniffed:
    """No result (none of the protocols, too many bytes, time out, or the input ended)."""

    reason: str


Outcome = Sniffed | Unsniffed


# --------------------------------------------------------------------------- HTTP

_METHODS = (b"get", b"post", b"head", b"put", b"delete", b"options", b"connect")
_LONGEST_METHOD = max(len(m) for m in _METHODS)
_PORT = re.compile(rb"[0-9]{1,5}")


def sniff_http(data: Data) -> Sniffed | None:
    """The Host of an HTTP/1 request: ``None`` until its line (or the end of the headers)
    has arrived; :class:`SniffError` if this is no HTTP request or has no usable Host."""
    head = bytes(data[:_LONGEST_METHOD]).lower()
    if not any(head.startswith(m) for m in _METHODS):
        if not any(m.startswith(head) for m in _METHODS):
            raise SniffError("not an HTTP request")
        return None
    start = data.find(b"\n")  # the request line is not a header
    while start != -1:
        end = data.find(b"\n", start + 1)
        if end == -1:
            return None
        line = bytes(data[start + 1 : end]).removesuffix(b"\r")
        start = end
        if not line:
            raise SniffError("HTTP request without a Host header")
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"host":
            return Sniffed(protocol=HTTP1, host=_name(_host_of(value.strip().lower())))
    return None


def _host_of(raw: bytes) -> bytes:
    """The host part of a Host value, as Go's ``net.SplitHostPort`` cuts it (V2Ray's
    ``ParseHost``); IPv6 brackets are kept for :func:`decode_domain`."""
    colon = raw.rfind(b":")
    if colon == -1:
        return raw
    if raw.startswith(b"["):
        close = raw.find(b"]")
        if close == -1:
            raise SniffError("HTTP Host with '[' but no ']'")
        if close + 1 == len(raw):
            return raw
        if close + 1 != colon:
            raise SniffError("HTTP Host with text after ']'")
        host = raw[: close + 1]
    else:
        host = raw[:colon]
        if b":" in host:
            raise SniffError("HTTP Host with too many colons")
    port = raw[colon + 1 :]
    if port and (_PORT.fullmatch(port) is None or int(port) > 0xFFFF):
        raise SniffError("HTTP Host with an invalid port")
    return host


def _name(raw: bytes) -> Host:
    if len(raw) > MAX_NAME:
        raise SniffError(f"name longer than {MAX_NAME} bytes")
    return decode_domain(raw, SniffError)


# --------------------------------------------------------------------------- TLS


def sniff_tls(data: Data) -> Sniffed | None:
    """The server name of a TLS ClientHello that fills the first record: ``None`` until the
    record is complete; :class:`SniffError` if it is no ClientHello or names no server."""
    n = len(data)
    if n >= 1 and data[0] != TlsValue.HANDSHAKE_RECORD:
        raise SniffError("not a TLS handshake record")
    if n >= 2 and data[1] != 3:
        raise SniffError("not a TLS record (version is not 3.x)")
    if n < 5:
        return None
    end = 5 + (data[3] << 8 | data[4])
    if n < end:
        return None
    return Sniffed(protocol=TLS, host=_client_hello_name(data, 5, end))


def _client_hello_name(data: Data, pos: int, end: int) -> Host:
    def need(upto: int) -> None:
        if upto > end:
            raise SniffError("truncated ClientHello")

    need(pos + 4)
    if data[pos] != TlsValue.CLIENT_HELLO:
        raise SniffError("the first handshake message is not a ClientHello")
    if pos + 4 + (data[pos + 1] << 16 | data[pos + 2] << 8 | data[pos + 3]) != end:
        raise SniffError("the ClientHello does not fill the first record")
    pos += 4 + 2 + 32  # handshake header, legacy_version, random
    need(pos + 1)
    session_id = data[pos]
    if session_id > 32:
        raise SniffError("ClientHello session id longer than 32 bytes")
    pos += 1 + session_id
    need(pos + 2)
    suites = data[pos] << 8 | data[pos + 1]
    if suites % 2:
        raise SniffError("ClientHello cipher suites of odd length")
    pos += 2 + suites
    need(pos + 1)
    pos += 1 + data[pos]  # compression methods
    need(pos + 2)
    if pos + 2 + (data[pos] << 8 | data[pos + 1]) != end:
        raise SniffError("ClientHello extensions do not end with it")
    pos += 2
    while pos < end:
        need(pos + 4)
        kind = data[pos] << 8 | data[pos + 1]
        size = data[pos + 2] << 8 | data[pos + 3]
        pos += 4
        need(pos + size)
        if kind == TlsValue.SERVER_NAME:
            host = _server_name(data, pos, pos + size)
            if host is not None:
                return host
        pos += size
    raise SniffError("ClientHello without a server name")


def _server_name(data: Data, pos: int, end: int) -> Host | None:
    """The first host_name of a server_name extension (``None``: it lists none)."""
    if end - pos < 2 or pos + 2 + (data[pos] << 8 | data[pos + 1]) != end:
        raise SniffError("malformed server_name extension")
    pos += 2
    while pos < end:
        if end - pos < 3:
            raise SniffError("malformed server_name entry")
        kind = data[pos]
        size = data[pos + 1] << 8 | data[pos + 2]
        pos += 3
        if pos + size > end:
            raise SniffError("malformed server_name entry")
        if kind == TlsValue.HOST_NAME:
            raw = bytes(data[pos : pos + size])
            if raw.endswith(b"."):  # RFC 6066 3: no trailing dot; V2Ray refuses it too
                raise SniffError("server name with a trailing dot")
            return _name(raw)
        pos += size
    return None


# --------------------------------------------------------------------------- BitTorrent

_BITTORRENT = b"\x13BitTorrent protocol"


def sniff_bittorrent(data: Data) -> Sniffed | None:
    """A BitTorrent peer handshake: ``None`` until its first 20 bytes are there."""
    n = min(len(data), len(_BITTORRENT))
    if data[:n] != _BITTORRENT[:n]:
        raise SniffError("not a BitTorrent handshake")
    if n < len(_BITTORRENT):
        return None
    return Sniffed(protocol=BITTORRENT, host=None)


# --------------------------------------------------------------------------- all of them

#: In V2Ray's order (``NewSniffer``); the first result wins.
_DECODERS: tuple[tuple[str, Callable[[Data], Sniffed | None]], ...] = (
    ("http", sniff_http),
    ("tls", sniff_tls),
    ("bittorrent", sniff_bittorrent),
)


class Sniffer:
    """Runs every decoder on a link's first bytes until one has a result or none can.

    Feed it with :meth:`receive_data` (any split) and :meth:`receive_eof`; arm one timer
    for :meth:`timer` and call :meth:`handle_timer` when it fires. Each entry point returns
    the outcome once there is one (and the same outcome on every later call), else
    ``None``. ``now`` is the adapter's clock in seconds. It keeps a copy of at most
    ``limit`` bytes; the caller keeps the bytes it forwards.
    """

    def __init__(self, now: float, *, limit: int = SNIFF_LIMIT, window: float = SNIFF_WINDOW):
        self._buf = bytearray()
        self._limit = limit
        self._window = window
        self._pending = list(_DECODERS)
        self._refusals: list[str] = []
        self._deadline = now + window
        self._first_window = True
        self.outcome: Outcome | None = None

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> Outcome | None:
        if self.outcome is not None or not data:
            return self.outcome
        if self._first_window:  # the first read returned: the second starts now
            self._first_window = False
            self._deadline = now + self._window
        room = self._limit - len(self._buf)
        self._buf += data[:room] if len(data) > room else data
        return self._sniff()

    @property
    def buffered(self) -> int:
        """Bytes the sniffer holds a copy of (at most ``limit``)."""
        return len(self._buf)

    def receive_eof(self) -> Outcome:
        if self.outcome is None:
            self.outcome = Unsniffed(reason=f"the input ended after {len(self._buf)} bytes")
        return self.outcome

    def timer(self) -> float | None:
        """When :meth:`handle_timer` is due (``None``: there is an outcome)."""
        return None if self.outcome is not None else self._deadline

    def handle_timer(self, now: float) -> Outcome | None:
        if self.outcome is not None or now < self._deadline:
            return self.outcome
        if self._first_window:  # nothing arrived in the first window: one more
            self._first_window = False
            self._deadline += self._window
            return None
        self.outcome = Unsniffed(reason=f"no answer after {len(self._buf)} bytes: timed out")
        return self.outcome

    def _sniff(self) -> Outcome | None:
        still: list[tuple[str, Callable[[Data], Sniffed | None]]] = []
        for name, decode in self._pending:
            try:
                result = decode(self._buf)
            except SniffError as exc:
                self._refusals.append(f"{name}: {exc}")
                continue
            if result is not None:
                self.outcome = result
                return result
            still.append((name, decode))
        self._pending = still
        if not still:
            self.outcome = Unsniffed(reason="; ".join(self._refusals))
        elif len(self._buf) >= self._limit:
            self.outcome = Unsniffed(reason=f"no answer in the first {self._limit} bytes")
        return self.outcome
