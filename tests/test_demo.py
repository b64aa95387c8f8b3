"""``raybridge demo``: the README's first command, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from raybridge.demo import fetch_via_socks


def test_demo_check(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raybridge", "demo", "--check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]
    # The configs it wrote pass validation, with nothing to warn about.
    for name in ("a.json", "b.json", "c.json"):
        test = subprocess.run(
            [sys.executable, "-m", "raybridge", "test", "-c", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert test.returncode == 0, test.stderr
        assert "warning" not in test.stderr, test.stderr
        # They hold the UUIDs: owner only.
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_demo_portal_is_not_hijackable(tmp_path: Path) -> None:
    """The demo's portal gives the bridge an inbound and a user of its own and refuses the
    tunnel domain to clients: no client can register as a bridge, wherever it listens (the
    old one, the seed's portal, let any client do it: issue 11, finding 12)."""
    from raybridge.config.checks import check_config
    from raybridge.config.loader import load_config_text
    from raybridge.demo import demo_configs

    configs = demo_configs(8001, 8002, 1080, 1081, bridge_id=str(uuid.uuid4()),
                           client_id=str(uuid.uuid4()))  # fmt: skip
    portal = configs["b.json"]
    for inbound in portal["inbounds"]:
        inbound["listen"] = "0.0.0.0"
    assert check_config(load_config_text(json.dumps(portal), "b.json")) == []
    rules = portal["routing"]["rules"]
    refused = [r for r in rules if r.get("domain") and r["outboundTag"] != "portal"]
    assert refused and all(r["inboundTag"] != ["bridges"] for r in refused)


async def test_demo_serves_until_interrupted() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raybridge", "demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "demo exited early"
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        match = re.search(r"--socks5-hostname 127\.0\.0\.1:(\d+) http://127\.0\.0\.1:(\d+)/", text)
        assert match, text
        for _ in range(3):  # by hand, as the demo says
            body = await fetch_via_socks(int(match[1]), "127.0.0.1", int(match[2]))
            assert b"Hello from inside A's network" in body
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
