"""The ``dokodemo-door`` inbound: every connection goes to one fixed destination.

``network`` picks TCP, UDP or both; for UDP every client address gets its own flow to the
destination and replies go back from the listening socket. ``followRedirect`` (taking the
original destination of an iptables REDIRECT/TPROXY) is not supported and is rejected by
the config loader.
"""

from __future__ import annotations

from raybridge.address import Destination, Host, Network, parse_host
from raybridge.config.model import DokodemoSettings
from raybridge.proxy.base import InboundCommon, InboundContext, InboundEnd, StreamInbound
from raybridge.transport.udp import UDP_IDLE, UdpServer


class DokodemoInboundEnd(InboundEnd):
    inbound: DokodemoInbound

    def handshake_started(self) -> None:
        self.new_session(level=self.inbound.user_level)
        self.start_relay(Destination(Network.TCP, self.inbound.address, self.inbound.target_port))


class DokodemoInbound(StreamInbound):
    protocol_name = "dokodemo-door"
    end_class = DokodemoInboundEnd

    def __init__(
        self,
        common: InboundCommon,
        *,
        address: Host,
        target_port: int,
        networks: frozenset[str] = frozenset({"tcp"}),
        udp_idle: float | None = None,
    ) -> None:
        super().__init__(common)
        self.address = address if not isinstance(address, str) else parse_host(address)
        self.target_port = target_port
        self.networks = networks
        self.udp_idle = udp_idle

    async def start(self) -> None:
        if "tcp" in self.networks:
            await super().start()
        if "udp" in self.networks:
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
    # Port 0 is allowed, as in V2Ray: the usual door to the API has only an address.
    if not settings.address:
        raise ctx.config.error('dokodemo-door needs "address" (followRedirect is not supported)')
    return DokodemoInbound(
        ctx.common(settings.user_level),
        address=parse_host(settings.address),
        target_port=settings.port,
        networks=frozenset(settings.networks),
        udp_idle=float(settings.timeout) if settings.timeout else None,
    )
