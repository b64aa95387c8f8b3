"""V2Ray's TCP ``"http"`` header camouflage as a stream layer, sans-IO.

``tcpSettings.header = {"type": "http", "request": {...}, "response": {...}}`` (V2Ray 4.34
``transport/internet/headers/http/{config,http,resp}.go``, ``infra/conf/
transport_authenticators.go``; docs/transports.md 5 and the vectors in 8). One fake HTTP/1.1
exchange per connection, then raw bytes (VMess) both ways::

    client -> server   METHOD SP path SP HTTP/version CRLF      path: one of request.path
                       Name: value CRLF  (each header)            value: one of its list
                       CRLF
                       <VMess bytes ...>
    server -> client   HTTP/version SP status SP reason CRLF
                       Name: value CRLF  (each header)
                       Date: <RFC 1123 date> CRLF               unless a Date is configured
                       CRLF
                       <VMess bytes ...>

* Defaults (``AuthenticatorRequest.Build``/``AuthenticatorResponse.Build``): request version
  1.1, method GET, path ``["/"]`` and five headers (Host www.baidu.com|www.bing.com, two
  User-Agents, Accept-Encoding, Connection, Pragma); response 1.1 200 OK and five headers
  (Content-Type, ``Transfer-Encoding: chunked`` over a raw body, Connection, Pragma,
  Cache-Control). A non-empty user ``headers`` map replaces *all* of them, Host included;
  its names are kept as typed and written in byte order (``sortMapKeys``). Each list of
  values (and the request's path list) is rolled once per connection, a one-item list is
  not (``pickString``), so a scripted picker reproduces V2Ray's vectors.
* Client (``Conn.Write``, ``HeaderReader`` without expectations): the request goes out
  ahead of the first payload, once; from the server, everything up to the first CRLFCRLF
  is dropped unchecked (status included), within 8192 bytes.
* Server (``HeaderReader.Read`` with expectations): at most 8192 header bytes, parsed the
  way Go's ``net/http.readRequest`` would (request line, version, request-URI, header
  lines, Content-Length / Transfer-Encoding sanity); only ``URL.Path`` (percent-decoded, no
  query) is checked, against the ``request.path`` list, exactly. Method, version and header
  values are not checked (``PUT /a?q=1 HTTP/1.0`` passes, docs/transports.md 5). Bytes after the
  header are VMess.
* Server answers (``Conn.Close``, ``resp.go``): a path mismatch gets ``404 Not Found``, a
  parse error or an over-long header ``400 Bad Request``, both with ``Connection: close``,
  ``Cache-Control: private``, ``Content-Length: 0`` and a Date; the layer queues it and
  reports :class:`~raybridge.protocols.stream.Refused`. A server closed before it wrote
  anything (say the VMess header did not authenticate) also sends the 400, as V2Ray does.
  The response header itself goes out with the server's first bytes.
* Date: V2Ray formats ``time.Now()`` with ``http.TimeFormat``, i.e. *local* time labelled
  GMT (a quirk: off by the host's UTC offset). We write the real GMT time from the
  injected clock; both parse as the same kind of date and nobody checks it.

Also here, shared with :mod:`raybridge.protocols.ws`: :class:`Role`, :func:`http_date` and
:func:`request_path` (Go's ``url.ParseRequestURI`` reduced to the ``URL.Path`` both servers
compare).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from raybridge.errors import ConfigError
from raybridge.protocols.stream import (
    EndReceived,
    Established,
    LayerError,
    LayerEvent,
    QueuedLayer,
    Received,
    Refused,
    Role,
)

__all__ = [
    "DEFAULT_REQUEST_HEADERS",
    "DEFAULT_RESPONSE_HEADERS",
    "MAX_HEADER_BYTES",
    "HttpHeaderError",
    "HttpHeaderLayer",
    "HttpRequestConfig",
    "HttpResponseConfig",
    "Picker",
    "Role",
    "http_date",
    "request_path",
]

#: ``maxHeaderLength`` in ``headers/http/http.go``: the most header bytes either side reads.
MAX_HEADER_BYTES = 8192

UA1 = (
    "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/53.0.2785.143 Safari/537.36"
)
UA2 = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 10_0_2 like Mac OS X) AppleWebKit/601.1 "
    "(KHTML, like Gecko) CriOS/53.0.2785.109 Mobile/14A456 Safari/601.1.46"
)

HeaderList = tuple[tuple[str, tuple[str, ...]], ...]

#: ``AuthenticatorRequest.Build``'s headers, in its order (docs/transports.md 5).
DEFAULT_REQUEST_HEADERS: HeaderList = (
    ("Host", ("www.baidu.com", "www.bing.com")),
    ("User-Agent", (UA1, UA2)),
    ("Accept-Encoding", ("gzip, deflate",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
)
#: ``AuthenticatorResponse.Build``'s headers, in its order.
DEFAULT_RESPONSE_HEADERS: HeaderList = (
    ("Content-Type", ("application/octet-stream", "video/mpeg")),
    ("Transfer-Encoding", ("chunked",)),
    ("Connection", ("keep-alive",)),
    ("Pragma", ("no-cache",)),
    ("Cache-Control", ("private", "no-cache")),
)
#: ``resp404`` / ``resp400`` in ``resp.go`` (a Date is added, as for any response).
_ERROR_HEADERS: HeaderList = (
    ("Connection", ("close",)),
    ("Cache-Control", ("private",)),
    ("Content-Length", ("0",)),
)


class HttpHeaderError(LayerError):
    """The peer's fake HTTP header is unusable (client side: none within 8192 bytes)."""


class Picker(Protocol):
    """What the layer rolls its dice with (V2Ray's ``dice.Roll``): ``random.Random`` and
    ``random.SystemRandom`` fit; tests pass a scripted one."""

    def randrange(self, stop: int, /) -> int: ...


def _header_list(headers: Mapping[str, Sequence[str]] | None, default: HeaderList) -> HeaderList:
    if not headers:  # V2Ray: len(v.Headers) > 0, so {} means the defaults too
        return default
    # sortMapKeys is Go's sort.Strings: byte order, which for str is code-point order.
    result = []
    for name in sorted(headers):
        values = headers[name]
        result.append((name, (values,) if isinstance(values, str) else tuple(values)))
    return tuple(result)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestConfig:
    """``header.request``. Empty strings and empty collections mean V2Ray's defaults."""

    version: str = "1.1"
    method: str = "GET"
    paths: Sequence[str] = ("/",)
    #: ``None`` or empty: :data:`DEFAULT_REQUEST_HEADERS`; else replaces them all.
    headers: Mapping[str, Sequence[str]] | None = None

    def header_list(self) -> HeaderList:
        return _header_list(self.headers, DEFAULT_REQUEST_HEADERS)

    def path_list(self) -> tuple[str, ...]:
        return tuple(self.paths) or ("/",)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponseConfig:
    """``header.response``. Empty strings and empty collections mean V2Ray's defaults
    (setting only one of status/reason keeps the other's default, as V2Ray does)."""

    version: str = "1.1"
    status: str = "200"
    reason: str = "OK"
    #: ``None`` or empty: :data:`DEFAULT_RESPONSE_HEADERS`; else replaces them all.
    headers: Mapping[str, Sequence[str]] | None = None

    def header_list(self) -> HeaderList:
        return _header_list(self.headers, DEFAULT_RESPONSE_HEADERS)


def http_date(now: float) -> str:
    """``now`` (Unix time) as an HTTP date in GMT: ``Tue, 01 Dec 2026 20:23:01 GMT``."""
    return email.utils.formatdate(now, usegmt=True)


# -- Go's url.ParseRequestURI, as far as URL.Path goes ----------------------------------------

_CTL = re.compile(rb"[\x00-\x1f\x7f]")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def request_path(target: bytes) -> bytes | None:
    """``URL.Path`` of a request-target as Go's ``url.ParseRequestURI`` gives it (the query
    dropped, percent escapes decoded, ``+`` kept), or ``None`` where Go fails to parse it
    (a control byte, a bad ``%`` escape, a relative reference), which its servers answer
    with 400. Absolute-form targets give their path (``http://h/ray`` -> ``/ray``)."""
    if not target or _CTL.search(target):
        return None
    if target == b"*":
        return b"*"
    scheme = None if target[:1] == b"/" else _SCHEME.match(target)
    rest = target[scheme.end() :] if scheme else target
    rest = rest.split(b"?", 1)[0]
    if not rest.startswith(b"/"):
        if scheme is None:
            return None  # "invalid URI for request"
        return b""  # opaque ("mailto:x"): no path
    if scheme is not None and rest.startswith(b"//"):
        slash = rest.find(b"/", 2)
        rest = rest[slash:] if slash >= 0 else b""
    if b"%" not in rest:
        return rest
    if _BAD_ESCAPE.search(rest):
        return None
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), rest)


# -- Go's net/http.readRequest, as far as it can fail ------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9]{1,7})\.([0-9]{1,7})")


def _parse_request_head(head: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """The path and the headers (names lower-cased) of a request head (CRLFCRLF included),
    or ``ValueError`` wherever Go's ``readRequest`` would return an error."""
    lines = head[:-4].split(b"\n")
    first = lines[0].removesuffix(b"\r")
    method, sp1, rest = first.partition(b" ")
    target, sp2, version = rest.partition(b" ")
    if not sp1 or not sp2:
        raise ValueError("malformed request line")
    if not _TOKEN.fullmatch(method):
        raise ValueError("invalid method")
    if not _VERSION.fullmatch(version):
        raise ValueError("malformed HTTP version")
    path = request_path(target)
    if path is None:
        raise ValueError("invalid request URI")
    headers: dict[bytes, list[bytes]] = {}
    last: list[bytes] | None = None
    for raw in lines[1:]:
        line = raw.removesuffix(b"\r")
        if not line:  # Go stops at the first empty line; the rest would be a body
            break
        if line[:1] in (b" ", b"\t"):  # obs-fold: continues the previous value
            if last is None:
                raise ValueError("malformed MIME header initial line")
            last[-1] = last[-1] + b" " + line.strip(b" \t")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError("malformed MIME header line")
        last = headers.setdefault(name.lower(), [])
        last.append(value.strip(b" \t"))
    if len(headers.get(b"host", ())) > 1:
        raise ValueError("too many Host headers")
    lengths = set(headers.get(b"content-length", ()))
    if len(lengths) > 1 or any(v and not (v.isdigit() and len(v) < 19) for v in lengths):
        raise ValueError("bad Content-Length")
    encodings = headers.get(b"transfer-encoding")
    if encodings is not None and (len(encodings) != 1 or encodings[0].lower() != b"chunked"):
        raise ValueError("unsupported transfer encoding")
    return path, headers


def _roll(values: tuple[str, ...], rng: Picker) -> str:
    """``pickString``: no value is "", one value is itself, more are rolled."""
    if len(values) < 2:
        return values[0] if values else ""
    return values[rng.randrange(len(values))]


def _check_line(text: str, what: str) -> str:
    if "\r" in text or "\n" in text:
        raise ConfigError(f"{what} contains a line break: {text!r}")
    return text


def _head(first: str, headers: HeaderList, rng: Picker, date: str | None) -> bytes:
    lines = [first]
    has_date = False
    for name, values in headers:
        lines.append(f"{name}: {_roll(values, rng)}")
        has_date = has_date or name.lower() == "date"
    if date is not None and not has_date:
        lines.append(f"Date: {date}")
    lines.extend(("", ""))
    return "\r\n".join(lines).encode("utf-8")


class HttpHeaderLayer(QueuedLayer):
    """One connection's fake HTTP exchange, client or server (see the module docstring).

    ``rng`` rolls the paths and header values (both roles); ``clock`` (Unix time) dates the
    server's responses and is required for ``Role.SERVER``. ``Established.info`` on the
    server holds ``path`` (the decoded request path) and, if sent, ``host``.
    """

    name = "http-header"

    def __init__(
        self,
        role: Role,
        *,
        rng: Picker,
        request: HttpRequestConfig | None = None,
        response: HttpResponseConfig | None = None,
        clock: Callable[[], float] | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        if role is Role.SERVER and clock is None:
            raise ConfigError("an HTTP header server needs a clock for its Date header")
        self.role = role
        self._rng = rng
        self._request = request or HttpRequestConfig()
        self._response = response or HttpResponseConfig()
        self._clock = clock
        self._max = max_header_bytes
        for name, values in (*self._request.header_list(), *self._response.header_list()):
            _check_line(name, "header name")
            for value in values:
                _check_line(value, f"header {name}")
        for path in self._request.path_list():
            _check_line(path, "request path")
        self._paths = frozenset(p.encode("utf-8") for p in self._request.path_list())
        self._in = bytearray()  # the peer's header, until it is complete
        self._scanned = 0  # bytes of _in already searched for CRLFCRLF
        self._first_line_ok = False
        self._established = False
        self._refused = False
        self._header_sent = False  # ours: the request (client) or the response (server)
        self._out: list[bytes] = []

    # -- from below ----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[LayerEvent]:
        if self._established:
            return [Received(data)] if data else []
        if self._refused:
            return []
        self._in += data
        end = self._find_end()
        if self.role is Role.CLIENT:
            if end < 0:
                if len(self._in) >= self._max:
                    raise HttpHeaderError(f"no end of the response header in {self._max} bytes")
                return []
            return self._done(end, {})
        return self._serve(end)

    def receive_eof(self) -> list[LayerEvent]:
        if self._established:
            return [EndReceived()]
        if self._refused:
            return []
        raise HttpHeaderError("connection closed inside the HTTP header")

    def _find_end(self) -> int:
        """Index just past the first CRLFCRLF within the first ``max`` bytes, or -1."""
        start = max(0, self._scanned - 3)
        end = self._in.find(b"\r\n\r\n", start, self._max)
        self._scanned = min(len(self._in), self._max)
        return end + 4 if end >= 0 else -1

    def _done(self, end: int, info: dict[str, object]) -> list[LayerEvent]:
        rest = bytes(self._in[end:])
        self._in = bytearray()
        self._established = True
        events: list[LayerEvent] = [Established(info=dict(info))]
        if rest:
            events.append(Received(rest))
        return events

    def _serve(self, end: int) -> list[LayerEvent]:
        # Go's readRequest fails on a bad request line as soon as it has one (V2Ray tries
        # the partial header after every read), so that comes first: it does not depend
        # on how the bytes were split.
        if not self._first_line_ok:
            newline = self._in.find(b"\n", 0, self._max)
            if newline >= 0:
                try:
                    _parse_request_head(bytes(self._in[:newline]) + b"\r\n\r\n")
                except ValueError as exc:
                    return self._refuse("400 Bad Request", f"bad request line: {exc}")
                self._first_line_ok = True
        if end < 0:
            if len(self._in) >= self._max:
                return self._refuse("400 Bad Request", f"header over {self._max} bytes")
            return []
        try:
            path, headers = _parse_request_head(bytes(self._in[:end]))
        except ValueError as exc:
            return self._refuse("400 Bad Request", f"bad request header: {exc}")
        shown = path.decode("utf-8", "replace")
        if path not in self._paths:  # Go compares bytes: so do we
            return self._refuse("404 Not Found", f"wrong path {shown!r}")
        info: dict[str, object] = {"path": shown}
        if b"host" in headers:
            info["host"] = headers[b"host"][0].decode("latin-1")
        return self._done(end, info)

    def _refuse(self, status: str, reason: str) -> list[LayerEvent]:
        self._refused = True
        self._in = bytearray()
        self._send_error(status)
        return [Refused(reason)]

    def _send_error(self, status: str) -> None:
        assert self._clock is not None
        date = http_date(self._clock())
        self._out.append(_head(f"HTTP/1.1 {status}", _ERROR_HEADERS, self._rng, date))
        self._header_sent = True

    # -- from above ----------------------------------------------------------------------
    def send_data(self, data: bytes) -> None:
        if not data or self._refused:
            return
        if not self._header_sent:
            self._header_sent = True
            self._out.append(self._our_header())
        self._out.append(data)

    def _our_header(self) -> bytes:
        if self.role is Role.CLIENT:
            req = self._request
            path = _roll(req.path_list(), self._rng)
            first = f"{req.method or 'GET'} {path} HTTP/{req.version or '1.1'}"
            return _head(first, req.header_list(), self._rng, None)
        resp = self._response
        first = f"HTTP/{resp.version or '1.1'} {resp.status or '200'} {resp.reason or 'OK'}"
        assert self._clock is not None
        return _head(first, resp.header_list(), self._rng, http_date(self._clock()))

    def send_eof(self) -> None:
        # V2Ray's Conn.Close: a server that never wrote answers 400 (a client writes
        # nothing). Then the TCP half-close below carries the end.
        if self.role is Role.SERVER and not self._header_sent and not self._refused:
            self._send_error("400 Bad Request")
