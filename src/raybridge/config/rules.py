"""The ``routing`` section (``infra/conf/router.go``, docs/protocols.md 4.5).

Rule conditions are kept as written; the router compiles domains, CIDRs and ``geoip:``
entries itself and reports problems with the rule's ``file``/``line``/``path``. What is
checked here is what V2Ray checks while *reading* the config: the shapes of the fields,
ports, the target tag and that the rule has at least one effective condition.
"""

from __future__ import annotations

from raybridge.config.fields import Obj, describe, port_list
from raybridge.config.jsonc import JValue
from raybridge.config.model import (
    BalancerConfig,
    Network,
    RouterDomainStrategy,
    RoutingConfig,
    RuleConfig,
)
from raybridge.config.settings import network_set

_ROUTER_STRATEGIES: dict[str, RouterDomainStrategy] = {
    "": "AsIs",
    "asis": "AsIs",
    "ipifnonmatch": "IPIfNonMatch",
    "ip_if_non_match": "IPIfNonMatch",
    "ip-if-non-match": "IPIfNonMatch",
    "ipondemand": "IPOnDemand",
    "ip_on_demand": "IPOnDemand",
    "ip-on-demand": "IPOnDemand",
}
_ALWAYS_IP = ("alwaysip", "always_ip", "always-ip")


def _domain_strategy(obj: Obj, name: str) -> RouterDomainStrategy:
    node = obj.get(name)
    if node is None:
        return "AsIs"
    path = obj.sub(name)
    raw = obj.ctx.expect_string(node, path).lower()
    if raw in _ALWAYS_IP:
        obj.ctx.warn(node, path, '"AlwaysIP" behaves like "AsIs" in V2Ray 4.34 (and here)')
        return "AsIs"
    strategy = _ROUTER_STRATEGIES.get(raw)
    if strategy is None:
        obj.ctx.warn(node, path, f'unknown domainStrategy {describe(node)}: using "AsIs"')
        return "AsIs"
    return strategy


def _non_empty(values: list[str] | None) -> list[str] | None:
    # V2Ray adds a condition only for a non-empty list.
    return values if values else None


def build_rule(obj: Obj, index: int) -> RuleConfig:
    _check_type(obj)
    outbound_tag, balancer_tag = _target(obj)
    domains: list[str] = []
    for name in ("domain", "domains"):
        domains.extend(obj.string_list(name) or ())
    ports = _ports(obj, "port")
    source_ports = _ports(obj, "sourcePort")
    networks = _networks(obj)
    rule = RuleConfig(
        outbound_tag=outbound_tag,
        balancer_tag=balancer_tag,
        inbound_tags=_non_empty(obj.string_list("inboundTag")),
        domains=domains or None,
        ips=_non_empty(obj.string_list("ip")),
        ports=ports,
        source_ports=source_ports,
        networks=networks,
        sources=_non_empty(obj.string_list("source")),
        users=_non_empty(obj.string_list("user")),
        protocols=_non_empty(obj.string_list("protocol")),
        attrs=obj.string("attrs") or None,
        **obj.where(),
        index=index,
        path=obj.path,
    )
    conditions = (
        rule.inbound_tags,
        rule.domains,
        rule.ips,
        rule.ports,
        rule.source_ports,
        rule.networks,
        rule.sources,
        rule.users,
        rule.protocols,
        rule.attrs,
    )
    if all(condition is None for condition in conditions):
        raise obj.error("this rule has no effective fields")
    obj.finish()
    return rule


def _check_type(obj: Obj) -> None:
    """``"type": "field"``, the only kind of rule; V2Ray 4.34 refuses a rule without it."""
    ctx = obj.ctx
    type_node = obj.get("type")
    if type_node is None:
        ctx.warn(
            obj.node,
            obj.path,
            'rule has no "type": assuming "field" (V2Ray 4.34 refuses such a rule)',
        )
        return
    kind = ctx.expect_string(type_node, obj.sub("type"))
    if kind.lower() != "field":
        raise ctx.error(
            type_node,
            obj.sub("type"),
            f'unknown routing rule type {describe(type_node)} (only "field" exists)',
        )


def _target(obj: Obj) -> tuple[str | None, str | None]:
    """``(outboundTag, balancerTag)``: one of them, the outbound if both are given."""
    outbound_tag = obj.string("outboundTag") or None
    balancer_tag = obj.string("balancerTag") or None
    if outbound_tag is None and balancer_tag is None:
        raise obj.error("neither outboundTag nor balancerTag is specified in routing rule")
    if outbound_tag is not None and balancer_tag is not None:
        obj.ctx.warn(
            obj.key_node("balancerTag"),
            obj.sub("balancerTag"),
            "ignored: outboundTag takes precedence",
        )
        balancer_tag = None
    return outbound_tag, balancer_tag


def _ports(obj: Obj, name: str) -> list[tuple[int, int]] | None:
    node = obj.get(name)
    return None if node is None else port_list(obj.ctx, node, obj.sub(name))


def _networks(obj: Obj) -> frozenset[Network] | None:
    """``network``: None (any) when absent or an empty list."""
    node = obj.get("network")
    if node is None or not obj.ctx.string_list(node, obj.sub("network")):
        return None
    networks = network_set(obj.ctx, node, obj.sub("network"))
    if not networks:
        obj.ctx.warn(node, obj.sub("network"), "no known network: the rule never matches")
    return networks


def build_balancer(obj: Obj) -> BalancerConfig:
    tag = obj.string("tag")
    if not tag:
        raise obj.error("empty balancer tag")
    selector = obj.string_list("selector")
    if not selector:
        raise obj.error("empty selector list")
    obj.finish()
    return BalancerConfig(tag=tag, selector=selector, **obj.where())


def build_routing(obj: Obj) -> RoutingConfig:
    """``routing``; the deprecated ``routing.settings`` block is merged as V2Ray does
    (its rules come after the top-level ones; its domainStrategy is used only if the
    top-level one is absent)."""
    legacy = obj.object("settings")
    if obj.has("domainStrategy") or legacy is None:
        strategy = _domain_strategy(obj, "domainStrategy")
        if legacy is not None:
            legacy.ignore("domainStrategy")
    else:
        strategy = _domain_strategy(legacy, "domainStrategy")
        obj.ignore("domainStrategy")
    items = list(obj.array("rules") or ())
    if legacy is not None:
        items.extend(legacy.array("rules") or ())
        legacy.finish()
    ctx = obj.ctx
    rules: list[RuleConfig] = []
    for i, (path, item) in enumerate(items):

        def rule(path: str = path, item: JValue = item, i: int = i) -> RuleConfig:
            return build_rule(ctx.expect_object(item, path, "a routing rule object"), i)

        built = ctx.attempt("rule", path, item, rule)
        if built is not None:
            rules.append(built)
    balancers: list[BalancerConfig] = []
    for path, item in obj.array("balancers") or ():

        def balancer(path: str = path, item: JValue = item) -> BalancerConfig:
            return build_balancer(ctx.expect_object(item, path))

        built_balancer = ctx.attempt("balancer", path, item, balancer)
        if built_balancer is not None:
            balancers.append(built_balancer)
    obj.finish()
    return RoutingConfig(
        domain_strategy=strategy,
        rules=rules,
        balancers=balancers,
        **obj.where(),
    )
