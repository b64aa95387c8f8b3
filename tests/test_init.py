"""``raybridge init`` and ``raybridge link``: the configs it writes validate (raybridge and
V2Ray 4.34), run as a reverse chain in raybridge, V2Ray and mixes, and the share link holds
C's settings; interactive mode, refusing to overwrite, and bad input."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raybridge import cli
from raybridge.config.jsonc import parse
from raybridge.init import ask, cmd_init, parse_port
from raybridge.qr import qr_text
from raybridge.share_link import LINK_KEYS, decode_vmess_link
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    V2RAY,
    EchoServer,
    free_port,
    node,
    socks_echo,
    socks_udp_echo,
    stop_process,
    wait_chain,
    wait_port_async,
)

CMD = [sys.executable, "-m", "raybridge"]
RB, V2 = "raybridge", "v2ray"


def rb(*args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60, stdin=stdin)


def call(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """``raybridge ARGS`` in-process with stdin not a terminal: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load(path: Path) -> dict[str, Any]:
    """A written config as plain Python (through raybridge's comment-aware reader)."""
    value = parse(path.read_text(), str(path)).to_python()
    assert isinstance(value, dict)
    return value


def init(tmp_path: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run ``raybridge init`` in-process on loopback ports; return its ports and output."""
    ports = {name: free_port() for name in ("portal", "client", "socks", "http")}
    out = tmp_path / "out"
    code = cli.main(
        [
            "init",
            "--portal-address",
            LOCAL,
            "--portal-port",
            str(ports["portal"]),
            "--client-port",
            str(ports["client"]),
            "--socks-port",
            str(ports["socks"]),
            "--http-port",
            str(ports["http"]),
            "--out",
            str(out),
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return {"ports": ports, "dir": out, "stdout": captured.out, "stderr": captured.err}


def printed_link(stdout: str) -> str:
    links = re.findall(r"^vmess://\S+$", stdout, re.M)
    assert len(links) == 1, stdout
    return links[0]


# -- the configs ---------------------------------------------------------------------------


def test_init_configs_validate_in_raybridge_and_v2ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "set"
    assert cli.main(["init", "--portal-address", "vps.example.com", "--portal-port", "16823",
                     "--out", str(out), "--no-qr"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for name in ("a.json", "b.json", "c.json"):
        path = out / name
        text = path.read_text()
        assert text.startswith("// Node ") and "\n  // " in text  # explained with comments
        assert path.stat().st_mode & 0o077 == 0  # the UUIDs are secrets
        assert cli.main(["test", "-c", str(path)]) == 0
        result = capsys.readouterr()
        assert "Configuration OK" in result.out
        assert "warning" not in result.err.lower(), result.err
        assert f"raybridge run -c {path}" in printed and f"v2ray -config {path}" in printed
        if HAVE_V2RAY:
            v2 = subprocess.run(
                [V2RAY, "-test", "-config", str(path)], capture_output=True, text=True, timeout=30
            )
            assert v2.returncode == 0, v2.stdout + v2.stderr
            assert "Configuration OK" in v2.stdout

    a, b, c = (load(out / n) for n in ("a.json", "b.json", "c.json"))
    # B: public, bridges and clients on inbounds and users of their own.
    assert [(i["tag"], i["listen"], i["port"]) for i in b["inbounds"]] == [
        ("bridges", "0.0.0.0", 16823),
        ("clients", "0.0.0.0", 16824),
    ]
    bridge_id = b["inbounds"][0]["settings"]["clients"][0]["id"]
    client_id = b["inbounds"][1]["settings"]["clients"][0]["id"]
    assert bridge_id != client_id
    domain = b["reverse"]["portals"][0]["domain"]
    assert re.fullmatch(r"tunnel-[0-9a-f]{8}\.internal", domain)
    assert b["routing"]["rules"] == [
        {"type": "field", "inboundTag": ["bridges"], "domain": [f"full:{domain}"],
         "outboundTag": "portal"},
        {"type": "field", "inboundTag": ["clients"], "domain": [f"full:{domain}"],
         "outboundTag": "refuse"},
        {"type": "field", "inboundTag": ["clients"], "outboundTag": "portal"},
    ]  # fmt: skip
    assert b["outbounds"][0]["protocol"] == "blackhole"
    # A: the same domain, the bridge's user, the portal port.
    assert a["reverse"]["bridges"][0]["domain"] == domain
    server = a["outbounds"][0]["settings"]["vnext"][0]
    assert (server["address"], server["port"]) == ("vps.example.com", 16823)
    assert server["users"][0] == {"id": bridge_id, "alterId": 0, "security": "auto"}
    assert [r["outboundTag"] for r in a["routing"]["rules"]] == ["tunnel", "direct"]
    # C: local proxies only, the client's user, the client port.
    assert [(i["protocol"], i["listen"], i["port"]) for i in c["inbounds"]] == [
        ("socks", LOCAL, 10808),
        ("http", LOCAL, 10809),
    ]
    assert c["inbounds"][0]["settings"]["udp"] is True
    server = c["outbounds"][0]["settings"]["vnext"][0]
    assert (server["address"], server["port"]) == ("vps.example.com", 16824)
    assert server["users"][0] == {"id": client_id, "alterId": 0, "security": "auto"}
    for config in (a, b, c):
        assert config["log"]["loglevel"] == "warning"


def test_domain_is_random_unless_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = init(tmp_path / "1", "--no-qr", capsys=capsys)["dir"]
    second = init(tmp_path / "2", "--no-qr", capsys=capsys)["dir"]
    domains = {load(d / "b.json")["reverse"]["portals"][0]["domain"] for d in (first, second)}
    assert len(domains) == 2
    third = init(tmp_path / "3", "--no-qr", "--domain", "inside.example", capsys=capsys)["dir"]
    assert load(third / "a.json")["reverse"]["bridges"][0]["domain"] == "inside.example"
    assert load(third / "b.json")["reverse"]["portals"][0]["domain"] == "inside.example"


# -- the chain -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def run_file(kind: str, path: Path, port: int | None) -> AsyncIterator[None]:
    """Run one written config as-is (comments included) in raybridge or V2Ray 4.34."""
    if kind == RB:
        async with node(path.read_text(), str(path)):
            yield
        return
    proc = subprocess.Popen(
        [V2RAY, "-config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        if port is not None:
            try:
                await wait_port_async(port)
            except TimeoutError:
                proc.kill()
                raise RuntimeError(f"v2ray did not start: {proc.communicate()[0]!r}") from None
        yield
    finally:
        stop_process(proc)


async def http_connect_echo(http_port: int, echo_port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(LOCAL, http_port)
    try:
        target = f"{LOCAL}:{echo_port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.write(payload)
        return await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    finally:
        writer.close()


MIXES = [(RB, RB, RB), (RB, V2, RB), (V2, RB, V2)]


@pytest.mark.parametrize(
    "mix",
    MIXES,
    ids=["-".join(f"{r}={k[:2]}" for r, k in zip("ABC", m, strict=True)) for m in MIXES],
)
async def test_init_configs_run_as_a_chain(
    mix: tuple[str, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    echo: EchoServer,
) -> None:
    if V2 in mix and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    made = init(tmp_path, "--listen", LOCAL, "--no-qr", capsys=capsys)
    ports, folder = made["ports"], made["dir"]
    assert all(i["listen"] == LOCAL for i in load(folder / "b.json")["inbounds"])
    kind_a, kind_b, kind_c = mix
    async with (
        run_file(kind_b, folder / "b.json", ports["portal"]),
        run_file(kind_a, folder / "a.json", None),
        run_file(kind_c, folder / "c.json", ports["socks"]),
    ):
        await wait_chain(ports["socks"], echo.port)
        await socks_echo(ports["socks"], echo.port, 1_000_000)
        datagrams = [os.urandom(n) for n in (1, 1200)]
        assert await socks_udp_echo(ports["socks"], echo.port, datagrams) == datagrams
        payload = os.urandom(50_000)
        assert await http_connect_echo(ports["http"], echo.port, payload) == payload


# -- the share link ------------------------------------------------------------------------


def test_share_link_holds_the_client_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "c.png"
    made = init(tmp_path, "--qr-png", str(png), capsys=capsys)
    link = printed_link(made["stdout"])
    body = link.removeprefix("vmess://")
    assert len(body) % 4 == 0  # standard base64, padded, as v2rayN and v2rayNG write it
    fields = json.loads(base64.b64decode(body, validate=True))
    assert list(fields) == list(LINK_KEYS)
    assert all(isinstance(v, str) for v in fields.values())
    user = load(made["dir"] / "c.json")["outbounds"][0]["settings"]["vnext"][0]["users"][0]
    assert fields == {
        "v": "2", "ps": LOCAL, "add": LOCAL, "port": str(made["ports"]["client"]),
        "id": user["id"], "aid": "0", "scy": "auto", "net": "tcp", "type": "none",
        "host": "", "path": "", "tls": "", "sni": "",
    }  # fmt: skip
    assert decode_vmess_link(link) == fields

    # The QR code printed below the link is the link's, in half blocks.
    tail = made["stdout"].split(link, 1)[1].strip("\n").splitlines()
    assert tail[-1] == f"QR code written to {png}"
    tail = tail[:-1]
    assert tail and set("".join(tail)) <= set(" \u2580\u2584\u2588")
    assert tail == qr_text(link).splitlines()
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    zbar = shutil.which("zbarimg")
    if zbar:  # an independent decoder, when installed (zbar-tools)
        read = subprocess.run([zbar, "-q", "--raw", str(png)], capture_output=True, text=True)
        assert read.stdout.strip() == link

    # `raybridge link -c c.json` prints the same link and QR code again.
    out = rb("link", "-c", str(made["dir"] / "c.json"))
    assert out.returncode == 0, out.stderr
    assert printed_link(out.stdout) == link
    assert out.stdout.split(link, 1)[1].strip("\n").splitlines() == tail
    # --decode shows the JSON.
    out = rb("link", "--decode", link)
    assert out.returncode == 0 and json.loads(out.stdout) == fields


def test_link_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def link(*args: str) -> tuple[int, str]:
        code, _, err = call(capsys, monkeypatch, "link", *args)
        return code, err

    server = tmp_path / "server.json"
    server.write_text('{"inbounds": [], "outbounds": [{"protocol": "freedom"}]}')
    code, err = link("-c", str(server))
    assert code == 1 and "no VMess outbound" in err
    kcp = tmp_path / "kcp.json"
    kcp.write_text(
        '{"outbounds": [{"protocol": "vmess", "settings": {"vnext": [{"address": "a", "port": 1,'
        ' "users": [{"id": "x"}]}]}, "streamSettings": {"network": "kcp"}}]}'
    )
    code, err = link("-c", str(kcp))
    assert code == 1 and '"kcp"' in err and "kcp.json" in err
    code, err = link("-c", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"outbounds": [\n  {"protocol": "vmess",}\n]}')
    code, err = link("-c", str(broken))
    assert code == 1 and "broken.json:2" in err
    for bad, why in [
        ("vmess://!!!", "not base64"),
        ("vless://abc", "not a vmess:// link"),
        ("vmess://" + base64.b64encode(b"[1]").decode(), "not an object"),
        ("vmess://" + base64.b64encode(b'{"add": "a"}').decode(), '"port"'),
        ("vmess://b831381d-6324@h:1?security=auto", "only v2rayN's"),
    ]:
        code, err = link("--decode", bad)
        assert code == 1 and why in err, (bad, err)
    code, err = link()
    assert code == 2 and "-c FILE" in err


# -- refusing, bad input, interactive ------------------------------------------------------


def test_overwrite_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = init(tmp_path, "--no-qr", capsys=capsys)
    args = ["--portal-address", "h.example", "--portal-port", "2000", "--out", str(made["dir"])]
    before = (made["dir"] / "b.json").read_text()
    out = rb("init", *args)
    assert out.returncode == 1
    assert "already exist" in out.stderr and "--force" in out.stderr
    assert (made["dir"] / "b.json").read_text() == before
    out = rb("init", *args, "--force", "--no-qr")
    assert out.returncode == 0, out.stderr
    assert (made["dir"] / "b.json").read_text() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing --portal-address, --portal-port, --out"),
        (["--portal-address", "h", "--out", "x"], "missing --portal-port"),
        (["--portal-port", "70000"], "out of range"),
        (["--portal-port", "ten"], "not a port number"),
        (["--portal-address", "http://h.example"], "not a URL"),
        (["--portal-address", "h.example:443"], "give the port separately"),
        (["--portal-address", "bad host"], "neither an IP address nor a host name"),
        (["--domain", "10.0.0.1"], "not an IP address"),
        (["--listen", "everywhere"], "--listen takes an IP address"),
        (["--portal-address", "h", "--portal-port", "9", "--client-port", "9", "--out", "x"],
         "both 9"),
        (["--portal-address", "h", "--portal-port", "65535", "--out", "x"], "--client-port"),
    ],
)  # fmt: skip
def test_bad_input_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = call(capsys, monkeypatch, "init", *args)
    assert code == 2
    assert message in err, err
    assert "usage: raybridge init" in err
    assert not list(tmp_path.iterdir())


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    out = rb("init", "--portal-address", "h", "--portal-port", "1", "--out", str(tmp_path / "f"))
    assert out.returncode == 1 and "not a directory" in out.stderr


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ask_with_streams() -> None:
    out = io.StringIO()
    assert ask("Port", parse_port, "16823", inp=_Tty("\n"), out=out) == 16823
    assert out.getvalue() == "Port [16823]: "
    out = io.StringIO()
    assert ask("Port", parse_port, None, inp=_Tty("\nx\n99999\n81\n"), out=out) == 81
    assert out.getvalue().count("Port: ") == 4
    assert "an answer is required" in out.getvalue() and "out of range" in out.getvalue()
    with pytest.raises(EOFError):
        ask("Port", parse_port, None, inp=_Tty("x\n"), out=io.StringIO())


def test_interactive_with_streams(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="raybridge")
    cli_sub = parser.add_subparsers(dest="command")
    from raybridge.init import add_parsers

    add_parsers(cli_sub)
    args = parser.parse_args(["init", "--no-qr"])
    answers = f"\n203.0.113.7\n\n\n\n{tmp_path / 'x'}\n"
    prompts, stdout = io.StringIO(), io.StringIO()
    assert cmd_init(args, stdin=_Tty(answers), stdout=stdout, prompts=prompts) == 0
    assert "Portal address (B's public IP or host name): " in prompts.getvalue()
    assert "an answer is required" in prompts.getvalue()
    assert "[16823]" in prompts.getvalue() and "[16824]" in prompts.getvalue()
    assert "Transport: tcp, tls, ws (behind nginx), wss or h2 [tcp]: " in prompts.getvalue()
    b = load(tmp_path / "x" / "b.json")
    assert [i["port"] for i in b["inbounds"]] == [16823, 16824]
    assert (
        load(tmp_path / "x" / "c.json")["outbounds"][0]["settings"]["vnext"][0]["address"]
        == "203.0.113.7"
    )
    # Input that ends before the answers do: cancelled, nothing written.
    args = parser.parse_args(["init", "--out", str(tmp_path / "y")])
    assert cmd_init(args, stdin=_Tty(""), stdout=stdout, prompts=prompts) == 1
    assert not (tmp_path / "y").exists()


def test_interactive_in_a_terminal(tmp_path: Path) -> None:
    """Through a pseudo-terminal, as a user types: a bad answer is asked again."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CMD, "init", "--portal-port", "3000"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        close_fds=True,
        env={**os.environ, "TERM": "dumb"},
    )
    os.close(slave)
    seen = b""

    def expect(text: str, timeout: float = 20.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([master], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {text!r} in {seen.decode(errors='replace')!r}")
            try:
                seen += os.read(master, 65536)
            except OSError:  # the child closed the terminal
                raise AssertionError(f"no {text!r} in {seen!r}") from None

    try:
        expect("Portal address (B's public IP or host name): ")
        os.write(master, b"not a host!\n")
        expect("neither an IP address nor a host name")
        os.write(master, b"portal.example\n")
        expect("Port on B for clients [3001]: ")
        os.write(master, b"\n")
        expect("Transport: tcp, tls, ws (behind nginx), wss or h2 [tcp]: ")
        os.write(master, b"\n")
        expect("Write the configs to [raybridge-config]: ")
        os.write(master, b"\n")
        expect("vmess://")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    folder = tmp_path / "raybridge-config"
    b = load(folder / "b.json")
    assert [i["port"] for i in b["inbounds"]] == [3000, 3001]
    assert load(folder / "a.json")["outbounds"][0]["settings"]["vnext"][0]["address"] == (
        "portal.example"
    )
    link = decode_vmess_link(re.findall(rb"vmess://\S+", seen)[0].decode())
    assert (link["add"], link["port"]) == ("portal.example", "3001")


def test_not_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    out = rb("init", "--portal-address", "h.example")
    assert out.returncode == 2
    assert "missing --portal-port, --out (or run it in a terminal" in out.stderr


# -- transports (issue 13) -------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = os.path.exists(NGINX)

#: ``raybridge init`` options per case; ``{cert}``/``{key}`` stand for a test certificate for
#: 127.0.0.1 (tests/transports.py's, signed by a CA that is not in the system roots).
TRANSPORT_CASES: dict[str, tuple[str, ...]] = {
    "tcp": (),
    "tls-self": ("--transport", "tls", "--self-signed"),
    "wss-self": ("--transport", "wss", "--self-signed"),
    "h2-self": ("--transport", "h2", "--self-signed"),
    "ws-self": ("--transport", "ws", "--self-signed"),
    "tls-cert": ("--transport", "tls", "--cert", "{cert}", "--key", "{key}"),
    "wss-cert": ("--transport", "wss", "--cert", "{cert}", "--key", "{key}"),
    "h2-cert": ("--transport", "h2", "--cert", "{cert}", "--key", "{key}"),
    "ws-cert": ("--transport", "ws", "--cert", "{cert}", "--key", "{key}"),
    "ws-none": ("--transport", "ws"),
}
NETWORKS = {"tls": "tcp", "wss": "ws", "ws": "ws", "h2": "http"}


@pytest.fixture
def certs(tmp_path: Path) -> Any:
    from tests.transports import write_certs

    folder = tmp_path / "certs"
    folder.mkdir()
    return write_certs(str(folder), (LOCAL,))


def case_args(case: str, certs: Any, *extra: str) -> list[str]:
    args = [a.format(cert=certs.cert_file, key=certs.key_file) for a in TRANSPORT_CASES[case]]
    if case.startswith("ws-"):
        args += ["--nginx-port", str(free_port())]
    return [*args, *extra]


def stream_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    return entry.get("streamSettings")


def pem_text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", list(TRANSPORT_CASES))
def test_transport_configs_validate_and_have_the_shapes(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], certs: Any
) -> None:
    from cryptography import x509

    made = init(tmp_path, "--no-qr", *case_args(case, certs), capsys=capsys)
    folder, ports = made["dir"], made["ports"]
    transport = case.split("-")[0]
    self_signed = case.endswith("-self")
    expected = {"a.json", "b.json", "c.json"}
    if self_signed:
        expected |= {"ca.pem", "portal.pem", "portal-key.pem"}
    if transport == "ws":
        expected.add("nginx.conf")
    assert {p.name for p in folder.iterdir()} == expected
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path  # keys and ids: the owner's only
        assert str(path) in made["stdout"]
    for name in ("a.json", "b.json", "c.json"):
        path = folder / name
        assert cli.main(["test", "-c", str(path)]) == 0
        result = capsys.readouterr()
        assert "Configuration OK" in result.out
        assert "warning" not in result.err.lower(), result.err
        if HAVE_V2RAY:
            v2 = subprocess.run(
                [V2RAY, "-test", "-config", str(path)], capture_output=True, text=True, timeout=30
            )
            assert v2.returncode == 0, v2.stdout + v2.stderr
    assert "warning" not in made["stderr"].lower()
    a, b, c = (load(folder / n) for n in ("a.json", "b.json", "c.json"))
    tunnel, proxy = a["outbounds"][0], c["outbounds"][0]
    if transport == "tcp":
        assert stream_of(tunnel) is stream_of(proxy) is None
        assert all(stream_of(i) is None for i in b["inbounds"])
        assert "Transport: bare TCP" in made["stdout"]
        return

    # B: both inbounds on the transport; behind nginx, plain WebSocket on loopback.
    listen = LOCAL if transport == "ws" else "0.0.0.0"
    assert [(i["listen"], i["port"]) for i in b["inbounds"]] == [
        (listen, ports["portal"]),
        (listen, ports["client"]),
    ]
    served = [stream_of(i) for i in b["inbounds"]]
    assert all(st is not None and st["network"] == NETWORKS[transport] for st in served)
    paths = []
    for st in served:
        assert st is not None
        if transport == "ws":
            assert "security" not in st and "tlsSettings" not in st
        else:
            assert st["security"] == "tls"
            (entry,) = st["tlsSettings"]["certificates"]
            assert entry["usage"] == "encipherment"
            if self_signed:  # inline: b.json works wherever it is deployed
                assert pem_text(entry["certificate"]) == (folder / "portal.pem").read_text()
                assert pem_text(entry["key"]) == (folder / "portal-key.pem").read_text()
            else:  # the given files, by absolute path
                assert (entry["certificateFile"], entry["keyFile"]) == (
                    certs.cert_file,
                    certs.key_file,
                )
        if st["network"] == "ws":
            paths.append(st["wsSettings"]["path"])
        elif st["network"] == "http":
            assert st["httpSettings"]["host"] == [LOCAL]
            paths.append(st["httpSettings"]["path"])
    if transport == "wss":
        assert all(st is not None and st["tlsSettings"]["alpn"] == ["http/1.1"] for st in served)
    if transport != "tls":  # random, unguessable, one per link
        assert len(paths) == 2 and paths[0] != paths[1]
        assert all(re.fullmatch(r"/[A-Za-z0-9_-]{16}", p) for p in paths), paths

    # A and C: TLS to B (or to nginx), checked for the portal address.
    for index, (outbound, which) in enumerate(((tunnel, "portal"), (proxy, "client"))):
        server = outbound["settings"]["vnext"][0]
        dial = case_args_port(made, transport, which)
        assert (server["address"], server["port"]) == (LOCAL, dial)
        st = stream_of(outbound)
        assert st is not None
        assert st["network"] == ("ws" if transport == "ws" else NETWORKS[transport])
        assert st["security"] == "tls"
        tls = st["tlsSettings"]
        assert tls["serverName"] == LOCAL and "allowInsecure" not in tls
        if self_signed:
            (trusted,) = tls["certificates"]
            assert trusted["usage"] == "verify" and tls["disableSystemRoot"] is True
            assert pem_text(trusted["certificate"]) == (folder / "ca.pem").read_text()
        else:
            assert "certificates" not in tls  # a real certificate: the system roots
        if st["network"] == "ws":
            assert st["wsSettings"] == {"path": paths[index], "headers": {"Host": LOCAL}}
        elif st["network"] == "http":
            assert st["httpSettings"] == {"host": [LOCAL], "path": paths[index]}
    if self_signed:
        ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        leaf = x509.load_pem_x509_certificate((folder / "portal.pem").read_bytes())
        leaf.verify_directly_issued_by(ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [LOCAL]
        assert "cannot carry the private CA" in made["stdout"]
    if transport == "ws":
        text = (folder / "nginx.conf").read_text()
        assert f"proxy_pass http://{LOCAL}:{ports['portal']};" in text
        assert f"location = {paths[0]} {{" in text and f"location = {paths[1]} {{" in text
        assert "Ports " in made["stdout"] and "stay closed" in made["stdout"]
        if case == "ws-none":
            assert "/etc/letsencrypt/live/127.0.0.1/fullchain.pem" in text
            assert "placeholders" in made["stdout"]
        elif case == "ws-cert":
            assert f"ssl_certificate {certs.cert_file};" in text
        else:
            assert f"ssl_certificate {folder.resolve() / 'portal.pem'};" in text
    else:
        assert f"Open TCP ports {ports['portal']} and {ports['client']}" in made["stdout"]


def case_args_port(made: dict[str, Any], transport: str, which: str) -> int:
    """The port A (``which`` "portal") or C ("client") dials: B's, or nginx's."""
    if transport != "ws":
        return int(made["ports"][which])
    found = re.search(r"nginx on \S+:(\d+)", made["stdout"])
    assert found, made["stdout"]
    return int(found.group(1))


def nginx_main_conf(directory: Path, server_block: Path) -> Path:
    """A whole nginx.conf around ``server_block`` (init writes only a ``server``), with
    everything nginx writes inside ``directory``."""
    d = directory
    conf = d / "main.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\n"
        f"pid {d}/nginx.pid;\nevents {{\n    worker_connections 256;\n}}\nhttp {{\n"
        f"    access_log {d}/access.log;\n    client_body_temp_path {d}/client_body;\n"
        f"    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n"
        f"    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
        f"    include {server_block};\n}}\n"
    )
    return conf


def loopback_server_block(folder: Path, directory: Path) -> Path:
    """init's nginx.conf with its ``listen PORT ssl;`` bound to 127.0.0.1 (the tests listen
    on loopback only)."""
    text = (folder / "nginx.conf").read_text()
    text, count = re.subn(r"^(\s*listen )(\d+ ssl;)", rf"\g<1>{LOCAL}:\g<2>", text, flags=re.M)
    assert count == 1, text
    block = directory / "server.conf"
    block.write_text(text)
    return block


@pytest.mark.skipif(not HAVE_NGINX, reason="needs nginx")
@pytest.mark.parametrize("case", ["ws-cert", "ws-self"])
def test_nginx_accepts_the_server_block(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], certs: Any
) -> None:
    made = init(tmp_path, "--no-qr", *case_args(case, certs), capsys=capsys)
    work = tmp_path / "nginx"
    work.mkdir()
    conf = nginx_main_conf(work, made["dir"] / "nginx.conf")  # as written: listen 0.0.0.0
    out = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test is successful" in out.stderr


@contextlib.contextmanager
def running_nginx(conf: Path, directory: Path, port: int) -> Any:
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(directory), "-e", str(directory / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (directory / "error.log").read_text()
            try:
                with socket.create_connection((LOCAL, port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc)


CHAINS = [
    ("tls-self", (RB, RB, RB)),
    ("wss-self", (RB, RB, RB)),
    ("h2-self", (RB, RB, RB)),
    ("ws-self", (RB, RB, RB)),
    ("wss-self", (V2, RB, V2)),
    ("h2-self", (RB, V2, RB)),
    ("tls-self", (V2, RB, RB)),
]


@pytest.mark.parametrize(
    ("case", "mix"),
    CHAINS,
    ids=[
        f"{c}-" + "-".join(f"{r}={k[:2]}" for r, k in zip("ABC", m, strict=True)) for c, m in CHAINS
    ],
)
async def test_transport_configs_run_as_a_chain(
    case: str,
    mix: tuple[str, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    certs: Any,
) -> None:
    """The written files, unchanged, as the reverse chain A-B-C (behind a real nginx for
    ws), with bytes checked both ways and UDP."""
    if V2 in mix and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    if case.startswith("ws-") and not HAVE_NGINX:
        pytest.skip("needs nginx")
    made = init(tmp_path, "--no-qr", *case_args(case, certs), capsys=capsys)
    ports, folder = made["ports"], made["dir"]
    kind_a, kind_b, kind_c = mix

    with contextlib.ExitStack() as stack:
        if case.startswith("ws-"):
            work = tmp_path / "nginx"
            work.mkdir()
            conf = nginx_main_conf(work, loopback_server_block(folder, work))
            stack.enter_context(running_nginx(conf, work, case_args_port(made, "ws", "client")))
        async with EchoServer() as echo:
            async with (
                run_file(kind_b, folder / "b.json", ports["portal"]),
                run_file(kind_a, folder / "a.json", None),
                run_file(kind_c, folder / "c.json", ports["socks"]),
            ):
                await wait_chain(ports["socks"], echo.port)
                await socks_echo(ports["socks"], echo.port, 2_000_000)
                datagrams = [os.urandom(n) for n in (1, 1200)]
                assert await socks_udp_echo(ports["socks"], echo.port, datagrams) == datagrams


@pytest.mark.parametrize("case", list(TRANSPORT_CASES))
def test_transport_share_link_round_trip(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], certs: Any
) -> None:
    from raybridge.share_link import outbound_from_link

    made = init(tmp_path, "--no-qr", *case_args(case, certs), capsys=capsys)
    link = printed_link(made["stdout"])
    fields = decode_vmess_link(link)
    proxy = load(made["dir"] / "c.json")["outbounds"][0]
    transport = case.split("-")[0]
    st = stream_of(proxy) or {}
    path = {"ws": st.get("wsSettings", {}), "http": st.get("httpSettings", {})}.get(
        st.get("network", "tcp"), {}
    ).get("path", "")
    tls = transport != "tcp"
    assert {k: fields[k] for k in ("net", "type", "host", "path", "tls", "sni")} == {
        "net": {"tcp": "tcp", "tls": "tcp", "ws": "ws", "wss": "ws", "h2": "h2"}[transport],
        "type": "none",
        "host": LOCAL if transport in ("ws", "wss", "h2") else "",
        "path": path,
        "tls": "tls" if tls else "",
        "sni": LOCAL if tls else "",
    }
    assert list(fields) == list(LINK_KEYS)
    # The link gives back C's outbound, but for the private CA, which a link cannot carry.
    expected = json.loads(json.dumps(proxy))
    if case.endswith("-self"):
        for key in ("certificates", "disableSystemRoot"):
            del expected["streamSettings"]["tlsSettings"][key]
    assert outbound_from_link(fields) == expected
    # And `raybridge link -c c.json` prints the same link.
    assert cli.main(["link", "-c", str(made["dir"] / "c.json"), "--no-qr"]) == 0
    assert printed_link(capsys.readouterr().out) == link
    assert cli.main(["link", "--decode", link, "--outbound"]) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_given_paths_and_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = init(tmp_path, "--no-qr", "--transport", "ws", "--path", "client-ws", "--bridge-path",
                "/bridge/ws", "--nginx-port", "8443", capsys=capsys)  # fmt: skip
    a, b, c = (load(made["dir"] / n) for n in ("a.json", "b.json", "c.json"))
    assert [i["streamSettings"]["wsSettings"]["path"] for i in b["inbounds"]] == [
        "/bridge/ws",
        "/client-ws",  # the leading / added, as V2Ray does
    ]
    assert a["outbounds"][0]["streamSettings"]["wsSettings"]["path"] == "/bridge/ws"
    assert c["outbounds"][0]["settings"]["vnext"][0]["port"] == 8443
    nginx = (made["dir"] / "nginx.conf").read_text()
    assert "listen 8443 ssl;" in nginx and "location = /client-ws {" in nginx
    assert "Open TCP port 8443 to B" in made["stdout"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transport", "tls"], "--transport tls needs TLS: give --cert FILE --key FILE"),
        (["--transport", "h2"], "or --self-signed"),
        (["--transport", "wss", "--cert", "c.pem"], "--cert and --key go together"),
        (["--transport", "wss", "--key", "k.pem"], "only --key was given"),
        (["--transport", "tls", "--self-signed", "--cert", "c", "--key", "k"], "not both"),
        (["--self-signed"], "--self-signed: not with --transport tcp"),
        (["--transport", "tls", "--self-signed", "--path", "/x"], "TCP+TLS has no path"),
        (["--transport", "wss", "--self-signed", "--nginx-port", "8443"],
         "--nginx-port goes with --transport ws"),
        (["--transport", "ws", "--path", "/x", "--bridge-path", "x"], "different paths"),
        (["--transport", "ws", "--nginx-port", "2000"], "both listen on port 2000"),
        (["--transport", "udp"], "unknown transport 'udp'"),
        (["--transport", "ws", "--path", "/a b"], "not a usable path"),
        (["--transport", "ws", "--path", "/a?ed=2048"], "no query"),
    ],
)  # fmt: skip
def test_transport_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["--portal-address", "h.example", "--portal-port", "2000", "--out", "x"]
    code, _, err = call(capsys, monkeypatch, "init", *base, *args)
    assert code == 2, err
    assert message in err, err
    assert "usage: raybridge init" in err
    assert not list(tmp_path.iterdir())


def test_certificate_file_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, certs: Any
) -> None:
    from raybridge.certs import make_ca

    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(make_ca().key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    unreadable = tmp_path / "missing.pem"
    out = tmp_path / "out"
    base = ["init", "--portal-address", LOCAL, "--portal-port", "2000", "--out", str(out)]
    for cert, key, message in [
        (unreadable, certs.key_file, f"cannot read --cert {unreadable}: No such file"),
        (certs.cert_file, tmp_path, f"cannot read --key {tmp_path}"),
        (junk, certs.key_file, f"--cert {junk} is not a PEM certificate"),
        (certs.cert_file, junk, f"--key {junk} is not an unencrypted PEM private key"),
        (certs.cert_file, other_key, "is not the private key of --cert"),
    ]:
        code, _, err = call(
            capsys, monkeypatch, *base, "--transport", "tls", "--cert", str(cert), "--key", str(key)
        )
        assert code == 1 and message in err, err
        assert not out.exists()
    # A certificate for another name: written, with a warning (A and C would refuse it).
    code, _, err = call(
        capsys, monkeypatch, "init", "--portal-address", "vps.example.com", *base[3:],
        "--transport", "wss", "--cert", certs.cert_file, "--key", certs.key_file, "--no-qr",
    )  # fmt: skip
    assert code == 0 and "does not name vps.example.com" in err, err


def test_existing_certificate_files_need_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "portal-key.pem").write_text("mine")
    args = ["init", "--portal-address", LOCAL, "--portal-port", "2000", "--out", str(out),
            "--transport", "tls", "--self-signed", "--no-qr"]  # fmt: skip
    assert cli.main(args) == 1
    assert "portal-key.pem already exists" in capsys.readouterr().err
    assert (out / "portal-key.pem").read_text() == "mine"
    assert not (out / "b.json").exists()
    assert cli.main([*args, "--force"]) == 0
    assert (out / "portal-key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (out / "portal-key.pem").stat().st_mode & 0o777 == 0o600


def test_interactive_asks_for_the_transport_and_certificate(tmp_path: Path, certs: Any) -> None:
    parser = argparse.ArgumentParser(prog="raybridge")
    from raybridge.init import add_parsers

    add_parsers(parser.add_subparsers(dest="command"))
    # wss, then the default answer to the certificate question: self-signed.
    args = parser.parse_args(["init", "--no-qr"])
    answers = f"{LOCAL}\n\n\nwss\n\n{tmp_path / 'x'}\n"
    prompts, stdout = io.StringIO(), io.StringIO()
    assert cmd_init(args, stdin=_Tty(answers), stdout=stdout, prompts=prompts) == 0
    assert "B's TLS certificate file (PEM), or self-signed [self-signed]: " in prompts.getvalue()
    assert (tmp_path / "x" / "ca.pem").exists()
    assert load(tmp_path / "x" / "c.json")["outbounds"][0]["streamSettings"]["network"] == "ws"
    # h2 with a certificate file: a bad transport and an unreadable file are asked again.
    args = parser.parse_args(["init", "--no-qr"])
    answers = (
        f"{LOCAL}\n\n\nquic\nh2\n{tmp_path / 'nope.pem'}\n{certs.cert_file}\n"
        f"{certs.key_file}\n{tmp_path / 'y'}\n"
    )
    prompts = io.StringIO()
    assert cmd_init(args, stdin=_Tty(answers), stdout=stdout, prompts=prompts) == 0
    assert "unknown transport 'quic'" in prompts.getvalue()
    assert "cannot read" in prompts.getvalue() and "Its private key file: " in prompts.getvalue()
    b = load(tmp_path / "y" / "b.json")
    entry = b["inbounds"][0]["streamSettings"]["tlsSettings"]["certificates"][0]
    assert entry["certificateFile"] == certs.cert_file
    assert not (tmp_path / "y" / "ca.pem").exists()
