"""Mux.Cool frame codec and session table (docs/protocols.md sections 2 and 7)."""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from raybridge.address import Destination, Network, tcp, udp
from raybridge.errors import LocalProtocolError
from raybridge.protocols.mux import (
    FC_HELLO,
    FC_PAUSE,
    MAX_KEEPALIVE_DATA,
    MAX_UDP_DATA,
    Frame,
    FrameDecoder,
    FrameOption,
    KeepAliveReceived,
    MuxConnection,
    MuxError,
    MuxEvent,
    Role,
    SessionClosedError,
    SessionData,
    SessionEnded,
    SessionOpened,
    Status,
    encode_frame,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- docs/protocols.md section 7 vectors ----------------------------------------------------------

EXAMPLE_80 = tcp("example.com", 80)
DNS = udp("8.8.8.8", 53)
CONTROL = Destination(Network.UDP, "reverse.internal.v2ray.com", 0)

VECTORS = {
    "new-tcp-data": (
        "0014 0001 01 01 01 0050 02 0b 6578616d706c652e636f6d 0002 6869",
        Frame(
            session_id=1,
            status=Status.NEW,
            option=FrameOption.DATA,
            target=EXAMPLE_80,
            data=b"hi",
        ),
    ),
    "keep-data": (
        "0004 0001 02 01 0002 6869",
        Frame(session_id=1, status=Status.KEEP, option=FrameOption.DATA, data=b"hi"),
    ),
    "end": ("0004 0001 03 00", Frame(session_id=1, status=Status.END, option=FrameOption(0))),
    "end-error": (
        "0004 0001 03 02",
        Frame(session_id=1, status=Status.END, option=FrameOption.ERROR),
    ),
    "new-udp": (
        "000c 0002 01 00 02 0035 01 08080808",
        Frame(session_id=2, status=Status.NEW, option=FrameOption(0), target=DNS),
    ),
    "control-new": (
        "0023 0001 01 00 02 0000 02 1a 726576657273652e696e7465726e616c2e76327261792e636f6d",
        Frame(session_id=1, status=Status.NEW, option=FrameOption(0), target=CONTROL),
    ),
}


def encode(frame: Frame) -> bytes:
    return encode_frame(
        frame.session_id,
        frame.status,
        data=frame.data,
        target=frame.target,
        error=bool(frame.option & FrameOption.ERROR),
    )


@pytest.mark.parametrize("name", VECTORS)
def test_vector_encode(name: str) -> None:
    wire, frame = VECTORS[name]
    assert encode(frame) == h(wire)


@pytest.mark.parametrize("name", VECTORS)
def test_vector_decode(name: str) -> None:
    wire, frame = VECTORS[name]
    assert decode_three_ways(h(wire)) == [frame]


def test_vectors_written_by_connection() -> None:
    client = MuxConnection(Role.CLIENT)
    assert client.open_session(EXAMPLE_80, b"hi") == 1
    assert client.data_to_send() == h(VECTORS["new-tcp-data"][0])
    client.send_data(1, b"hi")
    assert client.data_to_send() == h(VECTORS["keep-data"][0])
    client.end_session(1)
    assert client.data_to_send() == h(VECTORS["end"][0])
    assert client.open_session(DNS) == 2
    assert client.data_to_send() == h(VECTORS["new-udp"][0])
    client.end_session(2, error=True)
    assert client.data_to_send() == h("0004 0002 03 02")

    portal = MuxConnection(Role.CLIENT)
    assert portal.open_session(CONTROL) == 1
    assert portal.data_to_send() == h(VECTORS["control-new"][0])


def test_vectors_read_by_server() -> None:
    server = MuxConnection(Role.SERVER)
    wire = h(VECTORS["new-tcp-data"][0] + VECTORS["keep-data"][0] + VECTORS["end-error"][0])
    assert server.receive_data(wire) == [
        SessionOpened(session_id=1, target=EXAMPLE_80, data=b"hi"),
        SessionData(session_id=1, data=b"hi"),
        SessionEnded(session_id=1, error=True),
    ]
    assert server.session_count == 0
    assert server.data_to_send() == b""  # the peer aborted: nothing to answer

    server = MuxConnection(Role.SERVER)
    wire = h(VECTORS["new-tcp-data"][0] + VECTORS["end"][0])
    assert server.receive_data(wire)[1:] == [SessionEnded(session_id=1, error=False)]
    assert server.is_remote_ended(1) and server.session_count == 1
    assert server.data_to_send() == b""  # no auto-reply: our direction is still open
    server.send_data(1, b"hi")
    server.half_close(1)
    assert server.data_to_send() == h(VECTORS["keep-data"][0] + VECTORS["end"][0])
    assert server.session_count == 0


# --- the frame decoder, three ways -----------------------------------------------------------


def decode_three_ways(wire: bytes) -> list[Frame]:
    """Decode whole, one byte at a time, and with a partial frame after it: all must agree."""
    whole = FrameDecoder().feed(wire)
    decoder = FrameDecoder()
    bytewise = [frame for i in range(len(wire)) for frame in decoder.feed(wire[i : i + 1])]
    assert decoder.buffered == 0
    decoder = FrameDecoder()
    trailing = decoder.feed(wire + h("0004 0009 02 01 0003 6162"))
    assert decoder.buffered == 10
    assert decoder.feed(b"c") == [
        Frame(session_id=9, status=Status.KEEP, option=FrameOption.DATA, data=b"abc")
    ]
    assert whole == bytewise == trailing
    return whole


ADDRESSES: list[object] = [
    ipaddress.IPv4Address("1.2.3.4"),
    ipaddress.IPv6Address("2001:db8::1"),
    "example.com",
    "a" * 255,
]


@pytest.mark.parametrize("host", ADDRESSES, ids=["ipv4", "ipv6", "domain", "domain255"])
@pytest.mark.parametrize("network", [Network.TCP, Network.UDP])
@pytest.mark.parametrize("data", [None, b"", b"payload"])
@pytest.mark.parametrize("error", [False, True])
def test_new_frame_round_trip(
    host: object, network: Network, data: bytes | None, error: bool
) -> None:
    target = Destination(network, host, 65535)  # type: ignore[arg-type]
    frame = Frame(
        session_id=0xFFFF,
        status=Status.NEW,
        option=(FrameOption.DATA if data is not None else FrameOption(0))
        | (FrameOption.ERROR if error else FrameOption(0)),
        target=target,
        data=data,
    )
    assert decode_three_ways(encode(frame)) == [frame]


@pytest.mark.parametrize("status", [Status.KEEP, Status.END, Status.KEEPALIVE])
@pytest.mark.parametrize(
    "data",
    [None, b"", b"x", bytes(range(256)) * 255 + bytes(255)],
    ids=["none", "empty", "1", "65535"],
)
@pytest.mark.parametrize("error", [False, True])
def test_other_frames_round_trip(status: Status, data: bytes | None, error: bool) -> None:
    option = (FrameOption.DATA if data is not None else FrameOption(0)) | (
        FrameOption.ERROR if error else FrameOption(0)
    )
    frame = Frame(session_id=0, status=status, option=option, data=data)
    wire = encode(frame)
    if data is not None and len(data) > 1000:
        assert FrameDecoder().feed(wire) == [frame]
    else:
        assert decode_three_ways(wire) == [frame]


def test_extra_meta_bytes_are_ignored() -> None:
    keep = "000a 0001 02 01 010203040506 0002 6869"
    new = "0016 0001 01 00 01 0050 02 0b 6578616d706c652e636f6d ffff"
    assert decode_three_ways(h(keep + new)) == [
        Frame(session_id=1, status=Status.KEEP, option=FrameOption.DATA, data=b"hi"),
        Frame(session_id=1, status=Status.NEW, option=FrameOption(0), target=EXAMPLE_80),
    ]


def test_unknown_option_bits_are_kept() -> None:
    (frame,) = decode_three_ways(h("0004 0001 02 fd 0001 7a"))
    assert frame.option == 0xFD
    assert frame.option & FrameOption.DATA
    assert frame.data == b"z"


def test_zero_length_data_and_max_meta() -> None:
    wire = h("0004 0001 02 01 0000") + h("0200 0001 04 00") + bytes(508)
    assert decode_three_ways(wire) == [
        Frame(session_id=1, status=Status.KEEP, option=FrameOption.DATA, data=b""),
        Frame(session_id=1, status=Status.KEEPALIVE, option=FrameOption(0)),
    ]


def test_domain_that_is_an_ip_literal() -> None:
    (frame,) = FrameDecoder().feed(h("0010 0001 01 00 01 0050 02 07 312e322e332e34"))
    assert frame.target == tcp("1.2.3.4", 80)


BAD_FRAMES = {
    "meta-len-513": "0201 0001 02 00",
    "meta-len-3": "0003 0001 02",
    "meta-len-0": "0000",
    "new-meta-len-7": "0007 0001 01 00 01 0050 01",
    "status-0": "0004 0001 00 00",
    "status-5": "0004 0001 05 00",
    "status-ff": "0004 0001 ff 01 0000",
    "network-0": "000c 0001 01 00 00 0035 01 08080808",
    "network-3": "000c 0001 01 00 03 0035 01 08080808",
    "atyp-4": "000c 0001 01 00 01 0035 04 08080808",
    "ipv4-past-meta": "000a 0001 01 00 01 0035 01 0808 0808",
    "ipv6-past-meta": "0014 0001 01 00 01 0035 03 00000000000000000000000000",
    "domain-past-meta": "000c 0001 01 00 01 0050 02 05 616263 6465",
    "domain-empty": "0009 0001 01 00 01 0050 02 00",
    "domain-bad-char": "000b 0001 01 00 01 0050 02 02 612f",
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frames(name: str) -> None:
    wire = h(BAD_FRAMES[name])
    with pytest.raises(MuxError):
        FrameDecoder().feed(wire)
    decoder = FrameDecoder()
    with pytest.raises(MuxError):
        for i in range(len(wire)):
            decoder.feed(wire[i : i + 1])
    with pytest.raises(MuxError):
        decoder.feed(b"")  # a failed decoder stays failed
    roles = [Role.CLIENT, Role.SERVER]
    for role in roles:
        with pytest.raises(MuxError):
            MuxConnection(role).receive_data(wire)
        conn = MuxConnection(role)
        with pytest.raises(MuxError):
            for i in range(len(wire)):
                conn.receive_data(wire[i : i + 1])
        with pytest.raises(MuxError):
            conn.receive_data(h("0004 0001 04 00"))


def test_meta_len_errors_fire_before_meta_arrives() -> None:
    with pytest.raises(MuxError):
        MuxConnection(Role.SERVER).receive_data(h("0201"))
    with pytest.raises(MuxError):
        FrameDecoder().feed(h("0002"))


# --- MuxConnection: receive rules ------------------------------------------------------------


def new(sid: int, target: Destination = EXAMPLE_80, data: bytes | None = None) -> bytes:
    return encode_frame(sid, Status.NEW, target=target, data=data)


def keep(sid: int, data: bytes | None) -> bytes:
    return encode_frame(sid, Status.KEEP, data=data)


def end(sid: int, error: bool = False, data: bytes | None = None) -> bytes:
    return encode_frame(sid, Status.END, error=error, data=data)


def merged(events: Sequence[MuxEvent]) -> list[MuxEvent]:
    """Join consecutive SessionData of one TCP session (one-byte feeding splits them).

    Sessions announced as UDP by a SessionOpened keep their datagram boundaries.
    """
    out: list[MuxEvent] = []
    udp_ids: set[int] = set()
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, SessionOpened):
            if event.target.network is Network.UDP:
                udp_ids.add(event.session_id)
            else:
                udp_ids.discard(event.session_id)
        if (
            isinstance(event, SessionData)
            and event.session_id not in udp_ids
            and isinstance(last, SessionData)
            and last.session_id == event.session_id
        ):
            merged = bytes(last.data) + bytes(event.data)
            out[-1] = SessionData(session_id=event.session_id, data=merged)
        else:
            out.append(event)
    return out


def receive_three_ways(
    make: Callable[[], MuxConnection], wire: bytes
) -> tuple[list[MuxEvent], bytes]:
    """Feed whole, byte by byte and with a trailing partial frame, and also in two pieces cut
    at (nearly) every point; all must agree. Returns the events and the queued replies."""
    results = []
    for how in ("whole", "bytewise", "trailing"):
        conn = make()
        if how == "whole":
            events = conn.receive_data(wire)
        elif how == "bytewise":
            events = [e for i in range(len(wire)) for e in conn.receive_data(wire[i : i + 1])]
        else:
            events = conn.receive_data(wire + h("0004 0001 02 01 00"))
        results.append((merged(events), conn.data_to_send()))
    assert results[0] == results[1] == results[2]
    for cut in range(1, len(wire), 1 if len(wire) < 1000 else 97):
        conn = make()
        events = conn.receive_data(wire[:cut]) + conn.receive_data(wire[cut:])
        assert (merged(events), conn.data_to_send()) == results[0]
    return results[0]


def test_keep_data_for_unknown_session_is_answered_with_end() -> None:
    wire = keep(7, b"\x00\x04\x00\x01\x05\x00" * 10) + keep(8, b"") + keep(9, None) + new(1)
    events, replies = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events == [SessionOpened(session_id=1, target=EXAMPLE_80)]
    assert replies == h("0004 0007 03 00 0004 0008 03 00")  # Keep without data: no reply


def test_client_answers_unknown_keep_too() -> None:
    events, replies = receive_three_ways(lambda: MuxConnection(Role.CLIENT), keep(3, b"late data"))
    assert events == []
    assert replies == h("0004 0003 03 00")


def test_end_and_keepalive_for_unknown_sessions_are_ignored() -> None:
    wire = end(5) + end(6, error=True, data=b"junk") + encode_frame(0, Status.KEEPALIVE)
    wire += encode_frame(0, Status.KEEPALIVE, data=b"ignored")
    wire += encode_frame(7, Status.KEEPALIVE, data=bytes(MAX_KEEPALIVE_DATA + 1))  # too long
    for role in Role:
        events, replies = receive_three_ways(functools.partial(MuxConnection, role), wire)
        # A KeepAlive's short data is handed over (raybridge's flow control rides in it).
        assert events == [KeepAliveReceived(), KeepAliveReceived(data=b"ignored")]
        assert replies == b""


def test_flow_control_keepalives() -> None:
    conn = MuxConnection(Role.CLIENT)
    conn.send_keepalive(data=FC_HELLO)
    conn.send_keepalive(3, FC_PAUSE)
    wire = conn.data_to_send()
    assert wire == encode_frame(0, Status.KEEPALIVE, data=FC_HELLO) + encode_frame(
        3, Status.KEEPALIVE, data=FC_PAUSE
    )
    events, _ = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events == [
        KeepAliveReceived(data=FC_HELLO),
        KeepAliveReceived(session_id=3, data=FC_PAUSE),
    ]
    with pytest.raises(LocalProtocolError):
        conn.send_keepalive(data=bytes(MAX_KEEPALIVE_DATA + 1))


def test_client_ignores_new_frames() -> None:
    wire = new(1, data=b"x" * 3000) + new(2, DNS, data=b"y" * 3000) + keep(1, b"z")
    events, replies = receive_three_ways(lambda: MuxConnection(Role.CLIENT), wire)
    assert events == []
    assert replies == h("0004 0001 03 00")  # the Keep for the never-opened session 1


def test_server_session_lifecycle() -> None:
    wire = new(1, data=b"first") + new(2, DNS) + keep(1, b"more") + keep(2, b"dgram")
    wire += keep(2, b"") + end(1, data=b"discarded") + end(2, error=True)
    events, replies = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events == [
        SessionOpened(session_id=1, target=EXAMPLE_80, data=b"first"),
        SessionOpened(session_id=2, target=DNS),
        SessionData(session_id=1, data=b"more"),
        SessionData(session_id=2, data=b"dgram"),
        SessionEnded(session_id=1, error=False),
        SessionEnded(session_id=2, error=True),
    ]
    assert replies == b""  # End ends the peer's direction only; End+Error needs no answer


def test_udp_datagrams_arrive_whole() -> None:
    datagrams = [bytes([i]) * (i * 97 % 2049) for i in range(1, 30)]
    wire = new(4, DNS, data=datagrams[0]) + b"".join(keep(4, d) for d in datagrams[1:])
    events, _ = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events[0] == SessionOpened(session_id=4, target=DNS, data=datagrams[0])
    assert events[1:] == [SessionData(session_id=4, data=d) for d in datagrams[1:]]


def test_udp_datagrams_over_2048_are_read_but_not_sent() -> None:
    # 4.34 tears its connection down on a UDP frame over 2048 bytes; sing-box's XUDP client
    # sends up to 64 KiB, so we read them (and send them only on XUDP sessions).
    for role in Role:
        conn = MuxConnection(role)
        if role is Role.CLIENT:
            conn.open_session(DNS)
        else:
            conn.receive_data(new(1, DNS))
        big = bytes(range(256)) * 40
        assert conn.receive_data(keep(1, big)) == [SessionData(session_id=1, data=big)]
        with pytest.raises(LocalProtocolError):
            conn.send_data(1, bytes(MAX_UDP_DATA + 1))


def test_tcp_frame_of_65535_and_streaming_delivery() -> None:
    payload = bytes(range(256)) * 255 + bytes(255)
    assert len(payload) == 65535
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1))
    wire = keep(1, payload)
    pieces = [wire[i : i + 2030] for i in range(0, len(wire), 2030)]
    first = server.receive_data(pieces[0])
    # TCP data is delivered as it arrives, not held back until the frame is complete.
    assert first == [SessionData(session_id=1, data=payload[: 2030 - 8])]
    rest = [e for piece in pieces[1:] for e in server.receive_data(piece)]
    assert all(isinstance(e, SessionData) and len(e.data) <= 2030 for e in rest)
    assert b"".join(e.data for e in first + rest if isinstance(e, SessionData)) == payload


def test_local_end_in_the_middle_of_a_frame_drops_the_rest() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1) + new(2, DNS))
    wire = keep(1, b"a" * 100) + keep(2, b"b" * 100) + keep(1, b"c")
    assert server.receive_data(wire[:58]) == [SessionData(session_id=1, data=b"a" * 50)]
    server.end_session(1)
    # the rest of session 1's frame is dropped; session 2 (UDP) waits for its whole datagram
    assert server.receive_data(wire[58:158]) == []
    server.end_session(2, error=True)
    assert server.receive_data(wire[158:]) == []
    assert server.data_to_send() == h("0004 0001 03 00 0004 0002 03 02 0004 0001 03 00")


def test_duplicate_new_replaces_the_open_session() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1, data=b"old"))
    events = server.receive_data(new(1, DNS, data=b"new"))
    assert events == [
        SessionEnded(session_id=1, error=True),
        SessionOpened(session_id=1, target=DNS, data=b"new"),
    ]
    assert server.data_to_send() == b""  # an End would hit the new session at the peer
    assert server.session_network(1) is Network.UDP
    assert (server.session_count, server.allocated_total) == (1, 2)


def test_server_session_cap() -> None:
    server = MuxConnection(Role.SERVER, max_sessions=2)
    events = server.receive_data(new(1) + new(2) + new(3, data=b"refused") + keep(3, b"x"))
    assert events == [
        SessionOpened(session_id=1, target=EXAMPLE_80),
        SessionOpened(session_id=2, target=EXAMPLE_80),
    ]
    assert server.data_to_send() == h("0004 0003 03 02 0004 0003 03 00")
    assert not server.is_open(3)
    # a duplicate at the cap replaces, it doesn't need a free slot
    assert server.receive_data(new(2)) == [
        SessionEnded(session_id=2, error=True),
        SessionOpened(session_id=2, target=EXAMPLE_80),
    ]
    server.end_session(1)
    assert server.receive_data(new(3)) == [SessionOpened(session_id=3, target=EXAMPLE_80)]
    assert server.allocated_total == 4


def test_receive_does_not_lock_the_callers_buffer() -> None:
    server = MuxConnection(Role.SERVER)
    buf = bytearray(new(1) + keep(1, b"abc"))
    server.receive_data(buf)
    buf += b"more"  # would raise BufferError if a view were still exported
    buf2 = bytearray(h("0000"))
    with pytest.raises(MuxError):
        server.receive_data(memoryview(buf2))
    buf2 += b"x"


# --- MuxConnection: send rules ---------------------------------------------------------------


def test_session_ids_count_up_and_are_never_reused() -> None:
    client = MuxConnection(Role.CLIENT)
    ids = [client.open_session(EXAMPLE_80) for _ in range(3)]
    client.end_session(3)
    ids.append(client.open_session(DNS))
    assert ids == [1, 2, 3, 4]
    assert client.session_ids() == [1, 2, 4]
    assert (client.session_count, client.allocated_total) == (3, 4)
    last = MuxConnection(Role.CLIENT, first_session_id=0xFFFF)
    assert last.open_session(EXAMPLE_80) == 0xFFFF
    with pytest.raises(LocalProtocolError):
        last.open_session(EXAMPLE_80)


def test_client_session_limit_and_server_cannot_open() -> None:
    client = MuxConnection(Role.CLIENT, max_sessions=1)
    client.open_session(EXAMPLE_80)
    with pytest.raises(LocalProtocolError):
        client.open_session(EXAMPLE_80)
    client.end_session(1)
    assert client.open_session(EXAMPLE_80) == 2
    with pytest.raises(LocalProtocolError):
        MuxConnection(Role.SERVER).open_session(EXAMPLE_80)


def test_tcp_sends_are_cut_at_max_frame_data() -> None:
    client = MuxConnection(Role.CLIENT, max_frame_data=8192)
    payload = bytes(range(256)) * 80  # 20480 bytes
    client.open_session(EXAMPLE_80, payload)
    client.send_data(1, memoryview(payload))
    frames = FrameDecoder().feed(client.data_to_send())
    assert [(f.status, len(f.data or b"")) for f in frames] == [
        (Status.NEW, 8192),
        (Status.KEEP, 8192),
        (Status.KEEP, 4096),
        (Status.KEEP, 8192),
        (Status.KEEP, 8192),
        (Status.KEEP, 4096),
    ]
    assert b"".join(f.data or b"" for f in frames) == payload * 2
    big = MuxConnection(Role.CLIENT)
    big.open_session(EXAMPLE_80)
    big.send_data(1, bytes(100_000))
    frames = FrameDecoder().feed(big.data_to_send())
    assert [len(f.data or b"") for f in frames[1:]] == [65535, 34465]


def test_udp_send_rules() -> None:
    client = MuxConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.open_session(DNS, bytes(MAX_UDP_DATA + 1))
    assert client.session_count == 0 and client.data_to_send() == b""
    sid = client.open_session(DNS, bytes(MAX_UDP_DATA))
    client.send_data(sid, bytes(MAX_UDP_DATA))
    with pytest.raises(LocalProtocolError):
        client.send_data(sid, bytes(MAX_UDP_DATA + 1))
    client.send_data(sid, b"")  # nothing: V2Ray cannot send an empty datagram either
    frames = FrameDecoder().feed(client.data_to_send())
    assert [len(f.data or b"") for f in frames] == [MAX_UDP_DATA, MAX_UDP_DATA]


def test_end_session_is_idempotent_and_sends_fail_after_end() -> None:
    client = MuxConnection(Role.CLIENT)
    client.open_session(EXAMPLE_80)
    client.data_to_send()
    client.end_session(1, error=True)
    client.end_session(1)
    client.end_session(42)
    assert client.data_to_send() == h("0004 0001 03 02")
    with pytest.raises(SessionClosedError):
        client.send_data(1, b"x")
    with pytest.raises(SessionClosedError):
        client.session_network(1)
    client.open_session(EXAMPLE_80)
    client.receive_data(end(2, error=True))
    assert not client.is_open(2)
    with pytest.raises(SessionClosedError):
        client.send_data(2, b"x")


def test_half_close_keeps_receiving_until_the_peers_end() -> None:
    """What a 4.34 server does after our End: it closes the uplink, sends the rest of the
    response, then its own End (docs/protocols.md 2.3)."""
    client = MuxConnection(Role.CLIENT)
    client.open_session(EXAMPLE_80, b"GET / HTTP/1.0\r\n\r\n")
    client.data_to_send()
    client.half_close(1)
    client.half_close(1)
    assert client.data_to_send() == h("0004 0001 03 00")
    with pytest.raises(SessionClosedError):
        client.send_data(1, b"more")
    assert client.is_open(1) and client.session_count == 1
    events = client.receive_data(keep(1, b"HTTP/1.0 200 OK") + end(1, error=True))
    assert events == [
        SessionData(session_id=1, data=b"HTTP/1.0 200 OK"),
        SessionEnded(session_id=1, error=True),
    ]
    assert client.data_to_send() == b""  # our End is out already
    assert client.session_count == 0


def test_end_after_half_close_sends_nothing_more() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1) + new(2))
    server.half_close(1)
    server.half_close(7)  # unknown: nothing
    server.end_session(1, error=True)
    assert server.data_to_send() == h("0004 0001 03 00")
    assert server.receive_data(keep(1, b"late")) == []
    assert server.data_to_send() == h("0004 0001 03 00")  # unknown session by now
    server.half_close(2)
    assert server.receive_data(new(2)) == [  # a duplicate New replaces it as usual
        SessionEnded(session_id=2, error=True),
        SessionOpened(session_id=2, target=EXAMPLE_80),
    ]
    server.send_data(2, b"ok")
    assert server.data_to_send() == h("0004 0002 03 00") + keep(2, b"ok")


def test_queued_data_is_immune_to_later_buffer_changes() -> None:
    client = MuxConnection(Role.CLIENT)
    client.open_session(EXAMPLE_80)
    buf = bytearray(b"abc")
    client.send_data(1, buf)
    client.send_data(1, memoryview(buf))
    buf[:] = b"xyz"
    assert client.data_to_send().endswith(keep(1, b"abc") + keep(1, b"abc"))


def test_keepalive_and_empty_queue() -> None:
    conn = MuxConnection(Role.SERVER)
    assert conn.data_to_send() == b""
    conn.send_keepalive()
    assert conn.data_to_send() == h("0004 0000 04 00")
    assert conn.data_to_send() == b""


def test_connection_lost_fails_every_session() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1) + new(5, DNS))
    assert server.connection_lost() == [
        SessionEnded(session_id=1, error=True),
        SessionEnded(session_id=5, error=True),
    ]
    assert server.session_count == 0


def test_constructor_and_encoder_argument_checks() -> None:
    for kwargs in ({"max_sessions": -1}, {"first_session_id": 0x10000}, {"max_frame_data": 0}):
        with pytest.raises(ValueError):
            MuxConnection(Role.CLIENT, **kwargs)
    bad_calls: list[Callable[[], object]] = [
        lambda: encode_frame(0x10000, Status.KEEP),
        lambda: encode_frame(1, 9),  # type: ignore[arg-type]
        lambda: encode_frame(1, Status.NEW),
        lambda: encode_frame(1, Status.KEEP, target=EXAMPLE_80),
        lambda: encode_frame(1, Status.KEEP, data=bytes(65536)),
        lambda: encode_frame(1, Status.NEW, target=tcp("a" * 256, 1)),
        lambda: encode_frame(1, Status.NEW, target=Destination(Network.TCP, "é.com", 1)),
        lambda: MuxConnection(Role.CLIENT).open_session(tcp("a" * 256, 1)),
    ]
    for call in bad_calls:
        with pytest.raises(LocalProtocolError):
            call()


# --- MuxConnection: the two directions of a session end separately ---------------------------


def test_peer_end_ends_only_the_peers_direction() -> None:
    """End without Error is the peer's FIN: EOF for us, no reply, and our sends go on, as a
    4.34 server keeps sending the response after the client's End (docs/protocols.md 2.3)."""
    for role in Role:
        conn = MuxConnection(role)
        if role is Role.CLIENT:
            conn.open_session(EXAMPLE_80)
            conn.data_to_send()
        else:
            conn.receive_data(new(1))
        assert not conn.is_remote_ended(1)
        assert conn.receive_data(keep(1, b"request") + end(1)) == [
            SessionData(session_id=1, data=b"request"),
            SessionEnded(session_id=1, error=False),
        ]
        assert conn.data_to_send() == b""
        assert conn.is_open(1) and conn.is_remote_ended(1)
        assert (conn.session_count, conn.session_ids()) == (1, [1])
        assert conn.session_network(1) is Network.TCP
        conn.send_data(1, b"response")
        conn.send_data(1, bytes(70_000))  # still cut into frames as usual
        frames = FrameDecoder().feed(conn.data_to_send())
        assert [(f.status, len(f.data or b"")) for f in frames] == [
            (Status.KEEP, 8),
            (Status.KEEP, 65535),
            (Status.KEEP, 4465),
        ]
        # A second End means the peer forgot the session (4.34's answer to Keep frames
        # after its own End): what we would still send goes nowhere, so it aborts.
        assert conn.receive_data(end(1)) == [SessionEnded(session_id=1, error=True)]
        assert conn.data_to_send() == b"" and not conn.is_open(1)


def test_half_close_after_the_peers_end_forgets_the_session() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1, data=b"GET") + end(1))
    server.send_data(1, b"200 OK")
    server.half_close(1)
    server.half_close(1)  # idempotent: the session is gone
    assert server.data_to_send() == keep(1, b"200 OK") + end(1)
    assert not server.is_open(1) and not server.is_remote_ended(1)
    assert server.session_count == 0
    with pytest.raises(SessionClosedError):
        server.send_data(1, b"more")
    assert server.receive_data(keep(1, b"late")) == []  # forgotten: the usual End reply
    assert server.data_to_send() == end(1)


@pytest.mark.parametrize("error", [False, True])
def test_end_session_after_the_peers_end(error: bool) -> None:
    client = MuxConnection(Role.CLIENT)
    client.open_session(DNS)
    client.data_to_send()
    client.receive_data(end(1))
    client.send_data(1, b"query")
    client.end_session(1, error)
    client.end_session(1)
    client.half_close(1)
    assert client.data_to_send() == keep(1, b"query") + end(1, error)
    assert (client.is_open(1), client.is_remote_ended(1), client.session_count) == (False, False, 0)


def test_half_close_then_the_peers_end_forgets_without_a_reply() -> None:
    client = MuxConnection(Role.CLIENT)
    client.open_session(EXAMPLE_80, b"request")
    client.half_close(1)
    client.data_to_send()
    events = client.receive_data(keep(1, b"response") + end(1) + keep(1, b"late"))
    assert events == [
        SessionData(session_id=1, data=b"response"),
        SessionEnded(session_id=1, error=False),
    ]
    assert not client.is_open(1) and client.session_count == 0
    assert client.data_to_send() == end(1)  # only the unknown-session answer to "late"
    client.end_session(1)
    assert client.data_to_send() == b""


def test_end_with_error_aborts_in_every_state_without_a_reply() -> None:
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(1) + new(2) + new(3) + end(3))
    server.half_close(2)
    server.data_to_send()
    assert server.is_remote_ended(3)
    events = server.receive_data(end(1, error=True) + end(2, error=True) + end(3, error=True))
    assert events == [SessionEnded(session_id=sid, error=True) for sid in (1, 2, 3)]
    assert server.data_to_send() == b""
    assert server.session_count == 0 and not server.is_remote_ended(3)
    for sid in (1, 2, 3):
        with pytest.raises(SessionClosedError):
            server.send_data(sid, b"x")
    server.receive_data(new(1) + new(2) + new(3))  # the IDs start afresh
    for sid in (1, 2, 3):
        server.send_data(sid, b"x")
        assert not server.is_remote_ended(sid)
    assert server.data_to_send() == keep(1, b"x") + keep(2, b"x") + keep(3, b"x")


def test_data_after_the_peers_end_is_dropped_without_a_reply() -> None:
    """A peer bug: answering with End would end our direction, which is still open."""
    wire = new(1, data=b"a") + new(2, DNS) + end(1) + end(2)
    wire += keep(1, b"b" * 300) + keep(2, b"dgram") + keep(1, None) + end(1, data=b"x")
    events, replies = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events == [
        SessionOpened(session_id=1, target=EXAMPLE_80, data=b"a"),
        SessionOpened(session_id=2, target=DNS),
        SessionEnded(session_id=1, error=False),
        SessionEnded(session_id=2, error=False),
        SessionEnded(session_id=1, error=True),  # the second End: the peer forgot it
    ]
    assert replies == b""


def test_remote_ended_sessions_count_and_can_be_replaced() -> None:
    server = MuxConnection(Role.SERVER, max_sessions=1)
    server.receive_data(new(1) + end(1))
    assert server.receive_data(new(2)) == []  # the remote-ended session still counts
    assert server.data_to_send() == end(2, error=True)
    assert server.receive_data(new(1, DNS)) == [
        SessionEnded(session_id=1, error=True),
        SessionOpened(session_id=1, target=DNS),
    ]
    assert not server.is_remote_ended(1)
    assert server.receive_data(end(1)) == [SessionEnded(session_id=1, error=False)]
    server.receive_data(new(5) + new(6))  # refused: the cap
    assert server.connection_lost() == [SessionEnded(session_id=1, error=True)]
    assert not server.is_remote_ended(1) and server.session_count == 0


def test_half_close_both_ways_between_two_connections() -> None:
    """A TCP half-close crosses the mux: each side's data after the other's End arrives."""
    client, server = MuxConnection(Role.CLIENT), MuxConnection(Role.SERVER)
    client.open_session(EXAMPLE_80, b"upload")
    client.half_close(1)
    assert merged(server.receive_data(client.data_to_send())) == [
        SessionOpened(session_id=1, target=EXAMPLE_80, data=b"upload"),
        SessionEnded(session_id=1, error=False),
    ]
    response = bytes(range(256)) * 500
    server.send_data(1, response)
    server.send_data(1, b"tail")
    server.half_close(1)
    assert server.session_count == 0
    events = merged(client.receive_data(server.data_to_send()))
    assert events == [
        SessionData(session_id=1, data=response + b"tail"),
        SessionEnded(session_id=1, error=False),
    ]
    assert client.session_count == 0
    assert client.data_to_send() == server.data_to_send() == b""


# --- property tests --------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6).filter(lambda ip: getattr(ip, "ipv4_mapped", None) is None),
    # (a numeric last label reads as IPv4 and is refused from the wire: raybridge.address)
    st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True).filter(
        lambda d: re.fullmatch(r"[0-9]+|0x[0-9a-f]*", d.rstrip(".").rpartition(".")[2]) is None
    ),
)
targets = st.builds(
    Destination, st.sampled_from(Network), hosts, st.integers(min_value=0, max_value=0xFFFF)
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    status = draw(st.sampled_from(Status))
    target = draw(targets) if status is Status.NEW else None
    data = draw(st.none() | st.binary(max_size=300))
    error = draw(st.booleans())
    option = (FrameOption.DATA if data is not None else FrameOption(0)) | (
        FrameOption.ERROR if error else FrameOption(0)
    )
    return Frame(
        session_id=draw(st.integers(0, 0xFFFF)),
        status=status,
        option=option,
        target=target,
        data=data,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@FAST
@given(st.lists(frames(), max_size=8), st.lists(st.integers(0, 4000), max_size=12))
def test_frames_round_trip_through_any_split(frame_list: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode(f) for f in frame_list)
    decoder = FrameDecoder()
    got = [f for piece in split(wire, cuts) for f in decoder.feed(piece)]
    assert got == frame_list
    assert decoder.buffered == 0


@st.composite
def hostile_wire(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or frame-shaped bytes with random fields, to get past the first check."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            parts.append(draw(st.binary(max_size=40)))
        elif kind == 1:
            parts.append(encode(draw(frames())))
        else:
            meta = draw(st.binary(min_size=0, max_size=20))
            sid = draw(st.integers(0, 3)).to_bytes(2, "big")
            head = sid + bytes([draw(st.integers(0, 5)), draw(st.integers(0, 3))]) + meta
            parts.append(len(head).to_bytes(2, "big") + head)
            if draw(st.booleans()):
                body = draw(st.binary(max_size=50))
                parts.append(draw(st.integers(0, 60)).to_bytes(2, "big") + body)
    return b"".join(parts)


@FAST
@given(st.binary(max_size=600) | hostile_wire(), st.lists(st.integers(0, 600), max_size=6))
def test_hostile_input_raises_only_mux_error(wire: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    try:
        for piece in split(wire, cuts):
            decoder.feed(piece)
    except MuxError:
        pass
    for role in Role:
        conn = MuxConnection(role, max_sessions=2)
        if role is Role.CLIENT:
            conn.open_session(EXAMPLE_80)
            conn.open_session(DNS)
        try:
            for piece in split(wire, cuts):
                conn.receive_data(piece)
                conn.data_to_send()
        except MuxError:
            pass


@FAST
@given(hostile_wire(), st.lists(st.integers(0, 600), max_size=6))
def test_split_points_do_not_change_the_outcome(wire: bytes, cuts: list[int]) -> None:
    def run(pieces: list[bytes]) -> tuple[list[MuxEvent], bytes, bool]:
        conn = MuxConnection(Role.SERVER, max_sessions=2)
        events: list[MuxEvent] = []
        failed = False
        try:
            for piece in pieces:
                events += conn.receive_data(piece)
        except MuxError:
            failed = True
        return merged(events), conn.data_to_send(), failed

    whole = run([wire])
    pieces = run(split(wire, cuts))
    if whole[2] or pieces[2]:
        assert whole[2] and pieces[2]  # both fail; events before the error may differ
    else:
        assert whole == pieces


# --- stateful: the server's session table against a model -----------------------------------


class ServerTable(RuleBasedStateMachine):
    """Raw frames from a hostile or buggy peer: duplicate IDs, unknown IDs, a session cap.

    A session leaves the model only once both sides have sent End, or on End+Error from
    either side, or on ``end_session``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, Network] = {}
        self.half_closed: set[int] = set()  # we sent End
        self.remote_ended: set[int] = set()  # the peer sent End
        self.allocated = 0
        self.cap = 0
        self.conn = MuxConnection(Role.SERVER)

    @initialize(cap=st.integers(0, 3), max_frame=st.sampled_from([1, 5, 65535]))
    def setup(self, cap: int, max_frame: int) -> None:
        self.cap = cap
        self.conn = MuxConnection(Role.SERVER, max_sessions=cap, max_frame_data=max_frame)

    def feed(self, wire: bytes, cut: int) -> list[MuxEvent]:
        cut = min(cut, len(wire))
        return merged(self.conn.receive_data(wire[:cut]) + self.conn.receive_data(wire[cut:]))

    ids = st.integers(0, 4)
    cuts = st.integers(0, 40)

    def pick(self, draw: st.DataObject) -> int:
        """Any ID, but an open session's half the time: by chance alone the rules would seldom
        take one session through New, End, more data and our own End."""
        if draw.draw(st.booleans()) and self.model:
            return draw.draw(st.sampled_from(sorted(self.model)))
        return draw.draw(self.ids)

    @rule(sid=ids, network=st.sampled_from(Network), data=st.binary(max_size=20), cut=cuts)
    def peer_new(self, sid: int, network: Network, data: bytes, cut: int) -> None:
        target = Destination(network, "example.com", 80)
        events = self.feed(new(sid, target, data if data else None), cut)
        expected: list[MuxEvent] = []
        reply = b""
        if self.model.pop(sid, None) is not None:
            self.half_closed.discard(sid)
            self.remote_ended.discard(sid)
            expected.append(SessionEnded(session_id=sid, error=True))
        if self.cap and len(self.model) >= self.cap:
            reply = end(sid, error=True)
        else:
            self.model[sid] = network
            self.allocated += 1
            expected.append(SessionOpened(session_id=sid, target=target, data=data))
        assert events == expected
        assert self.conn.data_to_send() == reply

    @rule(draw=st.data(), data=st.none() | st.binary(max_size=20), cut=cuts)
    def peer_keep(self, draw: st.DataObject, data: bytes | None, cut: int) -> None:
        sid = self.pick(draw)
        events = self.feed(keep(sid, data), cut)
        if data is None or sid in self.remote_ended:  # after the peer's End: dropped, no reply
            assert (events, self.conn.data_to_send()) == ([], b"")
        elif sid in self.model:
            assert events == ([SessionData(session_id=sid, data=data)] if data else [])
            assert self.conn.data_to_send() == b""
        else:
            assert (events, self.conn.data_to_send()) == ([], end(sid))

    @rule(draw=st.data(), error=st.booleans(), data=st.none() | st.binary(max_size=5), cut=cuts)
    def peer_end(self, draw: st.DataObject, error: bool, data: bytes | None, cut: int) -> None:
        sid = self.pick(draw)
        events = self.feed(end(sid, error, data), cut)
        expected: list[MuxEvent] = [SessionEnded(session_id=sid, error=error)]
        if sid not in self.model:
            expected = []  # unknown session
        elif sid in self.remote_ended:  # a repeated End: the peer forgot it, abort
            expected = [SessionEnded(session_id=sid, error=True)]
            del self.model[sid]
            self.remote_ended.discard(sid)
        elif error or sid in self.half_closed:  # aborted, or both sides have sent End
            del self.model[sid]
            self.half_closed.discard(sid)
            self.remote_ended.discard(sid)
        else:
            self.remote_ended.add(sid)  # the peer's direction ends, ours goes on
        assert events == expected
        assert self.conn.data_to_send() == b""  # End is never answered

    @rule(cut=cuts)
    def peer_keepalive(self, cut: int) -> None:
        frame = encode_frame(0, Status.KEEPALIVE, data=b"x")
        assert self.feed(frame, cut) == [KeepAliveReceived(data=b"x")]

    @rule(draw=st.data(), error=st.booleans())
    def local_end(self, draw: st.DataObject, error: bool) -> None:
        sid = self.pick(draw)
        self.conn.end_session(sid, error)
        expected = b""
        if self.model.pop(sid, None) is not None and sid not in self.half_closed:
            expected = end(sid, error)
        self.half_closed.discard(sid)
        self.remote_ended.discard(sid)
        assert self.conn.data_to_send() == expected

    @rule(draw=st.data())
    def local_half_close(self, draw: st.DataObject) -> None:
        sid = self.pick(draw)
        self.conn.half_close(sid)
        expected = b""
        if sid in self.model and sid not in self.half_closed:
            expected = end(sid)
            if sid in self.remote_ended:  # both sides have sent End now
                self.remote_ended.remove(sid)
                del self.model[sid]
            else:
                self.half_closed.add(sid)
        assert self.conn.data_to_send() == expected

    @rule(draw=st.data(), data=st.binary(min_size=1, max_size=12))
    def local_send(self, draw: st.DataObject, data: bytes) -> None:
        sid = self.pick(draw)
        if sid not in self.model or sid in self.half_closed:
            with pytest.raises(SessionClosedError):
                self.conn.send_data(sid, data)
            return
        self.conn.send_data(sid, data)
        sent = FrameDecoder().feed(self.conn.data_to_send())
        assert all(f.status is Status.KEEP and f.session_id == sid for f in sent)
        assert b"".join(f.data or b"" for f in sent) == data
        if self.model[sid] is Network.UDP:
            assert len(sent) == 1

    @invariant()
    def table_matches(self) -> None:
        assert self.conn.session_count == len(self.model)
        assert sorted(self.conn.session_ids()) == sorted(self.model)
        assert self.conn.allocated_total == self.allocated
        for sid, network in self.model.items():
            assert self.conn.session_network(sid) is network
        assert self.half_closed | self.remote_ended <= self.model.keys()
        assert not self.half_closed & self.remote_ended
        for sid in range(5):
            assert self.conn.is_remote_ended(sid) == (sid in self.remote_ended)


ServerTable.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
TestServerTable = ServerTable.TestCase


# --- stateful: a client and a server talking through split pipes -----------------------------


class State(Enum):
    """One end's view of one session, in the ClientServer model."""

    UNSEEN = auto()  # server only: the New frame has not arrived yet
    OPEN = auto()
    HALF_CLOSED = auto()  # this end has sent End; the peer may still send
    REMOTE_ENDED = auto()  # the peer has sent End; this end may still send
    GONE = auto()


IN_TABLE = {State.OPEN, State.HALF_CLOSED, State.REMOTE_ENDED}


@dataclass
class End:
    """One end of one session: what it sent and received, and how it ended its direction."""

    state: State
    sent: list[bytes] = field(default_factory=list)  # per send
    got: list[bytes] = field(default_factory=list)
    sent_end: bool | None = None  # the End it sent: its Error bit, or None before any
    aborted: bool = False  # it called end_session on the open session
    dropping: bool = False  # ... while the peer could still send: that data is dropped
    orphaned: bool = False  # the peer forgot the session and said so with a second End


@dataclass
class Flow:
    network: Network
    client: End
    server: End


class ClientServer(RuleBasedStateMachine):
    """Random opens, sends, half-closes and ends on both ends; the bytes between them arrive
    in random pieces. A session must stay in an end's table until both ends have sent End,
    or either sent End+Error, or that end called end_session, and be gone once the pipes are
    drained. Each direction must deliver exactly what was sent, data sent after the peer's
    End included (a prefix only if the receiver dropped the rest with end_session)."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.client = MuxConnection(Role.CLIENT)
        self.server = MuxConnection(Role.SERVER)
        self.up = bytearray()
        self.down = bytearray()
        self.flows: dict[int, Flow] = {}

    @initialize(max_frame=st.sampled_from([3, 100, 65535]))
    def setup(self, max_frame: int) -> None:
        self.client = MuxConnection(Role.CLIENT, max_frame_data=max_frame)
        self.server = MuxConnection(Role.SERVER, max_frame_data=max_frame)

    payloads = st.binary(max_size=64)

    def ends(self, sid: int, at_client: bool) -> tuple[MuxConnection, End, End]:
        """The connection and model of one end of a session, and the model of the other."""
        flow = self.flows[sid]
        if at_client:
            return self.client, flow.client, flow.server
        return self.server, flow.server, flow.client

    @precondition(lambda self: len(self.flows) < 4)  # few sessions, each taken further
    @rule(target=sessions, network=st.sampled_from(Network), data=payloads)
    def open(self, network: Network, data: bytes) -> int:
        sid = self.client.open_session(Destination(network, "10.0.0.1", 22), data)
        client = End(State.OPEN, sent=[data] if data else [])
        self.flows[sid] = Flow(network, client, End(State.UNSEEN))
        return sid

    @rule(sid=sessions, data=payloads, by_client=st.booleans())
    def send(self, sid: int, data: bytes, by_client: bool) -> None:
        conn, me, _ = self.ends(sid, by_client)
        if me.state is State.OPEN or me.state is State.REMOTE_ENDED:
            conn.send_data(sid, data)  # the peer's End does not stop our direction
            if data:
                me.sent.append(data)
        else:
            with pytest.raises(SessionClosedError):
                conn.send_data(sid, data)

    def remote_ended(self) -> list[tuple[int, bool]]:
        """(session ID, at the client?) of every end whose peer has sent End."""
        return [
            (sid, at_client)
            for sid, flow in self.flows.items()
            for at_client, me in ((True, flow.client), (False, flow.server))
            if me.state is State.REMOTE_ENDED
        ]

    @precondition(lambda self: bool(self.remote_ended()))
    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=64))
    def send_after_peer_end(self, data: st.DataObject, payload: bytes) -> None:
        """What half-close is for: the peer has finished sending, this end has not."""
        sid, at_client = data.draw(st.sampled_from(self.remote_ended()))
        self.send(sid, payload, at_client)

    @rule(sid=sessions, by_client=st.booleans())
    def half_close(self, sid: int, by_client: bool) -> None:
        """End our direction only: what the peer sends until its own End must arrive whole."""
        conn, me, _ = self.ends(sid, by_client)
        conn.half_close(sid)
        if me.state is State.OPEN:
            me.state, me.sent_end = State.HALF_CLOSED, False
        elif me.state is State.REMOTE_ENDED:
            me.state, me.sent_end = State.GONE, False  # both ends have sent End now

    @rule(sid=sessions, error=st.booleans(), by_client=st.booleans())
    def end(self, sid: int, error: bool, by_client: bool) -> None:
        conn, me, _ = self.ends(sid, by_client)
        conn.end_session(sid, error)
        if me.state in IN_TABLE:
            if me.sent_end is None:
                me.sent_end = error
            # After the peer's End nothing more of its data can be on its way.
            me.dropping = me.state is not State.REMOTE_ENDED
            me.aborted = True
            me.state = State.GONE

    def deliver(self, to_server: bool, cuts: list[int], amount: int) -> None:
        sender, receiver = (self.client, self.server) if to_server else (self.server, self.client)
        pipe = self.up if to_server else self.down
        pipe += sender.data_to_send()
        amount = min(amount, len(pipe))
        chunk = bytes(pipe[:amount])
        del pipe[:amount]
        for piece in split(chunk, cuts):
            for event in receiver.receive_data(piece):
                self.on_event(event, at_client=not to_server)

    def on_event(self, event: MuxEvent, at_client: bool) -> None:
        assert not isinstance(event, KeepAliveReceived)
        _, me, peer = self.ends(event.session_id, at_client)
        if isinstance(event, SessionOpened):
            assert not at_client and me.state is State.UNSEEN
            assert event.target.network is self.flows[event.session_id].network
            me.state = State.OPEN
            if event.data:
                me.got.append(event.data)
        elif isinstance(event, SessionData):
            # Nothing arrives after the peer's End (or once we have forgotten the session).
            assert me.state is State.OPEN or me.state is State.HALF_CLOSED
            me.got.append(event.data)
        else:
            if event.error and peer.sent_end is False and peer.aborted:
                # The peer forgot the session (end_session) and answered data we sent after
                # its End with a second End: whatever we still send goes nowhere.
                assert me.state is State.REMOTE_ENDED
                me.state = State.GONE
                me.orphaned = True
                return
            assert peer.sent_end is not None and event.error == peer.sent_end
            if event.error:
                assert me.state in IN_TABLE
                me.state = State.GONE  # aborted
            elif me.state is State.HALF_CLOSED:
                me.state = State.GONE  # the second End
            else:
                assert me.state is State.OPEN  # a repeated End is no event
                me.state = State.REMOTE_ENDED

    @rule(
        to_server=st.booleans(),
        cuts=st.lists(st.integers(0, 300), max_size=5),
        amount=st.integers(0, 400),
    )
    def pump(self, to_server: bool, cuts: list[int], amount: int) -> None:
        self.deliver(to_server, cuts, amount)

    @staticmethod
    def check(network: Network, sent: list[bytes], got: list[bytes], complete: bool) -> None:
        if network is Network.UDP:  # datagrams: same boundaries
            assert got == sent[: len(got)]
            if complete:
                assert got == sent
        else:
            joined_sent, joined_got = b"".join(sent), b"".join(got)
            assert joined_sent.startswith(joined_got)
            if complete:
                assert joined_got == joined_sent

    @invariant()
    def model_matches(self) -> None:
        for sid, flow in self.flows.items():
            for conn, me, peer in (
                (self.client, flow.client, flow.server),
                (self.server, flow.server, flow.client),
            ):
                self.check(flow.network, peer.sent, me.got, complete=False)
                assert conn.is_open(sid) == (me.state in IN_TABLE)
                assert conn.is_remote_ended(sid) == (me.state is State.REMOTE_ENDED)
        clients = sum(f.client.state in IN_TABLE for f in self.flows.values())
        servers = sum(f.server.state in IN_TABLE for f in self.flows.values())
        assert (self.client.session_count, self.server.session_count) == (clients, servers)

    def drain(self) -> None:
        for _ in range(10):
            if not (self.up or self.down or self.client_pending() or self.server_pending()):
                return
            self.deliver(True, [], 1 << 30)
            self.deliver(False, [], 1 << 30)
        raise AssertionError("the two ends never went quiet")

    def client_pending(self) -> bool:
        data = self.client.data_to_send()
        self.up += data
        return bool(data)

    def server_pending(self) -> bool:
        data = self.server.data_to_send()
        self.down += data
        return bool(data)

    def teardown(self) -> None:
        self.drain()
        self.model_matches()
        for flow in self.flows.values():
            for me, peer in ((flow.client, flow.server), (flow.server, flow.client)):
                self.check(flow.network, peer.sent, me.got, complete=not me.dropping)
                # No leak: with everything delivered, a session is gone exactly when this
                # end aborted it, the peer sent End+Error, or both ends have sent End.
                both_ended = me.sent_end is not None and peer.sent_end is not None
                gone = me.aborted or peer.sent_end is True or both_ended or me.orphaned
                assert (me.state is State.GONE) == gone
        # End every direction still open, gently: then nothing may be left on either end.
        for sid in self.client.session_ids():
            self.half_close(sid, by_client=True)
        for sid in self.server.session_ids():
            self.half_close(sid, by_client=False)
        self.drain()
        self.model_matches()
        assert self.client.session_count == 0
        assert self.server.session_count == 0
        assert not (self.client.data_to_send() or self.server.data_to_send())


ClientServer.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestClientServer = ClientServer.TestCase


# -- XUDP (Xray, sing-box): addresses on a UDP session's Keep frames ----------------------

#: As SagerNet/sing-vmess ``xudp.go`` ``WritePacket`` writes them: session 0, NETWORK 02,
#: PORT then ATYP+ADDRESS (META_LEN = 5 + 7 for IPv4), then DATA_LEN and the datagram.
XUDP_NEW = "000c 0000 01 01 02 0035 01 08080808 0002 6869"  # to 8.8.8.8:53, "hi"
XUDP_KEEP = "000c 0000 02 01 02 01bb 01 01010101 0003 796f75"  # to 1.1.1.1:443, "you"


def test_xudp_session_reads_per_datagram_addresses() -> None:
    wire = bytes.fromhex((XUDP_NEW + XUDP_KEEP).replace(" ", "")) + keep(0, b"again")
    events, replies = receive_three_ways(lambda: MuxConnection(Role.SERVER), wire)
    assert events == [
        SessionOpened(session_id=0, target=DNS, data=b"hi"),
        SessionData(session_id=0, data=b"you", address=udp("1.1.1.1", 443)),
        SessionData(session_id=0, data=b"again"),  # no address: the session's target
    ]
    assert replies == b""
    server = MuxConnection(Role.SERVER)
    server.receive_data(wire)
    assert server.is_xudp(0)
    # Replies carry their source, and may exceed 2048 bytes.
    server.send_data(0, b"back", address=udp("1.1.1.1", 443))
    big = bytes(5000)
    server.send_data(0, big)
    assert server.data_to_send() == bytes.fromhex(
        "000c 0000 02 01 02 01bb 01 01010101 0004".replace(" ", "")
    ) + b"back" + keep(0, big)


def test_plain_udp_sessions_never_send_addresses() -> None:
    # A 4.34 peer knows only the session's target (and reads no extras after OPTION).
    server = MuxConnection(Role.SERVER)
    server.receive_data(new(3, DNS) + keep(3, b"q"))
    assert not server.is_xudp(3)
    server.send_data(3, b"a", address=udp("1.1.1.1", 53))
    assert server.data_to_send() == keep(3, b"a")


def test_xudp_client_opens_session_zero() -> None:
    client = MuxConnection(Role.CLIENT)
    assert client.open_session(DNS, b"hi", xudp=True) == 0
    client.send_data(0, b"you", address=udp("1.1.1.1", 443))
    assert client.data_to_send() == bytes.fromhex((XUDP_NEW + XUDP_KEEP).replace(" ", ""))
    assert client.is_xudp(0)
    with pytest.raises(LocalProtocolError):
        client.open_session(DNS, xudp=True)  # only the first session
    assert client.open_session(EXAMPLE_80) == 1
    with pytest.raises(LocalProtocolError):
        MuxConnection(Role.CLIENT).open_session(EXAMPLE_80, xudp=True)  # UDP only
