"""Routing cost and start-up with big geo lists, beside V2Ray 4.34.

    python bench/routing.py [--repeat 3] [--picks 10000] [--no-v2ray]

Writes (in a temporary directory, in V2Ray's format) a geosite.dat whose list ``BIG`` has
100,000 domains (90,000 domain, 9,500 full, 400 keyword, 100 regexp entries) and a
geoip.dat whose list ``BIG`` has 10,000 CIDRs (9,000 IPv4, 1,000 IPv6); each file also
holds 200 small lists the config does not use. Then measures, each ``--repeat`` times
(medians printed):

* routing cost: ``Router.pick`` per connection (CPU time), for destinations that miss every list
  (the worst case: every part is checked) and for ones that hit, with the rules
  ``geosite:big`` -> block, ``geoip:big`` -> block against the same rules with a
  single ``domain:``/CIDR entry each (no geo lists);
* start-up: a ``raybridge run`` process and a ``v2ray`` process with the same config and
  files, from spawn until its SOCKS port accepts connections, and its VmRSS then
  (/proc/PID/status), with and without the geo rules.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raybridge.address import Destination, Network, parse_host
from raybridge.link import Session
from raybridge.matchers import GeoAssets
from raybridge.protocols.geodata import (
    CIDR,
    DOMAIN,
    FULL,
    PLAIN,
    REGEX,
    Domain,
    GeoIP,
    GeoSite,
    write_geoip_list,
    write_geosite_list,
)
from raybridge.router import Router, compile_rule

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chain import free_port, proc_stat, rss_now, stop_process  # noqa: E402 - a script next to this one

V2RAY = shutil.which("v2ray") or "/usr/bin/v2ray"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TLDS = ("com", "net", "org", "cn", "io", "de", "jp")


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(LETTERS, k=rng.randint(lo, hi)))


def _name(rng: random.Random) -> str:
    labels = [_word(rng, 3, 10) for _ in range(rng.randint(1, 2))]
    return ".".join([*labels, rng.choice(TLDS)])


def big_site(rng: random.Random) -> GeoSite:
    domains = [Domain(DOMAIN, _name(rng)) for _ in range(90_000)]
    domains += [Domain(FULL, "www." + _name(rng)) for _ in range(9_500)]
    domains += [Domain(PLAIN, _word(rng, 6, 12)) for _ in range(400)]
    domains += [Domain(REGEX, rf"^{_word(rng, 4, 8)}[0-9]+\.") for _ in range(100)]
    return GeoSite("BIG", domains)


def big_ip(rng: random.Random) -> GeoIP:
    cidrs = []
    while len(cidrs) < 9_000:
        prefix = rng.randint(16, 24)
        net = ipaddress.ip_network((rng.getrandbits(32), prefix), strict=False)
        if not net.is_private:  # 10/8 and 192.168/16 are the misses of the benchmark
            cidrs.append(CIDR(net.network_address.packed, prefix))
    for _ in range(1_000):
        prefix = rng.randint(32, 48)
        net = ipaddress.ip_network(((0x2 << 124) | rng.getrandbits(124), prefix), strict=False)
        cidrs.append(CIDR(net.network_address.packed, prefix))
    return GeoIP("BIG", cidrs)


def write_files(directory: Path, rng: random.Random) -> tuple[GeoSite, GeoIP]:
    site, ip = big_site(rng), big_ip(rng)
    small_sites = [
        GeoSite(f"S{i}", [Domain(DOMAIN, _name(rng)) for _ in range(50)]) for i in range(200)
    ]
    small_ips = [
        GeoIP(f"I{i}", [CIDR(rng.getrandbits(32).to_bytes(4, "big"), 24)] * 20) for i in range(200)
    ]
    (directory / "geosite.dat").write_bytes(
        write_geosite_list([*small_sites[:100], site, *small_sites[100:]])
    )
    (directory / "geoip.dat").write_bytes(
        write_geoip_list([*small_ips[:100], ip, *small_ips[100:]])
    )
    return site, ip


GEO_RULES = [
    {"type": "field", "domain": ["geosite:big"], "outboundTag": "block"},
    {"type": "field", "ip": ["geoip:big"], "outboundTag": "block"},
]
PLAIN_RULES = [
    {"type": "field", "domain": ["domain:blocked.example"], "outboundTag": "block"},
    {"type": "field", "ip": ["192.0.2.0/24"], "outboundTag": "block"},
]


def config(port: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "protocol": "socks",
                "listen": "127.0.0.1",
                "port": port,
                "settings": {"auth": "noauth"},
            }
        ],
        "outbounds": [{"protocol": "freedom"}, {"tag": "block", "protocol": "blackhole"}],
        "routing": {"rules": rules},
    }


class _Rule:
    """What compile_rule reads of a config rule."""

    def __init__(self, raw: dict[str, Any], index: int, file: str) -> None:
        self.outbound_tag = raw["outboundTag"]
        self.domains = raw.get("domain")
        self.ips = raw.get("ip")
        self.index = index
        self.file = file
        self.line = 0


def router(rules: list[dict[str, Any]], config_file: str) -> Router:
    with GeoAssets([]) as assets:
        compiled = [compile_rule(_Rule(r, i, config_file), assets) for i, r in enumerate(rules)]
    return Router(compiled, ["direct", "block"])


def destinations(
    rng: random.Random, site: GeoSite, ip: GeoIP, n: int, hit: bool
) -> list[Destination]:
    out = []
    for i in range(n):
        if i % 2:
            if hit:
                d = rng.choice(site.domains[:90_000])
                host = f"{_word(rng, 2, 5)}.{d.value}"
            else:
                host = "miss-" + _name(rng) + ".example"
            out.append(Destination(Network.TCP, host, 443))
        else:
            if hit:
                c = rng.choice(ip.cidrs[:9_000])
                address = ipaddress.IPv4Address(int.from_bytes(c.ip, "big") + 1)
            else:
                # 10/8 and 192.168/16: big_ip leaves private ranges out
                base = rng.choice((0x0A000000, 0xC0A80000))
                address = ipaddress.IPv4Address(base + rng.getrandbits(16))
            out.append(Destination(Network.TCP, parse_host(str(address)), 443))
    return out


def pick_cost(r: Router, dests: list[Destination]) -> float:
    session = Session(inbound_tag="in")
    pick = r.pick
    start = time.process_time()  # CPU time: the machine may be busy with other work
    for d in dests:
        pick(session, d)
    return (time.process_time() - start) / len(dests) * 1e6


def _wait_listen(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"exited: {proc.communicate()[0].decode(errors='replace')}"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            time.sleep(0.005)


def start_up(argv: list[str], port: int, env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds from spawn to a listening port, CPU seconds used by then, and VmRSS (KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listen(port, proc, start + 60)
        elapsed = time.monotonic() - start
        cpu = proc_stat(proc.pid)[0]
        time.sleep(0.2)  # let lazy start-up work settle before reading RSS
        return elapsed, cpu, rss_now(proc.pid) // 1024
    finally:
        stop_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--picks", type=int, default=10_000)
    parser.add_argument("--no-v2ray", action="store_true")
    args = parser.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        site, ip = write_files(directory, rng)
        sizes = {p.name: p.stat().st_size for p in directory.glob("*.dat")}
        mb = {name: size / 1e6 for name, size in sizes.items()}
        print(f"files: geosite.dat {mb['geosite.dat']:.1f} MB, geoip.dat {mb['geoip.dat']:.2f} MB")
        cfg_file = str(directory / "config.json")
        Path(cfg_file).write_text("{}")

        load = []
        for _ in range(args.repeat):
            t = time.process_time()
            geo = router(GEO_RULES, cfg_file)
            load.append(time.process_time() - t)
            del geo
        geo = router(GEO_RULES, cfg_file)
        plain = router(PLAIN_RULES, cfg_file)
        ms = statistics.median(load) * 1e3
        print(f"compile the geo rules (read and build both lists): {ms:.0f} ms of CPU")
        for label, hit in (("miss", False), ("hit", True)):
            dests = destinations(rng, site, ip, args.picks, hit)
            g = statistics.median(pick_cost(geo, dests) for _ in range(args.repeat))
            p = statistics.median(pick_cost(plain, dests) for _ in range(args.repeat))
            print(
                f"Router.pick, {label:4}: geo rules {g:.2f} us, no geo rules {p:.2f} us, "
                f"ratio {g / p:.2f}"
            )

        env = {**os.environ, "V2RAY_LOCATION_ASSET": str(directory)}
        # Python start-up with cached bytecode, as an installed package has it.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
        warm = directory / "warm.json"
        port = free_port()
        warm.write_text(json.dumps(config(port, GEO_RULES)))
        start_up([sys.executable, "-m", "raybridge", "run", "-c", str(warm)], port, env)
        systems = [("raybridge", [sys.executable, "-m", "raybridge", "run", "-c"])]
        if not args.no_v2ray and os.path.exists(V2RAY):
            systems.append(("v2ray", [V2RAY, "-config"]))
        results: dict[tuple[str, str], tuple[float, float, float]] = {}
        for rules_label, rules in (("geo", GEO_RULES), ("no geo", PLAIN_RULES)):
            for name, argv in systems:
                runs = []
                for i in range(args.repeat):
                    port = free_port()
                    path = directory / f"{name}-{i}.json"
                    path.write_text(json.dumps(config(port, rules)))
                    runs.append(start_up([*argv, str(path)], port, env))
                t, c, r = (statistics.median(column) for column in zip(*runs, strict=True))
                results[name, rules_label] = (t, c, r)
                what = f"start-up {name:9} {rules_label:6}"
                print(
                    f"{what}: {t * 1e3:.0f} ms to listen ({c * 1e3:.0f} ms of CPU), "
                    f"VmRSS {r / 1024:.1f} MiB"
                )
        for name, _ in systems:
            (_, gc, gr), (_, pc, pr) = results[name, "geo"], results[name, "no geo"]
            print(
                f"the geo lists add, {name:9}: {(gc - pc) * 1e3:+.0f} ms of CPU at start-up, "
                f"{(gr - pr) / 1024:+.1f} MiB VmRSS"
            )
        if ("v2ray", "geo") in results:
            for label in ("geo", "no geo"):
                rb, v2 = results["raybridge", label], results["v2ray", label]
                print(
                    f"raybridge / v2ray, {label}: start-up {rb[0] / v2[0]:.2f}x "
                    f"(CPU {rb[1] / max(v2[1], 0.01):.2f}x), VmRSS {rb[2] / v2[2]:.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
