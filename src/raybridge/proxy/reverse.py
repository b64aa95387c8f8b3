"""V2Ray's reverse proxy: bridges and portals (``app/reverse``; PROTOCOLS.md section 3).

A **bridge** (node A, inside) dials tunnels out: each is a link to ``domain:0`` dispatched
with the bridge's tag as inbound tag, so routing sends it (over VMess) to the portal. On a
tunnel the bridge is the Mux.Cool *server*: the portal opens sessions, the bridge
dispatches each with its tag (routing sends them to e.g. freedom). Session 1 is the control
session (``reverse.internal.v2ray.com``), on which the portal sends ``Control`` heartbeats.

A **portal** (node B, public) is an outbound with its own tag. A link routed to it whose
destination is ``domain`` is a tunnel from a bridge: the portal becomes its Mux.Cool
*client*, opens the control session and sends a heartbeat every 2 s. Any other link routed
to it becomes a new session on the tunnel with the fewest open sessions.

Where raybridge differs from V2Ray 4.34, on purpose:

* a tunnel that closes is dropped from the portal's list at once (V2Ray keeps choosing a
  closed tunnel for up to 30 s, PROTOCOLS.md 3.2 and 8.12);
* a bridge redials as soon as a tunnel closes, with capped, jittered backoff (V2Ray waits
  for its next 2-s tick, and ~2-4 s per attempt while the portal is down);
* a bridge that hears no heartbeat for :data:`HEARTBEAT_TIMEOUT` seconds drops the tunnel
  and dials a new one (V2Ray never checks, 8.13);
* the bridge sends a Mux.Cool KeepAlive frame on every tunnel every 2 s (V2Ray ignores
  them); a portal that has seen them on a tunnel stops choosing it after
  :data:`SUSPECT_AFTER` seconds of silence and drops it after :data:`PEER_TIMEOUT`, so a
  bridge lost without a FIN/RST (a cut link, an address change) is replaced, not kept;
* a client that arrives while a portal has no tunnel waits up to :data:`TUNNEL_WAIT`
  seconds for one instead of failing at once;
* a drained tunnel is closed as soon as its last session ends (V2Ray: at its next 16-s
  check).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable

from raybridge.address import Destination, Network
from raybridge.dispatcher import Dispatcher
from raybridge.link import ClosedEnd, DeferredEnd, End, Outbound, Session, join
from raybridge.protocols.mux import Role, SessionOpened
from raybridge.protocols.reverse import (
    CONTROL_TARGET,
    ControlError,
    ControlState,
    decode_control,
    heartbeat,
    is_control_target,
)
from raybridge.transport.mux import FlowLimits, MuxWorker

logger = logging.getLogger("raybridge.reverse")

#: Bridge: seconds between checks of its tunnels (V2Ray's monitor period).
MONITOR_INTERVAL = 2.0
#: Bridge: open another tunnel when open sessions per active tunnel exceed this.
SESSIONS_PER_TUNNEL = 16
#: Bridge: at most this many tunnels are opened because the others' links are full.
MAX_TUNNELS = 8
#: Bridge: drop an active tunnel that has not heard a Control message for this long.
HEARTBEAT_TIMEOUT = 7.0
#: Bridge: redial backoff after a tunnel fails: base * 2**n, capped, with jitter.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.75
#: Portal: seconds between heartbeats on each tunnel.
HEARTBEAT_INTERVAL = 2.0
#: Portal: drain a tunnel once it has opened more sessions than this in total.
DRAIN_AFTER = 256
#: Portal: how long a client waits for a tunnel when there is none.
TUNNEL_WAIT = 4.0
#: Portal: at most this many clients wait for a tunnel at once (each holds at most
#: link.PENDING_LIMIT bytes meanwhile); more are refused at once.
MAX_WAITING = 256
#: Bridge: seconds between KeepAlive frames on each tunnel (sent at each monitor check).
KEEPALIVE_INTERVAL = MONITOR_INTERVAL
#: Portal: a tunnel that sends KeepAlives and has been silent this long is not chosen...
SUSPECT_AFTER = 4.5
#: ...and this long, is dropped.
PEER_TIMEOUT = 7.0


# -- bridge --------------------------------------------------------------------------------


class BridgeTunnel:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.worker = MuxWorker(
            Role.SERVER,
            on_open=self._on_open,
            max_sessions=bridge.max_sessions,
            name=f"bridge [{bridge.tag}]",
            limits=bridge.limits,
        )
        self.state = ControlState.ACTIVE
        self.session: Session | None = None
        self.opened = time.monotonic()
        self.last_control = self.opened
        self.heard = False  # any Control message yet (proves the tunnel reaches a portal)

    @property
    def active(self) -> bool:
        return self.state is ControlState.ACTIVE and not self.worker.closed

    def _on_open(self, worker: MuxWorker, event: SessionOpened) -> None:
        if is_control_target(event.target):
            end = worker.accept(event, Session(inbound_tag=self.bridge.tag))
            join(end, ControlReader(self))
            if event.data:
                end.deliver(event.data)
            return
        session = Session(inbound_tag=self.bridge.tag, muxed=True)
        end = worker.accept(event, session)
        self.bridge.dispatcher.dispatch(session, event.target, end)
        if event.data:
            end.deliver(event.data)

    def control(self, data: bytes) -> None:
        try:
            state = decode_control(data)
        except ControlError as exc:
            logger.info("bridge [%s]: bad control message: %s", self.bridge.tag, exc)
            return
        self.last_control = time.monotonic()
        if not self.heard:
            self.heard = True
            self.bridge.tunnel_confirmed(self)
        if state is not self.state:
            logger.info("bridge [%s]: tunnel state %s", self.bridge.tag, state.name)
            self.state = state
            if state is ControlState.DRAIN:
                self.bridge.wake()


class ControlReader(End):
    """The bridge's end of the control session: every datagram is one Control message."""

    def __init__(self, tunnel: BridgeTunnel) -> None:
        self.peer: End | None = None
        self.tunnel = tunnel

    def write(self, data: bytes) -> None:
        self.tunnel.control(data)

    def write_eof(self) -> None:
        # The portal ended the control session (it does so after DRAIN): finish ours too.
        if self.peer is not None:
            self.peer.write_eof()

    def abort(self, exc: BaseException | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Bridge:
    """Keeps tunnels open from this node to a portal (see the module docstring)."""

    def __init__(
        self,
        tag: str,
        domain: str,
        dispatcher: Dispatcher,
        *,
        rng: random.Random | None = None,
        max_sessions: int = 0,
        limits: FlowLimits | None = None,
    ) -> None:
        self.tag = tag
        self.domain = domain
        self.dispatcher = dispatcher
        self.limits = limits  # what a tunnel's sessions may buffer (transport/mux.py)
        self.max_sessions = max_sessions  # per tunnel, against a misbehaving portal
        self.tunnels: list[BridgeTunnel] = []  # active tunnels, and new ones not yet drained
        self.retired: list[BridgeTunnel] = []  # drained: still open, serving their sessions
        self.failures = 0
        self.dials = 0
        self._rng = rng or random.Random()
        self._timer: asyncio.TimerHandle | None = None
        self._wake: asyncio.TimerHandle | asyncio.Handle | None = None
        self._wake_due = 0.0
        self._running = False

    async def start(self) -> None:
        self._running = True
        self._tick()

    async def close(self) -> None:
        self._running = False
        for handle in (self._timer, self._wake):
            if handle is not None:
                handle.cancel()
        self._timer = self._wake = None
        for tunnel in [*self.tunnels, *self.retired]:
            tunnel.worker.close()
        self.tunnels.clear()
        self.retired.clear()

    # -- the monitor ------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if not self._running:
            return
        self.check()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(MONITOR_INTERVAL, self._tick)

    def check(self) -> None:
        now = time.monotonic()
        for tunnel in [*self.tunnels, *self.retired]:
            tunnel.worker.send_keepalive()  # lets a raybridge portal tell we are alive
        for tunnel in list(self.tunnels):
            worker = tunnel.worker
            if tunnel.active and now - tunnel.last_control > HEARTBEAT_TIMEOUT:
                logger.warning(
                    "bridge [%s]: no heartbeat for %.0fs: dropping the tunnel",
                    self.tag,
                    now - tunnel.last_control,
                )
                self.dispatcher.stats.tunnel_drops[("bridge", self.tag, "no heartbeat")] += 1
                if worker.peer is not None:
                    worker.peer.abort(TimeoutError("no heartbeat"))
                worker.abort(TimeoutError("no heartbeat"))
        # Inactive tunnels leave the list (a drained one stays open until the portal
        # closes it, serving its sessions).
        self.retired += [t for t in self.tunnels if not t.active and not t.worker.closed]
        self.tunnels = [t for t in self.tunnels if t.active]
        active = len(self.tunnels)
        sessions = sum(t.worker.session_count for t in self.tunnels)
        if active == 0 or sessions // active > SESSIONS_PER_TUNNEL:
            self.dial()
        elif active < MAX_TUNNELS and all(t.worker.out_paused for t in self.tunnels):
            # Every tunnel's link is full: another TCP connection gets its own share.
            self.dial()

    def dial(self) -> None:
        tunnel = BridgeTunnel(self)
        worker = tunnel.worker
        worker.stats = self.dispatcher.stats
        worker.close_callbacks.append(lambda _w: self._closed(tunnel))
        self.tunnels.append(tunnel)
        self.dials += 1
        if self.dials > 1:
            self.dispatcher.stats.reconnects[self.tag] += 1
        session = Session(inbound_tag=self.tag)
        tunnel.session = session
        self.dispatcher.dispatch(session, Destination(Network.TCP, self.domain, 0), worker)
        # A KeepAlive right away (it rides with the VMess request header): the portal knows
        # from the start that this bridge sends them, so it can tell when they stop.
        worker.send_keepalive()

    def tunnel_confirmed(self, tunnel: BridgeTunnel) -> None:
        if self.failures:
            logger.warning("bridge [%s]: tunnel to the portal is up again", self.tag)
        else:
            logger.info("bridge [%s]: tunnel to the portal is up", self.tag)
        self.failures = 0

    def _closed(self, tunnel: BridgeTunnel) -> None:
        if tunnel.session is not None:
            self.dispatcher.stats.closed(tunnel.session)
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
        if tunnel in self.retired:
            self.retired.remove(tunnel)
        if not self._running:
            return
        if not tunnel.heard and not any(t.heard and t.active for t in self.tunnels):
            # A dial that failed while another tunnel is up says nothing about the portal
            # being unreachable, which is what the backoff is for.
            self.failures += 1
        if any(t.active for t in self.tunnels):
            return  # the monitor tops up if the remaining ones are busy
        self.wake(self._backoff())

    def _backoff(self) -> float:
        if self.failures == 0:
            return 0.0
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.failures - 1))
        return delay * self._rng.uniform(0.75, 1.25)

    def wake(self, delay: float = 0.0) -> None:
        """Run the monitor soon (after ``delay`` seconds) instead of at the next tick; an
        earlier request replaces a later one that is still pending (a DRAIN during a
        redial backoff is acted on at once)."""
        if not self._running:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._wake is not None:
            if self._wake_due <= due:
                return
            self._wake.cancel()

        def run() -> None:
            self._wake = None
            if self._running:
                self.check()

        self._wake_due = due
        self._wake = loop.call_later(delay, run) if delay > 0 else loop.call_soon(run)


# -- portal --------------------------------------------------------------------------------


class PortalTunnel:
    def __init__(self, portal: Portal, worker: MuxWorker) -> None:
        self.portal = portal
        self.worker = worker
        self.draining = False
        self.opened = time.monotonic()
        self.control_sid = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Open the control session with the first heartbeat in its New frame."""
        codec = self.worker.codec
        self.control_sid = codec.open_session(CONTROL_TARGET, heartbeat(os.urandom))
        self.worker.flush()
        self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.portal.heartbeat_interval, self._heartbeat)

    @property
    def keepalives(self) -> bool:
        """The bridge sends KeepAlives (a raybridge bridge), so silence means trouble."""
        return self.worker.keepalives_received > 0

    def silent_for(self) -> float:
        if not self.keepalives:
            return 0.0
        return self.worker.silent_for(asyncio.get_running_loop().time())

    def _heartbeat(self) -> None:
        self._timer = None
        worker = self.worker
        if worker.closed:
            return
        silent = self.silent_for()
        if silent > self.portal.peer_timeout:
            logger.warning(
                "portal [%s]: nothing from a bridge for %.0fs: dropping its tunnel",
                self.portal.tag,
                silent,
            )
            if worker.peer is not None:
                worker.peer.abort(TimeoutError("bridge silent"))
            worker.abort(TimeoutError("bridge silent"))
            return
        if self.draining:
            self._schedule()  # no more heartbeats, but keep watching the bridge
            return
        codec = worker.codec
        if codec.allocated_total > self.portal.drain_after:
            self.drain()
            return
        message = heartbeat(os.urandom)
        if message and codec.is_open(self.control_sid):
            codec.send_data(self.control_sid, message)
            worker.flush()
        self._schedule()

    def drain(self) -> None:
        """Tell the bridge to open no new work here; close once the sessions are done."""
        self.draining = True
        worker = self.worker
        codec = worker.codec
        if codec.is_open(self.control_sid):
            codec.send_data(self.control_sid, heartbeat(os.urandom, drain=True))
            codec.end_session(self.control_sid)
            worker.flush()
        logger.info(
            "portal [%s]: draining a tunnel after %d sessions",
            self.portal.tag,
            codec.allocated_total,
        )
        self.maybe_close()
        if not self.worker.closed and self._timer is None:
            self._schedule()

    def maybe_close(self) -> None:
        if self.draining and self.worker.session_count == 0 and not self.worker.closed:
            self.worker.close()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Portal(Outbound):
    """Receives bridges' tunnels and sends client links through them."""

    def __init__(
        self,
        tag: str,
        domain: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        drain_after: int = DRAIN_AFTER,
        tunnel_wait: float = TUNNEL_WAIT,
        peer_timeout: float = PEER_TIMEOUT,
        suspect_after: float = SUSPECT_AFTER,
        limits: FlowLimits | None = None,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.tag = tag
        self.domain = domain
        self.limits = limits
        self.heartbeat_interval = heartbeat_interval
        self.peer_timeout = peer_timeout
        self.suspect_after = suspect_after
        self.drain_after = drain_after
        self.tunnel_wait = tunnel_wait
        self.max_waiting = max_waiting
        self.refused_waiting = 0  # clients refused because too many were waiting
        self.tunnels: list[PortalTunnel] = []
        self._waiting: list[tuple[Session, Destination, DeferredEnd, asyncio.TimerHandle]] = []
        self.listeners: list[Callable[[Portal], None]] = []  # tunnel list changed

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        if dest.host == self.domain:
            return self._adopt(peer)
        tunnel = self.pick()
        if tunnel is not None:
            return tunnel.worker.open_session(session, dest, peer)
        if self.tunnel_wait <= 0:
            return self._refuse(peer, dest)
        if len(self._waiting) >= self.max_waiting:
            self.refused_waiting += 1
            if self.refused_waiting == 1 or self.refused_waiting % 1000 == 0:
                logger.warning(
                    "portal [%s]: %d clients already wait for a tunnel: refused %d",
                    self.tag,
                    len(self._waiting),
                    self.refused_waiting,
                )
            end = ClosedEnd(ConnectionRefusedError(f"portal {self.tag}: too many waiting"))
            join(peer, end)
            end.start()
            return end
        deferred = DeferredEnd()
        join(peer, deferred)
        loop = asyncio.get_running_loop()
        entry: tuple[Session, Destination, DeferredEnd, asyncio.TimerHandle]
        handle = loop.call_later(self.tunnel_wait, lambda: self._give_up(entry))
        entry = (session, dest, deferred, handle)
        self._waiting.append(entry)
        return deferred

    def _refuse(self, peer: End, dest: Destination) -> End:
        logger.info("portal [%s]: no tunnel for %s", self.tag, dest)
        end = ClosedEnd(ConnectionRefusedError(f"portal {self.tag}: no tunnel"))
        join(peer, end)
        end.start()
        return end

    def _give_up(
        self, entry: tuple[Session, Destination, DeferredEnd, asyncio.TimerHandle]
    ) -> None:
        if entry in self._waiting:
            self._waiting.remove(entry)
            logger.info(
                "portal [%s]: no tunnel within %ss for %s", self.tag, self.tunnel_wait, entry[1]
            )
            entry[2].fail(ConnectionRefusedError(f"portal {self.tag}: no tunnel"))

    def pick(self) -> PortalTunnel | None:
        """The live, non-draining tunnel with the fewest open sessions whose link is not
        full (else a full one, else a draining one)."""
        best: PortalTunnel | None = None
        fallback: PortalTunnel | None = None
        best_count = fallback_count = 0
        for tunnel in self.tunnels:
            if tunnel.worker.closed or tunnel.silent_for() > self.suspect_after:
                continue
            count = tunnel.worker.session_count
            if tunnel.worker.out_paused:
                count += 1 << 20  # a full link is chosen only when all are full
            if tunnel.draining:
                if fallback is None or count < fallback_count:
                    fallback, fallback_count = tunnel, count
            elif best is None or count < best_count:
                best, best_count = tunnel, count
        return best or fallback

    def _adopt(self, peer: End) -> End:
        worker = MuxWorker(Role.CLIENT, name=f"portal [{self.tag}]", limits=self.limits)
        join(peer, worker)
        tunnel = PortalTunnel(self, worker)
        worker.close_callbacks.append(lambda _w: self._closed(tunnel))
        worker.session_callbacks.append(lambda _w: tunnel.maybe_close())
        # A tunnel heard again after a silence can take the clients waiting meanwhile.
        worker.keepalive_callbacks.append(lambda _w: self._waiting and self._serve_waiting())
        self.tunnels.append(tunnel)
        tunnel.start()
        logger.info("portal [%s]: tunnel up (%d now)", self.tag, len(self.tunnels))
        self._serve_waiting()
        for listener in self.listeners:
            listener(self)
        return worker

    def _serve_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for entry in waiting:
            session, dest, deferred, handle = entry
            tunnel = None if deferred.aborted else self.pick()
            if tunnel is None and not deferred.aborted:
                self._waiting.append(entry)
                continue
            handle.cancel()
            if tunnel is None or deferred.peer is None:
                continue
            end = tunnel.worker.open_session(session, dest, deferred.peer)
            deferred.bind(end)

    def _closed(self, tunnel: PortalTunnel) -> None:
        tunnel.stop()
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
            logger.info("portal [%s]: tunnel closed (%d left)", self.tag, len(self.tunnels))
        for listener in self.listeners:
            listener(self)

    async def close(self) -> None:
        for _, _, deferred, handle in self._waiting:
            handle.cancel()
            deferred.fail(ConnectionAbortedError("shutting down"))
        self._waiting.clear()
        for tunnel in list(self.tunnels):
            tunnel.stop()
            tunnel.worker.close()
        self.tunnels.clear()
