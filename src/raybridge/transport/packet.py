"""Full-cone UDP: one packet source, many destinations (XUDP, packetaddr).

A UDP link carries datagrams to one destination. XUDP sessions and packetaddr requests
(``protocols/mux.py``, ``protocols/packetaddr.py``) carry datagrams that each name their
own destination, and expect replies to name their source. A :class:`PacketFanout` turns
such a source into one ordinary UDP link per destination, dispatched like any other
request, and tags every reply with the destination it came from, as V2Ray does for a SOCKS
client talking to N destinations (``transport/udp.py``).

Bounded: at most ``max_flows`` destinations at once per source (new ones are dropped and
counted, with one log line per burst); flows end after ``idle`` seconds without traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from raybridge.address import Destination
from raybridge.dispatcher import Dispatcher
from raybridge.link import Session, abort_links
from raybridge.transport.udp import FlowEnd

logger = logging.getLogger("raybridge.transport")

#: Destinations one packet source may have open at once.
MAX_FLOWS = 256
FLOW_IDLE = 60.0

Reply = Callable[[bytes, Destination], None]


class _Flow(FlowEnd):
    """One destination of a fanout: the inbound end of its UDP link. A reply from another
    address (full-cone) goes back with that address as its source."""

    def __init__(self, fanout: PacketFanout, dest: Destination, session: Session) -> None:
        super().__init__(session, fanout.idle)
        self.fanout = fanout
        self.dest = dest

    def write(self, data: bytes) -> None:
        """A datagram back from the destination."""
        if not self.closed:
            self.session.active = True
            self.fanout.reply(data, self.dest)

    def write_to(self, data: bytes, address: Destination) -> None:
        if not self.closed:
            self.session.active = True
            self.fanout.reply(data, address)

    def forget(self) -> None:
        self.fanout.forget(self)


class PacketFanout:
    """Sends each datagram of one source down the UDP link of its destination."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        session: Session,
        reply: Reply,
        *,
        max_flows: int = MAX_FLOWS,
        idle: float = FLOW_IDLE,
    ) -> None:
        self.dispatcher = dispatcher
        self.session = session  # the source's: each flow's session is a child of it
        self.reply = reply
        self.max_flows = max_flows
        self.idle = idle
        self.flows: dict[Destination, _Flow] = {}
        self.dropped = 0
        self.closed = False

    def send(self, data: bytes, dest: Destination) -> None:
        if self.closed or not data:
            return
        flow = self.flows.get(dest)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning(
                        "UDP source %s has %d destinations open: dropped %d datagram(s)",
                        self.session.source,
                        len(self.flows),
                        self.dropped,
                    )
                return
            session = self.session.child()
            flow = _Flow(self, dest, session)
            self.flows[dest] = flow
            self.dispatcher.dispatch(session, dest, flow)  # joins the flow to its end
        if flow.peer is not None and not flow.closed:
            flow.session.active = True
            flow.peer.write(data)

    def forget(self, flow: _Flow) -> None:
        if self.flows.get(flow.dest) is flow:
            del self.flows[flow.dest]
        self.dispatcher.stats.closed(flow.session)

    def close(self) -> None:
        """The source is gone: end every flow."""
        if self.closed:
            return
        self.closed = True
        abort_links(self.flows.values())
        self.flows.clear()
