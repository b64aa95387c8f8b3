"""HTTP proxy inbound: request heads in, upstream heads out (sans-IO, heads parsed by h11).

Wire shapes (RFC 7230/7231; docs/protocols.md 5.2)::

    CONNECT host:port HTTP/1.1 CRLF headers CRLF
        -> "HTTP/1.1 200 Connection established" CRLF CRLF, then a raw relay
    GET http://host[:port]/path HTTP/1.x CRLF headers CRLF [body]
        -> upstream: GET /path HTTP/1.x, Host first, hop-by-hop headers dropped,
           "Connection: close"; the body and the response body are relayed raw

One request per client connection: the upstream is told ``Connection: close`` and the
client connection closes after the response (V2Ray can keep a client connection alive; we
don't, which keeps the relay a byte pipe). Request and response bodies are never parsed, so
their framing headers (``Content-Length``, ``Transfer-Encoding: chunked``) are kept even
though V2Ray's hop-by-hop list names ``Transfer-Encoding`` (it re-chunks; we don't).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import h11

from raybridge.address import Destination, Network, decode_domain
from raybridge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ConnectRequest",
    "ForwardRequest",
    "HttpProxyError",
    "HttpProxyServer",
    "ResponseRewriter",
]


class HttpProxyError(RemoteProtocolError):
    """The HTTP client (or the upstream server's response head) broke the protocol."""


# Replies, byte for byte as V2Ray 4.34 writes them (docs/protocols.md 5.2). The 400 and 503 bodies
# come from Go's Response.Write: sorted headers, then an explicit zero Content-Length.
_CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_PROXY_AUTH_REQUIRED = (
    b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\n\r\n'
)
_METHOD_PREFIX = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}(?: |\Z)|\Z")
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n"
)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Connection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
)
_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Connection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
)

# V2Ray's list (common/protocol/http/headers.go) minus Transfer-Encoding (see the module
# docstring) plus Keep-Alive, which means nothing once we say "Connection: close".
_HOP_BY_HOP = frozenset(
    (
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"upgrade",
        b"connection",
        b"keep-alive",
    )
)
# Never dropped because "Connection" names them: removing them would break the framing of
# the raw-relayed body (or, for Host, we write it ourselves).
_PROTECTED = frozenset((b"content-length", b"transfer-encoding", b"host"))

# h11's message for an HTTP/1.1 request without Host; tests/protocols/test_http.py notices if
# a new h11 words it differently.
_H11_MISSING_HOST = "Missing mandatory Host: header"

_ABSOLUTE_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)\Z", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}\Z")

_Headers = list[tuple[bytes, bytes, bytes]]  # (lower-cased name, name as sent, value)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """``CONNECT host:port``. Answer with :meth:`HttpProxyServer.connect_established`, then
    send ``trailing`` (bytes the client sent after the head) upstream first and relay raw."""

    target: Destination
    user: str | None
    trailing: bytes


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A plain proxied request (``GET http://…``): send ``head`` then ``trailing`` upstream,
    relay the rest raw, pass the response through a :class:`ResponseRewriter`.

    ``path`` is the percent-decoded URL path without the query (V2Ray's ``:path``);
    ``attrs`` are V2Ray's routing attributes: ``:method``, ``:path`` and each remaining
    header's first value under its lower-cased name (``user-agent`` is ``""`` when absent).
    """

    target: Destination
    user: str | None
    head: bytes
    trailing: bytes
    method: str
    path: str
    attrs: Mapping[str, str] = field(default_factory=dict)


class HttpProxyServer:
    """Server side of one HTTP proxy request head.

    Feed bytes to :meth:`receive_data` until it returns a :class:`ConnectRequest` or a
    :class:`ForwardRequest`. On bad input it queues the reply V2Ray would send (400 or 407)
    in :meth:`data_to_send` and raises :class:`HttpProxyError`; send that, then close.
    V2Ray closes without a word on an unparseable head; we send 400 as an HTTP server
    should.
    """

    __slots__ = (
        "_accounts",
        "_allow_transparent",
        "_conn",
        "_finished",
        "_host_added",
        "_max_head",
        "_out",
        "_raw",
    )

    def __init__(
        self,
        *,
        accounts: Mapping[str, str] | None = None,
        allow_transparent: bool = False,
        max_head: int = 65536,
    ) -> None:
        self._accounts = {u.encode(): p.encode() for u, p in (accounts or {}).items()}
        self._allow_transparent = allow_transparent
        self._max_head = max_head
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._out = bytearray()
        self._finished = False
        # A copy of the head so far, for the one re-parse _reparse_with_empty_host needs;
        # h11 bounds it (max_head) and it is dropped once the head is complete.
        self._raw = bytearray()
        self._host_added = False

    @staticmethod
    def connect_established() -> bytes:
        return _CONNECT_ESTABLISHED

    @staticmethod
    def bad_gateway() -> bytes:
        """V2Ray's reply when the upstream response can't be parsed (a 503, in fact)."""
        return _SERVICE_UNAVAILABLE

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(
        self, data: bytes | bytearray | memoryview
    ) -> ConnectRequest | ForwardRequest | None:
        if self._finished:
            raise LocalProtocolError("the HTTP proxy request head has already been handled")
        if not data:
            return None  # h11 would take b"" as end of stream; EOF is the transport's business
        chunk = bytes(data)
        self._raw += chunk
        if _METHOD_PREFIX.match(self._raw) is None:
            # Not an HTTP request line (a method token, then a space): say so at once
            # instead of waiting for a line end that may never come.
            raise self._fail(_BAD_REQUEST, "malformed HTTP request: bad request line")
        try:
            self._conn.receive_data(chunk)
            event = self._conn.next_event()
        except h11.ProtocolError as exc:
            if str(exc) != _H11_MISSING_HOST or self._host_added:
                raise self._fail(_BAD_REQUEST, f"malformed HTTP request: {exc}") from exc
            event = self._reparse_with_empty_host()
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):  # cannot happen before any request; be safe
            raise self._fail(_BAD_REQUEST, f"unexpected HTTP event {type(event).__name__}")
        # h11 caps only heads that arrive incomplete; one that arrives whole in a single
        # read must be capped too, or a client could make us hold any amount.
        head_size = len(self._raw) - len(self._conn.trailing_data[0])
        if head_size > self._max_head:
            raise self._fail(_HEAD_TOO_LARGE, f"request head too large ({head_size} bytes)")
        try:
            return self._handle(event)
        except (ValueError, UnicodeError) as exc:
            raise self._fail(_BAD_REQUEST, f"malformed HTTP request: {exc}") from exc

    def _reparse_with_empty_host(self) -> h11.Request:
        # h11 insists on Host in HTTP/1.1 (RFC 7230 5.4), Go's ReadRequest (so V2Ray) does
        # not, and CONNECT clients do omit it. Parse again with an empty Host, which the rest
        # of this class treats as absent: the target must then name the host.
        self._host_added = True
        raw = self._raw
        eol = raw.find(b"\n") + 1
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        try:
            self._conn.receive_data(bytes(raw[:eol]) + b"Host: \r\n" + bytes(raw[eol:]))
            event = self._conn.next_event()
        except h11.ProtocolError as exc:
            raise self._fail(_BAD_REQUEST, f"malformed HTTP request: {exc}") from exc
        if not isinstance(event, h11.Request):
            raise self._fail(_BAD_REQUEST, "malformed HTTP request head")
        return event

    def _fail(self, reply: bytes, message: str) -> HttpProxyError:
        self._finished = True
        self._out += reply
        return HttpProxyError(message)

    def _authenticate(self, headers: _Headers) -> str | None:
        # Go's Header.Get: the first Proxy-Authorization counts; "Basic " is case-sensitive.
        value = next((v for lname, _, v in headers if lname == b"proxy-authorization"), b"")
        if not value.startswith(b"Basic "):
            return None
        try:
            decoded = base64.b64decode(value[6:], validate=True)
        except (binascii.Error, ValueError):
            return None
        name, colon, password = decoded.partition(b":")
        expected = self._accounts.get(name)
        if not colon or expected is None or not hmac.compare_digest(expected, password):
            return None
        return name.decode()  # it matched an account, so it is UTF-8

    def _handle(self, event: h11.Request) -> ConnectRequest | ForwardRequest:
        self._finished = True
        self._raw = bytearray()
        headers: _Headers = [(n.lower(), n, v) for n, v in event.headers.raw_items()]
        # V2Ray checks credentials before it looks at the target.
        user = None
        if self._accounts:
            user = self._authenticate(headers)
            if user is None:
                raise self._fail(_PROXY_AUTH_REQUIRED, "proxy authentication failed")
        method = event.method.decode("ascii")
        target = event.target.decode("ascii")
        # latin-1 never fails; a non-ASCII host is refused when (and only if) it is used.
        host_header = next((v for lname, _, v in headers if lname == b"host"), b"")
        host_header_text = host_header.decode("latin-1")
        trailing = self._conn.trailing_data[0]

        if method.upper() == "CONNECT":
            # Authority form; Go's URL host (which wins over Host) ignores userinfo.
            authority = host_header_text if target.startswith("/") else target.rpartition("@")[2]
            return ConnectRequest(
                target=_parse_authority(authority, 80), user=user, trailing=trailing
            )

        return self._forward(event, headers, user, host_header_text, trailing)

    def _split_target(self, target: str) -> tuple[str, str, str]:
        """Scheme, host and origin form (path and query) of a request target."""
        if target.startswith("/") or target == "*":
            return "", "", target
        match = _ABSOLUTE_URI.match(target)
        if match is None:
            raise self._fail(_BAD_REQUEST, f"unsupported request target {target[:64]!r}")
        scheme, authority, rest = match.groups()
        rest = rest.partition("#")[0]
        return scheme, authority.rpartition("@")[2], rest if rest.startswith("/") else "/" + rest

    def _forward(
        self,
        event: h11.Request,
        headers: _Headers,
        user: str | None,
        host_header: str,
        trailing: bytes,
    ) -> ForwardRequest:
        """A plain request to forward: its target and the head to send upstream."""
        scheme, url_host, origin = self._split_target(event.target.decode("ascii"))
        if not url_host and not self._allow_transparent:
            # RFC 7230 5.3.2: a proxy gets absolute URIs; V2Ray answers 400 otherwise.
            raise self._fail(_BAD_REQUEST, "request target is not an absolute URI")
        # As in Go's ReadRequest, the URL's host wins over the Host header (RFC 7230 5.4).
        host = url_host or host_header
        if not host:
            raise self._fail(_BAD_REQUEST, "request names no host")
        destination = _parse_authority(host, 443 if scheme.lower() == "https" else 80)
        kept = _end_to_end(headers)
        parts = [
            b"%s %s HTTP/%s\r\nHost: %s\r\n"
            % (event.method, origin.encode("ascii"), event.http_version, host.encode("ascii"))
        ]
        for lname, name, value in kept:
            if lname != b"host":
                parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"Connection: close\r\n\r\n")
        method = event.method.decode("ascii")
        path = unquote(origin.partition("?")[0])
        attrs = {":method": method.upper(), ":path": path}
        for lname, _, value in kept:
            if lname not in (b"host", b"transfer-encoding"):
                attrs.setdefault(lname.decode("ascii"), value.decode("latin-1"))
        attrs.setdefault("user-agent", "")
        return ForwardRequest(
            target=destination,
            user=user,
            head=b"".join(parts),
            trailing=trailing,
            method=method,
            path=path,
            attrs=attrs,
        )


def _end_to_end(headers: _Headers) -> _Headers:
    """``headers`` less the hop-by-hop ones and whatever every Connection header names; less
    Content-Length too when there is Transfer-Encoding (RFC 7230 3.3.3: with chunked
    framing a proxy must not forward it)."""
    named = {
        token.strip().lower()
        for lname, _, value in headers
        if lname == b"connection"
        for token in value.split(b",")
    }
    drop = _HOP_BY_HOP | (named - _PROTECTED)
    if any(lname == b"transfer-encoding" for lname, _, _ in headers):
        drop |= {b"content-length"}
    return [header for header in headers if header[0] not in drop]


def _parse_authority(text: str, default_port: int) -> Destination:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as a TCP destination.

    Stricter than V2Ray's ParseHost: the port is plain decimal (Go's base-0 parse would read
    ``0443`` as octal) and the host must be an IP literal or a valid domain name.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unterminated IPv6 literal in {text[:64]!r}")
        host_text, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after IPv6 literal in {text[:64]!r}")
        port_text = rest[1:]
        if "%" in host_text:
            # A scope id may hold any byte (ESC, CR): refused like every address from the
            # wire that has one (raybridge.address.decode_domain).
            raise ValueError(f"IPv6 scope id in {text[:64]!r}")
        ip = ipaddress.IPv6Address(host_text)
        host: ipaddress.IPv4Address | ipaddress.IPv6Address | str = ip.ipv4_mapped or ip
    else:
        if text.count(":") > 1:
            raise ValueError(f"too many colons in {text[:64]!r}")
        host_text, _, port_text = text.partition(":")
        raw = host_text.encode("ascii")
        if len(raw) > 255:
            raise ValueError("host name longer than 255 bytes")
        try:
            host = decode_domain(raw, HttpProxyError)
        except HttpProxyError as exc:  # receive_data turns ValueError into a 400 reply
            raise ValueError(str(exc)) from exc
    if not port_text:
        port = default_port
    elif _PORT.match(port_text) and int(port_text) <= 0xFFFF:
        port = int(port_text)
    else:
        raise ValueError(f"bad port in {text[:64]!r}")
    return Destination(Network.TCP, host, port)


class ResponseRewriter:
    """Rewrites the upstream response head for the client, then passes bytes through.

    Buffers until the head is complete (at most ``max_head`` bytes), emits it with
    hop-by-hop headers removed and ``Connection: close`` added, then returns body bytes
    unchanged. Interim 1xx heads (e.g. ``100 Continue``) are passed on, minus hop-by-hop
    headers. A malformed head raises :class:`HttpProxyError`; the caller then sends
    :meth:`HttpProxyServer.bad_gateway` if nothing has been sent yet, and closes.
    """

    __slots__ = ("_conn",)

    def __init__(self, *, max_head: int = 65536) -> None:
        # h11 only parses a response once its client has sent a request; the request's
        # details don't matter, because we stop parsing at the end of the head.
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
        conn.send(h11.EndOfMessage())
        self._conn: h11.Connection | None = conn

    @property
    def head_done(self) -> bool:
        return self._conn is None

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        conn = self._conn
        if conn is None:
            return data if isinstance(data, bytes) else bytes(data)
        if not data:
            return b""
        out: list[bytes] = []
        try:
            conn.receive_data(bytes(data))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return b"".join(out)
                if isinstance(event, h11.InformationalResponse):
                    out.append(_response_head(event, final=False))
                elif isinstance(event, h11.Response):
                    out.append(_response_head(event, final=True))
                    out.append(conn.trailing_data[0])
                    self._conn = None
                    return b"".join(out)
                else:
                    raise HttpProxyError(f"unexpected HTTP event {type(event).__name__}")
        except h11.ProtocolError as exc:
            self._conn = None
            raise HttpProxyError(f"malformed upstream response: {exc}") from exc


def _response_head(event: h11.Response | h11.InformationalResponse, *, final: bool) -> bytes:
    headers = [(n.lower(), n, v) for n, v in event.headers.raw_items()]
    parts = [b"HTTP/%s %d %s\r\n" % (event.http_version, event.status_code, event.reason)]
    parts.extend(b"%s: %s\r\n" % (name, v) for _, name, v in _end_to_end(headers))
    parts.append(b"Connection: close\r\n\r\n" if final else b"\r\n")
    return b"".join(parts)
