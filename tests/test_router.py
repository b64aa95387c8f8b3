"""Router: V2Ray's field rules, first match wins, default outbound otherwise."""

from __future__ import annotations

import ipaddress

import pytest

from raybridge.address import Destination, Network, tcp, udp
from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.link import Session
from raybridge.router import DomainMatcher, Router, compile_rule


def router(rules: str, outbounds: tuple[str, ...] = ("a", "b", "c")) -> Router:
    obs = ",".join(f'{{"tag": "{t}", "protocol": "freedom"}}' for t in outbounds)
    cfg = load_config_text(f'{{"outbounds": [{obs}], "routing": {{"rules": {rules}}}}}')
    return Router([compile_rule(r) for r in cfg.routing.rules], list(outbounds))


def s(tag: str = "in", source: str | None = None, user: str | None = None) -> Session:
    src = tcp(source, 40000) if source else None
    return Session(inbound_tag=tag, source=src, user=user)


def where(message: str) -> ConfigError:
    return ConfigError(message)


@pytest.mark.parametrize(
    "pattern,domain,expected",
    [
        ("full:example.com", "example.com", True),
        ("full:example.com", "www.example.com", False),
        ("domain:example.com", "example.com", True),
        ("domain:example.com", "a.b.example.com", True),
        ("domain:example.com", "badexample.com", False),
        ("keyword:ample", "example.com", True),
        ("ample", "example.com", True),
        ("regexp:^ex.*\\.com$", "example.com", True),
        ("regexp:^ex.*\\.org$", "example.com", False),
        ("full:Example.com", "example.com", False),  # case-sensitive, as V2Ray
    ],
)
def test_domain_patterns(pattern: str, domain: str, expected: bool) -> None:
    assert DomainMatcher([pattern], where)(domain) is expected


def test_first_match_wins_and_default() -> None:
    r = router(
        """[
        {"type": "field", "domain": ["domain:lan"], "outboundTag": "b"},
        {"type": "field", "ip": ["10.0.0.0/8", "geoip:private"], "outboundTag": "c"},
        {"type": "field", "port": "53,1000-2000", "network": "udp", "outboundTag": "b"},
        {"type": "field", "inboundTag": ["bridge"], "outboundTag": "c"}
    ]"""
    )
    assert r.pick(s(), tcp("nas.lan", 80)) == "b"
    assert r.pick(s(), tcp("10.1.2.3", 80)) == "c"
    assert r.pick(s(), tcp("192.168.1.1", 80)) == "c"  # geoip:private
    assert r.pick(s(), tcp("8.8.8.8", 53)) is None  # tcp: the UDP rule does not match
    assert r.pick(s(), udp("8.8.8.8", 53)) == "b"
    assert r.pick(s(), udp("8.8.8.8", 1500)) == "b"
    assert r.pick(s("bridge"), tcp("example.com", 443)) == "c"
    assert r.pick(s(), tcp("example.com", 443)) is None  # default outbound


def test_source_user_and_all_conditions_must_match() -> None:
    r = router(
        """[
        {"type": "field", "source": ["127.0.0.0/8"], "user": ["a@x"], "outboundTag": "b"},
        {"type": "field", "sourcePort": "1000-2000", "outboundTag": "c"}
    ]"""
    )
    assert r.pick(s(source="127.0.0.1", user="a@x"), tcp("example.com", 1)) == "b"
    assert r.pick(s(source="127.0.0.1", user="b@x"), tcp("example.com", 1)) is None
    assert r.pick(s(source="10.0.0.1", user="a@x"), tcp("example.com", 1)) is None
    session = Session(
        inbound_tag="x", source=Destination(Network.TCP, ipaddress.ip_address("1.1.1.1"), 1500)
    )
    assert r.pick(session, tcp("example.com", 1)) == "c"


def test_ip_strategy_uses_resolved_addresses() -> None:
    r = router('[{"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "b"}]')
    r.domain_strategy = "IPIfNonMatch"
    dest = tcp("localhost", 80)
    assert r.wants_ips(s(), dest)
    assert r.pick(s(), dest) is None
    assert r.pick(s(), dest, [ipaddress.ip_address("127.0.0.1")]) == "b"


def test_bad_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="regexp"):
        router('[{"type": "field", "domain": ["regexp:("], "outboundTag": "b"}]')
    with pytest.raises(ConfigError, match="CIDR"):
        router('[{"type": "field", "ip": ["10.0.0.0/33"], "outboundTag": "b"}]')
    # A list no file has: "not found" without the file, "no list" with one (tests/test_geo*.py)
    with pytest.raises(ConfigError, match=r"geoip\.dat"):
        router('[{"type": "field", "ip": ["geoip:no-such-list"], "outboundTag": "b"}]')
    with pytest.raises(ConfigError, match=r"geosite\.dat"):
        router('[{"type": "field", "domain": ["geosite:no-such-list"], "outboundTag": "b"}]')


def test_balancer_picks_among_prefixed_tags() -> None:
    r = Router([], ["x-1", "x-2", "y"], balancers={"bal": ["x-"]})
    from raybridge.router import Rule

    r.rules = [Rule("bal", True, [lambda _s, _d: True], False, "rule 0")]
    picks = {r.pick(s(), tcp("a", 1)) for _ in range(50)}
    assert picks == {"x-1", "x-2"}
