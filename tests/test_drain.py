"""Graceful stop (SIGTERM, Ctrl-C): a node stops accepting, a bridge says DRAIN to its
portal on the control session, live connections finish within ``drainTimeout``; a second
signal stops at once. With two bridges on one portal, stopping either loses nothing."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from raybridge.node import Node
from raybridge.protocols.reverse import ControlState, decode_control
from raybridge.protocols.reverse_policy import (
    BridgePolicy,
    CloseTunnel,
    DialTunnel,
    OpenSession,
    PortalPolicy,
    SendControl,
    SendDrain,
    Timings,
)
from tests.changes import live, loopback_only, refused, socks_in
from tests.support import (
    RB,
    V2,
    EchoServer,
    StartNode,
    StartPeer,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    portal_config,
    raybridge_process,
    socks_echo,
    until,
    wait_chain,
    wait_port_async,
)

DRAIN_TIMEOUT = 30


class _Fixed:
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def events(policy: BridgePolicy | PortalPolicy) -> list[object]:
    out = []
    while (event := policy.next_event()) is not None:
        out.append(event)
    return out


# -- the two machines ------------------------------------------------------------------------


def test_bridge_policy_drain() -> None:
    policy = BridgePolicy(Timings(), rng=_Fixed())
    policy.start(0.0)
    [dial] = [e for e in events(policy) if isinstance(e, DialTunnel)]
    policy.control_received(0.1, dial.tunnel, ControlState.ACTIVE)
    policy.sessions_changed(0.2, dial.tunnel, 3)  # control + two clients
    events(policy)
    policy.drain(1.0)
    assert events(policy) == [SendDrain(tunnel=dial.tunnel)]
    assert not policy.drained and policy.tunnels == []
    policy.handle_timer(10.0)  # the monitor dials nothing now, drops nothing
    assert not any(isinstance(e, DialTunnel) for e in events(policy))
    policy.sessions_changed(11.0, dial.tunnel, 1)  # the clients are done
    assert events(policy) == []
    policy.sessions_changed(11.5, dial.tunnel, 0)  # the portal ended the control session
    assert events(policy) == [CloseTunnel(tunnel=dial.tunnel)]
    assert policy.drained
    policy.tunnel_closed(12.0, dial.tunnel)
    policy.handle_timer(20.0)
    assert not any(isinstance(e, DialTunnel) for e in events(policy))


def test_portal_policy_bridge_drain() -> None:
    policy = PortalPolicy(Timings(), urandom=lambda n: b"\0" * n)
    one, two = policy.tunnel_arrived(0.0), policy.tunnel_arrived(0.0)
    events(policy)
    for _ in range(3):
        policy.client_arrived(1.0)
    opened = [e.tunnel for e in events(policy) if isinstance(e, OpenSession)]
    assert set(opened) == {one, two}
    policy.bridge_drained(2.0, one)
    assert events(policy) == [SendControl(tunnel=one, payload=b"", end=True)]
    for _ in range(5):  # every new client goes to the other tunnel, however busy it is
        policy.client_arrived(3.0)
    assert {e.tunnel for e in events(policy) if isinstance(e, OpenSession)} == {two}
    policy.sessions_changed(4.0, one, 0)
    assert events(policy) == [CloseTunnel(tunnel=one)]
    # With no tunnel left that is not draining, a client waits (for the restarted bridge).
    policy.bridge_drained(5.0, two)
    events(policy)
    policy.client_arrived(5.0)
    assert events(policy) == [] and policy.waiting == 1
    three = policy.tunnel_arrived(6.0)
    assert OpenSession(tunnel=three, client=policy._ids - 1) in events(policy)


def test_drain_message_is_v2ray_control() -> None:
    """What the bridge sends is V2Ray's Control message with state DRAIN."""
    from raybridge.protocols.reverse import encode_control

    assert decode_control(encode_control(ControlState.DRAIN, b"\1\2\3")) is ControlState.DRAIN


# -- a node process ---------------------------------------------------------------------------


def write(path: Path, config: dict[str, Any]) -> Path:
    config.setdefault("raybridge", {})["drainTimeout"] = DRAIN_TIMEOUT
    config.setdefault("log", {"loglevel": "info"})
    path.write_text(json.dumps(config, indent=1))
    return path


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def finish(proc: subprocess.Popen[bytes], within: float) -> str:
    """The process's output once it has exited (failing if it takes over ``within`` s)."""
    out = (await asyncio.to_thread(proc.communicate, timeout=within))[0]
    return out.decode(errors="replace")


async def test_sigterm_drains_then_second_signal_stops(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    path = write(tmp_path / "n.json", {**loopback_only([]), "inbounds": [socks_in("s", port)]})
    with raybridge_process(path) as proc:
        await wait_port_async(port)
        async with live(port, echo.port) as conn:
            proc.send_signal(signal.SIGTERM)
            await until(lambda: not listening(port), what="the listener closed")
            assert await refused(port, echo.port)
            await conn.echo()  # the live connection goes on
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)  # a second signal: stop now
            out = await finish(proc, 10)
    assert proc.returncode == 0, out
    assert re.search(r"draining: [1-9]\d* connections", out), out  # ours (and a probe's)
    assert "second signal: stopping now" in out


async def test_sigterm_exits_when_idle(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    path = write(tmp_path / "n.json", {**loopback_only([]), "inbounds": [socks_in("s", port)]})
    with raybridge_process(path) as proc:
        await wait_port_async(port)
        async with live(port, echo.port) as conn:
            proc.send_signal(signal.SIGINT)  # Ctrl-C drains too
            await conn.echo()
        out = await finish(proc, DRAIN_TIMEOUT)  # exits once the connection has closed
    assert proc.returncode == 0, out


@pytest.mark.parametrize("other", [RB, V2], ids=["beside-raybridge", "beside-v2ray"])
async def test_drained_bridge_loses_nothing(
    other: str, tmp_path: Path, start_node: StartNode, start_peer: StartPeer
) -> None:
    """Two bridges on one raybridge portal; SIGTERM the raybridge one while transfers run
    through it and clients keep connecting: nothing fails, its transfers complete, it
    exits within the drain timeout (its tunnel closes as soon as they are done)."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    async with EchoServer() as echo:
        b = await start_node(portal_config(t_port, c_port, ua, uc), "B")
        await start_peer(other, bridge_config(t_port, ua), None)
        await start_node(client_config(s_port, c_port, uc), "C")
        await wait_chain(s_port, echo.port)
        path = write(tmp_path / "a1.json", bridge_config(t_port, ua))
        with raybridge_process(path) as a1:
            portal = b.portals[0]
            await until(lambda: len(portal.tunnels) == 2, what="both bridges' tunnels")
            failures: list[BaseException] = []
            done = asyncio.Event()
            connections = 0

            async def keep_connecting() -> None:
                nonlocal connections
                while not done.is_set():
                    try:
                        await socks_echo(s_port, echo.port, 20_000)
                        connections += 1
                    except Exception as exc:  # every failure fails the test
                        failures.append(exc)

            transfers = [
                asyncio.ensure_future(socks_echo(s_port, echo.port, 6_000_000)) for _ in range(6)
            ]
            # Transfers on both tunnels (the portal spreads them by session count).
            await until(
                lambda: all(t.worker.session_count > 1 for t in portal.tunnels),
                what="transfers on both tunnels",
            )
            clients = [asyncio.ensure_future(keep_connecting()) for _ in range(3)]
            await asyncio.sleep(0.3)  # the scenario: clients connecting before the signal
            sent = time.monotonic()
            a1.send_signal(signal.SIGTERM)
            out = await finish(a1, DRAIN_TIMEOUT + 5)
            exited = time.monotonic() - sent
            await asyncio.gather(*transfers)  # each checks its SHA-256
            await asyncio.sleep(0.3)  # the scenario: clients connecting after it left
            done.set()
            await asyncio.gather(*clients)
        assert a1.returncode == 0, out
        assert exited < DRAIN_TIMEOUT, out
        assert not failures, failures[:3]
        assert connections > 0
        assert "bridge [bridge]: draining" in out
        assert len(portal.tunnels) == 1  # the other bridge's


def test_drain_timeout_option() -> None:
    from raybridge.config.loader import load_config_text
    from raybridge.config.model import RaybridgeOptions
    from raybridge.errors import ConfigError

    options = load_config_text('{"raybridge": {"drainTimeout": 5}}').sections["raybridge"]
    assert isinstance(options, RaybridgeOptions) and options.drain_timeout == 5
    assert RaybridgeOptions().drain_timeout == 30
    for bad in ("-1", '"30"', "1e9"):
        with pytest.raises(ConfigError, match=r"^x\.json:2: raybridge\.drainTimeout: "):
            load_config_text('{"raybridge": {\n  "drainTimeout": ' + bad + "}}", "x.json")


async def test_drain_timeout_closes_what_is_left(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    config = {**loopback_only([]), "inbounds": [socks_in("s", port)]}
    path = write(tmp_path / "n.json", config)
    config["raybridge"]["drainTimeout"] = 1
    path.write_text(json.dumps(config))
    with raybridge_process(path) as proc:
        await wait_port_async(port)
        async with live(port, echo.port) as conn:
            proc.send_signal(signal.SIGTERM)
            out = await finish(proc, 20)  # after the drain timeout, not the connection
            assert await conn.reader.read() == b""  # closed by the node
    assert proc.returncode == 0, out
    assert "drain timeout (1s): closing 1 connections" in out


async def test_draining_server_closes_idle_mux_connections(
    start_node: StartNode, echo: EchoServer
) -> None:
    """A client's mux connection that carries no session does not hold a drain up."""
    from tests.support import server_config

    b_port, s_port = free_port(), free_port()
    user = new_uuid()
    b: Node = await start_node(server_config(b_port, user), "B")
    c_conf = client_config(s_port, b_port, user)
    c_conf["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 4}
    await start_node(c_conf, "C")
    await socks_echo(s_port, echo.port, 10_000)
    await until(lambda: b.live_connections == 1, what="the idle mux connection")
    assert await asyncio.wait_for(b.drain(timeout=60), 30)


async def test_drain_behind_a_v2ray_portal(
    tmp_path: Path, start_node: StartNode, start_peer: StartPeer
) -> None:
    """V2Ray 4.34's portal never reads what a bridge sends on the control session: the
    DRAIN message must not disturb it. The transfers in flight finish; with no answer to
    its DRAIN the bridge holds its tunnel until ``drainTimeout``, then exits. (The portal
    then goes on choosing the closed tunnel for up to 30 s, docs/protocols.md 8.12.)"""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    async with EchoServer() as echo:
        await start_peer(V2, portal_config(t_port, c_port, ua, uc), t_port)
        await start_node(client_config(s_port, c_port, uc), "C")
        a_conf = bridge_config(t_port, ua)
        path = write(tmp_path / "a.json", a_conf)
        a_conf["raybridge"]["drainTimeout"] = 4
        path.write_text(json.dumps(a_conf))
        with raybridge_process(path) as a:
            await wait_chain(s_port, echo.port)
            transfers = [
                asyncio.ensure_future(socks_echo(s_port, echo.port, 4_000_000)) for _ in range(3)
            ]
            await asyncio.sleep(0.2)  # the scenario: transfers under way
            a.send_signal(signal.SIGTERM)
            await asyncio.gather(*transfers)  # each checks its SHA-256
            out = await finish(a, 20)
        assert a.returncode == 0, out
        assert "drain timeout (4s)" in out  # no answer from a V2Ray portal
