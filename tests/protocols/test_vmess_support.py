"""Helpers shared by the VMess tests, plus a few tests of the helpers themselves.

``ref_decode_chunks`` is an independent, deliberately simple reading of docs/protocols.md 1.9
(hashlib SHAKE, one AEAD object per call, no buffering tricks) used to check what the codec
writes, chunk by chunk.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from raybridge.address import Destination, tcp, udp
from raybridge.protocols.vmess import (
    ClientConnection,
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
)

SPEC_UUID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
SPEC_USER = User(SPEC_UUID)
REQ_KEY = bytes(range(16))
REQ_IV = bytes(range(16, 32))
NOW = 1_700_000_000

S = Option.CHUNK_STREAM
M = Option.CHUNK_MASKING
P = Option.GLOBAL_PADDING
A = Option.AUTHENTICATED_LENGTH

SECURITIES = (
    Security.AES_128_GCM,
    Security.CHACHA20_POLY1305,
    Security.NONE,
    Security.LEGACY,
)
#: Every valid combination of S, M, P (P requires M), plus R which servers ignore.
OPTION_SETS = (
    Option(0),
    S,
    S | M,
    S | M | P,
    M,
    M | P,
    S | Option.CONNECTION_REUSE,
    S | M | A,
    S | M | P | A,
    S | A,
)


class Scripted:
    """An urandom that serves a fixed byte string, then zeros (deterministic tests)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        out = bytes(self.data[:n])
        del self.data[:n]
        return out.ljust(n, b"\0")


def client_random(
    *,
    key: bytes = REQ_KEY,
    iv: bytes = REQ_IV,
    v: int = 0x42,
    padding_len: int = 0,
    legacy_offset: int | None = None,
    alter_index: int | None = None,
    r4: bytes = b"\x01\x02\x03\x04",
    n8: bytes = bytes(range(0xA0, 0xA8)),
) -> Scripted:
    """The urandom script ClientConnection consumes, in its documented order."""
    out = bytearray(key + iv + bytes((v,)))
    if legacy_offset is not None:
        out += (legacy_offset + 30).to_bytes(4, "big")
        if alter_index is not None:
            out += alter_index.to_bytes(4, "big")
        out += bytes((padding_len,)) + b"\x55" * padding_len
    else:
        out += bytes((padding_len,)) + b"\x55" * padding_len + r4 + n8
    return Scripted(bytes(out))


def target_for(command: Command) -> Destination | None:
    if command == Command.UDP:
        return udp("8.8.8.8", 53)
    if command == Command.MUX:
        return None
    return tcp("example.com", 443)


class Clock:
    def __init__(self, now: float = NOW + 0.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pair(
    security: Security = Security.AES_128_GCM,
    command: Command = Command.TCP,
    *,
    aead: bool | None = None,
    options: Option | None = None,
    user: User = SPEC_USER,
    validator: UserValidator | None = None,
    chunk_size: int = 16384,
    client_now: float = NOW,
) -> tuple[ClientConnection, ServerConnection, UserValidator]:
    if validator is None:
        validator = UserValidator([user], clock=Clock())
    client = ClientConnection(
        user,
        command,
        target_for(command),
        security,
        now=client_now,
        urandom=os.urandom,
        aead=aead,
        options=options,
        chunk_size=chunk_size,
    )
    server = ServerConnection(validator, urandom=os.urandom, chunk_size=chunk_size)
    return client, server, validator


def feed(
    receive: Callable[[bytes], Sequence[object]], wire: bytes, mode: str = "whole"
) -> list[object]:
    """Feed ``wire`` whole, one byte at a time, or in irregular pieces."""
    events: list[object] = []
    if mode == "whole":
        events += receive(wire)
    elif mode == "bytewise":
        for i in range(len(wire)):
            events += receive(wire[i : i + 1])
    else:
        sizes = itertools.cycle((1, 7, 2, 300, 5, 4096, 3))
        pos = 0
        while pos < len(wire):
            n = next(sizes)
            events += receive(wire[pos : pos + n])
            pos += n
    return events


def payloads(events: Iterable[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Data)]


def ends(events: Iterable[object]) -> int:
    return sum(isinstance(e, EndOfStream) for e in events)


# -- independent reference decoder (docs/protocols.md 1.9) -------------------------------------


@dataclass
class RefChunk:
    size: int  # decoded SIZE field (len(SEALED) + padding)
    padding: int
    payload: bytes  # b"" for end of stream


def _shake_words(iv: bytes, n: int) -> Iterator[int]:
    raw = hashlib.shake_128(iv).digest(2 * n)
    return (int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * n, 2))


def ref_decode_chunks(
    security: Security,
    options: Option,
    command: Command,
    key: bytes,
    iv: bytes,
    wire: bytes,
    *,
    cfb_prefix: bytes = b"",
    request_key_iv: tuple[bytes, bytes] | None = None,
) -> tuple[list[RefChunk], bytes]:
    """Decode a complete chunked body; return the chunks and any bytes after the EOS chunk.

    ``cfb_prefix``: bytes of the same CFB stream that precede the body (legacy response
    header followed by a LEGACY body). ``request_key_iv``: what keys the AuthenticatedLength
    cipher (option A), the request body key and IV; default ``key``, ``iv``."""
    if security == Security.LEGACY:
        dec = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
        dec.update(cfb_prefix)
        wire = dec.update(wire)
    auth_len = bool(options & A) and security != Security.LEGACY
    stream_mode = security == Security.NONE and command != Command.UDP and not auth_len
    overhead = {Security.AES_128_GCM: 16, Security.CHACHA20_POLY1305: 16, Security.LEGACY: 4}.get(
        security, 0
    )
    aead: AESGCM | ChaCha20Poly1305 | None = None
    if security == Security.AES_128_GCM:
        aead = AESGCM(key)
    elif security == Security.CHACHA20_POLY1305:
        k1 = hashlib.md5(key).digest()
        aead = ChaCha20Poly1305(k1 + hashlib.md5(k1).digest())
    len_aead: AESGCM | ChaCha20Poly1305 | None = None
    len_iv = (request_key_iv or (key, iv))[1]
    if auth_len:
        from raybridge.protocols.vmess.kdf import kdf16  # tested against the spec on its own

        len_key = kdf16((request_key_iv or (key, iv))[0], b"auth_len")
        if security == Security.CHACHA20_POLY1305:
            k1 = hashlib.md5(len_key).digest()
            len_aead = ChaCha20Poly1305(k1 + hashlib.md5(k1).digest())
        else:
            len_aead = AESGCM(len_key)
    words = _shake_words(iv, len(wire) + 4)  # a chunk is >= 2 bytes and draws <= 2 words
    masked = bool(options & M) and not auth_len
    padded = bool(options & P) and not stream_mode
    chunks: list[RefChunk] = []
    pos = 0
    count = 0
    len_count = 0
    while pos < len(wire):
        pad = next(words) % 64 if padded else 0
        if len_aead is not None:
            nonce = len_count.to_bytes(2, "big") + len_iv[2:12]
            len_count += 1
            plain = len_aead.decrypt(nonce, wire[pos : pos + 18], None)
            size = (int.from_bytes(plain, "big") + 16) % 65536
            pos += 18
        else:
            mask = next(words) if masked else 0
            size = int.from_bytes(wire[pos : pos + 2], "big") ^ mask
            pos += 2
        body = wire[pos : pos + size]
        assert len(body) == size, "truncated chunk"
        pos += size
        if stream_mode:
            chunks.append(RefChunk(size, 0, body))
            if size == 0:
                break
            continue
        assert size >= overhead + pad
        sealed = body[: size - pad]
        if aead is not None:
            nonce = count.to_bytes(2, "big") + iv[2:12]
            count = (count + 1) % 65536
            payload = aead.decrypt(nonce, sealed, None)
        elif security == Security.LEGACY:
            payload = sealed[4:]
            fnv = 0x811C9DC5
            for b in payload:
                fnv = ((fnv ^ b) * 0x01000193) % 2**32
            assert int.from_bytes(sealed[:4], "big") == fnv
        else:
            payload = sealed
        chunks.append(RefChunk(size, pad, payload))
        if not payload:
            assert size == overhead + pad  # end of stream (1.9.1)
            break
    return chunks, wire[pos:]


def handshake(
    client: ClientConnection, server: ServerConnection
) -> tuple[RequestReceived, ResponseReceived]:
    events = server.receive_data(client.header())
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    response = client.receive_data(server.send(b""))
    assert len(response) == 1 and isinstance(response[0], ResponseReceived)
    return events[0], response[0]


# -- tests of the helpers --------------------------------------------------------------------


def test_scripted_urandom_serves_script_then_zeros() -> None:
    rnd = Scripted(b"abc")
    assert rnd(2) == b"ab"
    assert rnd(3) == b"c\0\0"
    assert rnd.calls == [2, 3]


def test_reference_decoder_reads_the_spec_vector() -> None:
    wire = bytes.fromhex("0015a316c4d586054e854b4a74fc9040de5bd5eb74d177")
    wire += bytes.fromhex("001035c1d866430ee2a52d77f94eb568da9f")
    chunks, rest = ref_decode_chunks(Security.AES_128_GCM, S, Command.TCP, REQ_KEY, REQ_IV, wire)
    assert [c.payload for c in chunks] == [b"hello", b""]
    assert rest == b""
