"""Reverse-proxy variants users try: one VMess inbound on B for both A and C, the port
mapping of "Reverse Proxy I" (dokodemo-door on B, freedom redirect on A), two bridges on one
portal, and restarting the bridge while a client keeps connecting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support import (
    DOMAIN,
    LOCAL,
    RB,
    V2,
    EchoServer,
    StartChain,
    StartNode,
    StartPeer,
    bridge_config,
    client_config,
    echo_roundtrip,
    exercise,
    free_port,
    new_uuid,
    node,
    portal_config,
    socks_echo,
    socks_udp_echo,
    until,
    wait_chain,
)


@pytest.mark.parametrize("portal", [RB, V2])
async def test_single_inbound_portal(portal: str, start_chain: StartChain) -> None:
    """The seed's tip: B takes A's tunnel and C's traffic on one VMess inbound."""
    s_port, echo = await start_chain(RB, portal, RB, single_inbound=True)
    await exercise(s_port, echo)


def port_mapping_configs(
    t_port: int, door_port: int, uid: str, echo_port: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    b = {
        "reverse": {"portals": [{"tag": "portal", "domain": DOMAIN}]},
        "inbounds": [
            {
                "tag": "external",
                "protocol": "dokodemo-door",
                "listen": LOCAL,
                "port": door_port,
                "settings": {"address": LOCAL, "port": 80, "network": "tcp"},
            },
            {
                "tag": "interconn",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": t_port,
                "settings": {"clients": [{"id": uid}]},
            },
        ],
        "routing": {
            "rules": [
                {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
                {
                    "type": "field",
                    "inboundTag": ["interconn"],
                    "domain": [f"full:{DOMAIN}"],
                    "outboundTag": "portal",
                },
            ]
        },
    }
    a = bridge_config(t_port, uid)
    a["outbounds"][1]["settings"] = {"redirect": f"{LOCAL}:{echo_port}"}
    return a, b


@pytest.mark.parametrize("a_kind,b_kind", [(RB, RB), (RB, V2), (V2, RB)])
async def test_port_mapping(
    a_kind: str, b_kind: str, echo: EchoServer, start_peer: StartPeer
) -> None:
    """Reverse Proxy I: a dokodemo-door port on B maps to one service inside A's network."""
    uid = new_uuid()
    t_port, door = free_port(), free_port()
    a, b = port_mapping_configs(t_port, door, uid, echo.port)
    await start_peer(b_kind, b, t_port)
    await start_peer(a_kind, a, None)
    deadline = time.monotonic() + 20
    while True:  # until the bridge has registered
        try:
            reader, writer = await asyncio.open_connection(LOCAL, door)
            sent, got = await asyncio.wait_for(echo_roundtrip(reader, writer, 1000), 5)
            writer.close()
            break
        except (TimeoutError, OSError):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection(LOCAL, door)
    sent, got = await echo_roundtrip(reader, writer, 5_000_000)
    assert sent == got
    writer.close()


async def test_two_bridges_share_a_portal(echo: EchoServer, start_node: StartNode) -> None:
    """Connections spread over both bridges; with one stopped, new connections keep
    working through the other at once."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b = await start_node(portal_config(t_port, c_port, ua, uc))
    a1 = await start_node(bridge_config(t_port, ua))
    a2 = await start_node(bridge_config(t_port, ua))
    await start_node(client_config(s_port, c_port, uc))
    await wait_chain(s_port, echo.port)
    await until(lambda: len(b.portals[0].tunnels) >= 2, what="both bridges registered")
    await asyncio.gather(*(socks_echo(s_port, echo.port, 50_000) for _ in range(40)))

    def carried(a: Any) -> int:
        # sessions each bridge has served, beyond its control sessions
        return sum(t.worker.codec.allocated_total - 1 for t in a.bridges[0].tunnels)

    assert carried(a1) > 5 and carried(a2) > 5, (carried(a1), carried(a2))
    await a1.close()
    # No pause, no retry: every new connection goes through A2.
    results = await asyncio.gather(
        *(socks_echo(s_port, echo.port, 20_000) for _ in range(20)),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None] == []
    assert len(b.portals[0].tunnels) == 1


async def test_bridge_restart_while_client_connects(
    echo: EchoServer, start_node: StartNode
) -> None:
    """Restart A while C keeps opening connections: after A is back everything works, and
    connections opened while it was away waited for the new tunnel instead of failing."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    await start_node(portal_config(t_port, c_port, ua, uc))
    await start_node(client_config(s_port, c_port, uc))
    a = node(bridge_config(t_port, ua))
    await a.__aenter__()
    await wait_chain(s_port, echo.port)
    outcomes: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(socks_echo(s_port, echo.port, 5000), 10)
                outcomes.append((started, True))
            except Exception:
                outcomes.append((started, False))
            await asyncio.sleep(0.02)  # kept: the client's pace

    task = asyncio.ensure_future(client())
    await until(lambda: len(outcomes) >= 3, what="C connects through A")
    await a.__aexit__(None, None, None)  # A goes away
    await asyncio.sleep(0.5)  # kept: A stays away for a while (the scenario)
    a = node(bridge_config(t_port, ua))  # and comes back
    await a.__aenter__()
    back = len(outcomes)
    await until(lambda: len(outcomes) >= back + 3, what="C connects through the new A")
    stop.set()
    await task
    await socks_echo(s_port, echo.port, 1_000_000)
    datagrams = [b"after restart"]
    assert await socks_udp_echo(s_port, echo.port, datagrams) == datagrams
    await a.__aexit__(None, None, None)
    assert outcomes and all(ok for _, ok in outcomes), outcomes


async def test_several_bridges_and_portals_in_one_node() -> None:
    """One A node with two bridges (two domains), one B node with two portals; each
    portal's clients come out of its own bridge."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c1, c2, s1, s2 = (free_port() for _ in range(5))
    async with EchoServer() as echo1, EchoServer() as echo2:
        b = portal_config(t_port, c1, ua, uc)
        b["reverse"]["portals"].append({"tag": "portal2", "domain": "second.lan"})
        b["inbounds"].append(
            {
                "tag": "external2",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": c2,
                "settings": {"clients": [{"id": uc}]},
            }
        )
        b["routing"]["rules"] += [
            {"type": "field", "inboundTag": ["external2"], "outboundTag": "portal2"},
            {
                "type": "field",
                "inboundTag": ["interconn"],
                "domain": ["full:second.lan"],
                "outboundTag": "portal2",
            },
        ]
        a = bridge_config(t_port, ua)
        a["reverse"]["bridges"].append({"tag": "bridge2", "domain": "second.lan"})
        # bridge 1 maps everything to echo1, bridge 2 to echo2
        a["outbounds"][1]["settings"] = {"redirect": f"{LOCAL}:{echo1.port}"}
        a["outbounds"].append(
            {
                "tag": "out2",
                "protocol": "freedom",
                "settings": {"redirect": f"{LOCAL}:{echo2.port}"},
            }
        )

        def rule(tag: str, out: str, domain: str | None = None) -> dict[str, Any]:
            r: dict[str, Any] = {"type": "field", "inboundTag": [tag], "outboundTag": out}
            if domain:
                r["domain"] = [f"full:{domain}"]
            return r

        a["routing"]["rules"] = [
            rule("bridge", "tunnel", DOMAIN),
            rule("bridge2", "tunnel", "second.lan"),
            rule("bridge", "out"),
            rule("bridge2", "out2"),
        ]
        async with (
            node(b),
            node(a),
            node(client_config(s1, c1, uc)),
            node(client_config(s2, c2, uc)),
        ):
            await wait_chain(s1, 9)
            await wait_chain(s2, 9)
            for _ in range(3):
                await socks_echo(s1, 9, 100_000)
                await socks_echo(s2, 9, 100_000)
            assert echo1.connections >= 4 and echo2.connections >= 4
            before = (echo1.connections, echo2.connections)
            await socks_echo(s2, 9, 1000)
            assert (echo1.connections, echo2.connections) == (before[0], before[1] + 1)
