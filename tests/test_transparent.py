"""dokodemo-door ``followRedirect`` (issue 14): transparent proxying on Linux, tested in
network namespaces the tests make.

* REDIRECT (iptables ``-t nat OUTPUT ... REDIRECT`` or nft ``redirect``): a client in the
  namespace connects to the echo server's address; the rule sends it to the node, which
  finds the original destination with ``SO_ORIGINAL_DST`` and dials it through freedom
  (marked with ``sockopt.mark`` so that its own connection is not redirected again).
* TPROXY (``sockopt.tproxy: "tproxy"``): a client in a second namespace, joined by a veth
  pair, connects to the echo server; mangle PREROUTING's TPROXY hands the connection to
  the node's IP_TRANSPARENT listener, whose local address is the destination.

Each test checks the bytes end to end, that the echo server saw the node's connection
and not the client's, and the node's access log naming the original destination. Without
root, ``ip``, iptables/nft or the kernel's support, the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.node import Node
from raybridge.transport.redirect import parse_sockaddr
from tests.conftest import NEEDS_V2RAY
from tests.support import HAVE_V2RAY, RB, V2, V2RAY, stop_process

HELPER = str(Path(__file__).with_name("netns_helper.py"))
PY = sys.executable
MARK = 7  # the node's own connections: never redirected


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "transparent proxying is Linux only"
    if os.geteuid() != 0:
        return "needs root for ip netns and iptables/nft"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def must(*args: str) -> None:
    out = sh(*args)
    if out.returncode != 0:
        pytest.skip(f"{' '.join(args)}: {out.stderr.strip() or out.returncode}")


@pytest.fixture
def netns() -> Iterator[Any]:
    """``netns(suffix)`` makes a namespace with lo up and returns its name; all are
    deleted at the end (with the processes they hold: the tests stop theirs first)."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"rbt{os.getpid()}{suffix}"
        must("ip", "netns", "add", name)
        made.append(name)
        must("ip", "-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in made:
            sh("ip", "netns", "del", name)


@contextlib.contextmanager
def inside(ns: str, *args: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """A process in namespace ``ns`` until the block ends."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )
    try:
        yield proc
    finally:
        stop_process(proc, 10)


def node_config(listen: str, port: int, sockopt: dict[str, Any], access: Path) -> dict[str, Any]:
    """dokodemo-door with followRedirect; freedom with SO_MARK ``MARK``; what is neither
    in 10.0.0.0/8 nor on loopback goes to a blackhole."""
    return {
        "log": {"loglevel": "info", "access": str(access)},
        "inbounds": [
            {
                "tag": "transparent",
                "protocol": "dokodemo-door",
                "listen": listen,
                "port": port,
                "settings": {"network": "tcp", "followRedirect": True},
                "streamSettings": {"sockopt": sockopt},
            }
        ],
        "outbounds": [
            {
                "tag": "direct",
                "protocol": "freedom",
                "streamSettings": {"sockopt": {"mark": MARK}},
            },
            {"tag": "no-internet", "protocol": "blackhole"},
        ],
        "routing": {
            "rules": [
                {"type": "field", "ip": ["127.0.0.0/8", "10.0.0.0/8"], "outboundTag": "direct"},
                {"type": "field", "network": "tcp,udp", "outboundTag": "no-internet"},
            ]
        },
    }


def run_through(
    tmp_path: Path,
    *,
    node_ns: str,
    client_ns: str,
    echo: tuple[str, int],
    node: tuple[str, int],
    sockopt: dict[str, Any],
    kind: str = RB,
) -> None:
    """Echo at ``echo`` and the node (raybridge, or V2Ray 4.34 to check the set-up
    against) in ``node_ns``; the client (in ``client_ns``) connects to the echo address,
    which the firewall sends to the node."""
    access = tmp_path / "access.log"
    config = tmp_path / "node.json"
    config.write_text(json.dumps(node_config(*node, sockopt, access)))
    command = [PY, "-m", "raybridge", "run", "-c", str(config)]
    if kind == V2:
        if not HAVE_V2RAY:
            pytest.skip(NEEDS_V2RAY)
        command = [V2RAY, "-config", str(config)]
    with (
        inside(node_ns, PY, HELPER, "echo", *map(str, echo)) as echo_proc,
        inside(node_ns, *command) as node_proc,
    ):
        assert echo_proc.stdout is not None
        assert echo_proc.stdout.readline().strip() == "ready"
        wait_host = "127.0.0.1" if node[0] == "0.0.0.0" else node[0]
        waited = sh("ip", "netns", "exec", node_ns, PY, HELPER, "wait", wait_host, str(node[1]))
        if waited.returncode != 0:
            node_proc.terminate()
            out = node_proc.communicate(timeout=10)[0]
            pytest.fail(f"the node did not start:\n{out}")
        result = sh(
            "ip", "netns", "exec", client_ns, PY, HELPER, "client", *map(str, echo), "300000"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["ok"], outcome
        echo_proc.terminate()
        peers = echo_proc.communicate(timeout=10)[0].split("\n")
    # Only the node's connection reached the echo server: not the client's own.
    seen = [line.split() for line in peers if line.strip()]
    assert len(seen) >= 1
    client = outcome["local"]
    assert [str(client[0]), str(client[1])] not in seen, (client, seen)
    log = access.read_text()
    # raybridge names both tags; V2Ray 4.34 the outbound's only.
    assert re.search(
        rf"accepted tcp:{re.escape(echo[0])}:{echo[1]} \[(transparent -> )?direct\]", log
    ), log


def _redirect_rules(ns: str, backend: str, echo: tuple[str, int], port: int) -> None:
    host, echo_port = echo
    if backend == "iptables":
        if shutil.which("iptables") is None:
            pytest.skip("iptables is not installed")
        must(
            "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT",
            "-p", "tcp", "-d", host, "--dport", str(echo_port),
            "-m", "mark", "!", "--mark", str(MARK),
            "-j", "REDIRECT", "--to-ports", str(port),
        )  # fmt: skip
        return
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    script = (
        "table ip rbtest {\n"
        "  chain out {\n"
        "    type nat hook output priority -100;\n"
        f"    ip daddr {host} tcp dport {echo_port} meta mark != {MARK} redirect to :{port}\n"
        "  }\n"
        "}\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        pytest.skip(f"nft: {out.stderr.strip()}")


@pytest.mark.parametrize(("backend", "kind"), [("iptables", RB), ("nft", RB), ("iptables", V2)])
def test_follow_redirect_with_redirect(netns: Any, tmp_path: Path, backend: str, kind: str) -> None:
    ns = netns("r")
    must("ip", "-n", ns, "addr", "add", "10.77.0.1/32", "dev", "lo")
    echo, port = ("10.77.0.1", 7001), 7100
    _redirect_rules(ns, backend, echo, port)
    run_through(
        tmp_path,
        node_ns=ns,
        client_ns=ns,
        echo=echo,
        node=("127.0.0.1", port),
        sockopt={},
        kind=kind,
    )


@pytest.mark.parametrize("kind", [RB, V2])
def test_follow_redirect_with_tproxy(netns: Any, tmp_path: Path, kind: str) -> None:
    router, client = _veth_pair(netns)
    echo, port = ("10.78.0.2", 7002), 7200
    _tproxy(router, "tcp", echo, port)
    run_through(
        tmp_path,
        node_ns=router,
        client_ns=client,
        echo=echo,
        node=("0.0.0.0", port),
        sockopt={"tproxy": "tproxy"},
        kind=kind,
    )


def _veth_pair(netns: Any) -> tuple[str, str]:
    """A router namespace (10.78.0.2) and a client one (10.78.0.1) joined by a veth pair;
    the client routes 10.99.0.0/24 through the router."""
    router, client = netns("t"), netns("c")
    veth_r, veth_c = f"rbr{os.getpid() % 100000}", f"rbc{os.getpid() % 100000}"
    must(
        "ip",
        "link",
        "add",
        veth_r,
        "netns",
        router,
        "type",
        "veth",
        "peer",
        "name",
        veth_c,
        "netns",
        client,
    )
    must("ip", "-n", router, "addr", "add", "10.78.0.2/24", "dev", veth_r)
    must("ip", "-n", client, "addr", "add", "10.78.0.1/24", "dev", veth_c)
    must("ip", "-n", router, "link", "set", veth_r, "up")
    must("ip", "-n", client, "link", "set", veth_c, "up")
    must("ip", "-n", client, "route", "add", "10.99.0.0/24", "via", "10.78.0.2")
    return router, client


def _tproxy(router: str, proto: str, dest: tuple[str, int], port: int) -> None:
    """The usual TPROXY set-up: marked packets are delivered locally (table 100), and what
    the client sends to ``dest`` (arriving on the veth only) goes to the node's ``port``."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    veth_r = f"rbr{os.getpid() % 100000}"
    must("ip", "-n", router, "rule", "add", "fwmark", "1", "lookup", "100")
    must("ip", "-n", router, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    must(
        "ip", "netns", "exec", router, "iptables", "-t", "mangle", "-A", "PREROUTING",
        "-i", veth_r, "-p", proto, "-d", dest[0], "--dport", str(dest[1]),
        "-j", "TPROXY", "--on-port", str(port), "--tproxy-mark", "0x1/0x1",
    )  # fmt: skip


@pytest.mark.parametrize("kind", [RB, V2])
def test_follow_redirect_udp_with_tproxy(netns: Any, tmp_path: Path, kind: str) -> None:
    """UDP: datagrams to 10.99.0.9:7003 (an address nobody has) are TPROXYed to the node,
    which takes each one's destination from IP_ORIGDSTADDR and answers the client *from*
    10.99.0.9:7003; freedom's ``redirect`` sends them on to the echo server on loopback."""
    router, client = _veth_pair(netns)
    target, port = ("10.99.0.9", 7003), 7300
    _tproxy(router, "udp", target, port)
    access = tmp_path / "access.log"
    config = node_config("0.0.0.0", port, {"tproxy": "tproxy"}, access)
    config["inbounds"][0]["settings"]["network"] = "tcp,udp"
    config["outbounds"][0]["settings"] = {"redirect": f"127.0.0.1:{target[1]}"}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(config))
    command = [PY, "-m", "raybridge", "run", "-c", str(path)]
    if kind == V2:
        if not HAVE_V2RAY:
            pytest.skip(NEEDS_V2RAY)
        command = [V2RAY, "-config", str(path)]
    with (
        inside(router, PY, HELPER, "uecho", "127.0.0.1", str(target[1])) as echo_proc,
        inside(router, *command) as node_proc,
    ):
        assert echo_proc.stdout is not None
        assert echo_proc.stdout.readline().strip() == "ready"
        if sh("ip", "netns", "exec", router, PY, HELPER, "wait", "-", str(port)).returncode:
            node_proc.terminate()
            pytest.fail(f"the node did not start:\n{node_proc.communicate(timeout=10)[0]}")
        result = sh("ip", "netns", "exec", client, PY, HELPER, "uclient", *map(str, target))
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"], outcome
    # Every answer came from the address the client sent to, not from the node's.
    assert outcome["sources"] == [list(target)] * 4, outcome
    log = access.read_text()
    assert re.search(rf"accepted udp:{re.escape(target[0])}:{target[1]} ", log), log


# -- what the config check says --------------------------------------------------------------


def dokodemo(settings: str, stream: str = "") -> str:
    extra = f', "streamSettings": {stream}' if stream else ""
    return (
        '{"inbounds": [{"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": 1,\n'
        f'  "settings": {settings}{extra}}}],\n'
        ' "outbounds": [{"protocol": "freedom"}]}\n'
    )


def test_follow_redirect_for_udp_needs_tproxy() -> None:
    with pytest.raises(ConfigError, match="followRedirect for UDP needs TPROXY") as info:
        load_config_text(dokodemo('{"network": "tcp,udp", "followRedirect": true}'), "t.json")
    assert str(info.value).startswith("t.json:2: inbounds[0].settings.followRedirect: ")
    tproxy = '{"sockopt": {"tproxy": "tproxy"}}'
    config = load_config_text(
        dokodemo('{"network": "tcp,udp", "followRedirect": true}', tproxy), "t.json"
    )
    Node(config)


def test_follow_redirect_needs_no_address() -> None:
    config = load_config_text(dokodemo('{"followRedirect": true}'), "t.json")
    Node(config)  # builds: address and port are only the fallback
    assert not [w for w in config.warnings if "dokodemo" in w.message]


def test_follow_redirect_outside_linux_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ConfigError, match="needs Linux"):
        load_config_text(dokodemo('{"followRedirect": true}'), "t.json")
    with pytest.raises(ConfigError, match="needs Linux"):
        load_config_text(
            dokodemo('{"address": "1.2.3.4", "port": 1}', '{"sockopt": {"tproxy": "tproxy"}}'),
            "t.json",
        )


def test_unknown_tproxy_mode_warns() -> None:
    text = dokodemo('{"address": "1.2.3.4", "port": 1}', '{"sockopt": {"tproxy": "on"}}')
    config = load_config_text(text, "t.json")
    assert any('unknown mode "on"' in w.message for w in config.warnings)
    assert config.inbounds[0].stream.sockopt.tproxy == "off"


def test_sockaddr_parsing() -> None:
    """What getsockopt(SO_ORIGINAL_DST) returns: sockaddr_in / sockaddr_in6, family in host
    byte order, port in network order."""
    import socket

    family = socket.AF_INET.to_bytes(2, sys.byteorder)
    v4 = family + (8080).to_bytes(2, "big") + socket.inet_aton("10.1.2.3") + bytes(8)
    assert parse_sockaddr(v4) == ("10.1.2.3", 8080)
    family6 = socket.AF_INET6.to_bytes(2, sys.byteorder)
    raw6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    v6 = family6 + (443).to_bytes(2, "big") + bytes(4) + raw6 + bytes(4)
    assert parse_sockaddr(v6) == ("2001:db8::1", 443)
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.7")
    assert parse_sockaddr(family6 + (1).to_bytes(2, "big") + bytes(4) + mapped) == ("192.0.2.7", 1)
    assert parse_sockaddr(b"\x00" * 4) is None
    assert parse_sockaddr(bytes(16)) is None  # AF_UNSPEC
