"""Server-side authentication, replay protection, drain sizes and request validation
(docs/protocols.md 1.2 to 1.6)."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

import pytest

from raybridge.address import Destination, Network, tcp
from raybridge.errors import LocalProtocolError
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Option,
    RequestReceived,
    Security,
    ServerConnection,
    User,
    UserValidator,
    VMessAuthError,
    VMessError,
    security_from_config,
)
from raybridge.protocols.vmess.gorand import GoRand, crc64_ecma_update
from raybridge.protocols.vmess.header import (
    create_auth_id,
    encode_request_plaintext,
    legacy_auth,
    legacy_header_iv,
    seal_aead_request,
)
from raybridge.protocols.vmess.primitives import aes_cfb_encryptor, fnv1a32_pure
from tests.protocols.test_vmess_support import (
    NOW,
    REQ_IV,
    REQ_KEY,
    SPEC_USER,
    Clock,
    M,
    P,
    S,
    Scripted,
    client_random,
    make_pair,
)

OTHER = User(uuid.UUID("0b0b5c2e-3a63-4d3b-9a41-3c1b6b0b2f11"), alter_id=4, email="Other@x")


def _validator(*users: User, clock: Clock | None = None) -> UserValidator:
    return UserValidator(users or (SPEC_USER,), clock=clock or Clock())


def _server(validator: UserValidator, **kwargs: bool) -> ServerConnection:
    return ServerConnection(validator, urandom=os.urandom, **kwargs)


def _aead_header(
    user: User = SPEC_USER, *, now: float = NOW, options: int = 0x0D, **plain: object
) -> bytes:
    """An AEAD request built from the header primitives, for requests a client never sends."""
    fields: dict[str, object] = {
        "body_iv": os.urandom(16),
        "body_key": os.urandom(16),
        "response_auth": 7,
        "options": Option(options),
        "security": Security.AES_128_GCM,
        "command": Command.TCP,
        "target": tcp("example.com", 80),
        "padding": b"",
    }
    fields.update(plain)
    plaintext = encode_request_plaintext(**fields)  # type: ignore[arg-type]
    auth_id = create_auth_id(user.auth_id_key, int(now), os.urandom(4))
    return seal_aead_request(user.cmd_key, auth_id, os.urandom(8), plaintext)


def _seal_raw_plaintext(plaintext: bytes, user: User = SPEC_USER, now: float = NOW) -> bytes:
    auth_id = create_auth_id(user.auth_id_key, int(now), os.urandom(4))
    return seal_aead_request(user.cmd_key, auth_id, os.urandom(8), plaintext)


def _legacy_header(plaintext: bytes, user: User = SPEC_USER, ts: int = NOW) -> bytes:
    auth = legacy_auth(user.id_bytes, ts)
    return auth + aes_cfb_encryptor(user.cmd_key, legacy_header_iv(ts)).update(plaintext)


def _plain(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "body_iv": os.urandom(16),
        "body_key": os.urandom(16),
        "response_auth": 7,
        "options": S | M,
        "security": Security.AES_128_GCM,
        "command": Command.TCP,
        "target": tcp("example.com", 80),
        "padding": b"",
    }
    fields.update(overrides)
    return encode_request_plaintext(**fields)  # type: ignore[arg-type]


def _with_checksum(body: bytes) -> bytes:
    return body + fnv1a32_pure(body).to_bytes(4, "big")


def _drain_bounds(validator: UserValidator) -> tuple[int, int]:
    params = validator.drain_params
    assert params is not None
    base, rand_max = params
    return base + 54, base + 54 + rand_max - 1


# -- config strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("aes-128-gcm", Security.AES_128_GCM),
        ("AES-128-GCM", Security.AES_128_GCM),
        ("chacha20-poly1305", Security.CHACHA20_POLY1305),
        ("none", Security.NONE),
        ("auto", Security.AES_128_GCM),
        ("legacy", Security.AES_128_GCM),
        ("zero", Security.AES_128_GCM),
        ("", Security.AES_128_GCM),
    ],
)
def test_security_from_config(name: str, expected: Security) -> None:
    assert security_from_config(name) == expected


def test_security_auto_without_aes_hardware() -> None:
    assert security_from_config("auto", arch_has_aes=False) == Security.CHACHA20_POLY1305
    assert security_from_config("none", arch_has_aes=False) == Security.NONE


def test_client_defaults_match_v2ray() -> None:
    for security, options in [
        (Security.AES_128_GCM, 0x0D),
        (Security.CHACHA20_POLY1305, 0x0D),
        (Security.NONE, 0x05),
        (Security.LEGACY, 0x01),
    ]:
        client, server, _ = make_pair(security)
        assert client.options == options
        (event,) = server.receive_data(client.header())
        assert isinstance(event, RequestReceived) and event.header.options == options


def test_client_refuses_bad_parameters() -> None:
    for security in (Security.AUTO, Security.UNKNOWN):
        with pytest.raises(LocalProtocolError):
            make_pair(security)
    with pytest.raises(LocalProtocolError):
        make_pair(options=S | P)  # P without M would crash a V2Ray server
    with pytest.raises(LocalProtocolError):
        ClientConnection(SPEC_USER, Command.TCP, None, Security.NONE, now=NOW, urandom=os.urandom)
    with pytest.raises(LocalProtocolError):
        ClientConnection(
            SPEC_USER,
            Command.TCP,
            Destination(Network.TCP, "a" * 300, 1),
            Security.NONE,
            now=NOW,
            urandom=os.urandom,
        )


def test_aead_is_chosen_by_alter_id() -> None:
    assert make_pair(user=SPEC_USER)[0].aead
    assert not make_pair(user=OTHER, validator=_validator(OTHER))[0].aead


# -- which variant, which user --------------------------------------------------------------------


@pytest.mark.parametrize("aead", [True, False])
@pytest.mark.parametrize("user", [SPEC_USER, OTHER])
def test_both_variants_for_every_user(user: User, aead: bool) -> None:
    validator = _validator(SPEC_USER, OTHER)
    client, server, _ = make_pair(user=user, validator=validator, aead=aead)
    (event,) = server.receive_data(client.header())
    assert isinstance(event, RequestReceived)
    assert event.user == user and event.aead == aead


@pytest.mark.parametrize("alter_index", [0, 3])
def test_legacy_client_uses_a_random_alter_id(alter_index: int) -> None:
    rnd = client_random(legacy_offset=-7, alter_index=alter_index)
    client = ClientConnection(
        OTHER, Command.TCP, tcp("a.b", 1), Security.NONE, now=NOW, urandom=rnd
    )
    wire = client.header()
    assert wire[:16] == legacy_auth(OTHER.alter_ids[alter_index], NOW - 7)
    (event,) = _server(_validator(OTHER)).receive_data(wire)
    assert isinstance(event, RequestReceived) and event.user == OTHER


def test_mux_request_has_no_target() -> None:
    client, server, _ = make_pair(command=Command.MUX)
    (event,) = server.receive_data(client.header())
    assert isinstance(event, RequestReceived)
    assert event.header.command == Command.MUX and event.header.target is None


def test_ip_literal_domain_becomes_an_ip() -> None:
    wire = _aead_header(target=Destination(Network.TCP, "1.2.3.4", 80))
    (event,) = _server(_validator()).receive_data(wire)
    assert isinstance(event, RequestReceived)
    assert str(event.header.target) == "tcp:1.2.3.4:80"


def test_remove_user() -> None:
    validator = _validator(SPEC_USER, OTHER)
    assert validator.remove("other@X")
    assert not validator.remove("nobody")
    for aead in (True, False):
        client, server, _ = make_pair(user=OTHER, validator=validator, aead=aead)
        with pytest.raises(VMessAuthError):
            server.receive_data(client.header())
    client, server, _ = make_pair(validator=validator)
    assert isinstance(server.receive_data(client.header())[0], RequestReceived)


# -- time windows and replays ----------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-121, -120, -119, 0, 119, 120, 121, 100_000])
def test_aead_time_window(delta: int) -> None:
    client, server, _ = make_pair(client_now=NOW + delta)
    if abs(delta) <= 120:
        assert isinstance(server.receive_data(client.header())[0], RequestReceived)
    else:
        with pytest.raises(VMessAuthError):
            server.receive_data(client.header())


def test_aead_negative_timestamp_rejected() -> None:
    wire = _aead_header(now=-5)
    server = ServerConnection(UserValidator([SPEC_USER], clock=lambda: 0.0), urandom=os.urandom)
    with pytest.raises(VMessAuthError):
        server.receive_data(wire)


def test_auth_id_replay_rejected_without_legacy_fallback_then_forgotten() -> None:
    clock = Clock()
    validator = _validator(clock=clock)
    client, server, _ = make_pair(validator=validator)
    wire = client.header()
    assert isinstance(server.receive_data(wire)[0], RequestReceived)
    with pytest.raises(VMessAuthError) as info:
        _server(validator).receive_data(wire[:16])
    assert "replay" in str(info.value)
    # still remembered 200 s later (two generations), gone after 240 s
    clock.now += 119
    with pytest.raises(VMessAuthError):
        _server(validator).receive_data(wire)
    clock.now += 2
    with pytest.raises(VMessAuthError):
        _server(validator).receive_data(wire)
    clock.now += 119
    with pytest.raises(VMessAuthError):  # now the timestamp is out of the window instead
        _server(validator).receive_data(wire)


def test_replay_filter_forgets_after_two_rotations() -> None:
    clock = Clock(NOW)
    validator = _validator(clock=clock)
    starter = create_auth_id(SPEC_USER.auth_id_key, NOW, b"0000")
    assert validator.match_aead(starter).user == SPEC_USER  # the rotation clock starts here
    auth_id = create_auth_id(SPEC_USER.auth_id_key, NOW + 239, b"abcd")
    clock.now = NOW + 119
    assert validator.match_aead(auth_id).user == SPEC_USER
    assert validator.match_aead(auth_id).replay
    clock.now = NOW + 120  # first rotation: still remembered (previous generation)
    assert validator.match_aead(auth_id).replay
    clock.now = NOW + 239
    assert validator.match_aead(auth_id).replay
    clock.now = NOW + 240  # second rotation: forgotten, and still inside the time window
    assert validator.match_aead(auth_id).user == SPEC_USER


def test_replay_filter_capacity_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from raybridge.protocols.vmess import validator as validator_module

    monkeypatch.setattr(validator_module, "REPLAY_CAPACITY", 3)
    validator = _validator()
    ids = [create_auth_id(SPEC_USER.auth_id_key, NOW, bytes((i,)) * 4) for i in range(4)]
    assert [validator.match_aead(a).user is not None for a in ids] == [True, True, True, False]


def test_replay_filter_export_and_import_across_a_restart() -> None:
    """A header seen by one validator stays refused by the next one (a restarted server)
    once the first one's entries are imported; entries the time check refuses anyway are
    neither exported nor imported."""
    clock = Clock(NOW)
    first = _validator(clock=clock)
    fresh = create_auth_id(SPEC_USER.auth_id_key, NOW, b"abcd")
    late = create_auth_id(SPEC_USER.auth_id_key, NOW - 100, b"efgh")  # a slow client clock
    assert first.match_aead(fresh).user == SPEC_USER
    assert first.match_aead(late).user == SPEC_USER
    exported = sorted(first.export_replay())
    assert exported == sorted([(fresh, NOW), (late, NOW - 100)])

    clock.now = NOW + 10  # the restart
    second = _validator(clock=clock)
    assert second.import_replay([*exported, (b"short", NOW), (b"x" * 16, NOW - 200)]) == 2
    assert second.match_aead(fresh).replay
    assert second.match_aead(late).replay
    assert sorted(second.export_replay()) == exported  # and saved again at the next close
    clock.now = NOW + 21  # `late` (ts NOW - 100) is past the window: refused anyway
    assert not second.match_aead(late).replay and second.match_aead(late).user is None
    assert [a for a, _ in second.export_replay()] == [fresh]
    clock.now = NOW + 121
    assert list(second.export_replay()) == []  # nothing a client could still replay
    without = _validator(clock=Clock(NOW + 10))  # what a restart did before: accepted again
    assert without.match_aead(fresh).user == SPEC_USER


@pytest.mark.parametrize(
    ("delta", "accepted"),
    [(-121, False), (-120, True), (0, True), (29, True), (120, True), (121, False)],
)
def test_legacy_time_window(delta: int, accepted: bool) -> None:
    validator = _validator()
    wire = _legacy_header(_plain(), ts=NOW + delta)
    server = _server(validator)
    if accepted:
        assert isinstance(server.receive_data(wire)[0], RequestReceived)
    else:
        with pytest.raises(VMessAuthError):
            server.receive_data(wire)


def test_legacy_table_refreshes_lazily() -> None:
    clock = Clock()
    validator = _validator(clock=clock)
    future = NOW + 125
    # 5 s later the table (built at NOW) is not refreshed yet: NOW + 125 is still unknown
    clock.now = NOW + 5
    with pytest.raises(VMessAuthError):
        _server(validator).receive_data(_legacy_header(_plain(), ts=future))
    # 10 s later it is: the window now reaches NOW + 130, and drops NOW - 111 and older
    clock.now = NOW + 10.25
    assert isinstance(
        _server(validator).receive_data(_legacy_header(_plain(), ts=future))[0], RequestReceived
    )
    with pytest.raises(VMessAuthError):
        _server(validator).receive_data(_legacy_header(_plain(), ts=NOW - 115))
    assert isinstance(
        _server(validator).receive_data(_legacy_header(_plain(), ts=NOW - 105))[0],
        RequestReceived,
    )


def test_legacy_table_survives_clock_jumps() -> None:
    clock = Clock()
    validator = _validator(clock=clock)
    clock.now = NOW + 10_000_000
    wire = _legacy_header(_plain(), ts=int(clock.now))
    assert isinstance(_server(validator).receive_data(wire)[0], RequestReceived)
    assert len(validator._legacy) == 241  # old seconds were dropped, not accumulated


@pytest.mark.parametrize("aead", [True, False])
def test_duplicate_key_and_iv_rejected(aead: bool) -> None:
    clock = Clock()
    validator = _validator(clock=clock)
    plain = _plain(body_key=REQ_KEY, body_iv=REQ_IV)
    first = _seal_raw_plaintext(plain) if aead else _legacy_header(plain)
    assert isinstance(_server(validator).receive_data(first)[0], RequestReceived)
    again = _seal_raw_plaintext(plain) if aead else _legacy_header(plain, ts=NOW + 1)
    with pytest.raises(VMessError) as info:
        _server(validator).receive_data(again)
    if aead:  # after a successful AEAD open: close at once
        assert not isinstance(info.value, VMessAuthError)
    else:  # legacy: drain, and the AUTH is tainted
        assert isinstance(info.value, VMessAuthError)
        assert info.value.drain_to is None or info.value.drain_to > 54
        with pytest.raises(VMessAuthError):  # a tainted AUTH is refused even with new keys
            _server(validator).receive_data(_legacy_header(_plain(), ts=NOW + 1))
    clock.now += 181  # the session history forgets after 3 minutes
    fresh = (
        _seal_raw_plaintext(plain, now=clock.now)
        if aead
        else _legacy_header(plain, ts=int(clock.now))
    )
    assert isinstance(_server(validator).receive_data(fresh)[0], RequestReceived)


# -- drains --------------------------------------------------------------------------------


def test_behavior_seed_and_drain_parameters_follow_v2ray() -> None:
    validator = _validator(SPEC_USER, OTHER)
    seed = 0
    for user in (SPEC_USER, OTHER):
        digest = hmac.new(b"VMESSBSKDF", user.id.bytes, hashlib.sha256).digest()
        seed = crc64_ecma_update(seed, digest)
    assert validator.drain_params is None  # not fused before the first connection
    _server(validator)
    rng = GoRand(seed)
    assert validator.drain_params == (rng.intn(3266), rng.intn(64) + 1)
    # users added after the first connection no longer change it
    before = validator.drain_params
    validator.add(User(uuid.uuid4()))
    assert validator.drain_params == before


def test_drain_without_users_uses_a_random_seed() -> None:
    validator = UserValidator(clock=Clock())
    server = ServerConnection(validator, urandom=Scripted(b"\x00" * 7 + b"\x05"))
    with pytest.raises(VMessAuthError) as info:
        server.receive_data(os.urandom(16))
    rng = GoRand(5)
    base = rng.intn(3266)
    assert info.value.drain_to == base + 54  # Scripted zeros roll 0


@pytest.mark.parametrize("size", [16, 17, 300])
def test_wrong_uuid_drains(size: int) -> None:
    validator = _validator()
    stranger = User(uuid.uuid4())
    client = ClientConnection(
        stranger, Command.TCP, tcp("x.y", 1), Security.AES_128_GCM, now=NOW, urandom=os.urandom
    )
    server = _server(validator)
    wire = (client.header() + os.urandom(400))[:size]
    with pytest.raises(VMessAuthError) as info:
        server.receive_data(wire)
    low, high = _drain_bounds(validator)
    assert info.value.drain_to is not None and low <= info.value.drain_to <= high
    with pytest.raises(VMessError):  # the connection stays failed
        server.receive_data(b"more")


def test_drain_size_is_random_per_connection_within_bounds() -> None:
    validator = _validator()
    _server(validator)
    low, high = _drain_bounds(validator)
    seen = set()
    for _ in range(200):
        with pytest.raises(VMessAuthError) as info:
            _server(validator).receive_data(b"\x00" * 16)
        assert info.value.drain_to is not None
        seen.add(info.value.drain_to)
    assert min(seen) >= low and max(seen) <= high
    assert len(seen) > 1 or low == high


def test_aead_length_that_does_not_open_drains() -> None:
    validator = _validator()
    wire = bytearray(_aead_header())
    wire[20] ^= 1
    with pytest.raises(VMessAuthError) as info:
        _server(validator).receive_data(bytes(wire[:42]))
    low, high = _drain_bounds(validator)
    assert info.value.drain_to is not None and low <= info.value.drain_to <= high


def test_aead_header_that_does_not_open_drains_or_closes() -> None:
    validator = _validator()
    wire = bytearray(_aead_header())
    wire[-1] ^= 1
    with pytest.raises(VMessAuthError) as info:
        _server(validator).receive_data(bytes(wire))
    low, _ = _drain_bounds(validator)
    assert info.value.drain_to is not None and info.value.drain_to >= low
    # a long header that fails after more bytes than the drain size: close at once
    big = bytearray(_seal_raw_plaintext(_with_checksum(_plain()[:-4] + b"\0" * 4000)))
    big[-1] ^= 1
    with pytest.raises(VMessAuthError) as info:
        _server(validator).receive_data(bytes(big))
    assert info.value.drain_to is None


def test_legacy_bad_checksum_drains_and_taints() -> None:
    validator = _validator()
    plain = bytearray(_plain())
    plain[-1] ^= 1
    wire = _legacy_header(bytes(plain))
    with pytest.raises(VMessAuthError) as info:
        _server(validator).receive_data(wire)
    low, high = _drain_bounds(validator)
    assert info.value.drain_to is None or low <= info.value.drain_to <= high
    with pytest.raises(VMessAuthError):  # tainted
        _server(validator).receive_data(_legacy_header(_plain()))


def test_aead_bad_checksum_closes_without_drain() -> None:
    plain = bytearray(_plain())
    plain[-1] ^= 1
    with pytest.raises(VMessError) as info:
        _server(_validator()).receive_data(_seal_raw_plaintext(bytes(plain)))
    assert not isinstance(info.value, VMessAuthError)


# -- request validation (after authentication) --------------------------------------------------


def _reject(plaintext: bytes, **server_kwargs: bool) -> VMessError:
    with pytest.raises(VMessError) as info:
        _server(_validator(), **server_kwargs).receive_data(_seal_raw_plaintext(plaintext))
    assert not isinstance(info.value, VMessAuthError)
    return info.value


def test_p_without_m_rejected_cleanly() -> None:
    assert "GlobalPadding" in str(_reject(_plain(options=S | P)))
    assert "GlobalPadding" in str(_reject(_plain(options=P)))


@pytest.mark.parametrize("nibble", [2, 6, 7, 15])
def test_unknown_security_rejected(nibble: int) -> None:
    plain = bytearray(_plain()[:-4])
    plain[35] = (plain[35] & 0xF0) | nibble
    assert "security" in str(_reject(_with_checksum(bytes(plain))))


def test_security_zero_means_legacy() -> None:
    plain = bytearray(_plain(options=S)[:-4])
    plain[35] &= 0xF0
    (event,) = _server(_validator()).receive_data(_seal_raw_plaintext(_with_checksum(bytes(plain))))
    assert isinstance(event, RequestReceived) and event.header.security == Security.LEGACY


@pytest.mark.parametrize("security", [Security.NONE, Security.LEGACY, 0])
def test_insecure_encryption_can_be_disabled(security: int) -> None:
    plain = bytearray(_plain(security=Security.NONE)[:-4])
    plain[35] = (plain[35] & 0xF0) | security
    _reject(_with_checksum(bytes(plain)), disable_insecure_encryption=True)
    ok = _plain(security=Security.CHACHA20_POLY1305)
    server = _server(_validator(), disable_insecure_encryption=True)
    assert isinstance(server.receive_data(_seal_raw_plaintext(ok))[0], RequestReceived)


def test_zero_length_domain_rejected() -> None:
    body = _plain(command=Command.MUX, target=None)[:-4]
    body = body[:37] + bytes((Command.TCP,)) + b"\x00\x50\x02\x00"
    _reject(_with_checksum(body))


@pytest.mark.parametrize(
    "address",
    [b"\x00\x50\x04", b"\x00\x50\x02\x03a b", b"\x00\x50\x00", b"\x00\x50\x02\x04\xff\xfe.."],
)
def test_bad_address_rejected(address: bytes) -> None:
    body = _plain(command=Command.MUX, target=None)[:-4]
    body = body[:37] + bytes((Command.TCP,)) + address
    assert "address" in str(_reject(_with_checksum(body)))


@pytest.mark.parametrize("command", [0, 4, 255])
def test_unknown_command_rejected(command: int) -> None:
    body = _plain(command=Command.MUX, target=None)[:-4]
    body = body[:37] + bytes((command,))
    _reject(_with_checksum(body))


def test_short_or_truncated_aead_header_rejected() -> None:
    _reject(b"\x01" * 20)
    _reject(_plain()[:-2])


def test_header_padding_and_trailing_bytes_inside_the_sealed_header() -> None:
    plain = _plain(padding=b"\xaa" * 15) + b"ignored"
    (event,) = _server(_validator()).receive_data(_seal_raw_plaintext(plain))
    assert isinstance(event, RequestReceived) and event.header.padding_len == 15


def test_server_send_before_request_is_a_local_error() -> None:
    server = _server(_validator())
    with pytest.raises(LocalProtocolError):
        server.send(b"x")
    with pytest.raises(LocalProtocolError):
        server.send_eof()


def test_eof_during_handshake() -> None:
    client, server, _ = make_pair()
    server.receive_data(client.header()[:30])
    with pytest.raises(VMessError):
        server.receive_eof()


def test_eof_mid_chunk_and_at_boundary() -> None:
    client, server, _ = make_pair(Security.AES_128_GCM)
    wire = client.send(b"abc")
    server.receive_data(wire[:-1])
    with pytest.raises(VMessError):
        server.receive_eof()
    client, server, _ = make_pair(Security.AES_128_GCM)
    server.receive_data(client.send(b"abc"))
    assert len(server.receive_eof()) == 1  # V2Ray: EOF at a chunk boundary is a clean end
