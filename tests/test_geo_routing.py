"""Routing with geosite.dat / geoip.dat lists: live traffic, config errors, V2Ray 4.34.

The .dat files are written by ``write_test_files`` (test_geodata.py) in V2Ray's format.
The same config file, with the same files, runs on raybridge and on V2Ray 4.34: names and
addresses in the lists reach the echo server through a tagged outbound (a freedom that
redirects to it), or are refused by blackhole, the same way on both. Everything else the
node sees goes to blackhole, except 127.0.0.1 (freedom).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raybridge.cli import main as cli_main
from raybridge.config.loader import load_config
from raybridge.errors import ConfigError
from raybridge.matchers import ASSET_ENV, SYSTEM_ASSET_DIRS
from raybridge.node import Node
from tests.geofiles import write_test_files
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    V2RAY,
    EchoServer,
    StartV2Ray,
    echo_roundtrip,
    free_port,
    socks_connect,
)

TIMEOUT = 20.0
NEEDS_V2RAY = "needs V2Ray 4.34 at /usr/bin/v2ray"


@pytest.fixture(autouse=True)
def no_asset_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say where the files are; the environment running them does not."""
    for name in ASSET_ENV:
        monkeypatch.delenv(name, raising=False)


def geo_rules() -> list[dict[str, Any]]:
    return [
        {"type": "field", "domain": ["geosite:test@cn"], "outboundTag": "echo"},
        {"type": "field", "domain": ["ext:geosite.dat:other"], "outboundTag": "echo"},
        {"type": "field", "domain": ["geosite:test"], "outboundTag": "block"},
        {"type": "field", "ip": ["geoip:xx", "ext-ip:geoip.dat:yy"], "outboundTag": "echo"},
        {"type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct"},
        {"type": "field", "network": "tcp,udp", "outboundTag": "block"},
    ]


def geo_config(port: int, echo_port: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "in",
                "protocol": "socks",
                "listen": LOCAL,
                "port": port,
                "settings": {"auth": "noauth"},
            }
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom"},
            {"tag": "block", "protocol": "blackhole"},
            {
                "tag": "echo",
                "protocol": "freedom",
                "settings": {"redirect": f"{LOCAL}:{echo_port}"},
            },
        ],
        "routing": {"rules": rules},
    }


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


async def through(port: int, host: str, target_port: int, size: int = 100_000) -> bool:
    """True if ``size`` bytes to ``host:target_port`` through the SOCKS inbound came back
    intact; False if the connection was refused or closed with nothing echoed."""
    try:
        reader, writer = await asyncio.wait_for(socks_connect(port, host, target_port), TIMEOUT)
    except (OSError, EOFError, asyncio.IncompleteReadError):
        return False
    except Exception as exc:  # a SOCKS failure reply
        if "SOCKS" in type(exc).__name__ or "socks" in str(exc).lower():
            return False
        raise
    try:
        sent, got = await asyncio.wait_for(echo_roundtrip(reader, writer, size), TIMEOUT)
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
    assert sent == got, "echoed bytes differ"
    return True


@contextlib.asynccontextmanager
async def raybridge_node(config_path: Path) -> AsyncIterator[Node]:
    node = Node(load_config([str(config_path)]))
    await node.start()
    try:
        yield node
    finally:
        await node.close()


#: (host, port or None for the echo port, goes through): what each system must do.
CASES = [
    ("cn-only.test", 9, True),  # geosite:test@cn -> the echo outbound
    ("ads.test", 9, True),  # has cn (and ads)
    ("x.other.test", 9, True),  # ext:geosite.dat:other
    ("blocked.test", None, False),  # geosite:test (domain) -> blackhole
    ("a.b.blocked.test", None, False),
    ("exact.test", None, False),  # full
    ("my-evilword.example", None, False),  # plain (keyword)
    ("ads12.example", None, False),  # regex
    ("127.0.0.2", 9, True),  # geoip:xx
    ("10.20.3.4", 9, True),  # geoip:xx (never dialled: the outbound redirects)
    ("192.0.2.77", 9, True),  # ext-ip:geoip.dat:yy
    ("127.0.0.1", None, True),  # not in a list: freedom
    ("127.0.0.3", None, False),  # not in a list: the last rule, blackhole
]


async def check_cases(port: int, echo: EchoServer) -> None:
    for host, target_port, expected in CASES:
        before = echo.connections
        got = await through(port, host, echo.port if target_port is None else target_port)
        assert got is expected, f"{host}: {'through' if got else 'refused'}"
        if not expected:
            assert echo.connections == before, f"{host} reached the echo server"


@pytest.mark.parametrize("where", ["next to the config", "V2RAY_LOCATION_ASSET"])
async def test_raybridge_routes_by_geo_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    write_test_files(assets)
    config_dir = assets
    if where == "V2RAY_LOCATION_ASSET":
        config_dir = tmp_path / "etc"
        config_dir.mkdir()
        monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(assets))
    async with EchoServer() as echo:
        port = free_port()
        path = write_config(config_dir, geo_config(port, echo.port, geo_rules()))
        async with raybridge_node(path):
            await check_cases(port, echo)


async def test_v2ray_routes_the_same_with_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_v2ray: StartV2Ray
) -> None:
    write_test_files(tmp_path)
    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(tmp_path))  # V2Ray inherits it
    async with EchoServer() as echo:
        port = free_port()
        start_v2ray(geo_config(port, echo.port, geo_rules()), wait=[port])
        await check_cases(port, echo)


def v2ray_test(config_path: Path, assets: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "V2RAY_LOCATION_ASSET": str(assets)}
    return subprocess.run(
        [V2RAY, "-test", "-config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_v2ray_accepts_the_generated_files(tmp_path: Path) -> None:
    if not HAVE_V2RAY:
        pytest.skip(NEEDS_V2RAY)
    write_test_files(tmp_path)
    path = write_config(tmp_path, geo_config(free_port(), free_port(), geo_rules()))
    done = v2ray_test(path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration OK" in done.stdout
    # ... and refuses a list the file does not have, as raybridge does.
    rules = [{"type": "field", "domain": ["geosite:nope"], "outboundTag": "block"}]
    path = write_config(tmp_path, geo_config(free_port(), free_port(), rules))
    done = v2ray_test(path, tmp_path)
    assert done.returncode != 0
    assert "list not found in geosite.dat: nope" in done.stdout + done.stderr
    with pytest.raises(ConfigError, match="no list 'NOPE'"):
        Node(load_config([str(path)]))


# ---------------------------------------------------------------------------- config errors


def rule_error(tmp_path: Path, rule: dict[str, Any]) -> ConfigError:
    rules = [{"type": "field", "ip": ["127.0.0.1"], "outboundTag": "direct"}, rule]
    path = write_config(tmp_path, geo_config(free_port(), free_port(), rules))
    with pytest.raises(ConfigError) as info:
        Node(load_config([str(path)]))
    error = info.value
    assert error.file == str(path)
    lines = path.read_text().splitlines()
    rule_lines = [n for n, text in enumerate(lines) if '"type": "field"' in text]
    assert error.line == rule_lines[1]  # the line of the second rule's "{" (1-based)
    return error


def test_missing_file_names_rule_and_paths(tmp_path: Path) -> None:
    if any(os.path.exists(os.path.join(d, "geosite.dat")) for d in SYSTEM_ASSET_DIRS):
        pytest.skip("this machine has a geosite.dat in a system directory")
    error = rule_error(
        tmp_path, {"type": "field", "domain": ["geosite:test"], "outboundTag": "block"}
    )
    assert error.path == "routing.rules[1].domain"
    assert str(error) == (
        f"{tmp_path}/config.json:{error.line}: routing.rules[1].domain: 'geosite:test': "
        f"geosite.dat not found: looked in {tmp_path}/geosite.dat, "
        "/usr/local/share/v2ray/geosite.dat, /usr/share/v2ray/geosite.dat "
        "(set V2RAY_LOCATION_ASSET to the directory that holds it)"
    )


def test_missing_list_names_rule_and_file(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    error = rule_error(tmp_path, {"type": "field", "ip": ["geoip:zz"], "outboundTag": "block"})
    assert error.path == "routing.rules[1].ip"
    assert f"'geoip:zz': no list 'ZZ' in {tmp_path}/geoip.dat (2 lists: XX, YY)" in str(error)
    error = rule_error(
        tmp_path, {"type": "field", "source": ["ext:missing.dat:xx"], "outboundTag": "block"}
    )
    assert error.path == "routing.rules[1].source"
    assert f"missing.dat not found: looked in {tmp_path}/missing.dat" in str(error)
    error = rule_error(
        tmp_path, {"type": "field", "domain": ["geosite:test@nope"], "outboundTag": "block"}
    )
    assert "has the attribute(s) @nope" in str(error)


def test_raybridge_test_command_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = [{"type": "field", "domain": ["ext:no-such.dat:cn"], "outboundTag": "block"}]
    path = write_config(tmp_path, geo_config(free_port(), free_port(), rules))
    assert cli_main(["test", "-c", str(path)]) != 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert (
        f"{path}:" in text
        and "routing.rules[0].domain: 'ext:no-such.dat:cn': no-such.dat not found" in text
    )
    assert "Traceback" not in text


def test_every_bad_rule_is_reported(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    rules = [
        {"type": "field", "domain": ["geosite:nope"], "outboundTag": "block"},
        {"type": "field", "ip": ["127.0.0.1"], "outboundTag": "direct"},
        {"type": "field", "ip": ["geoip:zz"], "outboundTag": "block"},
    ]
    path = write_config(tmp_path, geo_config(free_port(), free_port(), rules))
    with pytest.raises(ConfigError) as info:
        Node(load_config([str(path)]))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "routing.rules[0].domain: 'geosite:nope': no list 'NOPE'" in lines[0]
    assert "routing.rules[2].ip: 'geoip:zz': no list 'ZZ'" in lines[1]
