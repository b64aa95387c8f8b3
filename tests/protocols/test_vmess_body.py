"""Chunk sizes, big and V2Ray-sized chunks, authentication failures, helper implementations
(docs/protocols.md 1.9), and the Go ``math/rand`` port behind the drain size (1.6)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from raybridge.errors import LocalProtocolError
from raybridge.protocols import vmess
from raybridge.protocols.vmess import (
    Command,
    Data,
    EndOfStream,
    Option,
    RequestReceived,
    Security,
    VMessError,
    max_payload,
    primitives,
)
from raybridge.protocols.vmess.body import SEND_CHUNK_SIZE, BodyReader, BodySpec, BodyWriter
from raybridge.protocols.vmess.gorand import GoRand, crc64_ecma_update
from tests.protocols.test_vmess_support import (
    OPTION_SETS,
    REQ_IV,
    REQ_KEY,
    SECURITIES,
    M,
    P,
    S,
    make_pair,
    payloads,
    ref_decode_chunks,
)

FRAMED = [
    (security, options, command)
    for security in SECURITIES
    for options in OPTION_SETS
    for command in Command
    if options & S or security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305)
]


@pytest.mark.parametrize(("security", "options", "command"), FRAMED)
def test_big_chunk_writer_never_exceeds_the_send_limit(
    security: Security, options: Option, command: Command
) -> None:
    spec = BodySpec(security, options, command, REQ_KEY, REQ_IV)
    writer = BodyWriter(spec, urandom=os.urandom, chunk_size=10**9)
    limit = max_payload(security, options, command)
    if command == Command.UDP:
        data = [os.urandom(limit), os.urandom(limit - 1), b"x"]
        wire = b"".join(writer.write(d) for d in data)
        with pytest.raises(LocalProtocolError):
            writer.write(os.urandom(limit + 1))
    else:
        data = [os.urandom(300_000)]
        wire = writer.write(data[0])
    wire += writer.write_eof()
    chunks, rest = ref_decode_chunks(security, options, command, REQ_KEY, REQ_IV, wire)
    assert rest == b""
    assert all(c.size <= SEND_CHUNK_SIZE for c in chunks)
    assert b"".join(c.payload for c in chunks) == b"".join(data)
    assert max(len(c.payload) for c in chunks) == limit  # the cap is reached exactly
    reader = BodyReader(spec)
    events = reader.feed(wire)
    assert b"".join(payloads(events)) == b"".join(data) and events[-1] == EndOfStream()


@pytest.mark.parametrize("security", [Security.AES_128_GCM, Security.CHACHA20_POLY1305])
@pytest.mark.parametrize("options", [S, S | M, S | M | P])
def test_v2ray_sized_chunk_stream_is_accepted(security: Security, options: Option) -> None:
    # V2Ray's writer: <= 2030 payload bytes per chunk, 1966 with padding (1.9.7)
    size = 1966 if options & P else 2030
    client, server, _ = make_pair(security, options=options, chunk_size=size)
    header = client.header()
    data = os.urandom(100_000)
    body = client.send(data) + client.send_eof()
    chunks, _ = ref_decode_chunks(
        security, options, Command.TCP, client.body_key, client.body_iv, body
    )
    assert max(len(c.payload) for c in chunks) == size
    assert max(c.size for c in chunks) <= (2045 if options & P else 2046)
    events = server.receive_data(header + body)
    assert isinstance(events[0], RequestReceived)
    assert b"".join(payloads(events)) == data


def test_default_chunk_size_and_cap() -> None:
    client, _, _ = make_pair(Security.AES_128_GCM, options=S)
    client.header()
    chunks, _ = ref_decode_chunks(
        Security.AES_128_GCM,
        S,
        Command.TCP,
        client.body_key,
        client.body_iv,
        client.send(b"a" * 40000),
    )
    # 16 KiB chunks at most: SIZE = 16368 + 16 = 16384.
    assert [len(c.payload) for c in chunks] == [16368, 16368, 7264]
    assert max(c.size for c in chunks) == SEND_CHUNK_SIZE == 16384
    assert max_payload(Security.AES_128_GCM, S | M | P, Command.TCP) == 16384 - 16 - 63
    assert max_payload(Security.LEGACY, S, Command.TCP) == 16380
    assert max_payload(Security.NONE, S | M | P, Command.TCP) == 16384  # no padding there
    assert max_payload(Security.NONE, S | M | P, Command.UDP) == 16384 - 63


@pytest.mark.parametrize(
    "security", [Security.AES_128_GCM, Security.CHACHA20_POLY1305, Security.LEGACY]
)
@pytest.mark.parametrize("big", [False, True])
def test_bad_chunk_fails_the_connection(security: Security, big: bool) -> None:
    # V2Ray silently drops a bad chunk of <= 2048 bytes; we do not.
    client, server, _ = make_pair(security, options=S)
    server.receive_data(client.header())
    good = client.send(b"AAAA")
    bad = bytearray(client.send(os.urandom(3000) if big else b"BBBB"))
    bad[-1] ^= 0x01
    assert server.receive_data(good) == [Data(b"AAAA")]
    with pytest.raises(VMessError):
        server.receive_data(bytes(bad))
    with pytest.raises(VMessError):
        server.receive_data(client.send(b"CCCC"))


@pytest.mark.parametrize("security", [Security.AES_128_GCM, Security.LEGACY, Security.NONE])
def test_size_below_overhead_plus_padding_is_an_error(security: Security) -> None:
    command = Command.UDP if security == Security.NONE else Command.TCP
    reader = BodyReader(BodySpec(security, S | M | P, command, REQ_KEY, REQ_IV))
    # pad = 0xfc91 % 64 = 17, mask = 0x8e43: SIZE 3 decodes below overhead + padding
    wire = (3 ^ 0x8E43).to_bytes(2, "big")
    if security == Security.LEGACY:
        wire = primitives.aes_cfb_encryptor(REQ_KEY, REQ_IV).update(wire)
    with pytest.raises(VMessError):
        reader.feed(wire)


def test_forged_eos_without_tag_is_rejected() -> None:
    reader = BodyReader(BodySpec(Security.AES_128_GCM, S, Command.TCP, REQ_KEY, REQ_IV))
    with pytest.raises(VMessError):
        reader.feed(b"\x00\x10" + b"\x00" * 16)


def test_eos_waits_for_the_whole_chunk() -> None:
    spec = BodySpec(Security.AES_128_GCM, S | M | P, Command.TCP, REQ_KEY, REQ_IV)
    writer = BodyWriter(spec, urandom=os.urandom)
    reader = BodyReader(spec)
    eos = writer.write_eof()
    assert reader.feed(eos[:-1]) == []
    assert reader.feed(eos[-1:]) == [EndOfStream()]
    assert reader.done


def test_raw_bodies() -> None:
    for security in (Security.NONE, Security.LEGACY):
        spec = BodySpec(security, Option(0), Command.TCP, REQ_KEY, REQ_IV)
        writer = BodyWriter(spec, urandom=os.urandom)
        reader = BodyReader(spec)
        wire = writer.write(b"hello") + writer.write(b" world")
        assert (wire == b"hello world") == (security == Security.NONE)
        assert b"".join(payloads(reader.feed(wire[:3]) + reader.feed(wire[3:]))) == b"hello world"
        assert writer.write_eof() == b""
        assert reader.feed_eof() == [EndOfStream()]


def test_p_without_m_refused_by_the_body_codec() -> None:
    with pytest.raises(ValueError):
        BodyReader(BodySpec(Security.AES_128_GCM, S | P, Command.TCP, REQ_KEY, REQ_IV))


# -- helper implementations ----------------------------------------------------------------------


def test_fnv_pure_matches_optional_fast_path() -> None:
    data = os.urandom(5000)
    reference = 0x811C9DC5
    for b in data:
        reference = ((reference ^ b) * 0x01000193) % 2**32
    assert primitives.fnv1a32_pure(data) == reference == primitives.fnv1a32(memoryview(data))


def test_round_trip_with_hashlib_shake_and_pure_fnv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primitives, "_SHAKE_CLASS", primitives.HashlibShakeStream)
    monkeypatch.setattr(primitives, "_FAST_FNV", None)
    for security in (Security.LEGACY, Security.AES_128_GCM):
        client, server, _ = make_pair(security, options=S | M | P, chunk_size=100)
        data = os.urandom(30_000)  # 300 chunks: several refills of the SHAKE buffer
        events = server.receive_data(client.send(data) + client.send_eof())
        assert b"".join(payloads(events)) == data and events[-1] == EndOfStream()


def test_go_rand_matches_go() -> None:
    # Known outputs of Go's math/rand (before Go 1.20's changes to the global source).
    assert GoRand(1).int63() == 5577006791947779410
    rng = GoRand(1)
    assert [rng.intn(100) for _ in range(10)] == [81, 87, 47, 59, 81, 18, 25, 40, 56, 0]
    # math/rand's Example_rand with NewSource(99): Float32 x3 then Float64 x3 are Int63/2**63
    rng = GoRand(99)
    values = [rng.int63() / 2**63 for _ in range(6)]
    assert [round(v, 7) for v in values[:3]] == [0.2635776, 0.6358173, 0.6718283]
    assert values[3:] == [0.628605430454327, 0.4504798828572669, 0.9562755949377957]
    # int64 reinterpretation of uint64 seeds and the zero seed
    assert GoRand(2**64 - 1).int63() == GoRand(-1).int63()
    assert GoRand(0).int63() == GoRand(89482311).int63()


def test_crc64_ecma_matches_go() -> None:
    assert crc64_ecma_update(0, b"123456789") == 0x995DC9BBDF1939FA
    assert crc64_ecma_update(crc64_ecma_update(0, b"1234"), b"56789") == 0x995DC9BBDF1939FA


def test_vmess_package_is_sans_io() -> None:
    forbidden = {"asyncio", "socket", "time", "os", "random", "secrets", "threading"}
    package = Path(vmess.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


@pytest.mark.parametrize("piece", [1, 997, 70_000])
def test_big_chunks_arriving_in_pieces(piece: int) -> None:
    # The receive buffer keeps an offset and compacts only now and then. We never send
    # chunks over 16 KiB, but a V2Ray or Xray peer might, and 4.34 reads up to 65535 (1.9.7).
    spec = BodySpec(Security.AES_128_GCM, S | M | P, Command.TCP, REQ_KEY, REQ_IV)
    writer = BodyWriter(spec, urandom=os.urandom, chunk_size=10**6, send_limit=0xFFFF)
    reader = BodyReader(spec)
    data = os.urandom(3 * 65456 + 10)
    wire = writer.write(data) + writer.write_eof()
    events: list[Data | EndOfStream] = []
    for i in range(0, len(wire), piece):
        events += reader.feed(wire[i : i + piece])
    assert [len(p) for p in payloads(events)] == [65456, 65456, 65456, 10]
    assert b"".join(payloads(events)) == data and events[-1] == EndOfStream()
