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

``--systems raybridge,floor,v2ray`` adds the floor of any Python node on this machine: one
process per node that imports only what every node needs (asyncio with uvloop, which loads
ssl; cryptography's AEAD ciphers; logging and json), listens where the node listens and
then idles. Its ``ready_s`` is when all of them listen: a Python chain cannot echo sooner.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
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


FLOOR = """
import asyncio, json, logging, sys
import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

async def main(port: int) -> None:
    if port:
        await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    await asyncio.sleep(3600)

uvloop.run(main(int(sys.argv[1])))
"""


def measure_floor(chain: bench.Chain, settle: float) -> dict[str, float]:
    """The Python floor (see the module docstring) for ``chain``'s nodes and ports."""
    out: dict[str, float] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    own = {n.name: n.listen_port for n in chain.nodes if n.name != "A"}
    started = time.perf_counter()
    try:
        for node in chain.nodes:
            port = own.get(node.name, 0)
            procs[node.name] = subprocess.Popen([sys.executable, "-c", FLOOR, str(port)])
        deadline = time.monotonic() + 30
        while own and time.monotonic() < deadline:
            for name, port in list(own.items()):
                if listening(port):
                    out[f"listen_{name}_s"] = time.perf_counter() - started
                    out[f"cpu_{name}_s"] = bench.proc_stat(procs[name].pid)[0]
                    del own[name]
            time.sleep(0.002)
        out["ready_s"] = max(v for k, v in out.items() if k.startswith("listen_"))
        time.sleep(settle)
        for name, proc in procs.items():
            out[f"idle_{name}_MB"] = bench.rss_now(proc.pid) / 1e6
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()
    return out


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
    bench.compile_sources(args.systems.split(","))
    results = bench.alternate(
        args.systems.split(","),
        args.rounds,
        lambda system, tmp, ports: (
            measure_floor(bench.TOPOLOGIES[args.topology]("raybridge", tmp), args.settle)
            if system == "floor"
            else measure(bench.TOPOLOGIES[args.topology](system, tmp), ports.target, args.settle)
        ),
    )
    bench.print_table(f"{args.topology}: start-up and idle RSS, {args.rounds} rounds", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
