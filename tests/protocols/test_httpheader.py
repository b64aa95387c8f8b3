"""TCP "http" header layer: V2Ray's vectors (docs/transports.md 5, 8), three-way decoding,
round trips and fuzzing. Also the layer-feeding helpers test_ws and test_proxyproto use."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.errors import ConfigError
from raybridge.protocols.httpheader import (
    DEFAULT_REQUEST_HEADERS,
    UA1,
    UA2,
    HttpHeaderError,
    HttpHeaderLayer,
    HttpRequestConfig,
    HttpResponseConfig,
    Picker,
    Role,
    http_date,
    request_path,
)
from raybridge.protocols.stream import (
    EndReceived,
    Established,
    LayerError,
    LayerEvent,
    Received,
    Refused,
    StreamLayer,
)

# -- helpers shared by the layer tests ---------------------------------------------------------

EVENT_TYPES = (Received, EndReceived, Established, Refused)


def normalize(events: Iterable[LayerEvent]) -> list[LayerEvent]:
    """Events with consecutive Received merged (how bytes were split must not matter)."""
    out: list[LayerEvent] = []
    for event in events:
        assert isinstance(event, EVENT_TYPES), event
        if isinstance(event, Received):
            assert event.data, "empty Received"
            if out and isinstance(out[-1], Received):
                out[-1] = Received(out[-1].data + event.data)
                continue
        out.append(event)
    return out


Outcome = tuple[list[LayerEvent], bytes, str | None]


def run(layer: StreamLayer, chunks: Iterable[bytes], *, eof: bool = False) -> Outcome:
    """Feed chunks; (normalized events, bytes the layer sent, error class name or None)."""
    events: list[LayerEvent] = []
    out = bytearray()
    error = None
    try:
        for chunk in chunks:
            events += layer.receive_data(chunk)
            out += layer.data_to_send()
        if eof:
            events += layer.receive_eof()
    except LayerError as exc:
        error = type(exc).__name__
    out += layer.data_to_send()
    return normalize(events), bytes(out), error


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def three_ways(
    make: Callable[[], StreamLayer],
    data: bytes,
    *,
    tail: bytes = b"",
    tail_events: Sequence[LayerEvent] = (),
) -> Outcome:
    """h11's ``tr()`` idea: decode ``data`` whole, one byte at a time, and followed by
    ``tail`` (which must then give ``tail_events`` and nothing else); all must agree."""
    whole = run(make(), [data])
    assert run(make(), bytewise(data)) == whole
    if tail:
        events, out, error = run(make(), [data + tail])
        assert (events, out, error) == (normalize([*whole[0], *tail_events]), whole[1], whole[2])
    return whole


class Script:
    """A Picker that returns scripted rolls (and checks each is in range)."""

    def __init__(self, *rolls: int) -> None:
        self.rolls = list(rolls)

    def randrange(self, stop: int, /) -> int:
        roll = self.rolls.pop(0)
        assert 0 <= roll < stop
        return roll


NOW = 1796156581.0  # Tue, 01 Dec 2026 20:23:01 GMT
DATE = "Tue, 01 Dec 2026 20:23:01 GMT"


def clock() -> float:
    return NOW


# -- vectors (docs/transports.md 8) ------------------------------------------------------------

DEFAULT_REQUEST_BING_UA1 = (
    b"GET / HTTP/1.1\r\nHost: www.bing.com\r\nUser-Agent: " + UA1.encode() + b"\r\n"
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nPragma: no-cache\r\n\r\n"
)
DEFAULT_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nPragma: no-cache\r\n"
    b"Cache-Control: private\r\nDate: Tue, 01 Dec 2026 20:23:01 GMT\r\n\r\n"
)
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nCache-Control: private\r\n"
    b"Content-Length: 0\r\nDate: Tue, 01 Dec 2026 20:23:01 GMT\r\n\r\n"
)
BAD_REQUEST = NOT_FOUND.replace(b"404 Not Found", b"400 Bad Request")


def client(rng: Picker | None = None, **kwargs: Any) -> HttpHeaderLayer:
    return HttpHeaderLayer(Role.CLIENT, rng=rng or Script(), **kwargs)


def server(rng: Picker | None = None, **kwargs: Any) -> HttpHeaderLayer:
    return HttpHeaderLayer(Role.SERVER, rng=rng or Script(0, 0), clock=clock, **kwargs)


def test_default_request_is_236_bytes_with_bing_and_ua1() -> None:
    layer = client(Script(1, 0))  # Host: www.bing.com, User-Agent: UA1
    assert layer.data_to_send() == b""  # nothing before the first payload
    layer.send_data(b"VMESS")
    out = layer.data_to_send()
    assert out == DEFAULT_REQUEST_BING_UA1 + b"VMESS"
    assert len(DEFAULT_REQUEST_BING_UA1) == 236
    layer.send_data(b"more")
    assert layer.data_to_send() == b"more"  # once per connection


@pytest.mark.parametrize("host", [0, 1])
@pytest.mark.parametrize("agent", [0, 1])
def test_default_request_length_is_114_plus_host_and_agent(host: int, agent: int) -> None:
    layer = client(Script(host, agent))
    layer.send_data(b"x")
    head = layer.data_to_send()[:-1]
    name = ("www.baidu.com", "www.bing.com")[host]
    ua = (UA1, UA2)[agent]
    assert len(head) == 114 + len(name) + len(ua)
    assert f"Host: {name}\r\nUser-Agent: {ua}\r\n".encode() in head


def test_post_vector_with_user_headers_in_byte_order() -> None:
    request = HttpRequestConfig(
        version="1.0",
        method="POST",
        paths=["/a", "/b"],
        headers={"Host": ["h1.test", "h2.test"], "X-Z": "z", "accept": ["*/*"]},
    )
    layer = client(Script(0, 0), request=request)  # path /a, Host h1.test
    layer.send_data(b"!")
    assert (
        layer.data_to_send()
        == b"POST /a HTTP/1.0\r\nHost: h1.test\r\nX-Z: z\r\naccept: */*\r\n\r\n!"
    )


def test_empty_fields_mean_v2ray_defaults() -> None:
    layer = client(
        Script(0, 1), request=HttpRequestConfig(version="", method="", paths=[], headers={})
    )
    layer.send_data(b"x")
    out = layer.data_to_send()
    assert out.startswith(b"GET / HTTP/1.1\r\nHost: www.baidu.com\r\nUser-Agent: " + UA2.encode())
    assert HttpRequestConfig().header_list() == DEFAULT_REQUEST_HEADERS


def test_user_headers_replace_all_defaults_and_empty_list_is_empty_value() -> None:
    layer = client(request=HttpRequestConfig(headers={"b": ["1"], "A": [], "a": "x"}))
    layer.send_data(b"x")
    assert layer.data_to_send() == b"GET / HTTP/1.1\r\nA: \r\na: x\r\nb: 1\r\n\r\nx"


def test_default_response_vector() -> None:
    layer = server(Script(0, 0))  # Content-Type octet-stream, Cache-Control private
    events = layer.receive_data(b"GET / HTTP/1.1\r\nHost: www.bing.com\r\n\r\n")
    assert events == [Established(info={"path": "/", "host": "www.bing.com"})]
    assert layer.data_to_send() == b""  # the response waits for the server's first bytes
    layer.send_data(b"reply")
    assert layer.data_to_send() == DEFAULT_RESPONSE + b"reply"


def test_response_status_reason_and_configured_date() -> None:
    response = HttpResponseConfig(
        version="1.0", status="", reason="Found", headers={"date": "yesterday", "X": ["1"]}
    )
    layer = server(response=response)
    layer.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    layer.send_data(b"r")
    assert layer.data_to_send() == b"HTTP/1.0 200 Found\r\nX: 1\r\ndate: yesterday\r\n\r\nr"


def test_http_date_is_gmt() -> None:
    assert http_date(NOW) == DATE
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


# -- server ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PUT /?q=1 HTTP/1.0\r\n\r\n",  # method, version, query: not checked [interop]
        b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n",
        b"GET http://www.bing.com/ HTTP/1.1\r\n\r\n",  # absolute-form: its path
        b"GET / HTTP/1.1\nHost: a\n\r\n\r\n",  # bare LF lines, as Go's textproto reads them
        b"GET / HTTP/1.1\n\nignored\r\n\r\n",  # Go stops at the first empty line
        b"GET / HTTP/1.1\r\nX: folded\r\n  continued\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
    ],
)
def test_server_accepts_what_go_readrequest_accepts(head: bytes) -> None:
    events, out, error = three_ways(server, head, tail=b"VMESS", tail_events=[Received(b"VMESS")])
    assert error is None and out == b""
    assert len(events) == 1 and isinstance(events[0], Established)
    assert events[0].info["path"] == "/"


def test_server_matches_paths_exactly_after_percent_decoding() -> None:
    request = HttpRequestConfig(paths=["/a", "/b c"])
    for target, ok in [
        (b"/a", True),
        (b"/%61", True),
        (b"/a?x=1", True),
        (b"/b%20c", True),
        (b"/a/", False),
        (b"/ab", False),
        (b"/", False),
    ]:
        layer = server(request=request)
        events = layer.receive_data(b"GET " + target + b" HTTP/1.1\r\n\r\n")
        if ok:
            assert isinstance(events[0], Established), target
        else:
            wrong = request_path(target)
            assert wrong is not None
            assert events == [Refused(f"wrong path {wrong.decode()!r}")]
            assert layer.data_to_send() == NOT_FOUND


@pytest.mark.parametrize(
    "head",
    [
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 x\r\n\r\n",
        b"GET / HTTP/x\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET a HTTP/1.1\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded first\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_server_answers_400_to_what_go_cannot_parse(head: bytes) -> None:
    events, out, error = three_ways(server, head, tail=b"VMESS")
    assert error is None
    assert len(events) == 1 and isinstance(events[0], Refused)
    assert out == BAD_REQUEST


def test_server_reads_at_most_8192_header_bytes() -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * (8192 - 23) + b"\r\n\r\n"
    assert len(head) == 8192
    assert isinstance(three_ways(server, head)[0][0], Established)
    too_long = head.replace(b"X: ", b"X: a")
    events, out, _ = three_ways(server, too_long, tail=b"more")
    assert events == [Refused("header over 8192 bytes")] and out == BAD_REQUEST
    # and with no end at all, it gives up at 8192 bytes
    assert run(server(), [b"GET / HTTP/1.1\r\n" + b"X" * 9000])[:2] == (
        [Refused("header over 8192 bytes")],
        BAD_REQUEST,
    )


def test_server_that_never_wrote_answers_400_on_close() -> None:
    layer = server()
    layer.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    layer.send_eof()
    layer.send_eof()
    assert layer.data_to_send() == BAD_REQUEST
    layer = server()
    layer.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    layer.send_data(b"x")
    layer.data_to_send()
    layer.send_eof()
    assert layer.data_to_send() == b""
    assert layer.can_half_close


def test_refused_server_sends_nothing_more() -> None:
    layer = server()
    layer.receive_data(b"GET /x HTTP/1.1\r\n\r\n")
    assert layer.data_to_send() == NOT_FOUND
    assert layer.receive_data(b"more") == []
    layer.send_data(b"x")
    layer.send_eof()
    assert layer.data_to_send() == b""
    assert layer.receive_eof() == []


def test_server_eof_inside_header_is_an_error_and_after_it_the_end() -> None:
    layer = server()
    layer.receive_data(b"GET / HT")
    with pytest.raises(HttpHeaderError):
        layer.receive_eof()
    layer = server()
    layer.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert layer.receive_eof() == [EndReceived()]


def test_server_needs_a_clock_and_config_lines_have_no_breaks() -> None:
    with pytest.raises(ConfigError):
        HttpHeaderLayer(Role.SERVER, rng=Script())
    with pytest.raises(ConfigError):
        client(request=HttpRequestConfig(headers={"X": ["a\r\nInjected: 1"]}))
    with pytest.raises(ConfigError):
        client(request=HttpRequestConfig(paths=["/\n"]))


# -- client ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [DEFAULT_RESPONSE, b"HTTP/1.1 500 Whatever\r\n\r\n", b"not even HTTP\r\n\r\n", b"\r\n\r\n"],
)
def test_client_strips_the_response_checking_nothing(response: bytes) -> None:
    events, out, error = three_ways(
        lambda: client(), response, tail=b"VMESS", tail_events=[Received(b"VMESS")]
    )
    assert (events, out, error) == ([Established(info={})], b"", None)


def test_client_gives_up_without_an_end_in_8192_bytes() -> None:
    assert run(client(), [b"x" * 8191])[2] is None
    assert run(client(), [b"x" * 8192])[2] == "HttpHeaderError"
    assert run(client(), [b"x" * 8188 + b"\r\n\r\n"])[0] == [Established(info={})]
    assert run(client(), [b"HTTP/1.1 200"], eof=True)[2] == "HttpHeaderError"


def test_client_sends_nothing_if_it_never_writes() -> None:
    layer = client()
    layer.send_eof()
    assert layer.data_to_send() == b""


# -- round trips -------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32),
    up=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5),
    down=st.lists(st.binary(min_size=1, max_size=300), max_size=5),
)
@settings(max_examples=100, deadline=None)
def test_round_trip_client_server(seed: int, up: list[bytes], down: list[bytes]) -> None:
    rng = random.Random(seed)
    request = HttpRequestConfig(paths=["/x", "/y", "/z"])
    a = HttpHeaderLayer(Role.CLIENT, rng=rng, request=request)
    b = HttpHeaderLayer(Role.SERVER, rng=rng, request=request, clock=clock)
    got_up: list[LayerEvent] = []
    for chunk in up:
        a.send_data(chunk)
        got_up += b.receive_data(a.data_to_send())
    for chunk in down:
        b.send_data(chunk)
    got_down = a.receive_data(b.data_to_send())
    events = normalize(got_up)
    assert isinstance(events[0], Established) and events[0].info["path"] in {"/x", "/y", "/z"}
    assert events[1:] == [Received(b"".join(up))]
    assert normalize(got_down) == ([Established(info={})] if down else []) + (
        [Received(b"".join(down))] if down else []
    )
    a.send_eof()
    assert b.receive_data(a.data_to_send()) == []
    assert b.receive_eof() == [EndReceived()]


# -- properties --------------------------------------------------------------------------------

SERVER_STREAM = b"POST /%61?q HTTP/1.0\r\nHost: h\r\nX: 1\r\n\r\npayload bytes"


@given(cuts=st.lists(st.integers(0, len(SERVER_STREAM)), max_size=8))
def test_server_split_anywhere_gives_the_same_result(cuts: list[int]) -> None:
    make = lambda: server(request=HttpRequestConfig(paths=["/a"]))  # noqa: E731
    assert run(make(), split_at(SERVER_STREAM, cuts)) == run(make(), [SERVER_STREAM])


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=4))
@settings(max_examples=300)
def test_server_split_anywhere_arbitrary_input(data: bytes, cuts: list[int]) -> None:
    assert run(server(), split_at(data, cuts)) == run(server(), [data])


@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.builds(lambda b: b"GET " + b, st.binary(max_size=300)),
        st.builds(lambda b: b"GET / HTTP/1.1\r\n" + b + b"\r\n\r\n", st.binary(max_size=300)),
    ),
    cuts=st.lists(st.integers(0, 600), max_size=6),
)
@settings(max_examples=400)
def test_arbitrary_bytes_raise_only_the_layers_error(data: bytes, cuts: list[int]) -> None:
    for make in (server, client):
        layer = make()
        try:
            for chunk in split_at(data, cuts):
                for event in layer.receive_data(chunk):
                    assert isinstance(event, EVENT_TYPES)
                layer.data_to_send()
            layer.receive_eof()
        except HttpHeaderError:
            pass


# -- Go's URL.Path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/ray", b"/ray"),
        (b"/ray?x=1", b"/ray"),
        (b"/r%61y", b"/ray"),
        (b"/a+b", b"/a+b"),
        (b"/a%2Fb", b"/a/b"),
        (b"//host/x", b"//host/x"),
        (b"http://h:1/p?q", b"/p"),
        (b"HTTP://h", b""),
        (b"mailto:x", b""),
        (b"*", b"*"),
        (b"/a#b", b"/a#b"),
        (b"abc", None),
        (b"", None),
        (b"/%zz", None),
        (b"/%4", None),
        (b"/\x00", None),
    ],
)
def test_request_path_is_gos_url_path(target: bytes, path: bytes | None) -> None:
    assert request_path(target) == path
