"""The status server: /metrics in Prometheus' format, /api/status, and the dashboard in a
real headless Chromium."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raybridge.status import parse_address
from tests.support import (
    EchoServer,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    socks_echo,
)
from tests.test_reverse_chain import wait_chain

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def get(port: int, path: str) -> bytes:
    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return bytes(r.read())

    return await asyncio.to_thread(fetch)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


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


def test_metrics_and_status_follow_traffic() -> None:
    async def main() -> None:
        status_port = free_port()
        b, a, c, s_port = chain_configs(status_port)
        async with EchoServer() as echo, node(b), node(c):
            assert (
                json.loads(await get(status_port, "/api/status"))["portals"][0]["online"] is False
            )
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
            await asyncio.sleep(0.2)
            after_stop = samples((await get(status_port, "/metrics")).decode())
            assert after_stop[online] == 0
            assert (await get(status_port, "/")).startswith(b"<!doctype html>")

    asyncio.run(main())


def test_status_server_is_off_by_default_and_refuses_other_methods() -> None:
    async def main() -> None:
        status_port = free_port()
        b, _, _, _ = chain_configs(status_port)
        del b["raybridge"]
        async with node(b) as n:
            assert n.status_server is None
        b["raybridge"] = {"status": f"127.0.0.1:{status_port}"}
        async with node(b) as n:
            assert n.status_server is not None
            assert n.status_server.handle("POST", "/metrics")[0] == 405
            assert n.status_server.handle("GET", "/nope")[0] == 404

    asyncio.run(main())


@pytest.mark.skipif(
    CHROMIUM is None or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's chromium and the playwright package",
)
def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async def main() -> None:
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
                            await asyncio.sleep(0.1)

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

    asyncio.run(main())


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
