"""Where a node's time goes: run the chain's raybridge nodes under py-spy (a sampling
profiler, dev-only: ``pip install py-spy``) while a workload runs, and print each node's
hottest functions, by own time and by time including callees.

    python bench/profile.py                      # reverse chain, open+echo x 2000
    python bench/profile.py --topology cb --workload conc1000
    python bench/profile.py --workload download --size 256
    python bench/profile.py --topology cb --workload upload --size 512

py-spy attaches once the chain carries traffic, so start-up is not in the figures. The
raw collapsed stacks are kept (``--out DIR``) for flame graphs (e.g. speedscope or
inferno). Samples include idle time in the event loop's poll (``select``/``epoll``/``run``
in uvloop); the tables leave it out, so the percentages are of the node's busy time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain as bench  # noqa: E402  (bench/chain.py)

IDLE = ("select (selectors.py", "poll (selectors.py", "epoll_wait", "epoll_pwait")


def attach(pid: int, raw: Path, native: bool) -> subprocess.Popen[bytes]:
    """py-spy recording a running node until it gets SIGINT."""
    command = [shutil.which("py-spy") or "py-spy", "record", "--format", "raw"]
    command += ["--rate", "1000", "-o", str(raw), "--pid", str(pid)]
    if native:
        command.append("--native")  # C frames too: uvloop, OpenSSL, the kernel calls
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def busy(frames: list[str]) -> bool:
    leaf = frames[-1]
    return not any(marker in leaf for marker in IDLE)


def report(name: str, raw: Path, top: int) -> None:
    stacks = [(f, n) for f, n in load(raw) if busy(f)]
    total = sum(n for _, n in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    print(f"\n== {name}: {total} busy samples (1 ms each)")
    print("   own %  function")
    for frame, n in own.most_common(top):
        print(f"   {100 * n / total:5.1f}  {frame}")
    print("   incl %  function (raybridge frames)")
    shown = 0
    for frame, n in incl.most_common():
        if "raybridge" in frame:
            print(f"   {100 * n / total:5.1f}  {frame}")
            shown += 1
            if shown == top:
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=sorted(bench.TOPOLOGIES), default="abc")
    parser.add_argument("--transport", choices=sorted(bench.TRANSPORTS), default="tcp")
    parser.add_argument(
        "--workload", choices=["echo", "conc1000", "download", "upload"], default="echo"
    )
    parser.add_argument("--count", type=int, default=2000, help="open+echo connections")
    parser.add_argument("--size", type=int, default=256, help="MB for download/upload")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", help="keep the raw stacks here")
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    args = parser.parse_args()
    target, target_port, _ = bench.start_target()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out or tmp)
            out.mkdir(parents=True, exist_ok=True)
            chain = bench.apply_transport(
                bench.TOPOLOGIES[args.topology]("raybridge", Path(tmp)), args.transport
            )
            chain.start()
            spies: list[subprocess.Popen[bytes]] = []
            try:
                bench.ready_time(chain, target_port, timeout=60)
                for node in chain.nodes:
                    assert node.proc is not None
                    spies.append(attach(node.proc.pid, out / f"{node.name}.txt", args.native))
                time.sleep(1.0)  # py-spy attached
                started = time.perf_counter()
                if args.workload == "echo":
                    for _ in range(args.count):
                        bench.open_echo_ms(chain.socks, target_port)
                elif args.workload == "conc1000":
                    for _ in range(3):
                        bench.concurrent_echo(chain.socks, target_port, 1000, 10_000)
                elif args.workload == "upload":
                    bench.upload(chain.socks, target_port, args.size * 1_000_000)
                else:
                    bench.download(chain.socks, target_port, args.size * 1_000_000)
                print(f"{args.workload}: {time.perf_counter() - started:.2f} s")
            finally:
                for spy in spies:
                    spy.send_signal(signal.SIGINT)
                for spy in spies:
                    spy.wait(30)
                chain.stop()
            for node in chain.nodes:
                raw = out / f"{node.name}.txt"
                if raw.exists():
                    report(node.name, raw, args.top)
    finally:
        target.terminate()
        target.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
