"""packetaddr datagrams (``protocols/packetaddr.py``): vectors, round trips, bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raybridge.address import udp
from raybridge.errors import LocalProtocolError
from raybridge.protocols.packetaddr import PacketAddrError, decode_packet, encode_packet

# As v2fly v5's AttachAddressToPacket writes them: ATYP 01/02, the address, the port.
VECTORS = [
    (udp("8.8.8.8", 53), b"q", "01 08080808 0035 71"),
    (udp("2001:db8::1", 443), b"", "02 20010db8000000000000000000000001 01bb"),
]


@pytest.mark.parametrize(("dest", "payload", "wire"), VECTORS)
def test_vectors(dest: object, payload: bytes, wire: str) -> None:
    raw = bytes.fromhex(wire.replace(" ", ""))
    assert encode_packet(dest, payload) == raw  # type: ignore[arg-type]
    assert decode_packet(raw) == (dest, payload)


def test_domains_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        encode_packet(udp("example.com", 53), b"x")


@pytest.mark.parametrize(
    "wire", ["", "03 00", "01 080808", "01 08080808 00", "02 " + "00" * 17, "00"]
)
def test_bad_datagrams(wire: str) -> None:
    with pytest.raises(PacketAddrError):
        decode_packet(bytes.fromhex(wire.replace(" ", "")))


def test_ipv4_mapped_ipv6_reads_as_ipv4() -> None:
    raw = bytes.fromhex("02" + "00" * 10 + "ffff" + "7f000001" + "0050") + b"hi"
    assert decode_packet(raw) == (udp("127.0.0.1", 80), b"hi")


@given(
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6).filter(lambda a: not a.ipv4_mapped)),
    port=st.integers(0, 65535),
    payload=st.binary(max_size=300),
)
def test_round_trip(ip: object, port: int, payload: bytes) -> None:
    dest = udp(ip, port)  # type: ignore[arg-type]
    assert decode_packet(encode_packet(dest, payload)) == (dest, payload)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_raise_only_our_error(data: bytes) -> None:
    with contextlib.suppress(PacketAddrError):
        decode_packet(data)
