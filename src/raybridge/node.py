"""A node: everything one config describes, built, started and stopped together.

``Node(config)`` builds outbounds, the router, the dispatcher and inbounds (raising
:class:`~raybridge.errors.ConfigError` for anything that cannot be built, which is what
``raybridge test`` relies on); ``await node.start()`` binds the listeners;
``await node.close()`` stops them and closes every live connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from raybridge.address import parse_host
from raybridge.config.model import Config, InboundConfig, OutboundConfig, RaybridgeOptions
from raybridge.dispatcher import Dispatcher
from raybridge.errors import ConfigError
from raybridge.link import Inbound, Outbound
from raybridge.protocols.vmess import User
from raybridge.proxy.base import Policy, StreamInbound
from raybridge.proxy.blackhole import BlackholeOutbound
from raybridge.proxy.dokodemo import DokodemoInbound
from raybridge.proxy.freedom import FreedomOutbound
from raybridge.proxy.http import HttpInbound
from raybridge.proxy.mux import MuxOutbound, install_mux_server
from raybridge.proxy.packetaddr import install_packetaddr_server
from raybridge.proxy.reverse import Bridge, Portal
from raybridge.proxy.socks import SocksInbound
from raybridge.proxy.vmess import ClientUser, VMessInbound, VMessOutbound, VMessServer
from raybridge.router import Router, compile_rule

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


def _where(cfg: Any, section: str) -> dict[str, Any]:
    return {
        "file": getattr(cfg, "file", None),
        "line": getattr(cfg, "line", None),
        "path": f"{section}[{getattr(cfg, 'index', 0)}]",
    }


class Node:
    def __init__(self, config: Config, *, status: str | None = None) -> None:
        """``status``: ``"host:port"`` for the status server (overrides the config's)."""
        self.config = config
        self.outbounds: list[Outbound] = [self._outbound(o) for o in config.outbounds]
        rules = [compile_rule(r) for r in config.routing.rules]
        tags = [o.tag for o in self.outbounds]
        balancers = {b.tag: list(b.selector) for b in config.routing.balancers}
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
            self.inbounds.extend(self._inbounds(inbound))
        self.started = False

    # -- building --------------------------------------------------------------------------
    def policy(self, level: int) -> Policy:
        lp = self.config.policy.level(level)
        return Policy(
            handshake=lp.handshake,
            conn_idle=lp.conn_idle,
            uplink_only=lp.uplink_only,
            downlink_only=lp.downlink_only,
            buffer_size=lp.buffer_size,
        )

    def _outbound(self, cfg: OutboundConfig) -> Outbound:
        s = cfg.settings
        tag = cfg.tag or ""
        if cfg.protocol == "freedom":
            redirect = None
            if s.redirect is not None:
                host, port = s.redirect
                redirect = (parse_host(host) if host else None, port)
            return FreedomOutbound(
                tag,
                domain_strategy=s.domain_strategy,
                redirect=redirect,
                send_through=cfg.send_through,
                block_private=s.block_private,
            )
        if cfg.protocol == "blackhole":
            return BlackholeOutbound(tag, response=s.response)
        if cfg.protocol == "vmess":
            servers = [
                VMessServer(
                    address=srv.address,
                    port=srv.port,
                    users=tuple(
                        ClientUser(
                            User(id=u.id, alter_id=u.alter_id, level=u.level, email=u.email),
                            u.security,
                            u.experiments,
                        )
                        for u in srv.users
                    ),
                )
                for srv in s.servers
            ]
            if not servers or not all(srv.users for srv in servers):
                raise ConfigError(
                    "a VMess outbound needs a server with at least one user",
                    **_where(cfg, "outbounds"),
                )
            outbound: Outbound = VMessOutbound(
                tag,
                servers,
                send_through=cfg.send_through,
                packet_encoding=s.packet_encoding,
            )
            if cfg.mux.enabled and cfg.mux.concurrency > 0:
                outbound = MuxOutbound(outbound, cfg.mux.concurrency)
            return outbound
        raise ConfigError(f"unknown outbound protocol {cfg.protocol!r}", **_where(cfg, "outbounds"))

    def _inbounds(self, cfg: InboundConfig) -> list[StreamInbound]:
        s = cfg.settings
        tag = cfg.tag or ""
        out: list[StreamInbound] = []
        for port in cfg.ports:
            policy = self.policy(getattr(s, "user_level", 0))
            inbound: StreamInbound
            if cfg.protocol == "socks":
                inbound = SocksInbound(
                    tag,
                    cfg.listen,
                    port,
                    self.dispatcher,
                    policy,
                    accounts=dict(s.accounts) if s.auth == "password" else None,
                    udp=s.udp,
                    ip=s.ip,
                    user_level=s.user_level,
                )
            elif cfg.protocol == "http":
                inbound = HttpInbound(
                    tag,
                    cfg.listen,
                    port,
                    self.dispatcher,
                    policy,
                    accounts=dict(s.accounts),
                    allow_transparent=s.allow_transparent,
                    user_level=s.user_level,
                )
            elif cfg.protocol == "vmess":
                users = [
                    User(id=c.id, alter_id=c.alter_id, level=c.level, email=c.email)
                    for c in s.clients
                ]
                inbound = VMessInbound(
                    tag,
                    cfg.listen,
                    port,
                    self.dispatcher,
                    self.policy(0),
                    users=users,
                    disable_insecure_encryption=s.disable_insecure_encryption,
                    aead_only=s.aead_forced,
                    state_dir=self.options.state_dir,
                )
            elif cfg.protocol == "dokodemo-door":
                if not s.address or not s.port:
                    raise ConfigError(
                        'dokodemo-door needs "address" and "port" (followRedirect is not '
                        "supported)",
                        **_where(cfg, "inbounds"),
                    )
                inbound = DokodemoInbound(
                    tag,
                    cfg.listen,
                    port,
                    self.dispatcher,
                    policy,
                    address=parse_host(s.address),
                    target_port=s.port,
                    networks=frozenset(s.networks),
                    user_level=s.user_level,
                    udp_idle=float(s.timeout) if getattr(s, "timeout", 0) else None,
                )
            else:
                raise ConfigError(
                    f"unknown inbound protocol {cfg.protocol!r}", **_where(cfg, "inbounds")
                )
            out.append(inbound)
        return out

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
