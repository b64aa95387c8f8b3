"""The HTTP/2 transport's sans-IO side (protocols/h2stream.py): client and server wrappers
wired in memory, and raw h2/hyperframe peers for the wire details (docs/transports.md 4)."""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Callable, Iterable

import h2.config
import h2.connection
import h2.events
import hpack
import hyperframe.frame as hf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raybridge.errors import LocalProtocolError
from raybridge.protocols import h2stream
from raybridge.protocols.h2stream import (
    PREFACE,
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
from raybridge.protocols.stream import LayerError

NOW = 1796156581.0  # Tue, 01 Dec 2026 20:23:01 GMT
DATE = b"Tue, 01 Dec 2026 20:23:01 GMT"
MB = 1 << 20


def counter_urandom() -> Callable[[int], bytes]:
    """Deterministic "randomness": 0, 1, 2, ... as big-endian integers."""
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def client(**kw: object) -> H2StreamConnection:
    return H2StreamConnection(Role.CLIENT, urandom=counter_urandom(), **kw)  # type: ignore[arg-type]


def server(
    hosts: Iterable[str] = ("a.test",), path: str = "/ray", **kw: object
) -> H2StreamConnection:
    return H2StreamConnection(
        Role.SERVER,
        hosts=list(hosts),
        path=path,
        clock=lambda: NOW,
        **kw,  # type: ignore[arg-type]
    )


def move(a: H2StreamConnection, b: H2StreamConnection) -> tuple[int, list[H2Event], list[H2Event]]:
    """Pump ``a`` and feed what it sends to ``b``: (bytes, ``a``'s events, ``b``'s events)."""
    mine = a.pump()
    data = a.data_to_send()
    return len(data), mine, b.receive_data(data) if data else []


class Pair:
    """A client and a server wired in memory; readers take data at once unless paused."""

    def __init__(self, c: H2StreamConnection | None = None, s: H2StreamConnection | None = None):
        self.c = c or client()
        self.s = s or server()
        self.c_events: list[H2Event] = []
        self.s_events: list[H2Event] = []
        self.paused: set[tuple[str, int]] = set()
        self.received: dict[tuple[str, int], bytearray] = {}

    def _take(self, side: str, conn: H2StreamConnection, events: list[H2Event]) -> None:
        for event in events:
            if type(event) is StreamData:
                key = (side, event.stream_id)
                self.received.setdefault(key, bytearray()).extend(event.data)
                if key not in self.paused:
                    conn.consumed(event.stream_id, len(event.data))

    def settle(self, rounds: int = 1000) -> None:
        for _ in range(rounds):
            n1, mine, theirs = move(self.c, self.s)
            self.c_events += mine
            self._take("s", self.s, theirs)
            self.s_events += theirs
            n2, mine, theirs = move(self.s, self.c)
            self.s_events += mine
            self._take("c", self.c, theirs)
            self.c_events += theirs
            if not n1 and not n2:
                return
        raise AssertionError("the connections never went quiet")

    def open(self, path: str = "/ray", hosts: tuple[str, ...] = ("a.test",)) -> int:
        sid = self.c.open_stream(path, list(hosts))
        self.settle()
        return sid


def frames(data: bytes) -> list[hf.Frame]:
    out = []
    view = memoryview(data)
    while view:
        frame, length = hf.Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def raw_server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    return conn


def raw_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


# -- the wire: V2Ray's preface, HEADERS and answers --------------------------------------------
def test_client_preface_is_v2rays() -> None:
    data = client().data_to_send()
    assert data.startswith(PREFACE)
    settings_frame, window = frames(data[len(PREFACE) :])
    assert isinstance(settings_frame, hf.SettingsFrame)
    assert list(settings_frame.settings.items()) == [(2, 0), (4, 4194304), (6, 10485760)]
    assert isinstance(window, hf.WindowUpdateFrame)
    assert (window.stream_id, window.window_increment) == (0, 1073741824)


def test_client_max_frame_size_is_added_last() -> None:
    settings_frame = frames(client(max_frame_size=MB).data_to_send()[len(PREFACE) :])[0]
    assert isinstance(settings_frame, hf.SettingsFrame)
    assert list(settings_frame.settings.items())[-1] == (5, MB)


def test_client_headers_are_v2rays() -> None:
    conn = client()
    conn.data_to_send()
    sid = conn.open_stream("ray", ["a.test", "b.test", "c.test"])
    (headers,) = frames(conn.data_to_send())
    assert isinstance(headers, hf.HeadersFrame)
    assert headers.stream_id == sid == 1
    assert "END_HEADERS" in headers.flags and "END_STREAM" not in headers.flags
    assert hpack.Decoder().decode(headers.data, raw=True) == [
        (b":authority", b"a.test"),  # urandom gave 0: the first host
        (b":method", b"PUT"),
        (b":path", b"/ray"),
        (b":scheme", b"https"),
        (b"accept-encoding", b"identity"),
        (b"user-agent", b"Go-http-client/2.0"),
    ]


def test_client_authority_is_a_random_pick_and_defaults_to_example_com() -> None:
    conn = client()
    picks = [conn.pick_host(["a", "b", "c"]) for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]  # urandom: 0, 1, 2, ... mod 3
    assert conn.pick_host([]) == "www.example.com"
    decoder = hpack.Decoder()
    conn.data_to_send()
    conn.open_stream("/x", [])
    (headers,) = frames(conn.data_to_send())
    assert decoder.decode(headers.data, raw=True)[0] == (b":authority", b"www.example.com")


def test_client_path_is_escaped_like_go() -> None:
    conn = client()
    conn.data_to_send()
    conn.open_stream("/ray?ed=2048 x", "h")
    (headers,) = frames(conn.data_to_send())
    assert (b":path", b"/ray%3Fed=2048%20x") in hpack.Decoder().decode(headers.data, raw=True)


def test_server_preface_waits_for_the_client_and_is_v2rays() -> None:
    conn = server()
    assert conn.data_to_send() == b""
    conn.receive_data(client().data_to_send())
    settings_frame, window, ack = frames(conn.data_to_send())
    assert isinstance(settings_frame, hf.SettingsFrame)
    assert list(settings_frame.settings.items()) == [
        (5, 1048576),
        (3, 250),
        (6, 1048896),
        (4, 1048576),
    ]
    assert isinstance(window, hf.WindowUpdateFrame)
    assert (window.stream_id, window.window_increment) == (0, 983041)
    assert isinstance(ack, hf.SettingsFrame) and "ACK" in ack.flags


def server_answer(path: str = "/ray", authority: str = "a.test") -> tuple[list[hf.Frame], list]:
    """A raw h2 client's request to our server: the frames of the answer, and our events."""
    peer = raw_client()
    conn = server()
    conn.receive_data(peer.data_to_send())
    peer.receive_data(conn.data_to_send())
    peer.send_headers(
        1, [(":method", "PUT"), (":path", path), (":scheme", "https"), (":authority", authority)]
    )
    events = conn.receive_data(peer.data_to_send())
    return frames(conn.data_to_send()), events


def test_server_200_is_v2rays_and_immediate() -> None:
    answer, events = server_answer("/ray/sub")
    headers_frames = [f for f in answer if isinstance(f, hf.HeadersFrame)]
    assert len(headers_frames) == 1 and headers_frames[0].stream_id == 1
    assert "END_STREAM" not in headers_frames[0].flags
    assert hpack.Decoder().decode(headers_frames[0].data, raw=True) == [
        (b":status", b"200"),
        (b"cache-control", b"no-store"),
        (b"date", DATE),
    ]
    assert events == [StreamOpened(stream_id=1, path="/ray/sub", authority="a.test")]


@pytest.mark.parametrize(
    ("path", "authority", "why"),
    [
        ("/ray", "b.test", "host 'b.test'"),
        ("/ray", "a.test:443", "host 'a.test:443'"),  # port-sensitive, as V2Ray
        ("/ra", "a.test", "does not start with '/ray'"),
        ("/other", "a.test", "does not start with '/ray'"),
    ],
)
def test_server_404_is_v2rays(path: str, authority: str, why: str) -> None:
    answer, events = server_answer(path, authority)
    kinds = [(type(f).__name__, f.stream_id) for f in answer if f.stream_id]
    assert kinds == [("HeadersFrame", 1), ("RstStreamFrame", 1)]
    headers, reset = (f for f in answer if f.stream_id)
    assert "END_STREAM" in headers.flags
    assert hpack.Decoder().decode(headers.data, raw=True) == [
        (b":status", b"404"),
        (b"content-length", b"0"),
        (b"date", DATE),
    ]
    assert reset.error_code == ErrorCodes.NO_ERROR
    (refused,) = events
    assert isinstance(refused, StreamRefused) and why in refused.reason
    assert (refused.stream_id, refused.path, refused.authority) == (1, path, authority)


@pytest.mark.parametrize("path", ["/ray", "/rayxyz", "/ray?x=1", "/r%61y", "/ray/%7e"])
def test_server_path_is_a_decoded_prefix(path: str) -> None:
    _answer, events = server_answer(path)
    assert [type(e) for e in events] == [StreamOpened]


@pytest.mark.parametrize("path", ["/ray%zz", "ray", "*"])
def test_server_malformed_path_is_reset(path: str) -> None:
    answer, events = server_answer(path)
    assert [type(f).__name__ for f in answer if f.stream_id] == ["RstStreamFrame"]
    assert answer[-1].error_code == ErrorCodes.PROTOCOL_ERROR
    assert [type(e) for e in events] == [StreamRefused]


def test_server_empty_host_list_means_www_example_com() -> None:
    for authority, kind in [("www.example.com", StreamOpened), ("a.test", StreamRefused)]:
        peer = raw_client()
        conn = server(hosts=())
        conn.receive_data(peer.data_to_send())
        peer.send_headers(
            1,
            [
                (":method", "PUT"),
                (":path", "/ray"),
                (":scheme", "https"),
                (":authority", authority),
            ],
        )
        assert [type(e) for e in conn.receive_data(peer.data_to_send())] == [kind]


def test_server_takes_host_header_and_any_method() -> None:
    peer = raw_client()
    conn = server()
    conn.receive_data(peer.data_to_send())
    peer.send_headers(
        1, [(":method", "GET"), (":path", "/ray"), (":scheme", "http"), ("host", "a.test")]
    )
    events = conn.receive_data(peer.data_to_send())
    assert events == [StreamOpened(stream_id=1, path="/ray", authority="a.test")]


@pytest.mark.parametrize(
    ("xff", "source"),
    [
        ("203.0.113.5, 10.0.0.1", "203.0.113.5"),
        ("[2001:db8::1]", "2001:db8::1"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("unknown, 10.0.0.1", None),
        ("", None),
    ],
)
def test_server_forwarded_for(xff: str, source: str | None) -> None:
    peer = raw_client()
    conn = server()
    conn.receive_data(peer.data_to_send())
    headers = [
        (":method", "PUT"),
        (":path", "/ray"),
        (":scheme", "https"),
        (":authority", "a.test"),
    ]
    if xff:
        headers.append(("x-forwarded-for", xff))
    peer.send_headers(1, headers)
    (opened,) = conn.receive_data(peer.data_to_send())
    assert isinstance(opened, StreamOpened) and opened.forwarded_for == source


# -- streams end to end --------------------------------------------------------------------------
def test_data_waits_for_the_200() -> None:
    pair = Pair()
    sid = pair.c.open_stream("/ray", ["a.test"])
    pair.c.send_data(sid, b"early")
    pair.c.end_stream(sid)
    pair.c.pump()
    sent = frames(pair.c.data_to_send()[len(PREFACE) :])
    assert not [f for f in sent if isinstance(f, hf.DataFrame)]
    assert pair.c.buffered(sid) == 5
    # Now the server's answer (the 200) arrives; only then does the data go.
    pair.s.receive_data(PREFACE + b"".join(f.serialize() for f in sent))
    answer = pair.s.data_to_send()
    events = pair.c.receive_data(answer)
    assert events == [StreamOpened(stream_id=sid, path="/ray", authority="a.test")]
    pair.c.pump()
    data_frames = [f for f in frames(pair.c.data_to_send()) if isinstance(f, hf.DataFrame)]
    assert [(f.data, "END_STREAM" in f.flags) for f in data_frames] == [(b"early", True)]


def test_a_stream_both_ways_then_closed() -> None:
    pair = Pair()
    sid = pair.open()
    assert pair.s_events == [StreamOpened(stream_id=sid, path="/ray", authority="a.test")]
    assert pair.c_events == [StreamOpened(stream_id=sid, path="/ray", authority="a.test")]
    pair.c.send_data(sid, b"up" * 1000)
    pair.s.send_data(sid, b"down" * 1000)
    pair.c.end_stream(sid)
    pair.settle()
    pair.s.end_stream(sid)
    pair.settle()
    assert pair.received[("s", sid)] == b"up" * 1000
    assert pair.received[("c", sid)] == b"down" * 1000
    # The server saw the client's end, then its own END_STREAM finished the stream; the
    # client saw the server's end after its own.
    assert pair.s_events[1:] == [
        StreamData(stream_id=sid, data=b"up" * 1000),
        StreamEnded(stream_id=sid),
        StreamClosed(stream_id=sid),
    ]
    assert [type(e) for e in pair.c_events[1:] if type(e) is not StreamData] == [
        StreamEnded,
        StreamClosed,
    ]
    assert pair.s.stream_count == pair.c.stream_count == 0


def test_client_close_sends_end_then_cancel() -> None:
    pair = Pair()
    sid = pair.open()
    pair.c.send_data(sid, b"x")
    pair.c.close_stream(sid)
    events = pair.c.pump()
    assert events == [StreamClosed(stream_id=sid)]
    sent = frames(pair.c.data_to_send())
    assert [(type(f).__name__, "END_STREAM" in f.flags) for f in sent] == [
        ("DataFrame", True),
        ("RstStreamFrame", False),
    ]
    assert sent[-1].error_code == ErrorCodes.CANCEL


def test_server_close_resets_with_no_error() -> None:
    pair = Pair()
    sid = pair.open()
    pair.s.close_stream(sid)
    assert pair.s.pump() == [StreamClosed(stream_id=sid)]
    sent = frames(pair.s.data_to_send())
    assert [type(f).__name__ for f in sent] == ["DataFrame", "RstStreamFrame"]
    assert sent[-1].error_code == ErrorCodes.NO_ERROR


def test_reset_reaches_the_peer() -> None:
    pair = Pair()
    sid = pair.open()
    pair.c.send_data(sid, b"dropped")
    pair.c.reset(sid)
    assert pair.c.buffered(sid) == 0 and pair.c.buffered_total == 0
    pair.settle()
    assert pair.s_events[-1] == StreamReset(
        stream_id=sid, reason="reset by the peer (CANCEL)", error_code=ErrorCodes.CANCEL
    )
    assert ("s", sid) not in pair.received


def test_client_fails_a_non_200_stream() -> None:
    peer = raw_server()
    conn = client()
    peer.receive_data(conn.data_to_send())
    conn.receive_data(peer.data_to_send())
    sid = conn.open_stream("/ray", "a.test")
    conn.send_data(sid, b"never sent")
    peer.receive_data(conn.data_to_send())
    peer.send_headers(sid, [(":status", "403")])
    events = conn.receive_data(peer.data_to_send())
    assert events == [StreamReset(stream_id=sid, reason="HTTP status 403", remote=True)]
    conn.pump()
    sent = frames(conn.data_to_send())
    assert [type(f).__name__ for f in sent if f.stream_id] == ["RstStreamFrame"]
    assert sent[-1].error_code == ErrorCodes.CANCEL
    assert conn.buffered_total == 0


def test_many_streams_at_once() -> None:
    pair = Pair()
    sids = [pair.c.open_stream("/ray", ["a.test"]) for _ in range(60)]
    for index, sid in enumerate(sids):
        pair.c.send_data(sid, bytes([index]) * (1000 + 997 * index))
        pair.c.end_stream(sid)
    pair.settle()
    opened = [e.stream_id for e in pair.s_events if type(e) is StreamOpened]
    assert opened == sids
    for index, sid in enumerate(sids):
        assert pair.received[("s", sid)] == bytes([index]) * (1000 + 997 * index)
        pair.s.send_data(sid, b"reply %d" % index)
        pair.s.end_stream(sid)
    pair.settle()
    for index, sid in enumerate(sids):
        assert pair.received[("c", sid)] == b"reply %d" % index
    assert pair.c.stream_count == pair.s.stream_count == 0


def test_client_respects_max_concurrent_streams() -> None:
    pair = Pair(s=server(max_concurrent_streams=3))
    assert pair.c.can_open_stream()
    pair.settle()
    for _ in range(3):
        pair.c.open_stream("/ray", "a.test")
    assert not pair.c.can_open_stream()
    with pytest.raises(LocalProtocolError):
        pair.c.open_stream("/ray", "a.test")
    pair.settle()
    pair.c.reset(1)
    assert pair.c.can_open_stream()


# -- flow control ----------------------------------------------------------------------------------
def test_a_reader_that_does_not_consume_stops_only_its_stream() -> None:
    pair = Pair()
    slow, fast = pair.open(), pair.open()
    pair.paused.add(("s", slow))
    pair.c.send_data(slow, b"s" * (4 * MB))
    pair.c.send_data(fast, b"f" * (4 * MB))
    pair.c.end_stream(fast)
    pair.settle()
    assert pair.received[("s", fast)] == b"f" * (4 * MB)  # all of it, despite the slow one
    held = len(pair.received[("s", slow)])
    assert held == 1048576  # exactly the server's stream window: then the sender waits
    assert pair.c.buffered(slow) == 4 * MB - held
    assert pair.s.unconsumed_total == held
    # The reader takes it: the window reopens and the rest follows.
    pair.paused.clear()
    pair.s.consumed(slow, held)
    pair.settle()
    assert pair.received[("s", slow)] == b"s" * (4 * MB)
    assert pair.c.buffered_total == 0 and pair.s.unconsumed_total == 0


def test_downstream_reader_is_isolated_too() -> None:
    pair = Pair()
    slow, fast = pair.open(), pair.open()
    pair.paused.add(("c", slow))
    pair.s.send_data(slow, b"s" * (6 * MB))
    pair.s.send_data(fast, b"f" * (6 * MB))
    pair.settle()
    assert len(pair.received[("c", fast)]) == 6 * MB
    assert len(pair.received[("c", slow)]) == 4194304  # the client's stream window


def test_the_connection_budget_bounds_what_it_holds() -> None:
    pair = Pair(s=server(buffer_limit=MB // 2))
    slow, fast = pair.open(), pair.open()
    pair.paused.add(("s", slow))
    pair.c.send_data(slow, b"s" * MB)
    pair.settle()
    pair.c.send_data(fast, b"f" * (2 * MB))
    pair.settle()
    # Over budget: the connection window stays shut, so the fast stream waits too...
    assert len(pair.received.get(("s", fast), b"")) < 2 * MB
    pair.paused.clear()
    pair.s.consumed(slow, len(pair.received[("s", slow)]))
    pair.settle()
    # ...until the slow reader catches up.
    assert len(pair.received[("s", fast)]) == 2 * MB


def test_frames_use_the_peers_max_frame_size() -> None:
    pair = Pair()
    sid = pair.open()
    pair.c.send_data(sid, bytes(MB))
    pair.c.pump()
    sizes = [len(f.data) for f in frames(pair.c.data_to_send()) if isinstance(f, hf.DataFrame)]
    # The server allows 1 MiB frames, its windows 1 MiB (stream) and 1 MiB (connection).
    assert sizes == [MB]
    pair.settle()
    pair.s.send_data(sid, bytes(100000))
    pair.s.pump()
    sizes = [len(f.data) for f in frames(pair.s.data_to_send()) if isinstance(f, hf.DataFrame)]
    assert sizes == [16384] * 6 + [100000 - 6 * 16384]  # V2Ray's client: default 16 KiB
    big = Pair(c=client(max_frame_size=MB))
    sid = big.open()
    big.s.send_data(sid, bytes(100000))
    big.s.pump()
    sizes = [len(f.data) for f in frames(big.s.data_to_send()) if isinstance(f, hf.DataFrame)]
    assert sizes == [100000]


def test_padding_is_handed_back() -> None:
    peer = raw_client()
    conn = server(initial_window=65535)
    conn.receive_data(peer.data_to_send())
    peer.receive_data(conn.data_to_send())
    peer.send_headers(
        1, [(":method", "PUT"), (":path", "/ray"), (":scheme", "https"), (":authority", "a.test")]
    )
    total = 0
    for _ in range(200):  # far more than the window, all padding but one byte a frame
        peer.send_data(1, b"x", pad_length=200)
        total += 1
        events = conn.receive_data(peer.data_to_send())
        for event in events:
            if type(event) is StreamData:
                conn.consumed(1, len(event.data))
        conn.pump()
        peer.receive_data(conn.data_to_send())
    assert peer.local_flow_control_window(1) > 0
    assert total == 200


# -- connection ends -----------------------------------------------------------------------------
def test_goaway_ends_the_connection() -> None:
    pair = Pair()
    pair.open()
    pair.s.close(reason="bye")
    pair.settle()
    (terminated,) = [e for e in pair.c_events if type(e) is ConnectionTerminated]
    assert terminated.error_code == 0 and "bye" in terminated.reason
    assert not pair.c.can_open_stream()
    assert pair.c.stream_count == 0


def test_garbage_after_the_preface_is_a_connection_error_with_goaway() -> None:
    conn = server()
    conn.receive_data(client().data_to_send())
    conn.data_to_send()
    with pytest.raises(H2StreamError):
        conn.receive_data(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    assert isinstance(frames(conn.data_to_send())[-1], hf.GoAwayFrame)
    assert conn.receive_data(b"more") == []


# -- h2c -----------------------------------------------------------------------------------------
def upgrade_request(
    path: str = "/ray", host: str = "a.test"
) -> tuple[bytes, h2.connection.H2Connection]:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    token = peer.initiate_upgrade_connection()
    assert token is not None
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: {token.decode().rstrip('=')}\r\n\r\n"
    ).encode()
    return request, peer


def test_h2c_upgrade_makes_stream_1_then_the_connection_is_http2() -> None:
    request, peer = upgrade_request()
    conn = server()
    events = conn.receive_data(request + peer.data_to_send())
    assert events[:2] == [
        StreamOpened(stream_id=1, path="/ray", authority="a.test"),
        StreamEnded(stream_id=1),
    ]
    out = conn.data_to_send()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c"
    answers = peer.receive_data(rest)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in answers)
    # A new stream on the upgraded connection carries data as usual.
    peer.send_headers(
        3, [(":method", "PUT"), (":path", "/ray"), (":scheme", "http"), (":authority", "a.test")]
    )
    peer.send_data(3, b"vmess")
    events = conn.receive_data(peer.data_to_send())
    assert events == [
        StreamOpened(stream_id=3, path="/ray", authority="a.test"),
        StreamData(stream_id=3, data=b"vmess"),
    ]


def test_h2c_upgrade_checks_stream_1() -> None:
    request, peer = upgrade_request(path="/wrong")
    conn = server()
    events = conn.receive_data(request + peer.data_to_send())
    assert [type(e) for e in events] == [StreamRefused]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /ray HTTP/1.1\r\nHost: a.test\r\n\r\n", b"426"),
        (b"GET /nope HTTP/1.1\r\nHost: a.test\r\n\r\n", b"404"),
        (b"PUT /ray HTTP/1.1\r\nHost: b.test\r\nContent-Length: 0\r\n\r\n", b"404"),
    ],
)
def test_plain_http1_is_refused(request_bytes: bytes, status: bytes) -> None:
    conn = server()
    for size in (1, 2, 3):  # "G", "GE", "GET": undecided, then HTTP/1.1
        assert conn.receive_data(request_bytes[size - 1 : size]) == []
    (refused,) = conn.receive_data(request_bytes[3:])
    assert isinstance(refused, ConnectionRefused)
    assert conn.data_to_send().startswith(b"HTTP/1.1 " + status)
    assert conn.receive_data(b"GET / HTTP/1.1\r\n\r\n") == []


def test_bad_http1_gets_400_and_an_error() -> None:
    conn = server()
    with pytest.raises(H2StreamError):
        conn.receive_data(b"GET /ray HTTP/1.1\r\nBad Header\r\n\r\n")
    assert conn.data_to_send().startswith(b"HTTP/1.1 400")


# -- decoders: three ways, split anywhere, arbitrary bytes -----------------------------------
def scripted_exchange() -> tuple[bytes, bytes]:
    """A deterministic session: what the client sent and what the server answered."""
    pair = Pair()
    up, down = bytearray(), bytearray()
    sids = [pair.c.open_stream("/ray", ["a.test"]) for _ in range(3)]
    pair.c.open_stream("/nope", ["a.test"])
    for index, sid in enumerate(sids):
        pair.c.send_data(sid, bytes([65 + index]) * (20000 * (index + 1)))
    pair.c.end_stream(sids[0])
    for _ in range(50):
        pair.c.pump()
        a = pair.c.data_to_send()
        up += a
        events = pair.s.receive_data(a) if a else []
        for event in events:
            if type(event) is StreamData:
                pair.s.consumed(event.stream_id, len(event.data))
                pair.s.send_data(event.stream_id, event.data[:100])
            if type(event) is StreamEnded:
                pair.s.end_stream(event.stream_id)
        pair.s.pump()
        b = pair.s.data_to_send()
        down += b
        if b:
            for event in pair.c.receive_data(b):
                if type(event) is StreamData:
                    pair.c.consumed(event.stream_id, len(event.data))
        if not a and not b:
            break
    pair.c.reset(sids[1])
    pair.c.pump()
    up += pair.c.data_to_send()
    return bytes(up), bytes(down)


UP, DOWN = scripted_exchange()


def feed(conn: H2StreamConnection, chunks: Iterable[bytes]) -> list[H2Event]:
    events: list[H2Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def replay_client() -> H2StreamConnection:
    """A client that has sent what scripted_exchange's client sent (same ids, same state)."""
    conn = client()
    sids = [conn.open_stream("/ray", ["a.test"]) for _ in range(3)]
    conn.open_stream("/nope", ["a.test"])
    conn.data_to_send()
    del sids
    return conn


def test_server_three_ways() -> None:
    whole = feed(server(), [UP])
    assert [type(e) for e in whole].count(StreamOpened) == 3
    assert [type(e) for e in whole].count(StreamRefused) == 1
    assert feed(server(), [UP[i : i + 1] for i in range(len(UP))]) == whole
    trailing = feed(server(), [UP + b"\x00\x00\x10\x00"])  # a frame header's first bytes
    assert trailing == whole


def test_client_three_ways() -> None:
    whole = feed(replay_client(), [DOWN])
    assert [type(e) for e in whole].count(StreamOpened) == 3
    assert feed(replay_client(), [DOWN[i : i + 1] for i in range(len(DOWN))]) == whole
    assert feed(replay_client(), [DOWN + b"\x00\x00"]) == whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
def test_split_anywhere_gives_the_same_events(cuts: list[int]) -> None:
    assert feed(server(), split(UP, cuts)) == feed(server(), [UP])
    assert feed(replay_client(), split(DOWN, cuts)) == feed(replay_client(), [DOWN])


def _only_our_error(conn: H2StreamConnection, chunks: Iterable[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            conn.pump()
            conn.data_to_send()
    except H2StreamError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_our_error(data: bytes) -> None:
    _only_our_error(server(), [data])
    _only_our_error(server(), [PREFACE + data])
    _only_our_error(server(), [UP[:200] + data])
    _only_our_error(replay_client(), [data])


def _opened() -> bytes:
    conn = client()
    for _ in range(3):
        conn.open_stream("/ray", "a.test")
    return conn.data_to_send()


OPENED = _opened()

frame_strategy = st.builds(
    lambda kind, flags, sid, payload: (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload
    ),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF, 0x80000001]),
    st.binary(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_strategy, max_size=8))
def test_arbitrary_frames_raise_only_our_error(raw_frames: list[bytes]) -> None:
    _only_our_error(server(), [PREFACE + raw_frames[0] if raw_frames else PREFACE, *raw_frames[1:]])
    _only_our_error(server(), [client().data_to_send(), *raw_frames])
    _only_our_error(server(), [OPENED, *raw_frames])  # with streams 1, 3 and 5 open
    _only_our_error(replay_client(), [DOWN[:50], *raw_frames])


def test_error_class() -> None:
    assert issubclass(H2StreamError, LayerError)


def test_quiet_repr_matches_hyperframes() -> None:
    def original(data: bytes | None) -> str:  # hyperframe 6.1's text, for comparison
        if not data:
            return "None"
        r = binascii.hexlify(data).decode("ascii")
        if len(r) > 20:
            r = r[:20] + "..."
        return "<hex:" + r + ">"

    for data in [None, b"", b"a", b"0123456789", b"0123456789a", bytes(range(256))]:
        assert h2stream._quiet_raw_data_repr(data) == original(data)
    assert hf._raw_data_repr is h2stream._quiet_raw_data_repr


def test_upgrade_settings_accepts_unpadded_base64() -> None:
    token = base64.urlsafe_b64encode(b"\x00\x04\x00\x01\x00\x00").rstrip(b"=")
    request = (
        b"GET /ray HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: " + token + b"\r\n\r\n"
    )
    events = server().receive_data(request)
    assert [type(e) for e in events] == [StreamOpened, StreamEnded]


def test_an_overlong_frame_is_refused_as_soon_as_its_header_arrives() -> None:
    # h2 itself would wait for all 16 MiB before checking the length.
    conn = server()
    conn.receive_data(client().data_to_send())  # the preface, SETTINGS, WINDOW_UPDATE
    conn.data_to_send()
    with pytest.raises(H2StreamError, match="16777215-byte frame, over the 1048576-byte limit"):
        conn.receive_data(b"\xff\xff\xff\x00\x00\x00")  # half a header is enough to wait
        conn.receive_data(b"\x00\x00\x01")
    goaway = frames(conn.data_to_send())[-1]
    assert isinstance(goaway, hf.GoAwayFrame) and goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR
    peer = client()  # 16 KiB frames unless it advertised more
    with pytest.raises(H2StreamError, match="16385-byte frame"):
        peer.receive_data((16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01")


def test_streams_take_turns() -> None:
    pair = Pair(c=client(max_frame_size=MB), s=server(initial_window=8 * MB))
    sids = [pair.open() for _ in range(3)]
    pair.settle()
    for sid in sids:
        pair.s.send_data(sid, bytes(300_000))
    order = []
    for _ in range(6):
        pair.s.pump(limit=100_000)
        order += [f.stream_id for f in frames(pair.s.data_to_send()) if isinstance(f, hf.DataFrame)]
    assert order[:6] == sids + sids
