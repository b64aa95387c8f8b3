"""Moving a running node to a new config without dropping anything (SIGHUP; issue 15).

:func:`reload` builds everything the new config needs that the node does not have yet,
*before* it changes anything: a :class:`~raybridge.errors.ConfigError` (``file:line:
field: message``) leaves the node exactly as it was. Then it compares old and new, part by
part, ignoring where in the files a part is written (a line moved is no change):

* an **inbound** that is the same keeps its object and its listening socket; a VMess
  inbound whose only change is its ``clients`` keeps both and gets the new user set (users
  in both keep their replay and legacy state); any other change builds a new inbound that
  takes over the old one's socket when it listens on the same address, port and transport
  (:meth:`StreamInbound.take_over <raybridge.proxy.base.StreamInbound.take_over>`), else
  binds its own. Replaced and removed inbounds stop accepting and drain;
* **outbounds** the same are kept (a mux outbound keeps its connections), changed and new
  ones are built, removed ones drain; the **router** is rebuilt from the new rules;
* a **portal** or **bridge** whose tag and domain are unchanged is kept with its tunnels
  (node A never notices B's reload); a removed bridge drains (it says DRAIN to its portal),
  a removed portal drains its sessions.

Live connections and mux sessions keep the ends they were joined to, so they finish on
the inbound, users, rules and outbound they started with. Each change is one log line and
one entry of the :class:`ReloadRecord` the status server shows.

Changes made at run time through :class:`~raybridge.node.Node`'s methods (the API) are
not in the files, so a reload undoes them, as in V2Ray (which has no reload: a restart).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from raybridge.config.model import (
    Config,
    InboundConfig,
    OutboundConfig,
    RaybridgeOptions,
    ReverseEndpoint,
    VMessInboundSettings,
)
from raybridge.link import Inbound, Outbound
from raybridge.node import no_detour_target
from raybridge.proxy.mux import install_mux_server
from raybridge.proxy.reverse import Bridge, Portal
from raybridge.registry import build_inbounds, build_outbound
from raybridge.router import Router

if TYPE_CHECKING:
    from raybridge.node import Node

logger = logging.getLogger("raybridge")

#: Fields that say where a part is written, not what it is.
_LOCATION = frozenset({"file", "line", "index", "path", "where"})
#: Reloads a node remembers (for the status server).
KEEP_RECORDS = 20


def same(a: object, b: object) -> bool:
    """Equal as configuration: dataclasses field by field without their location fields
    (``file``, ``line``, ``index``, ``path``, ``where``), containers item by item."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(
            same(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if f.name not in _LOCATION
        )
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@dataclass(slots=True)
class ReloadRecord:
    """One reload: when, whether the new config is live, what changed (one line each),
    the error that kept the old config (``file:line: field: message``), and how long from
    the signal to the new config live."""

    at: float  # time.time() of the request
    ok: bool
    changes: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ok": self.ok,
            "changes": list(self.changes),
            "error": self.error,
            "seconds": round(self.seconds, 4),
        }


def _inbound_key(config: InboundConfig) -> str:
    if config.tag:
        return config.tag
    return f"{config.protocol}@{config.listen}:{','.join(map(str, config.ports))}"


def _outbound_key(config: OutboundConfig) -> str:
    return config.tag or f"#{config.index}"


def _only_clients_differ(old: InboundConfig, new: InboundConfig) -> bool:
    """Both VMess and equal but for their ``clients``."""
    a, b = old.settings, new.settings
    if not (isinstance(a, VMessInboundSettings) and isinstance(b, VMessInboundSettings)):
        return False
    return same(
        dataclasses.replace(old, settings=dataclasses.replace(a, clients=[])),
        dataclasses.replace(new, settings=dataclasses.replace(b, clients=[])),
    )


def _options(config: Config) -> RaybridgeOptions:
    options = config.sections.get("raybridge") or RaybridgeOptions()
    assert isinstance(options, RaybridgeOptions)
    return options


def _inbound_context_same(old: Config, new: Config) -> bool:
    """What every inbound is built with besides its own entry: the level policies and the
    options an inbound reads (``stateDir``)."""
    return same(old.policy, new.policy) and _options(old).state_dir == _options(new).state_dir


@dataclass(slots=True)
class _Plan:
    """What a reload will do, all built, nothing changed yet."""

    outbounds: list[Outbound] = field(default_factory=list)
    new_outbounds: list[Outbound] = field(default_factory=list)
    gone_outbounds: list[Outbound] = field(default_factory=list)
    portals: list[Portal] = field(default_factory=list)
    new_portals: list[Portal] = field(default_factory=list)
    gone_portals: list[Portal] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    new_bridges: list[Bridge] = field(default_factory=list)
    gone_bridges: list[Bridge] = field(default_factory=list)
    inbounds: list[Inbound] = field(default_factory=list)
    #: (inbound kept, its new users) for VMess inbounds whose clients changed.
    users: list[tuple[Inbound, InboundConfig]] = field(default_factory=list)
    #: New inbounds to start: each with the old one whose sockets it takes over, if any.
    starts: list[tuple[Inbound, Inbound | None]] = field(default_factory=list)
    gone_inbounds: list[Inbound] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    sources: dict[object, object] = field(default_factory=dict)
    router: Router | None = None


def _plan(node: Node, config: Config) -> _Plan:
    """Build what ``config`` needs (ConfigError on anything wrong; nothing changes)."""
    from raybridge.node import build_router, check_chains

    plan = _Plan()
    _plan_outbounds(node, config, plan)
    _plan_reverse(node, config, plan)
    check_chains(config.outbounds, {o.tag for o in plan.outbounds if o.tag})
    _check_detours(config)
    # -- routing (compiled now: a bad rule fails the reload)
    tags = [o.tag for o in plan.outbounds] + [p.tag for p in plan.portals]
    routing = config.routing
    plan.router = build_router(routing.rules, tags, routing.balancers, routing.domain_strategy)
    if not same(node.config.routing, routing):
        old_rules = len(node.config.routing.rules)
        plan.changes.append(f"routing: {len(routing.rules)} rules (were {old_rules})")
    _plan_inbounds(node, config, plan)
    old, new = node.options, _options(config)
    if (old.status, old.status_token, old.status_hosts) != (
        new.status,
        new.status_token,
        new.status_hosts,
    ):
        plan.changes.append("raybridge.status: changed: takes effect at the next restart")
    if not same(node.config.dns, config.dns):
        plan.changes.append("dns: changed: takes effect at the next restart")
    if old.drain_timeout != new.drain_timeout:
        plan.changes.append(f"raybridge.drainTimeout: {new.drain_timeout}s")
    return plan


def _plan_outbounds(node: Node, config: Config, plan: _Plan) -> None:
    """Outbounds by tag (the untagged by position)."""
    note = plan.changes.append
    sources = node.sources
    old_out = {
        _outbound_key(c): o
        for o in node.outbounds
        if isinstance(c := sources.get(o), OutboundConfig)
    }
    # A chained outbound (proxySettings) holds its hop: when any outbound changes, every
    # chained one is built again and carried by the hop that is current after the reload.
    rechain = not same([sources.get(o) for o in node.outbounds], list(config.outbounds))
    for entry in config.outbounds:
        key = _outbound_key(entry)
        kept = old_out.pop(key, None)
        chained = rechain and entry.proxy_tag is not None
        if kept is not None and same(sources.get(kept), entry) and not chained:
            plan.outbounds.append(kept)
            plan.sources[kept] = entry
            continue
        built = build_outbound(entry)
        built.use_resolver(node.resolver)
        plan.outbounds.append(built)
        plan.new_outbounds.append(built)
        plan.sources[built] = entry
        if kept is not None:
            plan.gone_outbounds.append(kept)
            note(f"outbound {key}: changed")
        else:
            note(f"outbound {key}: added")
    for key, gone in old_out.items():
        plan.gone_outbounds.append(gone)
        note(f"outbound {key}: removed")
    # Outbounds added through the API (no source) are dropped too: the files say what runs.
    for outbound in node.outbounds:
        if outbound not in sources:
            plan.gone_outbounds.append(outbound)
            note(f"outbound {outbound.tag}: removed (not in the files)")


def _plan_reverse(node: Node, config: Config, plan: _Plan) -> None:
    """Portals and bridges: kept when tag and domain are the same."""
    note = plan.changes.append
    options = _options(config)
    plan.portals, plan.new_portals, plan.gone_portals = _by_tag_and_domain(
        "portal",
        node.portals,
        config.reverse.portals,
        lambda e: Portal(e.tag, e.domain, max_sessions=options.mux_max_sessions),
        note,
    )
    plan.bridges, plan.new_bridges, plan.gone_bridges = _by_tag_and_domain(
        "bridge",
        node.bridges,
        config.reverse.bridges,
        lambda e: Bridge(e.tag, e.domain, node.dispatcher, max_sessions=options.mux_max_sessions),
        note,
    )


_R = TypeVar("_R", Portal, Bridge)


def _by_tag_and_domain(
    kind: str,
    running: Sequence[_R],
    entries: Sequence[ReverseEndpoint],
    build: Callable[[ReverseEndpoint], _R],
    note: Callable[[str], None],
) -> tuple[list[_R], list[_R], list[_R]]:
    """(all, built now, gone): a running one with the same tag and domain is kept."""
    old = {r.tag: r for r in running}
    all_: list[_R] = []
    new: list[_R] = []
    gone: list[_R] = []
    for entry in entries:
        kept = old.pop(entry.tag, None)
        if kept is not None and kept.domain == entry.domain:
            all_.append(kept)
            continue
        built = build(entry)
        all_.append(built)
        new.append(built)
        if kept is not None:
            gone.append(kept)
        note(f"{kind} {entry.tag}: {'changed' if kept else 'added'}")
    for tag, left in old.items():
        gone.append(left)
        note(f"{kind} {tag}: removed")
    return all_, new, gone


def _plan_inbounds(node: Node, config: Config, plan: _Plan) -> None:
    """Inbounds by tag (the untagged by protocol, address and ports)."""
    note = plan.changes.append
    options = _options(config)
    sources = node.sources
    context_same = _inbound_context_same(node.config, config)
    if not context_same:
        note("policy: changed: every inbound is rebuilt (listeners kept)")
    old_in: dict[str, tuple[InboundConfig, list[Inbound]]] = {}
    for inbound in node.inbounds:
        source = sources.get(inbound)
        if isinstance(source, InboundConfig):
            old_in.setdefault(_inbound_key(source), (source, []))[1].append(inbound)
        else:
            plan.gone_inbounds.append(inbound)
            note(f"inbound {inbound.tag}: removed (not in the files)")
    for entry in config.inbounds:
        key = _inbound_key(entry)
        old = old_in.pop(key, None)
        if old is not None and context_same:
            old_entry, objects = old
            if same(old_entry, entry) or _only_clients_differ(old_entry, entry):
                plan.inbounds.extend(objects)
                for obj in objects:
                    plan.sources[obj] = entry
                if isinstance(entry.settings, VMessInboundSettings):
                    # The files' users, also where the API changed them meanwhile.
                    plan.users.extend((obj, entry) for obj in objects)
                continue
        built = build_inbounds(
            entry, dispatcher=node.dispatcher, policies=config.policy, options=options
        )
        previous = list(old[1]) if old is not None else []
        for new in built:
            heir = next((o for o in previous if new.can_take_over(o)), None)
            if heir is not None:
                previous.remove(heir)
            plan.starts.append((new, heir))
            plan.inbounds.append(new)
            plan.sources[new] = entry
        plan.gone_inbounds.extend(previous)
        if old is None:
            note(f"inbound {key}: added")
        elif context_same and built:
            kept = "listener kept" if any(h for _, h in plan.starts[-len(built) :]) else "rebound"
            note(f"inbound {key}: changed ({kept})")
    for key, (_entry, objects) in old_in.items():
        plan.gone_inbounds.extend(objects)
        note(f"inbound {key}: removed")
    # A new inbound on the socket of one that goes (a tag renamed): it takes that over too.
    for index, (fresh, none) in enumerate(plan.starts):
        if none is None:
            heir = next((o for o in plan.gone_inbounds if fresh.can_take_over(o)), None)
            if heir is not None:
                plan.gone_inbounds.remove(heir)
                plan.starts[index] = (fresh, heir)


async def reload(node: Node, config: Config, *, requested: float | None = None) -> ReloadRecord:
    """Move ``node`` to ``config`` (see the module docstring). Never raises for a bad
    config: the record says what failed, and the node runs on unchanged."""
    began = time.monotonic() if requested is None else requested
    record = ReloadRecord(at=time.time(), ok=False)
    try:
        plan = _plan(node, config)
        await _apply(node, config, plan)
    except Exception as exc:  # a ConfigError, an OSError binding a new port, ...
        record.error = str(exc)
        record.seconds = time.monotonic() - began
        logger.error("reload failed, still running the previous config: %s", exc)
        keep_record(node, record)
        return record
    record.ok = True
    record.changes = plan.changes
    record.seconds = time.monotonic() - began
    if not plan.changes:
        logger.warning("reload: nothing changed (%.3fs)", record.seconds)
    for change in plan.changes:
        logger.warning("reload: %s", change)
    keep_record(node, record)
    return record


def keep_record(node: Node, record: ReloadRecord) -> None:
    """Remember ``record`` for the status server (the newest ``KEEP_RECORDS``)."""
    node.reload_totals["ok" if record.ok else "failed"] += 1
    node.reloads.append(record)
    del node.reloads[:-KEEP_RECORDS]


def _check_detours(config: Config) -> None:
    """Each VMess ``detour.to`` names a VMess inbound with dynamic ports in ``config``
    (what :meth:`Node._detours` relies on when it links them after the reload)."""
    dynamic = {
        i.tag
        for i in config.inbounds
        if i.tag and i.allocate is not None and isinstance(i.settings, VMessInboundSettings)
    }
    for entry in config.inbounds:
        settings = entry.settings
        if (
            isinstance(settings, VMessInboundSettings)
            and settings.detour_to is not None
            and settings.detour_to not in dynamic
        ):
            raise no_detour_target(entry, settings.detour_to)


def _relink_detours(node: Node) -> None:
    """Link every VMess inbound with ``detour`` to the dynamic-port inbound that is current
    now (a rebuilt one replaces the old target)."""
    groups: dict[int, tuple[InboundConfig, list[Inbound]]] = {}
    for inbound in node.inbounds:
        entry = node.sources.get(inbound)
        if isinstance(entry, InboundConfig):
            groups.setdefault(id(entry), (entry, []))[1].append(inbound)
    node._detours(list(groups.values()))


async def _apply(node: Node, config: Config, plan: _Plan) -> None:
    from raybridge.node import chain_outbounds

    router = plan.router
    assert router is not None
    # The counters the new config asks for, on what it will run with (before it serves).
    node.set_counting(config, [new for new, _ in plan.starts], plan.new_outbounds, final=False)
    # What can fail comes first, before anything the node serves with changes: new
    # outbounds, and new inbounds on ports no old inbound holds.
    held = {(i.listen, i.port) for i in node.inbounds if hasattr(i, "listen")}  # type: ignore[attr-defined]
    early = [
        (new, heir)
        for new, heir in plan.starts
        if heir is None and (getattr(new, "listen", None), getattr(new, "port", None)) not in held
    ]
    started: list[Inbound] = []
    try:
        for outbound in plan.new_outbounds:
            await outbound.start()
        for new, _ in early:
            await new.start()
            started.append(new)
    except BaseException:
        for inbound in started:
            await inbound.close()
        for outbound in plan.new_outbounds:
            await outbound.close()
        raise
    # From here on the node changes.
    options = _options(config)
    if options.mux_max_sessions != node.options.mux_max_sessions:
        install_mux_server(node.dispatcher, max_sessions=options.mux_max_sessions)
    node.dispatcher.set_outbounds([*plan.outbounds, *plan.portals], router)
    chain_outbounds(
        (
            (entry, o)
            for o in plan.new_outbounds
            if isinstance(entry := plan.sources[o], OutboundConfig)
        ),
        node.dispatcher,
    )
    node.restore_api_route()
    node.router = router
    node.outbounds = plan.outbounds
    for outbound in plan.gone_outbounds:
        node.retire_outbound(outbound)
    for portal in plan.gone_portals:
        node.retire_outbound(portal)
    node.portals = plan.portals
    for bridge in plan.gone_bridges:
        node.retire_bridge(bridge)
    for bridge in plan.new_bridges:
        await bridge.start()
    node.bridges = plan.bridges
    for inbound, entry in plan.users:
        _set_users(inbound, entry, plan.changes)
    for new, heir in plan.starts:
        if heir is not None:
            await new.take_over(heir)
            node.retire_inbound(heir)  # its live connections drain
    for inbound in plan.gone_inbounds:
        node.retire_inbound(inbound)
    late_errors: list[str] = []
    for new, heir in plan.starts:
        if heir is None and new not in started:
            try:
                await new.start()  # on a port a removed inbound held until now
            except OSError as exc:
                late_errors.append(f"inbound {new.tag}: cannot listen: {exc}")
                plan.inbounds.remove(new)
    node.inbounds = plan.inbounds
    node.sources = plan.sources
    _relink_detours(node)
    node.set_counting(config)  # the kept ones (a changed policy.system applies to them too)
    if not same(node.config.api, config.api):
        await node.replace_api(config.api)
        plan.changes.append("api: changed")
    if node.config.stats != config.stats:
        plan.changes.append(f"stats: {'on' if config.stats else 'off'}")
    node.config = config
    node.options = options
    for error in late_errors:
        logger.error("reload: %s", error)
        plan.changes.append(error)


def _set_users(inbound: Inbound, entry: InboundConfig, changes: list[str]) -> None:
    from raybridge.node import vmess_user
    from raybridge.proxy.vmess import VMessInbound

    assert isinstance(inbound, VMessInbound) and isinstance(entry.settings, VMessInboundSettings)
    added, removed = inbound.set_users([vmess_user(c) for c in entry.settings.clients])
    if added or removed:
        changes.append(
            f"inbound {entry.tag or inbound.port}: users +{len(added)} -{len(removed)}"
            f" ({_names(added)}{'; ' if added and removed else ''}{_names(removed, '-')})"
        )


def _names(users: Sequence[Any], sign: str = "+") -> str:
    shown = [f"{sign}{u.email or 'no email'}" for u in users[:5]]
    more = f" and {len(users) - 5} more" if len(users) > 5 else ""
    return ", ".join(shown) + more
