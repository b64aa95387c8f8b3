"""Client <-> server round trips for every security x options x header variant x command, each
fed whole, one byte at a time and in irregular pieces, in both directions, with the wire
checked chunk by chunk against the independent reference decoder."""

from __future__ import annotations

import os

import pytest

from raybridge.errors import LocalProtocolError
from raybridge.protocols.vmess import (
    Command,
    Data,
    EndOfStream,
    Option,
    RequestReceived,
    ResponseReceived,
    Security,
    VMessError,
)
from raybridge.protocols.vmess.header import response_body_key_iv
from tests.protocols.test_vmess_support import (
    OPTION_SETS,
    SECURITIES,
    M,
    P,
    S,
    ends,
    feed,
    make_pair,
    payloads,
    ref_decode_chunks,
    target_for,
)

COMBOS = [
    (security, options, aead, command)
    for security in SECURITIES
    for options in OPTION_SETS
    for aead in (True, False)
    for command in Command
]


def _framed(security: Security, options: Option) -> bool:
    return bool(options & S) or security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305)


def _messages(command: Command) -> list[bytes]:
    if command == Command.UDP:
        return [b"q", os.urandom(1966), b"", os.urandom(513)]
    return [b"hello", os.urandom(3000), b"", b"!" * 40]


def _check_stream(
    security: Security,
    options: Option,
    command: Command,
    sent: list[bytes],
    events: list[object],
) -> None:
    got = payloads(events)
    framed = _framed(security, options)
    if command == Command.UDP and framed:
        assert got == [m for m in sent if m]  # one chunk = one datagram
    else:
        assert b"".join(got) == b"".join(sent)
    assert ends(events) == (1 if framed else 0)
    if ends(events):
        assert isinstance(events[-1], EndOfStream)


@pytest.mark.parametrize(("security", "options", "aead", "command"), COMBOS)
def test_round_trip(security: Security, options: Option, aead: bool, command: Command) -> None:
    framed = _framed(security, options)
    for mode in ("whole", "bytewise", "pieces"):
        client, server, _ = make_pair(security, command, aead=aead, options=options)
        header = client.header()
        request = _messages(command)
        body = b"".join(client.send(m) for m in request) + client.send_eof()

        events = feed(server.receive_data, header + body, mode)
        first = events[0]
        assert isinstance(first, RequestReceived)
        assert first.aead == aead
        h = first.header
        assert (h.security, h.options, h.command) == (security, options, command)
        assert h.target == target_for(command)
        assert (h.body_key, h.body_iv) == (client.body_key, client.body_iv)
        assert server.bytes_received == len(header) + len(body)
        _check_stream(security, options, command, request, events[1:])
        if not framed:
            assert server.receive_eof() == [EndOfStream()]

        response = [m[::-1] for m in _messages(command)]
        wire = b"".join(server.send(m) for m in response) + server.send_eof()
        back = feed(client.receive_data, wire, mode)
        assert back[0] == ResponseReceived(command_id=0, command_data=b"")
        _check_stream(security, options, command, response, back[1:])
        if not framed:
            assert client.receive_eof() == [EndOfStream()]
            continue

        # the same bytes, decoded independently from the spec
        chunks, rest = ref_decode_chunks(
            security, options, command, client.body_key, client.body_iv, body
        )
        assert rest == b""
        assert [c.payload for c in chunks] == [m for m in request if m] + [b""]
        resp_key, resp_iv = response_body_key_iv(client.body_key, client.body_iv, aead=aead)
        header_len = 38 if aead else 4
        prefix = wire[:header_len] if not aead and security == Security.LEGACY else b""
        chunks, rest = ref_decode_chunks(
            security,
            options,
            command,
            resp_key,
            resp_iv,
            wire[header_len:],
            cfb_prefix=prefix,
            request_key_iv=(client.body_key, client.body_iv),
        )
        assert rest == b""
        assert [c.payload for c in chunks] == [m for m in response if m] + [b""]

        # trailing bytes after the end-of-stream chunk are a protocol error
        with pytest.raises(VMessError):
            client.receive_data(b"\x00")
        with pytest.raises(VMessError):
            server.receive_data(b"\x00")


@pytest.mark.parametrize("security", SECURITIES)
def test_trailing_bytes_in_the_same_read_as_eos(security: Security) -> None:
    client, server, _ = make_pair(security, options=S | M)
    with pytest.raises(VMessError):
        server.receive_data(client.send(b"abc") + client.send_eof() + b"junk")


@pytest.mark.parametrize("security", SECURITIES)
def test_header_and_body_in_one_write_and_header_only_first(security: Security) -> None:
    client, server, _ = make_pair(security)
    first = client.send(b"payload")
    assert len(first) > 40  # header prepended
    assert client.header() == b""
    assert client.send(b"") == b""
    events = server.receive_data(first)
    assert isinstance(events[0], RequestReceived) and events[1] == Data(b"payload")
    # the server's first send carries the response header; an empty send flushes it alone
    assert server.send(b"") != b""
    assert server.send(b"") == b""


def test_empty_send_before_header_returns_only_the_header() -> None:
    client, server, _ = make_pair()
    wire = client.send(b"")
    assert wire and client.send(b"") == b""
    assert isinstance(server.receive_data(wire)[0], RequestReceived)


def test_eof_first_sends_header_and_eos() -> None:
    client, server, _ = make_pair()
    events = server.receive_data(client.send_eof())
    assert isinstance(events[0], RequestReceived) and events[1:] == [EndOfStream()]
    with pytest.raises(LocalProtocolError):
        client.send(b"late")
    with pytest.raises(LocalProtocolError):
        client.send_eof()


def test_response_with_a_command_is_reported() -> None:
    # A detour command (1.8) as a V2Ray server with "detour" would send it.
    from raybridge.protocols.vmess.header import encode_response_plaintext, seal_aead_response

    client, server, _ = make_pair(Security.AES_128_GCM)
    server.receive_data(client.header())
    resp_key, resp_iv = response_body_key_iv(client.body_key, client.body_iv, aead=True)
    plain = encode_response_plaintext(client.response_auth, 1, b"\x01\x02\x03\x04data")
    wire = seal_aead_response(resp_key, resp_iv, plain)
    assert client.receive_data(wire) == [ResponseReceived(1, b"\x01\x02\x03\x04data")]


def test_legacy_response_with_a_command_split_bytewise() -> None:
    from raybridge.protocols.vmess.primitives import aes_cfb_encryptor

    client, server, _ = make_pair(Security.LEGACY, aead=False, options=S)
    server.receive_data(client.header())
    resp_key, resp_iv = response_body_key_iv(client.body_key, client.body_iv, aead=False)
    stream = aes_cfb_encryptor(resp_key, resp_iv)
    wire = stream.update(bytes((client.response_auth, 0, 1, 3)) + b"abc")
    # LEGACY body continues the same CFB stream: SIZE(2) FNV(4) payload
    wire += stream.update(b"\x00\x09" + (0x4F9F2CAB).to_bytes(4, "big") + b"hello")
    events = feed(client.receive_data, wire, "bytewise")
    assert events == [ResponseReceived(1, b"abc"), Data(b"hello")]


def test_wrong_response_auth_is_an_error() -> None:
    client, server, _ = make_pair(Security.AES_128_GCM, aead=False)
    server.receive_data(client.header())
    wire = bytearray(server.send(b"x"))
    client2, _, _ = make_pair(Security.AES_128_GCM, aead=False)
    with pytest.raises(VMessError):
        client2.receive_data(bytes(wire))  # other keys: V does not match (or garbage)
    wire[0] ^= 0xFF  # legacy: flips the decrypted V byte
    with pytest.raises(VMessError):
        client.receive_data(bytes(wire))


def test_nonce_counter_wraps_at_65536() -> None:
    # chunk 65536 reuses chunk 0's nonce (uint16 counter, no rekey: 1.9.1), so equal payloads
    # give equal chunks when nothing else (mask, padding) varies
    client, _, _ = make_pair(Security.AES_128_GCM, options=S, chunk_size=1)
    client.header()
    wire = client.send(b"a" * 65537)
    chunk = 2 + 1 + 16
    assert len(wire) == 65537 * chunk
    assert wire[:chunk] == wire[65536 * chunk :]
    assert wire[:chunk] != wire[chunk : 2 * chunk]


def test_nonce_counter_wraps_round_trip() -> None:
    client, server, _ = make_pair(Security.CHACHA20_POLY1305, options=S | M | P, chunk_size=1)
    data = os.urandom(66_000)
    events = server.receive_data(client.send(data) + client.send_eof())
    assert b"".join(payloads(events)) == data
    assert isinstance(events[-1], EndOfStream)
