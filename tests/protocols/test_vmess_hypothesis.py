"""Property tests: exact round trips under arbitrary splits, and hostile input never raising
anything but :class:`VMessError`."""

from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raybridge.protocols.vmess import (
    Command,
    Data,
    EndOfStream,
    Option,
    RequestReceived,
    ResponseReceived,
    Security,
    ServerConnection,
    User,
    UserValidator,
    VMessAuthError,
    VMessError,
)
from raybridge.protocols.vmess.header import (
    create_auth_id,
    legacy_auth,
    legacy_header_iv,
    seal_aead_request,
)
from raybridge.protocols.vmess.primitives import aes_cfb_encryptor, fnv1a32_pure
from tests.protocols.test_vmess_support import (
    NOW,
    OPTION_SETS,
    SECURITIES,
    SPEC_USER,
    Clock,
    make_pair,
    payloads,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

securities = st.sampled_from(SECURITIES)
option_sets = st.sampled_from(OPTION_SETS)
commands = st.sampled_from(list(Command))
messages = st.lists(st.binary(min_size=0, max_size=3000), min_size=0, max_size=6)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def _framed(security: Security, options: Option) -> bool:
    return bool(options & Option.CHUNK_STREAM) or security in (
        Security.AES_128_GCM,
        Security.CHACHA20_POLY1305,
    )


@FAST
@given(
    security=securities,
    options=option_sets,
    command=commands,
    aead=st.booleans(),
    request=messages,
    response=messages,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    chunk_size=st.sampled_from([1, 7, 1966, 16384, 10**6]),
)
def test_round_trip_with_arbitrary_splits(
    security: Security,
    options: Option,
    command: Command,
    aead: bool,
    request: list[bytes],
    response: list[bytes],
    cuts: list[int],
    chunk_size: int,
) -> None:
    client, server, _ = make_pair(
        security, command, aead=aead, options=options, chunk_size=chunk_size
    )
    if command == Command.UDP and _framed(security, options):
        # one call = one datagram = one chunk
        request = [m[: min(len(m), 1966)] for m in request]
        response = [m[: min(len(m), 1966)] for m in response]
    wire = client.header() + b"".join(client.send(m) for m in request) + client.send_eof()
    events: list[object] = []
    for piece in _split(wire, cuts):
        events += server.receive_data(piece)
    assert isinstance(events[0], RequestReceived)
    expected = [m for m in request if m]
    if command == Command.UDP and _framed(security, options):
        assert payloads(events) == expected
    else:
        assert b"".join(payloads(events)) == b"".join(expected)
    assert (events[-1] == EndOfStream()) == _framed(security, options)

    back_wire = b"".join(server.send(m) for m in response) + server.send_eof()
    back: list[object] = []
    for piece in _split(back_wire, cuts[::-1]):
        back += client.receive_data(piece)
    assert back[0] == ResponseReceived(0, b"")
    assert b"".join(payloads(back)) == b"".join(response)


_VALIDATOR = UserValidator([SPEC_USER, User(uuid.UUID(int=7), alter_id=2)], clock=Clock())


def _only_vmess_errors(receive, pieces: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    try:
        for piece in pieces:
            for event in receive(piece):
                assert isinstance(event, RequestReceived | ResponseReceived | Data | EndOfStream)
    except VMessError:
        pass


@FAST
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=5))
def test_arbitrary_bytes_to_server(data: bytes, cuts: list[int]) -> None:
    server = ServerConnection(_VALIDATOR, urandom=os.urandom)
    _only_vmess_errors(server.receive_data, _split(data, cuts))


@FAST
@given(
    security=securities,
    aead=st.booleans(),
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0), max_size=5),
)
def test_arbitrary_bytes_to_client(
    security: Security, aead: bool, data: bytes, cuts: list[int]
) -> None:
    client, _, _ = make_pair(security, aead=aead)
    client.header()
    _only_vmess_errors(client.receive_data, _split(data, cuts))


@FAST
@given(
    security=securities,
    options=option_sets,
    command=commands,
    aead=st.booleans(),
    junk=st.binary(min_size=1, max_size=400),
)
def test_arbitrary_bytes_after_valid_handshakes(
    security: Security, options: Option, command: Command, aead: bool, junk: bytes
) -> None:
    client, server, _ = make_pair(security, command, aead=aead, options=options)
    assert isinstance(server.receive_data(client.header())[0], RequestReceived)
    _only_vmess_errors(server.receive_data, [junk, junk[::-1]])
    response = server.send(b"")
    assert client.receive_data(response) == [ResponseReceived(0, b"")]
    _only_vmess_errors(client.receive_data, [junk, junk[::-1]])


@SLOW
@given(
    security=securities,
    options=option_sets,
    aead=st.booleans(),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_corrupted_byte_never_raises_anything_else(
    security: Security, options: Option, aead: bool, position: int, flip: int
) -> None:
    client, server, _ = make_pair(security, aead=aead, options=options)
    wire = bytearray(client.send(b"some payload" * 20) + client.send_eof())
    wire[position % len(wire)] ^= flip
    _only_vmess_errors(server.receive_data, [bytes(wire)])


@FAST
@given(data=st.binary(max_size=100), cuts=st.lists(st.integers(min_value=0), max_size=3))
def test_truncated_and_oversized_inputs(data: bytes, cuts: list[int]) -> None:
    # a valid header, truncated anywhere, then arbitrary data
    client, server, _ = make_pair(Security.AES_128_GCM)
    header = client.header()
    cut = (cuts[0] if cuts else 0) % len(header)
    _only_vmess_errors(server.receive_data, [header[:cut], data])
    assert server.bytes_received == cut + len(data)


@SLOW
@given(delta=st.integers(min_value=-400, max_value=400))
def test_aead_timestamp_window(delta: int) -> None:
    client, server, _ = make_pair(client_now=NOW + delta)
    try:
        events = server.receive_data(client.header())
    except VMessAuthError:
        assert abs(delta) > 120
    else:
        assert abs(delta) <= 120 and isinstance(events[0], RequestReceived)


@SLOW
@given(wire=st.binary(min_size=16, max_size=16))
def test_unknown_auth_drains_in_range(wire: bytes) -> None:
    server = ServerConnection(_VALIDATOR, urandom=os.urandom)
    try:
        server.receive_data(wire)
    except VMessAuthError as exc:
        params = _VALIDATOR.drain_params
        assert params is not None
        base, rand_max = params
        assert exc.drain_to is not None
        assert base + 54 <= exc.drain_to < base + 54 + rand_max


@FAST
@given(
    plaintext=st.binary(max_size=120),
    fix_checksum=st.booleans(),
    aead=st.booleans(),
    extra=st.binary(max_size=50),
)
def test_authenticated_but_arbitrary_header(
    plaintext: bytes, fix_checksum: bool, aead: bool, extra: bytes
) -> None:
    """Valid authentication around an arbitrary header plaintext: only VMessError or a
    well-formed RequestReceived."""
    if fix_checksum:
        plaintext += fnv1a32_pure(plaintext).to_bytes(4, "big")
    validator = UserValidator([SPEC_USER], clock=Clock())
    if aead:
        auth_id = create_auth_id(SPEC_USER.auth_id_key, NOW, os.urandom(4))
        wire = seal_aead_request(SPEC_USER.cmd_key, auth_id, os.urandom(8), plaintext)
    else:
        wire = legacy_auth(SPEC_USER.id_bytes, NOW)
        wire += aes_cfb_encryptor(SPEC_USER.cmd_key, legacy_header_iv(NOW)).update(plaintext)
    server = ServerConnection(validator, urandom=os.urandom)
    try:
        events = server.receive_data(wire + extra)
    except VMessError:
        return
    for event in events:
        assert isinstance(event, RequestReceived | Data | EndOfStream)
    if events:
        header = events[0]
        assert isinstance(header, RequestReceived)
        assert header.header.security not in (Security.AUTO, Security.UNKNOWN)
