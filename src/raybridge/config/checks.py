"""Checks beyond syntax: what a config will *do*, explained like a colleague would.

:func:`check_config` returns :class:`~raybridge.config.simulate.Finding` warnings: file,
line, field, what is wrong (``message``) and how to fix it (``fix``, often a rule to
paste). ``raybridge test`` prints them; ``raybridge run`` logs them. None of them stops a
node: V2Ray would run these configs too (and then misroute, or open a proxy to anyone).

Routing questions are answered by simulating the router (:mod:`raybridge.config.simulate`)
for the connections the reverse proxy makes (docs/protocols.md 3.4): a bridge's tunnel request
is TCP ``domain:0`` with the bridge's tag as inbound tag; at the portal it arrives with the
tag of the VMess inbound the bridge dialled.

The checks, in the order they run (an earlier one marks what it explains, so that a later
one does not say it again):

* :func:`reference_checks`: rule tags that name no inbound, bridge, outbound, portal or
  balancer (with the closest existing tag; the loader's plainer warnings about the same
  fields are dropped by :func:`findings`), a tunnel rule naming a tag from the bridge's
  node, and inbound tags swapped between a portal's tunnel rule and its client rule;
* :func:`portal_checks`: a portal that no tunnel request reaches, or whose tunnel rule
  comes after a rule that catches the tunnels first;
* :func:`bridge_checks`: a bridge whose tunnels go anywhere but a VMess outbound;
* :func:`open_proxies`: SOCKS/HTTP inbounds without authentication beyond loopback;
* :func:`bridge_exposure`: who may register as a bridge of a portal (on loopback too);
* :func:`status_exposure`: a status server beyond loopback without a token;
* :func:`api_exposure`: an inbound routed to the API that listens beyond loopback;
* :func:`protocol_rules`: ``protocol`` rules that cannot match (a name nothing reports, or
  no inbound of the rule sniffs).

Checks also run on a config that failed to load (``raybridge test`` reloads it
leniently, :func:`raybridge.config.loader.inspect_config`): entries left out still count
by tag, and :func:`suggest_fix` proposes fixes for some errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from raybridge.address import Destination, Network
from raybridge.config.fields import Skipped
from raybridge.config.jsonc import JValue
from raybridge.config.model import (
    Config,
    ConfigWarning,
    HttpInboundSettings,
    OutboundConfig,
    ReverseEndpoint,
    RuleConfig,
    SocksInboundSettings,
)
from raybridge.config.simulate import (
    Checker,
    Finding,
    Route,
    Target,
    closest,
    describe_target,
    guess_protocol,
    is_loopback,
    quote,
    rule_json,
    sessions_of,
    suggest_fix,
    tag_list,
    users_of,
)
from raybridge.link import Session

if TYPE_CHECKING:
    from raybridge.config.model import InboundConfig

__all__ = [
    "Finding",
    "api_exposure",
    "bridge_checks",
    "bridge_exposure",
    "check_config",
    "findings",
    "open_proxies",
    "portal_checks",
    "reference_checks",
    "status_exposure",
    "suggest_fix",
]


# --------------------------------------------------------------------------- references


def reference_checks(ck: Checker) -> Iterator[Finding]:
    """Rule tags that name nothing: the rule never matches (``inboundTag``), or its
    traffic goes to the default outbound (``outboundTag``, ``balancerTag``)."""
    known_in = set(ck.inbounds) | set(ck.bridges) | set(ck.broken_inbounds)
    dns = ck.config.dns
    if dns is not None and dns.tag:
        known_in.add(dns.tag)  # the built-in DNS client's queries are routed with it
    known_out = set(ck.targets) | set(ck.broken_outbounds)
    for index, (rule, _) in enumerate(ck.rules):
        unknown = [t for t in rule.inbound_tags or () if t not in known_in]
        portal = ck.tunnel_rule_for(rule)
        if unknown and portal is not None and len(unknown) == len(rule.inbound_tags or ()):
            yield from _tunnel_rule_tags(ck, index, portal, unknown)
            continue
        for tag in unknown:
            alone = len(unknown) == len(rule.inbound_tags or ())
            yield _unknown_inbound_tag(ck, rule, tag, known_in, alone)
        if rule.outbound_tag is not None and rule.outbound_tag not in known_out:
            yield _unknown_target(ck, rule, "outboundTag", rule.outbound_tag, known_out)
        if rule.outbound_tag is None and rule.balancer_tag not in ck.balancers:
            yield _unknown_target(
                ck, rule, "balancerTag", rule.balancer_tag or "", set(ck.balancers)
            )


def _unknown_inbound_tag(
    ck: Checker, rule: RuleConfig, tag: str, known: set[str], alone: bool
) -> Finding:
    never = "this rule never matches" if alone else "this part of the rule never matches"
    message = f"{quote(tag)} names no inbound or bridge, so {never}"
    if tag in ck.targets:
        message += (
            f" ({quote(tag)} is an outbound tag; inboundTag takes the tag of the inbound a "
            "connection arrived on, or of a bridge)"
        )
    fix = _tag_fix(
        tag,
        known,
        "use the tag of an inbound or bridge of this config",
        f'give the inbound this rule is for "tag": {quote(tag)}',
    )
    return ck.at(rule, "inboundTag", message, fix, tag)


def _unknown_target(ck: Checker, rule: RuleConfig, key: str, tag: str, known: set[str]) -> Finding:
    noun = "outbound or portal" if key == "outboundTag" else "balancer"
    if ck.default is None:
        goes = "matching connections are closed (there is no outbound)"
    else:
        goes = f"matching traffic goes to the default outbound, {describe_target(ck.default)}"
    message = f"{quote(tag)} names no {noun}: {goes}"
    if key == "outboundTag" and (tag in ck.inbounds or tag in ck.bridges):
        message += (
            f' ({quote(tag)} is an inbound or bridge tag; "outboundTag" takes an outbound '
            "or portal tag)"
        )
    if key == "balancerTag":
        add = f'add {{"tag": {quote(tag)}, "selector": ["<outbound tag prefix>"]}} to '
        add += "routing.balancers"
    else:
        add = f'add an outbound with "tag": {quote(tag)}'
    return ck.at(rule, key, message, _tag_fix(tag, known, "use one of", add))


def _tag_fix(tag: str, known: set[str], use: str, otherwise: str) -> str:
    """The fix for a tag that names nothing: the closest known tag if one is close, else
    ``use: <the known tags>``, else (no tags at all) ``otherwise``."""
    close = closest(tag, known)
    if close is not None:
        return f"did you mean {quote(close)}? write it instead of {quote(tag)}"
    if known:
        return f"{use}: {tag_list(sorted(known))}"
    return otherwise


def _tunnel_rule_tags(
    ck: Checker, index: int, portal: ReverseEndpoint, unknown: list[str]
) -> Iterator[Finding]:
    """The portal's tunnel rule names only tags this node does not have: typically a tag
    of the bridge's own config (the seed's ``"inboundTag": ["tunnel"]``, the tag of A's
    VMess outbound). Suggest the VMess inbound bridges dial, and spot the seed's other
    half of the mistake: the client rule names that inbound while the client inbound is
    named by no rule (the two rules' tags are swapped)."""
    rule = ck.rules[index][0]
    ck.explained_portals.add(portal.tag)
    candidates = ck.vmess_inbounds()
    tags = [tag for tag, _, _ in candidates]
    ports = {tag: port for tag, port, _ in candidates}
    chosen, swap = _tunnel_inbound(ck, index, portal, tags)
    message = (
        f"{tag_list(unknown)} names no inbound or bridge of this config, so this rule, meant "
        f'for the tunnels of portal "{portal.tag}" (requests for {portal.domain}), never '
        "matches. A bridge's tunnel arrives on the VMess inbound its outbound dials, and "
        "routing here sees that inbound's tag; tags of the bridge's own config (such as the "
        "tag of its VMess outbound) are never seen on this node"
    )
    if chosen is not None:
        fix = f'"inboundTag": [{quote(chosen)}] (the VMess inbound on port {ports[chosen]})'
    elif tags:
        listed = ", ".join(f"{quote(t)} (port {ports[t]})" for t in tags)
        fix = f'"inboundTag": [the VMess inbound the bridge dials: one of {listed}]'
    else:
        fix = (
            "add a VMess inbound for the bridge (its outbound's port and user id) and "
            "name its tag here"
        )
    finding = ck.at(rule, "inboundTag", message, fix, unknown[0])
    yield finding
    if swap is not None and chosen is not None:
        client_rule, client_tag = swap
        yield _swapped_tags(ck, rule, finding.line, portal, chosen, client_rule, client_tag)


def _tunnel_inbound(
    ck: Checker, index: int, portal: ReverseEndpoint, tags: list[str]
) -> tuple[str | None, tuple[RuleConfig, str] | None]:
    """The VMess inbound the tunnel rule (``index``) should name, when it can be told: the
    only one; or, when the portal's one client rule names one of them and exactly one is
    named by no rule, the client rule's (the two rules' tags look swapped: then also that
    client rule and the inbound nobody names)."""
    if len(tags) == 1:
        return tags[0], None
    named = {t for r, _ in ck.rules for t in r.inbound_tags or ()}
    unnamed = [t for t in tags if t not in named]
    client_rules = [
        r
        for i, (r, _) in enumerate(ck.rules)
        if i != index
        and r.outbound_tag == portal.tag
        and r.domains is None
        and len(set(r.inbound_tags or ()) & set(tags)) == 1
    ]
    if len(client_rules) != 1 or len(unnamed) != 1:
        return None, None
    client_rule = client_rules[0]
    chosen = next(t for t in client_rule.inbound_tags or () if t in tags)
    return chosen, (client_rule, unnamed[0])


def _swapped_tags(
    ck: Checker,
    rule: RuleConfig,
    rule_line: int | None,
    portal: ReverseEndpoint,
    chosen: str,
    client_rule: RuleConfig,
    client_tag: str,
) -> Finding:
    """The client rule names ``chosen``, the inbound the tunnel ``rule`` needs, while the
    clients' inbound ``client_tag`` is named by no rule."""
    ck.explained_rules.add(client_rule.path)
    client_line = ck.inbound_line(client_tag)
    # Where the client inbound's traffic goes now: a plain request from it.
    now = ck.route(Session(inbound_tag=client_tag), Destination(Network.TCP, "example.com", 443))
    if now.targets == (portal,) and now.default:
        fate = (
            "its clients reach the portal only because the portal is the default "
            "outbound while this config has no outbound of its own"
        )
    else:
        fate = f"a connection from its clients: {ck.describe(now)}"
    message = (
        f'this rule sends everything that arrives on "{chosen}" to portal "{portal.tag}", '
        f'but "{chosen}" is the inbound the bridge\'s tunnels arrive on ({rule.path}, line '
        f'{rule_line}, needs it), and inbound "{client_tag}" (line {client_line}) is named '
        f"by no rule ({fate}). The inbound tags of the two rules look swapped"
    )
    fix = (
        f'"inboundTag": [{quote(client_tag)}] here (the clients\' inbound), and '
        f'"inboundTag": [{quote(chosen)}] in {rule.path}'
    )
    return ck.at(client_rule, "inboundTag", message, fix, chosen)


# --------------------------------------------------------------------------- portals


def portal_checks(ck: Checker) -> Iterator[Finding]:
    """Does a bridge's tunnel request (TCP domain:0, arriving on a VMess inbound) reach
    the portal? If not: a tunnel rule placed after a rule that catches the tunnels, or
    no tunnel rule at all. Also a tunnel rule that never matches because an earlier rule
    already sends everything from its inbound to the same portal."""
    inbounds = [i for i in ck.config.inbounds if i.protocol == "vmess"] or list(ck.config.inbounds)
    for k, portal in enumerate(ck.config.reverse.portals):
        dest = Destination(Network.TCP, portal.domain, 0)
        tunnel_rules = [i for i, (r, _) in enumerate(ck.rules) if ck.tunnel_rule_for(r) is portal]
        yield from _shadowed_tunnel_rules(ck, portal, dest, tunnel_rules)
        if portal.tag not in ck.explained_portals:
            yield from _unreached_portal(ck, k, portal, inbounds, tunnel_rules)


def _unreached_portal(
    ck: Checker,
    k: int,
    portal: ReverseEndpoint,
    inbounds: list[InboundConfig],
    tunnel_rules: list[int],
) -> Iterator[Finding]:
    """No tunnel request arriving on any of ``inbounds`` (those bridges may dial) reaches
    the portal: it has no such inbound, its tunnel rule names none of them, or it has no
    tunnel rule."""
    dest = Destination(Network.TCP, portal.domain, 0)
    routes = [(inbound, ck.route(s, dest)) for inbound in inbounds for s in sessions_of(inbound)]
    if any(portal in route.targets for _, route in routes):
        return
    if not inbounds:
        if not ck.broken_inbounds:  # else its inbound failed to load: that error says enough
            message = (
                f'portal "{portal.tag}" has no inbound for bridges to dial, so no tunnel can '
                "ever reach it"
            )
            fix = "add a VMess inbound for the bridge and the rule " + rule_json(
                "<its tag>", portal.domain, portal.tag
            )
            yield _at_portal(ck, k, portal, message, fix)
        return
    # Which inbound do bridges dial? Not one whose requests for the domain a rule with
    # a domain condition sends elsewhere on purpose (a refusal, as in init's portal).
    open_routes = [
        (i, r) for i, r in routes if r.index is None or ck.rules[r.index][0].domains is None
    ] or routes
    inbound, route = open_routes[0]
    tags = list(dict.fromkeys(i.tag or "<its tag>" for i, _ in open_routes))
    source = tags[0] if len(tags) == 1 else f"<the inbound the bridge dials: {' or '.join(tags)}>"
    fate = f"{ck.describe(route)}, so bridges never connect and the portal's clients get no tunnel"
    arrival = f'A tunnel request arriving on "{inbound.tag}": {fate}'
    unmatched = [i for i in tunnel_rules if ck.rules[i][0].path not in ck.explained_rules]
    if unmatched:
        yield _unmatched_tunnel_rule(
            ck, ck.rules[unmatched[0]][0], portal, inbounds, arrival, source
        )
        return
    where = "as the first rule" if route.index is None else f"before {ck.where(route.index)}"
    message = (
        f'no rule sends the tunnels of portal "{portal.tag}" to it. A bridge\'s tunnel '
        f'request (TCP {portal.domain}:0) arriving on "{inbound.tag}": {fate}'
    )
    yield _at_portal(
        ck, k, portal, message, f"add {where}: {rule_json(source, portal.domain, portal.tag)}"
    )


def _at_portal(ck: Checker, k: int, portal: ReverseEndpoint, message: str, fix: str) -> Finding:
    """A finding about portal ``k`` of ``reverse.portals``."""
    path = ck.endpoint_path("portals", portal, k)
    return Finding(file=portal.file, line=portal.line, path=path, message=message, fix=fix)


def _unmatched_tunnel_rule(
    ck: Checker,
    rule: RuleConfig,
    portal: ReverseEndpoint,
    inbounds: list[InboundConfig],
    arrival: str,
    source: str,
) -> Finding:
    """A tunnel rule exists but names none of the VMess inbounds."""
    ck.explained_rules.add(rule.path)  # its fix also ends who it lets register
    named = [
        f"{quote(t)} is a {ck.inbounds[t].protocol} inbound"
        if t in ck.inbounds
        else f"{quote(t)} is a bridge of this node"
        for t in rule.inbound_tags or ()
        if t in ck.inbounds or t in ck.bridges
    ]
    message = (
        f'this rule is meant for the tunnels of portal "{portal.tag}", but they '
        f"arrive on a VMess inbound ({tag_list(i.tag for i in inbounds)}) and this "
        f"rule names none{' (' + '; '.join(named) + ')' if named else ''}. {arrival}"
    )
    fix = f'"inboundTag": [{quote(source)}] (the VMess inbound the bridge dials)'
    return ck.at(rule, "inboundTag", message, fix)


def _shadowed_tunnel_rules(
    ck: Checker, portal: ReverseEndpoint, dest: Destination, tunnel_rules: list[int]
) -> Iterator[Finding]:
    """Tunnel rules that an earlier rule hides from every connection they would match."""
    for t in tunnel_rules:
        rule = ck.rules[t][0]
        if rule.inbound_tags is not None:
            sources = [ck.inbounds[tag] for tag in rule.inbound_tags if tag in ck.inbounds]
        else:
            sources = list(ck.config.inbounds)
        sessions = [s for i in sources for s in sessions_of(i) if ck.matches(t, s, dest)]
        routes = [ck.route(s, dest) for s in sessions]
        if not routes or any(r.index == t for r in routes):
            continue
        first = routes[0]
        if first.index is None:
            continue
        ck.explained_rules.add(rule.path)
        inbound = sessions[0].inbound_tag
        earlier = ck.where(first.index)
        if portal in first.targets:
            ck.explained_rules.add(ck.rules[first.index][0].path)  # who it lets register
            message = (
                f"this rule never matches: {earlier} comes first and sends everything from "
                f'"{inbound}" to portal "{portal.tag}" whatever is asked for. Tunnels still '
                f"get there (a portal takes every request for {portal.domain} as a tunnel), "
                f'but so does any client of "{inbound}" that asks for {portal.domain}'
            )
            fix = (
                f"move this rule above {ck.rules[first.index][0].path}; better, give bridges "
                "an inbound of their own and name only that one here"
            )
        else:
            ck.explained_portals.add(portal.tag)
            message = (
                f'this rule would send the tunnels of portal "{portal.tag}" to it, but '
                f'{earlier} comes first and sends the tunnels arriving on "{inbound}" '
                f"{ck.destination(first)}, so bridges never connect"
            )
            fix = f"move this rule above {ck.rules[first.index][0].path}"
        yield Finding(
            file=rule.file,
            line=rule.line,
            path=rule.path,
            message=message,
            fix=fix,
        )


# --------------------------------------------------------------------------- bridges


def bridge_checks(ck: Checker) -> Iterator[Finding]:
    """A bridge's tunnel request (inbound tag = the bridge's tag, TCP domain:0) must go to
    a VMess outbound towards the portal; anything else never opens a tunnel."""
    vmess_outs = [o.tag for o in ck.config.outbounds if o.protocol == "vmess" and o.tag]
    vmess_outs += [
        s.tag
        for s in ck.broken_outbounds.values()
        if (guess_protocol(s.node, "outbound") or ("",))[0] == "vmess"
    ]
    for k, bridge in enumerate(ck.config.reverse.bridges):
        session = Session(inbound_tag=bridge.tag)
        dest = Destination(Network.TCP, bridge.domain, 0)
        route = ck.route(session, dest)
        if _any_vmess(route.targets):
            continue
        if route.index is not None and ck.rules[route.index][0].outbound_tag in (
            ck.broken_outbounds
        ):
            continue  # its outbound failed to load: that error says enough
        # A later rule that would do it right, hidden by an earlier one?
        later = next(
            (
                i
                for i in range(len(ck.rules))
                if ck.matches(i, session, dest) and _any_vmess(ck.resolve(ck.rules[i][0])[0])
            ),
            None,
        )
        what = f'the tunnels of bridge "{bridge.tag}" (requests for TCP {bridge.domain}:0)'
        fate = _bridge_fate(route, bridge.domain)
        if later is not None and route.index is not None:
            rule = ck.rules[later][0]
            ck.explained_rules.add(rule.path)
            yield Finding(
                file=rule.file,
                line=rule.line,
                path=rule.path,
                message=(
                    f"this rule would send {what} to the portal, but {ck.where(route.index)} "
                    f"comes first and sends them {ck.destination(route)}: {fate}"
                ),
                fix=f"move this rule above {ck.rules[route.index][0].path}",
            )
            continue
        message = f"{what} never reach the portal: {ck.describe(route, 'them')}: {fate}"
        fix = _bridge_rule_fix(ck, bridge, route, vmess_outs)
        if route.index is not None:
            rule = ck.rules[route.index][0]
            yield Finding(file=rule.file, line=rule.line, path=rule.path, message=message, fix=fix)
        else:
            path = ck.endpoint_path("bridges", bridge, k)
            yield Finding(file=bridge.file, line=bridge.line, path=path, message=message, fix=fix)


def _any_vmess(targets: Iterable[Target]) -> bool:
    return any(isinstance(t, OutboundConfig) and t.protocol == "vmess" for t in targets)


def _bridge_rule_fix(
    ck: Checker, bridge: ReverseEndpoint, route: Route, vmess_outs: list[str]
) -> str:
    """The rule that sends the bridge's tunnels to a VMess outbound (``vmess_outs``: the
    config's), and the outbound too if there is none."""
    if not vmess_outs:
        return (
            "add a VMess outbound to the portal (its address, port and the user id of the "
            "portal's inbound for bridges) and the rule "
            + rule_json(bridge.tag, bridge.domain, "<its tag>")
        )
    out = vmess_outs[0]
    place = "as the first rule" if route.index is None else f"before {ck.where(route.index)}"
    fix = f"add {place}: {rule_json(bridge.tag, bridge.domain, out)}"
    if len(vmess_outs) > 1:
        named = f"{quote(out)} (or {tag_list(vmess_outs[1:])}: the one that dials the portal)"
        fix += f" (the VMess outbound to the portal: {named})"
    return fix


def _bridge_fate(route: Route, domain: str) -> str:
    """Why a tunnel request sent there never becomes a tunnel."""
    target = route.targets[0] if route.targets else None
    if target is None:
        return "no tunnel is ever opened"
    if isinstance(target, ReverseEndpoint):
        return "that is a portal of this node, not the remote one: no tunnel is ever opened"
    if not isinstance(target, OutboundConfig):
        return "that is the API: no tunnel is ever opened"
    if target.protocol == "freedom":
        return (
            f"freedom would connect to {domain}, a name that does not exist (it is only a "
            "label shared with the portal), so no tunnel is ever opened"
        )
    if target.protocol == "blackhole":
        return "blackhole drops them, so no tunnel is ever opened"
    return "no tunnel reaches the portal"


# --------------------------------------------------------------------------- open proxies


def open_proxies(ck: Checker) -> Iterator[Finding]:
    """A SOCKS or HTTP inbound without authentication that listens beyond loopback is an
    open proxy: anyone who reaches the port uses this node's network (and, through a
    bridge, the private network behind it). ``"auth": "password"`` counts only with
    accounts: without (a config the loader refuses, but one built otherwise), the inbound
    is reported too, since it protects nothing unless the server fails closed."""
    for inbound in ck.config.inbounds:
        settings = inbound.settings
        without = "without authentication: an open proxy, anyone who can reach the port uses it"
        fix = '"listen": "127.0.0.1" if only this machine uses it; otherwise require a password'
        if isinstance(settings, SocksInboundSettings):
            if settings.auth == "password" and settings.accounts:
                continue
            auth = '"auth": "password", "accounts": [{"user": "<name>", "pass": "<secret>"}]'
            if settings.auth == "password":
                without = (
                    'with "auth": "password" but no accounts: nobody can log in (raybridge, '
                    "like V2Ray, refuses every client rather than run as an open proxy)"
                )
                fix = "give it accounts"
                auth = '"accounts": [{"user": "<name>", "pass": "<secret>"}]'
        elif isinstance(settings, HttpInboundSettings):
            if settings.accounts:
                continue
            auth = '"accounts": [{"user": "<name>", "pass": "<secret>"}]'
        else:
            continue
        if is_loopback(inbound.listen):
            continue
        if inbound.listen in ("0.0.0.0", "::"):
            reach = "every network interface"
        elif ipaddress.ip_address(inbound.listen).is_private:
            reach = "a private address: every host on that network can use it"
        else:
            reach = "a public address"
        name = quote(inbound.tag) if inbound.tag else f"({inbound.path})"
        yield _at_listen(
            ck,
            inbound,
            f"{inbound.protocol.upper()} inbound {name} listens on {_where_listening(inbound)} "
            f"({reach}) {without}",
            f"{fix} in its settings: {auth}",
        )


def _where_listening(inbound: InboundConfig) -> str:
    host = f"[{inbound.listen}]" if ":" in inbound.listen else inbound.listen
    return f"{host}:{','.join(map(str, inbound.ports))}"


def _at_listen(ck: Checker, inbound: InboundConfig, message: str, fix: str) -> Finding:
    """A finding about where ``inbound`` listens, on its ``listen`` line."""
    return Finding(
        file=inbound.file,
        line=ck.line(inbound.file, inbound.path, inbound.line, "listen"),
        path=inbound.path + ".listen",
        message=message,
        fix=fix,
    )


# --------------------------------------------------------------------------- bridge exposure


def bridge_exposure(config: Config, ck: Checker | None = None) -> Iterator[Finding]:
    """Who may register as a bridge? A portal takes every link routed to it whose target is
    its domain as a tunnel, so every client that routing sends there with that domain can
    become a bridge and receive the other clients' traffic. Safe: a dedicated inbound with
    one user for the bridge, and a rule matching that inbound tag and the tunnel domain.
    Inbounds on loopback count too: their clients (or, without users, every program on the
    machine) are as able to register as anyone's."""
    ck = ck or Checker(config)
    for portal in config.reverse.portals:
        for inbound in config.inbounds:
            finding = _exposure(ck, portal, inbound)
            if finding is not None:
                yield finding


def _exposure(ck: Checker, portal: ReverseEndpoint, inbound: InboundConfig) -> Finding | None:
    """Clients of ``inbound`` that routing lets register as bridges of ``portal``, unless
    that is what the config means (one user, on an inbound routed by the tunnel domain)."""
    dest = Destination(Network.TCP, portal.domain, 0)
    who: list[str] = []
    matched_rules: list[RuleConfig | None] = []
    for i, session in enumerate(sessions_of(inbound)):
        route = ck.route(session, dest)
        if portal in route.targets:
            who.append(session.user or f"clients[{i}]")
            matched_rules.append(None if route.index is None else ck.rules[route.index][0])
    if not who:
        return None
    rule = next((r for r in matched_rules if r is not None), None)
    if rule is not None and rule.path in ck.explained_rules:
        return None
    said = _exposure_text(
        portal,
        inbound,
        who,
        anyone=users_of(inbound) is None,
        deliberate=rule is not None and rule.domains is not None,
    )
    if said is None:
        return None
    message, fix = said
    if rule is not None:
        return Finding(
            file=rule.file or "", line=rule.line, path=rule.path, message=message, fix=fix
        )
    return Finding(
        file=inbound.file or "", line=inbound.line, path=inbound.path, message=message, fix=fix
    )


def _exposure_text(
    portal: ReverseEndpoint,
    inbound: InboundConfig,
    who: list[str],
    *,
    anyone: bool,
    deliberate: bool,
) -> tuple[str, str] | None:
    """What is wrong and the fix, when ``who`` (clients of ``inbound``; ``anyone``: it has
    no users) may register as bridges; ``deliberate``: by a rule for the tunnel domain."""
    where = f'inbound "{inbound.tag or inbound.path}" ({inbound.protocol} on '
    where += f"{inbound.listen}:{','.join(map(str, inbound.ports))})"
    block = (
        f'add before it {{"type": "field", "inboundTag": [{quote(inbound.tag)}], '
        f'"domain": [{quote("full:" + portal.domain)}], '
        '"outboundTag": "<a blackhole outbound>"}'
    )
    if anyone:
        message = (
            f"anyone who can reach {where} can register as a bridge of portal "
            f'"{portal.tag}" (a request for {portal.domain} is taken as a tunnel) and '
            "then receives other clients' traffic"
        )
        fix = "route the tunnel domain to the portal only from a dedicated VMess inbound"
        return message, fix if deliberate else f"{fix}; for this inbound, {block}"
    if not deliberate:
        message = (
            f'the clients of {where} are routed to portal "{portal.tag}" whatever '
            f"they ask for, so a request for {portal.domain} registers them as a "
            "bridge, and they then receive other clients' traffic"
        )
        return message, block
    if len(who) > 1:
        message = (
            f"{len(who)} users of {where} can register as a bridge of portal "
            f'"{portal.tag}" ({", ".join(who)}), so a client could receive other '
            "clients' traffic"
        )
        fix = (
            "give the bridge an inbound and a user of its own, or add "
            '"user": ["<the bridge\'s email>"] to the rule for '
            f"full:{portal.domain}"
        )
        return message, fix
    return None


# --------------------------------------------------------------------------- status server


def api_exposure(ck: Checker) -> Iterator[Finding]:
    """An inbound that routing sends to the API (``api.tag``) and that listens beyond
    loopback lets anyone who reaches its port read the counters and, with
    HandlerService, add inbounds, outbounds and users: V2Ray's API has no authentication."""
    api = ck.config.api
    if api is None:
        return
    routed = {
        tag
        for rule in ck.config.routing.rules
        if rule.outbound_tag == api.tag
        for tag in rule.inbound_tags or ()
    }
    for inbound in ck.config.inbounds:
        if inbound.tag not in routed or is_loopback(inbound.listen):
            continue
        can = (
            "change this node (HandlerService)"
            if "HandlerService" in api.services
            else ("read its traffic counters")
        )
        yield _at_listen(
            ck,
            inbound,
            f"inbound {quote(inbound.tag)} leads to the API ({quote(api.tag)}) and listens on "
            f"{_where_listening(inbound)}, beyond loopback: the API has no authentication, so "
            f"anyone who can reach the port can {can}",
            '"listen": "127.0.0.1" (reach it from elsewhere through an SSH tunnel)',
        )


def status_exposure(ck: Checker) -> Iterator[Finding]:
    """The status server (``"raybridge": {"status": ...}``) shows the tunnel domain, bridge
    addresses and recent errors: beyond loopback it needs a token (and a long one)."""
    from raybridge.config.model import RaybridgeOptions

    options = ck.config.sections.get("raybridge")
    if not isinstance(options, RaybridgeOptions) or not options.status:
        return
    from raybridge.status import parse_address  # with prometheus_client: only if asked for

    host, port = parse_address(options.status)
    file = options.file or ""
    line = ck.line(file, "raybridge", options.line, "status")
    token = options.status_token
    if token is None and not is_loopback(host):
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reach = "every network interface" if host in ("0.0.0.0", "::") else "beyond loopback"
        yield Finding(
            file=file,
            line=line,
            path="raybridge.status",
            message=(
                f"the status server listens on {shown} ({reach}) without a token: anyone "
                "who can reach the port sees the tunnel domain, bridge addresses and recent "
                "errors"
            ),
            fix=(
                f'"status": "127.0.0.1:{port}" if only this machine reads it; otherwise '
                f'"status": {{"listen": "{shown}", "token": "<openssl rand -hex 32>"}} '
                "(send Authorization: Bearer <token>; the dashboard: open /#token=<token>)"
            ),
        )
    elif token is not None and len(token) < 16:
        yield Finding(
            file=file,
            line=ck.line(file, "raybridge.status", line, "token"),
            path="raybridge.status.token",
            message=(
                f"the status server's token has {len(token)} characters: short enough to guess"
            ),
            fix='"token": 16 or more random characters, e.g. from "openssl rand -hex 32"',
        )


# --------------------------------------------------------------------------- TLS


def tls_checks(ck: Checker) -> Iterator[Finding]:
    """``allowInsecure`` turns certificate checks off: say so, with the way out."""
    streams = [(c.file, c.path, c.stream) for c in ck.config.inbounds]
    streams += [(c.file, c.path, c.stream) for c in ck.config.outbounds]
    for file, where, stream in streams:
        tls = stream.tls
        if tls is None or not tls.allow_insecure:
            continue
        path = f"{where}.streamSettings.tlsSettings"
        at = tls.where.partition(": ")[0].rpartition(":")[2]  # "file:line: path"
        line = int(at) if at.isdigit() else None
        yield Finding(
            file=file or "",
            line=ck.line(file or "", path, line, "allowInsecure"),
            path=f"{path}.allowInsecure",
            message=(
                "allowInsecure: the server's certificate is not checked, so anyone on the "
                "path can read and change this traffic"
            ),
            fix=(
                'trust the certificate instead: "certificates": [{"certificateFile": '
                '"<the CA or the server certificate>", "usage": "verify"}] (raybridge init '
                "--self-signed writes such a CA)"
            ),
        )


# --------------------------------------------------------------------------- protocol rules

#: What a session's ``protocol`` can be in V2Ray 4.34: the sniffers' names, and the HTTP
#: inbound's label for a plain (not CONNECT) request (docs/protocols.md 4.10).
SNIFFED_PROTOCOLS = ("http1", "tls", "bittorrent")
HTTP_INBOUND_LABEL = "http/1.1"


def protocol_rules(ck: Checker) -> Iterator[Finding]:
    """A ``protocol`` rule matches only a session whose protocol starts with a listed name:
    a name no sniffer or inbound reports never matches, and sniffed names only come from
    inbounds with ``sniffing`` enabled."""
    for rule, _ in ck.rules:
        names = [n for n in rule.protocols or () if n]
        if not names:
            continue
        known = (*SNIFFED_PROTOCOLS, HTTP_INBOUND_LABEL)
        for name in names:
            if not any(p.startswith(name) for p in known):
                lower = name.lower()
                better = next((p for p in known if p.startswith(lower)), None)
                better = better or closest(lower, ("http", "tls", "bittorrent"))
                yield ck.at(
                    rule,
                    "protocol",
                    f"{quote(name)} never matches: a session's protocol is one of "
                    f"{', '.join(map(quote, known))} (compared by prefix, case-sensitive)",
                    f"write {quote(better)}" if better else 'use "http", "tls" or "bittorrent"',
                    name,
                )
        inbounds = [
            i for i in ck.config.inbounds if not rule.inbound_tags or i.tag in rule.inbound_tags
        ]
        if not inbounds or any(i.sniffing_enabled for i in inbounds):
            continue
        if any(isinstance(i.settings, HttpInboundSettings) for i in inbounds) and any(
            HTTP_INBOUND_LABEL.startswith(n) for n in names
        ):
            continue
        yield ck.at(
            rule,
            "protocol",
            "this rule never matches: no inbound it applies to has sniffing enabled, so no "
            "session has a protocol",
            '"sniffing": {"enabled": true, "destOverride": ["http", "tls"]} on the inbound',
        )


# --------------------------------------------------------------------------- entry points

#: Checks run in this order: earlier ones mark what they explain so later ones stay quiet.
_CHECKS: tuple[Callable[[Checker], Iterable[Finding]], ...] = (
    reference_checks,
    portal_checks,
    bridge_checks,
    open_proxies,
    lambda ck: bridge_exposure(ck.config, ck),
    status_exposure,
    api_exposure,
    tls_checks,
    protocol_rules,
)


def check_config(
    config: Config,
    *,
    documents: Mapping[str, JValue] | None = None,
    skipped: Sequence[Skipped] = (),
) -> list[ConfigWarning]:
    """Everything the checks find, in file and line order. ``documents`` (parsed files by
    name) let findings point at the line of the very value; ``skipped``: entries lenient
    loading left out (their tags still count)."""
    ck = Checker(config, documents, skipped)
    found: list[ConfigWarning] = []
    for check in _CHECKS:
        found.extend(check(ck))
    return _sorted(config, found)


#: Loader warnings that the reference checks replace with a fuller explanation.
_REFERENCE_FIELDS = (".inboundTag", ".outboundTag", ".balancerTag")


def findings(
    config: Config,
    *,
    documents: Mapping[str, JValue] | None = None,
    skipped: Sequence[Skipped] = (),
) -> list[ConfigWarning]:
    """The loader's warnings and the checks' findings, in file and line order, each
    thing said once: a reference warning of the loader is dropped when a check explains
    the same field."""
    checked = check_config(config, documents=documents, skipped=skipped)
    covered = {(f.file, f.path) for f in checked if f.path.endswith(_REFERENCE_FIELDS)}
    kept = [w for w in config.warnings if (w.file, w.path) not in covered]
    return _sorted(config, [*kept, *checked])


def _sorted(config: Config, items: list[ConfigWarning]) -> list[ConfigWarning]:
    files = config.files

    def key(w: ConfigWarning) -> tuple[int, int]:
        return (files.index(w.file) if w.file in files else len(files), w.line or 0)

    return sorted(items, key=key)
