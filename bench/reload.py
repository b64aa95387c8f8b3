"""Reloads and drains against V2Ray 4.34 restarts, on the same machine in the same run.

    PYTHONPATH=src python bench/reload.py                 # all three figures
    PYTHONPATH=src python bench/reload.py --only time     # reload time only

Figures (each run well under a minute):

* ``time``: a node with 1,000 VMess users and 200 routing rules gets one more user and
  rule, five times. raybridge: SIGHUP; seconds from the signal until the new config is
  live (the node's own record, signal to live; and as a client sees it: until the new
  user's first echo). V2Ray 4.34 has no reload: seconds from its restart (SIGTERM, start)
  until the new user's first echo.
* ``reloads``: the reverse chain C -> B -> A under load (clients opening connections one
  after another, and 20 MB downloads whose every byte is checked) while B and C change 10
  times, 3 s apart (a user, an inbound and a rule each time): raybridge reloads them with
  SIGHUP, V2Ray restarts them. Counted: connections and downloads that failed.
* ``bridge``: the same chain and load while the bridge A is restarted: raybridge drains it
  (SIGTERM; it exits once its transfers are done) and starts it again; V2Ray is stopped and
  started again. The chain has one bridge: clients wait at the portal for the new one.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import (
    LOCAL,
    Chain,
    Node,
    free_port,
    open_echo_ms,
    reverse_chain,
    socks_open,
    start_target,
    wait_port,
)
from target import expected

DOWNLOAD = 20_000_000


def big_b(port: int, users: int, rules: int, status: int | None) -> dict[str, Any]:
    """Node B of a C -> B pair: a VMess inbound with ``users`` users, ``rules`` rules that
    never match (one domain each) ahead of the catch-all to freedom."""
    clients = [{"id": str(uuid.uuid4()), "email": f"user{i}@bench"} for i in range(users)]
    routing = [
        {"type": "field", "domain": [f"full:never{i}.invalid"], "outboundTag": "block"}
        for i in range(rules)
    ]
    config: dict[str, Any] = {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [
            {
                "tag": "in",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": port,
                "settings": {"clients": clients},
            }
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom"},
            {"tag": "block", "protocol": "blackhole"},
        ],
        "routing": {"rules": routing},
    }
    if status:
        config["raybridge"] = {"status": f"{LOCAL}:{status}"}
    return config


def client(socks: int, server: int, user: str) -> dict[str, Any]:
    from raybridge.templates import client_config

    config = client_config(socks, server, user, security="aes-128-gcm")
    config["log"] = {"loglevel": "warning", "access": "none"}
    return config


def command(system: str, path: Path) -> list[str]:
    if system == "v2ray":
        return ["/usr/bin/v2ray", "-config", str(path)]
    return [sys.executable, "-m", "raybridge", "run", "-c", str(path)]


def status_reloads(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{LOCAL}:{port}/api/status", timeout=5) as r:
        return list(json.loads(r.read())["reloads"])


def echo_within(socks: int, target: int, timeout: float) -> None:
    """Open a connection through SOCKS ``socks`` and echo one byte, within ``timeout`` s."""
    sock = socks_open(socks, target, timeout=timeout)
    try:
        sock.sendall(b"E")
        if sock.recv(1) != b"E":
            raise ConnectionError("no echo")
    finally:
        sock.close()


def until_echo(socks: int, target: int, timeout: float = 60.0, attempt: float = 10.0) -> float:
    """Seconds until an echo through SOCKS ``socks`` works (each try given ``attempt`` s:
    a VMess server holds an unknown user's connection open, so a try made before the user
    was added waits that long)."""
    start = time.perf_counter()
    while True:
        try:
            echo_within(socks, target, attempt)
            return time.perf_counter() - start
        except OSError:
            if time.perf_counter() - start > timeout:
                raise
            time.sleep(0.005)


def reload_time(system: str, workdir: Path, target: int, times: int = 5) -> dict[str, float]:
    b_port, status = free_port(), free_port()
    config = big_b(b_port, 1000, 200, status if system == "raybridge" else None)
    path = workdir / f"{system}-big.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        command(system, path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    clients: list[subprocess.Popen[bytes]] = []
    inside: list[float] = []
    outside: list[float] = []
    try:
        wait_port(b_port, 60)
        for i in range(times):
            user = str(uuid.uuid4())
            config["inbounds"][0]["settings"]["clients"].append({"id": user, "email": f"new{i}@b"})
            config["routing"]["rules"].insert(
                0, {"type": "field", "domain": [f"full:new{i}.invalid"], "outboundTag": "block"}
            )
            path.write_text(json.dumps(config))
            socks = free_port()
            c_path = workdir / f"{system}-c{i}.json"
            c_path.write_text(json.dumps(client(socks, b_port, user)))
            clients.append(subprocess.Popen(command(system, c_path), stdout=subprocess.DEVNULL))
            wait_port(socks, 30)
            before = len(status_reloads(status)) if system == "raybridge" else 0
            if system == "raybridge":
                proc.send_signal(signal.SIGHUP)
            else:
                proc.terminate()
                proc.wait()
                proc = subprocess.Popen(
                    command(system, path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
                )
            outside.append(until_echo(socks, target, attempt=0.2))
            if system == "raybridge":
                records = status_reloads(status)
                assert len(records) == before + 1 and records[-1]["ok"], records[-1]
                inside.append(records[-1]["seconds"])
    finally:
        for p in [proc, *clients]:
            p.terminate()
            p.wait()
    out = {"new user's first echo s": statistics.median(outside)}
    if inside:
        out["signal to live s (node's record)"] = statistics.median(inside)
    return out


# -- load: connections one after another, and checked downloads -----------------------------


class Load:
    """Client threads through SOCKS ``socks``: ``openers`` open + echo in a loop,
    ``downloaders`` 20 MB downloads in a loop, each byte checked against the pattern."""

    def __init__(self, socks: int, target: int, openers: int = 3, downloaders: int = 2) -> None:
        self.socks, self.target = socks, target
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"opened": 0, "open failed": 0, "downloads": 0, "downloads failed": 0}
        self.threads = [threading.Thread(target=self._open) for _ in range(openers)]
        self.threads += [threading.Thread(target=self._download) for _ in range(downloaders)]

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _open(self) -> None:
        while not self.stop.is_set():
            try:
                open_echo_ms(self.socks, self.target)
                self._count("opened")
            except OSError:
                self._count("open failed")
                time.sleep(0.02)

    def _download(self) -> None:
        buf = bytearray(1 << 20)
        while not self.stop.is_set():
            try:
                sock = socks_open(self.socks, self.target, timeout=30)
                sock.sendall(b"S" + DOWNLOAD.to_bytes(8, "big"))
                got = 0
                while got < DOWNLOAD:
                    n = sock.recv_into(buf, min(len(buf), DOWNLOAD - got))
                    if not n:
                        raise ConnectionError("download cut")
                    if buf[:n] != expected(got, n):
                        raise ConnectionError("bytes differ")
                    got += n
                sock.close()
                self._count("downloads")
            except OSError:
                self._count("downloads failed")
                time.sleep(0.02)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def start_chain(system: str, workdir: Path, target: int) -> Chain:
    chain = reverse_chain(system, workdir)
    chain.start()
    until_echo(chain.socks, target)
    return chain


def config_path(chain: Chain, node: Node) -> Path:
    return chain.workdir / f"{chain.system}-{node.name}.json"


def change(chain: Chain, name: str, i: int) -> None:
    """Node ``name`` of the chain gets a user (B), an inbound and a rule: in its file, then
    a reload (raybridge) or a restart (V2Ray)."""
    node = chain.node(name)
    config = node.config
    port = free_port()
    if name == "B":
        config["inbounds"][0]["settings"]["clients"].append({"id": str(uuid.uuid4())})
        config["inbounds"].append(
            {"tag": f"x{i}", "protocol": "vmess", "listen": LOCAL, "port": port,
             "settings": {"clients": [{"id": str(uuid.uuid4())}]}}
        )  # fmt: skip
    else:
        config["inbounds"].append(
            {"tag": f"x{i}", "protocol": "socks", "listen": LOCAL, "port": port}
        )
    config.setdefault("routing", {}).setdefault("rules", []).insert(
        0, {"type": "field", "domain": [f"full:never{i}.invalid"],
            "outboundTag": config["outbounds"][0]["tag"]}
    )  # fmt: skip
    config_path(chain, node).write_text(json.dumps(config, indent=1))
    assert node.proc is not None
    if chain.system == "raybridge":
        node.proc.send_signal(signal.SIGHUP)
    else:
        node.proc.terminate()
        node.proc.wait()
        node.proc = subprocess.Popen(
            chain.command(config_path(chain, node)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )


def reloads_under_load(system: str, workdir: Path, target: int) -> dict[str, float]:
    chain = start_chain(system, workdir, target)
    try:
        with Load(chain.socks, target) as load:
            time.sleep(2)
            for i in range(10):
                change(chain, "B" if i % 2 == 0 else "C", i)
                time.sleep(3)
            time.sleep(2)
        return dict(load.counts)
    finally:
        chain.stop()


def bridge_restart(system: str, workdir: Path, target: int) -> dict[str, float]:
    chain = start_chain(system, workdir, target)
    node = chain.node("A")
    try:
        with Load(chain.socks, target) as load:
            time.sleep(3)
            assert node.proc is not None
            start = time.perf_counter()
            node.proc.terminate()  # raybridge drains; V2Ray exits
            node.proc.wait(60)
            exited = time.perf_counter() - start
            node.proc = subprocess.Popen(
                chain.command(config_path(chain, node)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            time.sleep(15)
        return {**load.counts, "old A exited after s": exited}
    finally:
        chain.stop()


FIGURES = {"time": reload_time, "reloads": reloads_under_load, "bridge": bridge_restart}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(FIGURES), action="append")
    parser.add_argument("--systems", default="raybridge,v2ray")
    args = parser.parse_args()
    target, target_port, _ = start_target()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only or list(FIGURES):
                for system in args.systems.split(","):
                    result = FIGURES[name](system, Path(tmp), target_port)
                    print(f"{name} {system}: " + ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in result.items()
                    ), flush=True)  # fmt: skip
    finally:
        target.terminate()
        target.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
