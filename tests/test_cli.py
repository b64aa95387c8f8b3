"""The command line: version, uuid, test, and run (as a subprocess, like a user would)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import EchoServer, free_port, socks_echo, wait_port_async

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "config" / "data"
CMD = [sys.executable, "-m", "raybridge"]


def rb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60)


def test_version_and_uuid() -> None:
    out = rb("version")
    assert out.returncode == 0 and out.stdout.startswith("raybridge ")
    out = rb("uuid")
    assert out.returncode == 0
    uuid.UUID(out.stdout.strip())


def test_test_accepts_examples_and_seed_a() -> None:
    for path in (ROOT / "examples" / "b.json", ROOT / "examples" / "c.json", DATA / "seed_a.json"):
        out = rb("test", "-c", str(path))
        assert out.returncode == 0, out.stderr
        assert "Configuration OK" in out.stdout


def test_test_rejects_seed_b_as_written() -> None:
    out = rb("test", "-c", str(DATA / "seed_b_as_written.json"))
    assert out.returncode != 0
    # The file, the line of the inbound that lacks it, and the field.
    assert 'seed_b_as_written.json:11: inbounds[0]: "protocol" is missing' in out.stderr


def test_test_reports_syntax_errors_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "inbounds": [\n    {"port": 1080,}\n  ]\n}\n')
    out = rb("test", "-c", str(bad))
    assert out.returncode != 0
    assert re.search(r"bad\.json:3: .*line 3", out.stderr), out.stderr


async def test_run_examples_as_subprocesses(tmp_path: Path) -> None:
    """The README's first command: B and C from examples/, here on free ports."""
    b_port, s_port, h_port = free_port(), free_port(), free_port()
    files = {}
    for name in ("b.json", "c.json"):
        text = (ROOT / "examples" / name).read_text()
        text = text.replace("10086", str(b_port)).replace("10800", str(s_port))
        text = text.replace("10801", str(h_port))
        files[name] = tmp_path / name
        files[name].write_text(text)
    procs = [
        await asyncio.create_subprocess_exec(
            *CMD, "run", "-c", str(files[name]), stderr=asyncio.subprocess.PIPE
        )
        for name in ("b.json", "c.json")
    ]
    try:
        await wait_port_async(b_port)
        await wait_port_async(s_port)
        async with EchoServer() as echo:
            await socks_echo(s_port, echo.port, 1_000_000)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 10) for proc in procs]
        logs = [(await proc.stderr.read()).decode() for proc in procs if proc.stderr]
    assert codes == [0, 0], logs
    # B's access log (examples/b.json enables it) names the connection.
    assert re.search(r"accepted tcp:127\.0\.0\.1:\d+ \[vmess-in -> direct\]", logs[0]), logs[0]


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        ["raybridge", "version"], capture_output=True, text=True, env=os.environ, timeout=60
    )
    assert out.returncode == 0


async def test_json_log_format(tmp_path: Path) -> None:
    """--log-format json: one JSON object per line, access lines included."""

    port = free_port()
    config = tmp_path / "n.json"
    config.write_text(
        json.dumps(
            {
                "log": {"access": "", "loglevel": "info"},
                "inbounds": [
                    {"tag": "in", "protocol": "socks", "listen": "127.0.0.1", "port": port}
                ],
                "outbounds": [{"tag": "out", "protocol": "freedom"}],
            }
        )
    )

    proc = await asyncio.create_subprocess_exec(
        *CMD, "run", "-c", str(config), "--log-format", "json",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_port_async(port)
        async with EchoServer() as echo:
            await socks_echo(port, echo.port, 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.stderr is not None
    lines = (await proc.stderr.read()).decode().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    accepted = [e for e in entries if e["type"] == "access" and e["status"] == "accepted"]
    assert accepted and accepted[0]["inbound"] == "in" and accepted[0]["outbound"] == "out"
    assert all({"time", "level", "message"} <= e.keys() for e in entries)


async def test_logs_to_files_and_several_configs(tmp_path: Path) -> None:
    """Access and error logs go to the files the config names; two -c files merge as in
    V2Ray (here: the second file's log section replaces the first's)."""

    port = free_port()
    base = tmp_path / "base.json"
    base.write_text(
        json.dumps(
            {
                "log": {"loglevel": "none"},
                "inbounds": [
                    {"tag": "in", "protocol": "socks", "listen": "127.0.0.1", "port": port}
                ],
                "outbounds": [{"tag": "out", "protocol": "freedom"}],
            }
        )
    )
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    logs = tmp_path / "logs.json"
    logs.write_text(
        json.dumps({"log": {"access": str(access), "error": str(error), "loglevel": "info"}})
    )

    proc = await asyncio.create_subprocess_exec(
        *CMD, "run", "-c", str(base), "-c", str(logs), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_port_async(port)
        async with EchoServer() as echo:
            await socks_echo(port, echo.port, 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert re.search(r"accepted tcp:127\.0\.0\.1:\d+ \[in -> out\]", access.read_text())
    assert "[Warning] core: raybridge" in error.read_text()


def _log_config(tmp_path: Path, field: str, target: str) -> Path:
    """A valid node config whose ``log.<field>`` is ``target``; ``field`` on line 3."""
    path = tmp_path / "logs.json"
    path.write_text(
        "{\n"
        '  "log": {\n'
        f'    "{field}": {json.dumps(target)},\n'
        '    "loglevel": "info"\n'
        "  },\n"
        f'  "inbounds": [{{"protocol": "socks", "listen": "127.0.0.1", "port": {free_port()}}}],\n'
        '  "outbounds": [{"protocol": "freedom"}]\n'
        "}\n"
    )
    return path


def _log_cases(tmp_path: Path) -> list[tuple[str, str]]:
    """(target, what the message says) for log paths that cannot be opened."""
    regular = tmp_path / "regular"
    regular.write_text("")
    cases = [
        (str(tmp_path / "missing" / "v2ray" / "error.log"), "does not exist"),
        (str(tmp_path), "is a directory"),
        # A path under a regular file fails even for root.
        (str(regular / "x.log"), "is not a directory"),
    ]
    if os.geteuid() != 0:  # root may write anywhere: no permission case to make
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((str(locked / "x.log"), "no permission"))
    return cases


@pytest.mark.parametrize("field", ["access", "error"])
def test_unopenable_log_file_is_a_config_error(tmp_path: Path, field: str) -> None:
    """issue 14: a log file that cannot be opened is a config error naming file, line and
    field, from ``test`` and from ``run`` alike (exit 23, no traceback, nothing created)."""
    for target, reason in _log_cases(tmp_path):
        config = _log_config(tmp_path, field, target)
        for command in ("test", "run"):
            out = rb(command, "-c", str(config))
            assert out.returncode == 23, (command, target, out.stderr)
            assert f"logs.json:3: log.{field}: cannot open the log file" in out.stderr, out.stderr
            assert reason in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
    assert not (tmp_path / "missing").exists()


def test_log_file_in_existing_directory_is_fine(tmp_path: Path) -> None:
    out = rb("test", "-c", str(_log_config(tmp_path, "error", str(tmp_path / "new.log"))))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "new.log").exists()  # checked, not created, by "test"


def test_both_log_files_are_reported(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("")
    config = tmp_path / "both.json"
    access, error = tmp_path / "no" / "a.log", regular / "e.log"
    config.write_text(
        json.dumps({"log": {"access": str(access), "error": str(error)}}, indent=1) + "\n"
    )
    out = rb("test", "-c", str(config))
    assert out.returncode == 23
    assert "both.json:3: log.access: cannot open the log file" in out.stderr, out.stderr
    assert "both.json:4: log.error: cannot open the log file" in out.stderr, out.stderr


def test_a_log_section_replaced_by_a_later_file_is_not_checked(tmp_path: Path) -> None:
    """Files merge first (a later "log" replaces an earlier one, as in V2Ray); only the
    log files of the merged config must open."""
    base = _log_config(tmp_path, "error", str(tmp_path / "missing" / "e.log"))
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"log": {"error": str(tmp_path / "e.log")}}))
    out = rb("test", "-c", str(base), "-c", str(override))
    assert out.returncode == 0, out.stderr
    out = rb("test", "-c", str(override), "-c", str(base))
    assert out.returncode == 23 and "logs.json:3: log.error:" in out.stderr, out.stderr
