"""The reverse proxy's Control message (docs/protocols.md 3.3 and 7)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.address import Destination, Network, tcp
from raybridge.errors import RemoteProtocolError
from raybridge.protocols.mux import MuxConnection, Role, SessionData, SessionOpened
from raybridge.protocols.reverse import (
    CONTROL_DOMAIN,
    CONTROL_DOMAINS,
    CONTROL_TARGET,
    MAX_PADDING,
    ControlError,
    ControlState,
    decode_control,
    encode_control,
    heartbeat,
    is_control_target,
)

FAST = settings(max_examples=300, deadline=None)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- docs/protocols.md section 7 vectors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "wire"),
    [(ControlState.ACTIVE, "9a06 03 010203"), (ControlState.DRAIN, "0801 9a06 03 010203")],
)
def test_vectors(state: ControlState, wire: str) -> None:
    assert encode_control(state, h("010203")) == h(wire)
    assert decode_control(h(wire)) is state


def test_proto3_omits_zero_fields() -> None:
    assert encode_control(ControlState.ACTIVE, b"") == b""
    assert encode_control(ControlState.DRAIN, b"") == h("0801")
    assert decode_control(b"") is ControlState.ACTIVE


def test_long_random_uses_a_multi_byte_length() -> None:
    wire = encode_control(ControlState.ACTIVE, bytes(200))
    assert wire[:4] == h("9a06 c801")
    assert decode_control(wire) is ControlState.ACTIVE


def test_constants() -> None:
    assert CONTROL_DOMAIN == "reverse.internal.v2ray.com"
    assert {"reverse.internal.v2ray.com", "reverse.internal.v2fly.org"} == CONTROL_DOMAINS
    assert Destination(Network.UDP, CONTROL_DOMAIN, 0) == CONTROL_TARGET
    assert issubclass(ControlError, RemoteProtocolError)


def test_control_target() -> None:
    assert is_control_target(CONTROL_TARGET)
    assert is_control_target(tcp("reverse.internal.v2fly.org", 443))  # any network and port
    assert not is_control_target(tcp("reverse.internal.v2ray.com.evil", 0))
    assert not is_control_target(tcp("Reverse.internal.v2ray.com", 0))  # Go compares exactly
    assert not is_control_target(tcp("127.0.0.1", 0))


def test_portal_control_session_on_the_wire() -> None:
    """The portal's first frame (docs/protocols.md 3.3): New UDP to the control domain, port 0,
    carrying the first heartbeat; the bridge (mux server) reads it as one datagram."""
    portal = MuxConnection(Role.CLIENT)
    beat = encode_control(ControlState.ACTIVE, h("010203"))
    assert portal.open_session(CONTROL_TARGET, beat) == 1
    wire = portal.data_to_send()
    assert wire == h(
        "0023 0001 01 01 02 0000 02 1a 726576657273652e696e7465726e616c2e76327261792e636f6d"
        "0006 9a0603010203"
    )
    drain = encode_control(ControlState.DRAIN, b"")
    portal.send_data(1, drain)
    wire += portal.data_to_send()
    bridge = MuxConnection(Role.SERVER)
    events = bridge.receive_data(wire)
    assert events == [
        SessionOpened(session_id=1, target=CONTROL_TARGET, data=beat),
        SessionData(session_id=1, data=drain),
    ]
    assert decode_control(events[1].data) is ControlState.DRAIN  # type: ignore[union-attr]


# --- decoding: what golang/protobuf 1.3 accepts and rejects ----------------------------------

ACCEPTED = {
    "last-state-wins": ("0801 0800", ControlState.ACTIVE),
    "last-state-wins-drain": ("0800 0801", ControlState.DRAIN),
    "unknown-enum-value": ("0805", ControlState.DRAIN),
    "int32-truncation": ("08 8080808010", ControlState.ACTIVE),  # 2**32 -> int32 0
    "negative-enum": ("08 ffffffffffffffffff01", ControlState.DRAIN),  # -1, 10-byte varint
    "non-canonical-key": ("8800 01", ControlState.DRAIN),
    "unknown-varint": ("1001 0801", ControlState.DRAIN),
    "unknown-fixed64": ("0801 19 0102030405060708", ControlState.DRAIN),
    "unknown-fixed32": ("1d 01020304 0801", ControlState.DRAIN),
    "unknown-bytes": ("22 03 616263 0801", ControlState.DRAIN),
    "state-with-bytes-wire-type": ("0801 0a 01 00", ControlState.DRAIN),  # skipped, not state
    "random-with-varint-wire-type": ("9806 05", ControlState.ACTIVE),
    "group": ("0801 2b 0800 33 34 2c", ControlState.DRAIN),  # nested groups, state inside ignored
    "group-with-fields": ("23 1001 2a0100 25 01020304 24", ControlState.ACTIVE),
    "field-zero": ("0001 0801", ControlState.DRAIN),  # golang/protobuf 1.3 skips field 0
    "empty-bytes": ("9a06 00", ControlState.ACTIVE),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_decoder_accepts(name: str) -> None:
    wire, state = ACCEPTED[name]
    assert decode_control(h(wire)) is state
    assert decode_control(bytearray(h(wire))) is state
    assert decode_control(memoryview(h(wire))) is state


REJECTED = {
    "truncated-key": "9a",
    "truncated-varint": "08",
    "truncated-varint-2": "08 80",
    "varint-11-bytes": "08 ffffffffffffffffff8001",
    "varint-overflow": "08 ffffffffffffffffff02",
    "truncated-bytes": "9a06 05 0102",
    "truncated-length": "9a06",
    "truncated-fixed32": "0d 010203",
    "truncated-fixed64": "09 01020304050607",
    "stray-end-group": "0c",
    "unterminated-group": "0b 0801",
    "unterminated-nested-group": "0b 13 14",
    "wire-type-6": "0e",
    "wire-type-7": "0f",
    "wire-type-6-in-group": "0b 0e 0c",
    "huge-length": "9a06 ffffffffffffffff7f",
}


@pytest.mark.parametrize("name", REJECTED)
def test_decoder_rejects(name: str) -> None:
    with pytest.raises(ControlError):
        decode_control(h(REJECTED[name]))


def test_prefixes_and_trailing_bytes() -> None:
    """A message cut anywhere parses or raises ControlError; a message followed by another
    is their merge (protobuf's concatenation rule: the later state wins)."""
    wire = encode_control(ControlState.DRAIN, bytes(range(63)))
    for cut in range(len(wire)):
        with contextlib.suppress(ControlError):
            decode_control(wire[:cut])
    assert decode_control(wire[:2]) is ControlState.DRAIN
    # proto3 writes no ACTIVE field, so appending an ACTIVE message does not reset the state
    assert decode_control(wire + encode_control(ControlState.ACTIVE, b"x")) is ControlState.DRAIN
    assert decode_control(wire + h("0800")) is ControlState.ACTIVE
    assert decode_control(encode_control(ControlState.ACTIVE, b"x") + wire) is ControlState.DRAIN
    assert decode_control(wire + h("1001")) is ControlState.DRAIN


# --- heartbeat -------------------------------------------------------------------------------


class FakeRandom:
    def __init__(self, first: int) -> None:
        self.first = first
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return bytes([self.first]) if len(self.calls) == 1 else bytes(range(1, n + 1))


@pytest.mark.parametrize("first", [0, 1, 63, 64, 130, 255])
@pytest.mark.parametrize("drain", [False, True])
def test_heartbeat(first: int, drain: bool) -> None:
    urandom = FakeRandom(first)
    beat = heartbeat(urandom, drain=drain)
    size = first % 64
    state = ControlState.DRAIN if drain else ControlState.ACTIVE
    assert beat == encode_control(state, bytes(range(1, size + 1)))
    assert decode_control(beat) is state
    assert urandom.calls == ([1, size] if size else [1])
    if size == 0 and not drain:
        assert beat == b""  # V2Ray drops this empty write; MuxConnection.send_data ignores it


def test_heartbeat_padding_sizes_cover_0_to_63() -> None:
    sizes = set()
    for first in range(256):
        beat = heartbeat(FakeRandom(first))
        sizes.add(len(beat) - 3 if beat else 0)
    assert sizes == set(range(MAX_PADDING + 1))


# --- properties ------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(ControlState), st.binary(max_size=2000))
def test_round_trip(state: ControlState, random: bytes) -> None:
    assert decode_control(encode_control(state, random)) is state


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_control_error(data: bytes) -> None:
    with contextlib.suppress(ControlError):
        decode_control(data)


tokens = st.sampled_from(
    [b"\x08", b"\x0b", b"\x0c", b"\x9a\x06", b"\x0d", b"\x09", b"\x80", b"\x01", b"\xff", b"\x00"]
)


@FAST
@given(st.lists(tokens | st.binary(max_size=3), max_size=20))
def test_protobuf_shaped_bytes_raise_only_control_error(parts: list[bytes]) -> None:
    with contextlib.suppress(ControlError):
        decode_control(b"".join(parts))
