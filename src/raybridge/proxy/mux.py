"""Mux.Cool as V2Ray uses it outside the reverse proxy (docs/protocols.md 2.1, 2.4).

* :func:`install_mux_server`: every inbound's destination ``v1.mux.cool`` (VMess command
  0x03, or anything else that asks for it) becomes a mux server whose sessions are
  dispatched like ordinary requests of that inbound.
* :class:`MuxOutbound`: an outbound's ``"mux": {"enabled": true, "concurrency": N}``: links
  become sessions on a few long-lived connections to ``v1.mux.cool`` through the wrapped
  outbound. A worker takes a new session while it has fewer than ``concurrency`` open and
  has opened fewer than 128 in total; a worker with no sessions closes after 16 s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from raybridge.address import Destination, Network
from raybridge.dispatcher import Dispatcher
from raybridge.link import ClosedEnd, End, Outbound, PacketEnd, Session, join
from raybridge.protocols.mux import Role, SessionOpened
from raybridge.proxy.packetaddr import FanoutEnd
from raybridge.stats import Stats
from raybridge.transport.mux import MuxSessionEnd, MuxWorker

logger = logging.getLogger("raybridge.mux")

MUX_DOMAIN = "v1.mux.cool"
MUX_PORT = 9527  # what V2Ray's mux client dials (the server ignores it)
MAX_CONNECTIONS = 128  # sessions a client worker opens in total (V2Ray's hard limit)
IDLE_CLOSE = 16.0


class XudpServerEnd(FanoutEnd, PacketEnd):
    """The peer of a UDP mux session on a mux server: each datagram goes to its own
    destination (XUDP) or the session's target, through a :class:`PacketFanout`; replies
    go back on the session, naming their source (only XUDP frames carry it)."""

    def __init__(self, dispatcher: Dispatcher, end: MuxSessionEnd, target: Destination) -> None:
        super().__init__(dispatcher, end.session, end.write_to)
        self.target = target

    def write(self, data: bytes) -> None:
        self.fanout.send(data, self.target)

    def write_to(self, data: bytes, address: Destination) -> None:
        self.fanout.send(data, address)


def install_mux_server(dispatcher: Dispatcher, *, max_sessions: int = 0) -> None:
    refused = [0]

    def handler(session: Session, dest: Destination, peer: End) -> End:
        if session.muxed:
            # Mux inside mux: V2Ray does not nest, and each level would get its own
            # session cap (and Python its own stack frames).
            refused[0] += 1
            if refused[0] == 1 or refused[0] % 1000 == 0:
                logger.warning("refused a mux connection inside a mux session (%d)", refused[0])
            end = ClosedEnd(ConnectionRefusedError("nested mux"))
            join(peer, end)
            end.start()
            return end

        def on_open(worker: MuxWorker, event: SessionOpened) -> None:
            child = session.child()
            child.muxed = True
            end = worker.accept(event, child)
            if event.target.network is Network.UDP:
                # Full-cone UDP (XUDP; a 4.34 client's UDP session is the one-target case).
                child.counted = True  # each destination's flow is counted on its own
                join(end, XudpServerEnd(dispatcher, end, event.target))
            else:
                dispatcher.dispatch(child, event.target, end)  # joins ``end`` to its outbound
            if event.data:
                end.deliver(event.data)

        worker = MuxWorker(
            Role.SERVER, on_open=on_open, max_sessions=max_sessions, name="mux server"
        )
        worker.stats = dispatcher.stats
        join(peer, worker)
        return worker

    dispatcher.intercept(MUX_DOMAIN, handler)


class MuxOutbound(Outbound):
    """Wraps an outbound (VMess) so its links ride Mux.Cool sessions."""

    def __init__(self, inner: Outbound, concurrency: int = 8) -> None:
        self.inner = inner
        self.tag = inner.tag
        self.concurrency = concurrency or 8
        self.workers: list[MuxWorker] = []
        self._idle: dict[MuxWorker, asyncio.TimerHandle] = {}

    def chain(self, hop: Outbound, stats: Stats | None = None) -> bool:
        return self.inner.chain(hop, stats)

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        worker = self._pick()
        if worker is None:
            worker = MuxWorker(Role.CLIENT, name=f"mux client [{self.tag}]")
            worker.close_callbacks.append(self._closed)
            worker.session_callbacks.append(self._maybe_idle)
            self.workers.append(worker)
            carrier_session = session.child()
            self.inner.connect(  # joins the worker to its carrier
                carrier_session, Destination(Network.TCP, MUX_DOMAIN, MUX_PORT), worker
            )
        timer = self._idle.pop(worker, None)
        if timer is not None:
            timer.cancel()
        return worker.open_session(session, dest, peer)

    def bind_counters(self, uplink: Any, downlink: Any) -> None:
        super().bind_counters(uplink, downlink)
        self.inner.bind_counters(uplink, downlink)  # the carriers are what goes on the wire

    def _pick(self) -> MuxWorker | None:
        for worker in self.workers:
            codec = worker.codec
            if (
                not worker.closed
                and codec.session_count < self.concurrency
                and codec.allocated_total < MAX_CONNECTIONS
            ):
                return worker
        return None

    def _maybe_idle(self, worker: MuxWorker) -> None:
        if worker.session_count == 0 and worker not in self._idle and not worker.closed:
            loop = asyncio.get_running_loop()
            self._idle[worker] = loop.call_later(IDLE_CLOSE, self._close_idle, worker)

    def _close_idle(self, worker: MuxWorker) -> None:
        self._idle.pop(worker, None)
        if worker.session_count == 0:
            worker.close()
        elif worker.codec.allocated_total >= MAX_CONNECTIONS:
            self._maybe_idle(worker)

    def _closed(self, worker: MuxWorker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        timer = self._idle.pop(worker, None)
        if timer is not None:
            timer.cancel()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        for worker in list(self.workers):
            worker.close()
        await self.inner.close()
