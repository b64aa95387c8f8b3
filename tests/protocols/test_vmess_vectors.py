"""Every VMess vector of docs/protocols.md section 7, produced through the public API where the
API can produce it (deterministic ``now`` and scripted ``urandom``)."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from raybridge.address import tcp
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Data,
    EndOfStream,
    RequestReceived,
    ResponseReceived,
    Security,
    ServerConnection,
    User,
    UserValidator,
)
from raybridge.protocols.vmess.account import cmd_key_of
from raybridge.protocols.vmess.header import (
    create_auth_id,
    legacy_auth,
    legacy_header_iv,
    response_body_key_iv,
)
from raybridge.protocols.vmess.kdf import (
    SALT_AUTH_ID_ENCRYPTION_KEY,
    SALT_HEADER_LEN_KEY,
    SALT_HEADER_LEN_NONCE,
    SALT_HEADER_PAYLOAD_KEY,
    SALT_HEADER_PAYLOAD_NONCE,
    kdf,
    kdf16,
)
from raybridge.protocols.vmess.primitives import (
    HashlibShakeStream,
    ShakeStream,
    chacha20_key,
    fnv1a32,
    fnv1a32_pure,
)
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
)

H = bytes.fromhex
CMD_KEY = H("b50d916ac0cec067981af8e5f38a758f")
AUTH_ID = H("4774fe5cc901ea4f81f2159909767a36")
N8 = H("a0a1a2a3a4a5a6a7")
PLAINTEXT = H(
    "01101112131415161718191a1b1c1d1e1f000102030405060708090a0b0c0d0e0f420d0300010050020b"
    "6578616d706c652e636f6df6eb5337"
)
AEAD_WIRE = H(
    "4774fe5cc901ea4f81f2159909767a366328a3310dc74ccde87ceff0f3ea38225c93a0a1a2a3a4a5a6a7"
    "62e5f4443e2938813675bd05d2f4c27bfb0cd6945ceda401a2d7860a4924c7d25c5086ad9f69f9c0875a"
    "0d3dd40a554711b830c7c43c4b8114e8e0e9b88f574bd5f25879a5ec1cedfc"
)
LEGACY_AUTH = H("cb4c98431253a6f41d16adc57e6d3550")
LEGACY_HEADER = H(
    "18e026f9ae24387cf561291b8e3b96a0a6c8d48ae69a545a387b7140c9e98662b6948d4994d5397ee10b"
    "2e452e7ab6587897925ec0fb3073a4"
)
AEAD_RESPONSE = H("936c422a7a3f0c4835561f50648898c4d6e3b210e4a64fdc360d8988702258bf83cb5d83f1f5")
LEGACY_RESPONSE = H("c79d2b27")


def _client(security: Security, options: int, *, aead: bool = True) -> ClientConnection:
    rnd = client_random(legacy_offset=None if aead else 0)
    return ClientConnection(
        SPEC_USER,
        Command.TCP,
        tcp("example.com", 80),
        security,
        now=NOW,
        urandom=rnd,
        aead=aead,
        options=options,  # type: ignore[arg-type]
    )


# -- identities, KDF, AuthID ------------------------------------------------------------------


def test_uuid_bytes_and_cmd_key() -> None:
    assert SPEC_USER.id_bytes == H("b831381d63244d53ad4f8cda48b30811")
    assert SPEC_USER.cmd_key == CMD_KEY


def test_alter_ids_and_their_cmd_keys() -> None:
    user = User(SPEC_USER.id, alter_id=2)
    assert [str(uuid.UUID(bytes=a)) for a in user.alter_ids] == [
        "5a071834-12d5-980a-72ac-845d5568d17d",
        "b5f0dba2-de16-aea1-087e-fdbaa0aac7a3",
    ]
    assert cmd_key_of(user.alter_ids[0]) == H("7ff46500b49bb26bb845b35213191b1d")
    assert cmd_key_of(user.alter_ids[1]) == H("df010ce7efc474224421fe48584033e7")


def test_kdf_vectors() -> None:
    assert kdf(CMD_KEY) == H("1e3858c2acb5e5338a1569aac055c295a0c0e2738b2d941c4bf461cdc363efb4")
    assert kdf16(CMD_KEY, SALT_AUTH_ID_ENCRYPTION_KEY) == H("1415ba74ca8b3d041a8f583fb4116315")
    assert SPEC_USER.auth_id_key == H("1415ba74ca8b3d041a8f583fb4116315")
    assert kdf(b"key", b"a", b"bc") == H(
        "fbd9423b8aef7fe4596aed50393d6305e5a2618e24b6ed37ef513d2d025a59bc"
    )


def _toy_kdf(key: bytes, *path: bytes) -> bytes:
    """The spec's per-byte rendering of the KDF, as an independent cross-check."""

    def hmac_on(fn, k: bytes, msg: bytes) -> bytes:  # type: ignore[no-untyped-def]
        if len(k) > 64:
            k = fn(k)
        k = k.ljust(64, b"\0")
        return fn(bytes(x ^ 0x5C for x in k) + fn(bytes(x ^ 0x36 for x in k) + msg))  # type: ignore[no-any-return]

    def fn(m: bytes) -> bytes:
        return hmac.new(b"VMess AEAD KDF", m, hashlib.sha256).digest()

    f = fn
    for p in path:
        f = (lambda parent, k: lambda m: hmac_on(parent, k, m))(f, p)
    return f(key)


@pytest.mark.parametrize(
    "path",
    [(), (b"x",), (b"VMess Header AEAD Key", b"a" * 16, b"b" * 8), (b"k" * 70, b"q")],
)
def test_kdf_matches_the_spec_rendering(path: tuple[bytes, ...]) -> None:
    assert kdf(b"secret", *path) == _toy_kdf(b"secret", *path)


def test_header_key_and_nonce_vectors() -> None:
    assert kdf16(CMD_KEY, SALT_HEADER_LEN_KEY, AUTH_ID, N8) == H("1ed9170e72e2b891b81b38f8447a5f45")
    assert kdf(CMD_KEY, SALT_HEADER_LEN_NONCE, AUTH_ID, N8)[:12] == H("1d230cce18be3869562451ad")
    assert kdf16(CMD_KEY, SALT_HEADER_PAYLOAD_KEY, AUTH_ID, N8) == H(
        "6e187a99095965135796d8f0574acf41"
    )
    assert kdf(CMD_KEY, SALT_HEADER_PAYLOAD_NONCE, AUTH_ID, N8)[:12] == H(
        "cfc346dee86e2de48f20fc36"
    )


def test_auth_id_vector() -> None:
    assert create_auth_id(SPEC_USER.auth_id_key, NOW, H("01020304")) == AUTH_ID


# -- request headers ---------------------------------------------------------------------------


def test_aead_request_wire_vector() -> None:
    client = _client(Security.AES_128_GCM, 0x0D)
    assert client.header() == AEAD_WIRE
    assert client.header() == b""  # only once


def test_aead_request_wire_vector_decodes_on_the_server() -> None:
    server = ServerConnection(UserValidator([SPEC_USER], clock=Clock()), urandom=Scripted())
    (event,) = server.receive_data(AEAD_WIRE)
    assert isinstance(event, RequestReceived)
    assert event.aead and event.user == SPEC_USER
    h = event.header
    assert (h.version, h.body_iv, h.body_key, h.response_auth) == (1, REQ_IV, REQ_KEY, 0x42)
    assert (h.options, h.padding_len, h.security, h.command) == (
        S | M | P,
        0,
        Security.AES_128_GCM,
        Command.TCP,
    )
    assert h.target == tcp("example.com", 80)


def test_legacy_request_vector() -> None:
    assert legacy_auth(SPEC_USER.id_bytes, NOW) == LEGACY_AUTH
    assert legacy_header_iv(NOW) == H("7a29d7bdc972aaefb1f54e5205589e78")
    client = _client(Security.AES_128_GCM, 0x0D, aead=False)
    assert client.header() == LEGACY_AUTH + LEGACY_HEADER


def test_legacy_request_vector_decodes_on_the_server() -> None:
    server = ServerConnection(UserValidator([SPEC_USER], clock=Clock()), urandom=Scripted())
    (event,) = server.receive_data(LEGACY_AUTH + LEGACY_HEADER)
    assert isinstance(event, RequestReceived) and not event.aead
    assert event.header.body_key == REQ_KEY and event.header.body_iv == REQ_IV


# -- response keys and headers ----------------------------------------------------------------


def test_misc_vectors() -> None:
    assert fnv1a32(b"hello") == 0x4F9F2CAB == fnv1a32_pure(b"hello")
    assert response_body_key_iv(REQ_KEY, REQ_IV, aead=False) == (
        H("1ac1ef01e96caf1be0d329331a4fc2a8"),
        H("1bf42e241816ba29ff5f307bb1bc1d16"),
    )
    assert response_body_key_iv(REQ_KEY, REQ_IV, aead=True) == (
        H("be45cb2605bf36bebde684841a28f0fd"),
        H("fc2e2c73072bfa2bda03ff9307472deb"),
    )
    assert chacha20_key(REQ_KEY) == H(
        "1ac1ef01e96caf1be0d329331a4fc2a8e0542db5418c43d256a6a643afa553fe"
    )


@pytest.mark.parametrize("cls", [ShakeStream, HashlibShakeStream])
def test_shake_prefix(cls: type[ShakeStream] | type[HashlibShakeStream]) -> None:
    stream = cls(REQ_IV)
    assert [stream.next_u16() for _ in range(6)] == [
        0xFC91,
        0x8E43,
        0xECC4,
        0xB6AE,
        0xA436,
        0xA3BE,
    ]
    # far into the stream (several refills) both implementations agree with hashlib
    words = [stream.next_u16() for _ in range(5000)]
    raw = hashlib.shake_128(REQ_IV).digest(2 * 5006)[12:]
    assert words == [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@pytest.mark.parametrize(
    ("aead", "wire"), [(True, AEAD_WIRE), (False, LEGACY_AUTH + LEGACY_HEADER)]
)
def test_response_header_vectors_both_ways(aead: bool, wire: bytes) -> None:
    server = ServerConnection(UserValidator([SPEC_USER], clock=Clock()), urandom=Scripted())
    server.receive_data(wire)
    response = server.send(b"")
    assert response == (AEAD_RESPONSE if aead else LEGACY_RESPONSE)
    client = _client(Security.AES_128_GCM, 0x0D, aead=aead)
    client.header()
    assert client.receive_data(response) == [ResponseReceived(command_id=0, command_data=b"")]


# -- body chunks --------------------------------------------------------------------------------


def _body(client: ClientConnection, data: bytes) -> bytes:
    client.header()
    return client.send(data)


def test_gcm_chunks_option_s() -> None:
    client = _client(Security.AES_128_GCM, 0x01)
    assert _body(client, b"hello") == H("0015a316c4d586054e854b4a74fc9040de5bd5eb74d177")
    assert client.send_eof() == H("001035c1d866430ee2a52d77f94eb568da9f")


def test_chacha_chunk_option_s() -> None:
    client = _client(Security.CHACHA20_POLY1305, 0x01)
    assert _body(client, b"hello") == H("0015d7f66656047edbebabfc02352cca6f96fcc82771bc")


def test_gcm_chunks_masked_and_padded() -> None:
    client = _client(Security.AES_128_GCM, 0x0D)
    chunk = _body(client, b"hello")
    assert chunk[:23] == H("8e65a316c4d586054e854b4a74fc9040de5bd5eb74d177")
    assert len(chunk) == 2 + 21 + 17  # 0xfc91 % 64 == 17 padding bytes
    eos = client.send_eof()
    assert eos[:18] == H("b6ba35c1d866430ee2a52d77f94eb568da9f")
    assert len(eos) == 2 + 16 + 4  # 0xecc4 % 64 == 4


def test_none_tcp_chunks_masked() -> None:
    client = _client(Security.NONE, 0x05)
    assert _body(client, b"hello") == H("fc9468656c6c6f")
    assert client.send_eof() == H("8e43")


def test_legacy_chunk() -> None:
    client = _client(Security.LEGACY, 0x01)
    assert _body(client, b"hello") == H("07f7a0ebcd7e6b0bfc6281")


@pytest.mark.parametrize(
    ("security", "options", "wire", "payload"),
    [
        (Security.AES_128_GCM, 0x01, "0015a316c4d586054e854b4a74fc9040de5bd5eb74d177", b"hello"),
        (
            Security.CHACHA20_POLY1305,
            0x01,
            "0015d7f66656047edbebabfc02352cca6f96fcc82771bc",
            b"hello",
        ),
        (Security.NONE, 0x05, "fc9468656c6c6f8e43", b"hello"),
        (Security.LEGACY, 0x01, "07f7a0ebcd7e6b0bfc6281", b"hello"),
    ],
)
def test_server_reads_the_body_vectors(
    security: Security, options: int, wire: str, payload: bytes
) -> None:
    client = _client(security, options)
    server = ServerConnection(UserValidator([SPEC_USER], clock=Clock()), urandom=Scripted())
    events = server.receive_data(client.header() + H(wire))
    assert isinstance(events[0], RequestReceived)
    assert events[1] == Data(payload)
    if security == Security.NONE:
        assert events[2:] == [EndOfStream()]
