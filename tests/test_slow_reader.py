"""One slow reader must not stall everyone else on a shared tunnel (issue 11, finding 2).

The reverse chain A-B-C with every client of C sharing B's tunnel to A: one client starts a
big download and stops reading. The others' echoes and 1 MB downloads must go on. With a
raybridge bridge A, B asks A to pause that one session (flow control in Mux.Cool KeepAlive
frames), and the slow download later completes with every byte intact; with a V2Ray 4.34
bridge A, which cannot be asked, B ends the slow session after its grace period instead of
pausing the tunnel (V2Ray's own portal stalls every session: head-of-line blocking).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    RB,
    V2,
    EchoServer,
    bridge_config,
    client_config,
    free_port,
    http_body,
    http_server,
    new_uuid,
    portal_config,
    run,
    socks_connect,
    socks_echo,
    wait_chain,
)

#: The slow download: far more than any buffer on the way.
BIG = 1920 * 65536  # 126 MB: more than a session may hold (FlowLimits.hard) plus the kernel buffers


class _Pattern(asyncio.Protocol):
    """Sends BIG bytes of a known pattern as fast as the reader takes them."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sent = 0
        self.paused = False
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.sent < BIG and not self.transport.is_closing():
            self.transport.write(pattern(self.sent, 65536))
            self.sent += 65536
        if self.sent >= BIG and not self.transport.is_closing():
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self.pump)


_BLOCK = hashlib.sha256(b"slow reader").digest() * 2048  # 64 KiB


def pattern(offset: int, size: int) -> bytes:
    assert offset % 65536 == 0 and size == 65536
    return _BLOCK


async def good_clients(s_port: int, echo_port: int, http_port: int) -> None:
    """What the other clients do while the slow one holds its download."""
    for _ in range(20):
        await asyncio.wait_for(socks_echo(s_port, echo_port, 1000), 10)
    for _ in range(3):
        reader, writer = await socks_connect(s_port, LOCAL, http_port)
        writer.write(b"GET /1000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.endswith(http_body(1_000_000)), len(data)


@pytest.mark.parametrize("bridge", [RB, V2])
async def test_one_slow_reader_does_not_stall_the_portal(bridge: str) -> None:
    if bridge == V2 and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    loop = asyncio.get_running_loop()
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port, big_port = free_port(), free_port(), free_port(), free_port()
    big = await loop.create_server(_Pattern, LOCAL, big_port)
    try:
        async with EchoServer() as echo, http_server() as http_port:
            async with (
                run(RB, portal_config(t_port, c_port, ua, uc), t_port),
                run(bridge, bridge_config(t_port, ua), None),
                run(RB, client_config(s_port, c_port, uc), s_port),
            ):
                await wait_chain(s_port, echo.port)
                reader, writer = await socks_connect(s_port, LOCAL, big_port)
                first = await reader.readexactly(65536)  # the download is flowing
                assert first == _BLOCK
                writer.transport.pause_reading()  # ... and now nobody reads it
                # Kept: the reader stays stalled for a while (the scenario), long enough for
                # every buffer on the way to fill up.
                await asyncio.sleep(0.5)
                await good_clients(s_port, echo.port, http_port)
                writer.transport.resume_reading()
                got = len(first)
                digest = hashlib.sha256(first)
                with contextlib.suppress(ConnectionError):
                    while True:
                        data = await asyncio.wait_for(reader.read(1 << 20), 20)
                        if not data:
                            break
                        digest.update(data)
                        got += len(data)
                writer.close()
                if bridge == RB:
                    # Paused, not cut: the whole download arrives, every byte right.
                    assert got == BIG
                    assert digest.digest() == hashlib.sha256(_BLOCK * (BIG // 65536)).digest()
                else:
                    # V2Ray cannot be asked to pause one session: B ended it.
                    assert got < BIG
                # and the chain still serves
                await good_clients(s_port, echo.port, http_port)
    finally:
        big.close()
