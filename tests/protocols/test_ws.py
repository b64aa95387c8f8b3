"""WebSocket layer: V2Ray 4.34's bytes (docs/transports.md 3 and 8), Xray/v2fly/sing-box early
data, three-way decoding, client<->server round trips and fuzzing."""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

import raybridge.protocols.ws as ws_module
from raybridge.errors import ConfigError
from raybridge.protocols.stream import EndReceived, Established, LayerEvent, Received, Refused
from raybridge.protocols.ws import (
    HEADERS_TOO_LARGE_REPLY,
    MALFORMED_REQUEST_REPLY,
    Role,
    WebSocketError,
    WebSocketLayer,
    canonical_header_name,
    normalize_path,
    url_host,
)
from tests.protocols.test_httpheader import (
    DATE,
    EVENT_TYPES,
    Outcome,
    bytewise,
    clock,
    normalize,
    run,
    split_at,
    three_ways,
)

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
RFC_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
NOT_FOUND = f"HTTP/1.1 404 Not Found\r\nDate: {DATE}\r\nContent-Length: 0\r\n\r\n".encode()


def go_error(status: str, body: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n"
        f"Date: {DATE}\r\nContent-Length: {len(body) + 1}\r\n\r\n{body}\n"
    ).encode()


class Counter:
    """urandom that counts 0, 1, 2, ... (so the key and the masks are known)."""

    def __init__(self) -> None:
        self.n = itertools.count()

    def __call__(self, size: int) -> bytes:
        return bytes(next(self.n) % 256 for _ in range(size))


COUNTER_KEY = base64.b64encode(bytes(range(16)))  # b"AAECAwQFBgcICQoLDA0ODw=="


def accept_for(key: bytes) -> bytes:
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1(key + guid).digest())


def masked(
    opcode: int, payload: bytes, *, key: bytes = b"\x01\x02\x03\x04", fin: bool = True
) -> bytes:
    """A client frame, written independently of the module (small payloads only)."""
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(
    target: bytes = b"/ray",
    *,
    method: bytes = b"GET",
    key: bytes = RFC_KEY,
    connection: bytes = b"Upgrade",
    upgrade: bytes = b"websocket",
    version: bytes = b"13",
    extra: bytes = b"",
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: example.test"]
    if upgrade:
        lines.append(b"Upgrade: " + upgrade)
    if connection:
        lines.append(b"Connection: " + connection)
    if key:
        lines.append(b"Sec-WebSocket-Key: " + key)
    if version:
        lines.append(b"Sec-WebSocket-Version: " + version)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def server(**kwargs: Any) -> WebSocketLayer:
    kwargs.setdefault("path", "/ray")
    return WebSocketLayer(Role.SERVER, clock=clock, **kwargs)


def client(**kwargs: Any) -> WebSocketLayer:
    kwargs.setdefault("path", "/ray")
    kwargs.setdefault("host", "example.test")
    return WebSocketLayer(Role.CLIENT, urandom=Counter(), **kwargs)


def open_server(**kwargs: Any) -> WebSocketLayer:
    layer = server(**kwargs)
    assert isinstance(layer.receive_data(upgrade_request())[0], Established)
    assert layer.data_to_send() == RFC_101
    return layer


def open_client(**kwargs: Any) -> WebSocketLayer:
    layer = client(**kwargs)
    layer.data_to_send()
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(COUNTER_KEY) + b"\r\n\r\n"
    )
    assert isinstance(layer.receive_data(response)[0], Established)
    return layer


def exchange(a: WebSocketLayer, b: WebSocketLayer) -> tuple[list[LayerEvent], list[LayerEvent]]:
    """Move bytes both ways until both are quiet: (events at a, events at b)."""
    at_a: list[LayerEvent] = []
    at_b: list[LayerEvent] = []
    while True:
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return normalize(at_a), normalize(at_b)
        if x:
            at_b += b.receive_data(x)
        if y:
            at_a += a.receive_data(y)


# -- the client's request (docs/transports.md 3.2, 8) ------------------------------------------


def test_client_request_is_v2rays_186_bytes() -> None:
    layer = client(host="ignored:1", headers={"Host": "example.test"})
    request = layer.data_to_send()
    assert request == (
        b"GET /ray HTTP/1.1\r\nHost: example.test\r\nUser-Agent: Go-http-client/1.1\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + COUNTER_KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
    )
    assert len(request) == 186
    assert base64.b64decode(COUNTER_KEY) == bytes(range(16))  # the key is urandom(16)


def test_client_request_variants() -> None:
    plain = client(path="ray", host=url_host("localhost", 22002, tls=False)).data_to_send()
    assert plain.startswith(b"GET /ray HTTP/1.1\r\nHost: localhost:22002\r\nUser-Agent: Go")
    ed = client(
        path="ray?ed=2048",
        host=url_host("localhost", 22002, tls=False),
        headers={"user-agent": "UA-X", "x-custom": "v1"},
    ).data_to_send()
    assert ed.startswith(
        b"GET /ray?ed=2048 HTTP/1.1\r\nHost: localhost:22002\r\nUser-Agent: UA-X\r\n"
    )
    assert ed.endswith(b"Upgrade: websocket\r\nX-Custom: v1\r\n\r\n")


def test_client_headers_follow_go() -> None:
    out = client(
        headers={
            "host": "",  # empty: the URL host stands
            "User-Agent": "",  # empty: no User-Agent line
            "accept": "*/*",
            "sec-websocket-protocol": "p",
            "Content-Length": "5",  # Request.Write leaves these out
            "x-multi": " a\r\nb ",
        }
    ).data_to_send()
    assert out == (
        b"GET /ray HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + COUNTER_KEY + b"\r\nSec-WebSocket-Protocol: p\r\n"
        b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nX-Multi: a  b\r\n\r\n"
    )


@pytest.mark.parametrize(
    "name",
    [
        "upgrade",
        "Connection",
        "sec-websocket-key",
        "Sec-WebSocket-Version",
        "SEC-WEBSOCKET-EXTENSIONS",
    ],
)
def test_client_refuses_protocol_headers(name: str) -> None:
    with pytest.raises(ConfigError):
        client(headers={name: "x"})


def test_client_config_errors() -> None:
    with pytest.raises(ConfigError):
        WebSocketLayer(Role.CLIENT, path="/", host="h")  # no urandom
    with pytest.raises(ConfigError):
        client(host=None)
    with pytest.raises(ConfigError):
        client(path="/%zz")
    with pytest.raises(ConfigError):
        WebSocketLayer(Role.SERVER)  # no clock


def test_client_target_escapes_like_go() -> None:
    assert client(path="/a b").data_to_send().startswith(b"GET /a%20b HTTP/1.1")
    assert client(path="/r%61y!").data_to_send().startswith(b"GET /r%61y! HTTP/1.1")
    assert client(path="/caf\u00e9?q=1").data_to_send().startswith(b"GET /caf%C3%A9?q=1 ")


def test_config_helpers() -> None:
    assert normalize_path("") == "/"
    assert normalize_path("ray") == "/ray"
    assert normalize_path("/ray?ed=1") == "/ray?ed=1"
    assert url_host("example.test", 80, tls=False) == "example.test"
    assert url_host("example.test", 443, tls=False) == "example.test:443"
    assert url_host("example.test", 443, tls=True) == "example.test"
    assert url_host("::1", 8443, tls=True) == "[::1]:8443"
    assert canonical_header_name("x-custom") == "X-Custom"
    assert canonical_header_name("SEC-WEBSOCKET-KEY") == "Sec-Websocket-Key"
    assert canonical_header_name("bad name") == "bad name"


# -- the client's side of the upgrade ----------------------------------------------------------


def test_client_holds_data_until_the_101() -> None:
    layer = client()
    layer.data_to_send()
    layer.send_data(b"first")
    layer.send_data(b"second")
    assert layer.data_to_send() == b""
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n"
        b"Connection: keep-alive, UPGRADE\r\nSec-WebSocket-Accept: "
        + accept_for(COUNTER_KEY)
        + b"\r\n\r\n"
    )
    frame = b"\x82\x05hello"  # a server frame in the same read
    events = layer.receive_data(response + frame)
    assert events == [
        Established(info={"path": "/ray", "host": "example.test"}),
        Received(b"hello"),
    ]
    out = layer.data_to_send()
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(out)
    assert [f.payload for f in proto.received_frames()] == [b"first", b"second"]
    # masked with urandom's bytes after the key: 16..19, then 20..23
    assert out[:6] == bytes.fromhex("8285") + bytes(range(16, 20))


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept_for(RFC_KEY)  # another key's
        + b"\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
def test_client_needs_101_upgrade_connection_and_the_right_accept(response: bytes) -> None:
    response = response.replace(b"ACCEPT", accept_for(COUNTER_KEY))

    def make() -> WebSocketLayer:
        layer = client()
        layer.data_to_send()
        return layer

    assert three_ways(make, response, tail=b"\x82\x00") == ([], b"", "WebSocketError")


def test_client_response_three_ways() -> None:
    def make() -> WebSocketLayer:
        layer = client()
        layer.data_to_send()
        return layer

    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(COUNTER_KEY) + b"\r\n\r\n"
    )
    events = three_ways(make, response, tail=b"\x82\x02ab", tail_events=[Received(b"ab")])[0]
    assert events == [Established(info={"path": "/ray", "host": "example.test"})]


def test_client_eof() -> None:
    layer = client()
    with pytest.raises(WebSocketError):
        layer.receive_eof()
    layer = open_client()
    assert layer.receive_eof() == [EndReceived()]
    assert layer.receive_eof() == []


def test_client_answers_server_ping_and_close_masked() -> None:
    layer = open_client()
    assert layer.receive_data(b"\x89\x02hi") == []
    assert layer.data_to_send() == bytes.fromhex("8a82") + bytes(range(16, 20)) + bytes(
        (ord("h") ^ 16, ord("i") ^ 17)
    )
    assert layer.receive_data(b"\x88\x05\x03\xe8bye") == [EndReceived()]
    assert layer.data_to_send() == bytes.fromhex("8882") + bytes(range(20, 24)) + bytes(
        (0x03 ^ 20, 0xE8 ^ 21)
    )
    layer.send_data(b"late")  # after the close: dropped
    assert layer.data_to_send() == b""


def test_client_refuses_masked_server_frames() -> None:
    layer = open_client()
    with pytest.raises(WebSocketError, match="bad MASK"):
        layer.receive_data(masked(0x2, b"x"))


def test_client_eof_before_101_closes_after_held_data() -> None:
    layer = client()
    layer.data_to_send()
    layer.send_data(b"x")
    layer.send_eof()
    assert layer.data_to_send() == b""
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(COUNTER_KEY) + b"\r\n\r\n"
    )
    layer.receive_data(response)
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(layer.data_to_send())
    frames = list(proto.received_frames())
    assert [f.payload for f in frames] == [b"x", (1000, "")]


# -- the server's side of the upgrade (docs/transports.md 3.4) ---------------------------------


def test_server_101_for_the_rfc_key() -> None:
    events, out, error = three_ways(
        server, upgrade_request(), tail=masked(0x2, b"VMESS"), tail_events=[Received(b"VMESS")]
    )
    assert (events, out, error) == (
        [Established(info={"path": "/ray", "host": "example.test"})],
        RFC_101,
        None,
    )


@pytest.mark.parametrize(
    "target", [b"/ray", b"/ray?x=1", b"/r%61y", b"/ray?", b"http://example.test/ray"]
)
def test_server_path_matches_gos_url_path_exactly(target: bytes) -> None:
    events = run(server(), [upgrade_request(target)])[0]
    assert events == [Established(info={"path": "/ray", "host": "example.test"})]


@pytest.mark.parametrize("target", [b"/ray/abc", b"/ray/", b"/", b"/raY", b"/ray%3Fx", b"/rayaGk"])
def test_server_wrong_path_gets_v2rays_404(target: bytes) -> None:
    events, out, error = three_ways(server, upgrade_request(target), tail=masked(0x2, b"x"))
    assert error is None and out == NOT_FOUND
    assert len(events) == 1 and isinstance(events[0], Refused)
    assert events[0].reason.startswith("wrong path")


def test_server_wrong_path_comes_before_everything_else() -> None:
    assert run(server(), [b"POST /x HTTP/1.1\r\nHost: h\r\n\r\n"])[1] == NOT_FOUND


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        (upgrade_request(connection=b""), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(connection=b"keep-alive"), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(upgrade=b""), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(upgrade=b"h2c"), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(method=b"POST"), go_error("405 Method Not Allowed", "Method Not Allowed")),
        (upgrade_request(method=b"POST", upgrade=b""), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(version=b"8"), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(version=b""), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(key=b""), go_error("400 Bad Request", "Bad Request")),
        (upgrade_request(extra=b"X: " + b"a" * 7000 + b"\r\n"), HEADERS_TOO_LARGE_REPLY),
        (b"GARBAGE\r\n\r\n", MALFORMED_REQUEST_REPLY),
        (b"GET /ray HTTP/1.1\r\n\r\n", MALFORMED_REQUEST_REPLY),  # HTTP/1.1 without Host
        (b"GET /r%zzy HTTP/1.1\r\nHost: h\r\n\r\n", MALFORMED_REQUEST_REPLY),
    ],
)
def test_server_refusals_are_gos_answers(request_bytes: bytes, answer: bytes) -> None:
    events, out, error = three_ways(server, request_bytes, tail=masked(0x2, b"x"))
    assert error is None and out == answer
    assert len(events) == 1 and isinstance(events[0], Refused)


def test_server_header_cap_is_configurable_and_counts_the_whole_head() -> None:
    head = upgrade_request(extra=b"X: " + b"a" * 300 + b"\r\n")
    assert isinstance(run(server(max_header_bytes=len(head)), [head])[0][0], Established)
    assert run(server(max_header_bytes=len(head) - 1), [head])[1] == HEADERS_TOO_LARGE_REPLY
    assert run(server(max_header_bytes=len(head) - 1), bytewise(head))[1] == HEADERS_TOO_LARGE_REPLY


@pytest.mark.parametrize(
    ("xff", "source"),
    [
        (b"1.2.3.4", ("1.2.3.4", 0)),
        (b"1.2.3.4, 10.0.0.1", ("1.2.3.4", 0)),
        (b" 2001:db8::1 ,1.1.1.1", ("2001:db8::1", 0)),
        (b"[2001:db8::1]", ("2001:db8::1", 0)),
        (b"::ffff:1.2.3.4", ("1.2.3.4", 0)),
        (b"example.test", None),
        (b"1.2.3.4:80", None),
        (b"fe80::1%eth0", None),
        (b"", None),
    ],
)
def test_server_source_from_x_forwarded_for(xff: bytes, source: tuple[str, int] | None) -> None:
    request = upgrade_request(
        extra=b"X-Forwarded-For: " + xff + b"\r\nX-Forwarded-For: 9.9.9.9\r\n"
    )
    events = run(server(), [request])[0]
    assert isinstance(events[0], Established)
    assert events[0].info.get("source") == source


def test_server_takes_data_pipelined_behind_the_request() -> None:
    events, out, _ = run(server(), [upgrade_request() + masked(0x2, b"early") + masked(0x2, b"!")])
    assert events == [
        Established(info={"path": "/ray", "host": "example.test"}),
        Received(b"early!"),
    ]
    assert out == RFC_101


def test_server_eof() -> None:
    layer = server()
    layer.receive_data(b"GET /ray HT")
    with pytest.raises(WebSocketError):
        layer.receive_eof()
    layer = open_server()
    assert layer.receive_eof() == [EndReceived()]


# -- frames (docs/transports.md 3.3, 8) --------------------------------------------------------


def test_server_pong_to_ping() -> None:
    layer = open_server()
    assert layer.receive_data(masked(0x9, b"hi")) == []
    assert layer.data_to_send() == bytes.fromhex("8a026869")
    assert layer.receive_data(masked(0xA, b"ignored")) == []  # a pong is ignored
    assert layer.data_to_send() == b""


def test_server_echoes_close_code_without_reason() -> None:
    layer = open_server()
    assert layer.receive_data(masked(0x2, b"last") + masked(0x8, b"\x03\xe8bye")) == [
        Received(b"last"),
        EndReceived(),
    ]
    assert layer.data_to_send() == bytes.fromhex("880203e8")
    assert layer.receive_data(masked(0x2, b"after the close")) == []
    assert layer.receive_eof() == []
    layer.send_data(b"late")
    layer.send_eof()
    assert layer.data_to_send() == b""


def test_server_echoes_an_empty_close_empty() -> None:
    layer = open_server()
    assert layer.receive_data(masked(0x8, b"")) == [EndReceived()]
    assert layer.data_to_send() == bytes.fromhex("8800")


def test_server_unmasked_frame_gets_close_1002_bad_mask() -> None:
    layer = open_server()
    with pytest.raises(WebSocketError, match="bad MASK"):
        layer.receive_data(b"\x82\x02hi")
    assert layer.data_to_send() == bytes.fromhex("880a03ea") + b"bad MASK"
    assert layer.receive_data(masked(0x2, b"x")) == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked(0x3, b"x"), 1002),  # a reserved opcode
        (b"\x82", None),  # half a header: it waits
        (bytes((0xC2,)) + masked(0x2, b"x")[1:], 1002),  # RSV1 without an extension
        (masked(0x9, b"x", fin=False), 1002),  # a fragmented control frame
        (masked(0x0, b"x"), 1002),  # a continuation with nothing to continue
        (masked(0x8, b"\x03"), 1002),  # a one-byte close
        (masked(0x8, b"\x03\xed"), 1002),  # close 1005 is local-only
        (masked(0x1, b"\xff"), 1007),  # a text frame must be UTF-8 (wsproto's check)
    ],
)
def test_server_protocol_errors_close_then_raise(frame: bytes, code: int | None) -> None:
    layer = open_server()
    if code is None:  # a lone first byte: just waits
        assert layer.receive_data(frame) == []
        return
    with pytest.raises(WebSocketError):
        layer.receive_data(frame)
    out = layer.data_to_send()
    assert out[0] == 0x88 and int.from_bytes(out[2:4], "big") == code


def test_server_message_type_is_ignored_and_fragments_are_concatenated() -> None:
    foreign = FrameProtocol(client=True, extensions=[])
    stream = (
        bytes(foreign.send_data("h\u00e9llo "))  # text is data too
        + bytes(foreign.send_data(b"frag", fin=False))
        + bytes(foreign.ping(b"p"))  # a control frame between fragments
        + bytes(foreign.send_data(b"mented", fin=True))
        + masked(0x2, b"")  # an empty frame gives nothing
    )
    layer = open_server()
    events, out, error = run(layer, bytewise(stream))
    assert events == [Received("h\u00e9llo fragmented".encode())]
    assert (out, error) == (bytes.fromhex("8a0170"), None)


def test_server_frames_of_every_length_form() -> None:
    layer = open_server()
    for size in (0, 125, 126, 65535, 65536, 200_000):
        payload = bytes(i % 251 for i in range(size))
        frame = bytes(FrameProtocol(client=True, extensions=[]).send_data(payload))
        assert normalize(layer.receive_data(frame)) == ([Received(payload)] if size else [])
        layer.send_data(payload)
        out = layer.data_to_send()
        reader = FrameProtocol(client=True, extensions=[])
        reader.receive_bytes(out)
        assert [f.payload for f in reader.received_frames()] == ([payload] if size else [])


def test_send_eof_is_close_1000_and_no_half_close() -> None:
    layer = open_server()
    assert not layer.can_half_close
    layer.send_eof()
    layer.send_eof()
    assert layer.data_to_send() == bytes.fromhex("880203e8")
    assert layer.receive_data(masked(0x2, b"still read")) == [Received(b"still read")]
    assert layer.receive_data(masked(0x8, b"\x03\xe8")) == [EndReceived()]
    assert layer.data_to_send() == b""  # our close was already sent: no second one
    layer = server()
    layer.send_eof()  # before the upgrade: nothing to close
    layer.receive_data(upgrade_request())
    assert layer.data_to_send() == RFC_101


# -- early data (Xray, v2fly 4.37+/v5, sing-box) -----------------------------------------------


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def test_early_data_in_sec_websocket_protocol_xray_form() -> None:
    value = b64url(b"\x00\x01VMess header\xff")
    request = upgrade_request(extra=b"Sec-WebSocket-Protocol: " + value + b"\r\n")
    events, out, error = three_ways(
        server, request, tail=masked(0x2, b"+rest"), tail_events=[Received(b"+rest")]
    )
    assert events == [
        Established(info={"path": "/ray", "host": "example.test", "early_data": 15}),
        Received(b"\x00\x01VMess header\xff"),
    ]
    assert out == RFC_101[:-2] + b"Sec-WebSocket-Protocol: " + value + b"\r\n\r\n"
    assert error is None


def test_early_data_standard_base64_is_mapped_as_xray_does() -> None:
    data = b"\xfb\xff\xbf>?"  # gives + and / in standard base64
    value = base64.b64encode(data)
    assert b"+" in value or b"/" in value
    request = upgrade_request(extra=b"Sec-WebSocket-Protocol: " + value + b"\r\n")
    events, out, _ = run(server(), [request])
    assert events[1:] == [Received(data)]
    assert b"Sec-WebSocket-Protocol: " + value + b"\r\n" in out  # echoed as sent


@pytest.mark.parametrize("value", [b"chat, superchat", b"a", b"!!!!", b"="])
def test_early_data_that_does_not_decode_is_ignored(value: bytes) -> None:
    request = upgrade_request(extra=b"Sec-WebSocket-Protocol: " + value + b"\r\n")
    events, out, _ = run(server(), [request])
    assert events == [Established(info={"path": "/ray", "host": "example.test"})]
    assert out == RFC_101


def test_early_data_header_form_keeps_the_exact_path() -> None:
    request = upgrade_request(b"/other", extra=b"Sec-WebSocket-Protocol: aGk\r\n")
    assert run(server(), [request])[1] == NOT_FOUND


def test_early_data_custom_header_is_not_echoed() -> None:
    request = upgrade_request(extra=b"X-Ed: aGk\r\nSec-WebSocket-Protocol: aGk\r\n")
    events, out, _ = run(server(early_data_header="X-Ed"), [request])
    assert events[1:] == [Received(b"hi")]
    assert out == RFC_101
    events, out, _ = run(server(early_data_header=None), [request])
    assert events == [Established(info={"path": "/ray", "host": "example.test"})]


@pytest.mark.parametrize(
    ("target", "data"),
    [
        (b"/ray" + b64url(b"hello"), b"hello"),  # sing-box / v2fly 4.37 path mode
        (b"/ray" + b64url(b"hello") + b"?ed=2048", b"hello"),
        (b"/ray?ed=2048", None),  # old Xray's query: not data
        (b"/ray", None),
    ],
)
def test_early_data_in_path_when_enabled(target: bytes, data: bytes | None) -> None:
    events, out, _ = three_ways(lambda: server(early_data_in_path=True), upgrade_request(target))
    assert isinstance(events[0], Established)
    assert events[1:] == ([Received(data)] if data else [])
    assert out == RFC_101


def test_early_data_in_path_falls_back_to_the_header_and_refuses_bad_suffixes() -> None:
    request = upgrade_request(b"/ray", extra=b"Sec-WebSocket-Protocol: aGk\r\n")
    assert run(server(early_data_in_path=True), [request])[0][1:] == [Received(b"hi")]
    bad = run(server(early_data_in_path=True), [upgrade_request(b"/ray/abc")])
    assert bad[0] == [Refused("bad early data in path")]
    assert (
        bad[1] == f"HTTP/1.1 400 Bad Request\r\nDate: {DATE}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert run(server(early_data_in_path=True), [upgrade_request(b"/x")])[1] == NOT_FOUND
    assert run(server(), [upgrade_request(b"/ray" + b64url(b"hello"))])[1] == NOT_FOUND


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_in_memory() -> None:
    a = client()
    b = server()
    a.send_data(b"hello")
    at_a, at_b = exchange(a, b)
    assert at_a == [Established(info={"path": "/ray", "host": "example.test"})]
    assert at_b == [Established(info={"path": "/ray", "host": "example.test"}), Received(b"hello")]
    big = bytes(range(256)) * 300
    b.send_data(big)
    a.send_data(big[::-1])
    at_a, at_b = exchange(a, b)
    assert (at_a, at_b) == ([Received(big)], [Received(big[::-1])])
    a.send_eof()  # close 1000 from the client, echoed by the server
    at_a, at_b = exchange(a, b)
    assert (at_a, at_b) == ([EndReceived()], [EndReceived()])


@given(
    up=st.lists(st.binary(min_size=1, max_size=3000), max_size=6),
    down=st.lists(st.binary(min_size=1, max_size=3000), max_size=6),
    server_closes=st.booleans(),
)
@settings(max_examples=100, deadline=None)
def test_round_trip_property(up: list[bytes], down: list[bytes], server_closes: bool) -> None:
    a, b = client(), server()
    for chunk in up:
        a.send_data(chunk)
    at_a, at_b = exchange(a, b)
    for chunk in down:
        b.send_data(chunk)
    more_a, more_b = exchange(a, b)
    (b if server_closes else a).send_eof()
    end_a, end_b = exchange(a, b)
    assert normalize(at_b + more_b + end_b)[1:] == normalize(
        [*([Received(b"".join(up))] if up else []), EndReceived()]
    )
    assert normalize(at_a + more_a + end_a)[1:] == normalize(
        [*([Received(b"".join(down))] if down else []), EndReceived()]
    )


# -- split anywhere, arbitrary bytes -----------------------------------------------------------


def client_stream(payloads: list[bytes], *, close: bool = True) -> bytes:
    a = client()
    for payload in payloads:
        a.send_data(payload)
    request = a.data_to_send()
    response = (
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: "
    )
    a.receive_data(response + accept_for(COUNTER_KEY) + b"\r\n\r\n")
    if close:
        a.send_eof()
    return request + a.data_to_send()


STREAM = client_stream([b"one", b"two" * 100, bytes(70_000)])


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=10))
@settings(max_examples=200, deadline=None)
def test_server_split_anywhere_gives_the_same_result(cuts: list[int]) -> None:
    whole = run(server(), [STREAM])
    assert whole[0][-1] == EndReceived()
    assert run(server(), split_at(STREAM, cuts)) == whole


SERVER_STREAM = RFC_101.replace(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", accept_for(COUNTER_KEY)) + (
    b"\x82\x03one\x89\x01p\x82\x7e\x01\x00" + bytes(256) + b"\x81\x02ok\x88\x02\x03\xe8"
)


@given(cuts=st.lists(st.integers(0, len(SERVER_STREAM)), max_size=10))
@settings(max_examples=200, deadline=None)
def test_client_split_anywhere_gives_the_same_result(cuts: list[int]) -> None:
    def make() -> WebSocketLayer:
        layer = client()
        layer.data_to_send()
        return layer

    whole = run(make(), [SERVER_STREAM])
    assert whole[0][1:] == [Received(b"one" + bytes(256) + b"ok"), EndReceived()]
    assert run(make(), split_at(SERVER_STREAM, cuts)) == whole


def check_only_websocket_error(layer: WebSocketLayer, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            for event in layer.receive_data(chunk):
                assert isinstance(event, EVENT_TYPES)
            layer.data_to_send()
        for event in layer.receive_eof():
            assert isinstance(event, EVENT_TYPES)
    except WebSocketError:
        pass


requestish = st.one_of(
    st.binary(max_size=500),
    st.builds(lambda b: b"GET /ray HTTP/1.1\r\n" + b, st.binary(max_size=300)),
    st.builds(lambda b: upgrade_request(extra=b), st.binary(max_size=200)),
    st.builds(lambda b: upgrade_request() + b, st.binary(max_size=300)),
)


@given(data=requestish, cuts=st.lists(st.integers(0, 600), max_size=6))
@settings(max_examples=400, deadline=None)
def test_arbitrary_bytes_to_a_server_raise_only_websocket_error(
    data: bytes, cuts: list[int]
) -> None:
    check_only_websocket_error(server(), split_at(data, cuts))
    check_only_websocket_error(server(early_data_in_path=True), split_at(data, cuts))


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
@settings(max_examples=300, deadline=None)
def test_arbitrary_frames_raise_only_websocket_error(data: bytes, cuts: list[int]) -> None:
    check_only_websocket_error(open_server(), split_at(data, cuts))
    check_only_websocket_error(open_client(), split_at(data, cuts))
    whole: Outcome = run(open_server(), [data])
    if whole[2] is None:  # valid frame streams decode the same however they are split
        assert run(open_server(), split_at(data, cuts)) == whole


@given(data=st.binary(max_size=400))
def test_arbitrary_responses_to_a_client_raise_only_websocket_error(data: bytes) -> None:
    layer = client()
    layer.data_to_send()
    check_only_websocket_error(layer, [b"HTTP/1.1 101 x\r\n" + data])


# -- the fast path against wsproto alone -------------------------------------------------------


def raw_frame(first: int, payload: bytes, mask: bytes | None, form: int) -> bytes:
    """Any frame, good or bad: ``form`` 0 is the shortest length, 2 and 8 force those."""
    n = len(payload)
    if form == 0:
        form = 0 if n < 126 else 2 if n < 65536 else 8
    bit = 0x80 if mask is not None else 0
    if form == 0:
        head = bytes((first, bit | n))
    elif form == 2:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


good_mask = st.binary(min_size=4, max_size=4)
frames = st.lists(
    st.builds(
        raw_frame,
        # mostly what peers send, then fragments, text, control frames, anything
        first=st.one_of(
            st.just(0x82),
            st.just(0x82),
            st.sampled_from([0x02, 0x80, 0x00, 0x81, 0x01, 0x89, 0x8A]),
            st.sampled_from([0x88, 0xC2, 0x83, 0x09]),
            st.integers(0, 255),
        ),
        payload=st.one_of(
            st.binary(max_size=200), st.just(b"\x03\xe8"), st.just("\u00e9".encode())
        ),
        mask=st.one_of(good_mask, good_mask, good_mask, st.none()),
        form=st.sampled_from([0, 0, 0, 0, 0, 2, 8]),
    ),
    max_size=8,
)
# messages that are well-formed more often: whole, fragmented, with control frames between
messages = st.lists(
    st.one_of(
        st.builds(lambda p, m: [raw_frame(0x82, p, m, 0)], st.binary(max_size=300), good_mask),
        st.builds(
            lambda ps, m: [
                raw_frame((0x02 if i == 0 else 0x00) | (0x80 if i == len(ps) - 1 else 0), p, m, 0)
                for i, p in enumerate(ps)
            ],
            st.lists(st.binary(max_size=50), min_size=1, max_size=4),
            good_mask,
        ),
        st.builds(lambda p, m: [raw_frame(0x89, p, m, 0)], st.binary(max_size=125), good_mask),
        st.builds(lambda m: [raw_frame(0x81, "t\u00e9xt".encode(), m, 0)], good_mask),
    ),
    max_size=6,
).map(lambda groups: [frame for group in groups for frame in group])


def reference(stream: bytes) -> tuple[bytes, bool, bool]:
    """(data, closed, failed) as wsproto's FrameProtocol alone decodes a client's frames."""
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(stream)
    data = bytearray()
    try:
        for frame in proto.received_frames():
            if isinstance(frame.payload, tuple):
                return bytes(data), True, False
            if frame.opcode.name in ("TEXT", "BINARY"):
                payload = frame.payload
                data += payload.encode() if isinstance(payload, str) else payload
    except Exception:  # ParseFailed
        return bytes(data), False, True
    return bytes(data), False, False


@given(parts=st.one_of(frames, messages), cuts=st.lists(st.integers(0, 2000), max_size=6))
@settings(max_examples=500, deadline=None)
def test_fast_path_decodes_as_wsproto_does(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    data, closed, failed = reference(stream)
    events, _, error = run(open_server(), split_at(stream, cuts))
    assert (error is not None) == failed
    if not failed:
        got = b"".join(e.data for e in events if isinstance(e, Received))
        assert got == data
        assert (EndReceived() in events) == closed


# -- the XOR ----------------------------------------------------------------------------------


@given(st.binary(max_size=4096), st.binary(min_size=4, max_size=4), st.integers(0, 3))
def test_mask_paths_agree(data: bytes, mask: bytes, start: int) -> None:
    # websockets' C apply_mask (the `fast` extra) and the translate fallback give the same
    # bytes, on bytes and on a view into a larger buffer, and masking twice is the identity.
    view = memoryview(b"x" * start + data)[start:]
    expected = bytes(a ^ mask[i % 4] for i, a in enumerate(data))
    assert bytes(ws_module._xor_translate(view, mask)) == expected
    assert bytes(ws_module._xor(view, mask)) == expected
    assert bytes(ws_module._xor(ws_module._xor(data, mask), mask)) == data


def test_the_c_mask_is_used_when_installed() -> None:
    pytest.importorskip("websockets.speedups")
    assert ws_module._apply_mask is not None
