"""A node: everything one config describes, built, started and stopped together.

``Node(config)`` builds outbounds, the router, the dispatcher and inbounds (raising
:class:`~raybridge.errors.ConfigError` for anything that cannot be built, which is what
``raybridge test`` relies on); ``await node.start()`` binds the listeners;
``await node.close()`` stops them and closes every live connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raybridge.config.model import Config, InboundConfig, RaybridgeOptions, VMessInboundSettings
from raybridge.dispatcher import Dispatcher, SystemResolver
from raybridge.dns import DnsClient
from raybridge.errors import ConfigError
from raybridge.link import Inbound, Outbound
from raybridge.log import check_files as check_log_files
from raybridge.proxy.dynamic import DynamicPorts
from raybridge.proxy.mux import install_mux_server
from raybridge.proxy.packetaddr import install_packetaddr_server
from raybridge.proxy.reverse import Bridge, Portal
from raybridge.proxy.vmess import Detour, VMessInbound
from raybridge.registry import build_inbounds, build_outbound
from raybridge.router import Router, compile_rules

if TYPE_CHECKING:
    # Imported when a status server is asked for: prometheus_client and its imports cost
    # a node that runs without one about 8 MB of RSS.
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


class Node:
    def __init__(self, config: Config, *, status: str | None = None) -> None:
        """``status``: ``"host:port"`` for the status server (overrides the config's)."""
        self.config = config
        check_log_files(config.log)  # of the merged config: a later file may replace them
        #: The ``dns`` section's client (``None``: the system resolver, no dns section).
        self.dns = None if config.dns is None else DnsClient(config.dns)
        resolver = self.dns or SystemResolver()
        self.outbounds: list[Outbound] = [build_outbound(o) for o in config.outbounds]
        for outbound in self.outbounds:
            outbound.use_resolver(resolver)
        rules = compile_rules(config.routing.rules)
        tags = [o.tag for o in self.outbounds]
        balancers: dict[str, Sequence[str]] = {
            b.tag: list(b.selector) for b in config.routing.balancers
        }
        self.router = Router(
            rules, tags, balancers=balancers, domain_strategy=config.routing.domain_strategy
        )
        self.dispatcher = Dispatcher(self.router, self.outbounds, resolver)
        if self.dns is not None:
            self.dns.attach(self.dispatcher)
        options = config.sections.get("raybridge") or RaybridgeOptions()
        assert isinstance(options, RaybridgeOptions)
        self.options = options
        install_mux_server(self.dispatcher, max_sessions=options.mux_max_sessions)
        install_packetaddr_server(self.dispatcher)
        # Portals are outbounds registered after the configured ones (never the default
        # unless there is no other); bridges dial through the dispatcher.
        self.portals = [Portal(p.tag, p.domain) for p in config.reverse.portals]
        for portal in self.portals:
            self.dispatcher.add_outbound(portal)
        self._chain(config)
        self.status_address = status or options.status
        self.status_server: StatusServer | None = None
        self.bridges = [
            Bridge(b.tag, b.domain, self.dispatcher, max_sessions=options.mux_max_sessions)
            for b in config.reverse.bridges
        ]
        self.inbounds: list[Inbound] = []
        built: list[tuple[InboundConfig, list[Inbound]]] = []
        for inbound in config.inbounds:
            made = build_inbounds(
                inbound, dispatcher=self.dispatcher, policies=config.policy, options=options
            )
            built.append((inbound, made))
            self.inbounds.extend(made)
        self._detours(built)
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
                raise ConfigError(
                    f'no VMess inbound with "allocate": {{"strategy": "random"}} has the '
                    f'tag "{tag}"',
                    file=inbound_config.file,
                    line=inbound_config.line,
                    path=f"inbounds[{inbound_config.index}].settings.detour.to",
                )
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
        outbound (transport/chain.py). An unknown tag or a loop is a config error (V2Ray
        4.34 logs the first and dials directly, and never ends the second)."""
        proxy_tags = {o.tag: o.proxy_tag for o in config.outbounds if o.tag}
        for oc, outbound in zip(config.outbounds, self.outbounds, strict=True):
            if oc.proxy_tag is None:
                continue
            path = f"outbounds[{oc.index}].proxySettings.tag"
            hop = self.dispatcher.outbounds.get(oc.proxy_tag)
            if hop is None:
                raise ConfigError(
                    f'no outbound has the tag "{oc.proxy_tag}"',
                    file=oc.file,
                    line=oc.line,
                    path=path,
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
            outbound.chain(hop, self.dispatcher.stats)

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

    async def close(self) -> None:
        logging.getLogger("raybridge").removeHandler(self.dispatcher.stats.recent)
        if self.status_server is not None:
            await self.status_server.close()
            self.status_server = None
        for bridge in self.bridges:
            await bridge.close()
        for portal in self.portals:
            await portal.close()
        for inbound in self.inbounds:
            try:
                await inbound.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.exception("closing inbound %s", inbound.tag)
        if self.dns is not None:
            await self.dns.close()
        for outbound in self.outbounds:
            try:
                await outbound.close()
            except Exception:  # pragma: no cover
                logger.exception("closing outbound %s", outbound.tag)
        self.started = False

    def inbound(self, tag: str) -> Inbound:
        for inbound in self.inbounds:
            if inbound.tag == tag:
                return inbound
        raise KeyError(tag)
