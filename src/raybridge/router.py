"""V2Ray's field-rule router (``app/router``; docs/protocols.md 4.5).

Rules are checked in order and the first match wins; within a rule every given condition
must match, within a condition any listed value may match. No match (or a rule naming an
unknown outbound) means the default outbound, the first in ``outbounds``.

Domain conditions: ``full:x`` exact, ``domain:x`` x or a subdomain, ``regexp:re`` an
unanchored search, ``keyword:x`` and a bare string a substring; case-sensitive as in V2Ray.
IP conditions: CIDRs, bare IPs and ``geoip:private``. ``geoip:``/``geosite:`` country lists
need V2Ray's ``.dat`` files, which neither raybridge nor Debian's V2Ray ships; they are
rejected with a clear error, as V2Ray itself refuses to start on them here.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from raybridge.address import Destination, IPAddress, Network
from raybridge.errors import ConfigError
from raybridge.link import Session

# Private, loopback, link-local, CGNAT, multicast and other reserved ranges: what V2Ray's
# geoip.dat lists under "private".
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
        "::/127",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)

Predicate = Callable[[Session, Destination], bool]


def is_private(ip: IPAddress) -> bool:
    """In one of the ``geoip:private`` ranges (loopback, RFC 1918, link-local, ...)."""
    return any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version)


class DomainMatcher:
    """All domain patterns of one rule, compiled into a few fast checks."""

    def __init__(self, patterns: Iterable[str], where: Callable[[str], ConfigError]) -> None:
        self.full: set[str] = set()
        self.suffixes: set[str] = set()
        self.keywords: list[str] = []
        regexps: list[str] = []
        for pattern in patterns:
            kind, sep, value = pattern.partition(":")
            if not sep:
                kind, value = "keyword", pattern
            if kind == "full":
                self.full.add(value)
            elif kind == "domain":
                self.suffixes.add(value)
            elif kind == "keyword":
                self.keywords.append(value)
            elif kind == "regexp":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise where(f"invalid regexp {value!r}: {exc}") from None
                regexps.append(value)
            elif kind in ("geosite", "ext", "ext-domain"):
                raise where(
                    f"{pattern!r} needs V2Ray's geosite.dat, which raybridge does not read; "
                    "list the domains with full:/domain:/keyword:/regexp: instead"
                )
            elif kind == "dotless":
                # dotless: a name without dots; dotless:x a name without dots containing x.
                regexps.append(r"^[^.]*" + re.escape(value) + r"[^.]*$")
            else:
                # V2Ray treats an unknown prefix like a plain keyword of the whole string.
                self.keywords.append(pattern)
        self.regexp = re.compile("|".join(f"(?:{r})" for r in regexps)) if regexps else None

    def __call__(self, domain: str) -> bool:
        if domain in self.full:
            return True
        if self.suffixes:
            if domain in self.suffixes:
                return True
            dot = domain.find(".")
            while dot != -1:
                if domain[dot + 1 :] in self.suffixes:
                    return True
                dot = domain.find(".", dot + 1)
        for keyword in self.keywords:
            if keyword in domain:
                return True
        return self.regexp is not None and self.regexp.search(domain) is not None


class IPMatcher:
    def __init__(self, patterns: Iterable[str], where: Callable[[str], ConfigError]) -> None:
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for pattern in patterns:
            lower = pattern.lower()
            if lower == "geoip:private":
                nets.extend(PRIVATE_NETWORKS)
            elif lower.startswith(("geoip:", "ext:", "ext-ip:")):
                raise where(
                    f"{pattern!r} needs V2Ray's geoip.dat, which raybridge does not read; "
                    "only geoip:private is built in; list the CIDRs instead"
                )
            else:
                try:
                    nets.append(ipaddress.ip_network(pattern, strict=False))
                except ValueError:
                    raise where(f"invalid IP or CIDR {pattern!r}") from None
        self.v4 = [n for n in nets if n.version == 4]
        self.v6 = [n for n in nets if n.version == 6]

    def __call__(self, ip: IPAddress) -> bool:
        nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (
            self.v4 if ip.version == 4 else self.v6
        )
        return any(ip in n for n in nets)


def _port_matcher(ranges: Sequence[tuple[int, int]]) -> Callable[[int], bool]:
    return lambda port: any(lo <= port <= hi for lo, hi in ranges)


@dataclass(slots=True)
class Rule:
    target: str  # an outbound tag or, when balancer is True, a balancer tag
    balancer: bool
    conditions: list[Predicate]
    needs_ip: bool  # has a target-IP condition (for IPIfNonMatch / IPOnDemand)
    description: str

    def matches(self, session: Session, dest: Destination) -> bool:
        return all(cond(session, dest) for cond in self.conditions)


_Where = Callable[[str], ConfigError]


def _inbound_tags(values: Sequence[str], where: _Where) -> Predicate:
    tags = frozenset(values)
    return lambda s, d: s.inbound_tag in tags


def _networks(values: Sequence[str], where: _Where) -> Predicate:
    nets = frozenset(Network.TCP if n == "tcp" else Network.UDP for n in values)
    return lambda s, d: d.network in nets


def _domains(values: Sequence[str], where: _Where) -> Predicate:
    dm = DomainMatcher(values, where)
    return lambda s, d: isinstance(d.host, str) and dm(d.host)


def _ips(values: Sequence[str], where: _Where) -> Predicate:
    im = IPMatcher(values, where)
    return lambda s, d: not isinstance(d.host, str) and im(d.host)


def _ports(values: Sequence[tuple[int, int]], where: _Where) -> Predicate:
    pm = _port_matcher(values)
    return lambda s, d: pm(d.port)


def _source_ports(values: Sequence[tuple[int, int]], where: _Where) -> Predicate:
    spm = _port_matcher(values)
    return lambda s, d: s.source is not None and spm(s.source.port)


def _sources(values: Sequence[str], where: _Where) -> Predicate:
    sm = IPMatcher(values, where)
    return lambda s, d: (
        s.source is not None and not isinstance(s.source.host, str) and sm(s.source.host)
    )


def _users(values: Sequence[str], where: _Where) -> Predicate:
    user_set = frozenset(values)
    return lambda s, d: s.user is not None and s.user in user_set


def _protocols(values: Sequence[str], where: _Where) -> Predicate:
    # V2Ray's ProtocolMatcher: a listed name is a prefix of the session's protocol ("http"
    # matches the sniffed "http1" and the HTTP inbound's "http/1.1"); empty names are
    # dropped (else "bittorrent," would match everything), so a list of them never matches.
    prefixes = tuple(v for v in values if v)
    return lambda s, d: bool(s.protocol) and bool(prefixes) and s.protocol.startswith(prefixes)


#: A rule's conditions by the ``RuleConfig`` field that holds them (``None``: no such
#: condition), in the order they are checked.
_CONDITIONS: tuple[tuple[str, Callable[[Any, _Where], Predicate]], ...] = (
    ("inbound_tags", _inbound_tags),
    ("networks", _networks),
    ("domains", _domains),
    ("ips", _ips),
    ("ports", _ports),
    ("source_ports", _source_ports),
    ("sources", _sources),
    ("users", _users),
    ("protocols", _protocols),
)


def compile_rule(rule: object) -> Rule:
    """Build a :class:`Rule` from a config rule (``raybridge.config.model.RuleConfig``)."""
    file = getattr(rule, "file", None)
    line = getattr(rule, "line", None)
    index = getattr(rule, "index", 0)

    def where(message: str) -> ConfigError:
        return ConfigError(message, file=file, line=line, path=f"routing.rules[{index}]")

    conds: list[Predicate] = []
    for name, condition in _CONDITIONS:
        values = getattr(rule, name, None)
        if values is not None:
            conds.append(condition(values, where))
    if getattr(rule, "attrs", None):
        raise where('"attrs" (Starlark expressions) is not supported by raybridge')
    if not conds:
        raise where("this rule has no effective fields")
    outbound_tag = getattr(rule, "outbound_tag", None)
    balancer_tag = getattr(rule, "balancer_tag", None)
    if outbound_tag:
        target, balancer = outbound_tag, False
    elif balancer_tag:
        target, balancer = balancer_tag, True
    else:
        raise where('a rule needs "outboundTag" or "balancerTag"')
    needs_ip = getattr(rule, "ips", None) is not None
    return Rule(target, balancer, conds, needs_ip, f"rule {index}")


class Router:
    """Picks an outbound tag for a session and destination."""

    def __init__(
        self,
        rules: Sequence[Rule],
        outbound_tags: Sequence[str],
        *,
        balancers: dict[str, Sequence[str]] | None = None,
        domain_strategy: str = "AsIs",
        rng: random.Random | None = None,
    ) -> None:
        self.rules = list(rules)
        self.outbound_tags = list(outbound_tags)
        self.domain_strategy = domain_strategy
        self._rng = rng or random.Random()
        self._selectors = {tag: tuple(sel) for tag, sel in (balancers or {}).items()}
        self._balancers: dict[str, list[str]] = {}
        self._update_balancers()

    def _update_balancers(self) -> None:
        self._balancers = {
            tag: [t for t in self.outbound_tags if t.startswith(prefixes)]
            for tag, prefixes in self._selectors.items()
        }

    def add_outbound(self, tag: str) -> None:
        """Outbounds registered at run time (reverse portals) take part in balancers too."""
        if tag not in self.outbound_tags:
            self.outbound_tags.append(tag)
            self._update_balancers()

    def remove_outbound(self, tag: str) -> None:
        """An outbound removed at run time leaves the balancers (rules naming it fall back
        to the default outbound, as for any unknown tag)."""
        if tag in self.outbound_tags:
            self.outbound_tags.remove(tag)
            self._update_balancers()

    def match(self, session: Session, dest: Destination) -> Rule | None:
        for rule in self.rules:
            if rule.matches(session, dest):
                return rule
        return None

    def wants_ips(self, session: Session, dest: Destination) -> bool:
        """True if resolving a domain destination could change the pick (IPIfNonMatch
        with no match, or IPOnDemand with an IP rule ahead of any match)."""
        if not isinstance(dest.host, str):
            return False
        strategy = self.domain_strategy
        if strategy == "IPIfNonMatch":
            return self.match(session, dest) is None
        if strategy == "IPOnDemand":
            for rule in self.rules:
                if rule.needs_ip:
                    return True
                if rule.matches(session, dest):
                    return False
        return False

    def pick(
        self, session: Session, dest: Destination, ips: Sequence[IPAddress] = ()
    ) -> str | None:
        """The outbound tag for ``dest`` (``None``: the default outbound); ``ips`` are its
        resolved addresses, if any."""
        rule: Rule | None = None
        if ips and self.domain_strategy == "IPOnDemand":
            # Rules stay in order; an IP condition sees the resolved addresses.
            alternatives = [dest, *(Destination(dest.network, ip, dest.port) for ip in ips)]
            for candidate in self.rules:
                if any(candidate.matches(session, d) for d in alternatives):
                    rule = candidate
                    break
        else:
            rule = self.match(session, dest)
            if rule is None and ips:
                for ip in ips:
                    rule = self.match(session, Destination(dest.network, ip, dest.port))
                    if rule is not None:
                        break
        if rule is None:
            return None
        if rule.balancer:
            candidates = self._balancers.get(rule.target)
            if not candidates:
                return None
            return self._rng.choice(candidates)
        return rule.target
