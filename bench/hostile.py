"""Hostile clients against raybridge and V2Ray 4.34, same machine, same run.

    python bench/hostile.py                    # both systems, 3 rounds
    python bench/hostile.py --rounds 1 --systems raybridge

Two figures (issue 11):

* **Slow readers.** Through the reverse chain A-B-C, N clients (0, 1, 10) each start a
  1 GB download and then read it at 1 byte/s. Meanwhile good clients open a connection and
  echo a byte (200 times: p50 and p99) and download 1 MB (5 times: median). With V2Ray, one
  slow reader stalls every session on the tunnel (head-of-line blocking: the good clients'
  attempts time out); raybridge pauses the one session (flow control between raybridge
  nodes) or ends it after its grace period (with a V2Ray peer).
* **Waiting-client flood.** B (the portal) with no bridge connected: 600 clients each send
  1 MiB and wait for a tunnel. B's peak RSS.

A good client's attempt that fails or takes longer than 10 s counts as 10 s (and as a
failure); after 5 failures in a row the rest of that series counts as failed without
being tried. Rounds alternate between the systems; the table shows medians.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chain import (  # noqa: E402 - a script next to this one
    Chain,
    alternate,
    free_port,
    open_echo_ms,
    print_table,
    proc_stat,
    ready_time,
    reverse_chain,
    socks_open,
    wait_port,
)

TIMEOUT = 10.0


def good_echo_ms(port: int, target: int) -> tuple[float, bool]:
    try:
        return open_echo_ms(port, target), True
    except OSError:
        return TIMEOUT * 1000, False


def good_download_s(port: int, target: int, size: int = 1_000_000) -> tuple[float, bool]:
    start = time.perf_counter()
    try:
        sock = socks_open(port, target, timeout=TIMEOUT)
        sock.sendall(b"S" + struct.pack("!Q", size))
        left = size
        buf = bytearray(1 << 20)
        while left:
            n = sock.recv_into(buf, min(left, len(buf)))
            if not n:
                raise ConnectionError("short download")
            left -= n
        sock.close()
        return time.perf_counter() - start, True
    except OSError:
        return TIMEOUT, False


STALLED = 5  # failures in a row after which the rest of a series counts as failed


def attempts(
    attempt: Callable[[], tuple[float, bool]], count: int, failed_value: float
) -> list[tuple[float, bool]]:
    """``count`` attempts, in turn. Once ``STALLED`` fail in a row the node is stalled:
    the remaining attempts are counted as failed (at the time-out) without being made,
    so that a stalled system costs a minute, not ``count`` time-outs."""
    out: list[tuple[float, bool]] = []
    while len(out) < count:
        out.append(attempt())
        if len(out) >= STALLED and not any(ok for _, ok in out[-STALLED:]):
            out += [(failed_value, False)] * (count - len(out))
    return out


class SlowReader(threading.Thread):
    """Starts a 1 GB download and reads one byte a second until stopped."""

    def __init__(self, port: int, target: int) -> None:
        super().__init__(daemon=True)
        self.port, self.target = port, target
        self.stop = threading.Event()
        self.started_ok = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        try:
            sock = socks_open(self.port, self.target)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"S" + struct.pack("!Q", 1_000_000_000))
            self.sock = sock
            sock.recv(1)
            self.started_ok.set()
            while not self.stop.wait(1.0):
                sock.recv(1)
        except OSError:
            self.started_ok.set()  # ended by the node (raybridge with a V2Ray peer)
        finally:
            if self.sock is not None:
                self.sock.close()


def slow_reader_figures(chain: Chain, target: int, slow: int) -> dict[str, float]:
    readers = [SlowReader(chain.socks, target) for _ in range(slow)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.started_ok.wait(TIMEOUT)
    time.sleep(2.0)  # let the slow downloads fill every buffer they can
    echoes = attempts(lambda: good_echo_ms(chain.socks, target), 200, TIMEOUT * 1000)
    downloads = attempts(lambda: good_download_s(chain.socks, target), 5, TIMEOUT)
    for reader in readers:
        reader.stop.set()
    ms = sorted(m for m, _ in echoes)
    return {
        f"echo_p50_ms_{slow}slow": statistics.median(ms),
        f"echo_p99_ms_{slow}slow": ms[int(len(ms) * 0.99) - 1],
        f"dl1MB_s_{slow}slow": statistics.median(s for s, _ in downloads),
        f"failed_{slow}slow": sum(not ok for _, ok in echoes + downloads),
    }


def flood_rss_mb(chain: Chain, clients: int = 600, size: int = 1 << 20) -> float:
    """Start B alone (no bridge); ``clients`` connections through C each send ``size``
    bytes; B's peak RSS while they wait."""
    sockets: list[socket.socket] = []
    payload = bytes(size)
    target = free_port()  # never reached: there is no bridge
    for _ in range(clients):
        try:
            sock = socks_open(chain.socks, target, timeout=TIMEOUT)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(payload)
            sockets.append(sock)
        except OSError:
            pass
    time.sleep(1.0)
    rss = proc_stat(chain.node("B").proc.pid)[1] / 1e6  # type: ignore[union-attr]
    for sock in sockets:
        sock.close()
    return rss


def measure(system: str, workdir: Path, target: int) -> dict[str, float]:
    out: dict[str, float] = {}
    chain = reverse_chain(system, workdir)
    chain.start()
    try:
        ready_time(chain, target)
        for slow in (0, 1, 10):
            out.update(slow_reader_figures(chain, target, slow))
            time.sleep(1.0)
    finally:
        chain.stop()
    chain = reverse_chain(system, workdir)
    chain.nodes = [n for n in chain.nodes if n.name != "A"]  # the portal has no bridge
    chain.start()
    try:
        wait_port(chain.socks)
        wait_port(chain.node("B").listen_port)
        out["flood_rss_B_MB"] = flood_rss_mb(chain)
    finally:
        chain.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default="raybridge,v2ray")
    args = parser.parse_args()
    systems = args.systems.split(",")
    results = alternate(systems, args.rounds, lambda s, w, p: measure(s, w, p.target))
    print_table(f"hostile: {time.strftime('%Y-%m-%d')}, {args.rounds} rounds, medians", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
