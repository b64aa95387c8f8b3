"""Backpressure and the event loop.

A reader that stops reading must stop the sender at the far end of the chain: every relay
pauses its input when its output is full, so the bytes in flight stay bounded (kernel
socket buffers plus each end's high-water mark) instead of piling up in a node.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys

import pytest

from raybridge.address import Destination, Network
from raybridge.cli import run_loop
from raybridge.link import HIGH_WATER, End, Session, join
from raybridge.protocols.mux import Role
from raybridge.runtime import loop_name
from raybridge.transport.mux import FLUSH_AT, MuxWorker
from tests.support import (
    LOCAL,
    EchoServer,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    server_config,
    socks_connect,
    wait_chain,
)


class Firehose(asyncio.Protocol):
    """Sends 64 KiB blocks for as long as the peer takes them; counts what it sent."""

    sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.paused = False
        self.block = bytes(65536)
        self.pump()

    def pump(self) -> None:
        while not self.paused and not self.transport.is_closing():
            Firehose.sent += len(self.block)
            self.transport.write(self.block)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self.pump)


async def nodes_buffered(*nodes: object) -> int:
    """Bytes waiting in the nodes' own write buffers (transports and mux sessions)."""
    total = 0
    for n in nodes:
        for inbound in getattr(n, "inbounds", []):
            for end in inbound.tracker.ends:
                for e in (end, end.peer):
                    transport = getattr(e, "transport", None)
                    if transport is not None and hasattr(transport, "get_write_buffer_size"):
                        total += transport.get_write_buffer_size()
                    backlog = getattr(e, "_backlog", None)
                    total += getattr(e, "_buffered", 0) + (backlog.size if backlog else 0)
    return total


async def stalled_download(socks_port: int, source_port: int) -> int:
    """Read 5 MB, then stop reading; return bytes the source sent once it has stopped."""
    reader, writer = await socks_connect(socks_port, LOCAL, source_port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    got = 0
    while got < 5_000_000:
        got += len(await reader.read(1 << 20))
    writer.transport.pause_reading()
    # Wait for the source to stall: no progress for half a second (kept: a stall is an
    # absence of progress, seen only over time). The limit only stops a broken relay from
    # running forever: without backpressure it never stalls.
    last = -1
    for _ in range(120):
        if Firehose.sent == last:
            break
        last = Firehose.sent
        await asyncio.sleep(0.5)
    writer.close()
    return last - got


@pytest.mark.parametrize("chain", ["pair", "reverse"])
async def test_stalled_reader_stops_the_sender(chain: str) -> None:
    Firehose.sent = 0
    loop = asyncio.get_running_loop()
    source_port = free_port()
    server = await loop.create_server(Firehose, LOCAL, source_port)
    uid, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    try:
        if chain == "pair":
            async with (
                node(server_config(t_port, uid)) as b,
                node(client_config(s_port, t_port, uid)) as c,
            ):
                in_flight = await stalled_download(s_port, source_port)
                buffered = await nodes_buffered(b, c)
        else:
            async with (
                node(portal_config(t_port, c_port, uid, uc)) as b,
                node(bridge_config(t_port, uid)) as a,
                node(client_config(s_port, c_port, uc)) as c,
            ):
                async with EchoServer() as echo:
                    await wait_chain(s_port, echo.port)
                in_flight = await stalled_download(s_port, source_port)
                buffered = await nodes_buffered(a, b, c)
    finally:
        server.close()
    # In flight: kernel socket buffers (a few MB per hop on loopback) plus each end's
    # high-water mark. Without backpressure the source would have sent everything it
    # could (gigabytes) into the nodes' memory.
    assert in_flight < 64_000_000, in_flight
    assert buffered <= 8 * HIGH_WATER, buffered


def test_uvloop_is_used_when_installed() -> None:
    async def name() -> int:
        return 1 if loop_name().startswith("uvloop") else 0

    uses_uvloop = run_loop(name()) == 1
    assert uses_uvloop == (importlib.util.find_spec("uvloop") is not None)


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_node_reports_uvloop(tmp_path: object) -> None:
    port = free_port()
    config = f'{{"inbounds": [{{"protocol": "socks", "listen": "{LOCAL}", "port": {port}}}],'
    config += ' "outbounds": [{"protocol": "freedom"}]}'
    proc = subprocess.Popen(
        [sys.executable, "-m", "raybridge", "run", "-c", "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(config)
    proc.stdin.close()
    line = proc.stderr.readline()
    proc.terminate()
    proc.wait(10)
    proc.stderr.close()
    assert "started (uvloop.Loop)" in line, line


class _Carrier(End):
    """A carrier whose transport takes HIGH_WATER bytes, then pauses the writer (as a
    transport's pause_writing does), and never drains: the reader behind it stalled."""

    def __init__(self) -> None:
        self.peer: End | None = None
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and self.peer is not None:
            self.peer.pause_reading()

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Source(_Carrier):
    """Where a mux session's payload comes from (a socket read by the event loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@pytest.mark.parametrize("many", [False, True])
async def test_mux_payload_never_waits_unseen_for_a_scheduled_flush(many: bool) -> None:
    """A flush is scheduled (another session ended) when a read loop hands the worker
    megabytes in one loop iteration (libuv reads a ready socket up to 32 times): the bytes
    must reach the carrier as they come, so that its backpressure pauses the source, instead
    of piling up in the codec until the flush runs."""
    worker = MuxWorker(Role.CLIENT)
    carrier = _Carrier()
    join(worker, carrier)
    source = _Source()
    end = worker.open_session(
        Session(inbound_tag="t"), Destination(Network.TCP, "example.com", 80), source
    )
    source.peer = end
    await asyncio.sleep(0)  # the New frame goes out
    assert end.sid is not None
    worker.schedule_flush()
    piece = bytes(256 * 1024)
    written = 0
    while not source.paused and written < 64 * len(piece):
        if many:
            end.write_many([piece[:1000], piece])
        else:
            end.write(piece)
        written += len(piece)
    assert source.paused, "the source was never paused"
    assert written <= HIGH_WATER + FLUSH_AT + 2 * len(piece)
    worker.close()


async def test_mux_session_opened_while_the_carrier_is_paused_is_resumed_with_it() -> None:
    """A client arrives while the carrier's buffer is full: its reading is paused with the
    others. If the carrier drains before the session's New frame goes out, the session must
    be resumed too (it was once left paused for good: a hung connection)."""
    worker = MuxWorker(Role.CLIENT)
    join(worker, _Carrier())
    worker.pause_reading()  # the carrier's transport is full
    source = _Source()
    end = worker.open_session(
        Session(inbound_tag="t"), Destination(Network.TCP, "example.com", 80), source
    )
    source.peer = end
    assert source.paused and end.sid is None
    worker.resume_reading()  # drained, still within this loop iteration
    assert not source.paused
    worker.pause_reading()  # and paused again before the New frame is out
    assert source.paused
    worker.close()
