"""Benchmark raybridge against V2Ray 4.34 on the same machine, in the same run.

    python bench/chain.py                  # the reverse chain C -> B -> A (the default)
    python bench/chain.py --topology cb    # a plain C+B pair (SOCKS -> VMess -> freedom)
    python bench/chain.py --size 512 --rounds 3
    python bench/chain.py --transport wss  # the VMess links (C->B, A->B) over WebSocket+TLS
    python bench/chain.py --figures echo,conc --rounds 5     # only some figures
    python bench/chain.py --figures scale --scale 1000,5000,10000

Each system runs its nodes as separate processes on loopback with the same configs; a
separate target process (bench/target.py) is the destination. Figures (``--figures``):

* ``ready``: time from process start until the chain carries traffic;
* ``echo``: open a connection through the chain and echo one byte, median and p99 of
  ``--echoes``, and the CPU milliseconds all nodes spent per connection meanwhile (and the
  latency for a server that speaks first, ``greet``);
* ``stream``: one TCP stream down and up through C's SOCKS port, CPU seconds per GB moved;
* ``conc``: 1000 concurrent connections each echoing 10 KB: seconds, failures;
* ``stall``: RSS growth while a reader stalls (backpressure);
* ``restart`` (reverse chain): seconds of failed connections while A, then B, is killed
  and restarted;
* ``scale`` (with ``--scale N,...``): N connections opened and held open through the
  chain, then per node the RSS per open connection, the open+echo latency (p50/p99) of new
  connections meanwhile, and how many of the N echo afterwards (``ulimit -n`` is raised).

Peak RSS of each node is always shown. Rounds alternate between the systems; the table
shows medians and the raybridge/V2Ray ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
LOCAL = "127.0.0.1"
V2RAY = shutil.which("v2ray") or "/usr/bin/v2ray"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited after ``timeout`` seconds, reap it
    and close its stdout pipe if it has one."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOCAL, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not listening") from None
            time.sleep(0.002)


# -- a blocking SOCKS5 client ----------------------------------------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise ConnectionError("closed")
        out += data
    return out


def socks_request(target_port: int) -> bytes:
    """A SOCKS5 greeting (no auth) and CONNECT to 127.0.0.1:``target_port``, in one go."""
    return (
        b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(LOCAL) + struct.pack("!H", target_port)
    )


def socks_open(port: int, target_port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((LOCAL, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(socks_request(target_port))
    reply = recv_exact(sock, 2 + 10)
    if reply[:2] != b"\x05\x00" or reply[3] != 0:
        raise ConnectionError(f"SOCKS refused: {reply!r}")
    return sock


def download(port: int, target: int, size: int) -> float:
    sock = socks_open(port, target)
    buf = bytearray(1 << 20)
    start = time.perf_counter()
    sock.sendall(b"S" + struct.pack("!Q", size))
    left = size
    while left:
        n = sock.recv_into(buf, min(left, len(buf)))
        if not n:
            raise ConnectionError(f"download ended with {left} bytes missing")
        left -= n
    elapsed = time.perf_counter() - start
    sock.close()
    return size / elapsed / 1e6


def upload(port: int, target: int, size: int) -> float:
    sock = socks_open(port, target)
    block = memoryview(os.urandom(1 << 20))
    start = time.perf_counter()
    sock.sendall(b"R" + struct.pack("!Q", size))
    left = size
    while left:
        k = min(left, len(block))
        sock.sendall(block[:k])
        left -= k
    if recv_exact(sock, 1) != b"k":
        raise ConnectionError("upload not acknowledged")
    elapsed = time.perf_counter() - start
    sock.close()
    return size / elapsed / 1e6


def greet_ms(port: int, target: int) -> float:
    """Open a connection to a server that speaks first; time until its first byte."""
    start = time.perf_counter()
    sock = socks_open(port, target)
    if recv_exact(sock, 1) != b"G":
        raise ConnectionError("no greeting")
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed * 1000


def open_echo_ms(port: int, target: int) -> float:
    start = time.perf_counter()
    sock = socks_open(port, target)
    sock.sendall(b"E")
    if recv_exact(sock, 1) != b"E":
        raise ConnectionError("no echo")
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed * 1000


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def run_async(main: Any) -> Any:
    """The same fast client for both systems: the nodes should be what is measured."""
    import asyncio

    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


def concurrent_echo(port: int, target: int, count: int, size: int) -> tuple[float, int]:
    """``count`` connections at once, each echoing ``size`` bytes (checked). Returns the
    seconds until all finished and how many failed."""
    import asyncio

    payload = os.urandom(size)
    request = socks_request(target)

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(request)
            reply = await reader.readexactly(12)
            if reply[:2] != b"\x05\x00":
                return False
            writer.write(b"E" + payload)
            echoed = await reader.readexactly(1 + size)
            writer.close()
            return echoed == b"E" + payload
        except (OSError, asyncio.IncompleteReadError):
            return False

    async def run() -> tuple[float, int]:
        start = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120)
        return time.perf_counter() - start, results.count(False)

    result: tuple[float, int] = run_async(run())
    return result


def scale(
    chain: Chain, echo_port: int, count: int, idle: dict[str, int], probes: int = 50
) -> dict[str, float]:
    """Open ``count`` connections through the chain to ``echo_port`` (bench/target.py
    --echo), each checked with one echoed byte, and hold them open. Then: each node's RSS
    growth over its ``idle`` RSS (taken before any scale run: a process keeps the heap an
    earlier run grew) per open connection, the open+echo latency of ``probes`` new
    connections one after another (p50, p99, ms) while they are open, and how many of the
    ``count`` still echo 100 bytes. Figures are keyed by ``count``."""
    import asyncio

    request = socks_request(echo_port)

    async def open_one(gate: asyncio.Semaphore, timeout: float = 30) -> tuple[Any, Any] | None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOCAL, chain.socks), timeout
                )
                writer.write(request + b"E")
                reply = await asyncio.wait_for(reader.readexactly(13), timeout)
                if reply[:2] != b"\x05\x00" or reply[12:] != b"E":
                    writer.close()
                    return None
                return reader, writer
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                return None

    async def echo(conn: tuple[Any, Any], payload: bytes) -> bool:
        reader, writer = conn
        try:
            writer.write(payload)
            return bool(await asyncio.wait_for(reader.readexactly(len(payload)), 30) == payload)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False

    async def run() -> dict[str, float]:
        out: dict[str, float] = {}
        gate = asyncio.Semaphore(200)  # handshakes in flight: within every listen backlog
        conns = await asyncio.gather(*(open_one(gate) for _ in range(count)))
        live = [c for c in conns if c is not None]
        await asyncio.sleep(1.0)  # let the nodes settle (buffers freed, timers armed)
        for node in chain.nodes:
            if node.proc is not None:
                grown = rss_now(node.proc.pid) - idle[node.name]
                out[f"scale{count}_{node.name}_kB_per_conn"] = grown / 1024 / max(1, len(live))
        latencies = []
        for _ in range(probes):
            start = time.perf_counter()
            conn = await open_one(asyncio.Semaphore(1), 5)  # a failure: counted, not waited on
            if conn is not None:
                latencies.append((time.perf_counter() - start) * 1000)
                conn[1].close()
        out[f"scale{count}_probes_failed"] = probes - len(latencies)
        out[f"scale{count}_open_p50_ms"] = percentile(latencies, 0.5) if latencies else 0.0
        out[f"scale{count}_open_p99_ms"] = percentile(latencies, 0.99) if latencies else 0.0
        payload = os.urandom(100)
        echoed = await asyncio.gather(*(echo(c, payload) for c in live))
        out[f"scale{count}_failed"] = count - sum(echoed)
        for _, writer in live:
            writer.close()
        await asyncio.sleep(0.5)
        return out

    result: dict[str, float] = run_async(run())
    return result


def raise_nofile(want: int = 1 << 17) -> int:
    """Raise this process's open-file limits (and so the nodes', which inherit them) as far
    as allowed: the scale runs hold 2-3 sockets per connection in each node."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return limits[0]
        except (ValueError, OSError):
            continue
    return soft


def stall_growth(chain: Chain, target: int, size: int, stall: float = 3.0) -> float:
    """Start a download of ``size`` bytes, read 10 MB, stop reading for ``stall`` seconds:
    how much did the nodes' RSS grow meanwhile (MB, the largest of the nodes)? With
    backpressure the sender stops; without it the nodes would buffer the rest."""
    sock = socks_open(chain.socks, target)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.sendall(b"S" + struct.pack("!Q", size))
    buf = bytearray(1 << 20)
    left = 10_000_000
    while left > 0:
        left -= sock.recv_into(buf, min(left, len(buf)))
    time.sleep(0.3)
    before = {n.name: rss_now(n.proc.pid) for n in chain.nodes if n.proc is not None}
    time.sleep(stall)
    after = {n.name: rss_now(n.proc.pid) for n in chain.nodes if n.proc is not None}
    sock.close()
    return max(after[k] - before[k] for k in before) / 1e6


def rss_now(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- nodes -----------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds user+sys, peak RSS bytes) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


@dataclass
class Node:
    name: str
    config: dict[str, Any]
    listen_port: int  # a port that is open once the node is up
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Chain:
    """A set of nodes for one system; ``socks`` is C's SOCKS port."""

    system: str
    nodes: list[Node]
    socks: int
    workdir: Path
    started: float = 0.0
    logs: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The system's name in file names: ``NAME`` of ``NAME=SRC``."""
        return self.system.partition("=")[0]

    def command(self, path: Path) -> list[str]:
        if self.system == "v2ray":
            return [V2RAY, "-config", str(path)]
        return [sys.executable, "-m", "raybridge", "run", "-c", str(path)]

    def env(self) -> dict[str, str] | None:
        """``NAME=SRC`` (``--systems``) runs raybridge from the source tree ``SRC``, for a
        before/after comparison in one run (e.g. ``main=/work/main/src``)."""
        _, sep, src = self.system.partition("=")
        return {**os.environ, "PYTHONPATH": src} if sep else None

    def popen(self, path: Path, log: Path, mode: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(path), stdout=log.open(mode), stderr=subprocess.STDOUT, env=self.env()
        )

    def start(self) -> None:
        self.started = time.perf_counter()
        for node in self.nodes:
            path = self.workdir / f"{self.name}-{node.name}.json"
            path.write_text(json.dumps(node.config, indent=1))
            log = self.workdir / f"{self.name}-{node.name}.log"
            self.logs.append(log)
            node.proc = self.popen(path, log, "wb")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def restart(self, name: str) -> None:
        """Kill -9 one node and start it again at once, with the same config."""
        node = self.node(name)
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()
        path = self.workdir / f"{self.name}-{node.name}.json"
        log = self.workdir / f"{self.name}-{node.name}.log"
        node.proc = self.popen(path, log, "ab")

    def stats(self) -> dict[str, tuple[float, int]]:
        return {n.name: proc_stat(n.proc.pid) for n in self.nodes if n.proc is not None}


def pair_chain(system: str, workdir: Path, alter_id: int = 0) -> Chain:
    """Node C (SOCKS in, VMess out) and node B (VMess in, freedom out)."""
    uid = str(uuid.uuid4())
    b_port, c_port = free_port(), free_port()
    log = {"loglevel": "warning", "access": "none"}
    b = {
        "log": log,
        "inbounds": [
            {
                "tag": "in",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": b_port,
                "settings": {"clients": [{"id": uid, "alterId": alter_id}]},
            }
        ],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }
    c = {
        "log": log,
        "inbounds": [
            {
                "tag": "socks",
                "protocol": "socks",
                "listen": LOCAL,
                "port": c_port,
                "settings": {"udp": True},
            }
        ],
        "outbounds": [
            {
                "tag": "out",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": LOCAL,
                            "port": b_port,
                            "users": [{"id": uid, "alterId": alter_id, "security": "aes-128-gcm"}],
                        }
                    ]
                },
            }
        ],
    }
    return Chain(system, [Node("B", b, b_port), Node("C", c, c_port)], c_port, workdir)


def reverse_chain(system: str, workdir: Path, alter_id: int = 0) -> Chain:
    """The seed's reverse chain: C -> B (portal) -> A (bridge) -> destination."""
    from raybridge.templates import bridge_config, client_config, portal_config

    ua, uc = str(uuid.uuid4()), str(uuid.uuid4())
    t_port, b_port, c_port = free_port(), free_port(), free_port()
    log = {"loglevel": "warning", "access": "none"}
    a = bridge_config(t_port, ua, alter_id=alter_id)
    b = portal_config(t_port, b_port, ua, uc, alter_id=alter_id)
    c = client_config(c_port, b_port, uc, alter_id=alter_id, security="aes-128-gcm")
    for config in (a, b, c):
        config["log"] = log
    return Chain(
        system,
        [Node("B", b, t_port), Node("A", a, t_port), Node("C", c, c_port)],
        c_port,
        workdir,
    )


TOPOLOGIES: dict[str, Callable[[str, Path], Chain]] = {"cb": pair_chain, "abc": reverse_chain}

# -- stream transports on the VMess links ----------------------------------------------------

#: ``--transport`` name -> (streamSettings network, TLS?)
TRANSPORTS = {
    "tcp": ("tcp", False),
    "tls": ("tcp", True),
    "ws": ("ws", False),
    "wss": ("ws", True),
    "h2": ("http", True),
}
BENCH_PATH = "/bench"
BENCH_HOST = "localhost"  # the certificate's name; never resolved (the links dial 127.0.0.1)


def write_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A private CA and a leaf for ``localhost`` and 127.0.0.1: (ca, cert, key) files."""
    from raybridge.certs import make_ca, make_leaf

    ca = make_ca("raybridge bench CA")
    leaf = make_leaf(ca, [BENCH_HOST, LOCAL])
    files = (workdir / "ca.pem", workdir / "leaf.pem", workdir / "leaf-key.pem")
    for path, data in zip(files, (ca.cert, leaf.cert, leaf.key), strict=True):
        path.write_bytes(data)
    return files


def server_stream(transport: str, certs: tuple[Path, Path, Path]) -> dict[str, Any]:
    network, tls = TRANSPORTS[transport]
    stream: dict[str, Any] = {"network": network}
    if tls:
        settings: dict[str, Any] = {
            "certificates": [{"certificateFile": str(certs[1]), "keyFile": str(certs[2])}]
        }
        if network == "ws":
            settings["alpn"] = ["http/1.1"]  # a 4.34 server would offer h2 to ws clients
        stream["security"] = "tls"
        stream["tlsSettings"] = settings
    if network == "ws":
        stream["wsSettings"] = {"path": BENCH_PATH}
    elif network == "http":
        stream["httpSettings"] = {"host": [BENCH_HOST], "path": BENCH_PATH}
    return stream


def client_stream(transport: str, certs: tuple[Path, Path, Path]) -> dict[str, Any]:
    network, tls = TRANSPORTS[transport]
    stream: dict[str, Any] = {"network": network}
    if tls:
        stream["security"] = "tls"
        stream["tlsSettings"] = {
            "serverName": BENCH_HOST,
            "disableSystemRoot": True,
            "certificates": [{"usage": "verify", "certificateFile": str(certs[0])}],
        }
    if network == "ws":
        stream["wsSettings"] = {"path": BENCH_PATH, "headers": {"Host": BENCH_HOST}}
    elif network == "http":
        stream["httpSettings"] = {"host": [BENCH_HOST], "path": BENCH_PATH}
    return stream


def apply_transport(chain: Chain, transport: str) -> Chain:
    """Put every VMess link of the chain (the inbounds of B, the VMess outbounds of A and
    C) on ``transport``."""
    if transport == "tcp":
        return chain
    certs = write_certificates(chain.workdir)
    for node in chain.nodes:
        for inbound in node.config.get("inbounds", []):
            if inbound["protocol"] == "vmess":
                inbound["streamSettings"] = server_stream(transport, certs)
        for outbound in node.config.get("outbounds", []):
            if outbound["protocol"] == "vmess":
                outbound["streamSettings"] = client_stream(transport, certs)
    return chain


def failure_window(chain: Chain, target: int, name: str, settle: int = 10) -> tuple[float, float]:
    """Restart node ``name`` while a client keeps opening connections (open + echo, one at a
    time). Returns (seconds from the first to the end of the last failed attempt, the
    longest single successful attempt in seconds) once ``settle`` attempts in a row have
    succeeded after the restart."""
    for _ in range(5):
        open_echo_ms(chain.socks, target)
    chain.restart(name)
    restarted = time.perf_counter()
    first_fail = last_fail = None
    slowest = 0.0
    streak = 0
    while streak < settle:
        start = time.perf_counter()
        try:
            open_echo_ms(chain.socks, target)
            ok = True
        except OSError:
            ok = False
        end = time.perf_counter()
        if ok:
            streak += 1
            slowest = max(slowest, end - start)
        else:
            streak = 0
            first_fail = first_fail if first_fail is not None else start
            last_fail = end
            time.sleep(0.02)
        if end - restarted > 90:
            raise TimeoutError(f"{chain.system}: the chain did not recover after restarting {name}")
    failed = 0.0 if first_fail is None or last_fail is None else last_fail - first_fail
    return failed, slowest


# -- the run ---------------------------------------------------------------------------------


def ready_time(chain: Chain, target: int, timeout: float = 30.0) -> float:
    """Seconds from starting the processes until an echo through the chain works."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            open_echo_ms(chain.socks, target)
            return time.perf_counter() - chain.started
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


#: What ``--figures`` can name, in the order they are measured.
FIGURES = ("ready", "echo", "stream", "conc", "stall", "restart", "scale")


@dataclass
class Ports:
    """The destinations of a run: bench/target.py's ports (``echo``: its event-loop echo
    server for the scale runs, 0 when not started)."""

    target: int
    greeter: int
    echo: int = 0


def measure(
    chain: Chain,
    ports: Ports,
    size: int,
    echoes: int,
    figures: frozenset[str] = frozenset(FIGURES),
    scales: Sequence[int] = (),
) -> dict[str, float]:
    out: dict[str, float] = {}
    target = ports.target
    chain.start()
    try:
        out["ready_s"] = ready_time(chain, target)
        for _ in range(5):
            open_echo_ms(chain.socks, target)  # warm up
        if "echo" in figures:
            cpu0 = sum(c for c, _ in chain.stats().values())
            times = [open_echo_ms(chain.socks, target) for _ in range(echoes)]
            # CPU of all the nodes per connection: less disturbed by a busy machine than
            # the latency (the clock ticks are 10 ms: 200 echoes make a few hundred).
            out["echo_cpu_ms"] = (sum(c for c, _ in chain.stats().values()) - cpu0) * 1e3 / echoes
            out["echo_ms"] = statistics.median(times)
            out["echo_p99_ms"] = percentile(times, 0.99)
            if ports.greeter:
                out["greet_ms"] = statistics.median(
                    greet_ms(chain.socks, ports.greeter) for _ in range(echoes)
                )
        if "stream" in figures:
            cpu0 = sum(c for c, _ in chain.stats().values())
            out["down_MBps"] = download(chain.socks, target, size)
            out["up_MBps"] = upload(chain.socks, target, size)
            cpu1 = sum(c for c, _ in chain.stats().values())
            out["cpu_s_per_GB"] = (cpu1 - cpu0) / (2 * size / 1e9)
        if "conc" in figures:
            out["conc1000_s"], out["conc1000_failed"] = concurrent_echo(
                chain.socks, target, 1000, 10_000
            )
        if "stall" in figures:
            out["stall_growth_MB"] = stall_growth(chain, target, 1_000_000_000)
        if "restart" in figures and any(n.name == "A" for n in chain.nodes):
            for name in ("A", "B"):
                failed, slowest = failure_window(chain, target, name)
                out[f"restart_{name}_fail_s"] = failed
                out[f"restart_{name}_slowest_s"] = slowest
        if "scale" in figures:
            idle = {n.name: rss_now(n.proc.pid) for n in chain.nodes if n.proc is not None}
            for count in scales:
                out.update(scale(chain, ports.echo, count, idle))
        for name, (_, rss) in chain.stats().items():
            out[f"rss_{name}_MB"] = rss / 1e6
    finally:
        chain.stop()
    return out


def print_table(title: str, results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians per system and each system's over the last one's (V2Ray, by default)."""
    systems = list(results)
    keys = list(results[systems[0]][0])
    med = {s: {k: statistics.median(r[k] for r in results[s]) for k in keys} for s in systems}
    names = [s.partition("=")[0] for s in systems]
    base = systems[-1]
    ratios = systems[:-1]
    print()
    print(title)
    header = f"| figure | {' | '.join(names)} |"
    header += "".join(f" {s.partition('=')[0]}/{names[-1]} |" for s in ratios)
    print(header)
    print("|---" * (len(systems) + 1 + len(ratios)) + "|")
    for k in keys:
        row = f"| {k} | " + " | ".join(f"{med[s][k]:.3g}" for s in systems) + " |"
        if med[base][k]:
            row += "".join(f" {med[s][k] / med[base][k]:.2f} |" for s in ratios)
        print(row)
    return med


def start_echo_target() -> tuple[subprocess.Popen[bytes], int]:
    """bench/target.py --echo in its own process: (process, port)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "target.py"), "--echo", str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, port


def start_target() -> tuple[subprocess.Popen[bytes], int, int]:
    """bench/target.py in its own process: (process, target port, greeter port)."""
    target_port, greeter_port = free_port(), free_port()
    target = subprocess.Popen(
        [sys.executable, str(HERE / "target.py"), str(target_port), str(greeter_port)],
        stdout=subprocess.PIPE,
    )
    assert target.stdout is not None
    target.stdout.readline()
    return target, target_port, greeter_port


def compile_sources(systems: list[str]) -> None:
    """Byte-compile raybridge first, as an installed wheel is, this tree's and each
    ``NAME=SRC`` tree's: start-up then measures the program, not the compiler (matters
    where PYTHONDONTWRITEBYTECODE is set)."""
    trees = {HERE.parent / "src"} | {Path(s.partition("=")[2]) for s in systems if "=" in s}
    for tree in sorted(trees):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(tree / "raybridge")],
            check=False,
            stdout=subprocess.DEVNULL,
        )


def alternate(
    systems: list[str],
    rounds: int,
    run: Callable[[str, Path, Ports], dict[str, float]],
    echo_target: bool = False,
) -> dict[str, list[dict[str, float]]]:
    """``run(system, workdir, ports)`` for each round and system in turn, with one set of
    target processes for all; each round's figures printed as they come."""
    target, target_port, greeter_port = start_target()
    echo = start_echo_target() if echo_target else None
    ports = Ports(target_port, greeter_port, echo[1] if echo else 0)
    results: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for system in systems:
                    res = run(system, Path(tmp), ports)
                    results[system].append(res)
                    print(
                        f"round {r + 1} {system}: "
                        + ", ".join(f"{k}={v:.3g}" for k, v in res.items()),
                        flush=True,
                    )
    finally:
        for proc in (target, echo[0] if echo else None):
            if proc is not None:
                proc.terminate()
                proc.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="abc")
    parser.add_argument("--size", type=int, default=512, help="MB per throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--echoes", type=int, default=200, help="open+echo samples")
    parser.add_argument(
        "--systems",
        default="raybridge,v2ray",
        help="comma-separated; NAME=SRC runs raybridge from source tree SRC (e.g. "
        "main=/work/main/src); ratios are to the last one",
    )
    parser.add_argument(
        "--transport",
        choices=sorted(TRANSPORTS),
        default="tcp",
        help="stream transport of the VMess links (TLS ones use a private CA made here)",
    )
    parser.add_argument(
        "--figures",
        default=",".join(f for f in FIGURES if f != "scale"),
        help=f"which figures, comma-separated, of {','.join(FIGURES)} (default: all but scale)",
    )
    parser.add_argument(
        "--scale",
        default="1000,5000,10000",
        help="connection counts of the scale figure (with --figures ...,scale)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    systems = args.systems.split(",")
    size = args.size * 1_000_000
    figures = frozenset(args.figures.split(","))
    if not figures <= set(FIGURES):
        parser.error(f"--figures: not one of {','.join(FIGURES)}: {sorted(figures - set(FIGURES))}")
    scales = [int(n) for n in args.scale.split(",") if n] if "scale" in figures else []
    if scales:
        raise_nofile(8 * max(scales))

    compile_sources(systems)
    results = alternate(
        systems,
        args.rounds,
        lambda system, tmp, ports: measure(
            apply_transport(TOPOLOGIES[args.topology](system, tmp), args.transport),
            ports,
            size,
            args.echoes,
            figures,
            scales,
        ),
        echo_target=bool(scales),
    )

    med = print_table(
        f"{args.topology} over {args.transport}: {platform.node()} {platform.machine()} "
        f"{os.cpu_count()} cpus, "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
        f"{args.rounds} rounds, {args.size} MB per stream, {args.echoes} echoes",
        results,
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
