"""The ``dns`` section's config: what is read as V2Ray 4.34 reads it, and what is refused
(with ``file:line: field: message``) because raybridge does not do it or 4.34 would not.

Where the outcome is V2Ray's own, ``v2ray -test`` is asked too (``interop``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import textwrap

import pytest

from raybridge.config.checks import check_config
from raybridge.config.loader import load_config_text
from raybridge.config.model import Config
from raybridge.errors import ConfigError
from raybridge.node import Node
from tests.support import HAVE_V2RAY, V2RAY


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text), "d.json", environ={})


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


def dns(section: str) -> str:
    return '{\n"dns": ' + section + ',\n"outbounds": [{"protocol": "freedom"}]}'


def v2ray_accepts(text: str) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(text)
        f.flush()
        done = subprocess.run(
            [V2RAY, "-test", "-config", f.name], capture_output=True, timeout=30, check=False
        )
    return done.returncode == 0


def test_servers_hosts_client_ip_and_tag_are_read() -> None:
    cfg = load(
        dns(
            """{
              "servers": [
                "8.8.8.8",
                {"address": "127.0.0.1", "port": 5353, "domains": ["domain:lan.test", "corp",
                 "full:x.test", "regexp:^a", "keyword:k", "dotless:"],
                 "expectIPs": ["10.0.0.0/8", "geoip:private", "192.0.2.1"], "clientIp": "::1"},
                "localhost",
                {"address": "dns.example"}
              ],
              "hosts": {"b.test": "10.0.0.2", "a.test": "b.test", "domain:c.test": "::1",
                        "keyword:ads": "0.0.0.0", "regexp:^r": "10.0.0.3",
                        "full:f.test": "10.0.0.4"},
              "clientIp": "203.0.113.9",
              "tag": "dns-q"
            }"""
        )
    )
    assert cfg.dns is not None
    assert cfg.warnings == []
    a, b, local, named = cfg.dns.servers
    assert (a.address, a.port, a.system) == ("8.8.8.8", 53, False)
    assert (b.address, b.port, b.client_ip) == ("127.0.0.1", 5353, "::1")
    assert [(p.kind, p.value) for p in b.domains] == [
        ("domain", "lan.test"),
        ("keyword", "corp"),  # a plain entry is a substring, as in routing
        ("full", "x.test"),
        ("regexp", "^a"),
        ("keyword", "k"),
        ("regexp", "^[^.]*$"),
    ]
    assert b.expect_ips == ("10.0.0.0/8", "geoip:private", "192.0.2.1")
    assert local.system and named.address == "dns.example"
    # Keys in sorted order; a plain key is an exact name.
    assert [(h.pattern.kind, h.pattern.value, h.ips, h.alias) for h in cfg.dns.hosts] == [
        ("full", "a.test", (), "b.test"),
        ("full", "b.test", ("10.0.0.2",), None),
        ("domain", "c.test", ("::1",), None),
        ("full", "f.test", ("10.0.0.4",), None),
        ("keyword", "ads", ("0.0.0.0",), None),
        ("regexp", "^r", ("10.0.0.3",), None),
    ]
    assert (cfg.dns.client_ip, cfg.dns.tag) == ("203.0.113.9", "dns-q")
    Node(cfg)  # builds


def test_no_dns_section_keeps_the_system_resolver() -> None:
    cfg = load('{"outbounds": [{"protocol": "freedom"}]}')
    assert cfg.dns is None and Node(cfg).dns is None


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ('{"servers": ["https://1.1.1.1/dns-query"]}', "dns.servers[0]", "DNS over HTTPS"),
        ('{"servers": ["https+local://dns.google/dns-query"]}', "dns.servers[0]", "HTTPS"),
        ('{"servers": ["quic+local://dns.adguard.com"]}', "dns.servers[0]", "DNS over QUIC"),
        ('{"servers": ["tcp://1.1.1.1"]}', "dns.servers[0]", "DNS over TCP"),
        ('{"servers": [{"address": "tcp+local://1.1.1.1"}]}', "dns.servers[0].address", "TCP"),
        ('{"servers": ["fakedns"]}', "dns.servers[0]", "fakedns"),
        ('{"servers": ["1.1.1.1:5353"]}', "dns.servers[0]", '"port": 5353'),
        ('{"servers": [53]}', "dns.servers[0]", "expected an address"),
        ('{"servers": [""]}', "dns.servers[0]", "empty"),
        ('{"servers": [{"port": 53}]}', "dns.servers[0]", 'no "address"'),
        ('{"servers": [{"address": "1.1.1.1", "port": 70000}]}', "dns.servers[0].port", "0..65535"),
        ('{"servers": [{"address": "1.1.1.1", "domains": "domain:a"}]}',
         "dns.servers[0].domains", "expected an array"),
        ('{"servers": [{"address": "1.1.1.1", "domains": ["regexp:("]}]}',
         "dns.servers[0].domains[0]", "invalid regexp"),
        ('{"servers": [{"address": "1.1.1.1", "domains": ["domain:"]}]}',
         "dns.servers[0].domains[0]", "empty domain rule"),
        ('{"servers": [{"address": "1.1.1.1", "domains": ["dotless:a.b"]}]}',
         "dns.servers[0].domains[0]", "must not contain a dot"),
        ('{"servers": [{"address": "1.1.1.1", "domains": ["geosite:"]}]}',
         "dns.servers[0].domains[0]", "empty geosite rule"),
        ('{"servers": [{"address": "1.1.1.1", "expectIPs": ["10.0.0.0/33"]}]}',
         "dns.servers[0].expectIPs[0]", "invalid IP or CIDR"),
        ('{"servers": [{"address": "1.1.1.1", "expectIPs": "geoip:"}]}',
         "dns.servers[0].expectIPs", "empty list name"),
        ('{"servers": [{"address": "1.1.1.1", "clientIp": "me"}]}',
         "dns.servers[0].clientIp", "not an IP address"),
        ('{"servers": [{"address": "1.1.1.1", "skipFallback": true}]}',
         "dns.servers[0].skipFallback", "not a V2Ray 4.34 setting"),
        ('{"clientIp": "example.com"}', "dns.clientIp", "not an IP address"),
        ('{"queryStrategy": "UseIPv4"}', "dns.queryStrategy", "not a V2Ray 4.34 setting"),
        ('{"disableCache": true}', "dns.disableCache", "not a V2Ray 4.34 setting"),
        ('{"hosts": {"a.test": 1}}', "dns.hosts.a.test", "expected an IP address or a domain"),
        ('{"hosts": {"a.test": ""}}', "dns.hosts.a.test", "neither an IP address nor"),
        ('{"hosts": {"a.test": null}}', "dns.hosts.a.test", "expected an address"),
        ('{"hosts": {"a.test": ["1.2.3.4", "b.test"]}}', "dns.hosts.a.test[1]",
         "not an IP address"),
        ('{"hosts": {"a.test": []}}', "dns.hosts.a.test", "maps the name to nothing"),
        ('{"hosts": {"domain:": "1.2.3.4"}}', "dns.hosts.domain:", "empty domain rule"),
        ('{"hosts": {"geosite:": "1.2.3.4"}}', "dns.hosts.geosite:", "empty geosite rule"),
        ('{"hosts": {"ext:my.dat": "0.0.0.0"}}', "dns.hosts.ext:my.dat", "external resource"),
        ('{"hosts": ["a.test"]}', "dns.hosts", "expected an object"),
        ('{"servers": {"address": "1.1.1.1"}}', "dns.servers", "expected an array"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_field(section: str, path: str, message: str) -> None:
    err = error(dns(section))
    assert (err.file, err.line, err.path) == ("d.json", 2, path), str(err)
    assert message in err.message
    assert str(err).startswith(f"d.json:2: {path}: ")


def test_error_line_is_the_line_of_the_value() -> None:
    err = error(dns('{\n"hosts": {\n"ok.test": "1.2.3.4",\n"bad.test": false}}'))
    assert (err.line, err.path) == (5, "dns.hosts.bad.test")


def test_hosts_list_is_read_with_a_warning() -> None:
    cfg = load(dns('{"hosts": {"a.test": ["10.0.0.1", "::1"]}}'))
    assert cfg.dns is not None and cfg.dns.hosts[0].ips == ("10.0.0.1", "::1")
    (warning,) = cfg.warnings
    assert warning.path == "dns.hosts.a.test" and "V2Ray 4.34 takes one address" in warning.message


def test_hosts_keys_are_exact_and_the_last_duplicate_wins() -> None:
    cfg = load(dns('{"hosts": {"A.test": "10.0.0.1", "a.test": "10.0.0.2", "a.test": "10.0.0.3"}}'))
    assert cfg.dns is not None
    assert [(h.pattern.value, h.ips) for h in cfg.dns.hosts] == [
        ("A.test", ("10.0.0.1",)),
        ("a.test", ("10.0.0.3",)),
    ]
    assert [w.message for w in cfg.warnings] == ["duplicate name: the last one wins"]


def test_unknown_keys_warn() -> None:
    cfg = load(dns('{"servers": [{"address": "1.1.1.1", "prot": 5353}], "host": {}}'))
    assert sorted(w.path for w in cfg.warnings) == ["dns", "dns.servers[0]"]


def test_client_ip_on_localhost_warns() -> None:
    cfg = load(dns('{"servers": [{"address": "localhost", "clientIp": "10.0.0.1"}]}'))
    assert [w.path for w in cfg.warnings] == ["dns.servers[0].clientIp"]


def test_routing_rule_on_the_dns_tag_names_an_inbound() -> None:
    text = json.dumps(
        {
            "dns": {"servers": ["127.0.0.1"], "tag": "dns-q"},
            "outbounds": [{"protocol": "freedom", "tag": "direct"}],
            "routing": {
                "rules": [{"type": "field", "inboundTag": ["dns-q"], "outboundTag": "direct"}]
            },
        }
    )
    cfg = load_config_text(text, "d.json", environ={})
    assert cfg.warnings == []
    assert not [f for f in check_config(cfg) if "dns-q" in str(f)]


@pytest.mark.interop
@pytest.mark.skipif(not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)")
@pytest.mark.parametrize(
    ("section", "accepted"),
    [
        ('{"servers": ["8.8.8.8", {"address": "127.0.0.1", "port": 5353, '
         '"domains": ["domain:a.test"], "expectIPs": ["10.0.0.0/8"]}, "localhost"], '
         '"hosts": {"a.test": "10.0.0.1", "domain:b.test": "a.test"}, "tag": "q"}', True),
        ('{"hosts": {"a.test": ["10.0.0.1"]}}', False),
        ('{"servers": [{"address": "1.1.1.1", "domains": "domain:a"}]}', False),
        ('{"servers": [{"address": "1.1.1.1", "clientIp": "me"}]}', False),
        ('{"clientIp": "example.com"}', False),
        ('{"servers": [53]}', False),
    ],
)  # fmt: skip
def test_v2ray_agrees_on_what_is_valid(section: str, accepted: bool) -> None:
    text = dns(section)
    assert v2ray_accepts(text) == accepted
    try:
        load(text)
    except ConfigError:
        ours = False
    else:
        ours = True
    assert ours == accepted or section.startswith('{"hosts": {"a.test": [')  # we take lists


def test_client_ip_default_and_made_up_tag() -> None:
    cfg = load(
        dns(
            '{"clientIp": "203.0.113.9", "servers": ["10.0.0.53", '
            '{"address": "10.0.0.54", "clientIp": "2001:db8::1"}, "localhost"]}'
        )
    )
    node = Node(cfg)
    assert node.dns is not None
    specs = [state.spec for state in node.dns.policy.servers]
    assert [str(s.client_ip) for s in specs] == ["203.0.113.9", "2001:db8::1", "None"]
    assert [s.system for s in specs] == [False, False, True]
    assert node.dns.tag.startswith("v2ray.system.")  # 4.34 makes one up
    assert node.dispatcher.resolver is node.dns
    assert all(getattr(o, "resolver", node.dns) is node.dns for o in node.outbounds)
