"""Start-up and idle memory of each node, raybridge beside V2Ray 4.34 in the same run.

    python bench/idle.py                   # the reverse chain's A, B and C, 3 rounds
    python bench/idle.py --topology cb --rounds 5

For each round and system: the chain's processes are started together; figures are the
seconds from start until each listening node accepts a connection (``listen_<node>_s``)
and the CPU seconds it had used by then (``cpu_<node>_s``, less disturbed by other load
on the machine than the wall time),
until the chain echoes a byte (``ready_s``), and each node's RSS once the chain is ready
and has been idle for a second (``idle_<node>_MB``). Rounds alternate between the systems;
the table shows medians and the raybridge/V2Ray ratio.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain as bench  # noqa: E402  (bench/chain.py)


def listening(port: int) -> bool:
    try:
        socket.create_connection((bench.LOCAL, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def measure(chain: bench.Chain, target: int, settle: float) -> dict[str, float]:
    out: dict[str, float] = {}
    own = {n.name: n.listen_port for n in chain.nodes if n.name != "A"}  # A only dials
    chain.start()
    try:
        deadline = time.monotonic() + 30
        while own and time.monotonic() < deadline:
            for name, port in list(own.items()):
                if listening(port):
                    out[f"listen_{name}_s"] = time.perf_counter() - chain.started
                    node = chain.node(name)
                    assert node.proc is not None
                    out[f"cpu_{name}_s"] = bench.proc_stat(node.proc.pid)[0]
                    del own[name]
            time.sleep(0.002)
        out["ready_s"] = bench.ready_time(chain, target)
        time.sleep(settle)
        for node in chain.nodes:
            assert node.proc is not None
            out[f"idle_{node.name}_MB"] = bench.rss_now(node.proc.pid) / 1e6
    finally:
        chain.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=sorted(bench.TOPOLOGIES), default="abc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default="raybridge,v2ray")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before RSS")
    args = parser.parse_args()
    results = bench.alternate(
        args.systems.split(","),
        args.rounds,
        lambda system, tmp, ports: measure(
            bench.TOPOLOGIES[args.topology](system, tmp), ports.target, args.settle
        ),
    )
    bench.print_table(f"{args.topology}: start-up and idle RSS, {args.rounds} rounds", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
