"""The ``dokodemo-door`` inbound: every connection goes to one fixed destination.

``network`` picks TCP, UDP or both; for UDP every client address gets its own flow to the
destination and replies go back from the listening socket. ``followRedirect`` (taking the
original destination of an iptables REDIRECT/TPROXY) is not supported and is rejected by
the config loader.
"""

from __future__ import annotations

from raybridge.address import Destination, Host, Network, parse_host
from raybridge.dispatcher import Dispatcher
from raybridge.link import Session
from raybridge.proxy.base import InboundEnd, Policy, StreamInbound
from raybridge.transport.udp import UDP_IDLE, UdpClientFlow, UdpServer


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
        tag: str,
        listen: str,
        port: int,
        dispatcher: Dispatcher,
        policy: Policy | None = None,
        *,
        address: Host,
        target_port: int,
        networks: frozenset[str] = frozenset({"tcp"}),
        user_level: int = 0,
        udp_idle: float | None = None,
    ) -> None:
        super().__init__(tag, listen, port, dispatcher, policy)
        self.address = address if not isinstance(address, str) else parse_host(address)
        self.target_port = target_port
        self.networks = networks
        self.user_level = user_level
        self.udp_idle = udp_idle
        self.udp_server: UdpServer | None = None

    async def start(self) -> None:
        if "tcp" in self.networks:
            await super().start()
        if "udp" in self.networks:
            dest = Destination(Network.UDP, self.address, self.target_port)
            self.udp_server = UdpServer(
                lambda data, addr: (dest, data, b""),
                self._open_flow,
                self._session,
                idle=self.udp_idle or UDP_IDLE,
                closed=self.dispatcher.stats.closed,
                name=self.describe(),  # flow caps and drop logging: transport.udp
            )
            await self.udp_server.start(self.listen, self.bound_port)

    @property
    def bound_port(self) -> int:
        if self.server is None and self.udp_server is not None:
            return self.udp_server.port
        return super().bound_port

    async def close(self) -> None:
        if self.udp_server is not None:
            self.udp_server.close()
            self.udp_server = None
        await super().close()

    def _session(self, addr: tuple[str, int]) -> Session:
        source = Destination(Network.UDP, parse_host(addr[0]), addr[1])
        return Session(inbound_tag=self.tag, source=source, level=self.user_level)

    def _open_flow(self, flow: UdpClientFlow) -> None:
        self.dispatcher.dispatch(flow.session, flow.dest, flow)
