"""A node: everything one config describes, built, started and stopped together.

``Node(config)`` builds outbounds, the router, the dispatcher and inbounds (raising
:class:`~raybridge.errors.ConfigError` for anything that cannot be built, which is what
``raybridge test`` relies on); ``await node.start()`` binds the listeners;
``await node.close()`` stops them and closes every live connection.

A running node can be changed piece by piece (what V2Ray's ``HandlerService`` does, and
what a reload is made of; :mod:`raybridge.reload`): :meth:`Node.add_inbound`,
:meth:`~Node.remove_inbound`, :meth:`~Node.add_outbound`, :meth:`~Node.remove_outbound`,
:meth:`~Node.alter_inbound_users` and :meth:`~Node.replace_router`. Each takes effect for
new connections only: a live connection finishes on the inbound, user set, rules and
outbound it started with. What is removed stops taking new work and *drains*: it is closed
once its last connection has ended, or ``drainTimeout`` seconds after its removal.
:meth:`Node.drain` does that for the whole node (SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from raybridge.config.model import (
    ApiConfig,
    BalancerConfig,
    Config,
    InboundConfig,
    OutboundConfig,
    RaybridgeOptions,
    RuleConfig,
    VMessInboundSettings,
    VMessUserConfig,
)
from raybridge.dispatcher import Dispatcher, SystemResolver
from raybridge.errors import ConfigError
from raybridge.link import Inbound, Outbound
from raybridge.log import check_files as check_log_files
from raybridge.protocols.vmess import User
from raybridge.proxy.base import StreamInbound
from raybridge.proxy.dynamic import DynamicPorts
from raybridge.proxy.mux import install_mux_server
from raybridge.proxy.packetaddr import install_packetaddr_server
from raybridge.proxy.vmess import Detour, VMessInbound
from raybridge.registry import build_inbounds, build_outbound
from raybridge.router import Router, compile_rules
from raybridge.stats import Counters

if TYPE_CHECKING:
    # Imported where configured: the API and status servers when asked for
    # (prometheus_client and its imports cost a node that runs without one about 8 MB of
    # RSS), the reverse proxy where there are portals or bridges.
    from raybridge.api.server import ApiServer
    from raybridge.dns import DnsClient  # with dnspython: only for a "dns" section
    from raybridge.proxy.reverse import Bridge, Portal
    from raybridge.status import StatusServer

logger = logging.getLogger("raybridge")


def report_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What the event loop could not hand to anyone (an exception in a protocol callback:
    asyncio has already closed that one connection). One line in the error log, the
    traceback only at debug level, never a traceback on stderr from network input."""
    exc = context.get("exception")
    message = context.get("message", "error in the event loop")
    if exc is not None:
        logger.error("%s: %s: %s", message, type(exc).__name__, exc)
        logger.debug("traceback", exc_info=exc)
    else:
        logger.error("%s", message)


def _one(section: str, settings: Mapping[str, Any]) -> Any:
    """``settings`` (one V2Ray config entry as JSON) as its config dataclass, checked as a
    file's would be; errors name ``<section>`` and the field."""
    from raybridge.config.loader import load_config_text

    config = load_config_text(json.dumps({section: [settings]}, indent=1), f"<{section}>")
    return getattr(config, section)[0]


def parse_inbound(settings: InboundConfig | Mapping[str, Any]) -> InboundConfig:
    """An inbound as a config file has it (a JSON object) or already built."""
    return settings if isinstance(settings, InboundConfig) else _one("inbounds", settings)


def parse_outbound(settings: OutboundConfig | Mapping[str, Any]) -> OutboundConfig:
    """An outbound as a config file has it (a JSON object) or already built."""
    return settings if isinstance(settings, OutboundConfig) else _one("outbounds", settings)


def vmess_user(user: User | VMessUserConfig | Mapping[str, Any]) -> User:
    """A VMess user from a ``clients`` entry (``{"id": ..., "email": ...}``), its config
    dataclass, or a :class:`User`."""
    if isinstance(user, User):
        return user
    if not isinstance(user, VMessUserConfig):
        inbound = _one(
            "inbounds", {"protocol": "vmess", "port": 1, "settings": {"clients": [user]}}
        )
        user = inbound.settings.clients[0]
    assert isinstance(user, VMessUserConfig)
    return User(id=user.id, alter_id=user.alter_id, level=user.level, email=user.email)


def no_detour_target(entry: InboundConfig, tag: str) -> ConfigError:
    """The error for a VMess inbound whose ``detour.to`` names no dynamic-port VMess inbound."""
    return ConfigError(
        f'no VMess inbound with "allocate": {{"strategy": "random"}} has the tag "{tag}"',
        file=entry.file,
        line=entry.line,
        path=f"inbounds[{entry.index}].settings.detour.to",
    )


def build_router(
    rules: Iterable[RuleConfig],
    tags: Sequence[str],
    balancers: Iterable[BalancerConfig] = (),
    domain_strategy: str = "AsIs",
) -> Router:
    """A router for these rules over the outbound ``tags`` (a ``ConfigError`` names the
    rule that cannot be compiled)."""
    return Router(
        compile_rules(rules),
        list(tags),
        balancers={b.tag: list(b.selector) for b in balancers},
        domain_strategy=domain_strategy,
    )


def check_chains(outbounds: Sequence[OutboundConfig], tags: set[str]) -> None:
    """``proxySettings.tag`` of each outbound names one of ``tags`` and the hops make no
    loop: else a config error (V2Ray 4.34 logs the first and dials directly, and never
    ends the second)."""
    proxy_tags = {o.tag: o.proxy_tag for o in outbounds if o.tag}
    for oc in outbounds:
        if oc.proxy_tag is None:
            continue
        path = f"outbounds[{oc.index}].proxySettings.tag"
        if oc.proxy_tag not in tags:
            raise ConfigError(
                f'no outbound has the tag "{oc.proxy_tag}"', file=oc.file, line=oc.line, path=path
            )
        chain = [oc.tag, oc.proxy_tag] if oc.tag else [oc.proxy_tag]
        while (following := proxy_tags.get(chain[-1])) is not None:
            if following in chain:
                loop = " -> ".join(f'"{t}"' for t in [*chain, following])
                raise ConfigError(
                    f"outbounds proxy through each other in a loop: {loop}",
                    file=oc.file,
                    line=oc.line,
                    path=path,
                )
            chain.append(following)


def chain_outbounds(
    built: Iterable[tuple[OutboundConfig, Outbound]], dispatcher: Dispatcher
) -> None:
    """Carry each built outbound whose entry has ``proxySettings.tag`` through the
    dispatcher's outbound of that tag (checked by :func:`check_chains` beforehand)."""
    for oc, outbound in built:
        if oc.proxy_tag is not None:
            outbound.chain(dispatcher.outbounds[oc.proxy_tag], dispatcher.stats)


async def _close_each(parts: Iterable[Any]) -> None:
    """Close each part in turn; one that fails is logged and the rest are still closed
    (best effort at shutdown)."""
    for part in parts:
        try:
            await part.close()
        except Exception:  # pragma: no cover - a close that fails is a bug to log, not raise
            logger.exception("closing %s %s", type(part).__name__, getattr(part, "tag", ""))


class Node:
    def __init__(self, config: Config, *, status: str | None = None) -> None:
        """``status``: ``"host:port"`` for the status server (overrides the config's)."""
        self.config = config
        check_log_files(config.log)  # of the merged config: a later file may replace them
        #: The ``dns`` section's client (``None``: the system resolver, no dns section).
        self.dns: DnsClient | None = None
        if config.dns is not None:
            from raybridge.dns import DnsClient

            self.dns = DnsClient(config.dns)
        resolver = self.dns or SystemResolver()
        self.outbounds: list[Outbound] = [build_outbound(o) for o in config.outbounds]
        #: What outbounds and routing resolve domains with (a reload's new outbounds too).
        self.resolver = resolver
        for outbound in self.outbounds:
            outbound.use_resolver(resolver)
        self.router = build_router(
            config.routing.rules,
            [o.tag for o in self.outbounds],
            config.routing.balancers,
            config.routing.domain_strategy,
        )
        self.dispatcher = Dispatcher(self.router, self.outbounds, resolver)
        if self.dns is not None:
            self.dns.attach(self.dispatcher)
        #: Removed inbounds that still serve their live connections (closed when drained).
        self.retiring: list[Inbound] = []
        self._retired_outbounds: list[Outbound] = []
        self._retired_bridges: list[Bridge] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: "running", "draining" (SIGTERM: no new clients, live ones finish) or "stopped".
        self.state = "stopped"
        #: What each reload did, newest last (:class:`raybridge.reload.ReloadRecord`).
        self.reloads: list[Any] = []
        self.reload_totals: Counter[str] = Counter()  # "ok" / "failed"
        options = config.sections.get("raybridge") or RaybridgeOptions()
        assert isinstance(options, RaybridgeOptions)
        self.options = options
        install_mux_server(self.dispatcher, max_sessions=options.mux_max_sessions)
        install_packetaddr_server(self.dispatcher)
        # Portals are outbounds registered after the configured ones (never the default
        # unless there is no other); bridges dial through the dispatcher.
        self.portals: list[Portal] = []
        self.bridges: list[Bridge] = []
        if config.reverse.portals or config.reverse.bridges:
            from raybridge.proxy.reverse import Bridge, Portal

            self.portals = [
                Portal(p.tag, p.domain, max_sessions=options.mux_max_sessions)
                for p in config.reverse.portals
            ]
            self.bridges = [
                Bridge(b.tag, b.domain, self.dispatcher, max_sessions=options.mux_max_sessions)
                for b in config.reverse.bridges
            ]
        for portal in self.portals:
            self.dispatcher.add_outbound(portal)
        self._chain(config)
        self.status_address = status or options.status
        self.status_server: StatusServer | None = None
        self.inbounds: list[Inbound] = []
        #: The config entry each inbound and outbound was built from (what a reload
        #: compares); those added through the API have none.
        self.sources: dict[object, object] = dict(
            zip(self.outbounds, config.outbounds, strict=True)
        )
        built: list[tuple[InboundConfig, list[Inbound]]] = []
        for inbound in config.inbounds:
            made = build_inbounds(
                inbound, dispatcher=self.dispatcher, policies=config.policy, options=options
            )
            built.append((inbound, made))
            self.inbounds.extend(made)
            self.sources.update((b, inbound) for b in made)
        self._detours(built)
        self.api: ApiServer | None = None
        if config.api is not None:
            from raybridge.api.server import ApiServer

            self.api = ApiServer(self, config.api)
            self.dispatcher.add_outbound(self.api.outbound)
        self.counters: Counters | None = None
        self.set_counting(config)
        self.started = False

    def _detours(self, built: list[tuple[InboundConfig, list[Inbound]]]) -> None:
        """VMess ``detour.to``: the inbounds that send clients on to a dynamic-port VMess
        inbound (proxy/vmess.py ``Detour``). A tag that names no such inbound is a config
        error (V2Ray 4.34 logs a warning per connection and sends no command)."""
        targets: dict[str, tuple[InboundConfig, DynamicPorts]] = {}
        for inbound_config, made in built:
            for inbound in made:
                if isinstance(inbound, DynamicPorts) and inbound.tag:
                    targets[inbound.tag] = (inbound_config, inbound)
        detours: dict[str, Detour] = {}
        for inbound_config, made in built:
            settings = inbound_config.settings
            if not isinstance(settings, VMessInboundSettings) or settings.detour_to is None:
                continue
            tag = settings.detour_to
            found = targets.get(tag)
            if found is None or not isinstance(found[0].settings, VMessInboundSettings):
                raise no_detour_target(inbound_config, tag)
            target_config, target = found
            assert isinstance(target_config.settings, VMessInboundSettings)
            detour = detours.get(tag)
            if detour is None:
                detour = detours[tag] = Detour(
                    target,
                    alter_id=target_config.settings.default_alter_id,
                    level=target_config.settings.default_level,
                )
            for inbound in made:
                if isinstance(inbound, VMessInbound):
                    inbound.detour = detour

    def _chain(self, config: Config) -> None:
        """``proxySettings.tag``: each such outbound's connections go through the named
        outbound (transport/chain.py); see :func:`check_chains`."""
        check_chains(config.outbounds, set(self.dispatcher.outbounds))
        chain_outbounds(zip(config.outbounds, self.outbounds, strict=True), self.dispatcher)

    def set_counting(
        self,
        config: Config,
        inbounds: Iterable[Inbound] | None = None,
        outbounds: Iterable[Outbound] | None = None,
        *,
        final: bool = True,
    ) -> None:
        """Count what ``config``'s ``stats`` and ``policy`` ask for (V2Ray's counters) on
        ``inbounds`` and ``outbounds`` (the node's own by default): at start, and on a
        reload (the counters that stay keep their values). Not ``final``: only bind, what
        a reload does before the step that may still fail."""
        stats = self.dispatcher.stats
        if config.stats and self.counters is None:
            self.counters = stats.counters = Counters()
        if final:
            if not config.stats:
                self.counters = stats.counters = None
            stats.user_levels = {
                n: (p.stats_user_uplink, p.stats_user_downlink)
                for n, p in config.policy.levels.items()
                if p.stats_user_uplink or p.stats_user_downlink
            }
        for outbound in self.outbounds if outbounds is None else outbounds:
            self.bind_outbound_counters(outbound, config)
        for inbound in self.inbounds if inbounds is None else inbounds:
            self.bind_inbound_counters(inbound, config)

    def bind_inbound_counters(self, inbound: Inbound, config: Config | None = None) -> None:
        """Give an inbound its ``inbound>>>TAG>>>traffic>>>*`` counters, where the config's
        ``stats`` and ``policy.system`` ask for them (``None`` each otherwise)."""
        if isinstance(inbound, StreamInbound):
            system = (config or self.config).policy.system
            inbound.uplink, inbound.downlink = self._pair(
                "inbound", inbound.tag, system.stats_inbound_uplink, system.stats_inbound_downlink
            )

    def bind_outbound_counters(self, outbound: Outbound, config: Config | None = None) -> None:
        """The same for an outbound: ``outbound>>>TAG>>>traffic>>>*``."""
        system = (config or self.config).policy.system
        outbound.bind_counters(
            *self._pair(
                "outbound",
                outbound.tag,
                system.stats_outbound_uplink,
                system.stats_outbound_downlink,
            )
        )

    def _pair(self, kind: str, tag: str, up: bool, down: bool) -> tuple[Any, Any]:
        if self.counters is None:
            return None, None
        uplink, downlink = self.counters.pair(kind, tag, up, down)
        return uplink, downlink

    async def replace_api(self, config: ApiConfig | None) -> None:
        """Serve ``config``'s API from now on (a reload that changed ``api``)."""
        from raybridge.api.server import ApiServer

        old, self.api = self.api, None
        if old is not None:
            if self.dispatcher.outbounds.get(old.config.tag) is old.outbound:
                self.dispatcher.remove_outbound(old.config.tag)
            await old.close()
        if config is not None:
            self.api = ApiServer(self, config)
            await self.api.start()
        self.restore_api_route()

    def restore_api_route(self) -> None:
        """Register the API's outbound again (a reload replaced the dispatcher's table)."""
        if self.api is not None:
            self.dispatcher.add_outbound(self.api.outbound)

    # -- running ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(report_loop_error)
        try:
            for outbound in self.outbounds:
                await outbound.start()
            for inbound in self.inbounds:
                await inbound.start()
            if self.api is not None:
                await self.api.start()
            for bridge in self.bridges:
                await bridge.start()
            if self.status_address:
                from raybridge.status import StatusServer, parse_address

                host, port = parse_address(self.status_address)
                self.status_server = StatusServer(
                    self,
                    host,
                    port,
                    token=self.options.status_token,
                    hosts=self.options.status_hosts,
                )
                await self.status_server.start()
            logging.getLogger("raybridge").addHandler(self.dispatcher.stats.recent)
        except BaseException:
            await self.close()
            raise
        self.started = True
        self.state = "running"

    async def close(self) -> None:
        logging.getLogger("raybridge").removeHandler(self.dispatcher.stats.recent)
        self.state = "stopped"
        for task in list(self._tasks):
            task.cancel()
        for retired in (self.retiring, self._retired_outbounds, self._retired_bridges):
            items = retired[:]
            retired.clear()
            await _close_each(items)
        if self.status_server is not None:
            await self.status_server.close()
            self.status_server = None
        api = [self.api] if self.api is not None else []
        await _close_each([*self.bridges, *api, *self.portals, *self.inbounds])
        if self.dns is not None:
            await self.dns.close()
        await _close_each(self.outbounds)
        self.started = False

    def inbound(self, tag: str) -> Inbound:
        for inbound in self.inbounds:
            if inbound.tag == tag:
                return inbound
        raise KeyError(tag)

    async def reload(self, config: Config, *, requested: float | None = None) -> Any:
        """Move to ``config`` without dropping anything (:func:`raybridge.reload.reload`;
        ``requested``: ``time.monotonic()`` of the signal). Returns its
        :class:`~raybridge.reload.ReloadRecord`; a bad config changes nothing."""
        from raybridge.reload import reload

        return await reload(self, config, requested=requested)

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop taking work and wait for the live connections (SIGTERM): every inbound
        stops accepting, every bridge says DRAIN to its portal and closes each tunnel once
        its sessions end. Returns True once nothing is left, False after ``timeout``
        seconds (default ``drainTimeout``); the caller then closes the node."""
        self.state = "draining"
        logger.warning(
            "draining: %d connections, %d bridge tunnels (at most %ss)",
            self.live_connections,
            sum(len(b.tunnels) + len(b.retired) for b in self.bridges),
            self.drain_timeout if timeout is None else timeout,
        )
        for inbound in self.inbounds:
            inbound.stop_accepting()
        for bridge in self.bridges:
            bridge.drain()
        if self.api is not None:
            self.api.outbound.close_links()  # as V2Ray's API goes at once on SIGTERM

        def drained() -> bool:
            for inbound in [*self.inbounds, *self.retiring]:
                inbound.close_idle_carriers()  # a client's idle mux connection
            return self.live_connections == 0 and all(b.drained for b in self.bridges)

        return await self._until_drained(
            drained, self.drain_timeout if timeout is None else timeout
        )

    @property
    def live_connections(self) -> int:
        """Client connections open on the inbounds (removed ones still draining too)."""
        return sum(i.live for i in [*self.inbounds, *self.retiring])

    def retire_bridge(self, bridge: Bridge) -> None:
        """``bridge`` left the config: it drains, and is closed once its tunnels are (or
        after ``drainTimeout``)."""
        bridge.drain()
        self._retire(self._retired_bridges, bridge, lambda: bridge.drained)

    def _retire(self, retired: list[Any], item: Any, done: Callable[[], bool]) -> None:
        """Keep ``item`` (an inbound, outbound or bridge that left the node) in ``retired``
        until ``done()`` or ``drainTimeout``, then close it; :meth:`close` closes what is
        still there."""
        retired.append(item)

        async def drain() -> None:
            await self._until_drained(done, self.drain_timeout)
            if item in retired:
                retired.remove(item)
                await item.close()

        self._spawn(drain())

    @property
    def drain_timeout(self) -> float:
        """``"raybridge": {"drainTimeout": N}``: how long what is removed (or the whole
        node, on SIGTERM) may go on serving its live connections."""
        return float(self.options.drain_timeout)

    # -- changing a running node (V2Ray's HandlerService; reloads) ---------------------------
    async def add_inbound(self, settings: InboundConfig | Mapping[str, Any]) -> list[Inbound]:
        """Build and start the inbound ``settings`` describe (a config file's JSON object,
        or an :class:`InboundConfig`): one per port of its range. A ``ConfigError`` for bad
        settings or a tag already in use (V2Ray: "existing tag found"); ``OSError`` if it
        cannot listen. Nothing is changed on failure."""
        config = parse_inbound(settings)
        if config.tag and any(i.tag == config.tag for i in self.inbounds):
            raise config.error(f"existing tag found: {config.tag}")
        built: list[Inbound] = list(
            build_inbounds(
                config,
                dispatcher=self.dispatcher,
                policies=self.config.policy,
                options=self.options,
            )
        )
        for inbound in built:
            self.bind_inbound_counters(inbound)
        started: list[Inbound] = []
        try:
            for inbound in built:
                await inbound.start()
                started.append(inbound)
        except BaseException:
            for inbound in started:
                await inbound.close()
            raise
        self.inbounds.extend(built)
        return built

    def remove_inbound(self, tag: str) -> list[Inbound]:
        """Stop the inbound(s) tagged ``tag`` from accepting (``KeyError`` if none): their
        listening sockets close now, their live connections drain (:meth:`retire_inbound`)."""
        removed = [i for i in self.inbounds if i.tag == tag]
        if not tag or not removed:
            raise KeyError(tag)
        for inbound in removed:
            self.inbounds.remove(inbound)
            self.retire_inbound(inbound)
        return removed

    def retire_inbound(self, inbound: Inbound) -> None:
        """``inbound`` takes no new clients; it is closed when its last connection ends or
        after ``drainTimeout`` seconds, whichever is first."""
        inbound.stop_accepting()
        self._retire(self.retiring, inbound, lambda: inbound.live == 0)

    async def add_outbound(self, settings: OutboundConfig | Mapping[str, Any]) -> Outbound:
        """Build, start and register an outbound (JSON object or :class:`OutboundConfig`).
        A ``ConfigError`` if its tag is in use; the first outbound of a node that has none
        becomes its default, as in V2Ray."""
        config = parse_outbound(settings)
        if config.tag in self.dispatcher.outbounds:
            raise config.error(f"existing tag found: {config.tag}")
        outbound = build_outbound(config)
        self.bind_outbound_counters(outbound)
        outbound.use_resolver(self.resolver)
        await outbound.start()
        self.outbounds.append(outbound)
        self.dispatcher.add_outbound(outbound)
        return outbound

    # (what add_inbound/add_outbound build has no entry in ``sources``: it is not in the
    # files, so a reload removes it, as a restart of V2Ray forgets its API changes)

    def remove_outbound(self, tag: str) -> Outbound:
        """Unregister outbound ``tag`` (``KeyError`` if none): new links cannot reach it
        (rules naming it fall back to the default), live ones keep going; it is closed
        when they have ended, or after ``drainTimeout``."""
        outbound = self.dispatcher.remove_outbound(tag)
        if outbound in self.outbounds:
            self.outbounds.remove(outbound)
        self.retire_outbound(outbound)
        return outbound

    def retire_outbound(self, outbound: Outbound) -> None:
        """Close ``outbound`` once the links it carries now have ended (or after
        ``drainTimeout``); it must be unreachable for new links already."""
        since = time.monotonic()
        stats = self.dispatcher.stats

        def idle() -> bool:
            return not any(
                s.outbound_tag == outbound.tag and s.started <= since for s in list(stats.live)
            )

        self._retire(self._retired_outbounds, outbound, idle)

    def alter_inbound_users(
        self,
        tag: str,
        add: Iterable[User | VMessUserConfig | Mapping[str, Any]] = (),
        remove: Iterable[str] = (),
    ) -> None:
        """Add users to / remove users (by email) from the VMess inbound ``tag`` (every
        port of it): new connections are checked against the new set, live ones go on.
        ``KeyError`` without such an inbound; ``ValueError`` (V2Ray's messages) for an
        inbound that is not VMess, a duplicate email or an unknown one."""
        from raybridge.proxy.vmess import VMessInbound

        targets = [i for i in self.inbounds if i.tag == tag]
        if not tag or not targets:
            raise KeyError(tag)
        vmess: list[VMessInbound] = [i for i in targets if isinstance(i, VMessInbound)]
        if len(vmess) != len(targets):
            raise ValueError(f"inbound {tag} does not take users (not VMess)")
        users = [vmess_user(u) for u in add]
        emails = list(remove)
        for inbound in vmess:
            for user in users:
                inbound.add_user(user)
            for email in emails:
                inbound.remove_user(email)

    def replace_router(
        self,
        rules: Iterable[RuleConfig],
        *,
        balancers: Iterable[BalancerConfig] | None = None,
        domain_strategy: str | None = None,
    ) -> Router:
        """Route new links by ``rules`` (balancers and domain strategy kept unless given);
        a ``ConfigError`` names a rule that cannot be compiled, and changes nothing."""
        routing = self.config.routing
        router = build_router(
            rules,
            list(self.dispatcher.outbounds),
            routing.balancers if balancers is None else balancers,
            routing.domain_strategy if domain_strategy is None else domain_strategy,
        )
        self.router = self.dispatcher.router = router
        return router

    # -- helpers ------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _until_drained(done: Any, timeout: float, step: float = 0.05) -> bool:
        """Poll ``done()`` until true (True) or ``timeout`` seconds (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(step)
        return True
