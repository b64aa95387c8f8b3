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

from raybridge.config.model import Config, RaybridgeOptions
from raybridge.dispatcher import Dispatcher
from raybridge.link import Inbound, Outbound
from raybridge.proxy.base import StreamInbound
from raybridge.proxy.mux import install_mux_server
from raybridge.proxy.packetaddr import install_packetaddr_server
from raybridge.proxy.reverse import Bridge, Portal
from raybridge.registry import build_inbounds, build_outbound
from raybridge.router import Router, compile_rule
from raybridge.stats import Counters

if TYPE_CHECKING:
    # Imported when a status server is asked for: prometheus_client and its imports cost
    # a node that runs without one about 8 MB of RSS.
    from raybridge.api.server import ApiServer
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
        self.outbounds: list[Outbound] = [build_outbound(o) for o in config.outbounds]
        rules = [compile_rule(r) for r in config.routing.rules]
        tags = [o.tag for o in self.outbounds]
        balancers: dict[str, Sequence[str]] = {
            b.tag: list(b.selector) for b in config.routing.balancers
        }
        self.router = Router(
            rules, tags, balancers=balancers, domain_strategy=config.routing.domain_strategy
        )
        self.dispatcher = Dispatcher(self.router, self.outbounds)
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
        self.status_address = status or options.status
        self.status_server: StatusServer | None = None
        self.bridges = [
            Bridge(b.tag, b.domain, self.dispatcher, max_sessions=options.mux_max_sessions)
            for b in config.reverse.bridges
        ]
        self.inbounds: list[Inbound] = []
        for inbound in config.inbounds:
            self.inbounds.extend(
                build_inbounds(
                    inbound,
                    dispatcher=self.dispatcher,
                    policies=config.policy,
                    options=options,
                )
            )
        self.api: ApiServer | None = None
        if config.api is not None:
            from raybridge.api.server import ApiServer

            self.api = ApiServer(self, config.api)
            self.dispatcher.add_outbound(self.api.outbound)
        self.counters: Counters | None = None
        if config.stats:
            self.counters = Counters()
            self.dispatcher.stats.counters = self.counters
            self.dispatcher.stats.user_levels = {
                n: (p.stats_user_uplink, p.stats_user_downlink)
                for n, p in config.policy.levels.items()
                if p.stats_user_uplink or p.stats_user_downlink
            }
            for outbound in self.outbounds:
                self.bind_outbound_counters(outbound)
            for built in self.inbounds:
                self.bind_inbound_counters(built)
        self.started = False

    def bind_inbound_counters(self, inbound: Inbound) -> None:
        """Give an inbound its ``inbound>>>TAG>>>traffic>>>*`` counters, where the config's
        ``stats`` and ``policy.system`` ask for them."""
        system = self.config.policy.system
        if self.counters is not None and isinstance(inbound, StreamInbound):
            inbound.uplink, inbound.downlink = self.counters.pair(
                "inbound", inbound.tag, system.stats_inbound_uplink, system.stats_inbound_downlink
            )

    def bind_outbound_counters(self, outbound: Outbound) -> None:
        """The same for an outbound: ``outbound>>>TAG>>>traffic>>>*``."""
        system = self.config.policy.system
        if self.counters is not None:
            outbound.bind_counters(
                *self.counters.pair(
                    "outbound",
                    outbound.tag,
                    system.stats_outbound_uplink,
                    system.stats_outbound_downlink,
                )
            )

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

    async def close(self) -> None:
        logging.getLogger("raybridge").removeHandler(self.dispatcher.stats.recent)
        if self.status_server is not None:
            await self.status_server.close()
            self.status_server = None
        for bridge in self.bridges:
            await bridge.close()
        if self.api is not None:
            await self.api.close()
        for portal in self.portals:
            await portal.close()
        for inbound in self.inbounds:
            try:
                await inbound.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.exception("closing inbound %s", inbound.tag)
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
