"""``raybridge demo``: the README's first command, as a user runs it."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
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
    # The configs it wrote pass validation.
    for name in ("a.json", "b.json", "c.json"):
        test = subprocess.run(
            [sys.executable, "-m", "raybridge", "test", "-c", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert test.returncode == 0, test.stderr


def test_demo_serves_until_interrupted() -> None:
    async def main() -> None:
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
            match = re.search(
                r"--socks5-hostname 127\.0\.0\.1:(\d+) http://127\.0\.0\.1:(\d+)/", text
            )
            assert match, text
            for _ in range(3):  # by hand, as the demo says
                body = await fetch_via_socks(int(match[1]), "127.0.0.1", int(match[2]))
                assert b"Hello from inside A's network" in body
        finally:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0

    asyncio.run(main())
