"""contrib/: the systemd unit and the Dockerfile run commands that exist."""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_systemd_unit_commands_work(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "contrib" / "raybridge@.service")
    service = unit["Service"]
    config = tmp_path / "portal.json"
    config.write_text(json.dumps({"outbounds": [{"protocol": "freedom"}]}))
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(service[key].replace("/etc/raybridge/%i.json", str(config)))
        assert argv[:2] == ["/usr/bin/env", "raybridge"]
        if argv[2] == "test":
            out = subprocess.run(
                [sys.executable, "-m", "raybridge", *argv[2:]], capture_output=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
        else:
            assert argv[2:4] == ["run", "-c"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_dockerfile_runs_a_node_from_a_config() -> None:
    text = (ROOT / "contrib" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["raybridge"]' in text
    assert 'CMD ["run", "-c", "/etc/raybridge/config.json"]' in text
    assert "pip install --no-cache-dir '.[fast]'" in text
