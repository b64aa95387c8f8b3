"""V2Ray's field-rule router (``app/router``; docs/protocols.md 4.5).

Rules are checked in order and the first match wins; within a rule every given condition
must match, within a condition any listed value may match. No match (or a rule naming an
unknown outbound) means the default outbound, the first in ``outbounds``.

Domain conditions: ``full:x`` exact, ``domain:x`` x or a subdomain, ``regexp:re`` an
unanchored search, ``keyword:x`` and a bare string a substring; case-sensitive as in V2Ray.
``geosite:LIST[@attr]`` and ``ext:FILE:LIST`` the entries of a V2Ray geosite list.
IP conditions: CIDRs, bare IPs, ``geoip:private`` (built in), ``geoip:CC`` and
``ext:FILE:CC`` lists of a geoip file. The matchers are :mod:`raybridge.matchers`; the
``.dat`` files are found as V2Ray finds them (next to the config or in
``V2RAY_LOCATION_ASSET``, then the system directories; docs/protocols.md 4.11), each file
opened once for all the rules of a config.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from raybridge.address import Destination, IPAddress, Network
from raybridge.errors import ConfigError
from raybridge.link import Session
from raybridge.matchers import (
    PRIVATE_NETWORKS,
    DomainMatcher,
    GeoAssets,
    IPMatcher,
    is_private,
)

__all__ = [
    "PRIVATE_NETWORKS",
    "DomainMatcher",
    "IPMatcher",
    "Router",
    "Rule",
    "compile_rule",
    "compile_rules",
    "is_private",
]

Predicate = Callable[[Session, Destination], bool]


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
        for cond in self.conditions:  # noqa: SIM110 - a loop: no generator per rule, per link
            if not cond(session, dest):
                return False
        return True


_Where = Callable[[str], ConfigError]
_Condition = Callable[[Any, _Where, GeoAssets], Predicate]


def _inbound_tags(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    tags = frozenset(values)
    return lambda s, d: s.inbound_tag in tags


def _networks(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    nets = frozenset(Network.TCP if n == "tcp" else Network.UDP for n in values)
    return lambda s, d: d.network in nets


def _domains(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    dm = DomainMatcher(values, where, assets)
    return lambda s, d: isinstance(d.host, str) and dm(d.host)


def _ips(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    im = IPMatcher(values, where, assets)
    return lambda s, d: not isinstance(d.host, str) and im(d.host)


def _ports(values: Sequence[tuple[int, int]], where: _Where, assets: GeoAssets) -> Predicate:
    pm = _port_matcher(values)
    return lambda s, d: pm(d.port)


def _source_ports(values: Sequence[tuple[int, int]], where: _Where, assets: GeoAssets) -> Predicate:
    spm = _port_matcher(values)
    return lambda s, d: s.source is not None and spm(s.source.port)


def _sources(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    sm = IPMatcher(values, where, assets)
    return lambda s, d: (
        s.source is not None and not isinstance(s.source.host, str) and sm(s.source.host)
    )


def _users(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    user_set = frozenset(values)
    return lambda s, d: s.user is not None and s.user in user_set


def _protocols(values: Sequence[str], where: _Where, assets: GeoAssets) -> Predicate:
    # V2Ray's ProtocolMatcher: a listed name is a prefix of the session's protocol ("http"
    # matches the sniffed "http1" and the HTTP inbound's "http/1.1"); empty names are
    # dropped (else "bittorrent," would match everything), so a list of them never matches.
    prefixes = tuple(v for v in values if v)
    return lambda s, d: bool(s.protocol) and bool(prefixes) and s.protocol.startswith(prefixes)


#: A rule's conditions by the ``RuleConfig`` field that holds them (``None``: no such
#: condition), in the order they are checked.
_CONDITIONS: tuple[tuple[str, _Condition], ...] = (
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


#: The JSON field each condition comes from, for error messages.
_FIELDS = {
    "inbound_tags": "inboundTag",
    "networks": "network",
    "domains": "domain",
    "ips": "ip",
    "ports": "port",
    "source_ports": "sourcePort",
    "sources": "source",
    "users": "user",
    "protocols": "protocol",
}


def compile_rule(rule: object, assets: GeoAssets | None = None) -> Rule:
    """Build a :class:`Rule` from a config rule (``raybridge.config.model.RuleConfig``).
    Geo lists come from ``assets`` (its open files), looked for near the rule's file."""
    if assets is None:
        with GeoAssets([]) as own:
            return compile_rule(rule, own)
    file = getattr(rule, "file", None)
    line = getattr(rule, "line", None)
    index = getattr(rule, "index", 0)
    near = assets.near(file)

    def where(message: str) -> ConfigError:
        return ConfigError(message, file=file, line=line, path=f"routing.rules[{index}]")

    conds: list[Predicate] = []
    for name, condition in _CONDITIONS:
        values = getattr(rule, name, None)
        if values is not None:
            field = _FIELDS.get(name, name)

            def located(message: str, field: str = field) -> ConfigError:
                return ConfigError(
                    message, file=file, line=line, path=f"routing.rules[{index}].{field}"
                )

            conds.append(condition(values, located, near))
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


def compile_rules(rules: Iterable[object]) -> list[Rule]:
    """:func:`compile_rule` for each rule, opening each geo file once for all of them.
    Every rule's error is reported: the first raised, the others in its ``also``."""
    compiled: list[Rule] = []
    errors: list[ConfigError] = []
    with GeoAssets([]) as assets:
        for rule in rules:
            try:
                compiled.append(compile_rule(rule, assets))
            except ConfigError as exc:
                errors.append(exc)
    if errors:
        errors[0].also.extend(errors[1:])
        raise errors[0]
    return compiled


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
