"""Reloads (SIGHUP; raybridge.reload): the new config is checked before anything changes,
what stays keeps its sockets and tunnels, live connections finish on what they started
with, and a broken file changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import signal
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

from raybridge.cli import reload_files
from raybridge.node import Node
from raybridge.proxy.base import StreamInbound
from tests.changes import live, loopback_only, refused, socks_in
from tests.support import (
    LOCAL,
    SUBPROCESS_ENV,
    EchoServer,
    StartNode,
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


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=1))
    return path


async def reload(node: Node, path: Path) -> Any:
    record = await reload_files(node, [str(path)], requested=asyncio.get_running_loop().time())
    assert record.ok, record.error
    return record


def vmess_in(tag: str, port: int, clients: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tag": tag,
        "protocol": "vmess",
        "listen": LOCAL,
        "port": port,
        "settings": {"clients": clients},
    }


async def test_reload_diff(tmp_path: Path, start_node: StartNode, echo: EchoServer) -> None:
    """Unchanged inbounds keep their listener objects; users, inbounds and rules change
    for new connections; the record lists each change."""
    s_port, vm, c1, c2, extra = (free_port() for _ in range(5))
    u1, u2 = new_uuid(), new_uuid()
    config = {
        **loopback_only([]),
        "inbounds": [socks_in("socks", s_port), vmess_in("vm", vm, [{"id": u1, "email": "a@x"}])],
    }
    path = write(tmp_path / "b.json", config)
    node: Node = await start_node(path.read_text(), str(path))
    await start_node(client_config(c1, vm, u1), "C1")
    await start_node(client_config(c2, vm, u2), "C2")
    socks, vmess = node.inbound("socks"), node.inbound("vm")
    assert isinstance(socks, StreamInbound) and isinstance(vmess, StreamInbound)
    listeners = socks.server, vmess.server
    assert await refused(c2, echo.port)
    async with live(c1, echo.port) as conn:
        config["inbounds"][1]["settings"]["clients"].append({"id": u2, "email": "b@x"})
        config["inbounds"].append(socks_in("extra", extra))
        config["routing"]["rules"].insert(
            0, {"type": "field", "inboundTag": ["socks"], "outboundTag": "block"}
        )
        record = await reload(node, write(path, config))
        assert record.changes == [
            "routing: 2 rules (were 1)",
            "inbound extra: added",
            "inbound vm: users +1 -0 (+b@x)",
        ]
        assert (node.inbound("socks"), node.inbound("vm")) == (socks, vmess)
        assert (socks.server, vmess.server) == listeners
        await conn.echo()
        await socks_echo(c2, echo.port, 50_000)  # the added user
        await socks_echo(extra, echo.port, 50_000)  # the added inbound
        assert await refused(s_port, echo.port)  # the added rule
        # The removed user's new connections are refused; this one (user a) goes on.
        config["inbounds"][1]["settings"]["clients"].pop()
        record = await reload(node, write(path, config))
        assert record.changes == ["inbound vm: users +0 -1 (-b@x)"]
        assert await refused(c2, echo.port)
        await conn.echo()
    # A reload with nothing changed changes nothing.
    assert (await reload(node, path)).changes == []


async def test_reload_changed_inbound_keeps_its_socket(
    tmp_path: Path, start_node: StartNode, echo: EchoServer
) -> None:
    """A changed inbound (settings, or its tag) on the same address, port and transport
    takes over the old one's listening socket; the old one's live connection drains."""
    port = free_port()
    config = {**loopback_only([]), "inbounds": [socks_in("socks", port)]}
    path = write(tmp_path / "n.json", config)
    node: Node = await start_node(path.read_text(), str(path))
    old = node.inbound("socks")
    assert isinstance(old, StreamInbound)
    listener = old.server
    sockets = [s.fileno() for s in listener.sockets] if listener is not None else []
    async with live(port, echo.port) as conn:
        config["inbounds"][0]["settings"] = {"udp": True}
        record = await reload(node, write(path, config))
        assert record.changes == ["inbound socks: changed (listener kept)"]
        new = node.inbound("socks")
        assert new is not old and isinstance(new, StreamInbound) and new.server is listener
        await socks_echo(port, echo.port, 20_000)
        await conn.echo()
        assert old in node.retiring
        config["inbounds"][0]["tag"] = "renamed"
        record = await reload(node, write(path, config))
        assert record.changes == ["inbound renamed: added", "inbound socks: removed"]
        renamed = node.inbound("renamed")
        assert isinstance(renamed, StreamInbound) and renamed.server is listener
        assert [s.fileno() for s in renamed.server.sockets] == sockets
        await socks_echo(port, echo.port, 20_000)
        await conn.echo()
        async with live(port, echo.port):  # served by the newest inbound
            assert renamed.live == 1 and new.live == 0 and old.live == 1
    gone = [weakref.ref(old), weakref.ref(new)]
    await until(lambda: not node.retiring, what="the replaced inbounds drained")
    # Nothing keeps the replaced inbounds (a VMess one holds its users' tables).
    del old, new
    gc.collect()
    assert [r() for r in gone] == [None, None]


async def test_reload_broken_file(tmp_path: Path, start_node: StartNode, echo: EchoServer) -> None:
    """A file that does not parse, or that builds nothing valid, keeps the old config
    serving; the error names file, line and field."""
    port = free_port()
    config = {**loopback_only([]), "inbounds": [socks_in("socks", port)]}
    path = write(tmp_path / "c.json", config)
    node: Node = await start_node(path.read_text(), "C")
    before = node.inbound("socks")
    path.write_text('{"inbounds": [\n  {"protocol": "socks", "port": "nope"}\n]}\n')
    record = await reload_files(node, [str(path)], requested=0.0)
    assert not record.ok and f"{path}:2" in record.error and "inbounds[0].port" in record.error
    broken = json.loads(json.dumps(config))
    broken["routing"]["rules"].append(
        {"type": "field", "domain": ["regexp:("], "outboundTag": "direct"}
    )
    record = await reload_files(node, [str(write(path, broken))], requested=0.0)
    assert not record.ok and "routing.rules[1]" in record.error and f"{path}:" in record.error
    assert node.inbound("socks") is before and node.reloads[-1] is record
    await socks_echo(port, echo.port, 50_000)


async def test_reloads_under_load(tmp_path: Path, start_node: StartNode) -> None:
    """The reverse chain with long transfers and a steady stream of new connections while
    B and C are reloaded 10 times (users, inbounds and rules added): no connection fails,
    every byte is intact, A's tunnel is the same TCP connection throughout; the added user
    connects, the removed one cannot."""
    ua, uc, added_id = new_uuid(), new_uuid(), new_uuid()
    t_port, c_port, s_port, c2_port = (free_port() for _ in range(4))
    b_conf = portal_config(t_port, c_port, ua, uc)
    c_conf = client_config(s_port, c_port, uc)
    b_path, c_path = write(tmp_path / "b.json", b_conf), write(tmp_path / "c.json", c_conf)
    async with EchoServer() as echo:
        a = await start_node(bridge_config(t_port, ua), "A")
        b = await start_node_file(start_node, b_path)
        c = await start_node_file(start_node, c_path)
        await wait_chain(s_port, echo.port)
        await until(lambda: bool(a.bridges[0].tunnels), what="A's tunnel")
        # The portal retires a tunnel after 256 sessions (V2Ray's rule, DRAIN_AFTER): the
        # stream below opens more, and this test is about reloads, not that rotation.
        policy = b.portals[0].policy
        policy.timings = dataclasses.replace(policy.timings, drain_after=1 << 30)
        tunnel = a.bridges[0].tunnels[0].worker
        carrier_port = local_port(tunnel)
        portal_tunnels = list(b.portals[0].tunnels)
        failures: list[BaseException] = []
        done = asyncio.Event()
        stream_count = 0

        async def stream() -> None:
            nonlocal stream_count
            while not done.is_set():
                try:
                    await socks_echo(s_port, echo.port, 20_000)
                    stream_count += 1
                except Exception as exc:  # counted: the test fails on any
                    failures.append(exc)

        long_ones = [
            asyncio.ensure_future(socks_echo(s_port, echo.port, 12_000_000)) for _ in range(3)
        ]
        streams = [asyncio.ensure_future(stream()) for _ in range(4)]
        extra_ports: list[int] = []
        for i in range(10):
            if i % 2 == 0:  # B: a user, an inbound, a rule
                b_conf["inbounds"][0]["settings"]["clients"].append(
                    {"id": new_uuid(), "email": f"user{i}@c"}
                )
                b_conf["inbounds"].append(vmess_in(f"extra{i}", free_port(), [{"id": uc}]))
                b_conf["routing"]["rules"].insert(
                    0,
                    {
                        "type": "field",
                        "domain": [f"full:never{i}.invalid"],
                        "outboundTag": "direct",
                    },
                )
                record = await reload(b, write(b_path, b_conf))
            else:  # C: an inbound, a rule
                extra_ports.append(free_port())
                c_conf["inbounds"].append(socks_in(f"extra{i}", extra_ports[-1]))
                c_conf.setdefault("routing", {"rules": []})["rules"].append(
                    {
                        "type": "field",
                        "domain": [f"full:never{i}.invalid"],
                        "outboundTag": "vmess-out",
                    }
                )
                record = await reload(c, write(c_path, c_conf))
            assert record.changes, record
            await asyncio.sleep(0.2)  # the scenario: reloads spread over the transfers
        # The added user connects, then is removed and cannot.
        b_conf["inbounds"][0]["settings"]["clients"].append({"id": added_id, "email": "new@c"})
        await reload(b, write(b_path, b_conf))
        await start_node(client_config(c2_port, c_port, added_id), "C2")
        await socks_echo(c2_port, echo.port, 100_000)
        for port in extra_ports:
            await socks_echo(port, echo.port, 10_000)  # C's added inbounds
        b_conf["inbounds"][0]["settings"]["clients"].pop()
        await reload(b, write(b_path, b_conf))
        assert await refused(c2_port, echo.port)
        await asyncio.gather(*long_ones)  # each checks its SHA-256
        done.set()
        await asyncio.gather(*streams)
        assert not failures, failures[:3]
        assert stream_count > 0
        # The first tunnel is the same TCP connection (the load may have added others:
        # a bridge dials more when its links are full), and none was lost.
        assert tunnel in [t.worker for t in a.bridges[0].tunnels] and not tunnel.closed
        assert local_port(tunnel) == carrier_port
        assert a.bridges[0].failures == 0 and not a.dispatcher.stats.tunnel_drops
        assert all(t in b.portals[0].tunnels for t in portal_tunnels)
        assert len(b.reloads) == 7 and len(c.reloads) == 5


def local_port(worker: Any) -> int:
    """The local port of the TCP connection under a tunnel (its VMess carrier)."""
    transport = worker.peer.transport
    return int(transport.get_extra_info("sockname")[1])


async def start_node_file(start_node: StartNode, path: Path) -> Node:
    """A node from a file (reloaded from it later)."""
    node: Node = await start_node(path.read_text(), str(path))
    return node


async def test_reload_forgets_api_changes(
    tmp_path: Path, start_node: StartNode, echo: EchoServer
) -> None:
    """What the API added is not in the files: a reload removes it (as V2Ray forgets API
    changes at a restart)."""
    port, extra = free_port(), free_port()
    config = {**loopback_only([]), "inbounds": [socks_in("socks", port)]}
    path = write(tmp_path / "n.json", config)
    node: Node = await start_node(path.read_text(), str(path))
    await node.add_inbound(socks_in("api", extra))
    await node.add_outbound({"tag": "api-out", "protocol": "freedom"})
    await socks_echo(extra, echo.port, 1000)
    record = await reload(node, path)
    assert record.changes == [
        "outbound api-out: removed (not in the files)",
        "inbound api: removed (not in the files)",
    ]
    assert await refused(extra, echo.port)
    await socks_echo(port, echo.port, 1000)


# -- the command line: SIGHUP and `raybridge reload` -----------------------------------------


async def test_sighup_and_reload_command(tmp_path: Path, echo: EchoServer) -> None:
    port, extra = free_port(), free_port()
    config = {**loopback_only([]), "inbounds": [socks_in("socks", port)]}
    config["log"] = {"loglevel": "warning"}
    path, pid_file = write(tmp_path / "node.json", config), tmp_path / "node.pid"
    with raybridge_process(path, "--pid-file", str(pid_file)) as proc:
        await wait_port_async(port)
        await until(pid_file.exists, what="the pid file")
        async with live(port, echo.port) as conn:
            config["inbounds"].append(socks_in("extra", extra))
            write(path, config)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "raybridge", "reload", "--pid-file", str(pid_file)],
                env=SUBPROCESS_ENV,
                capture_output=True,
            )
            assert done.returncode == 0, done.stderr
            await wait_port_async(extra)
            await socks_echo(extra, echo.port, 10_000)
            await conn.echo()  # the live connection went on
            path.write_text("{ broken")
            proc.send_signal(signal.SIGHUP)
            await socks_echo(port, echo.port, 10_000)
            await conn.echo()
        proc.send_signal(signal.SIGTERM)
        out = (await asyncio.to_thread(proc.communicate, timeout=30))[0].decode()
    assert proc.returncode == 0, out
    assert "reload: inbound extra: added" in out
    assert f"reload failed, still running the previous config: {path}:1" in out
    assert not pid_file.exists()
