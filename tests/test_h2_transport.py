"""The HTTP/2 transport's asyncio side (transport/h2.py) on loopback, h2c (no TLS): streams as
ordinary transports, per-stream backpressure, connection loss, and the client pool."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from raybridge.address import Destination, Network
from raybridge.link import End, Session, join
from raybridge.protocols.vmess import ClientConnection, Command
from raybridge.protocols.vmess.account import User
from raybridge.proxy.vmess import ClientUser, VMessOutboundEnd
from raybridge.transport.h2 import (
    H2ClientPool,
    H2ServerProtocol,
    H2StreamTransport,
)
from raybridge.transport.tcp import StreamEnd
from tests.support import HAVE_V2RAY, EchoServer, free_port, new_uuid, until, v2ray

#: Each async test here is bounded at 120 s (a hang fails the test, it is not a timing assert).
pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
MB = 1 << 20
BLOCK = 64 * 1024


def block(seed: int, index: int) -> bytes:
    return random.Random(seed * 1_000_003 + index).randbytes(BLOCK)


class Echo(asyncio.Protocol):
    """Echoes; stops reading while its own writes are paused (proper backpressure)."""

    def __init__(self, log: list[Echo] | None = None) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused_writing = 0
        if log is not None:
            log.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        self.paused_writing += 1
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Source(Echo):
    """Sends ``size`` bytes of a known pattern as fast as the stream takes them, then EOF."""

    def __init__(self, size: int, log: list[Echo] | None = None) -> None:
        super().__init__(log)
        self.size = size
        self.sent = 0
        self.writing = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pump()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return True

    def pump(self) -> None:
        while self.writing and self.sent < self.size and not self.transport.is_closing():
            self.transport.write(block(7, self.sent // BLOCK))
            self.sent += BLOCK
        if self.sent >= self.size and not self.transport.is_closing():
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused_writing += 1
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        self.pump()


class Hold(Echo):
    """Does not read until told to (it pauses at once); hashes what it gets; ends when the
    client does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.pause_reading()
        self.hash = hashlib.sha256()
        self.got = 0

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.got += len(data)


class Client(asyncio.Protocol):
    """Sends ``size`` bytes (SHA-256 kept), half-closes, and hashes what comes back."""

    def __init__(
        self, size: int = 0, seed: int = 0, *, read: bool = True, eof: bool = True
    ) -> None:
        loop = asyncio.get_running_loop()
        self.size = size
        self.seed = seed
        self.sent = 0
        self.sent_hash = hashlib.sha256()
        self.got_hash = hashlib.sha256()
        self.got = 0
        self.writing = True
        self.read = read
        self.eof = eof
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, H2StreamTransport)
        self.transport = transport
        if not self.read:
            transport.pause_reading()
        self.pump()

    def pump(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.writing and self.sent < self.size and not transport.is_closing():
            data = block(self.seed, self.sent // BLOCK)[: self.size - self.sent]
            self.sent_hash.update(data)
            self.sent += len(data)
            transport.write(data)
        if self.sent >= self.size and self.eof and not transport.is_closing():
            transport.write_eof()

    def pause_writing(self) -> None:
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.got_hash.update(data)
        self.got += len(data)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or EOFError("lost before EOF"))
            self.done.exception()  # retrieved: a test that awaits it still gets it
        if not self.lost.done():
            self.lost.set_result(exc)


class ByPath(asyncio.Protocol):
    """Server side: an Echo, or a Source for paths under /ray/source/<MB>."""

    def __init__(self, log: list[Echo]) -> None:
        self.log = log
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        path = transport.get_extra_info("h2_path")
        if path.startswith("/ray/source/"):
            self.inner = Source(int(path.rsplit("/", 1)[1]) * MB, self.log)
        elif path == "/ray/hold":
            self.inner = Hold(self.log)
        else:
            self.inner = Echo(self.log)
        transport.set_protocol(self.inner)  # type: ignore[attr-defined]
        self.inner.connection_made(transport)


class Server:
    def __init__(self) -> None:
        self.protocols: list[H2ServerProtocol] = []
        self.ends: list[Echo] = []
        self.failures: list[str] = []
        self.port = 0

    def factory(self) -> H2ServerProtocol:
        protocol = H2ServerProtocol(
            lambda: ByPath(self.ends),
            hosts=["a.test"],
            path="/ray",
            on_failure=lambda layer, reason: self.failures.append(f"{layer}: {reason}"),
        )
        self.protocols.append(protocol)
        return protocol


@contextlib.asynccontextmanager
async def h2_server() -> AsyncIterator[Server]:
    loop = asyncio.get_running_loop()
    state = Server()
    server = await loop.create_server(state.factory, HOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for protocol in state.protocols:
            protocol.abort()
        await server.wait_closed()


def dialer(port: int) -> Callable[[asyncio.Protocol], object]:
    async def dial(protocol: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: protocol, HOST, port)

    return dial


async def echo(pool: H2ClientPool, port: int, size: int, seed: int) -> Client:
    client = Client(size, seed)
    await pool.connect(client, ("h2", port), dialer(port), path="/ray", hosts=["a.test"])
    await asyncio.wait_for(client.done, 60)
    assert client.got == size
    assert client.got_hash.hexdigest() == client.sent_hash.hexdigest()
    return client


# -- tests ---------------------------------------------------------------------------------------
async def test_concurrent_streams_echo_megabytes_on_one_connection() -> None:
    async with h2_server() as server:
        pool = H2ClientPool()
        sizes = [1 * MB, 2 * MB + 12345, 3 * MB, 4 * MB + 1, 5 * MB]
        await asyncio.gather(*(echo(pool, server.port, s, i) for i, s in enumerate(sizes)))
        assert pool.dials == 1 and len(server.protocols) == 1
        assert len(server.ends) == 5
        await pool.close()


async def test_a_paused_reader_stalls_only_its_own_stream() -> None:
    async with h2_server() as server:
        pool = H2ClientPool()
        key, dial = ("h2", server.port), dialer(server.port)
        # Downstream: a client that does not read while the server sends it 16 MB.
        slow = Client(read=False)
        await pool.connect(slow, key, dial, path="/ray/source/16", hosts=["a.test"])
        # Upstream: a server end that does not read while the client sends it 16 MB.
        stuck = Client(16 * MB, 99)
        await pool.connect(stuck, key, dial, path="/ray/hold", hosts=["a.test"])
        stuck_end = server.ends[-1]
        assert isinstance(stuck_end, Hold)
        # Meanwhile the other streams on the same connection go on, both ways.
        await asyncio.gather(*(echo(pool, server.port, 2 * MB, i) for i in range(4)))
        assert pool.dials == 1
        source = server.ends[0]
        assert isinstance(source, Source)
        assert source.paused_writing and source.sent < source.size  # stopped by its window
        assert not slow.done.done() and slow.got == 0
        assert stuck.sent < stuck.size  # its writer was paused by the stream's window
        # Reading again, both complete with every byte.
        assert slow.transport is not None
        slow.transport.resume_reading()
        await asyncio.wait_for(slow.done, 60)
        expected = hashlib.sha256(b"".join(block(7, i) for i in range(16 * MB // BLOCK)))
        assert slow.got == 16 * MB and slow.got_hash.hexdigest() == expected.hexdigest()
        assert stuck_end.got == 0
        stuck_end.transport.resume_reading()
        await asyncio.wait_for(stuck.done, 60)  # the end echoes the client's EOF
        assert stuck_end.got == 16 * MB
        assert stuck_end.hash.hexdigest() == stuck.sent_hash.hexdigest()
        await pool.close()


async def test_connection_loss_reaches_every_stream() -> None:
    async with h2_server() as server:
        pool = H2ClientPool()
        key, dial = ("h2", server.port), dialer(server.port)
        clients = [Client(1000, i, eof=False) for i in range(3)]
        for client in clients:
            await pool.connect(client, key, dial, path="/ray", hosts=["a.test"])
        assert len(server.ends) == 3
        server.protocols[0].abort()
        for client in clients:
            exc = await asyncio.wait_for(client.lost, 10)
            assert isinstance(exc, ConnectionError)
        for end in server.ends:
            assert isinstance(await asyncio.wait_for(end.lost, 10), ConnectionError)
        await pool.close()


async def test_pool_reuses_one_connection_and_redials_after_it_dies() -> None:
    async with h2_server() as server:
        pool = H2ClientPool()
        key = ("h2", server.port)
        for seed in range(3):
            await echo(pool, server.port, 100_000, seed)
        assert pool.dials == 1 and len(pool.connections(key)) == 1
        waiting = Client(eof=False)
        await pool.connect(waiting, key, dialer(server.port), path="/ray", hosts=["a.test"])
        server.protocols[0].abort()
        await asyncio.wait_for(waiting.lost, 10)
        assert pool.connections(key) == []
        await echo(pool, server.port, 100_000, 5)
        assert pool.dials == 2 and len(server.protocols) == 2
        await pool.close()


async def test_wrong_path_and_host_fail_the_stream_not_the_connection() -> None:
    async with h2_server() as server:
        pool = H2ClientPool()
        key, dial = ("h2", server.port), dialer(server.port)
        for path, hosts in [("/nope", ["a.test"]), ("/ray", ["b.test"])]:
            with pytest.raises(ConnectionResetError, match="HTTP status 404"):
                await pool.connect(Client(), key, dial, path=path, hosts=hosts)
        await echo(pool, server.port, 1000, 1)
        assert pool.dials == 1
        assert len(server.failures) == 2
        assert "does not start with '/ray'" in server.failures[0]
        assert "host 'b.test'" in server.failures[1]
        await pool.close()


async def test_dial_failure_is_raised_and_not_pooled() -> None:
    pool = H2ClientPool()

    async def refuse(protocol: asyncio.Protocol) -> None:
        raise ConnectionRefusedError("nobody home")

    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await pool.connect(Client(), "k", refuse, path="/ray", hosts=["a.test"])
    assert pool.dials == 0 and pool.connections("k") == []
    await pool.close()


async def test_garbage_and_http1_close_only_that_connection() -> None:
    async with h2_server() as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /ray HTTP/1.1\r\nHost: a.test\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 426")
        writer.close()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64)
        answer = await asyncio.wait_for(reader.read(), 10)  # SETTINGS, GOAWAY, then EOF
        assert answer
        writer.close()
        pool = H2ClientPool()
        await echo(pool, server.port, 50_000, 2)
        assert len(server.failures) == 2
        await pool.close()


class Collector(End):
    """The far end of a link: keeps what it is given."""

    def __init__(self) -> None:
        self.peer: End | None = None
        self.data = bytearray()
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.aborted: BaseException | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def write_eof(self) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = exc
        if not self.eof.done():
            self.eof.set_exception(exc or ConnectionResetError())
            self.eof.exception()  # retrieved: a test that awaits it still gets it

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class EchoEnd(End):
    """A link end that sends back what it gets (the server side of the test below)."""

    def __init__(self) -> None:
        self.peer: End | None = None

    def write(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.write(data)

    def write_eof(self) -> None:
        assert self.peer is not None
        self.peer.write_eof()

    def abort(self, exc: BaseException | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        assert self.peer is not None
        self.peer.pause_reading()

    def resume_reading(self) -> None:
        assert self.peer is not None
        self.peer.resume_reading()


async def test_stream_ends_run_on_h2_streams() -> None:
    """The link ends VMess subclasses (StreamEnd), on both sides, as the lead will plug them:
    the server's factory makes the inbound end, the client dials through start_connect."""
    loop = asyncio.get_running_loop()

    def inbound() -> StreamEnd:
        end = StreamEnd()
        join(end, EchoEnd())
        return end

    server = await loop.create_server(
        lambda: H2ServerProtocol(inbound, hosts=["a.test"], path="/ray"), HOST, 0
    )
    port = server.sockets[0].getsockname()[1]
    pool = H2ClientPool()
    collector = Collector()
    outbound = StreamEnd()
    join(collector, outbound)
    payload = random.Random(4).randbytes(3 * MB)
    outbound.write(payload[:1000])  # before the stream exists: backlogged, then sent first
    outbound.start_connect(
        lambda end: pool.connect(end, ("h2", port), dialer(port), path="/ray", hosts=["a.test"])
    )
    outbound.write(payload[1000:])
    outbound.write_eof()
    await asyncio.wait_for(collector.eof, 30)
    assert collector.data == payload
    await pool.close()
    server.close()
    await server.wait_closed()


@pytest.mark.interop
@pytest.mark.skipif(not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)")
async def test_vmess_streams_through_v2rays_h2c_server() -> None:
    """The client pool with raybridge's VMess outbound end on each stream, against V2Ray
    4.34's h2 server without TLS (h2c), freedom to an echo server: several streams on one
    connection, every byte back; a wrong path gets V2Ray's 404 and the connection stays."""
    uid = new_uuid()
    port = free_port()
    config = {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "port": port,
                "listen": HOST,
                "protocol": "vmess",
                "settings": {"clients": [{"id": uid, "alterId": 0}]},
                "streamSettings": {
                    "network": "http",
                    "httpSettings": {"host": ["a.test"], "path": "/ray"},
                },
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    pool = H2ClientPool()
    key, dial = ("v2ray", port), dialer(port)

    async def vmess(echo_port: int, size: int, path: str = "/ray") -> bytes:
        user = ClientUser(User(uuid.UUID(uid)), "aes-128-gcm")
        security, options = user.profile(Command.TCP)
        target = Destination(Network.TCP, HOST, echo_port)
        codec = ClientConnection(
            user.user,
            Command.TCP,
            target,
            security,
            now=time.time(),
            urandom=os.urandom,
            options=options,
        )
        end = VMessOutboundEnd(Session(inbound_tag="test"), codec, False)
        collector = Collector()
        join(collector, end)
        end.start_connect(lambda e: pool.connect(e, key, dial, path=path, hosts=["a.test"]))
        payload = random.Random(size).randbytes(size)
        end.write(payload)
        await until(lambda: len(collector.data) >= size or collector.eof.done())
        if collector.eof.done():
            collector.eof.result()  # raises what ended it
        assert hashlib.sha256(collector.data).digest() == hashlib.sha256(payload).digest()
        end.write_eof()
        return bytes(collector.data)

    with v2ray(config, wait=[port]):
        async with EchoServer() as echo:
            await asyncio.gather(*(vmess(echo.port, (i + 1) * 700_000) for i in range(3)))
            assert pool.dials == 1
            with pytest.raises(ConnectionResetError, match="HTTP status 404"):
                await vmess(echo.port, 1000, path="/wrong")
            await vmess(echo.port, 1000)
            assert pool.dials == 1
    await pool.close()
