"""PROXY protocol v1/v2 reader: vectors written by hand from HAProxy's proxy-protocol.txt
(sections 2.1 and 2.2), three-way decoding, round trips with the writers, fuzzing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.protocols.proxyproto import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyProtocolError,
    ProxyProtocolLayer,
    encode_v1,
    encode_v2,
)
from raybridge.protocols.stream import EndReceived, Established, Received
from tests.protocols.test_httpheader import EVENT_TYPES, run, split_at, three_ways

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
TAIL = b"\x16\x03\x01 a TLS ClientHello, say"

# -- v1 (spec 2.1) -----------------------------------------------------------------------------

V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # the spec's own example
FFFF = ":".join(["ffff"] * 8)
V1_TCP6_LONGEST = f"PROXY TCP6 {FFFF} {FFFF} 65535 65535\r\n".encode()
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V1_UNKNOWN_LONGEST = f"PROXY UNKNOWN {FFFF} {FFFF} 65535 65535\r\n".encode()

# -- v2 (spec 2.2) -----------------------------------------------------------------------------

V2_TCP4 = SIG + bytes.fromhex(
    "21 11 000c"  # v2 PROXY, TCP over IPv4, 12 bytes
    "c0a80001 c0a8000b"  # 192.168.0.1 -> 192.168.0.11
    "dc04 01bb"  # 56324 -> 443
)
V2_TCP6 = SIG + bytes.fromhex(
    "21 21 0024"  # v2 PROXY, TCP over IPv6, 36 bytes
    "20010db8000000000000000000000001"  # 2001:db8::1
    "20010db8000000000000000000000002"  # 2001:db8::2
    "04d2 0050"  # 1234 -> 80
)
V2_UDP4 = SIG + bytes.fromhex("21 12 000c 0a000001 0a000002 0035 0035")  # 10.0.0.1:53
V2_TCP4_TLV = SIG + bytes.fromhex(
    "21 11 0011"  # 12 + 5 bytes
    "7f000001 7f000001 1f90 0050"  # 127.0.0.1:8080 -> :80
    "01 0002 6832"  # PP2_TYPE_ALPN "h2" (ignored)
)
V2_LOCAL = SIG + bytes.fromhex("20 00 0000")  # health check: no addresses
V2_LOCAL_WITH_BLOCK = SIG + bytes.fromhex("20 11 000c 01020304 05060708 0001 0002")
V2_UNIX = (
    SIG
    + bytes.fromhex("21 31 00d8")  # v2 PROXY, UNIX stream, 216 bytes
    + b"/tmp/a".ljust(108, b"\0")
    + b"/tmp/b".ljust(108, b"\0")
)


@pytest.mark.parametrize(
    ("header", "info"),
    [
        (V1_TCP4, {"proxy_version": 1, "source": ("192.168.0.1", 56324)}),
        (V1_TCP6_LONGEST, {"proxy_version": 1, "source": (FFFF, 65535)}),
        (V1_UNKNOWN, {"proxy_version": 1}),
        (V1_UNKNOWN_LONGEST, {"proxy_version": 1}),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n",
            {"proxy_version": 1, "source": ("0.0.0.0", 0)},
        ),
        (V2_TCP4, {"proxy_version": 2, "source": ("192.168.0.1", 56324)}),
        (V2_TCP6, {"proxy_version": 2, "source": ("2001:db8::1", 1234)}),
        (V2_UDP4, {"proxy_version": 2, "source": ("10.0.0.1", 53)}),
        (V2_TCP4_TLV, {"proxy_version": 2, "source": ("127.0.0.1", 8080)}),
        (V2_LOCAL, {"proxy_version": 2}),
        (V2_LOCAL_WITH_BLOCK, {"proxy_version": 2}),
        (V2_UNIX, {"proxy_version": 2}),
    ],
)
def test_spec_vectors_three_ways(header: bytes, info: dict[str, object]) -> None:
    events, out, error = three_ways(
        ProxyProtocolLayer, header, tail=TAIL, tail_events=[Received(TAIL)]
    )
    assert (events, out, error) == ([Established(info=info)], b"", None)


def test_longest_v1_lines() -> None:
    assert len(V1_UNKNOWN_LONGEST) == V1_MAX == 107
    assert len(V1_TCP6_LONGEST) == 104


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no header at all (REQUIRE)
        b"\x16\x03\x01\x02\x00",  # a TLS hello where the header should be
        b"PROXZ",
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",  # an extra token
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
        b"PROXY TCP4 1.2.3.04 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xff\r\n",
        b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",  # 116 bytes: no LF within 107
        SIG + bytes.fromhex("11 11 000c") + bytes(12),  # version 1 in a v2 header
        SIG + bytes.fromhex("22 11 000c") + bytes(12),  # command 2
        SIG + bytes.fromhex("21 00 0000"),  # PROXY with UNSPEC
        SIG + bytes.fromhex("21 13 000c") + bytes(12),  # a family the spec does not list
        SIG + bytes.fromhex("21 40 000c") + bytes(12),
        SIG + bytes.fromhex("21 11 0008") + bytes(8),  # too short for INET
        SIG + bytes.fromhex("21 21 000c") + bytes(12),  # too short for INET6
        SIG + bytes.fromhex("21 31 0024") + bytes(36),  # too short for UNIX
        SIG + bytes.fromhex("21 11 1001"),  # 4097 bytes: over go-proxyproto's 4096
        SIG[:11] + b"\x0b",
    ],
)
def test_malformed_headers_three_ways(data: bytes) -> None:
    events, out, error = three_ways(ProxyProtocolLayer, data, tail=TAIL)
    assert (events, out, error) == ([], b"", "ProxyProtocolError")


def test_incomplete_header_waits_then_eof_is_an_error() -> None:
    for header in (V1_TCP4, V2_TCP6):
        layer = ProxyProtocolLayer()
        assert layer.receive_data(header[:-1]) == []
        with pytest.raises(ProxyProtocolError):
            layer.receive_eof()


def test_error_reply_is_queued_once() -> None:
    layer = ProxyProtocolLayer(error_reply=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ProxyProtocolError):
        layer.receive_data(b"GET / HTTP/1.1\r\n")
    assert layer.data_to_send() == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    with pytest.raises(ProxyProtocolError):
        layer.receive_eof()
    assert layer.data_to_send() == b""


def test_v2_length_bound_is_configurable() -> None:
    big = SIG + bytes.fromhex("21 11 ffff") + bytes(0xFFFF)
    assert run(ProxyProtocolLayer(), [big])[2] == "ProxyProtocolError"
    events = run(ProxyProtocolLayer(max_v2_length=0xFFFF), [big + b"x"])[0]
    assert events == [
        Established(info={"proxy_version": 2, "source": ("0.0.0.0", 0)}),
        Received(b"x"),
    ]
    with pytest.raises(ValueError):
        ProxyProtocolLayer(max_v2_length=0x10000)


def test_after_the_header_the_stream_passes_through() -> None:
    layer = ProxyProtocolLayer()
    layer.send_data(b"early")  # a server does not speak first, but if it did
    layer.receive_data(V1_TCP4)
    assert layer.receive_data(b"up") == [Received(b"up")]
    assert layer.receive_data(b"") == []
    layer.send_data(b"down")
    assert layer.data_to_send() == b"earlydown"
    layer.send_eof()  # nothing of its own: TCP carries the half-close
    assert layer.data_to_send() == b""
    assert layer.can_half_close
    assert layer.receive_eof() == [EndReceived()]


# -- writers and round trips -------------------------------------------------------------------


def test_writers_give_the_spec_vectors() -> None:
    src, dst = ("192.168.0.1", 56324), ("192.168.0.11", 443)
    assert encode_v1(src, dst) == V1_TCP4
    assert encode_v1(None, dst) == V1_UNKNOWN
    assert encode_v2(src, dst) == V2_TCP4
    assert encode_v2(("10.0.0.1", 53), ("10.0.0.2", 53), udp=True) == V2_UDP4
    assert encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 80)) == V2_TCP6
    assert (
        encode_v2(("127.0.0.1", 8080), ("127.0.0.1", 80), tlvs=bytes.fromhex("0100026832"))
        == V2_TCP4_TLV
    )
    assert encode_v2(None, None) == V2_LOCAL
    assert V2_SIGNATURE == SIG
    with pytest.raises(ValueError):
        encode_v1(("1.2.3.4", 1), ("::1", 2))


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: str(ip) if ip.ipv4_mapped is None else "::1")
ports = st.integers(0, 0xFFFF)


@given(
    v6=st.booleans(),
    data=st.data(),
    version=st.sampled_from([1, 2]),
    udp=st.booleans(),
    payload=st.binary(max_size=50),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
@settings(max_examples=300)
def test_round_trip_any_address_split_anywhere(
    v6: bool,
    data: st.DataObject,
    version: int,
    udp: bool,
    payload: bytes,
    cuts: list[int],
) -> None:
    addr = ipv6 if v6 else ipv4
    src = (data.draw(addr), data.draw(ports))
    dst = (data.draw(addr), data.draw(ports))
    header = encode_v1(src, dst) if version == 1 else encode_v2(src, dst, udp=udp)
    events, out, error = run(ProxyProtocolLayer(), split_at(header + payload, cuts))
    source = (str(ipaddress.ip_address(src[0])), src[1])
    expected = [Established(info={"proxy_version": version, "source": source})]
    assert (events, out, error) == (expected + ([Received(payload)] if payload else []), b"", None)


@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda b: b"PROXY " + b, st.binary(max_size=120)),
        st.builds(lambda b: SIG + b, st.binary(max_size=300)),
        st.builds(
            lambda h, b: SIG + h + b,
            st.sampled_from([b"\x21\x11", b"\x20\x00", b"\x21\x21"]),
            st.binary(max_size=60),
        ),
    ),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_proxy_protocol_error(data: bytes, cuts: list[int]) -> None:
    whole = run(ProxyProtocolLayer(), [data], eof=True)
    assert run(ProxyProtocolLayer(), split_at(data, cuts), eof=True) == whole
    layer = ProxyProtocolLayer()
    try:
        for chunk in split_at(data, cuts):
            for event in layer.receive_data(chunk):
                assert isinstance(event, EVENT_TYPES)
        layer.receive_eof()
    except ProxyProtocolError:
        pass
