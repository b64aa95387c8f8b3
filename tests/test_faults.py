"""Faults the reverse chain must survive on its own: a silently dead link, a bridge that
starts first, a portal restart, slow and lossy paths, the portal's drain every 256
sessions, clients that go away, and nodes restarted in a loop. Every relay checks bytes
end to end; no test asserts on timing (the benchmarks measure it)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raybridge.proxy import reverse
from tests.support import (
    LOCAL,
    EchoServer,
    Relay,
    StartNode,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    socks_connect,
    socks_echo,
    socks_udp_echo,
    until,
    wait_chain,
)

#: Restart cycles: a bounded run by default, 20 under ``-m slow`` (the long run).
CYCLE_COUNTS = [3, pytest.param(20, marks=pytest.mark.slow)]


async def works(s_port: int, echo_port: int, size: int = 20_000) -> bool:
    try:
        await asyncio.wait_for(socks_echo(s_port, echo_port, size), 5)
        return True
    except (TimeoutError, OSError, AssertionError):
        return False


async def test_silent_loss_of_the_tunnel_link() -> None:
    """The A-B link dies without FIN or RST. The bridge misses the portal's heartbeats and
    dials a new tunnel; the portal misses the bridge's KeepAlives and drops the dead one;
    new connections go through the new tunnel."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    async with EchoServer() as echo, Relay(t_port) as relay:
        async with (
            node(portal_config(t_port, c_port, ua, uc)) as b,
            node(bridge_config(relay.port, ua)) as a,
            node(client_config(s_port, c_port, uc)),
        ):
            await wait_chain(s_port, echo.port)
            portal, bridge = b.portals[0], a.bridges[0]
            old_portal_tunnels = list(portal.tunnels)
            old_bridge_tunnels = list(bridge.tunnels)
            assert relay.freeze() >= 1  # the tunnel's path is now a black hole
            started = time.monotonic()
            # Both ends notice on their own and a fresh tunnel carries traffic.
            await until(lambda: all(t.worker.closed for t in old_bridge_tunnels))
            bridge_noticed = time.monotonic() - started
            await until(lambda: all(t.worker.closed for t in old_portal_tunnels))
            portal_noticed = time.monotonic() - started
            await until(lambda: any(not t.worker.closed for t in portal.tunnels))
            for _ in range(5):
                await socks_echo(s_port, echo.port, 200_000)
            assert all(t not in portal.tunnels for t in old_portal_tunnels)
            print(f"bridge noticed after {bridge_noticed:.1f}s, portal {portal_noticed:.1f}s")


async def test_bridge_starts_before_the_portal(echo: EchoServer, start_node: StartNode) -> None:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    a = await start_node(bridge_config(t_port, ua))
    # Dials fail (each after its own retries), with backoff, before the portal is up.
    await until(lambda: a.bridges[0].failures >= 3)
    async with (
        node(portal_config(t_port, c_port, ua, uc)),
        node(client_config(s_port, c_port, uc)),
    ):
        await wait_chain(s_port, echo.port)
        await socks_echo(s_port, echo.port, 1_000_000)
        assert a.bridges[0].failures == 0  # reset by the first heartbeat


async def test_portal_restart_bridge_reregisters(echo: EchoServer, start_node: StartNode) -> None:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b_conf = portal_config(t_port, c_port, ua, uc)
    a = await start_node(bridge_config(t_port, ua))
    await start_node(client_config(s_port, c_port, uc))
    for _ in range(3):
        async with node(b_conf) as b:
            await wait_chain(s_port, echo.port)
            await socks_echo(s_port, echo.port, 500_000)
            assert len(b.portals[0].tunnels) >= 1
        # B is gone: the bridge's tunnel closed with it.
        await until(lambda: not a.bridges[0].tunnels or a.bridges[0].failures)


@pytest.mark.parametrize("where", ["tunnel", "client", "both"])
async def test_slow_lossy_paths(where: str) -> None:
    """50 ms of delay per piece, data cut at random points, occasional 200-ms stalls (a
    lost segment's retransmission): transfers complete with intact bytes."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    async with (
        EchoServer() as echo,
        Relay(t_port, delay=0.05, seed=1) as tunnel_path,
        Relay(c_port, delay=0.05, seed=2) as client_path,
    ):
        a_to = tunnel_path.port if where in ("tunnel", "both") else t_port
        c_to = client_path.port if where in ("client", "both") else c_port
        async with (
            node(portal_config(t_port, c_port, ua, uc)),
            node(bridge_config(a_to, ua)),
            node(client_config(s_port, c_to, uc)),
        ):
            await wait_chain(s_port, echo.port)
            await asyncio.gather(*(socks_echo(s_port, echo.port, 300_000) for _ in range(4)))
            await socks_echo(s_port, echo.port, 3_000_000)
            datagrams = [os.urandom(n) for n in (10, 1000)]
            assert await socks_udp_echo(s_port, echo.port, datagrams) == datagrams


NETEM = shutil.which("tc") is not None and shutil.which("ip") is not None and os.geteuid() == 0


def _netem_available() -> bool:
    if not NETEM:
        return False
    probe = subprocess.run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return False
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    return True


@contextlib.contextmanager
def netem_namespace() -> Any:
    """A network namespace 'rb-a' (A's network) joined to this one by a veth pair whose
    both ends delay 50 ms, lose 2 % and reorder 25 % of packets."""
    name, host_if, ns_if = "rb-a", "rb-veth0", "rb-veth1"
    cmds = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", "10.77.0.1/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", "10.77.0.2/24", "dev", ns_if],
        ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    netem = ["netem", "delay", "50ms", "loss", "2%", "reorder", "25%", "50%"]
    cmds += [["tc", "qdisc", "add", "dev", host_if, "root", *netem]]
    cmds += [["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", ns_if, "root", *netem]]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.skipif(not _netem_available(), reason="needs root and the kernel's sch_netem")
async def test_netem_impaired_bridge_network(tmp_path: Any) -> None:
    """A (and the service behind it) in a namespace behind a 50 ms / 2 % loss / reordering
    link: the chain still moves verified bytes."""
    import json
    import sys

    with netem_namespace() as ns:
        ua, uc = new_uuid(), new_uuid()
        t_port, c_port, s_port = free_port(), free_port(), free_port()
        b = portal_config(t_port, c_port, ua, uc, listen="0.0.0.0")
        a = bridge_config(t_port, ua, portal_address="10.77.0.1")
        a_path = tmp_path / "a.json"
        a_path.write_text(json.dumps(a))
        echo_port = 17007
        echo = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket,threading\n"
             f"s=socket.create_server(('0.0.0.0',{echo_port}))\n"
             "def h(c):\n"
             " while (d:=c.recv(65536)): c.sendall(d)\n"
             " c.close()\n"
             "while True:\n"
             " c,_=s.accept(); threading.Thread(target=h,args=(c,),daemon=True).start()\n"],
        )  # fmt: skip
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "raybridge", "run", "-c", str(a_path)]
        )
        try:
            async with node(b), node(client_config(s_port, c_port, uc)):
                deadline = time.monotonic() + 60
                while not await works(s_port, echo_port):
                    assert time.monotonic() < deadline
                await socks_echo(s_port, echo_port, 2_000_000)
        finally:
            proc.terminate()
            proc.wait(10)
            echo.kill()
            echo.wait()


async def test_drain_every_256_sessions(echo: EchoServer, start_node: StartNode) -> None:
    """4096 sequential short connections: the portal drains each tunnel after 256 sessions
    and the bridge replaces it; every connection succeeds (V2Ray's long-run scenario)."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b = await start_node(portal_config(t_port, c_port, ua, uc))
    a = await start_node(bridge_config(t_port, ua))
    await start_node(client_config(s_port, c_port, uc))
    await wait_chain(s_port, echo.port)
    start = echo.connections
    for _ in range(4096):
        await socks_echo(s_port, echo.port, 100)
    assert echo.connections - start == 4096
    # The portal checks at each 2-s heartbeat and drains a tunnel that has
    # opened more than 256 sessions; each drain made the bridge dial anew.
    assert a.bridges[0].dials >= 2
    assert len(b.portals[0].tunnels) <= 3  # drained ones were closed


class Firehose(asyncio.Protocol):
    """Sends for as long as it may; counts bytes; notes when its connection ends."""

    def __init__(self, log: dict[str, Any]) -> None:
        self.log = log

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False
        self.log["open"] = True
        self.pump()

    def pump(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.log["sent"] = self.log.get("sent", 0) + 65536
            self.transport.write(bytes(65536))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self.pump)

    def connection_lost(self, exc: Exception | None) -> None:
        self.log["open"] = False


async def test_client_disconnect_stops_the_traffic_behind_it() -> None:
    """V2Ray keeps pumping for minutes after the client left (v2ray-core#1782)."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    loop = asyncio.get_running_loop()
    log: dict[str, Any] = {}
    source_port = free_port()
    server = await loop.create_server(lambda: Firehose(log), LOCAL, source_port)
    try:
        async with EchoServer() as echo:
            async with (
                node(portal_config(t_port, c_port, ua, uc)),
                node(bridge_config(t_port, ua)),
                node(client_config(s_port, c_port, uc)),
            ):
                await wait_chain(s_port, echo.port)
                reader, writer = await socks_connect(s_port, LOCAL, source_port)
                got = 0
                while got < 2_000_000:
                    got += len(await reader.read(1 << 20))
                writer.close()  # the client goes away mid-download
                await until(lambda: log.get("open") is False)
                sent = log["sent"]
                await asyncio.sleep(0.5)  # kept: nothing may be produced (an absence)
                assert log["sent"] == sent  # nothing more is produced for nobody
    finally:
        server.close()


@contextlib.asynccontextmanager
async def chain_nodes(ua: str, uc: str, t: int, c: int, s: int) -> AsyncIterator[dict[str, Any]]:
    confs = {
        "B": portal_config(t, c, ua, uc),
        "A": bridge_config(t, ua),
        "C": client_config(s, c, uc),
    }
    nodes: dict[str, Any] = {}
    try:
        for name in ("B", "A", "C"):
            cm = node(confs[name])
            nodes[name] = (cm, await cm.__aenter__())
        yield {"confs": confs, "nodes": nodes}
    finally:
        for cm, _ in nodes.values():
            await cm.__aexit__(None, None, None)


def live_state(n: Any) -> tuple[int, int]:
    """(open client connections, open mux sessions) of a node; tunnels don't count."""
    from raybridge.transport.mux import MuxWorker

    conns = sum(1 for i in n.inbounds for e in i.tracker.ends if not isinstance(e.peer, MuxWorker))
    sessions = 0
    for portal in n.portals:
        sessions += sum(t.worker.session_count - 1 for t in portal.tunnels)
    for bridge in n.bridges:
        sessions += sum(t.worker.session_count - 1 for t in bridge.tunnels + bridge.retired)
    return conns, sessions


@pytest.mark.parametrize("cycles", CYCLE_COUNTS)
async def test_restart_each_node_in_a_loop_without_leaks(cycles: int) -> None:
    """Restart A, then B, then C, in a loop, while clients keep moving data: each transfer
    completes verified or fails cleanly; the chain works again after every restart; the
    nodes that kept running return to their baseline of tasks, connections and sessions."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    async with EchoServer() as echo, chain_nodes(ua, uc, t_port, c_port, s_port) as chain:
        nodes = chain["nodes"]
        await wait_chain(s_port, echo.port)
        stop = asyncio.Event()
        results = {"ok": 0, "failed": 0}

        async def client() -> None:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(socks_echo(s_port, echo.port, 100_000), 10)
                    results["ok"] += 1
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    results["failed"] += 1  # a clean failure: closed or refused
                    await asyncio.sleep(0.02)  # kept: the client's pause before it retries

        # Everything idle again: no connections, sessions or tasks left behind.
        def idle() -> bool:
            return all(live_state(n) == (0, 0) for _, n in nodes.values()) and not echo.live

        await until(idle, 10)  # wait_chain's connections are gone: the baseline
        base_tasks = len(asyncio.all_tasks())
        clients = [asyncio.ensure_future(client()) for _ in range(3)]
        for _ in range(cycles):
            for name in ("A", "B", "C"):
                cm, _n = nodes[name]
                await cm.__aexit__(None, None, None)
                cm = node(chain["confs"][name])
                nodes[name] = (cm, await cm.__aenter__())
                await wait_chain(s_port, echo.port)
        stop.set()
        await asyncio.gather(*clients)

        try:
            await until(idle, 10)
            gc.collect()
            await until(lambda: len(asyncio.all_tasks()) <= base_tasks, 10)
        except AssertionError:
            for name, (_, n) in nodes.items():
                print(name, live_state(n), [
                    (type(e).__name__, type(e.peer).__name__, e.relaying, e.done,
                     e._read_eof, e._write_eof, getattr(e.peer, "closed", None))
                    for i in n.inbounds for e in i.tracker.ends])  # fmt: skip
            print("echo live", len(echo.live), "tasks", len(asyncio.all_tasks()), base_tasks)
            for t in asyncio.all_tasks():
                print(t)
            raise
        assert results["ok"] > cycles * 3
        print(f"{cycles} cycles: {results['ok']} transfers verified, {results['failed']} failed")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("cycles", CYCLE_COUNTS)
async def test_kill9_restart_loop(tmp_path: Any, cycles: int) -> None:
    """kill -9 and restart A, then B, then C (separate processes) while clients move data.
    After each restart the chain works again; the surviving nodes' file descriptors return
    to their baseline and their memory stays bounded."""
    import json
    import sys

    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    confs = {
        "B": portal_config(t_port, c_port, ua, uc),
        "A": bridge_config(t_port, ua),
        "C": client_config(s_port, c_port, uc),
    }
    paths = {}
    for name, conf in confs.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(conf))

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "raybridge", "run", "-c", str(paths[name])],
            stderr=subprocess.DEVNULL,
        )

    procs = {name: start(name) for name in ("B", "A", "C")}

    try:
        async with EchoServer() as echo:
            await wait_chain(s_port, echo.port, timeout=30)
            baseline = {n: (_fds(p.pid), _rss(p.pid)) for n, p in procs.items()}
            stop = asyncio.Event()
            results = {"ok": 0, "failed": 0}

            async def client() -> None:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(socks_echo(s_port, echo.port, 200_000), 10)
                        results["ok"] += 1
                    except (TimeoutError, OSError, asyncio.IncompleteReadError):
                        results["failed"] += 1
                        await asyncio.sleep(0.02)  # kept: the client's pause before it retries

            clients = [asyncio.ensure_future(client()) for _ in range(3)]
            recoveries = []
            for _ in range(cycles):
                for name in ("A", "B", "C"):
                    procs[name].kill()
                    procs[name].wait()
                    killed = time.monotonic()
                    procs[name] = start(name)
                    await wait_chain(s_port, echo.port, timeout=30)
                    recoveries.append(time.monotonic() - killed)
                    baseline[name] = (_fds(procs[name].pid), _rss(procs[name].pid))
            stop.set()
            await asyncio.gather(*clients)
            # The survivors' connections of the last cycle close (fds back near the baseline).
            await until(lambda: all(_fds(p.pid) <= baseline[n][0] + 2 for n, p in procs.items()))
            for name, proc in procs.items():
                fds, rss = _fds(proc.pid), _rss(proc.pid)
                base_fds, base_rss = baseline[name]
                assert fds <= base_fds + 2, (name, fds, base_fds)
                assert rss < base_rss + 30_000_000, (name, rss, base_rss)
            assert results["ok"] > cycles
            print(
                f"{cycles} cycles: {results['ok']} verified, {results['failed']} failed; "
                f"recovered in max {max(recoveries):.2f}s"
            )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_backoff_is_capped() -> None:
    assert reverse.BACKOFF_CAP * 1.25 < 1.0  # redials at least once a second
