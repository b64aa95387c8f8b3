"""The routing section: rule list forms, ports, networks, targets."""

# JSON snippets are built with %-formatting: their braces would need doubling for str.format.
# ruff: noqa: UP031

from __future__ import annotations

import textwrap

import pytest

from raybridge.config import Config, ConfigError, RuleConfig, load_config_text


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text), "r.json", environ={})


def rule(body: str) -> RuleConfig:
    cfg = load('{"routing": {"rules": [{"type": "field", "outboundTag": "out", %s}]}}' % body)
    return cfg.routing.rules[0]


def rule_warnings(body: str) -> list[str]:
    cfg = load('{"routing": {"rules": [{"type": "field", "outboundTag": "out", %s}]}}' % body)
    # drop the reference check ("out" names no outbound)
    return [w.message for w in cfg.warnings if "names no" not in w.message]


def rule_error(body: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        rule(body)
    return info.value


@pytest.mark.parametrize(
    ("field", "attr"),
    [
        ("domain", "domains"),
        ("domains", "domains"),
        ("ip", "ips"),
        ("source", "sources"),
        ("user", "users"),
        ("inboundTag", "inbound_tags"),
        ("protocol", "protocols"),
    ],
)
def test_string_list_fields_accept_list_or_comma_string(field: str, attr: str) -> None:
    assert getattr(rule('"%s": ["a", "b c"]' % field), attr) == ["a", "b c"]
    # a single string is split at commas without trimming, as V2Ray does
    assert getattr(rule('"%s": "a, b"' % field), attr) == ["a", " b"]
    assert getattr(rule('"%s": "a"' % field), attr) == ["a"]


def test_domain_and_domains_are_concatenated() -> None:
    got = rule('"domain": ["full:a.com"], "domains": "domain:b.com,regexp:^c"')
    assert got.domains == ["full:a.com", "domain:b.com", "regexp:^c"]


def test_values_are_kept_as_written() -> None:
    got = rule('"ip": ["10.0.0.0/8", "geoip:private", "not-an-ip"], "domain": ["geosite:cn"]')
    assert got.ips == ["10.0.0.0/8", "geoip:private", "not-an-ip"]
    assert got.domains == ["geosite:cn"]


def test_absent_and_empty_lists_mean_no_condition() -> None:
    got = rule('"domain": [], "ip": null, "port": 80')
    assert got.domains is None and got.ips is None and got.users is None
    assert got.networks is None and got.source_ports is None and got.attrs is None


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("53", [(53, 53)]),
        ('"53"', [(53, 53)]),
        ('"1000-2000"', [(1000, 2000)]),
        ('"53,443,1000-2000"', [(53, 53), (443, 443), (1000, 2000)]),
        ('"53, 443 ,"', [(53, 53), (443, 443)]),
        ("65535", [(65535, 65535)]),
    ],
)
def test_port_forms(port: str, expected: list[tuple[int, int]]) -> None:
    assert rule('"port": %s' % port).ports == expected
    assert rule('"sourcePort": %s' % port).source_ports == expected


@pytest.mark.parametrize(
    ("port", "warning"),
    [
        ("0", "port 0 never matches"),
        ('""', "empty port list never matches"),
        ('"2000-1000"', 'port range "2000-1000" is empty and never matches'),
        ("70000", "port 70000 is above 65535 and never matches"),
    ],
)
def test_ports_v2ray_accepts_but_never_match(port: str, warning: str) -> None:
    assert rule_warnings('"port": %s' % port) == [warning]


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ('"abc"', '"abc" is not a port'),
        ('"053"', '"053" is not a port'),
        ('"53.0"', '"53.0" is not a port'),
        ('"1-x"', '"1-x" is not a port range'),
        ("-1", "-1 is not a port"),
        ("1.5", "1.5 is not a port"),
        ("[53]", "an array is not a port or a list of ports"),
    ],
)
def test_bad_ports(port: str, message: str) -> None:
    err = rule_error('"port": %s' % port)
    assert (err.path, err.message) == ("routing.rules[0].port", message)


@pytest.mark.parametrize(
    ("network", "expected", "warnings"),
    [
        ('"tcp"', {"tcp"}, []),
        ('"tcp,udp"', {"tcp", "udp"}, []),
        ('["UDP"]', {"udp"}, []),
        ('"tcp, udp"', {"tcp"}, ['unknown network " udp" is ignored (no spaces: write "tcp,udp")']),
        (
            '"unix"',
            set(),
            ['unknown network "unix" is ignored', "no known network: the rule never matches"],
        ),
    ],
)
def test_networks(network: str, expected: set[str], warnings: list[str]) -> None:
    assert rule('"network": %s' % network).networks == frozenset(expected)
    assert rule_warnings('"network": %s' % network) == warnings


def test_empty_network_list_is_no_condition_so_rule_is_empty() -> None:
    err = rule_error('"network": []')
    assert err.message == "this rule has no effective fields"


def test_rule_without_conditions_is_an_error_at_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            """\
            {"routing": {"rules": [
              {"type": "field", "port": 53, "outboundTag": "dns"},
              {"type": "field",
               "outboundTag": "direct"}
            ]}}
            """
        )
    assert str(info.value) == "r.json:3: routing.rules[1]: this rule has no effective fields"


def test_attrs_alone_is_a_condition() -> None:
    assert rule("\"attrs\": \"attrs[':method'] == 'GET'\"").attrs == "attrs[':method'] == 'GET'"


def test_targets() -> None:
    cfg = load(
        '{"routing": {"rules": [{"type": "field", "port": 1, "balancerTag": "b"}],'
        ' "balancers": [{"tag": "b", "selector": "out-,px"}]}}'
    )
    r = cfg.routing.rules[0]
    assert (r.outbound_tag, r.balancer_tag) == (None, "b")
    assert cfg.routing.balancers[0].selector == ["out-", "px"]
    both = rule('"port": 1, "balancerTag": "b"')
    assert (both.outbound_tag, both.balancer_tag) == ("out", None)
    with pytest.raises(ConfigError) as info:
        load('{"routing": {"rules": [{"type": "field", "port": 1}]}}')
    assert info.value.message == "neither outboundTag nor balancerTag is specified in routing rule"


def test_rule_type() -> None:
    assert rule('"type": "Field", "port": 1').ports == [(1, 1)]
    err = rule_error('"type": "chinaip", "port": 1')
    assert (err.path, err.message) == (
        "routing.rules[0].type",
        'unknown routing rule type "chinaip" (only "field" exists)',
    )
    cfg = load('{"routing": {"rules": [{"port": 1, "outboundTag": "x"}]}}')
    assert 'rule has no "type"' in cfg.warnings[0].message


def test_balancer_errors() -> None:
    with pytest.raises(ConfigError, match="empty balancer tag"):
        load('{"routing": {"balancers": [{"selector": ["a"]}]}}')
    with pytest.raises(ConfigError, match="empty selector list"):
        load('{"routing": {"balancers": [{"tag": "b", "selector": []}]}}')


@pytest.mark.parametrize(
    ("spelling", "strategy"),
    [
        ("AsIs", "AsIs"),
        ("IPIfNonMatch", "IPIfNonMatch"),
        ("ip_if_non_match", "IPIfNonMatch"),
        ("ip-if-non-match", "IPIfNonMatch"),
        ("IpOnDemand", "IPOnDemand"),
        ("ip_on_demand", "IPOnDemand"),
    ],
)
def test_router_domain_strategy(spelling: str, strategy: str) -> None:
    cfg = load('{"routing": {"domainStrategy": "%s"}}' % spelling)
    assert cfg.routing.domain_strategy == strategy
    assert cfg.warnings == []


def test_router_domain_strategy_quirks() -> None:
    cfg = load('{"routing": {"domainStrategy": "AlwaysIP"}}')
    assert cfg.routing.domain_strategy == "AsIs"
    assert "behaves like" in cfg.warnings[0].message
    cfg = load('{"routing": {"domainStrategy": "sometimes"}}')
    assert cfg.routing.domain_strategy == "AsIs"
    assert cfg.warnings[0].message == 'unknown domainStrategy "sometimes": using "AsIs"'


def test_legacy_routing_settings_block() -> None:
    cfg = load(
        '{"routing": {"rules": [{"type": "field", "port": 1, "outboundTag": "a"}],'
        ' "settings": {"domainStrategy": "IPOnDemand",'
        ' "rules": [{"type": "field", "port": 2, "outboundTag": "b"}]}}}'
    )
    assert cfg.routing.domain_strategy == "IPOnDemand"
    assert [(r.outbound_tag, r.index) for r in cfg.routing.rules] == [("a", 0), ("b", 1)]
    cfg = load(
        '{"routing": {"domainStrategy": "AsIs", "settings": {"domainStrategy": "IPOnDemand"}}}'
    )
    assert cfg.routing.domain_strategy == "AsIs"


def test_reference_warnings() -> None:
    cfg = load(
        """\
        {
          "inbounds": [{"protocol": "socks", "port": 1, "tag": "in"}],
          "outbounds": [{"protocol": "freedom", "tag": "direct"}],
          "reverse": {"portals": [{"tag": "portal", "domain": "d"}],
                      "bridges": [{"tag": "bridge", "domain": "d"}]},
          "routing": {"rules": [
            {"type": "field", "inboundTag": ["in", "bridge"], "outboundTag": "portal"},
            {"type": "field", "inboundTag": ["tunnel"], "outboundTag": "direct"},
            {"type": "field", "port": 1, "outboundTag": "nowhere"},
            {"type": "field", "port": 2, "balancerTag": "nobal"}
          ]}
        }
        """
    )
    assert [(w.line, w.path, w.message) for w in cfg.warnings] == [
        (
            8,
            "routing.rules[1].inboundTag",
            '"tunnel" names no inbound or bridge: this never matches',
        ),
        (
            9,
            "routing.rules[2].outboundTag",
            '"nowhere" names no outbound or portal: matching traffic goes to the default outbound',
        ),
        (10, "routing.rules[3].balancerTag", '"nobal" names no balancer'),
    ]
