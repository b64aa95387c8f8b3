"""No VMess chunk a raybridge node sends is larger than every implementation reads.

sing-box (and everything on sing-vmess: NekoBox, Hiddify, mihomo) refuses a chunk whose
``SIZE - padding`` exceeds 16384 bytes ("short buffer: stream chunk need N"); see
``SEND_CHUNK_SIZE`` in ``protocols/vmess/body.py``. The fake peers here are that strict:
they decode every chunk of what a node sends with the independent reference decoder of
``tests/protocols/test_vmess_support.py`` and record its size, in both roles (a node as
VMess server answering a strict client, a node as VMess client talking to a strict server),
for every security, and for Mux.Cool frames inside VMess. (A UDP datagram is one chunk;
the writer's cap on those is a unit test in ``tests/protocols/test_vmess_body.py``.)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field

import pytest

from raybridge.address import Destination, tcp
from raybridge.protocols.mux import FrameDecoder, Role
from raybridge.protocols.mux import MuxConnection as Mux
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Option,
    Security,
    User,
    client_profile,
)
from raybridge.protocols.vmess.header import (
    AEAD_HEADER_PREFIX,
    TAG,
    open_aead_request_header,
    open_aead_request_length,
    open_aead_response_header,
    open_aead_response_length,
    parse_request_plaintext,
    response_body_key_iv,
)
from tests.protocols.test_vmess_support import RefChunk, ref_decode_chunks
from tests.support import LOCAL, client_config, free_port, node, server_config, socks_connect

#: sing-vmess ``ReadChunkSize``: the most ``SIZE - padding`` may be.
STRICT = 16384
SIZE = 1_000_000
SECURITIES = ["aes-128-gcm", "chacha20-poly1305", "none", "zero"]


def _largest(chunks: list[RefChunk]) -> int:
    return max(c.size - c.padding for c in chunks)


class _Source(asyncio.Protocol):
    """Sends SIZE known bytes to whoever connects, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_payload())
        transport.write_eof()


def _payload() -> bytes:
    return hashlib.sha256(b"chunk limits").digest() * (SIZE // 32)


def _security(name: str) -> tuple[Security, Option]:
    if name == "zero":
        return client_profile(None, Command.TCP, zero=True)
    table = {
        "aes-128-gcm": Security.AES_128_GCM,
        "chacha20-poly1305": Security.CHACHA20_POLY1305,
        "none": Security.NONE,
    }
    return client_profile(table[name], Command.TCP)


async def _strict_client(
    port: int, user: User, security_name: str, command: Command, target: Destination | None
) -> tuple[list[RefChunk], bytes]:
    """A VMess client that records every response chunk the server sends: for TCP, until
    the server closes; for Mux (one session to the source), until SIZE bytes came."""
    security, options = _security(security_name)
    client = ClientConnection(
        user, command, target, security, now=time.time(), urandom=os.urandom, options=options
    )
    reader, writer = await asyncio.open_connection(LOCAL, port)
    wire = bytearray()
    try:
        if command is Command.MUX:
            mux = Mux(Role.CLIENT)
            mux.open_session(tcp(LOCAL, _SOURCE_PORT[0]))
            writer.write(client.send(mux.data_to_send()))
        else:
            writer.write(client.send_eof())  # the header and an empty request body
            writer.write_eof()  # (a raw body ends with the connection)
        while command is Command.TCP or len(wire) <= SIZE:
            data = await asyncio.wait_for(reader.read(1 << 20), 20)
            if not data:
                break
            wire += data
    finally:
        writer.close()
    resp_key, resp_iv = response_body_key_iv(client.body_key, client.body_iv, aead=True)
    length = open_aead_response_length(resp_key, resp_iv, bytes(wire[:18]))
    assert length is not None
    plain = open_aead_response_header(resp_key, resp_iv, bytes(wire[18 : 18 + length + TAG]))
    assert plain is not None
    body = bytes(wire[18 + length + TAG :])
    if not options & Option.CHUNK_STREAM and security is Security.NONE:
        return [], body  # "zero": a raw body has no chunks
    # A Mux body is cut off mid-chunk: decode its whole chunks only.
    for cut in range(len(body), max(0, len(body) - 70_000), -1):
        try:
            chunks, _ = ref_decode_chunks(
                security,
                options,
                command,
                resp_key,
                resp_iv,
                body[:cut],
                request_key_iv=(client.body_key, client.body_iv),
            )
        except AssertionError:
            continue
        return chunks, body
    raise AssertionError("no whole chunks in the response")


_SOURCE_PORT = [0]


@pytest.mark.parametrize("security", SECURITIES)
async def test_a_node_as_server_sends_only_chunks_a_strict_client_reads(security: str) -> None:
    loop = asyncio.get_running_loop()
    source_port = free_port()
    _SOURCE_PORT[0] = source_port
    server = await loop.create_server(_Source, LOCAL, source_port)
    uid = str(uuid.uuid4())
    b_port = free_port()
    try:
        async with node(server_config(b_port, uid)):
            user = User(uuid.UUID(uid))
            chunks, body = await _strict_client(
                b_port, user, security, Command.TCP, tcp(LOCAL, source_port)
            )
            if security == "zero":
                assert chunks == [] and body == _payload()  # raw: nothing to cap
                return
            assert b"".join(c.payload for c in chunks) == _payload()
            assert _largest(chunks) <= STRICT
            assert _largest(chunks) > STRICT // 2  # big ones, not V2Ray's 2 KiB
            # Mux.Cool inside VMess: the frames ride the same capped chunks.
            chunks, body = await _strict_client(b_port, user, security, Command.MUX, None)
            assert chunks and _largest(chunks) <= STRICT
            frames = FrameDecoder().feed(b"".join(c.payload for c in chunks))
            assert sum(len(f.data or b"") for f in frames) >= SIZE // 2
    finally:
        server.close()


@dataclass
class _StrictServer(asyncio.Protocol):
    """A VMess server (AEAD header) that records the request's chunks up to the end of the
    body (its EOS chunk, or the client's FIN for a raw body) and answers nothing."""

    user: User
    done: asyncio.Future[list[RefChunk]]
    wire: bytearray = field(default_factory=bytearray)

    def data_received(self, data: bytes) -> None:
        self.wire += data
        parsed = self._body()
        if parsed is None:
            return
        security, options, command, key, iv, body = parsed
        if not options & Option.CHUNK_STREAM and security is Security.NONE:
            return  # raw: wait for the FIN
        try:
            chunks, _ = ref_decode_chunks(security, options, command, key, iv, body)
        except AssertionError:
            return  # not all there yet
        if chunks and not chunks[-1].payload and not self.done.done():
            self.done.set_result(chunks)

    def eof_received(self) -> bool:
        parsed = self._body()
        if parsed is not None and not self.done.done():
            body = parsed[-1]
            self.done.set_result([RefChunk(len(body), 0, body)])
        return False

    def _body(self) -> tuple[Security, Option, Command, bytes, bytes, bytes] | None:
        wire = bytes(self.wire)
        if len(wire) < AEAD_HEADER_PREFIX:
            return None
        auth_id, enc_len, n8 = wire[:16], wire[16:34], wire[34:42]
        length = open_aead_request_length(self.user.cmd_key, auth_id, enc_len, n8)
        assert length is not None
        end = AEAD_HEADER_PREFIX + length + TAG
        if len(wire) < end:
            return None
        plain = open_aead_request_header(self.user.cmd_key, auth_id, n8, wire[42:end])
        assert plain is not None
        p = parse_request_plaintext(plain)
        assert not isinstance(p, int)
        return (
            Security(p.security_nibble),
            Option(p.options),
            Command(p.command),
            p.body_key,
            p.body_iv,
            wire[end:],
        )


@pytest.mark.parametrize("security", SECURITIES)
async def test_a_node_as_client_sends_only_chunks_a_strict_server_reads(security: str) -> None:
    loop = asyncio.get_running_loop()
    uid = str(uuid.uuid4())
    user = User(uuid.UUID(uid))
    done: asyncio.Future[list[RefChunk]] = loop.create_future()
    s_port, c_port = free_port(), free_port()
    server = await loop.create_server(lambda: _StrictServer(user, done), LOCAL, s_port)
    try:
        async with node(client_config(c_port, s_port, uid, security=security)):
            _, writer = await socks_connect(c_port, "10.0.0.1", 80)
            writer.write(_payload())
            writer.write_eof()
            chunks = await asyncio.wait_for(done, 20)
            writer.close()
    finally:
        server.close()
    assert b"".join(c.payload for c in chunks) == _payload()
    if security != "zero":
        assert _largest(chunks) <= STRICT
        assert _largest(chunks) > STRICT // 2
