"""The ``socks`` inbound: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a (CONNECT).

As in V2Ray (docs/protocols.md 5.1) the success reply goes out before anything is dialled, and
UDP is served on the same port number as TCP.

UDP associations (RFC 1928 section 7). Beyond V2Ray:

* ``"auth": "password"``: only a client IP address with a live association (an
  authenticated UDP ASSOCIATE whose TCP connection is open) may use the relay; any other
  datagram is dropped (counted, logged at most once per interval). Without a password any
  source is relayed, as V2Ray does.
* The UDP flows a client starts while it holds an association belong to it (the newest, if
  it holds several): when the association's TCP connection closes, they end.
* An association ends when neither its TCP connection nor any of its flows carried anything
  for the policy's ``connIdle`` (300 s by default), like an idle TCP connection; V2Ray holds
  it until the client closes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from raybridge.address import Destination, Host, Network, parse_host
from raybridge.config.model import SocksInboundSettings
from raybridge.link import IdleTimer
from raybridge.protocols.socks import (
    SocksCommand,
    SocksError,
    SocksServer,
    decode_udp_datagram,
    encode_udp_datagram,
)
from raybridge.proxy.base import InboundCommon, InboundContext, InboundEnd, StreamInbound
from raybridge.transport.tcp import sockname
from raybridge.transport.udp import FlowGroup, UdpServer

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger("raybridge.proxy.socks")


class SocksInboundEnd(InboundEnd):
    inbound: SocksInbound

    def handshake_started(self) -> None:
        self.codec = SocksServer(
            accounts=self.inbound.accounts, password=self.inbound.password, udp=self.inbound.udp
        )
        self.udp_control = False
        self.association: FlowGroup | None = None

    def handshake_received(self, data: bytes) -> None:
        if self.udp_control:
            # The control connection of a UDP association: read and discard (it counts as
            # activity of the association).
            if self.session is not None:
                self.session.active = True
            return
        codec = self.codec
        try:
            request = codec.receive_data(data)
        except SocksError as exc:
            self.reject(f"SOCKS: {exc}", reply=codec.data_to_send())
            return
        out = codec.data_to_send()
        if request is None:
            if out and self.transport is not None:
                self.send_wire(out)
            return
        # The method reply (when the request came with the greeting, as most clients send
        # it) goes out with the request's reply: one write, one wake-up of the client.
        assert self.transport is not None
        local, bind = self.inbound.local_address(self.transport)
        self.new_session(user=request.user, level=self.inbound.user_level)
        if request.command is SocksCommand.UDP_ASSOCIATE:
            self.send_wire(out + codec.accept(self._udp_reply_address(local)))
            self.udp_control = True
            self.relaying = True  # no handshake deadline for the control connection
            self._cancel_handshake_deadline()
            assert self.session is not None
            self.association = self.inbound.associate(self)
            self._idle = IdleTimer(self.session, self.policy.conn_idle, self._on_idle)
            return
        self.send_wire(out + codec.accept(bind))
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

    def on_closed(self, exc: Exception | None) -> None:
        association, self.association = self.association, None
        if association is not None:
            self.inbound.dissociate(self, association)  # its UDP flows end with it
        super().on_closed(exc)


class SocksInbound(StreamInbound):
    protocol_name = "socks"
    end_class = SocksInboundEnd

    def __init__(
        self,
        common: InboundCommon,
        *,
        accounts: dict[str, str] | None = None,
        udp: bool = False,
        ip: str | None = None,
    ) -> None:
        """``accounts``: ``None`` for ``"auth": "noauth"``; a dict for ``"password"`` (an
        empty one lets nobody in, as V2Ray does)."""
        super().__init__(common)
        self.password = accounts is not None
        self.accounts = accounts or {}
        self.udp = udp
        self.ip = ip
        #: Live UDP associations by client IP address, oldest first.
        self.associations: dict[Host, list[FlowGroup]] = {}
        # A listener on one IP address (not transparent) accepts every connection on that
        # address and port: its local address is asked of the first connection only.
        host = parse_host(common.listen)
        self._one_local = (
            not isinstance(host, str)
            and not host.is_unspecified
            and common.stream.sockopt.tproxy == "off"
        )
        self._local: tuple[tuple[str, int], Destination] | None = None

    def local_address(
        self, transport: asyncio.BaseTransport
    ) -> tuple[tuple[str, int], Destination]:
        """A connection's local address (what the SOCKS reply names), also as a TCP
        destination."""
        known = self._local
        if known is not None:
            return known
        local = sockname(transport) or (self.listen, self.port)
        found = (local, Destination(Network.TCP, parse_host(local[0]), local[1]))
        if self._one_local:
            self._local = found
        return found

    @property
    def udp_port(self) -> int:
        return self.udp_server.port if self.udp_server is not None else 0

    async def start(self) -> None:
        await super().start()
        if self.udp:
            await self.start_udp(
                UdpServer(
                    self._classify,
                    self.open_flow,
                    self.udp_session,
                    closed=self.dispatcher.stats.closed,
                    encode_reply=encode_udp_datagram,
                    group_for=self._association_of,
                    require_group=self.password,
                    name=self.describe(),
                )
            )

    # -- UDP associations -------------------------------------------------------------------
    def associate(self, end: SocksInboundEnd) -> FlowGroup | None:
        """A UDP ASSOCIATE succeeded on ``end``: the flows its client starts from now on
        belong to it."""
        if end.source is None:
            return None
        group = FlowGroup(end.session)
        self.associations.setdefault(end.source.host, []).append(group)
        return group

    def dissociate(self, end: SocksInboundEnd, group: FlowGroup) -> None:
        if end.source is not None:
            groups = self.associations.get(end.source.host, [])
            if group in groups:
                groups.remove(group)
            if not groups:
                self.associations.pop(end.source.host, None)
        group.close()

    def _association_of(self, addr: tuple[str, int]) -> FlowGroup | None:
        groups = self.associations.get(parse_host(addr[0]))
        return groups[-1] if groups else None

    @staticmethod
    def _classify(data: bytes, addr: tuple[str, int]) -> tuple[Destination, bytes, bytes]:
        dest, payload = decode_udp_datagram(data)
        # Replies carry the destination exactly as the client wrote it (V2Ray does so too).
        header_len = len(data) - len(payload)
        return dest, bytes(payload), bytes(data[:header_len])


def build_inbound(ctx: InboundContext, settings: SocksInboundSettings) -> SocksInbound:
    return SocksInbound(
        ctx.common(settings.user_level),
        accounts=dict(settings.accounts) if settings.auth == "password" else None,
        udp=settings.udp,
        ip=settings.ip,
    )
