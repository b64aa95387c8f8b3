"""Checks beyond syntax: what a config will *do*, explained like a colleague would.

:func:`check_config` returns :class:`ConfigWarning` findings (file, line, field, what is
wrong and how to fix it). ``raybridge test`` prints them; ``raybridge run`` logs them. None
of them stops a node: V2Ray would run these configs too.
"""

from __future__ import annotations

from collections.abc import Iterable

from raybridge.config.model import Config, ConfigWarning, InboundConfig, RuleConfig

LOOPBACK = ("127.", "::1", "localhost")


def _public(inbound: InboundConfig) -> bool:
    return not inbound.listen.startswith(LOOPBACK)


def _users(inbound: InboundConfig) -> list[str | None] | None:
    """The identities routing sees for an inbound's clients; ``None``: anyone can connect."""
    clients = getattr(inbound.settings, "clients", None)
    if clients is not None:
        return [c.email or None for c in clients]
    accounts = getattr(inbound.settings, "accounts", None)
    if accounts and getattr(inbound.settings, "auth", "password") == "password":
        return list(accounts)
    return None


def _first_match(rules: list[tuple[RuleConfig, object]], session: object, dest: object) -> object:
    for config, rule in rules:
        if rule.matches(session, dest):  # type: ignore[attr-defined]
            return config
    return None


def bridge_exposure(config: Config) -> Iterable[ConfigWarning]:
    """Who may register as a bridge? A portal takes every link routed to it whose target is
    its domain as a tunnel, so every client that routing sends there with that domain can
    become a bridge and receive the other clients' traffic. Safe: a dedicated inbound with
    one user for the bridge, and a rule matching that inbound tag and the tunnel domain."""
    from raybridge.address import Destination, Network
    from raybridge.errors import ConfigError
    from raybridge.link import Session
    from raybridge.router import compile_rule

    try:
        rules = [(r, compile_rule(r)) for r in config.routing.rules]
    except ConfigError:
        return  # reported as an error elsewhere
    default = config.outbounds[0].tag if config.outbounds else None
    for portal in config.reverse.portals:
        dest = Destination(Network.TCP, portal.domain, 0)
        for inbound in config.inbounds:
            if not _public(inbound):
                continue
            users = _users(inbound)
            who: list[str] = []
            matched_rules: list[RuleConfig | None] = []
            for i, user in enumerate(users if users is not None else [None]):
                session = Session(inbound_tag=inbound.tag, user=user)
                matched = _first_match(rules, session, dest)
                tag = matched.outbound_tag if isinstance(matched, RuleConfig) else default
                if tag == portal.tag:
                    who.append(user or f"clients[{i}]")
                    matched_rules.append(matched if isinstance(matched, RuleConfig) else None)
            if not who:
                continue
            rule = next((r for r in matched_rules if r is not None), None)
            where = f'inbound "{inbound.tag or inbound.path}" ({inbound.protocol} on '
            where += f"{inbound.listen}:{','.join(map(str, inbound.ports))})"
            deliberate = rule is not None and rule.domains is not None
            block = (
                f'add before it {{"inboundTag": ["{inbound.tag}"], "domain": '
                f'["full:{portal.domain}"], "outboundTag": "<a blackhole outbound>"}}'
            )
            if users is None:
                message = (
                    f"anyone who can reach {where} can register as a bridge of portal "
                    f'"{portal.tag}" (a request for {portal.domain} is taken as a tunnel) and '
                    "then receives other clients' traffic. Fix: route the tunnel domain to "
                    "the portal only from a dedicated VMess inbound"
                    + ("" if deliberate else f"; for this inbound, {block}")
                )
            elif not deliberate:
                message = (
                    f"the clients of {where} are routed to portal \"{portal.tag}\" whatever "
                    f"they ask for, so a request for {portal.domain} registers them as a "
                    "bridge, and they then receive other clients' traffic. Fix: " + block
                )
            elif len(who) > 1:
                message = (
                    f"{len(who)} users of {where} can register as a bridge of portal "
                    f'"{portal.tag}" ({", ".join(who)}), so a client could receive other '
                    "clients' traffic. Fix: give the bridge an inbound and a user of its own, "
                    'or add "user": ["<the bridge\'s email>"] to the rule for '
                    f"full:{portal.domain}"
                )
            else:
                continue
            line = rule.line if rule is not None else inbound.line
            file = (rule.file if rule is not None else inbound.file) or ""
            path = rule.path if rule is not None else inbound.path
            yield ConfigWarning(file=file, line=line, path=path, message=message)


def check_config(config: Config) -> list[ConfigWarning]:
    findings: list[ConfigWarning] = []
    findings.extend(bridge_exposure(config))
    return findings
