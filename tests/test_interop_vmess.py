"""Interop with the real V2Ray 4.34 on loopback: a client node C (SOCKS in, VMess out) and a
server node B (VMess in, freedom out), each raybridge or V2Ray.

Every case moves 10 MB each way through C's SOCKS port to an echo server (checked by
SHA-256) and echoes UDP datagrams through SOCKS UDP ASSOCIATE.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.support import (
    HAVE_V2RAY,
    EchoServer,
    StartPeer,
    client_config,
    free_port,
    new_uuid,
    server_config,
    socks_echo,
    socks_udp_echo,
)

SIZE = 10 * 1000 * 1000

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)"),
]


PAIRS = [("raybridge", "v2ray"), ("v2ray", "raybridge"), ("raybridge", "raybridge")]


@pytest.mark.parametrize("security", ["aes-128-gcm", "chacha20-poly1305", "none"])
@pytest.mark.parametrize("alter_id", [64, 0], ids=["legacy", "aead"])
@pytest.mark.parametrize("c_kind,b_kind", PAIRS, ids=[f"C={c}-B={b}" for c, b in PAIRS])
async def test_client_server(
    c_kind: str, b_kind: str, alter_id: int, security: str, echo: EchoServer, start_peer: StartPeer
) -> None:
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    await start_peer(b_kind, server_config(b_port, uid, alter_id=alter_id), b_port)
    await start_peer(
        c_kind, client_config(c_port, b_port, uid, alter_id=alter_id, security=security), c_port
    )
    await socks_echo(c_port, echo.port, SIZE)
    # Two connections at once, to a domain name this time.
    await asyncio.gather(
        socks_echo(c_port, echo.port, 1_000_000, host="localhost"),
        socks_echo(c_port, echo.port, 1_000_000),
    )
    datagrams = [os.urandom(n) for n in (1, 100, 1400, 1900)]
    replies = await socks_udp_echo(c_port, echo.port, datagrams)
    assert replies == datagrams
