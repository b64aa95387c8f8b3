"""Python function calls per new connection at each raybridge node: a deterministic
stand-in for per-connection CPU, unaffected by a busy machine.

    python bench/calls.py                       # C+B pair, 500 open+echo connections
    python bench/calls.py --topology abc --count 1000 --top 40

Each node runs under a small wrapper (``--node``) that turns ``cProfile`` on at SIGUSR1
and off at SIGUSR2, then writes its call counts. The workload warms the chain up first
(so first-use imports and caches are out of the figures), counts ``--count`` open+echo
connections one after the other, and waits for their teardown before it stops counting.
Figures are calls (Python functions and the builtins they call) divided by the count;
timers that fire during the window (idle checks) add a little noise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain as bench  # noqa: E402  (bench/chain.py)


def node_main(config: str, out: str) -> int:
    """Run one raybridge node, counting calls between SIGUSR1 and SIGUSR2."""
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != HERE]  # bench/profile.py
    import cProfile
    import pstats

    from raybridge.cli import main

    profiler = cProfile.Profile()

    def start(*_: Any) -> None:
        profiler.enable()

    def stop(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out + ".prof")
        stats = pstats.Stats(profiler)
        rows = {
            f"{Path(file).name}:{line}:{name}": [prim, calls, own]
            for (file, line, name), (prim, calls, own, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        }
        Path(out + ".tmp").write_text(json.dumps(rows))
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return main(["run", "-c", config])


class CountingChain(bench.Chain):
    def command(self, path: Path) -> list[str]:
        out = str(path.with_suffix(".calls.json"))
        return [sys.executable, str(Path(__file__).resolve()), "--node", str(path), out]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=sorted(bench.TOPOLOGIES), default="cb")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--top", type=int, default=0, help="also list the most called functions")
    parser.add_argument("--json", help="write {node: calls per connection} here")
    parser.add_argument("--save", help="keep each node's call counts here (NODE.json)")
    parser.add_argument("--node", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        return node_main(*args.node)
    target, target_port, _ = bench.start_target()
    try:
        results = count(args, target_port)
    finally:
        target.terminate()
        target.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return 0


def count(args: argparse.Namespace, target_port: int) -> dict[str, float]:
    """Run the chain, count, print: {node: calls per connection, "node python": ...}."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = bench.TOPOLOGIES[args.topology]("raybridge", Path(tmp))
        chain = CountingChain(plain.system, plain.nodes, plain.socks, plain.workdir)
        chain.start()
        try:
            bench.ready_time(chain, target_port, timeout=60)
            for _ in range(args.warmup):
                bench.open_echo_ms(chain.socks, target_port)
            time.sleep(0.5)
            for node in chain.nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            for _ in range(args.count):
                bench.open_echo_ms(chain.socks, target_port)
            time.sleep(1.0)  # teardown done
            for node in chain.nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGUSR2)
            for node in chain.nodes:
                out = Path(tmp) / f"{chain.name}-{node.name}.calls.json"
                deadline = time.monotonic() + 10
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                rows = json.loads(out.read_text())
                if args.save:
                    Path(args.save).mkdir(parents=True, exist_ok=True)
                    (Path(args.save) / f"{node.name}.json").write_text(json.dumps(rows))
                    prof = Path(f"{out}.prof")
                    (Path(args.save) / f"{node.name}.prof").write_bytes(prof.read_bytes())
                total = sum(calls for _, calls, _ in rows.values())
                python = sum(c for name, (_, c, _) in rows.items() if not name.startswith("~"))
                results[node.name] = total / args.count
                results[node.name + " python"] = python / args.count
                print(
                    f"{node.name}: {total / args.count:.1f} calls per connection, "
                    f"{python / args.count:.1f} of Python functions"
                )
                if args.top:
                    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])
                    for name, (_, calls, _own) in ranked[: args.top]:
                        print(f"   {calls / args.count:7.2f}  {name}")
        finally:
            chain.stop()
    return results


if __name__ == "__main__":
    raise SystemExit(main())
