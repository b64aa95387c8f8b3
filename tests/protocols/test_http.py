"""HTTP proxy codec: V2Ray's reply bytes (docs/protocols.md 5.2), three-way decoding, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import itertools
from typing import TypeAlias

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.address import tcp
from raybridge.errors import LocalProtocolError
from raybridge.protocols.http import (
    ConnectRequest,
    ForwardRequest,
    HttpProxyError,
    HttpProxyServer,
    ResponseRewriter,
)

ACCOUNTS = {"alice": "s3cret"}
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Connection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
)
AUTH_REQUIRED = (
    b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\n\r\n'
)
TRAILING = b"\x16\x03\x01 some body bytes\r\n\r\nGET / HTTP/1.1\r\n"

Result: TypeAlias = ConnectRequest | ForwardRequest


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def three_ways(data: bytes, **kwargs: object) -> Result:
    """Decode whole, one byte at a time and with trailing bytes; results must agree."""
    results: list[Result] = []
    for trailing in (b"", TRAILING):
        server = HttpProxyServer(**kwargs)  # type: ignore[arg-type]
        result = server.receive_data(data + trailing)
        assert result is not None
        assert result.trailing == trailing
        results.append(result)

        server = HttpProxyServer(**kwargs)  # type: ignore[arg-type]
        blob = data + trailing
        for i in range(len(blob)):
            result = server.receive_data(blob[i : i + 1])
            if result is not None:
                break
        assert result is not None
        assert result.trailing == b""  # the head ended at byte i; nothing more was fed
        assert blob[i + 1 :] == trailing
        results.append(result)
    first = results[0]
    for other in results[1:]:
        if isinstance(first, ForwardRequest):
            assert isinstance(other, ForwardRequest)
            assert (other.target, other.head, other.user, other.path, dict(other.attrs)) == (
                first.target,
                first.head,
                first.user,
                first.path,
                dict(first.attrs),
            )
        else:
            assert (other.target, other.user) == (first.target, first.user)
    return first


def rejected(data: bytes, reply: bytes = BAD_REQUEST, **kwargs: object) -> None:
    for bytewise in (False, True):
        server = HttpProxyServer(**kwargs)  # type: ignore[arg-type]
        with pytest.raises(HttpProxyError):
            if bytewise:
                for i in range(len(data)):
                    server.receive_data(data[i : i + 1])
            else:
                server.receive_data(data)
        assert server.data_to_send() == reply
        assert server.data_to_send() == b""
        with pytest.raises(LocalProtocolError):
            server.receive_data(b"x")


def test_static_replies_match_v2ray() -> None:
    assert HttpProxyServer.connect_established() == (b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert HttpProxyServer.bad_gateway() == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Connection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
    )


# --- CONNECT -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "target"),
    [
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            ("example.com", 443),
        ),
        (b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: x\r\n\r\n", ("2001:db8::1", 8443)),
        (b"CONNECT 10.1.2.3:22 HTTP/1.0\r\n\r\n", ("10.1.2.3", 22)),
        # Go reads the authority as the URL host, which wins over Host; no port -> 80
        (b"CONNECT example.com HTTP/1.1\r\nHost: other.org:1\r\n\r\n", ("example.com", 80)),
        # HTTP/1.1 without Host: h11 refuses it, V2Ray (Go) accepts it, and so do we
        (b"CONNECT example.com:443 HTTP/1.1\r\nUser-Agent: x\r\n\r\n", ("example.com", 443)),
        (b"connect example.com:443 HTTP/1.1\nHost: a\n\n", ("example.com", 443)),  # bare LF
    ],
)
def test_connect(head: bytes, target: tuple[str, int]) -> None:
    result = three_ways(head)
    assert isinstance(result, ConnectRequest)
    assert result.target == tcp(*target)
    assert result.user is None


def test_connect_with_auth() -> None:
    head = (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: " + basic("alice", "s3cret") + b"\r\n\r\n"
    )
    result = three_ways(head, accounts=ACCOUNTS)
    assert isinstance(result, ConnectRequest)
    assert result.user == "alice"


@pytest.mark.parametrize(
    "credentials",
    [
        None,
        basic("alice", "wrong"),
        basic("mallory", "s3cret"),
        b"basic " + basic("alice", "s3cret")[6:],  # Go's prefix check is case-sensitive
        b"Bearer abc",
        b"Basic !!!notbase64",
        b"Basic " + base64.b64encode(b"alice-s3cret"),  # no colon
    ],
)
def test_auth_failures_get_407(credentials: bytes | None) -> None:
    head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n"
    if credentials is not None:
        head += b"Proxy-Authorization: " + credentials + b"\r\n"
    rejected(head + b"\r\n", AUTH_REQUIRED, accounts=ACCOUNTS)
    # V2Ray checks credentials before anything else, even for a request it would refuse.
    rejected(b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", AUTH_REQUIRED, accounts=ACCOUNTS)


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT example.com:99999 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT example.com:0x1bb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT ::1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT [::1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT [::1]x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT [nothex]:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT exa(mple).com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT :443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_malformed_requests_get_400(head: bytes) -> None:
    rejected(head)


def test_head_size_is_capped() -> None:
    server = HttpProxyServer(max_head=1024)
    server.receive_data(b"GET http://a/ HTTP/1.1\r\n")
    with pytest.raises(HttpProxyError):
        for _ in range(20):
            server.receive_data(b"X-Filler: " + b"y" * 100 + b"\r\n")
    assert server.data_to_send() == BAD_REQUEST


def test_h11_still_words_missing_host_as_we_expect() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(h11.RemoteProtocolError, match=r"^Missing mandatory Host: header$"):
        conn.next_event()


# --- plain forwarding --------------------------------------------------------------------


def test_forward_rewrites_head() -> None:
    head = (
        b"GET http://user:pw@Example.com:8080/a%20b/c?x=1&y=%2F#frag HTTP/1.1\r\n"
        b"Host: ignored.example\r\n"
        b"User-Agent: curl/8\r\n"
        b"Accept: */*\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, X-Hop, Content-Length\r\n"
        b"X-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailers: x\r\n"
        b"Upgrade: websocket\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Content-Length: 4\r\n"
        b"x-multi: 1\r\n"
        b"X-Multi: 2\r\n"
        b"\r\n"
    )
    result = three_ways(head)
    assert isinstance(result, ForwardRequest)
    assert result.target == tcp("Example.com", 8080)
    assert result.method == "GET"
    assert result.path == "/a b/c"
    assert result.head == (
        b"GET /a%20b/c?x=1&y=%2F HTTP/1.1\r\n"
        b"Host: Example.com:8080\r\n"
        b"User-Agent: curl/8\r\n"
        b"Accept: */*\r\n"
        b"Content-Length: 4\r\n"  # named by Connection, but it frames the body: kept
        b"x-multi: 1\r\n"
        b"X-Multi: 2\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert dict(result.attrs) == {
        ":method": "GET",
        ":path": "/a b/c",
        "user-agent": "curl/8",
        "accept": "*/*",
        "content-length": "4",
        "x-multi": "1",
    }


@pytest.mark.parametrize(
    ("url", "target", "origin"),
    [
        (b"http://example.com", ("example.com", 80), b"/"),
        (b"http://example.com?q", ("example.com", 80), b"/?q"),
        (b"https://example.com/x", ("example.com", 443), b"/x"),
        (b"HTTPS://example.com:8443/x", ("example.com", 8443), b"/x"),
        (b"http://[::1]:8080/", ("::1", 8080), b"/"),
        (b"http://127.0.0.1:/", ("127.0.0.1", 80), b"/"),
        (b"ws://example.com/chat", ("example.com", 80), b"/chat"),
    ],
)
def test_forward_targets(url: bytes, target: tuple[str, int], origin: bytes) -> None:
    result = three_ways(b"HEAD " + url + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(result, ForwardRequest)
    assert result.target == tcp(*target)
    assert result.head.startswith(b"HEAD " + origin + b" HTTP/1.1\r\nHost: ")
    assert result.attrs["user-agent"] == ""  # V2Ray's empty User-Agent attribute


def test_forward_keeps_chunked_framing_and_drops_content_length() -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n"
    head = (
        b"POST http://example.com/upload HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Length: 99\r\nConnection: Transfer-Encoding\r\n\r\n"
    )
    result = three_ways(head)
    assert isinstance(result, ForwardRequest)
    assert HttpProxyServer().receive_data(head + body) == ForwardRequest(
        target=result.target,
        user=None,
        head=result.head,
        trailing=body,
        method="POST",
        path="/upload",
        attrs=result.attrs,
    )
    assert result.head == (
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    assert "transfer-encoding" not in result.attrs


def test_forward_keeps_http10() -> None:
    result = three_ways(b"GET http://example.com/ HTTP/1.0\r\n\r\n")
    assert isinstance(result, ForwardRequest)
    assert result.head == b"GET / HTTP/1.0\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def test_forward_with_auth_strips_credentials() -> None:
    head = (
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        b"Proxy-Authorization: " + basic("alice", "s3cret") + b"\r\n\r\n"
    )
    result = three_ways(head, accounts=ACCOUNTS)
    assert isinstance(result, ForwardRequest)
    assert result.user == "alice"
    assert b"Authorization" not in result.head


def test_relative_uri_needs_allow_transparent() -> None:
    head = b"GET /index.html?a=b HTTP/1.1\r\nHost: example.com:81\r\n\r\n"
    rejected(head)
    result = three_ways(head, allow_transparent=True)
    assert isinstance(result, ForwardRequest)
    assert result.target == tcp("example.com", 81)
    assert result.head == (
        b"GET /index.html?a=b HTTP/1.1\r\nHost: example.com:81\r\nConnection: close\r\n\r\n"
    )
    rejected(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    rejected(b"GET example.com/x HTTP/1.1\r\nHost: x\r\n\r\n", allow_transparent=True)
    # Transparent, but no host anywhere: nowhere to go.
    rejected(b"GET / HTTP/1.1\r\n\r\n", allow_transparent=True)
    rejected(b"GET http:///x HTTP/1.1\r\n\r\n")


# --- ResponseRewriter --------------------------------------------------------------------

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: 1\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"\r\n"
)
RESPONSE_HEAD_OUT = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Connection: close\r\n\r\n"
)
RESPONSE_BODY = b"5\r\nhello\r\n0\r\n\r\n"


def test_response_rewriter_whole_and_bytewise() -> None:
    rewriter = ResponseRewriter()
    assert rewriter.feed(RESPONSE_HEAD + RESPONSE_BODY) == RESPONSE_HEAD_OUT + RESPONSE_BODY
    assert rewriter.head_done

    rewriter = ResponseRewriter()
    out = b"".join(rewriter.feed(RESPONSE_HEAD[i : i + 1]) for i in range(len(RESPONSE_HEAD)))
    assert out == RESPONSE_HEAD_OUT
    body = b"x" * 1000
    assert rewriter.feed(body) is body  # no copy once the head is through
    assert rewriter.feed(memoryview(body)) == body
    assert rewriter.feed(b"") == b""


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(0, len(RESPONSE_HEAD) + len(RESPONSE_BODY)), max_size=6))
def test_response_rewriter_split_anywhere(cuts: list[int]) -> None:
    blob = RESPONSE_HEAD + RESPONSE_BODY
    points = sorted({*cuts, 0, len(blob)})
    rewriter = ResponseRewriter()
    out = b"".join(rewriter.feed(blob[a:b]) for a, b in itertools.pairwise(points))
    assert out == RESPONSE_HEAD_OUT + RESPONSE_BODY


def test_response_rewriter_interim_and_oddities() -> None:
    rewriter = ResponseRewriter()
    data = (
        b"HTTP/1.1 100 Continue\r\nConnection: keep-alive\r\n\r\n"
        b"HTTP/1.0 204\r\nContent-Length: 0\r\n\r\n"
    )
    assert rewriter.feed(data) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.0 204 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    rewriter = ResponseRewriter()
    assert rewriter.feed(b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.0\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",  # we never asked to upgrade
    ],
)
def test_response_rewriter_malformed(data: bytes) -> None:
    with pytest.raises(HttpProxyError):
        ResponseRewriter().feed(data)


def test_response_rewriter_head_is_capped() -> None:
    rewriter = ResponseRewriter(max_head=1024)
    with pytest.raises(HttpProxyError):
        for _ in range(20):
            rewriter.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"y" * 100 + b"\r\n")


# --- hypothesis: arbitrary input ---------------------------------------------------------

PREFIXES = [
    b"",
    b"GET http://",
    b"CONNECT ",
    b"GET / HTTP/1.1\r\nHost: ",
    b"POST http://a/ HTTP/1.1\r\nHost: a\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(PREFIXES),
    data=st.binary(max_size=100) | st.text(max_size=100).map(str.encode),
    suffix=st.sampled_from([b"", b" HTTP/1.1\r\n\r\n", b"\r\n\r\n"]),
    cuts=st.lists(st.integers(0, 250), max_size=3),
    accounts=st.sampled_from([None, ACCOUNTS]),
    transparent=st.booleans(),
)
def test_arbitrary_request_bytes_raise_only_http_proxy_error(
    prefix: bytes,
    data: bytes,
    suffix: bytes,
    cuts: list[int],
    accounts: dict[str, str] | None,
    transparent: bool,
) -> None:
    blob = prefix + data + suffix
    points = sorted({min(c, len(blob)) for c in cuts} | {0, len(blob)})
    server = HttpProxyServer(accounts=accounts, allow_transparent=transparent)
    with contextlib.suppress(HttpProxyError):
        for a, b in itertools.pairwise(points):
            if server.receive_data(blob[a:b]) is not None:
                break


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"HTTP/1.1 ", b"HTTP/1.1 200 OK\r\n"]),
    data=st.binary(max_size=100) | st.text(max_size=100).map(str.encode),
    cuts=st.lists(st.integers(0, 200), max_size=3),
)
def test_arbitrary_response_bytes_raise_only_http_proxy_error(
    prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    blob = prefix + data + b"\r\n\r\n"
    points = sorted({min(c, len(blob)) for c in cuts} | {0, len(blob)})
    rewriter = ResponseRewriter()
    with contextlib.suppress(HttpProxyError):
        for a, b in itertools.pairwise(points):
            rewriter.feed(blob[a:b])
