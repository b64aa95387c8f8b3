"""``raybridge test`` explains routing mistakes: file, line, field, what is wrong, the fix.

Each mistake gets a small config; expected lines are found by a marker in the text
(``line_of``), so the assertions name the exact line a user would be sent to.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raybridge import templates
from raybridge.cli import EXIT_CONFIG, main
from raybridge.config import ConfigError, ConfigWarning, load_config, load_config_text
from raybridge.config.checks import Finding, check_config, findings, suggest_fix
from raybridge.config.jsonc import strip_comments
from raybridge.config.loader import inspect_config

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[2] / "examples"
AS_WRITTEN = DATA / "seed_b_as_written.json"
U1, U2 = "b831381d-6324-4d53-ad4f-8cda48b30811", "a26efdb8-ef34-4278-a4e6-2af32cc010aa"


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the only occurrence of ``needle``."""
    assert text.count(needle) == 1, needle
    return text[: text.index(needle)].count("\n") + 1


def check(tmp_path: Path, text: str, name: str = "t.json") -> tuple[str, list[Finding]]:
    """Load like ``raybridge test`` and return (the text, the findings)."""
    text = textwrap.dedent(text)
    path = tmp_path / name
    path.write_text(text)
    result = inspect_config([str(path)])
    assert result.errors == [] and result.config is not None
    found = findings(result.config, documents=result.documents, skipped=result.skipped)
    # The loader's plain warnings about rule tags are replaced by the checks' findings.
    assert all(isinstance(f, Finding) or not f.path.endswith("Tag") for f in found)
    return text, [f for f in found if isinstance(f, Finding)]


def one(found: list[Finding]) -> Finding:
    assert len(found) == 1, [str(f) for f in found]
    return found[0]


# ------------------------------------------------------------------ 1. tags that name nothing

TYPOS = """\
{
  "inbounds": [
    {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1", "port": 1080}
  ],
  "reverse": {"bridges": [{"tag": "bridge", "domain": "tunnel.example"}]},
  "outbounds": [
    {"tag": "up", "protocol": "vmess", "settings": {"vnext": [{"address": "b.example",
      "port": 8001, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]}},
    {"tag": "direct", "protocol": "freedom"},
    {"tag": "block", "protocol": "blackhole"}
  ],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["bridge"], "domain": ["full:tunnel.example"],
     "outboundTag": "up"},
    {"type": "field", "inboundTag": ["bridge"], "outboundTag": "direct"},
    {"type": "field",
     "inboundTag": ["sock-in"],
     "outboundTag": "direct"},
    {"type": "field", "port": 25,
     "outboundTag": "blok"},
    {"type": "field", "port": 26, "outboundTag": "socks-in"},
    {"type": "field", "port": 27,
     "balancerTag": "lb"}
  ]}
}
"""


def test_unknown_inbound_tag_suggests_the_closest(tmp_path: Path) -> None:
    text, found = check(tmp_path, TYPOS)
    f = one([f for f in found if f.path == "routing.rules[2].inboundTag"])
    assert f.line == line_of(text, '["sock-in"]')
    assert '"sock-in" names no inbound or bridge' in f.message
    assert 'did you mean "socks-in"' in f.fix
    # The bridge's tag is an inbound tag: rules 0 and 1 are fine.
    assert not [f for f in found if f.path.startswith(("routing.rules[0]", "routing.rules[1]"))]


def test_unknown_outbound_and_balancer_tags(tmp_path: Path) -> None:
    text, found = check(tmp_path, TYPOS)
    out = one([f for f in found if f.path == "routing.rules[3].outboundTag"])
    assert out.line == line_of(text, '"blok"')
    assert "goes to the default outbound" in out.message and "VMess" not in out.message
    assert 'did you mean "block"' in out.fix
    inbound_tag = one([f for f in found if f.path == "routing.rules[4].outboundTag"])
    assert '"socks-in" is an inbound or bridge tag' in inbound_tag.message
    assert inbound_tag.fix.startswith("use one of:") and '"direct"' in inbound_tag.fix
    balancer = one([f for f in found if f.path == "routing.rules[5].balancerTag"])
    assert balancer.line == line_of(text, '"lb"')
    assert '"lb" names no balancer' in balancer.message
    assert "routing.balancers" in balancer.fix


def test_reference_findings_replace_the_loaders_warnings(tmp_path: Path) -> None:
    """The loader still warns (library users see it); ``findings`` says it once."""
    config = load_config_text(textwrap.dedent(TYPOS), "t.json")
    plain = [w for w in config.warnings if "names no" in w.message]
    assert len(plain) == 4
    _, found = check(tmp_path, TYPOS)
    paths = [f.path for f in found]
    assert len(paths) == len(set(paths)) == 4


def test_without_documents_lines_are_the_rules(tmp_path: Path) -> None:
    config = load_config_text(textwrap.dedent(TYPOS), "t.json")
    f = one([f for f in check_config(config) if f.path == "routing.rules[2].inboundTag"])
    assert f.line == line_of(textwrap.dedent(TYPOS), '"inboundTag": ["sock-in"]') - 1


def test_a_tag_of_an_entry_that_failed_to_load_still_counts(tmp_path: Path) -> None:
    """The seed's B with only erratum 1: the broken inbound's tag still counts, and the
    rules are right, so there is nothing to add to the error."""
    rules = [
        {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
        {
            "type": "field",
            "inboundTag": ["interconn"],
            "domain": ["full:private.cloud.com"],
            "outboundTag": "portal",
        },
    ]
    doc = json.loads(strip_comments(AS_WRITTEN.read_text()))
    doc["routing"]["rules"] = rules
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc, indent=2))
    result = inspect_config([str(path)])
    assert [e.message for e in result.errors] == ['"protocol" is missing']
    assert result.config is not None
    assert findings(result.config, skipped=result.skipped) == []


# --------------------------------------------------------------------------- 2. portals

PORTAL_NO_TUNNEL_RULE = """\
{
  "reverse": {"portals": [
    {"tag": "portal", "domain": "tunnel.example"}
  ]},
  "inbounds": [
    {"tag": "bridges", "protocol": "vmess", "listen": "127.0.0.1", "port": 8001,
     "settings": {"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}},
    {"tag": "clients", "protocol": "vmess", "listen": "127.0.0.1", "port": 8002,
     "settings": {"clients": [{"id": "a26efdb8-ef34-4278-a4e6-2af32cc010aa"}]}}
  ],
  "outbounds": [{"tag": "direct", "protocol": "freedom"},
                {"tag": "refuse", "protocol": "blackhole"}],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["clients"], "domain": ["full:tunnel.example"],
     "outboundTag": "refuse"},
    {"type": "field", "inboundTag": ["clients"], "outboundTag": "portal"}
  ]}
}
"""


def test_portal_without_a_tunnel_rule(tmp_path: Path) -> None:
    text, found = check(tmp_path, PORTAL_NO_TUNNEL_RULE)
    f = one(found)
    assert (f.path, f.line) == ("reverse.portals[0]", line_of(text, '{"tag": "portal"'))
    assert 'no rule sends the tunnels of portal "portal" to it' in f.message
    assert 'arriving on "bridges": no rule matches it' in f.message
    assert 'freedom outbound "direct"' in f.message
    # The client inbound refuses the domain on purpose: the bridge must use "bridges".
    assert f.fix == (
        'add as the first rule: {"type": "field", "inboundTag": ["bridges"], '
        '"domain": ["full:tunnel.example"], "outboundTag": "portal"}'
    )


def test_portal_tunnel_rule_that_names_no_vmess_inbound(tmp_path: Path) -> None:
    text = PORTAL_NO_TUNNEL_RULE.replace(
        '"outboundTag": "portal"}\n',
        '"outboundTag": "portal"},\n    {"type": "field", "inboundTag": ["socks"], '
        '"domain": ["full:tunnel.example"], "outboundTag": "portal"}\n',
    ).replace(
        '"inbounds": [\n',
        '"inbounds": [\n    {"tag": "socks", "protocol": "socks", "listen": "127.0.0.1", '
        '"port": 1080},\n',
    )
    text, found = check(tmp_path, text)
    f = one(found)
    assert f.path == "routing.rules[2].inboundTag"
    assert f.line == line_of(text, '"inboundTag": ["socks"]')
    assert '"socks" is a socks inbound' in f.message
    assert f.fix.startswith('"inboundTag": ["bridges"]')


# --------------------------------------------------------------------------- 3. bridges

BRIDGE = """\
{
  "reverse": {"bridges": [
    {"tag": "bridge", "domain": "tunnel.example"}
  ]},
  "outbounds": [
    {"tag": "out", "protocol": "freedom"},
    {"tag": "tunnel", "protocol": "vmess", "settings": {"vnext": [{"address": "b.example",
      "port": 8001, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]}}
  ],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}
  ]}
}
"""


def test_bridge_tunnel_goes_out_through_freedom(tmp_path: Path) -> None:
    text, found = check(tmp_path, BRIDGE)
    f = one(found)
    assert (f.path, f.line) == ("routing.rules[0]", line_of(text, '"outboundTag": "out"'))
    assert 'the tunnels of bridge "bridge"' in f.message
    assert 'sends them to freedom outbound "out"' in f.message
    assert "a name that does not exist" in f.message
    assert f.fix == (
        f"add before routing.rules[0] (line {f.line}): "
        '{"type": "field", "inboundTag": ["bridge"], "domain": ["full:tunnel.example"], '
        '"outboundTag": "tunnel"}'
    )


def test_bridge_without_rules_uses_the_default_outbound(tmp_path: Path) -> None:
    text = BRIDGE.split('  "routing"')[0].rstrip().rstrip(",") + "\n}\n"
    text, found = check(tmp_path, text)
    f = one(found)
    assert (f.path, f.line) == ("reverse.bridges[0]", line_of(text, '{"tag": "bridge"'))
    assert 'no rule matches them, so they go to the default outbound (freedom outbound "out")' in (
        f.message
    )
    assert f.fix.startswith("add as the first rule:") and '"outboundTag": "tunnel"' in f.fix


def test_bridge_without_a_vmess_outbound(tmp_path: Path) -> None:
    start = BRIDGE.index('    {"tag": "tunnel"')
    end = BRIDGE.index("  ],\n", start)
    text = BRIDGE[:start] + '    {"tag": "drop", "protocol": "blackhole"}\n' + BRIDGE[end:]
    text, found = check(tmp_path, text)
    f = one(found)
    assert f.line == line_of(text, '"outboundTag": "out"')
    assert "add a VMess outbound to the portal" in f.fix
    assert '"inboundTag": ["bridge"], "domain": ["full:tunnel.example"]' in f.fix


def test_bridge_tunnel_rule_after_the_catch_all(tmp_path: Path) -> None:
    text = BRIDGE.replace(
        '"outboundTag": "out"}\n',
        '"outboundTag": "out"},\n    {"type": "field", "inboundTag": ["bridge"], '
        '"domain": ["full:tunnel.example"], "outboundTag": "tunnel"}\n',
    )
    text, found = check(tmp_path, text)
    f = one(found)
    assert (f.path, f.line) == ("routing.rules[1]", line_of(text, '"outboundTag": "tunnel"'))
    first = line_of(text, '"outboundTag": "out"')
    assert f"routing.rules[0] (line {first}) comes first" in f.message
    assert f.fix == "move this rule above routing.rules[0]"


BOTH = """\
{
  "reverse": {"portals": [{"tag": "portal", "domain": "tunnel.example"}],
              "bridges": [{"tag": "bridge", "domain": "tunnel.example"}]},
  "inbounds": [
    {"tag": "interconn", "protocol": "vmess", "listen": "127.0.0.1", "port": 8001,
     "settings": {"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}}
  ],
  "outbounds": [
    {"tag": "direct", "protocol": "freedom"},
    {"tag": "up", "protocol": "vmess", "settings": {"vnext": [{"address": "b.example",
      "port": 8001, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]}}
  ],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["bridge"], "domain": ["full:tunnel.example"],
     "outboundTag": "up"},
    {"type": "field", "inboundTag": ["interconn"], "domain": ["full:tunnel.example"],
     "outboundTag": "portal"},
    {"type": "field", "inboundTag": ["bridge"], "outboundTag": "direct"}
  ]}
}
"""


def test_a_portal_and_a_bridge_may_share_a_domain(tmp_path: Path) -> None:
    assert check(tmp_path, BOTH)[1] == []


def test_a_bridge_whose_tunnel_goes_to_its_own_portal(tmp_path: Path) -> None:
    """The portal rule without inboundTag comes first: the bridge's own tunnel requests
    go to the local portal."""
    text = BOTH.replace(
        '{"type": "field", "inboundTag": ["interconn"], "domain"', '{"type": "field", "domain"'
    )
    lines = text.splitlines()
    lines[13:15], lines[15:17] = lines[15:17], lines[13:15]
    text, found = check(tmp_path, "\n".join(lines) + "\n")
    f = one(found)
    assert (f.path, f.line) == ("routing.rules[1]", line_of(text, '"outboundTag": "up"') - 1)
    assert 'sends them to portal "portal": that is a portal of this node' in f.message
    assert f.fix == "move this rule above routing.rules[0]"


# --------------------------------------------------------------------------- 4. open proxies

OPEN = """\
{
  "inbounds": [
    {"tag": "socks-in", "protocol": "socks", "port": 1080},
    {"tag": "http-in", "protocol": "http",
     "listen": "::", "port": 8080},
    {"tag": "lan", "protocol": "socks", "listen": "192.168.1.5", "port": 1081},
    {"tag": "local", "protocol": "socks", "listen": "127.0.0.1", "port": 1082},
    {"tag": "local6", "protocol": "http", "listen": "::1", "port": 1085},
    {"tag": "pw", "protocol": "socks", "port": 1083,
     "settings": {"auth": "password", "accounts": [{"user": "u", "pass": "p"}]}},
    {"tag": "hpw", "protocol": "http", "port": 1084,
     "settings": {"accounts": [{"user": "u", "pass": "p"}]}}
  ],
  "outbounds": [{"tag": "direct", "protocol": "freedom"}]
}
"""


def test_open_proxies(tmp_path: Path) -> None:
    text, found = check(tmp_path, OPEN)
    assert [(f.path, f.line) for f in found] == [
        ("inbounds[0].listen", line_of(text, '"socks-in"')),  # no "listen": the inbound
        ("inbounds[1].listen", line_of(text, '"listen": "::"')),
        ("inbounds[2].listen", line_of(text, '"lan"')),
    ]
    socks, http, lan = found
    assert 'SOCKS inbound "socks-in" listens on 0.0.0.0:1080 (every network interface)' in (
        socks.message
    )
    assert "open proxy" in socks.message
    assert '"listen": "127.0.0.1"' in socks.fix and '"auth": "password"' in socks.fix
    assert "[::]:8080" in http.message and '"accounts"' in http.fix
    assert '"auth"' not in http.fix
    assert "private address" in lan.message


def test_open_proxy_check_covers_password_inbounds() -> None:
    """``"auth": "password"`` only protects with accounts: the check no longer skips every
    password inbound (one without accounts cannot come from the loader any more, see the
    next test, but can be built otherwise)."""
    from raybridge.config import Config, InboundConfig, SocksInboundSettings

    def socks(tag: str, accounts: dict[str, str], index: int) -> InboundConfig:
        return InboundConfig(
            protocol="socks",
            tag=tag,
            listen="0.0.0.0",
            ports=[1080 + index],
            settings=SocksInboundSettings(auth="password", accounts=accounts),
            file="t.json",
            line=index + 1,
            index=index,
            path=f"inbounds[{index}]",
        )

    config = Config(inbounds=[socks("empty", {}, 0), socks("pw", {"u": "p"}, 1)])
    found = [f for f in check_config(config) if isinstance(f, Finding)]
    assert [f.path for f in found] == ["inbounds[0].listen"]
    assert '"auth": "password" but no accounts' in found[0].message
    assert '"accounts": [{"user"' in found[0].fix


def test_cli_test_refuses_password_without_accounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to say "Configuration OK." (exit 0) with a warning."""
    path = tmp_path / "pw.json"
    path.write_text(
        '{"inbounds": [{"protocol": "socks", "port": 1080,\n'
        '  "settings": {"auth": "password", "acounts": [{"user": "u", "pass": "p"}]}}]}\n'
    )
    assert main(["test", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"error: {path}:2: inbounds[0].settings.acounts:" in err
    assert 'did you mean "accounts"?' in err


# --------------------------------------------------------------------------- 5. rule order

ORDER = """\
{
  "reverse": {"portals": [{"tag": "portal", "domain": "tunnel.example"}]},
  "inbounds": [
    {"tag": "interconn", "protocol": "vmess", "listen": "127.0.0.1", "port": 8001,
     "settings": {"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}}
  ],
  "outbounds": [{"tag": "direct", "protocol": "freedom"}],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
    {"type": "field", "inboundTag": ["interconn"], "domain": ["full:tunnel.example"],
     "outboundTag": "portal"}
  ]}
}
"""


def test_client_rule_before_the_tunnel_rule(tmp_path: Path) -> None:
    text, found = check(tmp_path, ORDER)
    f = one(found)
    assert (f.path, f.line) == ("routing.rules[1]", line_of(text, '"domain": ["full'))
    catch_all = line_of(text, '"inboundTag": ["interconn"], "outboundTag"')
    assert f"this rule never matches: routing.rules[0] (line {catch_all}) comes first" in (
        f.message
    )
    assert 'any client of "interconn"' in f.message
    assert f.fix.startswith("move this rule above routing.rules[0]")


def test_rule_before_the_tunnel_rule_sends_tunnels_elsewhere(tmp_path: Path) -> None:
    text = ORDER.replace(
        '"inboundTag": ["interconn"], "outboundTag": "portal"',
        ('"inboundTag": ["interconn"], "outboundTag": "direct"'),
    )
    text, found = check(tmp_path, text)
    f = one(found)
    assert (f.path, f.line) == ("routing.rules[1]", line_of(text, '"domain": ["full'))
    assert 'sends the tunnels arriving on "interconn" to freedom outbound "direct"' in f.message
    assert "bridges never connect" in f.message
    assert f.fix == "move this rule above routing.rules[0]"


# --------------------------------------------------------------------------- 6. the seed's B


def test_seed_b_as_written_reports_both_errata() -> None:
    text = AS_WRITTEN.read_text()
    result = inspect_config([str(AS_WRITTEN)])
    # Erratum 1: the error, as load_config raises it, with a fix.
    with pytest.raises(ConfigError) as raised:
        load_config([str(AS_WRITTEN)])
    assert [str(e) for e in result.errors] == [str(raised.value)]
    error = result.errors[0]
    assert (error.line, error.path, error.message) == (11, "inbounds[0]", '"protocol" is missing')
    assert suggest_fix(error, result.skipped).startswith('add "protocol": "vmess"')
    # Erratum 2: the swapped inbound tags, both rules, with their lines and fixes.
    assert result.config is not None
    found = findings(result.config, documents=result.documents, skipped=result.skipped)
    assert [(f.line, f.path) for f in found] == [
        (45, "routing.rules[0].inboundTag"),
        (52, "routing.rules[1].inboundTag"),
    ]
    assert line_of(text, '"interconn"\n],') == 45 and line_of(text, '"tunnel"') == 52
    client, tunnel = found
    assert isinstance(client, Finding) and isinstance(tunnel, Finding)
    assert '"tunnel" names no inbound or bridge of this config' in tunnel.message
    assert "tag of its VMess outbound" in tunnel.message
    assert tunnel.fix.startswith('"inboundTag": ["interconn"]')
    assert "look swapped" in client.message
    assert 'inbound "external" (line 11) is named by no rule' in client.message
    assert client.fix == (
        '"inboundTag": ["external"] here (the clients\' inbound), and '
        '"inboundTag": ["interconn"] in routing.rules[1]'
    )


def test_seed_b_fixed_only_gets_the_bridge_exposure_warning() -> None:
    result = inspect_config([str(DATA / "seed_b_fixed.json")])
    assert result.errors == [] and result.config is not None
    found = findings(result.config, documents=result.documents)
    f = one([f for f in found if isinstance(f, Finding)])
    assert found == [f]
    assert (f.line, f.path) == (43, "routing.rules[0]")
    assert 'clients of inbound "external"' in f.message and "register" in f.message
    assert '"outboundTag": "<a blackhole outbound>"' in f.fix


# --------------------------------------------------------------------------- lenient loading


def test_lenient_loading_reports_every_broken_entry(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        {
          "inbounds": [
            {"tag": "a", "port": 1},
            {"tag": "b", "protocol": "socks", "listen": "127.0.0.1", "port": 2},
            {"tag": "c", "protocol": "socks", "listen": "127.0.0.1"}
          ],
          "outbounds": [{"tag": "direct", "protocol": "freedom"},
                        {"tag": "x", "protocol": "vmess"}],
          "routing": {"rules": [
            {"type": "field", "outboundTag": "direct"},
            {"type": "field", "inboundTag": ["a", "c"], "outboundTag": "x"},
            {"type": "field", "inboundTag": ["bb"], "outboundTag": "direct"}
          ]}
        }
        """
    )
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="no effective fields"):
        load_config([str(path)])  # the normal path stops at the first error
    result = inspect_config([str(path)])
    # In the order they are found: routing is read before inbounds and outbounds, the
    # missing port only when the files are merged.
    assert [(e.line, e.path, e.message) for e in result.errors] == [
        (10, "routing.rules[0]", "this rule has no effective fields"),
        (3, "inbounds[0]", '"protocol" is missing'),
        (8, "outbounds[1].settings", '"vnext" is missing or empty: no VMess server configured'),
        (5, "inbounds[2]", '"port" is missing'),
    ]
    assert [s.tag for s in result.skipped] == ["", "a", "x", "c"]
    assert result.config is not None
    found = findings(result.config, documents=result.documents, skipped=result.skipped)
    # "a", "c" and "x" failed to load but exist: only "bb" names nothing.
    f = one([f for f in found if isinstance(f, Finding)])
    assert (f.line, f.path) == (12, "routing.rules[2].inboundTag")
    assert 'did you mean "b"' in f.fix


# --------------------------------------------------------------------------- no false positives


def _template_configs() -> dict[str, str]:
    from raybridge.demo import demo_configs

    # The seed's portal (portal_config) lets clients register as bridges, on loopback too:
    # test_seed_portal_only_gets_the_exposure_warning.
    configs = {
        "client": templates.client_config(1080, 8001, U1, http_port=1081),
        "server": templates.server_config(8001, U1),
        "bridge": templates.bridge_config(8001, U1),
    }
    demo = demo_configs(8001, 8002, 1080, 1081, bridge_id=U1, client_id=U2)
    configs.update({"demo-" + name.removesuffix(".json"): c for name, c in demo.items()})
    texts = {name: json.dumps(c, indent=2) for name, c in configs.items()}
    setup = templates.Setup(
        portal_address="203.0.113.5",
        portal_port=8001,
        client_port=8002,
        bridge_id=U1,
        client_id=U2,
        domain="tunnel-0a1b2c3d.internal",
    )
    texts["init-a"] = templates.safe_bridge_config(setup).render()
    texts["init-b"] = templates.safe_portal_config(setup).render()
    texts["init-c"] = templates.safe_client_config(setup).render()
    return texts


@pytest.mark.parametrize("name", sorted(_template_configs()))
def test_templates_have_no_findings(tmp_path: Path, name: str) -> None:
    assert check(tmp_path, _template_configs()[name], f"{name}.json")[1] == []


@pytest.mark.parametrize(
    "path", [EXAMPLES / "b.json", EXAMPLES / "c.json", DATA / "seed_a.json"], ids=str
)
def test_examples_and_seed_a_have_no_findings(path: Path) -> None:
    result = inspect_config([str(path)])
    assert result.config is not None
    assert findings(result.config, documents=result.documents) == []


@pytest.mark.parametrize("listen", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("single", [False, True])
def test_seed_portal_only_gets_the_exposure_warning(
    tmp_path: Path, single: bool, listen: str
) -> None:
    """On loopback too (the old ``raybridge demo`` portal): its clients can still register
    as a bridge and receive the other clients' traffic."""
    config = templates.portal_config(8001, 8002, U1, U2, single_inbound=single, listen=listen)
    _, found = check(tmp_path, json.dumps(config, indent=2))
    assert len(found) == 1 and "as a bridge" in found[0].message
    assert f"on {listen}:" in found[0].message


def test_unauthenticated_loopback_inbound_to_a_portal(tmp_path: Path) -> None:
    """A SOCKS inbound on loopback routed to a portal: any program on the machine can ask
    for the tunnel domain and become a bridge."""
    config = templates.portal_config(8001, 8002, U1, U2)
    config["inbounds"].append(
        {"tag": "local", "protocol": "socks", "listen": "127.0.0.1", "port": 1080}
    )
    config["outbounds"].append({"tag": "refuse", "protocol": "blackhole"})
    config["routing"]["rules"] = [
        {"type": "field", "inboundTag": ["external"], "domain": [f"full:{templates.DOMAIN}"],
         "outboundTag": "refuse"},
        *config["routing"]["rules"],
        {"type": "field", "inboundTag": ["local"], "outboundTag": "portal"},
    ]  # fmt: skip
    _, found = check(tmp_path, json.dumps(config, indent=2))
    f = one(found)
    assert f.message.startswith('anyone who can reach inbound "local" (socks on 127.0.0.1:1080)')


# --------------------------------------------------------------------------- status server


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("127.0.0.1:9090", None),
        ("9090", None),
        ("[::1]:9090", None),
        ("localhost:9090", None),
        ({"listen": "127.0.0.1:9090", "hosts": ["a.example"]}, None),
        ("0.0.0.0:9090", "listens on 0.0.0.0:9090 (every network interface) without a token"),
        ("[::]:9090", "listens on [::]:9090 (every network interface) without a token"),
        ("192.0.2.7:9090", "listens on 192.0.2.7:9090 (beyond loopback) without a token"),
        ({"listen": "0.0.0.0:9090"}, "without a token"),
        ({"listen": "0.0.0.0:9090", "token": "0123456789abcdef0123"}, None),
        ({"listen": "0.0.0.0:9090", "token": "letmein"}, "7 characters: short enough to guess"),
    ],
)
def test_status_server_beyond_loopback_needs_a_token(
    tmp_path: Path, status: object, expected: str | None
) -> None:
    config = {"outbounds": [{"protocol": "freedom"}], "raybridge": {"status": status}}
    text, found = check(tmp_path, json.dumps(config, indent=2))
    if expected is None:
        assert found == []
        return
    f = one(found)
    assert expected in f.message
    assert f.path.startswith("raybridge.status")
    assert f.line == line_of(text, '"token"' if "short" in expected else '"status"')
    assert '"token"' in f.fix


def test_cli_test_warns_about_an_open_status_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.json"
    config = {"outbounds": [{"protocol": "freedom"}], "raybridge": {"status": "0.0.0.0:9090"}}
    path.write_text(json.dumps(config))
    assert main(["test", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "status server listens on 0.0.0.0:9090" in err
    assert '"token"' in err


# --------------------------------------------------------------------------- the command line


def test_cli_test_prints_both_errata_of_seed_b() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raybridge", "test", "-c", str(AS_WRITTEN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == EXIT_CONFIG
    lines = out.stderr.splitlines()
    name = str(AS_WRITTEN)
    assert lines[0] == f'error: {name}:11: inbounds[0]: "protocol" is missing'
    assert lines[1].startswith('    fix: add "protocol": "vmess"')
    assert lines[2].startswith(f"also: {name}:45: routing.rules[0].inboundTag: ")
    assert lines[3] == (
        '    fix: "inboundTag": ["external"] here (the clients\' inbound), and '
        '"inboundTag": ["interconn"] in routing.rules[1]'
    )
    assert lines[4].startswith(f'also: {name}:52: routing.rules[1].inboundTag: "tunnel" names')
    assert lines[5].startswith('    fix: "inboundTag": ["interconn"]')
    assert lines[6] == "raybridge: invalid configuration: 1 error (and 2 more findings)"
    assert "Configuration OK" not in out.stdout


def test_cli_test_warnings_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "open.json"
    path.write_text(OPEN)
    assert main(["test", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == "Configuration OK.\n"
    lines = out.err.splitlines()
    assert lines[0].startswith(f"warning: {path}:3: inbounds[0].listen: SOCKS inbound")
    assert lines[1].startswith('    fix: "listen": "127.0.0.1"')
    assert len(lines) == 6


def test_cli_test_syntax_error_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "inbounds": [\n    {"port": 1080,}\n  ]\n}\n')
    assert main(["test", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {path}:3: failed to read config file at line 3")
    assert err[-1] == "raybridge: invalid configuration: 1 error"


def test_run_findings_point_at_values() -> None:
    """``raybridge run`` logs ``cli.findings(config)``: it re-reads the files for lines."""
    from raybridge.cli import findings as cli_findings

    config = load_config([str(DATA / "seed_b_fixed.json")])
    found = cli_findings(config)
    assert [(f.line, f.path) for f in found] == [(43, "routing.rules[0]")]
    assert "(fix: add before it" in str(found[0])
    assert isinstance(found[0], ConfigWarning)


def test_findings_are_sorted_by_file_and_line(tmp_path: Path) -> None:
    _, found = check(tmp_path, TYPOS)
    assert [f.line for f in found] == sorted(f.line or 0 for f in found)


def test_suggest_fix_guesses_protocols() -> None:
    result = inspect_config([str(AS_WRITTEN)])
    assert "VMess inbound" in suggest_fix(result.errors[0], result.skipped)
    assert suggest_fix(ConfigError("other"), result.skipped) == ""


def test_allow_insecure_is_flagged_with_the_way_out(tmp_path: Path) -> None:
    text = """{
  "outbounds": [
    {"protocol": "vmess",
     "settings": {"vnext": [{"address": "b.example", "port": 443,
                             "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]},
     "streamSettings": {"security": "tls",
                        "tlsSettings": {"serverName": "b.example",
                                        "allowInsecure": true}}}
  ]
}"""
    _, found = check(tmp_path, text)
    finding = one([f for f in found if f.path.endswith("allowInsecure")])
    assert finding.path == "outbounds[0].streamSettings.tlsSettings.allowInsecure"
    assert finding.line == line_of(text, '"allowInsecure"')
    assert "not checked" in finding.message and '"usage": "verify"' in finding.fix
