"""Hostile-input properties that the per-module hypothesis tests did not state yet.

"Arbitrary bytes, split anywhere: the decoder parses them or raises its module's own error,
nothing else" is already checked in tests/protocols and tests/config for Mux.Cool frames,
SOCKS4/5 handshakes, SOCKS UDP datagrams, HTTP proxy requests, ResponseRewriter, the Control
message and the config loader (text). Missing were the parts behind authentication and a
raw-bytes config file:

* VMess legacy and AEAD headers: arbitrary header plaintext *behind valid authentication*
  (random bytes never get past the AuthID or the legacy HMAC), cut anywhere;
* the VMess chunk reader (``BodyReader``) for every security, option set and command, fed
  arbitrary bytes cut anywhere, then EOF;
* the SOCKS5 client's reply reader;
* a config *file* of arbitrary bytes (``load_config`` reads bytes, decodes them leniently).

Where the outcome is deterministic, the cut stream must also give the same outcome as the
whole one. Examples stay few: tests/test_fuzz_harnesses.py and fuzz/ (atheris) go further.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raybridge.address import tcp
from raybridge.config import Config, ConfigError, load_config
from raybridge.protocols.socks import SocksClient, SocksCommand, SocksError
from raybridge.protocols.vmess import (
    Command,
    Data,
    EndOfStream,
    Option,
    RequestReceived,
    Security,
    ServerConnection,
    UserValidator,
    VMessError,
)
from raybridge.protocols.vmess.body import BodyReader, BodySpec
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
    Scripted,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cut_lists = st.lists(st.integers(min_value=0), max_size=6)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


# --- VMess request headers behind valid authentication ----------------------------------------


@st.composite
def header_plaintexts(draw: st.DrawFn) -> bytes:
    """Request header plaintext (docs/protocols.md 1.3) with arbitrary fields: any command byte,
    address bytes, padding length and, mostly, a correct checksum so that the policy
    checks after it are reached too."""
    fixed = bytearray(draw(st.binary(min_size=38, max_size=38)))
    fixed[37] = draw(st.sampled_from([1, 2, 3]) | st.integers(0, 255))
    if draw(st.booleans()):  # a known security nibble and option bits, so some are accepted
        fixed[34] = draw(st.sampled_from([0, 1, 5, 13, 4, 12, 3]))
        fixed[35] = (fixed[35] & 0xF0) | draw(st.sampled_from([1, 3, 4, 5]))
    address = draw(st.binary(max_size=24))
    if draw(st.booleans()) and fixed[37] in (1, 2):  # a well-formed address, arbitrary host
        atyp = draw(st.sampled_from([1, 2, 3]))
        if atyp == 2:
            name = draw(st.text("ab9.-_", min_size=1, max_size=12) | st.binary(max_size=12))
            raw = name.encode() if isinstance(name, str) else name
            host = bytes((len(raw),)) + raw
        else:
            host = draw(st.binary(min_size=4 if atyp == 1 else 16, max_size=16))[: 4 * atyp]
        address = draw(st.binary(min_size=2, max_size=2)) + bytes((atyp,)) + host
    body = bytes(fixed) + address + bytes(fixed[35] >> 4)
    if draw(st.integers(0, 3)):
        return body + fnv1a32_pure(body).to_bytes(4, "big")
    return body + draw(st.binary(max_size=6))


def _serve(wire: bytes, cuts: list[int]) -> tuple[object, bool]:
    """Feed ``wire`` to a fresh server; return (the accepted header or None, failed)."""
    server = ServerConnection(UserValidator([SPEC_USER], clock=Clock()), urandom=Scripted())
    try:
        for piece in split(wire, cuts):
            for event in server.receive_data(piece):
                assert isinstance(event, RequestReceived | Data | EndOfStream)
    except VMessError:
        return server.request, True
    return server.request, False


def _check_header(wire: bytes, cuts: list[int]) -> None:
    whole = _serve(wire, [])
    pieces = _serve(wire, cuts)
    assert pieces == whole
    header, _ = whole
    if header is not None:
        assert header.security not in (Security.AUTO, Security.UNKNOWN)  # type: ignore[attr-defined]


@FAST
@given(plaintext=header_plaintexts(), trailing=st.binary(max_size=40), cuts=cut_lists)
def test_legacy_header_arbitrary_plaintext_split_anywhere(
    plaintext: bytes, trailing: bytes, cuts: list[int]
) -> None:
    wire = legacy_auth(SPEC_USER.id_bytes, NOW)
    wire += aes_cfb_encryptor(SPEC_USER.cmd_key, legacy_header_iv(NOW)).update(plaintext)
    _check_header(wire + trailing, cuts)


@FAST
@given(
    plaintext=header_plaintexts(),
    sealed=st.booleans(),
    trailing=st.binary(max_size=80),
    cuts=cut_lists,
)
def test_aead_header_arbitrary_plaintext_split_anywhere(
    plaintext: bytes, sealed: bool, trailing: bytes, cuts: list[int]
) -> None:
    auth_id = create_auth_id(SPEC_USER.auth_id_key, NOW, b"\x01\x02\x03\x04")
    if sealed:  # a header that opens: its content is what is arbitrary
        wire = seal_aead_request(SPEC_USER.cmd_key, auth_id, bytes(8), plaintext)
    else:  # a valid AuthID followed by arbitrary length, nonce and header bytes
        wire = auth_id + plaintext
    _check_header(wire + trailing, cuts)


# --- the chunk reader -------------------------------------------------------------------------


def _read_body(
    security: Security, options: Option, command: Command, pieces: list[bytes], eof: bool
) -> tuple[bytes, int, bool]:
    reader = BodyReader(BodySpec(security, options, command, bytes(16), bytes(range(16))))
    payload, ends = b"", 0
    try:
        for piece in pieces:
            for event in reader.feed(piece):
                if isinstance(event, Data):
                    payload += event.data
                else:
                    assert isinstance(event, EndOfStream)
                    ends += 1
        if eof:
            ends += len(reader.feed_eof())
    except VMessError:
        return b"", 0, True
    return payload, ends, False


@FAST
@given(
    security=st.sampled_from(SECURITIES),
    options=st.sampled_from(OPTION_SETS),
    command=st.sampled_from(list(Command)),
    data=st.binary(max_size=300),
    cuts=cut_lists,
    eof=st.booleans(),
)
def test_body_reader_arbitrary_bytes_split_anywhere(
    security: Security,
    options: Option,
    command: Command,
    data: bytes,
    cuts: list[int],
    eof: bool,
) -> None:
    whole = _read_body(security, options, command, [data], eof)
    pieces = _read_body(security, options, command, split(data, cuts), eof)
    assert pieces == whole
    assert whole[1] <= 1  # at most one end of stream


# --- SOCKS5 client ----------------------------------------------------------------------------


@FAST
@given(
    data=st.binary(max_size=60),
    prefix=st.sampled_from([b"", b"\x05\x00", b"\x05\x02\x01\x00", b"\x05\x00\x05\x00\x00"]),
    password=st.booleans(),
    command=st.sampled_from(list(SocksCommand)),
    cuts=cut_lists,
)
def test_socks_client_arbitrary_reply_bytes(
    data: bytes, prefix: bytes, password: bool, command: SocksCommand, cuts: list[int]
) -> None:
    credentials = {"username": "u", "password": "p"} if password else {}
    client = SocksClient(tcp("example.com", 443), command=command, **credentials)
    client.initial_bytes()
    try:
        for piece in split(prefix + data, cuts):
            client.receive_data(piece)
            if client.done:
                assert client.bound is not None
                break
    except SocksError:
        pass


# --- the config loader, reading a file ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-16")))
def test_config_file_of_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fuzz.json")
        with open(path, "wb") as f:
            f.write(data)
        try:
            config = load_config([path], environ={})
        except ConfigError as exc:
            assert exc.file == path
        else:
            assert isinstance(config, Config)
