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
from raybridge.proxy.mux import install_mux_server
from raybridge.proxy.packetaddr import install_packetaddr_server
from raybridge.registry import build_inbounds, build_outbound
from raybridge.router import Router, compile_rule

if TYPE_CHECKING:
    # Imported where configured: a node without portals or bridges never loads them.
    from raybridge.proxy.reverse import Bridge, Portal

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
        self.portals: list[Portal] = []
        self.bridges: list[Bridge] = []
        if config.reverse.portals or config.reverse.bridges:
            from raybridge.proxy.reverse import Bridge, Portal

            self.portals = [Portal(p.tag, p.domain) for p in config.reverse.portals]
            self.bridges = [
                Bridge(b.tag, b.domain, self.dispatcher, max_sessions=options.mux_max_sessions)
                for b in config.reverse.bridges
            ]
        for portal in self.portals:
            self.dispatcher.add_outbound(portal)
        self.status_address = status or options.status
        self.status_server: StatusServer | None = None
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
        self.started = False

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
