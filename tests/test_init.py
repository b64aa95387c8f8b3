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
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raybridge import cli
from raybridge.config.jsonc import parse
from raybridge.init import (
    LINK_KEYS,
    ask,
    cmd_init,
    decode_vmess_link,
    link_from_config,
    parse_port,
    qr_matrix,
    qr_text,
    vmess_link,
)
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    V2RAY,
    EchoServer,
    free_port,
    node,
    socks_echo,
    socks_udp_echo,
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
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


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
def test_init_configs_run_as_a_chain(
    mix: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if V2 in mix and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    made = init(tmp_path, "--listen", LOCAL, "--no-qr", capsys=capsys)
    ports, folder = made["ports"], made["dir"]
    assert all(i["listen"] == LOCAL for i in load(folder / "b.json")["inbounds"])
    kind_a, kind_b, kind_c = mix

    async def main() -> None:
        async with EchoServer() as echo:
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

    asyncio.run(main())


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


def test_qr_text_is_the_matrix() -> None:
    """Each text line holds two module rows; a drawn half is a light module."""
    link = vmess_link("vps.example.com", 443, "b831381d-6324-4d53-ad4f-8cda48b30811", name="ü")
    matrix = qr_matrix(link)
    rows: list[list[bool]] = []
    for line in qr_text(link).splitlines():
        rows.append([ch not in "\u2580\u2588" for ch in line])  # dark where the top is not drawn
        rows.append([ch not in "\u2584\u2588" for ch in line])
    assert rows[: len(matrix)] == matrix
    ascii_rows = qr_text(link, unicode=False).splitlines()
    assert [[line[i : i + 2] == "  " for i in range(0, len(line), 2)] for line in ascii_rows] == (
        matrix
    )


def test_link_from_other_client_configs() -> None:
    text = """// comments and V2Ray's case-insensitive keys
    {"Outbounds": [
      {"protocol": "freedom"},
      {"protocol": "VMess", "settings": {"vnext": [{"address": "h.example", "port": "8443",
        "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "alterId": 4,
                   "security": "chacha20-poly1305"}]}]},
       "streamSettings": {"network": "ws", "security": "tls",
         "tlsSettings": {"serverName": "sni.example"},
         "wsSettings": {"path": "/ray", "headers": {"Host": "cdn.example"}}}}
    ]}"""
    fields = decode_vmess_link(link_from_config(text, "x.json", name="mine"))
    assert fields["ps"] == "mine" and fields["add"] == "h.example" and fields["port"] == "8443"
    assert (fields["aid"], fields["scy"]) == ("4", "chacha20-poly1305")
    assert (fields["net"], fields["path"], fields["host"]) == ("ws", "/ray", "cdn.example")
    assert (fields["tls"], fields["sni"]) == ("tls", "sni.example")
    # The old single "outbound" key, and the server address as the default name.
    old = '{"outbound": {"protocol": "vmess", "settings": {"vnext": [{"address": "1.2.3.4", ' \
        '"port": 10086, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]}}}'  # fmt: skip
    fields = decode_vmess_link(link_from_config(old, "old.json"))
    assert (fields["ps"], fields["add"], fields["port"], fields["aid"]) == (
        "1.2.3.4", "1.2.3.4", "10086", "0",
    )  # fmt: skip


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
    answers = f"\n203.0.113.7\n\n\n{tmp_path / 'x'}\n"
    prompts, stdout = io.StringIO(), io.StringIO()
    assert cmd_init(args, stdin=_Tty(answers), stdout=stdout, prompts=prompts) == 0
    assert "Portal address (B's public IP or host name): " in prompts.getvalue()
    assert "an answer is required" in prompts.getvalue()
    assert "[16823]" in prompts.getvalue() and "[16824]" in prompts.getvalue()
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


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    from raybridge.init import write_qr_png

    path = tmp_path / "q.png"
    write_qr_png("vmess://abc", str(path), scale=2)
    data = path.read_bytes()
    width, height = int.from_bytes(data[16:20]), int.from_bytes(data[20:24])
    assert width == height == len(qr_matrix("vmess://abc", border=4)) * 2
    idat_len = int.from_bytes(data[33:37])
    assert data[37:41] == b"IDAT"
    pixels = zlib.decompress(data[41 : 41 + idat_len])
    assert len(pixels) == height * (1 + width)
