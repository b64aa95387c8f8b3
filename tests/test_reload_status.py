"""What the status server shows of reloads and drains: /api/status, /metrics and the
dashboard (in headless Chromium when there is one)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

from raybridge.cli import reload_files
from raybridge.node import Node
from tests.status_client import CHROMIUM, get, headless_page, samples
from tests.support import (
    EchoServer,
    StartNode,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    portal_config,
    socks_connect,
    until,
    wait_chain,
)


def metric(text: bytes, name: str, **labels: str) -> float:
    return samples(text.decode())[(name, tuple(sorted(labels.items())))]


async def test_status_shows_reloads_and_draining_bridges(
    tmp_path: Path, start_node: StartNode, echo: EchoServer
) -> None:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port, b_status, a_status = (free_port() for _ in range(5))
    b_conf = portal_config(t_port, c_port, ua, uc)
    b_conf["raybridge"] = {"status": f"127.0.0.1:{b_status}"}
    a_conf = bridge_config(t_port, ua)
    a_conf["raybridge"] = {"status": f"127.0.0.1:{a_status}", "drainTimeout": 60}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(b_conf))
    b: Node = await start_node(path.read_text(), str(path))
    a: Node = await start_node(a_conf, "A")
    await start_node(client_config(s_port, c_port, uc), "C")
    await wait_chain(s_port, echo.port)

    b_conf["routing"]["rules"].insert(
        0, {"type": "field", "domain": ["full:never.invalid"], "outboundTag": "direct"}
    )
    path.write_text(json.dumps(b_conf))
    assert (await reload_files(b, [str(path)], requested=0.0)).ok
    path.write_text("{")
    assert not (await reload_files(b, [str(path)], requested=0.0)).ok
    status = json.loads(await get(b_status, "/api/status"))
    ok, failed = status["reloads"]
    assert ok["ok"] and ok["changes"] == ["routing: 3 rules (were 2)"]
    assert not failed["ok"] and failed["error"].startswith(f"{path}:")
    metrics = await get(b_status, "/metrics")
    assert metric(metrics, "raybridge_reloads_total", result="ok") == 1
    assert metric(metrics, "raybridge_reloads_total", result="failed") == 1
    assert metric(metrics, "raybridge_last_reload_ok") == 0

    # A drains while a connection through it is open: both sides show it.
    reader, writer = await socks_connect(s_port, "127.0.0.1", echo.port)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    drained = asyncio.ensure_future(a.drain())
    try:
        await until(lambda: b.portals[0].tunnels[0].record.bridge_draining, what="B heard DRAIN")
        a_status_json = json.loads(await get(a_status, "/api/status"))
        assert a_status_json["state"] == "draining"
        assert a_status_json["bridges"][0]["draining"] is True
        status = json.loads(await get(b_status, "/api/status"))
        assert status["portals"][0]["draining_bridges"] == 1
        assert status["portals"][0]["tunnels"][0]["bridge_draining"] is True
        metrics = await get(b_status, "/metrics")
        assert metric(metrics, "raybridge_draining_bridges", role="portal", tag="portal") == 1
        assert metric(await get(a_status, "/metrics"), "raybridge_draining") == 1
        if CHROMIUM is not None and importlib.util.find_spec("playwright") is not None:
            await dashboard_shows(b_status, a_status)
        assert not drained.done()  # the connection is still open
    finally:
        writer.close()
    assert await asyncio.wait_for(drained, 30)


async def dashboard_shows(b_status: int, a_status: int) -> None:
    async with headless_page() as page:
        await page.goto(f"http://127.0.0.1:{b_status}/")
        ok = page.locator('[data-reload="ok"]')
        await ok.wait_for()
        assert "routing: 3 rules (were 2)" in str(await ok.text_content())
        failed = page.locator('[data-reload="failed"]')
        assert "b.json:1" in str(await failed.text_content())
        text: Any = await page.locator('[data-portal="portal"]').text_content()
        assert "bridge draining" in text
        await page.goto(f"http://127.0.0.1:{a_status}/")
        state = page.locator('[data-bridge="bridge"] .state')
        await state.wait_for()
        assert await state.text_content() == "draining"
        assert "draining" in str(await page.locator("#state").text_content())
