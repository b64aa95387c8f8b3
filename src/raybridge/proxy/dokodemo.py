"""The ``dokodemo-door`` inbound: every connection goes to one fixed destination, or
(``followRedirect``) to where it was going before the firewall sent it here.

``network`` picks TCP, UDP or both; for UDP every client address gets its own flow to the
destination and replies go back from the listening socket. ``followRedirect`` (Linux)
takes the destination from the kernel, as V2Ray 4.34's ``proxy/dokodemo`` does: the
address before an iptables/nft REDIRECT, or with ``sockopt.tproxy`` ``"tproxy"`` the
socket's local address (transport/redirect.py); UDP with TPROXY only, each datagram's
destination from IP_ORIGDSTADDR and replies sent from it (transport/tproxy_udp.py). When
that is not known (the connection was not redirected), ``address``/``port`` are used if
set, else the connection is closed.
"""

from __future__ import annotations

import ipaddress

from raybridge.address import Destination, Host, Network, parse_host
from raybridge.config.model import DokodemoSettings
from raybridge.proxy.base import InboundCommon, InboundContext, InboundEnd, StreamInbound
from raybridge.transport.redirect import original_destination
from raybridge.transport.tcp import sockname
from raybridge.transport.tproxy_udp import TproxyUdpServer
from raybridge.transport.udp import UDP_IDLE, UdpServer


class DokodemoInboundEnd(InboundEnd):
    inbound: DokodemoInbound

    def handshake_started(self) -> None:
        self.new_session(level=self.inbound.user_level)
        inbound = self.inbound
        dest = None
        if inbound.follow is not None:
            dest = self._redirected(inbound.follow)
        if dest is None:
            # Port 0 stays 0, as in V2Ray (an API door routes by its tag, not by port).
            if inbound.address is None:
                self.reject("dokodemo-door: unable to get the destination (not redirected)")
                return
            dest = Destination(Network.TCP, inbound.address, inbound.target_port)
        self.start_relay(dest)

    def _redirected(self, mode: str) -> Destination | None:
        """Where the connection was going (``None``: not redirected, or not known)."""
        transport = self.transport
        if transport is None:
            return None
        if mode == "tproxy":
            found = sockname(transport)
        else:
            found = original_destination(transport.get_extra_info("socket"))
        if found is None or self.inbound.is_self(found):
            return None
        return Destination(Network.TCP, parse_host(found[0]), found[1])


class DokodemoInbound(StreamInbound):
    protocol_name = "dokodemo-door"
    end_class = DokodemoInboundEnd

    def __init__(
        self,
        common: InboundCommon,
        *,
        address: Host | None,
        target_port: int,
        networks: frozenset[str] = frozenset({"tcp"}),
        udp_idle: float | None = None,
        follow: str | None = None,
    ) -> None:
        """``follow``: ``"redirect"`` or ``"tproxy"`` for ``followRedirect`` (TCP)."""
        super().__init__(common)
        self.address = address if not isinstance(address, str) else parse_host(address)
        self.target_port = target_port
        self.networks = networks
        self.udp_idle = udp_idle
        self.follow = follow

    def is_self(self, found: tuple[str, int]) -> bool:
        """``found`` is this listener itself: a connection made to it directly (V2Ray would
        dial itself, again and again)."""
        if found[1] != self.bound_port:
            return False
        if self.listen in ("0.0.0.0", "::"):
            try:
                ip = ipaddress.ip_address(found[0])
            except ValueError:
                return False
            return ip.is_loopback or ip.is_unspecified or self.follow == "redirect"
        return found[0] == self.listen

    async def start(self) -> None:
        if "tcp" in self.networks:
            await super().start()
        if "udp" in self.networks and self.follow == "tproxy":
            self.udp_server = TproxyUdpServer(
                self.open_flow,
                self.udp_session,
                idle=self.udp_idle or UDP_IDLE,
                closed=self.dispatcher.stats.closed,
                name=self.describe(),
            )
            await self.udp_server.start(self.listen, self.bound_port)
        elif "udp" in self.networks:
            assert self.address is not None  # followRedirect for UDP is TPROXY only (loader)
            dest = Destination(Network.UDP, self.address, self.target_port)
            await self.start_udp(
                UdpServer(
                    lambda data, addr: (dest, data, b""),
                    self.open_flow,
                    self.udp_session,
                    idle=self.udp_idle or UDP_IDLE,
                    closed=self.dispatcher.stats.closed,
                    name=self.describe(),  # flow caps and drop logging: transport.udp
                )
            )

    @property
    def bound_port(self) -> int:
        if self.server is None and self.udp_server is not None:
            return self.udp_server.port
        return super().bound_port


def build_inbound(ctx: InboundContext, settings: DokodemoSettings) -> DokodemoInbound:
    # Port 0 is allowed, as in V2Ray: the usual door to the API names only an address.
    follow = None
    if settings.follow_redirect:
        follow = "tproxy" if ctx.config.stream.sockopt.tproxy == "tproxy" else "redirect"
    elif not settings.address:
        raise ctx.config.error('dokodemo-door needs "address", or "followRedirect"')
    return DokodemoInbound(
        ctx.common(settings.user_level),
        address=parse_host(settings.address) if settings.address else None,
        target_port=settings.port,
        networks=frozenset(settings.networks),
        udp_idle=float(settings.timeout) if settings.timeout else None,
        follow=follow,
    )
