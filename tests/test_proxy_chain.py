"""Outbound chaining, ``proxySettings.tag`` (issue 14): an outbound's connection is carried
by the named outbound, as in V2Ray 4.34 (``app/proxyman/outbound/handler.go``).

The live tests put a relay between a client and its final server: the client's outbound
``final`` names ``hop`` in ``proxySettings``, ``hop`` is a VMess outbound to the relay.
Each test checks the bytes end to end *and* that the relay carried them (its access log,
or its inbound's counters), so a client that dialled the final server directly fails.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from raybridge.cli import reload_files
from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.node import Node
from tests.support import (
    LOCAL,
    RB,
    V2,
    EchoServer,
    StartNode,
    StartPeer,
    StartV2Ray,
    free_port,
    new_uuid,
    server_config,
    socks_echo,
    socks_udp_echo,
    until,
)
from tests.transports import with_stream, write_certs


def loopback_only(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with everything not on loopback routed to a blackhole."""
    out = copy.deepcopy(config)
    out["outbounds"].append({"tag": "no-internet", "protocol": "blackhole"})
    rules = out.setdefault("routing", {}).setdefault("rules", [])
    direct = out["outbounds"][0]["tag"]
    rules.append({"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": direct})
    rules.append({"type": "field", "network": "tcp,udp", "outboundTag": "no-internet"})
    return out


def vmess_out(tag: str, port: int, user: str, **extra: Any) -> dict[str, Any]:
    settings = {"vnext": [{"address": LOCAL, "port": port, "users": [{"id": user}]}]}
    return {"tag": tag, "protocol": "vmess", "settings": settings, **extra}


def chained_client(socks: int, final: tuple[int, str], hop: tuple[int, str]) -> dict[str, Any]:
    """SOCKS in; ``final`` (VMess to the final server) carried by ``hop`` (VMess to the
    relay)."""
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "socks-in",
                "protocol": "socks",
                "listen": LOCAL,
                "port": socks,
                "settings": {"udp": True},
            }
        ],
        "outbounds": [
            vmess_out("final", *final, proxySettings={"tag": "hop"}),
            vmess_out("hop", *hop),
        ],
    }


def relay_config(port: int, user: str, access_log: Path | None = None) -> dict[str, Any]:
    config = server_config(port, user)
    config["inbounds"][0]["tag"] = "relay-in"
    if access_log is not None:
        config["log"] = {"loglevel": "warning", "access": str(access_log)}
    return loopback_only(config)


def relay_saw(log: Path, port: int) -> bool:
    """V2Ray's access log has a connection to ``127.0.0.1:port``."""
    text = log.read_text() if log.exists() else ""
    return re.search(rf"accepted tcp:127\.0\.0\.1:{port}\b", text) is not None


@pytest.mark.parametrize("final_kind", [RB, V2])
async def test_vmess_through_v2ray_relay(
    tmp_path: Path,
    start_node: StartNode,
    start_v2ray: StartV2Ray,
    start_peer: StartPeer,
    echo: EchoServer,
    final_kind: str,
) -> None:
    """raybridge client -> (vmess "hop") V2Ray relay -> (vmess "final") final server."""
    relay_port, final_port, socks = free_port(), free_port(), free_port()
    relay_user, final_user = new_uuid(), new_uuid()
    log = tmp_path / "relay-access.log"
    start_v2ray(relay_config(relay_port, relay_user, log), wait=[relay_port])
    await start_peer(final_kind, loopback_only(server_config(final_port, final_user)), final_port)
    client: Node = await start_node(
        chained_client(socks, (final_port, final_user), (relay_port, relay_user))
    )

    await socks_echo(socks, echo.port, 300_000)
    # The relay carried the VMess connection to the final server, not the echo's.
    await until(lambda: relay_saw(log, final_port), 10, what="the relay's access log line")
    assert not relay_saw(log, echo.port)
    # The client counts the link as the hop's too (V2Ray counts it in both outbounds).
    stats = client.dispatcher.stats

    def hop_counted() -> bool:
        hop = stats.outbound.get("hop")
        return hop is not None and hop.connections >= 1 and hop.bytes_up > 300_000

    await until(hop_counted, 10, what="the hop's counters")


async def test_v2ray_client_through_raybridge_relay(
    start_node: StartNode, start_v2ray: StartV2Ray, echo: EchoServer
) -> None:
    """The reverse: V2Ray is the chaining client, raybridge the relay (and final server)."""
    relay_port, final_port, socks = free_port(), free_port(), free_port()
    relay_user, final_user = new_uuid(), new_uuid()
    relay = await start_node(relay_config(relay_port, relay_user))
    await start_node(loopback_only(server_config(final_port, final_user)))
    start_v2ray(
        chained_client(socks, (final_port, final_user), (relay_port, relay_user)), wait=[socks]
    )

    await socks_echo(socks, echo.port, 300_000)
    totals = relay.dispatcher.stats.inbound.get("relay-in")
    assert totals is not None and totals.connections >= 1


@pytest.mark.parametrize(("client_kind", "relay_kind"), [(RB, V2), (V2, RB)])
async def test_chained_outbound_keeps_its_tls(
    tmp_path: Path,
    start_peer: StartPeer,
    echo: EchoServer,
    client_kind: str,
    relay_kind: str,
) -> None:
    """4.34 puts the chained outbound's TLS on the link through the hop: the final server
    (raybridge, VMess over TLS) only understands it with TLS."""
    relay_port, final_port, socks = free_port(), free_port(), free_port()
    relay_user, final_user = new_uuid(), new_uuid()
    certs = write_certs(str(tmp_path))
    final = loopback_only(
        with_stream(server_config(final_port, final_user), "tls", "server", certs)
    )
    client = chained_client(socks, (final_port, final_user), (relay_port, relay_user))
    with_stream(client, "tls", "client", certs, tag="final")
    await start_peer(relay_kind, relay_config(relay_port, relay_user), relay_port)
    await start_peer(RB, final, final_port)
    await start_peer(client_kind, client, socks)
    await socks_echo(socks, echo.port, 300_000)


async def test_freedom_through_raybridge_relay_tcp_and_udp(
    start_node: StartNode, echo: EchoServer
) -> None:
    """A freedom outbound with proxySettings: its TCP connections and UDP flows go to the
    destination through the hop (V2Ray 4.34's freedom dials both through it)."""
    relay_port, socks = free_port(), free_port()
    relay_user = new_uuid()
    relay: Node = await start_node(relay_config(relay_port, relay_user))
    client = {
        "inbounds": [
            {
                "protocol": "socks",
                "listen": LOCAL,
                "port": socks,
                "settings": {"udp": True},
            }
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom", "proxySettings": {"tag": "hop"}},
            vmess_out("hop", relay_port, relay_user),
        ],
    }
    await start_node(client)

    await socks_echo(socks, echo.port, 200_000)
    stats = relay.dispatcher.stats
    await until(lambda: "relay-in" in stats.inbound, 10, what="the relay's TCP connection")
    tcp = stats.inbound["relay-in"].connections
    datagrams = [b"a" * 1, b"b" * 700, b"c" * 1400]
    assert await socks_udp_echo(socks, echo.port, datagrams) == datagrams
    await until(lambda: stats.inbound["relay-in"].connections > tcp, 10, what="the UDP flow")


@pytest.mark.parametrize("muxed", ["final", "hop"])
async def test_chaining_with_mux(
    start_node: StartNode, start_v2ray: StartV2Ray, echo: EchoServer, muxed: str, tmp_path: Path
) -> None:
    """Mux.Cool on either outbound: the chained one's carrier goes through the hop, or
    the hop carries the chained connection as a mux session (V2Ray relay, raybridge final
    server)."""
    relay_port, final_port, socks = free_port(), free_port(), free_port()
    relay_user, final_user = new_uuid(), new_uuid()
    log = tmp_path / "relay-access.log"
    start_v2ray(relay_config(relay_port, relay_user, log), wait=[relay_port])
    await start_node(loopback_only(server_config(final_port, final_user)))
    client = chained_client(socks, (final_port, final_user), (relay_port, relay_user))
    for outbound in client["outbounds"]:
        if outbound["tag"] == muxed:
            outbound["mux"] = {"enabled": True, "concurrency": 4}
    await start_node(client)
    for _ in range(3):
        await socks_echo(socks, echo.port, 100_000)
    await until(lambda: relay_saw(log, final_port), 10, what="the relay's access log line")


async def test_hop_failure_closes_the_client(start_node: StartNode, echo: EchoServer) -> None:
    """Nothing listens where the hop points: the chained connection fails, the client's
    connection is closed, and the node goes on."""
    socks, dead = free_port(), free_port()
    config = chained_client(socks, (free_port(), new_uuid()), (dead, new_uuid()))
    await start_node(config)
    with pytest.raises((ConnectionError, AssertionError, OSError)):
        await socks_echo(socks, echo.port, 1000)


# -- the config check -----------------------------------------------------------------------


def build(config: str) -> Node:
    return Node(load_config_text(config, "c.json"))


def outbounds(*items: str) -> str:
    return '{\n  "outbounds": [\n' + ",\n".join(items) + "\n  ]\n}\n"


def test_unknown_proxy_tag_is_a_config_error() -> None:
    text = outbounds(
        '    {"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "nowhere"}}',
    )
    with pytest.raises(ConfigError) as info:
        build(text)
    assert str(info.value) == (
        'c.json:3: outbounds[0].proxySettings.tag: no outbound has the tag "nowhere"'
    )


@pytest.mark.parametrize(
    ("items", "loop"),
    [
        (['{"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "a"}}'], '"a" -> "a"'),
        (
            [
                '{"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "b"}}',
                '{"tag": "b", "protocol": "freedom", "proxySettings": {"tag": "a"}}',
            ],
            '"a" -> "b" -> "a"',
        ),
    ],
)
def test_proxy_loop_is_a_config_error(items: list[str], loop: str) -> None:
    with pytest.raises(ConfigError, match="in a loop") as info:
        build(outbounds(*items))
    assert loop in str(info.value)
    assert str(info.value).startswith("c.json:3: outbounds[0].proxySettings.tag: ")


def test_what_v2ray_does_not_apply_is_a_warning() -> None:
    """4.34 puts only the TLS of streamSettings on a chained connection: the rest warns."""
    text = outbounds(
        '    {"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "b"},\n'
        '     "sendThrough": "127.0.0.1", "streamSettings": {"network": "ws"}}',
        '    {"tag": "b", "protocol": "blackhole", "proxySettings": {"tag": "a"}}',
    )
    config = load_config_text(text, "c.json")
    messages = [str(w) for w in config.warnings]
    assert any(
        '"network": "ws", sendThrough not applied' in m and "proxySettings" in m for m in messages
    ), messages
    assert any("blackhole makes no connection" in m for m in messages), messages


def test_chain_is_reported_by_raybridge_test(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "c.json"
    path.write_text(
        outbounds('    {"tag": "a", "protocol": "freedom", "proxySettings": {"tag": "x"}}')
    )
    out = subprocess.run(
        [sys.executable, "-m", "raybridge", "test", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 23
    assert 'c.json:3: outbounds[0].proxySettings.tag: no outbound has the tag "x"' in out.stderr


async def test_reload_carries_a_chained_outbound_through_the_new_hop(
    start_node: StartNode, echo: EchoServer, tmp_path: Path
) -> None:
    """A reload that points the hop at another relay: the chained outbound (kept by its
    own entry) is built again and goes through the new hop, not the retired one."""
    ports = [free_port() for _ in range(2)]
    users = [new_uuid() for _ in range(2)]
    relays = [await start_node(relay_config(p, u)) for p, u in zip(ports, users, strict=True)]
    socks = free_port()
    client = {
        "inbounds": [{"protocol": "socks", "listen": LOCAL, "port": socks}],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom", "proxySettings": {"tag": "hop"}},
            vmess_out("hop", ports[0], users[0]),
        ],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(client))
    node: Node = await start_node(path.read_text(), str(path))

    def seen(relay: Node) -> int:
        counter = relay.dispatcher.stats.inbound.get("relay-in")
        return counter.connections if counter else 0

    await socks_echo(socks, echo.port, 50_000)
    assert seen(relays[0]) == 1 and seen(relays[1]) == 0
    client["outbounds"][1] = vmess_out("hop", ports[1], users[1])
    path.write_text(json.dumps(client))
    record = await reload_files(node, [str(path)], requested=asyncio.get_running_loop().time())
    assert record.ok, record.error
    await socks_echo(socks, echo.port, 50_000)
    await until(lambda: seen(relays[1]) == 1, 10, what="the new relay's connection")
    assert seen(relays[0]) == 1


async def test_reload_to_an_unknown_hop_keeps_the_old_config(
    start_node: StartNode, echo: EchoServer, tmp_path: Path
) -> None:
    """proxySettings naming no outbound fails the reload (file, line, field); the node
    goes on with the chain it had."""
    relay_port, relay_user, socks = free_port(), new_uuid(), free_port()
    relay: Node = await start_node(relay_config(relay_port, relay_user))
    client = {
        "inbounds": [{"protocol": "socks", "listen": LOCAL, "port": socks}],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom", "proxySettings": {"tag": "hop"}},
            vmess_out("hop", relay_port, relay_user),
        ],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(client))
    node: Node = await start_node(path.read_text(), str(path))
    client["outbounds"][0]["proxySettings"] = {"tag": "nowhere"}
    path.write_text(json.dumps(client))
    record = await reload_files(node, [str(path)], requested=asyncio.get_running_loop().time())
    assert not record.ok
    assert "outbounds[0].proxySettings.tag" in record.error and "nowhere" in record.error
    await socks_echo(socks, echo.port, 50_000)
    await until(
        lambda: relay.dispatcher.stats.inbound["relay-in"].connections == 1, 10, what="relay"
    )
