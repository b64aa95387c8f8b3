"""The ordinary client-side Mux.Cool option (``"mux": {"enabled": true}``) of a VMess
outbound, against V2Ray 4.34 as server and as client, and raybridge with itself."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.support import (
    HAVE_V2RAY,
    EchoServer,
    StartNode,
    StartPeer,
    client_config,
    free_port,
    new_uuid,
    node,
    server_config,
    socks_echo,
    socks_udp_echo,
)

PAIRS = [("raybridge", "v2ray"), ("v2ray", "raybridge"), ("raybridge", "raybridge")]


@pytest.mark.parametrize("c_kind,b_kind", PAIRS, ids=[f"C={c}-B={b}" for c, b in PAIRS])
async def test_mux_client(
    c_kind: str, b_kind: str, echo: EchoServer, start_peer: StartPeer
) -> None:
    if "v2ray" in (c_kind, b_kind) and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    c_conf = client_config(c_port, b_port, uid)
    c_conf["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 4}
    await start_peer(b_kind, server_config(b_port, uid), b_port)
    await start_peer(c_kind, c_conf, c_port)
    await socks_echo(c_port, echo.port, 10_000_000)
    # 20 concurrent streams: more than one mux connection (concurrency 4).
    before = echo.connections
    await asyncio.gather(*(socks_echo(c_port, echo.port, 200_000) for _ in range(20)))
    assert echo.connections - before == 20
    datagrams = [os.urandom(n) for n in (1, 500, 1400)]
    assert await socks_udp_echo(c_port, echo.port, datagrams) == datagrams


async def test_v2ray_mux_workers_are_reused(echo: EchoServer, start_node: StartNode) -> None:
    """raybridge's mux client keeps few carrier connections: 12 sequential connections
    with concurrency 8 use one VMess connection."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    c_conf = client_config(c_port, b_port, uid)
    c_conf["outbounds"][0]["mux"] = {"enabled": True}
    b = await start_node(server_config(b_port, uid))
    async with node(c_conf):
        for _ in range(12):
            await socks_echo(c_port, echo.port, 10_000)
        vmess_in = b.inbounds[0]
        # one carrier connection in total was accepted by B
        assert len(vmess_in.tracker.ends) == 1
