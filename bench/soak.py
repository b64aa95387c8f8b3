"""A bounded soak of the reverse chain: mixed traffic for N minutes with periodic restarts.

    python bench/soak.py --minutes 10

Nodes A (bridge), B (portal) and C (client) run as separate processes; a target process
serves echo, download and upload. Eight client workers loop over: echo a random 1 KB-1 MB
(checked by SHA-256), download or upload a random 1-50 MB (every byte compared with the
target's known pattern, on the client for downloads, on the target for uploads), a burst of
UDP datagrams (checked). Every ``--restart-every`` seconds A is killed (-9) and restarted; in
the middle of the run B is too; C runs the whole time. At the end it prints connections
attempted and failed, bytes verified, and each node's RSS at its start and at the end.

``--hostile N`` adds N of each hostile client beside the good ones: slow readers (a big
download read at 1 byte/s), half-open handshakes (connect to B's client port, send a few
bytes of a VMess header, then nothing), and UDP floods (bursts of datagrams to many
destinations through C's SOCKS UDP, never read). The good clients' figures and each
node's peak RSS show whether they held.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import chain as bench  # noqa: E402
from target import PERIOD, expected  # noqa: E402

LOCAL = "127.0.0.1"


async def socks(port: int, target: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOCAL, port, limit=1 << 20)
    writer.write(
        b"\x05\x01\x00\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + struct.pack("!H", target)
    )
    reply = await reader.readexactly(12)
    if reply[:2] != b"\x05\x00":
        raise ConnectionError("SOCKS refused")
    return reader, writer


async def echo_job(port: int, target: int, rng: random.Random) -> int:
    size = rng.randint(1000, 1_000_000)
    payload = os.urandom(size)
    reader, writer = await socks(port, target)
    try:
        writer.write(b"E" + payload)
        got = await reader.readexactly(1 + size)
        if hashlib.sha256(got[1:]).digest() != hashlib.sha256(payload).digest():
            raise AssertionError("CORRUPTED echo")
        return size * 2
    finally:
        writer.close()


async def download_job(port: int, target: int, rng: random.Random) -> int:
    size = rng.randint(1_000_000, 50_000_000)
    reader, writer = await socks(port, target)
    try:
        writer.write(b"S" + struct.pack("!Q", size))
        offset = 0
        while offset < size:
            data = await reader.read(min(size - offset, PERIOD))
            if not data:
                raise ConnectionError("download cut short")
            if data != expected(offset, len(data)):
                raise AssertionError("CORRUPTED download")
            offset += len(data)
        return size
    finally:
        writer.close()


async def upload_job(port: int, target: int, rng: random.Random) -> int:
    size = rng.randint(1_000_000, 50_000_000)
    reader, writer = await socks(port, target)
    try:
        writer.write(b"V" + struct.pack("!Q", size))
        offset = 0
        while offset < size:
            n = min(size - offset, 1 << 20)
            writer.write(expected(offset, n))
            await writer.drain()
            offset += n
        answer = await reader.readexactly(1)
        if answer == b"x":
            raise AssertionError("CORRUPTED upload")
        if answer != b"k":
            raise ConnectionError("upload not acknowledged")
        return size
    finally:
        writer.close()


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


async def udp_job(port: int, target: int, rng: random.Random) -> int:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Udp, local_addr=(LOCAL, 0))
    try:
        writer.write(b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        reply = await reader.readexactly(12)
        relay = (LOCAL, struct.unpack("!H", reply[10:12])[0])
        header = b"\x00\x00\x00\x01" + bytes([127, 0, 0, 1]) + struct.pack("!H", target)
        total = 0
        for _ in range(10):
            datagram = os.urandom(rng.randint(1, 1400))
            transport.sendto(header + datagram, relay)
            reply = await asyncio.wait_for(proto.queue.get(), 5)
            if reply[10:] != datagram:
                raise AssertionError("CORRUPTED datagram")
            total += len(datagram) * 2
        return total
    finally:
        transport.close()
        writer.close()


async def slow_reader(port: int, target: int, stop: asyncio.Event) -> None:
    """A big download read at one byte a second, again and again."""
    while not stop.is_set():
        try:
            reader, writer = await socks(port, target)
            writer.transport.set_write_buffer_limits(0)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(b"S" + struct.pack("!Q", 1_000_000_000))
            while not stop.is_set():
                if not await reader.read(1):
                    break
                await asyncio.sleep(1.0)
            writer.close()
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(1.0)


async def half_open(port: int, stop: asyncio.Event) -> None:
    """Connections that start a VMess header and never finish it."""
    held: list[asyncio.StreamWriter] = []
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(os.urandom(20))
            held.append(writer)
            if len(held) > 50:
                held.pop(0).close()
        except OSError:
            pass
        await asyncio.sleep(0.2)
    for writer in held:
        writer.close()


async def udp_flood(port: int, stop: asyncio.Event) -> None:
    """Bursts of datagrams to many (closed) destinations through C, never read."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
            reply = await reader.readexactly(12)
            relay = (LOCAL, struct.unpack("!H", reply[10:12])[0])
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOCAL, 0)
            )
            for i in range(500):
                dest = bytes([127, 0, 0, 1]) + struct.pack("!H", 20000 + i)
                transport.sendto(b"\x00\x00\x00\x01" + dest + os.urandom(200), relay)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            transport.close()
            writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(1.0)


async def worker(
    port: int, target: int, stats: dict[str, int], stop: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed)
    jobs = [echo_job, echo_job, download_job, upload_job, udp_job]
    while not stop.is_set():
        job = rng.choice(jobs)
        stats["attempted"] += 1
        try:
            stats["verified_bytes"] += await asyncio.wait_for(job(port, target, rng), 60)
            stats["completed"] += 1
        except AssertionError:
            stats["corrupted"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            stats["failed"] += 1
            key = f"failed {job.__name__}: {type(exc).__name__}"
            stats[key] = stats.get(key, 0) + 1
            await asyncio.sleep(0.05)


async def main_async(args: argparse.Namespace) -> int:
    target_port = bench.free_port()
    target = subprocess.Popen(
        [sys.executable, str(HERE / "target.py"), str(target_port)], stdout=subprocess.PIPE
    )
    assert target.stdout is not None
    target.stdout.readline()
    stats = {"attempted": 0, "completed": 0, "failed": 0, "corrupted": 0, "verified_bytes": 0}
    with tempfile.TemporaryDirectory() as tmp:
        chain = bench.reverse_chain(args.system, Path(tmp))
        chain.start()
        await asyncio.to_thread(bench.ready_time, chain, target_port)
        rss_start = {n.name: bench.rss_now(n.proc.pid) for n in chain.nodes if n.proc}
        stop = asyncio.Event()
        workers = [
            asyncio.ensure_future(worker(chain.socks, target_port, stats, stop, i))
            for i in range(args.workers)
        ]
        b_clients = chain.node("B").config["inbounds"][-1]["port"]
        for _ in range(args.hostile):
            workers.append(asyncio.ensure_future(slow_reader(chain.socks, target_port, stop)))
            workers.append(asyncio.ensure_future(half_open(b_clients, stop)))
            workers.append(asyncio.ensure_future(udp_flood(chain.socks, stop)))
        started = time.monotonic()
        duration = args.minutes * 60
        restarts = 0
        b_restarted = False
        next_restart = started + args.restart_every
        last = dict(stats)
        try:
            while time.monotonic() - started < duration:
                await asyncio.sleep(1)
                now = time.monotonic()
                if args.verbose and int(now - started) % 10 == 0:
                    attempted = stats["attempted"] - last["attempted"]
                    failed = stats["failed"] - last["failed"]
                    print(f"  t={now - started:4.0f}s attempted +{attempted} failed +{failed}")
                    last = dict(stats)
                if now >= next_restart and now < started + duration - 30:
                    chain.restart("A")
                    restarts += 1
                    next_restart = now + args.restart_every
                if not b_restarted and now - started > duration / 2:
                    chain.restart("B")
                    restarts += 1
                    b_restarted = True
                    rss_start["B"] = 0  # measured again once it has settled
                if rss_start.get("B") == 0 and b_restarted and now - started > duration / 2 + 10:
                    rss_start["B"] = bench.rss_now(chain.node("B").proc.pid)  # type: ignore[union-attr]
        finally:
            stop.set()
            await asyncio.gather(*workers)
            rss_end = {n.name: bench.rss_now(n.proc.pid) for n in chain.nodes if n.proc}
            peak = {n.name: bench.proc_stat(n.proc.pid)[1] for n in chain.nodes if n.proc}
            chain.stop()
            target.terminate()
    print(
        f"soak ({args.system}): {args.minutes} min, {args.workers} workers, {restarts} "
        f"restarts (A every {args.restart_every}s, B once), {args.hostile} of each hostile client"
    )
    print(
        f"  connections attempted {stats['attempted']}, completed {stats['completed']}, "
        f"failed {stats['failed']}, corrupted {stats['corrupted']}"
    )
    print(f"  bytes verified {stats['verified_bytes'] / 1e9:.2f} GB")
    for key in sorted(k for k in stats if k.startswith("failed ")):
        print(f"  {key}: {stats[key]}")
    for name in ("A", "B", "C"):
        print(
            f"  RSS {name}: start {rss_start[name] / 1e6:.1f} MB, end {rss_end[name] / 1e6:.1f} MB"
            + (" (since its last restart)" if name != "C" else " (never restarted)")
            + f", peak {peak[name] / 1e6:.1f} MB"
        )
    return 1 if stats["corrupted"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--restart-every", type=float, default=120)
    parser.add_argument("--verbose", action="store_true", help="print progress every 10 s")
    parser.add_argument(
        "--hostile", type=int, default=0, help="slow readers, half-open handshakes, UDP floods"
    )
    parser.add_argument(
        "--system",
        choices=("raybridge", "v2ray"),
        default="raybridge",
        help="which implementation runs the three nodes (v2ray: /usr/bin/v2ray, to compare)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
