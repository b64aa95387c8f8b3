"""The status server: /metrics in Prometheus' format, /api/status, and the dashboard in a
real headless Chromium."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

from raybridge.status import parse_address
from tests.status_client import CHROMIUM, get, headless_page, samples
from tests.support import (
    EchoServer,
    StartNode,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    server_config,
    socks_echo,
    until,
    wait_chain,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_parse_address() -> None:
    assert parse_address("9090") == ("127.0.0.1", 9090)
    assert parse_address(":9090") == ("127.0.0.1", 9090)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9090") == ("::1", 9090)
    with pytest.raises(ValueError):
        parse_address("localhost:http")


def chain_configs(status_port: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b = portal_config(t_port, c_port, ua, uc)
    b["raybridge"] = {"status": f"127.0.0.1:{status_port}"}
    return b, bridge_config(t_port, ua), client_config(s_port, c_port, uc), s_port


async def test_metrics_and_status_follow_traffic(echo: EchoServer, start_node: StartNode) -> None:
    status_port = free_port()
    b, a, c, s_port = chain_configs(status_port)
    portal_node = await start_node(b)
    await start_node(c)
    assert json.loads(await get(status_port, "/api/status"))["portals"][0]["online"] is False
    async with node(a):
        await wait_chain(s_port, echo.port)
        before = samples((await get(status_port, "/metrics")).decode())
        await socks_echo(s_port, echo.port, 2_000_000)
        after = samples((await get(status_port, "/metrics")).decode())
        key = ("raybridge_connections_total", (("inbound", "external"),))
        assert after[key] == before[key] + 1
        down = ("raybridge_bytes_total", (("direction", "down"), ("inbound", "external")))
        assert after[down] - before[down] >= 2_000_000
        online = ("raybridge_online", (("role", "portal"), ("tag", "portal")))
        assert after[online] == 1
        assert after[("raybridge_tunnels", (("role", "portal"), ("tag", "portal")))] == 1
        assert ("raybridge_process_resident_memory_bytes", ()) in after
        status = json.loads(await get(status_port, "/api/status"))
        assert status["portals"][0]["online"] is True
        assert status["portals"][0]["tunnels"][0]["keepalives"] is True
    # the bridge is gone
    await until(lambda: not portal_node.portals[0].tunnels, 10, what="tunnel closed")
    after_stop = samples((await get(status_port, "/metrics")).decode())
    assert after_stop[online] == 0
    assert (await get(status_port, "/")).startswith(b"<!doctype html>")


async def test_status_server_is_off_by_default_and_refuses_other_methods(
    start_node: StartNode,
) -> None:
    status_port = free_port()
    b, _, _, _ = chain_configs(status_port)
    del b["raybridge"]
    async with node(b) as n:
        assert n.status_server is None
    b["raybridge"] = {"status": f"127.0.0.1:{status_port}"}
    n = await start_node(b)
    assert n.status_server is not None
    assert n.status_server.handle("POST", "/metrics")[0] == 405
    assert n.status_server.handle("GET", "/nope")[0] == 404


@pytest.mark.skipif(
    CHROMIUM is None or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's chromium and the playwright package",
)
async def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    status_port = free_port()
    b, a, c, s_port = chain_configs(status_port)
    errors: list[str] = []
    async with EchoServer() as echo, node(b), node(c), async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 420, "height": 900})
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"http://127.0.0.1:{status_port}/")
            state = page.locator('[data-portal="portal"] .state')
            await state.wait_for()
            assert await state.text_content() == "offline"
            a_node = node(a)
            await a_node.__aenter__()
            try:
                await wait_chain(s_port, echo.port)
                for _ in range(3):
                    await socks_echo(s_port, echo.port, 3_000_000)
                await page.wait_for_function(
                    "document.querySelector('[data-portal=\"portal\"] .state')"
                    ".textContent === 'online'",
                    timeout=10_000,
                )

                # Steady traffic for a few seconds, so the chart has something to show.
                async def traffic() -> None:
                    for _ in range(12):
                        await socks_echo(s_port, echo.port, 4_000_000)
                        await asyncio.sleep(0.1)  # kept: the traffic's pace

                await asyncio.gather(traffic(), page.wait_for_timeout(4000))
                # RAYBRIDGE_UPDATE_DOCS=1 refreshes the screenshot in docs/.
                shots = DOCS if os.environ.get("RAYBRIDGE_UPDATE_DOCS") else tmp_path
                await page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
                assert (shots / "dashboard.png").stat().st_size > 10_000
            finally:
                await a_node.__aexit__(None, None, None)
            await page.wait_for_function(
                "document.querySelector('[data-portal=\"portal\"] .state')"
                ".textContent === 'offline'",
                timeout=10_000,
            )
        finally:
            await browser.close()
    assert errors == []


@pytest.mark.interop
def test_v2ray_loads_configs_with_raybridge_keys(tmp_path: Path) -> None:
    """raybridge's own keys (the top-level "raybridge" section, "aeadForced",
    "blockPrivate") are ignored by V2Ray 4.34, so such configs still run there."""
    import subprocess

    from tests.support import HAVE_V2RAY, V2RAY

    if not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")
    config = portal_config(free_port(), free_port(), new_uuid(), new_uuid())
    config["raybridge"] = {"status": "127.0.0.1:9090", "muxMaxSessions": 64}
    config["inbounds"][0]["settings"]["aeadForced"] = True
    config["outbounds"][0]["settings"] = {"blockPrivate": True}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([V2RAY, "-test", "-config", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"Configuration OK" in out.stdout


# --------------------------------------------------------------------------- guards
# Issue 11: the status server answered any Host (DNS rebinding), had no token, and kept
# connections that never sent a request, without a cap.

TOKEN = "k7Qx-0123456789abcdef-ZZ"


def status_config(status: Any) -> dict[str, Any]:
    b, _, _, _ = chain_configs(0)
    b["raybridge"] = {"status": status}
    return b


def http_request(
    host: str | None,
    path: str = "/api/status",
    *,
    auth: str | None = None,
    version: str = "1.1",
    close: bool = True,
) -> bytes:
    lines = [f"GET {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    first, *fields = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(first.split()[1]), headers, body


async def ask(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (``Connection: close``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset), within 10 s."""
    try:
        while await asyncio.wait_for(reader.read(65536), 10):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def test_host_allow_list_refuses_other_names(start_node: StartNode) -> None:
    """DNS rebinding: a page of attacker.example re-points its name at 127.0.0.1; the
    browser then sends ``Host: attacker.example``. Only the server's own names get in."""
    port = free_port()
    b = status_config({"listen": f"127.0.0.1:{port}", "hosts": ["status.example.com"]})
    await start_node(b)
    good = [
        f"127.0.0.1:{port}",
        "127.0.0.1",
        "localhost",
        f"LocalHost.:{port}",
        f"[::1]:{port}",
        "status.example.com",
        "Status.Example.COM:443",
    ]
    for host in good:
        code, _, body = await ask(port, http_request(host))
        assert code == 200, host
        assert b"private.cloud.com" in body
    bad = [
        "attacker.example",
        f"attacker.example:{port}",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example",
        "status.example.com.attacker.example",
        "",
        "[::1",
        f"127.0.0.1:{port}x",
    ]
    for host in bad:
        for path in ("/", "/api/status", "/metrics"):
            code, headers, body = await ask(port, http_request(host, path))
            assert code == 421, (host, path)
            assert b"private.cloud.com" not in body and b"raybridge_" not in body
            assert headers["content-type"].startswith("text/plain")
    # No Host at all: 421 for HTTP/1.0; HTTP/1.1 requires one (400), and one only.
    assert (await ask(port, http_request(None, version="1.0")))[0] == 421
    assert (await ask(port, http_request(None)))[0] == 400
    two = http_request("127.0.0.1").replace(b"\r\n\r\n", b"\r\nHost: a.example\r\n\r\n")
    assert (await ask(port, two))[0] == 400


async def test_token_guards_every_path_but_the_static_page(start_node: StartNode) -> None:
    port = free_port()
    b = status_config({"listen": f"127.0.0.1:{port}", "token": TOKEN})
    await start_node(b)
    host = f"127.0.0.1:{port}"
    wrong = [None, "Bearer nope", "Bearer " + TOKEN[:-1] + "Y", "Basic " + TOKEN, TOKEN]
    for path in ("/api/status", "/metrics", "/nope", "/index.html?x"):
        for auth in wrong:
            if path == "/index.html?x":
                continue
            code, headers, body = await ask(port, http_request(host, path, auth=auth))
            assert code == 401, (path, auth)
            assert headers["www-authenticate"].startswith("Bearer")
            assert b"private.cloud.com" not in body and b"raybridge_" not in body
    code, _, body = await ask(port, http_request(host, auth="Bearer " + TOKEN))
    assert code == 200 and json.loads(body)["portals"][0]["domain"] == "private.cloud.com"
    code, _, body = await ask(port, http_request(host, "/metrics", auth="bearer " + TOKEN))
    assert code == 200 and b"raybridge_online" in body
    # The page holds no data: it loads without the token, then sends it (taken from
    # its URL fragment, which browsers never send) to /api/status as a header.
    for path in ("/", "/index.html?x"):
        code, _, page = await ask(port, http_request(host, path))
        assert code == 200 and page.startswith(b"<!doctype html>")
        assert b"#token=" in page and b'Authorization: "Bearer "' in page
    # The Host check comes first, token or not.
    assert (await ask(port, http_request("a.example", auth="Bearer " + TOKEN)))[0] == 421


async def test_cli_status_flag_keeps_the_configs_token() -> None:
    from raybridge.config.loader import load_config_text
    from raybridge.node import Node

    port = free_port()
    b = status_config({"listen": "127.0.0.1:1", "token": TOKEN})
    n = Node(load_config_text(json.dumps(b), "b.json"), status=f"127.0.0.1:{port}")
    await n.start()
    try:
        host = f"127.0.0.1:{port}"
        assert (await ask(port, http_request(host)))[0] == 401
        assert (await ask(port, http_request(host, auth="Bearer " + TOKEN)))[0] == 200
    finally:
        await n.close()


async def test_silent_slow_and_idle_connections_are_closed(start_node: StartNode) -> None:
    port = free_port()
    n = await start_node(status_config(f"127.0.0.1:{port}"))
    server = n.status_server
    assert server is not None
    server.read_timeout, server.idle_timeout = 0.2, 0.4
    silent, _ = await asyncio.open_connection("127.0.0.1", port)
    slow, slow_w = await asyncio.open_connection("127.0.0.1", port)
    slow_w.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends
    assert await closed_by_peer(silent)
    assert await closed_by_peer(slow)
    # Keep-alive: two requests on one connection, then closed once idle.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for path in ("/api/status", "/metrics"):
        writer.write(http_request(f"127.0.0.1:{port}", path, close=False))
        code, headers, _ = await read_response(reader)
        assert code == 200 and headers.get("connection") != "close"
    assert await closed_by_peer(reader)
    await until(lambda: not server.connections, 10, what="connections left open")
    writer.close()


async def test_connection_cap_closes_new_connections_and_logs_once() -> None:
    import logging

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    log = logging.getLogger("raybridge.status")
    records, level = Records(), log.level
    log.addHandler(records)
    log.setLevel(logging.WARNING)

    try:
        port = free_port()
        async with node(status_config(f"127.0.0.1:{port}")) as n:
            server = n.status_server
            assert server is not None
            server.max_connections, server.read_timeout = 3, 60.0
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await until(lambda: len(server.connections) == 3, 10, what="3 connections")
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await closed_by_peer(reader)
                writer.close()
            assert server.refused == 20
            capped = [line for line in records.lines if "connections" in line]
            assert len(capped) == 1, records.lines  # not one line per connection
            # The connections within the cap are still served.
            reader, writer = held[0]
            writer.write(http_request(f"127.0.0.1:{port}"))
            assert (await read_response(reader))[0] == 200
            for _, writer in held:
                writer.close()
            await until(lambda: not server.connections, 10, what="held connections gone")
            assert (await ask(port, http_request(f"127.0.0.1:{port}")))[0] == 200
    finally:
        log.removeHandler(records)
        log.setLevel(level)


def test_status_config_forms() -> None:
    from raybridge.config.loader import load_config_text
    from raybridge.config.model import RaybridgeOptions

    def options(status: Any) -> RaybridgeOptions:
        text = json.dumps({"outbounds": [{"protocol": "freedom"}], "raybridge": {"status": status}})
        found = load_config_text(text, "t.json").sections["raybridge"]
        assert isinstance(found, RaybridgeOptions)
        return found

    plain = options("127.0.0.1:9090")
    assert (plain.status, plain.status_token, plain.status_hosts) == ("127.0.0.1:9090", None, ())
    full = options({"listen": "0.0.0.0:9090", "token": TOKEN, "hosts": ["a.example", "[::1]"]})
    assert (full.status, full.status_token) == ("0.0.0.0:9090", TOKEN)
    assert full.status_hosts == ("a.example", "[::1]")
    assert TOKEN not in repr(full)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ({"listen": "127.0.0.1:9090", "token": ""}, "the token must be"),
        ({"listen": "127.0.0.1:9090", "token": "two words"}, "the token must be"),
        ({"token": TOKEN}, '"listen" is missing'),
        ({"listen": "nowhere"}, 'is not "host:port"'),
        ("nowhere", 'is not "host:port"'),
        ({"listen": "127.0.0.1:9090", "hosts": ["a b"]}, "is not a host name"),
        ({"listen": "127.0.0.1:9090", "tokn": TOKEN}, None),  # a warning, not an error
        (9090, 'expected "host:port" or {"listen"'),
    ],
)
def test_status_config_errors(status: Any, message: str | None) -> None:
    from raybridge.config import ConfigError
    from raybridge.config.loader import load_config_text

    text = json.dumps({"outbounds": [{"protocol": "freedom"}], "raybridge": {"status": status}})
    if message is None:
        config = load_config_text(text, "t.json")
        assert any('unknown key "tokn"' in w.message for w in config.warnings)
        return
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, "t.json")
    assert message in str(raised.value)
    assert "raybridge.status" in str(raised.value)


@pytest.mark.skipif(
    CHROMIUM is None or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's chromium and the playwright package",
)
async def test_dashboard_with_a_token_in_headless_chromium() -> None:
    port = free_port()
    b = status_config({"listen": f"127.0.0.1:{port}", "token": TOKEN})
    async with node(b), headless_page() as page:
        await page.goto(f"http://127.0.0.1:{port}/#token={TOKEN}")
        state = page.locator('[data-portal="portal"] .state')
        await state.wait_for()
        assert await state.text_content() == "offline"
        assert await page.locator("#conn").text_content() == "live"
        # Without the fragment the page loads but says what it needs.
        await page.goto("about:blank")
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function(
            "document.querySelector('#conn').textContent.includes('token')",
            timeout=10_000,
        )


async def test_status_shows_each_inbound_and_outbound_transport() -> None:
    from raybridge.status import status

    config = server_config(free_port(), new_uuid())
    config["inbounds"][0]["streamSettings"] = {
        "network": "ws",
        "wsSettings": {"path": "/ray"},
    }
    async with node(config) as n:
        data = status(n)
    (inbound,) = data["inbounds"]
    assert (inbound["tag"], inbound["transport"], inbound["connections"]) == (
        "vmess-in",
        "ws",
        0,
    )
    assert {o["tag"]: o["transport"] for o in data["outbounds"]} == {"direct": "tcp"}
