"""Changing a running node piece by piece (raybridge.node: add/remove inbounds and
outbounds, VMess users, the router): new connections see the change, live ones finish on
what they started with, nothing is rebound that stays."""

from __future__ import annotations

import json
from typing import Any

import pytest

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.node import Node
from tests.changes import live, loopback_only, refused, socks_in
from tests.support import (
    LOCAL,
    EchoServer,
    StartNode,
    client_config,
    free_port,
    new_uuid,
    socks_echo,
    until,
)


async def test_add_and_remove_inbound(start_node: StartNode, echo: EchoServer) -> None:
    first, added = free_port(), free_port()
    node: Node = await start_node({**loopback_only([]), "inbounds": [socks_in("first", first)]})
    listener = node.inbound("first").server  # type: ignore[attr-defined]
    [inbound] = await node.add_inbound(socks_in("added", added))
    assert node.inbound("added") is inbound
    await socks_echo(added, echo.port, 100_000)
    with pytest.raises(ConfigError, match="existing tag found: added"):
        await node.add_inbound(socks_in("added", free_port()))
    async with live(added, echo.port) as conn:
        node.remove_inbound("added")
        assert await refused(added, echo.port)  # nothing listens there any more
        await conn.echo()  # the live connection drains
        assert inbound in node.retiring
    await until(lambda: inbound not in node.retiring, what="the drained inbound closed")
    assert node.inbound("first").server is listener  # type: ignore[attr-defined]
    await socks_echo(first, echo.port, 10_000)
    with pytest.raises(KeyError):
        node.remove_inbound("added")


async def test_add_and_remove_outbound(start_node: StartNode, echo: EchoServer) -> None:
    port = free_port()
    config = loopback_only([{"tag": "sink", "protocol": "blackhole"}])
    rules = config["routing"]["rules"]
    rules.insert(0, {"type": "field", "port": str(echo.port), "outboundTag": "sink"})
    # The default (first outbound) must reach loopback once "sink" is gone.
    config["outbounds"] = [config["outbounds"][1], config["outbounds"][0], config["outbounds"][2]]
    node: Node = await start_node({**config, "inbounds": [socks_in("in", port)]})
    assert await refused(port, echo.port)
    node.remove_outbound("sink")  # the rule now names an unknown tag: the default serves
    await socks_echo(port, echo.port, 100_000)
    with pytest.raises(KeyError):
        node.remove_outbound("sink")
    async with live(port, echo.port) as conn:
        await node.add_outbound({"tag": "sink", "protocol": "blackhole"})
        assert await refused(port, echo.port)
        await conn.echo()  # routed before the change: still on freedom
    with pytest.raises(ConfigError, match="existing tag found: sink"):
        await node.add_outbound({"tag": "sink", "protocol": "freedom"})


async def test_replace_router(start_node: StartNode, echo: EchoServer) -> None:
    port = free_port()
    node: Node = await start_node({**loopback_only([]), "inbounds": [socks_in("in", port)]})
    await socks_echo(port, echo.port, 10_000)
    async with live(port, echo.port) as conn:
        block = {"type": "field", "port": str(echo.port), "outboundTag": "block"}
        node.replace_router([rule_config(block)])
        assert await refused(port, echo.port)
        await conn.echo()
    bad = rule_config({"type": "field", "domain": ["regexp:("], "outboundTag": "direct"})
    with pytest.raises(ConfigError, match=r"routing\.rules\[0\]\.domain: invalid regexp"):
        node.replace_router([bad])
    assert await refused(port, echo.port)  # the failed replacement changed nothing


def rule_config(rule: dict[str, Any]) -> Any:
    text = {"outbounds": [{"protocol": "freedom"}], "routing": {"rules": [rule]}}
    return load_config_text(json.dumps(text)).routing.rules[0]


async def test_alter_inbound_users(start_node: StartNode, echo: EchoServer) -> None:
    vm, c1, c2 = free_port(), free_port(), free_port()
    u1, u2 = new_uuid(), new_uuid()
    server = {
        **loopback_only([]),
        "inbounds": [
            {
                "tag": "vm",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": vm,
                "settings": {"clients": [{"id": u1, "email": "one@x"}]},
            }
        ],
    }
    node: Node = await start_node(server, "B")
    await start_node(client_config(c1, vm, u1), "C1")
    await start_node(client_config(c2, vm, u2), "C2")
    await socks_echo(c1, echo.port, 10_000)
    assert await refused(c2, echo.port)
    node.alter_inbound_users("vm", add=[{"id": u2, "email": "two@x"}])
    await socks_echo(c2, echo.port, 100_000)
    with pytest.raises(ValueError, match="User TWO@x already exists"):
        node.alter_inbound_users("vm", add=[{"id": new_uuid(), "email": "TWO@x"}])
    async with live(c2, echo.port) as conn:
        node.alter_inbound_users("vm", remove=["two@x"])
        assert await refused(c2, echo.port)
        await conn.echo()  # authenticated before the removal
    await socks_echo(c1, echo.port, 10_000)
    with pytest.raises(ValueError, match="User two@x not found"):
        node.alter_inbound_users("vm", remove=["two@x"])
    with pytest.raises(KeyError):
        node.alter_inbound_users("nope", remove=["one@x"])


async def test_take_over_keeps_the_listener(start_node: StartNode, echo: EchoServer) -> None:
    """A changed inbound on the same address, port and transport serves on the old one's
    listening socket; the old one's live connections stay with it."""
    from raybridge.registry import build_inbounds

    port = free_port()
    node: Node = await start_node({**loopback_only([]), "inbounds": [socks_in("in", port)]})
    old = node.inbound("in")
    listener = old.server  # type: ignore[attr-defined]
    async with live(port, echo.port) as conn:
        config = node.config.inbounds[0]
        [new] = build_inbounds(
            config, dispatcher=node.dispatcher, policies=node.config.policy, options=node.options
        )
        assert new.can_take_over(old)
        await new.take_over(old)  # type: ignore[arg-type]
        assert new.server is listener and old.server is None  # type: ignore[attr-defined]
        node.inbounds[0] = new
        await socks_echo(port, echo.port, 50_000)
        await until(lambda: new.live == 0, what="the new inbound's connection ended")
        assert old.live == 1
        await conn.echo()
    await until(lambda: old.live == 0, what="the old inbound's connection ended")
    await old.close()
    await socks_echo(port, echo.port, 10_000)
