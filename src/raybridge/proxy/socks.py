"""The ``socks`` inbound: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a (CONNECT).

As in V2Ray (PROTOCOLS.md 5.1) the success reply goes out before anything is dialled, and
UDP is served on the same port number as TCP: every datagram to that port, from any source,
is relayed (the TCP control connection is only held open).
"""

from __future__ import annotations

import logging

from raybridge.address import Destination, Network, parse_host
from raybridge.dispatcher import Dispatcher
from raybridge.link import Session
from raybridge.protocols.socks import (
    SocksCommand,
    SocksError,
    SocksServer,
    decode_udp_datagram,
    encode_udp_datagram,
)
from raybridge.proxy.base import InboundEnd, Policy, StreamInbound
from raybridge.transport.tcp import sockname
from raybridge.transport.udp import UdpClientFlow, UdpServer

logger = logging.getLogger("raybridge.proxy.socks")


class SocksInboundEnd(InboundEnd):
    inbound: SocksInbound

    def handshake_started(self) -> None:
        self.codec = SocksServer(accounts=self.inbound.accounts, udp=self.inbound.udp)
        self.udp_control = False

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            super().data_received(data)
            return
        if self.udp_control:
            return  # the control connection of a UDP association: read and discard
        codec = self.codec
        try:
            request = codec.receive_data(data)
        except SocksError as exc:
            self.reject(f"SOCKS: {exc}", reply=codec.data_to_send())
            return
        out = codec.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        if request is None:
            return
        assert self.transport is not None
        local = sockname(self.transport) or (self.inbound.listen, self.inbound.port)
        self.new_session(user=request.user, level=self.inbound.user_level)
        if request.command is SocksCommand.UDP_ASSOCIATE:
            self.transport.write(codec.accept(self._udp_reply_address(local)))
            self.udp_control = True
            self.relaying = True  # no handshake deadline for the control connection
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            return
        bind = Destination(Network.TCP, parse_host(local[0]), local[1])
        self.transport.write(codec.accept(bind))
        self.start_relay(request.target, codec.trailing)

    def _udp_reply_address(self, local: tuple[str, int]) -> Destination:
        port = self.inbound.udp_port or local[1]
        if self.inbound.ip:
            return Destination(Network.UDP, parse_host(self.inbound.ip), port)
        source = self.source
        if source is not None and not isinstance(source.host, str) and source.host.is_loopback:
            return Destination(Network.UDP, source.host, port)
        host = parse_host(self.inbound.listen)
        if isinstance(host, str) or host.is_unspecified:
            host = parse_host(local[0])
        return Destination(Network.UDP, host, port)

    def eof_received(self) -> bool:
        if self.udp_control:
            self.abort()  # the client ended its UDP association
            return False
        return super().eof_received()


class SocksInbound(StreamInbound):
    protocol_name = "socks"
    end_class = SocksInboundEnd

    def __init__(
        self,
        tag: str,
        listen: str,
        port: int,
        dispatcher: Dispatcher,
        policy: Policy | None = None,
        *,
        accounts: dict[str, str] | None = None,
        udp: bool = False,
        ip: str | None = None,
        user_level: int = 0,
    ) -> None:
        super().__init__(tag, listen, port, dispatcher, policy)
        self.accounts = accounts or {}
        self.udp = udp
        self.ip = ip
        self.user_level = user_level
        self.udp_server: UdpServer | None = None

    @property
    def udp_port(self) -> int:
        return self.udp_server.port if self.udp_server is not None else 0

    async def start(self) -> None:
        await super().start()
        if self.udp:
            self.udp_server = UdpServer(
                self._classify,
                self._open_flow,
                self._udp_session,
                closed=self.dispatcher.stats.closed,
                encode_reply=encode_udp_datagram,
            )
            await self.udp_server.start(self.listen, self.bound_port)

    async def close(self) -> None:
        if self.udp_server is not None:
            self.udp_server.close()
            self.udp_server = None
        await super().close()

    @staticmethod
    def _classify(data: bytes, addr: tuple[str, int]) -> tuple[Destination, bytes, bytes]:
        dest, payload = decode_udp_datagram(data)
        # Replies carry the destination exactly as the client wrote it (V2Ray does so too).
        header_len = len(data) - len(payload)
        return dest, bytes(payload), bytes(data[:header_len])

    def _udp_session(self, addr: tuple[str, int]) -> Session:
        source = Destination(Network.UDP, parse_host(addr[0]), addr[1])
        return Session(inbound_tag=self.tag, source=source, level=self.user_level)

    def _open_flow(self, flow: UdpClientFlow) -> None:
        self.dispatcher.dispatch(flow.session, flow.dest, flow)
