"""Test helpers: echo servers, a SOCKS client, V2Ray processes, in-process raybridge nodes.

Everything binds 127.0.0.1 and every server or process a helper starts is stopped by the
helper's context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from raybridge.address import Destination, Network, parse_host
from raybridge.protocols.socks import SocksClient, SocksCommand, encode_udp_datagram
from raybridge.templates import (  # noqa: F401 - re-exported for the tests
    DOMAIN,
    bridge_config,
    client_config,
    portal_config,
    server_config,
)

if TYPE_CHECKING:
    from raybridge.node import Node

V2RAY = shutil.which("v2ray") or "/usr/bin/v2ray"
HAVE_V2RAY = os.path.exists(V2RAY)
LOCAL = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (SOCKS UDP shares the TCP port)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOCAL, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((LOCAL, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def new_uuid() -> str:
    return str(uuid.uuid4())


async def until(
    predicate: Callable[[], object],
    timeout: float = 60.0,
    *,
    what: str = "the condition",
    step: float = 0.01,
) -> None:
    """Poll ``predicate()`` every ``step`` seconds until it is true. ``timeout`` is only a
    deadline against hangs (the test fails, naming ``what``), not a timing assert."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what}: not true within {timeout:g} s"
        await asyncio.sleep(step)


# -- echo servers ------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.server.connections += 1
        self.server.live.add(transport)
        transport.set_write_buffer_limits(256 * 1024)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once the client is done (after flushing)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.live.discard(self.transport)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class EchoServer:
    """TCP and UDP echo on the same port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.live: set[asyncio.Transport] = set()

    async def __aenter__(self) -> EchoServer:
        loop = asyncio.get_running_loop()
        self.port = free_port()
        self.server = await loop.create_server(lambda: _Echo(self), LOCAL, self.port)
        self.udp, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(LOCAL, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for t in list(self.live):
            t.abort()
        self.udp.close()
        await asyncio.sleep(0)


# -- SOCKS client --------------------------------------------------------------------------


async def socks_connect(
    port: int,
    host: str,
    target_port: int,
    *,
    username: str | None = None,
    password: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOCAL, port, limit=1 << 20)
    client = SocksClient(
        Destination(Network.TCP, parse_host(host), target_port),
        username=username,
        password=password,
    )
    writer.write(client.initial_bytes())
    await _socks_replies(client, reader, writer)
    return reader, writer


async def _socks_replies(
    client: SocksClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Read the server's replies byte-exactly, so payload that follows stays in ``reader``."""
    try:
        choice = await reader.readexactly(2)
        out = client.receive_data(choice)  # the password request or the command
        if out:
            writer.write(out)
        if choice[1] == 2:
            out = client.receive_data(await reader.readexactly(2))  # password result
            if out:
                writer.write(out)
        head = await reader.readexactly(5)  # VER REP RSV ATYP + first address byte
        rest = {1: 4 - 1, 4: 16 - 1, 3: head[4]}.get(head[3], 0) + 2
        client.receive_data(head + await reader.readexactly(rest))
    except asyncio.IncompleteReadError:
        raise ConnectionError("SOCKS server closed the connection") from None
    assert client.done


async def echo_roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int, chunk: int = 65536
) -> tuple[str, str]:
    """Send ``size`` random bytes while reading the echo; return both SHA-256 digests."""
    payload = os.urandom(min(size, 1 << 20))
    sent = hashlib.sha256()
    got = hashlib.sha256()

    async def send() -> None:
        left = size
        while left > 0:
            n = min(chunk, left)
            offset = (size - left) % len(payload)
            piece = (payload[offset:] + payload)[:n]
            sent.update(piece)
            writer.write(piece)
            await writer.drain()
            left -= n

    async def receive() -> None:
        left = size
        while left > 0:
            data = await reader.read(min(1 << 20, left))
            if not data:
                raise ConnectionError(f"connection closed with {left} bytes missing")
            got.update(data)
            left -= len(data)

    await asyncio.gather(send(), receive())
    return sent.hexdigest(), got.hexdigest()


async def socks_echo(port: int, echo_port: int, size: int, host: str = LOCAL) -> None:
    reader, writer = await socks_connect(port, host, echo_port)
    try:
        a, b = await asyncio.wait_for(echo_roundtrip(reader, writer, size), 120)
        assert a == b, "echoed bytes differ"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


async def socks_udp_echo(
    port: int, echo_port: int, datagrams: list[bytes], *, timeout: float = 10.0
) -> list[bytes]:
    """UDP ASSOCIATE through the SOCKS inbound; send datagrams to the echo server and
    return the payloads that come back (in arrival order)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(LOCAL, port)
    client = SocksClient(
        Destination(Network.UDP, parse_host("0.0.0.0"), 0), command=SocksCommand.UDP_ASSOCIATE
    )
    writer.write(client.initial_bytes())
    await _socks_replies(client, reader, writer)
    relay = client.bound
    transport, proto = await loop.create_datagram_endpoint(_UdpClient, local_addr=(LOCAL, 0))
    target = Destination(Network.UDP, parse_host(LOCAL), echo_port)
    replies: list[bytes] = []
    try:
        for datagram in datagrams:
            transport.sendto(encode_udp_datagram(target, datagram), (str(relay.host), relay.port))
            reply = await asyncio.wait_for(proto.queue.get(), timeout)
            # strip the SOCKS UDP header: 00 00 00 01 <4 bytes ip> <2 bytes port>
            assert reply[:4] == b"\x00\x00\x00\x01", reply[:10]
            replies.append(reply[10:])
    finally:
        transport.close()
        writer.close()
    return replies


# -- V2Ray processes -----------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited after ``timeout`` seconds, reap it
    and close its stdout pipe if it has one."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOCAL, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            time.sleep(0.01)


@contextlib.contextmanager
def v2ray(
    config: dict[str, Any], wait: list[int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the real V2Ray 4.34 with ``config`` until the block ends."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
        path = f.name
    proc = subprocess.Popen(
        [V2RAY, "-config", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for port in wait or []:
            try:
                wait_port(port)
            except TimeoutError:
                proc.kill()
                out = proc.communicate()[0].decode(errors="replace")
                raise RuntimeError(f"v2ray did not start:\n{out}") from None
        yield proc
    finally:
        stop_process(proc)
        os.unlink(path)


#: The environment of a raybridge subprocess: this tree's sources first.
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))]
        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ),
}


@contextlib.contextmanager
def raybridge_process(
    config: str | os.PathLike[str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m raybridge run -c config *args`` as a process of its own (for tests that
    signal it), output on its stdout pipe; killed at the end of the block if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "raybridge", "run", "-c", os.fspath(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=SUBPROCESS_ENV,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_port_async(port: int, timeout: float = 10.0) -> None:
    await asyncio.to_thread(wait_port, port, timeout)


# -- in-process raybridge nodes -----------------------------------------------------------


@contextlib.asynccontextmanager
async def node(config: dict[str, Any] | str, name: str = "<test>") -> AsyncIterator[Any]:
    """Run a raybridge node in this event loop until the block ends."""
    from raybridge.config.loader import load_config_text
    from raybridge.node import Node

    text = config if isinstance(config, str) else json.dumps(config, indent=1)
    n = Node(load_config_text(text, name))
    await n.start()
    try:
        yield n
    finally:
        await n.close()


class _Http(asyncio.Protocol):
    """A tiny HTTP/1.1 origin: ``GET /<n>`` answers ``n`` deterministic bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head = self.buffer.split(b"\r\n\r\n", 1)[0].decode()
        self.buffer = b""
        method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
        n = int(path.strip("/") or 0)
        body = http_body(n)
        headers = "\r\n".join(head.split("\r\n")[1:])
        self.transport.write(  # type: ignore[attr-defined]
            f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nKeep-Alive: timeout=5\r\n"
            f"X-Request-Headers: {len(headers)}\r\nX-Method: {method}\r\n\r\n".encode()
            + body
        )
        if "connection: close" in head.lower():
            self.transport.close()  # type: ignore[attr-defined]


def http_body(n: int) -> bytes:
    block = hashlib.sha256(b"raybridge").digest() * 2048
    return (block * (n // len(block) + 1))[:n]


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(_Http, LOCAL, port)
    try:
        yield port
    finally:
        server.close()


# -- a TCP relay that can freeze or impair its connections --------------------------------


class _RelayHalf(asyncio.Protocol):
    def __init__(self, relay: Relay, pair: list[_RelayHalf]) -> None:
        self.relay = relay
        self.pair = pair  # [client side, target side]
        self.transport: Any = None
        self.frozen = False
        self.pending: list[bytes] = []

    @property
    def other(self) -> _RelayHalf:
        return self.pair[1] if self.pair[0] is self else self.pair[0]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.frozen:
            return  # swallowed: the link is dead, and nobody says so
        self.relay.forward(self.other, data)

    def eof_received(self) -> bool:
        if not self.frozen and self.other.transport is not None:
            self.relay.forward_eof(self.other)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.frozen and self.other.transport is not None:
            self.other.transport.close()


class Relay:
    """TCP relay ``listen -> target`` on 127.0.0.1 for fault tests.

    ``freeze()`` silently stops every existing connection: bytes are dropped both ways and
    nothing is closed, like a link cut between two hosts (no FIN, no RST). New connections
    work. With ``delay`` (seconds) and a ``rng``, every piece of data is delayed and cut
    into random pieces, in order (what TCP makes of a slow, lossy, reordering path).
    """

    def __init__(self, target_port: int, *, delay: float = 0.0, seed: int | None = None) -> None:
        import random

        self.target_port = target_port
        self.port = free_port()
        self.delay = delay
        self.rng = random.Random(seed) if seed is not None else None
        self.pairs: list[list[_RelayHalf]] = []
        self.frozen: list[list[_RelayHalf]] = []
        self.server: asyncio.AbstractServer | None = None
        self._due: dict[int, float] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> Relay:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, LOCAL, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        for pair in self.pairs + self.frozen:
            for half in pair:
                if half.transport is not None:
                    half.transport.abort()

    def _accept(self) -> _RelayHalf:
        pair: list[_RelayHalf] = []
        client = _RelayHalf(self, pair)
        target = _RelayHalf(self, pair)
        pair += [client, target]
        self.pairs.append(pair)
        task = asyncio.ensure_future(self._connect(client, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _connect(self, client: _RelayHalf, target: _RelayHalf) -> None:
        loop = asyncio.get_running_loop()
        while client.transport is None:
            await asyncio.sleep(0)
        client.transport.pause_reading()
        try:
            await loop.create_connection(lambda: target, LOCAL, self.target_port)
        except OSError:
            client.transport.close()
            return
        client.transport.resume_reading()

    def forward(self, to: _RelayHalf, data: bytes) -> None:
        if self.delay <= 0 or self.rng is None:
            to.transport.write(data)
            return
        loop = asyncio.get_running_loop()
        pieces = []
        while data:
            cut = self.rng.randint(1, max(1, len(data)))
            pieces.append(data[:cut])
            data = data[cut:]
        key = id(to)
        for piece in pieces:
            # In order: each piece leaves after the previous one (a "lost" segment stalls
            # the ones behind it, as a retransmission would).
            stall = self.delay * (4 if self.rng.random() < 0.02 else 1)
            due = max(loop.time() + stall, self._due.get(key, 0.0) + 0.0001)
            self._due[key] = due
            loop.call_at(due, self._write, to, piece)

    def _write(self, to: _RelayHalf, data: bytes) -> None:
        if to.transport is not None and not to.transport.is_closing() and not to.frozen:
            to.transport.write(data)

    def forward_eof(self, to: _RelayHalf) -> None:
        if to.transport is None or not to.transport.can_write_eof():
            return
        if self.delay > 0 and self.rng is not None:
            loop = asyncio.get_running_loop()
            due = max(loop.time() + self.delay, self._due.get(id(to), 0.0) + 0.0001)
            loop.call_at(due, lambda: to.transport.is_closing() or to.transport.write_eof())
        else:
            to.transport.write_eof()

    def freeze(self) -> int:
        """Silently kill every connection open now; returns how many."""
        for pair in self.pairs:
            for half in pair:
                half.frozen = True
        count = len(self.pairs)
        self.frozen += self.pairs
        self.pairs = []
        return count


# -- node processes of either kind, and the reverse chain A-B-C --------------------------

RB, V2 = "raybridge", "v2ray"


@contextlib.asynccontextmanager
async def run(kind: str, config: dict[str, Any], port: int | None) -> AsyncIterator[None]:
    if kind == RB:
        async with node(config):
            yield
    else:
        with v2ray(config, wait=[port] if port else []):
            yield


async def wait_chain(socks_port: int, echo_port: int, timeout: float = 20.0) -> float:
    """Seconds until a connection through the chain echoes (the bridge has registered)."""
    start = time.monotonic()
    while True:
        try:
            await asyncio.wait_for(socks_echo(socks_port, echo_port, 100), 5)
            return time.monotonic() - start
        except (TimeoutError, OSError, AssertionError):
            if time.monotonic() - start > timeout:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def chain(
    a: str, b: str, c: str, *, alter_id: int = 0, single_inbound: bool = False
) -> AsyncIterator[tuple[int, EchoServer]]:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b_conf = portal_config(t_port, c_port, ua, uc, alter_id=alter_id, single_inbound=single_inbound)
    if single_inbound:
        c_port = t_port
    async with EchoServer() as echo:
        async with (
            run(b, b_conf, t_port),
            run(a, bridge_config(t_port, ua, alter_id=alter_id), None),
            run(c, client_config(s_port, c_port, uc, alter_id=alter_id), s_port),
        ):
            await wait_chain(s_port, echo.port)
            yield s_port, echo


async def exercise(s_port: int, echo: EchoServer) -> None:
    """The seed's checks on a chain: 20 MB each way, 200 concurrent connections of 100 KB,
    and UDP datagrams of 1 to 1900 bytes, all through the SOCKS port ``s_port``."""
    await socks_echo(s_port, echo.port, 20_000_000)
    before = echo.connections
    await asyncio.gather(*(socks_echo(s_port, echo.port, 100_000) for _ in range(200)))
    assert echo.connections - before == 200
    datagrams = [os.urandom(n) for n in (1, 700, 1400, 1900)]
    assert await socks_udp_echo(s_port, echo.port, datagrams) == datagrams


# -- what the fixtures in conftest.py hand a test -----------------------------------------


class StartNode(Protocol):
    async def __call__(self, config: dict[str, Any] | str, name: str = ...) -> Node: ...


class StartV2Ray(Protocol):
    def __call__(
        self, config: dict[str, Any], wait: list[int] | None = ...
    ) -> subprocess.Popen[bytes]: ...


class StartPeer(Protocol):
    async def __call__(self, kind: str, config: dict[str, Any], port: int | None = ...) -> None: ...


class StartChain(Protocol):
    async def __call__(
        self,
        a: str = ...,
        b: str = ...,
        c: str = ...,
        *,
        alter_id: int = ...,
        single_inbound: bool = ...,
    ) -> tuple[int, EchoServer]: ...
