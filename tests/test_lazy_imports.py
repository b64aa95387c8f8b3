"""A plain ``raybridge run`` loads only what its node uses (issue 16): no config checks,
init, share links, QR codes, status server or templates, and no WebSocket/HTTP/2,
reverse-proxy or DNS client code for a config without them. Each case runs the command
line in a fresh interpreter up to the point where the node would start serving, then
lists its modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Never loaded by ``run`` unless asked for.
COMMAND_ONLY = (
    "raybridge.init",
    "raybridge.qr",
    "raybridge.share_link",
    "raybridge.templates",
    "raybridge.demo",
    "raybridge.status",
    "raybridge.config.checks",
    "raybridge.config.simulate",
    "prometheus_client",
)
#: Loaded only by configs that use them.
TRANSPORTS = ("wsproto", "h2", "raybridge.protocols.ws", "raybridge.transport.h2")
REVERSE = ("raybridge.proxy.reverse", "raybridge.protocols.reverse_policy")
DNS = ("dns", "raybridge.dns")  # dnspython, for a "dns" section

SCRIPT = """
import sys
from raybridge import cli
served = []
def run_loop(main):
    served.append(True)
    main.close()
    return 0
cli.run_loop = run_loop
code = cli.main(["run", "-c", sys.argv[1]])
assert code == 0 and served, code
print("\\n".join(sorted(sys.modules)))
"""


def modules_after_run(config: dict[str, Any] | Path, tmp_path: Path) -> set[str]:
    if isinstance(config, Path):
        path = config
    else:
        path = tmp_path / "node.json"
        path.write_text(json.dumps(config))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


@pytest.mark.parametrize("example", ["b.json", "c.json"])
def test_plain_run_loads_only_the_node(example: str, tmp_path: Path) -> None:
    modules = modules_after_run(ROOT / "examples" / example, tmp_path)
    assert "raybridge.node" in modules and "raybridge.proxy.vmess" in modules
    assert loaded(modules, COMMAND_ONLY + TRANSPORTS + REVERSE + DNS) == []


def test_transport_and_reverse_loaded_when_configured(tmp_path: Path) -> None:
    config = {
        "reverse": {"portals": [{"tag": "portal", "domain": "tunnel.example"}]},
        "inbounds": [
            {
                "protocol": "vmess",
                "listen": "127.0.0.1",
                "port": 1,
                "settings": {"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]},
                "streamSettings": {"network": "ws", "wsSettings": {"path": "/x"}},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    modules = modules_after_run(config, tmp_path)
    # The WebSocket code is loaded by the first connection; the portal at build time.
    assert loaded(modules, REVERSE) == list(REVERSE)
    assert loaded(modules, COMMAND_ONLY) == []


def test_status_loaded_when_asked_for(tmp_path: Path) -> None:
    config = {"raybridge": {"status": "127.0.0.1:1"}, "outbounds": [{"protocol": "freedom"}]}
    modules = modules_after_run(config, tmp_path)
    assert "raybridge.status" in modules and "prometheus_client" in modules
    assert loaded(modules, COMMAND_ONLY[:-3]) == ["raybridge.status"]


def test_unloaded_takes_out_what_the_call_imported() -> None:
    script = """
import sys
from raybridge import cli
import raybridge.config
def check():
    import raybridge.config.simulate  # noqa: F401
    return [1, "two"]
assert "raybridge.config.simulate" not in sys.modules
assert cli.unloaded(check) == ["1", "two"]
assert "raybridge.config.simulate" not in sys.modules
assert not hasattr(raybridge.config, "simulate")
assert "raybridge.cli" in sys.modules
cli.settle()
import gc
assert gc.get_freeze_count() > 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
