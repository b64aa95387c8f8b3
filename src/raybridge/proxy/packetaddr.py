"""The server side of packetaddr: a UDP request to ``sp.packet-addr.v2fly.arpa`` whose
datagrams carry their own addresses (``protocols/packetaddr.py``) becomes one UDP link per
destination (``transport/packet.py``), whatever inbound it arrived on (VMess, or a mux
session inside one), as in v2fly v5 and sing-box."""

from __future__ import annotations

import logging

from raybridge.address import Destination
from raybridge.dispatcher import Dispatcher
from raybridge.errors import LocalProtocolError
from raybridge.link import End, Session, UnpacedEnd, join
from raybridge.protocols.packetaddr import (
    MAGIC_DOMAIN,
    PacketAddrError,
    decode_packet,
    encode_packet,
)
from raybridge.transport.packet import PacketFanout, Reply

logger = logging.getLogger("raybridge.proxy.packetaddr")


class FanoutEnd(UnpacedEnd):
    """The outbound end of a link whose datagrams each go to their own destination,
    through a :class:`PacketFanout` (packetaddr here, XUDP in ``proxy/mux.py``)."""

    def __init__(self, dispatcher: Dispatcher, session: Session, reply: Reply) -> None:
        """``reply``: called with each datagram back and its source."""
        self.peer: End | None = None
        self.fanout = PacketFanout(dispatcher, session, reply)

    def write_eof(self) -> None:
        pass  # replies may still come; the flows' idle timers end them

    def abort(self, exc: BaseException | None = None) -> None:
        self.fanout.close()


class PacketAddrEnd(FanoutEnd):
    """The outbound end of a packetaddr request: unwraps datagrams, fans them out."""

    def __init__(self, dispatcher: Dispatcher, session: Session) -> None:
        super().__init__(dispatcher, session, self._reply)
        self.bad = 0

    def write(self, data: bytes) -> None:
        try:
            dest, payload = decode_packet(data)
        except PacketAddrError as exc:
            self.bad += 1
            if self.bad == 1:
                logger.info("packetaddr from %s: %s", self.fanout.session.source, exc)
            return
        self.fanout.send(payload, dest)

    def _reply(self, data: bytes, source: Destination) -> None:
        if self.peer is None:
            return
        try:
            self.peer.write(encode_packet(source, data))
        except LocalProtocolError as exc:  # a reply too big for one VMess chunk
            logger.debug("packetaddr reply dropped: %s", exc)


def install_packetaddr_server(dispatcher: Dispatcher) -> None:
    def handler(session: Session, dest: Destination, peer: End) -> End:
        session.counted = True  # each destination's flow is counted on its own
        end = PacketAddrEnd(dispatcher, session)
        join(peer, end)
        return end

    dispatcher.intercept(MAGIC_DOMAIN, handler)
