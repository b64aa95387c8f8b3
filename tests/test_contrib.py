"""contrib/: the systemd unit and the Dockerfile run commands that exist; the unit passes
``systemd-analyze verify`` and scores at most 2.5 in ``systemd-analyze security``."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "raybridge@.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (apt-get install systemd)"
)


def unit_lines(key: str) -> list[str]:
    """Every value of ``key`` in the unit (keys may repeat)."""
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(key + "=")
    ]


def test_systemd_unit_commands_work(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    service = unit["Service"]
    # The config reaches the service as a credential (see the next test).
    credential = unit_lines("LoadCredential")
    assert credential == ["config.json:/etc/raybridge/%i.json"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"outbounds": [{"protocol": "freedom"}]}))
    for key in ("ExecStartPre", "ExecStart"):
        command = service[key]
        assert "${CREDENTIALS_DIRECTORY}/config.json" in command
        argv = shlex.split(command.replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)))
        assert argv[:2] == ["/usr/bin/env", "raybridge"]
        if argv[2] == "test":
            out = subprocess.run(
                [sys.executable, "-m", "raybridge", *argv[2:]], capture_output=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
        else:
            assert argv[2:4] == ["run", "-c"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_works_as_documented() -> None:
    """With DynamicUser=yes the service user cannot read a root-owned 0600 config, so the
    unit loads it as a credential (readable by that user only); under ProtectSystem=strict
    file logs need LogsDirectory=, which the comments name."""
    text = UNIT.read_text()
    assert unit_lines("DynamicUser") == ["yes"]
    assert "install -m 0600 b.json /etc/raybridge/portal.json" in text
    assert unit_lines("LoadCredential") == ["config.json:/etc/raybridge/%i.json"]
    assert not any("/etc/raybridge/%i.json" in c for c in unit_lines("ExecStart"))
    assert unit_lines("LogsDirectory") == ["raybridge"]
    assert unit_lines("ProtectSystem") == ["strict"]
    assert "/var/log/raybridge/" in text
    assert unit_lines("UMask") == ["0077"]
    # PrivateUsers= would take CAP_NET_BIND_SERVICE's effect on the host's ports away.
    assert unit_lines("PrivateUsers") == []
    assert unit_lines("CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]


def _instance(tmp_path: Path) -> Path:
    """The template as an instance, which ``systemd-analyze verify`` needs."""
    path = tmp_path / "raybridge@test.service"
    shutil.copyfile(UNIT, path)
    return path


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    path = _instance(tmp_path)
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=120
    )
    # It may say things about the host's own units; nothing about this one.
    about_it = [line for line in (out.stdout + out.stderr).splitlines() if "raybridge@" in line]
    assert out.returncode == 0 and about_it == [], out.stdout + out.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    path = _instance(tmp_path)
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    if match is None and "--offline" in out.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {out.stderr.strip()}")
    assert match, out.stdout + out.stderr
    assert float(match[1]) <= 2.5, out.stdout


def test_dockerfile_runs_a_node_from_a_config() -> None:
    text = (ROOT / "contrib" / "Dockerfile").read_text()
    # A status server on 0.0.0.0 is only suggested with a token (issue 11).
    for line in text.splitlines():
        if "0.0.0.0:9090" in line:
            assert '"token"' in line, line
    assert 'ENTRYPOINT ["raybridge"]' in text
    assert 'CMD ["run", "-c", "/etc/raybridge/config.json"]' in text
    assert "pip install --no-cache-dir '.[fast]'" in text
