"""V2Ray's reverse proxy: bridges and portals (``app/reverse``; docs/protocols.md section 3).

A **bridge** (node A, inside) dials tunnels out: each is a link to ``domain:0`` dispatched
with the bridge's tag as inbound tag, so routing sends it (over VMess) to the portal. On a
tunnel the bridge is the Mux.Cool *server*: the portal opens sessions, the bridge
dispatches each with its tag (routing sends them to e.g. freedom). Session 1 is the control
session (``reverse.internal.v2ray.com``), on which the portal sends ``Control`` heartbeats.

A **portal** (node B, public) is an outbound with its own tag. A link routed to it whose
destination is ``domain`` is a tunnel from a bridge: the portal becomes its Mux.Cool
*client*, opens the control session and sends a heartbeat every 2 s. Any other link routed
to it becomes a new session on the tunnel with the fewest open sessions.

What to do when (which tunnel, when to dial, drain, drop or give up) is decided by the
sans-IO machines of :mod:`raybridge.protocols.reverse_policy`; this module is their asyncio
adapter: it turns :class:`~raybridge.transport.mux.MuxWorker` callbacks into policy events,
carries out the policy's events on the workers, and holds one ``call_at`` timer per bridge
or portal, reading one clock (``loop.time()``)::

    MuxWorker callbacks  --entry point(now)-->  BridgePolicy / PortalPolicy
    MuxWorker calls      <--next_event()-------  (DialTunnel, OpenSession, SendControl...)
    one loop.call_at     --handle_timer(now)-->  at get_timer()

Where raybridge differs from V2Ray 4.34, on purpose:

* a tunnel that closes is dropped from the portal's list at once (V2Ray keeps choosing a
  closed tunnel for up to 30 s, docs/protocols.md 3.2 and 8.12);
* a bridge redials as soon as a tunnel closes, with capped, jittered backoff (V2Ray waits
  for its next 2-s tick, and ~2-4 s per attempt while the portal is down);
* a bridge that hears no heartbeat for ``heartbeat_timeout`` seconds drops the tunnel and
  dials a new one (V2Ray never checks, 8.13);
* the bridge sends a Mux.Cool KeepAlive frame on every tunnel every 2 s (V2Ray ignores
  them); a portal that has seen them on a tunnel stops choosing it after ``suspect_after``
  seconds of silence and drops it after ``peer_timeout``, so a bridge lost without a
  FIN/RST (a cut link, an address change) is replaced, not kept;
* a client that arrives while a portal has no tunnel waits up to ``tunnel_wait`` seconds
  for one instead of failing at once;
* a drained tunnel is closed as soon as its last session ends (V2Ray: at its next 16-s
  check).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from raybridge.address import Destination, Network
from raybridge.dispatcher import Dispatcher
from raybridge.driver import PolicyDriver
from raybridge.link import ClosedEnd, DeferredEnd, End, Outbound, Session, UnpacedEnd, join
from raybridge.protocols.mux import Role, SessionOpened
from raybridge.protocols.reverse import (
    CONTROL_TARGET,
    ControlError,
    ControlState,
    decode_control,
    encode_control,
    is_control_target,
)
from raybridge.protocols.reverse_policy import (
    BACKOFF_CAP,
    BridgeEvent,
    BridgePolicy,
    BridgeTunnelState,
    CloseTunnel,
    DialTunnel,
    DropTunnel,
    OpenControl,
    OpenSession,
    PortalEvent,
    PortalPolicy,
    PortalTunnelState,
    Refusal,
    RefuseClient,
    SendControl,
    SendDrain,
    SendKeepAlive,
    Timings,
    TunnelConfirmed,
    TunnelStateChanged,
    Uniform,
)
from raybridge.transport.mux import FlowLimits, MuxWorker

# The timings and their defaults live with the policy (tests/test_faults.py reads
# BACKOFF_CAP from here).
__all__ = [
    "BACKOFF_CAP",
    "Bridge",
    "BridgeTunnel",
    "BridgeTunnelStatus",
    "Portal",
    "PortalTunnel",
    "PortalTunnelStatus",
    "Timings",
]

logger = logging.getLogger("raybridge.reverse")


def _now() -> float:
    """The one clock: the running loop's (the timer's ``call_at`` is on it too)."""
    return asyncio.get_running_loop().time()


# -- bridge --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeTunnelStatus:
    """One open tunnel of a bridge, for the status server."""

    uptime: float
    sessions: int  # without the control session
    state: str  # "active" or "drain"
    connected: bool  # a portal has been heard on it


class BridgeTunnel:
    """A tunnel the bridge dialled: its mux worker (the server role) and the policy's
    record of it."""

    def __init__(self, bridge: Bridge, record: BridgeTunnelState) -> None:
        self.bridge = bridge
        self.record = record
        self.worker = MuxWorker(
            Role.SERVER,
            on_open=self._on_open,
            max_sessions=bridge.max_sessions,
            name=f"bridge [{bridge.tag}]",
            limits=bridge.limits,
        )
        self.session: Session | None = None
        #: The control session's end (the portal opened it), to send our DRAIN on.
        self.control_end: End | None = None

    @property
    def state(self) -> ControlState:
        return self.record.state

    @property
    def heard(self) -> bool:
        """Any Control message yet (proves the tunnel reaches a portal)."""
        return self.record.heard

    @property
    def active(self) -> bool:
        return self.record.active

    @property
    def last_control(self) -> float:
        return self.record.last_control

    def _on_open(self, worker: MuxWorker, event: SessionOpened) -> None:
        control = is_control_target(event.target)  # never dispatched
        session = Session(inbound_tag=self.bridge.tag, muxed=not control)
        end = worker.accept(event, session)
        self.bridge._sessions_changed(self)
        if control:
            join(end, ControlReader(self))
            self.control_end = end
            if self.bridge.draining:  # the portal opened it after our DRAIN went nowhere
                end.write(encode_control(ControlState.DRAIN, self.bridge.urandom(8)))
            if not event.data:
                # The portal's first heartbeat drew no padding: an empty Control message
                # (ACTIVE) that the New frame still carries. The session's opening is what
                # proves the tunnel reaches a portal; waiting for the next heartbeat would
                # leave it unconfirmed (and its dial counted a failure) for an interval.
                self.control(b"")
        else:
            self.bridge.dispatcher.dispatch(session, event.target, end)
        if event.data:
            end.deliver(event.data)

    def control(self, data: bytes) -> None:
        try:
            state = decode_control(data)
        except ControlError as exc:
            logger.info("bridge [%s]: bad control message: %s", self.bridge.tag, exc)
            return
        self.bridge._control(self, state)


class ControlReader(UnpacedEnd):
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


class Bridge:
    """Keeps tunnels open from this node to a portal (see the module docstring)."""

    def __init__(
        self,
        tag: str,
        domain: str,
        dispatcher: Dispatcher,
        *,
        rng: Uniform | None = None,
        max_sessions: int = 0,
        limits: FlowLimits | None = None,
        timings: Timings | None = None,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.tag = tag
        self.domain = domain
        self.dispatcher = dispatcher
        self.urandom = urandom  # the DRAIN message's padding
        self.limits = limits  # what a tunnel's sessions may buffer (transport/mux.py)
        self.max_sessions = max_sessions  # per tunnel, against a misbehaving portal
        self.timings = timings or Timings()
        if max_sessions and not self.timings.max_sessions:
            self.timings = replace(self.timings, max_sessions=max_sessions)
        self.policy = BridgePolicy(self.timings, rng=rng or random.SystemRandom())
        self._tunnels: dict[int, BridgeTunnel] = {}  # every open one, by policy id
        self._driver = PolicyDriver(self.policy, self._handle)

    @property
    def tunnels(self) -> list[BridgeTunnel]:
        """Active tunnels, and new ones not yet drained."""
        return self._of(self.policy.tunnels)

    @property
    def retired(self) -> list[BridgeTunnel]:
        """Drained tunnels: still open, serving their sessions."""
        return self._of(self.policy.retired)

    @property
    def failures(self) -> int:
        return self.policy.failures

    @property
    def dials(self) -> int:
        return self.policy.dials

    def _of(self, records: list[BridgeTunnelState]) -> list[BridgeTunnel]:
        tunnels = self._tunnels
        return [tunnels[r.id] for r in records if r.id in tunnels]

    def tunnel_status(self) -> list[BridgeTunnelStatus]:
        """The open tunnels (drained ones included), for the status server."""
        now = _now()
        return [
            BridgeTunnelStatus(
                uptime=now - t.record.opened,
                sessions=max(0, t.worker.session_count - 1),
                state=t.state.name.lower(),
                connected=t.heard,
            )
            for t in [*self.tunnels, *self.retired]
            if not t.worker.closed
        ]

    # -- entry points --------------------------------------------------------------------
    async def start(self) -> None:
        self.policy.start(_now())
        self._driver.run()

    async def close(self) -> None:
        self.policy.close(_now())
        self._driver.run()

    def check(self) -> None:
        """Run the monitor now (as its tick does)."""
        self.policy.check(_now())
        self._driver.run()

    def dial(self) -> None:
        """Dial one more tunnel now."""
        self.policy.dial(_now())
        self._driver.run()

    def wake(self, delay: float = 0.0) -> None:
        """Run the monitor ``delay`` seconds from now (an earlier request wins)."""
        self.policy.wake(_now(), delay)
        self._driver.run()

    def drain(self) -> None:
        """Stop: tell the portal DRAIN on every tunnel, dial no more, close each tunnel
        once its sessions have ended (see ``BridgePolicy.drain``)."""
        if not self.policy.draining:
            logger.warning("bridge [%s]: draining", self.tag)
        self.policy.drain(_now())
        self._driver.run()

    @property
    def draining(self) -> bool:
        return self.policy.draining

    @property
    def drained(self) -> bool:
        """Draining, and no tunnel is left open."""
        return self.policy.drained

    def _control(self, tunnel: BridgeTunnel, state: ControlState) -> None:
        self.policy.control_received(_now(), tunnel.record.id, state)
        self._driver.run()

    def _sessions_changed(self, tunnel: BridgeTunnel) -> None:
        self.policy.sessions_changed(_now(), tunnel.record.id, tunnel.worker.session_count)
        self._driver.run()

    def _paused(self, tunnel: BridgeTunnel) -> None:
        self.policy.write_paused(_now(), tunnel.record.id, tunnel.worker.out_paused)
        self._driver.run()

    def _closed(self, tunnel: BridgeTunnel) -> None:
        if tunnel.session is not None:
            self.dispatcher.stats.closed(tunnel.session)
        self._tunnels.pop(tunnel.record.id, None)
        self.policy.tunnel_closed(_now(), tunnel.record.id)
        self._driver.run()

    # -- the policy's events ---------------------------------------------------------------
    def _handle(self, event: BridgeEvent) -> None:
        if isinstance(event, DialTunnel):
            self._dial(event)
            return
        tunnel = self._tunnels.get(event.tunnel)
        if tunnel is None:
            return  # closed meanwhile
        worker = tunnel.worker
        if isinstance(event, SendKeepAlive):
            worker.send_keepalive()  # lets a raybridge portal tell we are alive
        elif isinstance(event, SendDrain):
            end = tunnel.control_end
            if end is not None and not worker.closed:
                end.write(encode_control(ControlState.DRAIN, self.urandom(8)))
        elif isinstance(event, DropTunnel):
            logger.warning(
                "bridge [%s]: no heartbeat for %.0fs: dropping the tunnel", self.tag, event.silence
            )
            self.dispatcher.stats.tunnel_drops[("bridge", self.tag, event.reason)] += 1
            if worker.peer is not None:
                worker.peer.abort(TimeoutError(event.reason))
            worker.abort(TimeoutError(event.reason))
        elif isinstance(event, CloseTunnel):
            worker.close()
        elif isinstance(event, TunnelConfirmed):
            if event.failures:
                logger.warning("bridge [%s]: tunnel to the portal is up again", self.tag)
            else:
                logger.info("bridge [%s]: tunnel to the portal is up", self.tag)
        elif isinstance(event, TunnelStateChanged):
            logger.info("bridge [%s]: tunnel state %s", self.tag, event.state.name)

    def _dial(self, event: DialTunnel) -> None:
        record = self.policy.tunnel(event.tunnel)
        if record is None:
            return
        tunnel = BridgeTunnel(self, record)
        worker = tunnel.worker
        worker.stats = self.dispatcher.stats
        worker.close_callbacks.append(lambda _w: self._closed(tunnel))
        worker.session_callbacks.append(lambda _w: self._sessions_changed(tunnel))
        worker.pause_callbacks.append(lambda _w: self._paused(tunnel))
        self._tunnels[record.id] = tunnel
        if event.redial:
            self.dispatcher.stats.reconnects[self.tag] += 1
        session = Session(inbound_tag=self.tag)
        tunnel.session = session
        self.dispatcher.dispatch(session, Destination(Network.TCP, self.domain, 0), worker)


# -- portal --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PortalTunnelStatus:
    """One tunnel of a portal, for the status server."""

    uptime: float
    sessions: int  # open now, without the control session
    sessions_total: int  # ever opened, without the control session
    draining: bool
    bridge_draining: bool  # the bridge said DRAIN (it is stopping)
    source: str  # the bridge's address as the carrier saw it, if known
    silent: float  # seconds since the bridge last sent anything
    keepalives: bool  # the bridge sends KeepAlives (its silence counts)


class PortalTunnel:
    """A bridge's tunnel at the portal: its mux worker (the client role) and the policy's
    record of it."""

    def __init__(self, portal: Portal, worker: MuxWorker, record: PortalTunnelState) -> None:
        self.portal = portal
        self.worker = worker
        self.record = record
        self.control_sid = 0

    @property
    def draining(self) -> bool:
        return self.record.draining

    @property
    def keepalives(self) -> bool:
        """The bridge sends KeepAlives (a raybridge bridge), so silence means trouble."""
        return self.record.keepalives


class _WaitingEnd(DeferredEnd):
    """A client waiting for a tunnel; tells the portal when it goes away."""

    def __init__(self, portal: Portal, client: int) -> None:
        super().__init__()
        self._portal = portal
        self._client = client

    def abort(self, exc: BaseException | None = None) -> None:
        super().abort(exc)
        self._portal._client_left(self._client)


@dataclass(eq=False)
class _Client:
    session: Session
    dest: Destination
    peer: End
    end: End | None = None  # what connect() returns, once the policy has decided
    waiting: _WaitingEnd | None = None


class Portal(Outbound):
    """Receives bridges' tunnels and sends client links through them."""

    def __init__(
        self,
        tag: str,
        domain: str,
        *,
        timings: Timings | None = None,
        heartbeat_interval: float | None = None,
        drain_after: int | None = None,
        tunnel_wait: float | None = None,
        peer_timeout: float | None = None,
        suspect_after: float | None = None,
        max_waiting: int | None = None,
        max_sessions: int | None = None,
        limits: FlowLimits | None = None,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.tag = tag
        self.domain = domain
        self.limits = limits
        given = {
            "heartbeat_interval": heartbeat_interval,
            "drain_after": drain_after,
            "tunnel_wait": tunnel_wait,
            "peer_timeout": peer_timeout,
            "suspect_after": suspect_after,
            "max_waiting": max_waiting,
            "max_sessions": max_sessions,
        }
        overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self.timings = replace(timings or Timings(), **overrides)
        self.policy = PortalPolicy(self.timings, urandom=urandom)
        self.tunnels: list[PortalTunnel] = []
        self.listeners: list[Callable[[Portal], None]] = []  # tunnel list changed
        self._by_id: dict[int, PortalTunnel] = {}
        self._clients: dict[int, _Client] = {}  # waiting, or being decided on
        self._driver = PolicyDriver(self.policy, self._handle)

    @property
    def waiting(self) -> int:
        """Clients waiting for a tunnel now."""
        return self.policy.waiting

    @property
    def refused_waiting(self) -> int:
        """Clients refused because too many were waiting."""
        return self.policy.refused_waiting

    def tunnel_status(self) -> list[PortalTunnelStatus]:
        """The tunnels, for the status server."""
        now = _now()
        out = []
        for tunnel in self.tunnels:
            worker = tunnel.worker
            source = getattr(getattr(worker.peer, "session", None), "source", None)
            out.append(
                PortalTunnelStatus(
                    uptime=now - tunnel.record.opened,
                    sessions=max(0, worker.session_count - 1),
                    sessions_total=max(0, worker.codec.allocated_total - 1),
                    draining=tunnel.draining,
                    bridge_draining=tunnel.record.bridge_draining,
                    source=f"{source.host}:{source.port}" if source else "",
                    silent=max(0.0, now - tunnel.record.last_heard),
                    keepalives=tunnel.keepalives,
                )
            )
        return out

    def pick(self) -> PortalTunnel | None:
        """The tunnel a client arriving now would get."""
        tunnel = self.policy.pick(_now())
        return None if tunnel is None else self._by_id.get(tunnel)

    # -- entry points --------------------------------------------------------------------
    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        if type(dest.host) is str and dest.host == self.domain:  # (IPv4Address.__eq__ is slow)
            return self._adopt(peer)
        client = _Client(session, dest, peer)
        cid = self.policy.client_arrived(_now())
        self._clients[cid] = client
        self._driver.run()  # OpenSession or RefuseClient at once, or it waits
        if client.end is not None:
            return client.end
        waiting = client.waiting = _WaitingEnd(self, cid)
        join(peer, waiting)
        return waiting

    def _adopt(self, peer: End) -> End:
        worker = MuxWorker(Role.CLIENT, name=f"portal [{self.tag}]", limits=self.limits)
        join(peer, worker)
        policy = self.policy
        record = policy.tunnel(policy.tunnel_arrived(_now()))
        assert record is not None
        tunnel = PortalTunnel(self, worker, record)
        tid = record.id
        worker.close_callbacks.append(lambda _w: self._closed(tunnel))
        worker.session_callbacks.append(lambda _w: self._sessions_changed(tunnel))
        worker.keepalive_callbacks.append(lambda _w: self._keepalive(tunnel))
        # Every carrier read (the hot path): only a time to note, never an event.
        worker.receive_callbacks.append(lambda w: policy.heard(w.last_received, tid))
        worker.pause_callbacks.append(lambda _w: self._paused(tunnel))
        worker.control_callbacks.append(lambda _w, sid, data: self._control(tunnel, sid, data))
        worker.carries_tunnel = True
        self.tunnels.append(tunnel)
        self._by_id[tid] = tunnel
        logger.info("portal [%s]: tunnel up (%d now)", self.tag, len(self.tunnels))
        self._driver.run()  # the control session, and the clients that waited
        for listener in self.listeners:
            listener(self)
        return worker

    def _control(self, tunnel: PortalTunnel, sid: int, data: bytes) -> None:
        """Data from the bridge on the control session: a raybridge bridge's DRAIN."""
        if sid != tunnel.control_sid:
            return
        try:
            state = decode_control(data)
        except ControlError as exc:
            logger.info("portal [%s]: bad control message from a bridge: %s", self.tag, exc)
            return
        if state is ControlState.DRAIN and not tunnel.record.bridge_draining:
            logger.info(
                "portal [%s]: a bridge drains: its tunnel takes no new sessions (%d open)",
                self.tag,
                max(0, tunnel.worker.session_count - 1),
            )
            self.policy.bridge_drained(_now(), tunnel.record.id)
            self._driver.run()

    def _keepalive(self, tunnel: PortalTunnel) -> None:
        self.policy.keepalive(tunnel.worker.last_received, tunnel.record.id)
        self._driver.run()

    def _sessions_changed(self, tunnel: PortalTunnel) -> None:
        worker = tunnel.worker
        if not worker.closed:  # (its close is reported next)
            self.policy.sessions_changed(_now(), tunnel.record.id, worker.session_count)
            self._driver.run()

    def _paused(self, tunnel: PortalTunnel) -> None:
        self.policy.write_paused(_now(), tunnel.record.id, tunnel.worker.out_paused)
        self._driver.run()

    def _client_left(self, client: int) -> None:
        if client in self._clients:
            self.policy.client_left(_now(), client)
            self._driver.run()

    def _closed(self, tunnel: PortalTunnel) -> None:
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
            logger.info("portal [%s]: tunnel closed (%d left)", self.tag, len(self.tunnels))
        self._by_id.pop(tunnel.record.id, None)
        self.policy.tunnel_closed(_now(), tunnel.record.id)
        self._driver.run()
        for listener in self.listeners:
            listener(self)

    async def close(self) -> None:
        self.policy.close(_now())
        self._driver.run()
        self.tunnels.clear()

    # -- the policy's events ---------------------------------------------------------------
    def _handle(self, event: PortalEvent) -> None:
        if isinstance(event, OpenSession):
            self._open(event)
        elif isinstance(event, RefuseClient):
            self._refuse(event)
        elif (tunnel := self._by_id.get(event.tunnel)) is not None:
            self._tunnel_event(tunnel, event)

    def _tunnel_event(
        self, tunnel: PortalTunnel, event: OpenControl | SendControl | DropTunnel | CloseTunnel
    ) -> None:
        worker = tunnel.worker
        if isinstance(event, OpenControl):
            tunnel.control_sid = worker.open_control(CONTROL_TARGET, event.payload)
        elif isinstance(event, SendControl):
            worker.send_control(tunnel.control_sid, event.payload, end=event.end)
            if event.end and tunnel.record.bridge_draining:
                self.policy.sessions_changed(_now(), tunnel.record.id, worker.session_count)
            elif event.end:
                logger.info(
                    "portal [%s]: draining a tunnel after %d sessions",
                    self.tag,
                    worker.codec.allocated_total,
                )
                self.policy.sessions_changed(_now(), tunnel.record.id, worker.session_count)
        elif isinstance(event, DropTunnel):
            logger.warning(
                "portal [%s]: nothing from a bridge for %.0fs: dropping its tunnel",
                self.tag,
                event.silence,
            )
            if worker.peer is not None:
                worker.peer.abort(TimeoutError(event.reason))
            worker.abort(TimeoutError(event.reason))
        else:
            worker.close()

    def _open(self, event: OpenSession) -> None:
        client = self._clients.pop(event.client, None)
        tunnel = self._by_id.get(event.tunnel)
        if client is None or tunnel is None:
            return
        waiting = client.waiting
        if waiting is None:  # decided on arrival
            client.end = tunnel.worker.open_session(client.session, client.dest, client.peer)
        elif waiting.peer is not None:
            waiting.bind(tunnel.worker.open_session(client.session, client.dest, waiting.peer))

    def _refuse(self, event: RefuseClient) -> None:
        client = self._clients.pop(event.client, None)
        if client is None:
            return
        tag, reason = self.tag, event.reason
        exc: BaseException = ConnectionRefusedError(f"portal {tag}: no tunnel")
        if reason is Refusal.NO_TUNNEL:
            logger.info("portal [%s]: no tunnel for %s", tag, client.dest)
        elif reason is Refusal.TOO_MANY_WAITING:
            if event.refused == 1 or event.refused % 1000 == 0:
                logger.warning(
                    "portal [%s]: %d clients already wait for a tunnel: refused %d",
                    tag,
                    event.waiting,
                    event.refused,
                )
            exc = ConnectionRefusedError(f"portal {tag}: too many waiting")
        elif reason is Refusal.WAIT_EXPIRED:
            wait = self.timings.tunnel_wait
            logger.info("portal [%s]: no tunnel within %ss for %s", tag, wait, client.dest)
        else:
            exc = ConnectionAbortedError("shutting down")
        if client.waiting is not None:
            client.waiting.fail(exc)
            return
        end = ClosedEnd(exc)
        join(client.peer, end)
        end.start()
        client.end = end
