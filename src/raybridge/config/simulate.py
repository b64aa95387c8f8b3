"""The router simulation behind the checks, and what findings are made of.

:class:`Checker` holds one config with its rules compiled by the real router
(:func:`raybridge.router.compile_rule`) and answers "where does this connection go?" the
way the dispatcher would: the first matching rule wins; no match, or a rule whose target
names nothing, means the default outbound: the first outbound, or the first portal when
there is no outbound (docs/protocols.md 3.2, 4.4). It also finds the line of any value in the
parsed files, and records what a finding already explains so that later checks stay quiet.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from raybridge.address import Destination
from raybridge.config.fields import Skipped
from raybridge.config.jsonc import JArray, JNumber, JObject, JString, JValue
from raybridge.config.model import (
    ApiConfig,
    Config,
    ConfigWarning,
    HttpInboundSettings,
    InboundConfig,
    OutboundConfig,
    ReverseEndpoint,
    RuleConfig,
    SocksInboundSettings,
    VMessInboundSettings,
)
from raybridge.errors import ConfigError
from raybridge.link import Session
from raybridge.matchers import GeoAssets
from raybridge.router import DomainMatcher, Rule, compile_rule


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding(ConfigWarning):
    """A :class:`ConfigWarning` that also says how to fix it: ``fix`` is one line, often
    JSON to paste into the config."""

    fix: str = ""

    def __str__(self) -> str:
        text = ConfigWarning.__str__(self)
        return f"{text} (fix: {self.fix})" if self.fix else text


Target = OutboundConfig | ReverseEndpoint | ApiConfig


@dataclass(frozen=True, slots=True)
class Route:
    """Where the router sends one connection: ``index`` of the matching rule (``None``:
    none matched), the outbounds it may go to (several for a balancer; empty: nowhere,
    the connection is closed) and whether that is the default outbound."""

    index: int | None
    targets: tuple[Target, ...]
    default: bool


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def walk(root: JValue, path: str) -> JValue | None:
    """The node at a message path such as ``routing.rules[1].inboundTag``."""
    node: JValue | None = root
    for key, index in _PATH_TOKEN.findall(path):
        if index:
            if not isinstance(node, JArray) or int(index) >= len(node.items):
                return None
            node = node.items[int(index)]
        else:
            node = node.get(key) if isinstance(node, JObject) else None
        if node is None:
            return None
    return node


def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def tag_list(tags: Iterable[str]) -> str:
    return ", ".join(quote(t) for t in tags)


def rule_json(inbound: str, domain: str, outbound: str) -> str:
    return (
        f'{{"type": "field", "inboundTag": [{quote(inbound)}], '
        f'"domain": [{quote("full:" + domain)}], "outboundTag": {quote(outbound)}}}'
    )


def closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def raw_port(node: JValue | None) -> str:
    port = node.get("port") if isinstance(node, JObject) else None
    if isinstance(port, JNumber):
        return port.raw
    return port.value if isinstance(port, JString) else "?"


def guess_protocol(node: JValue | None, kind: str) -> tuple[str, str] | None:
    """What an inbound/outbound without ``protocol`` probably is, from its settings:
    ``(protocol, the key that says so)``."""
    settings = node.get("settings") if isinstance(node, JObject) else None
    if not isinstance(settings, JObject):
        return None
    keys = {key.value.lower(): key.value for key, _ in settings.items}
    if kind == "inbound":
        hints = [
            ("clients", "vmess"),
            ("auth", "socks"),
            ("udp", "socks"),
            ("allowtransparent", "http"),
            ("followredirect", "dokodemo-door"),
            ("address", "dokodemo-door"),
            ("network", "dokodemo-door"),
        ]
    else:
        hints = [
            ("vnext", "vmess"),
            ("redirect", "freedom"),
            ("domainstrategy", "freedom"),
            ("response", "blackhole"),
        ]
    for key, protocol in hints:
        if key in keys:
            return protocol, keys[key]
    return None


_PROTOCOL_NAMES = {
    "vmess": "a VMess",
    "socks": "a SOCKS",
    "http": "an HTTP",
    "dokodemo-door": "a dokodemo-door",
    "freedom": "a freedom",
    "blackhole": "a blackhole",
}


def suggest_fix(error: ConfigError, skipped: Sequence[Skipped] = ()) -> str:
    """A fix for a loading error, when the entry it left out tells what was meant
    (``""`` otherwise)."""
    entry = next((s for s in skipped if s.error is error or str(s.error) == str(error)), None)
    if entry is None:
        return ""
    if error.message == '"protocol" is missing' and entry.kind in ("inbound", "outbound"):
        guess = guess_protocol(entry.node, entry.kind)
        if guess is not None:
            protocol, key = guess
            return (
                f'add "protocol": {quote(protocol)} (its settings have "{key}", as '
                f"{_PROTOCOL_NAMES.get(protocol, 'a ' + protocol)} {entry.kind}'s do)"
            )
        return f'add "protocol": the {entry.kind} protocol, e.g. "vmess"'
    if error.message == '"port" is missing' and entry.kind == "inbound":
        return 'add "port": the port to listen on, e.g. "port": 1080'
    return ""


class Checker:
    """One config, its compiled rules and what the checks have already explained."""

    def __init__(
        self,
        config: Config,
        documents: Mapping[str, JValue] | None = None,
        skipped: Sequence[Skipped] = (),
    ) -> None:
        self.config = config
        self.documents = documents or {}
        self.rules: list[tuple[RuleConfig, Rule | None]] = []
        with GeoAssets([]) as assets:
            for rule in config.routing.rules:
                try:
                    compiled: Rule | None = compile_rule(rule, assets)
                except ConfigError:
                    compiled = None  # an error of its own (Node reports it); never matches
                self.rules.append((rule, compiled))
        self.targets: dict[str, Target] = {o.tag: o for o in config.outbounds if o.tag}
        self.targets.update((p.tag, p) for p in config.reverse.portals)
        if config.api is not None:
            self.targets[config.api.tag] = config.api
        # V2Ray (and raybridge) make a portal the default only if there is no outbound.
        self.default: Target | None = (
            config.outbounds[0]
            if config.outbounds
            else (config.reverse.portals[0] if config.reverse.portals else None)
        )
        self.balancers = {b.tag: b for b in config.routing.balancers}
        self.inbounds = {i.tag: i for i in config.inbounds if i.tag}
        self.bridges = {b.tag: b for b in config.reverse.bridges}
        self.broken_inbounds = {s.tag: s for s in skipped if s.kind == "inbound" and s.tag}
        self.broken_outbounds = {s.tag: s for s in skipped if s.kind == "outbound" and s.tag}
        #: Paths of rules a finding already explains (later checks stay quiet on them).
        self.explained_rules: set[str] = set()
        #: Portal tags whose tunnel rule a finding already explains.
        self.explained_portals: set[str] = set()

    # ---- where things are

    def line(
        self, file: str, path: str, line: int | None, key: str | None = None, value: str = ""
    ) -> int | None:
        """The line of ``path.key`` (of the item equal to ``value`` if it is a list), when
        the parsed file confirms that ``path`` starts at ``line``; else ``line``."""
        root = self.documents.get(file)
        owner = None if root is None else walk(root, path)
        if owner is None or owner.line != line:
            return line
        if key is None:
            return owner.line
        node = owner.get(key) if isinstance(owner, JObject) else None
        if node is None:
            return line
        if value and isinstance(node, JArray):
            for item in node.items:
                if isinstance(item, JString) and item.value == value:
                    return item.line
        return node.line

    def at(
        self,
        entry: RuleConfig | InboundConfig,
        key: str,
        message: str,
        fix: str,
        value: str = "",
    ) -> Finding:
        """A finding about field ``key`` of a rule or an inbound, on that field's line (of
        its item ``value``, in a list)."""
        return Finding(
            file=entry.file,
            line=self.line(entry.file, entry.path, entry.line, key, value),
            path=f"{entry.path}.{key}",
            message=message,
            fix=fix,
        )

    def endpoint_path(self, kind: str, endpoint: ReverseEndpoint, index: int) -> str:
        """``reverse.portals[i]`` of an endpoint, as written in its file."""
        root = self.documents.get(endpoint.file)
        items = None if root is None else walk(root, f"reverse.{kind}")
        if isinstance(items, JArray):
            for i, item in enumerate(items.items):
                if item.line == endpoint.line:
                    return f"reverse.{kind}[{i}]"
        return f"reverse.{kind}[{index}]"

    def where(self, index: int) -> str:
        rule = self.rules[index][0]
        return f"{rule.path} (line {rule.line})"

    # ---- routing

    def resolve(self, rule: RuleConfig) -> tuple[tuple[Target, ...], bool]:
        if rule.outbound_tag is not None:
            target = self.targets.get(rule.outbound_tag)
            if target is not None:
                return (target,), False
        elif rule.balancer_tag is not None and rule.balancer_tag in self.balancers:
            prefixes = tuple(self.balancers[rule.balancer_tag].selector)
            found = tuple(t for tag, t in self.targets.items() if tag.startswith(prefixes))
            if found:
                return found, False
        return ((self.default,) if self.default is not None else ()), True

    def route(self, session: Session, dest: Destination) -> Route:
        for i, (rule, compiled) in enumerate(self.rules):
            if compiled is not None and compiled.matches(session, dest):
                targets, default = self.resolve(rule)
                return Route(i, targets, default)
        return Route(None, (self.default,) if self.default is not None else (), True)

    def matches(self, index: int, session: Session, dest: Destination) -> bool:
        compiled = self.rules[index][1]
        return compiled is not None and compiled.matches(session, dest)

    def destination(self, route: Route) -> str:
        """Where a route ends, in words: 'to freedom outbound "out"'."""
        if not route.targets:
            return "nowhere: there is no outbound, so the connection is closed"
        names = " or ".join(describe_target(t) for t in route.targets)
        return f"to the default outbound ({names})" if route.default else f"to {names}"

    def describe(self, route: Route, what: str = "it") -> str:
        """How a connection is routed: 'routing.rules[0] (line 5) sends it to ...'."""
        they = "they go" if what == "them" else f"{what} goes"
        if route.index is None:
            return f"no rule matches {what}, so {they} {self.destination(route)}"
        rule = self.rules[route.index][0]
        if route.default:
            named = quote(rule.outbound_tag or rule.balancer_tag or "")
            return (
                f"{self.where(route.index)} sends {what} to {named}, which names nothing, "
                f"so {they} {self.destination(route)}"
            )
        return f"{self.where(route.index)} sends {what} {self.destination(route)}"

    # ---- who connects

    def vmess_inbounds(self) -> list[tuple[str, str, int | None]]:
        """``(tag, port, line)`` of the VMess inbounds a bridge may dial, including
        inbounds left out by an error that look like VMess inbounds, in file order."""
        found: list[tuple[str, str, int | None, str]] = [
            (i.tag, ",".join(map(str, i.ports)), i.line, i.file)
            for i in self.config.inbounds
            if i.protocol == "vmess" and i.tag
        ]
        for s in self.broken_inbounds.values():
            raw = s.node.get("protocol") if isinstance(s.node, JObject) else None
            guess = guess_protocol(s.node, "inbound")
            if (isinstance(raw, JString) and raw.value.lower() == "vmess") or (
                raw is None and guess is not None and guess[0] == "vmess"
            ):
                found.append((s.tag, raw_port(s.node), s.line, s.file))
        files = self.config.files
        found.sort(key=lambda f: (files.index(f[3]) if f[3] in files else len(files), f[2] or 0))
        return [(tag, port, line) for tag, port, line, _ in found]

    def inbound_line(self, tag: str) -> int | None:
        if tag in self.inbounds:
            return self.inbounds[tag].line
        broken = self.broken_inbounds.get(tag)
        return None if broken is None else broken.line

    def tunnel_rule_for(self, rule: RuleConfig) -> ReverseEndpoint | None:
        """The portal whose tunnels ``rule`` is written for: it sends them to the portal
        and its domain condition matches the portal's domain."""
        portal = self.targets.get(rule.outbound_tag or "")
        if not isinstance(portal, ReverseEndpoint) or rule.domains is None:
            return None
        try:
            with GeoAssets([]) as assets:
                matcher = DomainMatcher(
                    rule.domains, lambda message: ConfigError(message), assets.near(rule.file)
                )
        except ConfigError:
            return None
        return portal if matcher(portal.domain) else None


def describe_target(target: Target) -> str:
    if isinstance(target, ReverseEndpoint):
        return f"portal {quote(target.tag)}"
    if isinstance(target, ApiConfig):
        return f"the API {quote(target.tag)}"
    name = quote(target.tag) if target.tag else f"({target.path}, untagged)"
    return f"{target.protocol} outbound {name}"


def users_of(inbound: InboundConfig) -> list[str | None] | None:
    """The identities routing sees for an inbound's clients; ``None``: anyone can connect."""
    settings = inbound.settings
    if isinstance(settings, VMessInboundSettings):
        return [c.email or None for c in settings.clients]
    if isinstance(settings, SocksInboundSettings):
        if settings.accounts and settings.auth == "password":
            return list(settings.accounts)
        return None
    if isinstance(settings, HttpInboundSettings) and settings.accounts:
        return list(settings.accounts)
    return None


def sessions_of(inbound: InboundConfig) -> list[Session]:
    users = users_of(inbound)
    return [Session(inbound_tag=inbound.tag, user=u) for u in (users or [None])]


def is_loopback(listen: str) -> bool:
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return listen == "localhost"
