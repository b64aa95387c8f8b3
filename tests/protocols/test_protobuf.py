"""The protobuf codec: the byte vectors of the protobuf encoding guide
(protobuf.dev/programming-guides/encoding), V2Ray's messages round-tripped, and arbitrary
bytes (a message or ProtobufError, nothing else). Interop with Go's protobuf is shown by
tests/test_stats.py (v2ctl) and tests/test_api.py (V2Ray 4.34 taking our requests)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raybridge.api import messages as pb
from raybridge.protocols.protobuf import (
    BOOL,
    BYTES,
    INT64,
    MESSAGE,
    STRING,
    UINT32,
    UINT64,
    Field,
    Message,
    ProtobufError,
    decode_varint,
    encode_varint,
)


@dataclass
class Sample(Message):
    FIELDS = (
        Field(1, "a", UINT32),
        Field(2, "b", STRING),
        Field(3, "c", INT64),
        Field(4, "d", UINT32, repeated=True),
        Field(5, "e", BOOL),
        Field(6, "f", BYTES),
        Field(7, "g", UINT64),
    )
    a: int = 0
    b: str = ""
    c: int = 0
    d: list[int] = field(default_factory=list)
    e: bool = False
    f: bytes = b""
    g: int = 0


def test_guide_vectors() -> None:
    assert Sample(a=150).encode() == bytes.fromhex("089601")
    assert Sample(b="testing").encode() == bytes.fromhex("120774657374696e67")
    assert Sample(c=-2).encode() == bytes.fromhex("18feffffffffffffffff01")
    assert Sample(d=[3, 270, 86942]).encode() == bytes.fromhex("2206038e029ea705")  # packed
    assert Sample.decode(bytes.fromhex("18feffffffffffffffff01")).c == -2
    # repeated varints unpacked are read too, and fields are read in any order
    assert Sample.decode(bytes.fromhex("2003208e02089601")) == Sample(a=150, d=[3, 270])
    assert Sample().encode() == b""  # defaults are not written


def test_unknown_fields_and_wire_types_are_skipped() -> None:
    data = (
        bytes.fromhex("4801")  # field 9, varint
        + bytes.fromhex("51")
        + bytes(8)  # field 10, fixed64
        + bytes.fromhex("5d")
        + bytes(4)  # field 11, fixed32
        + bytes.fromhex("6203616263")  # field 12, bytes "abc"
        + bytes.fromhex("0807")
    )
    assert Sample.decode(data) == Sample(a=7)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x08", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x12\x05ab", "5 bytes announced, 2 left"),
        (b"\x0b", "unsupported wire type 3"),  # a group
        (b"\x00\x01", "invalid field number 0"),
        (b"\x0a\x01x", "wire type 2"),  # a string where a uint32 is declared
        (b"\x12\x01\xff", "not UTF-8"),
    ],
)
def test_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        Sample.decode(data)


@dataclass
class Deep(Message):
    inner: Deep | None = None


Deep.FIELDS = (Field(1, "inner", MESSAGE, message=Deep),)


def test_nesting_is_bounded() -> None:
    nested = pb.User(account=pb.TypedMessage(type="t", value=b"v"))
    assert pb.User.decode(nested.encode()) == nested
    deep = b""
    for _ in range(40):
        deep = b"\x0a" + encode_varint(len(deep)) + deep
    with pytest.raises(ProtobufError, match="nested too deep"):
        Deep.decode(deep)


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data, 0) == (value, len(data))


users = st.builds(
    pb.User,
    level=st.integers(0, (1 << 32) - 1),
    email=st.text(max_size=20),
    account=st.none() | st.builds(pb.TypedMessage, type=st.text(max_size=20), value=st.binary()),
)
messages = st.one_of(
    st.builds(
        pb.SysStatsResponse,
        NumGoroutine=st.integers(0, (1 << 32) - 1),
        Alloc=st.integers(0, (1 << 64) - 1),
        Uptime=st.integers(0, (1 << 32) - 1),
    ),
    st.builds(
        pb.QueryStatsResponse,
        stat=st.lists(
            st.builds(
                pb.Stat, name=st.text(max_size=30), value=st.integers(-(1 << 63), (1 << 63) - 1)
            )
        ),
    ),
    st.builds(
        pb.SocksServerConfig,
        auth_type=st.integers(0, 1),
        accounts=st.dictionaries(st.text(max_size=10), st.text(max_size=10)),
        udp_enabled=st.booleans(),
    ),
    st.builds(pb.VMessInboundConfig, user=st.lists(users, max_size=3)),
    st.builds(
        pb.DokodemoConfig,
        port=st.integers(0, 65535),
        networks=st.lists(st.integers(0, 4)),
        address=st.none() | st.builds(pb.IPOrDomain, domain=st.text(min_size=1, max_size=20)),
    ),
)


@given(messages)
def test_messages_round_trip(message: Message) -> None:
    assert type(message).decode(message.encode()) == message


@given(
    st.binary(max_size=200),
    st.sampled_from([pb.AddInboundRequest, pb.QueryStatsResponse, pb.SocksServerConfig, Sample]),
)
def test_arbitrary_bytes(data: bytes, kind: type[Message]) -> None:
    with contextlib.suppress(ProtobufError):  # anything else fails the test
        kind.decode(data)
