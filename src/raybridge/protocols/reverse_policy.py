"""The reverse proxy's policy as two sans-IO state machines (aioquic's timer model).

:class:`BridgePolicy` (node A) decides when to dial a tunnel, when to give one up and how
long to wait before redialling; :class:`PortalPolicy` (node B) decides which tunnel takes a
client, when to heartbeat, drain or drop a tunnel, and how long a client may wait for one.
Neither touches a socket, a clock or a random source: every entry point takes ``now`` (the
adapter's loop time), randomness is injected (``rng.uniform`` for the redial jitter,
``urandom`` for the heartbeats' padding), and what is to be done comes out as events.

The pattern, for both machines (``proxy/reverse.py`` is the asyncio adapter)::

    tunnel = policy.tunnel_arrived(now)         # an entry point (may return a new id)
    while (event := policy.next_event()) is not None:
        carry_out(event)                        # DialTunnel, OpenSession, SendControl...
    arm_one_timer(policy.get_timer())           # None: nothing to wake up for
    ...
    policy.handle_timer(now)                    # when that timer fires; then drain again

Events are queued in order and drained with :meth:`next_event`; carrying one out may call
another entry point (a dial that fails at once reports ``tunnel_closed``): its events join
the end of the queue. Tunnels and clients are small integer ids the machines hand out; an
event for an id a machine has forgotten (a tunnel it dropped whose close is reported
afterwards) is ignored. :meth:`PortalPolicy.heard` never emits an event nor moves the timer
(it runs on every carrier read).

State tables (what each state accepts; anything else leaves the state as it is).

Bridge machine: ``start`` -> RUNNING -> ``close`` -> STOPPED (every open tunnel gets
``CloseTunnel``; later closes cost no backoff). While RUNNING the *monitor* runs at each
``monitor_interval`` tick, at a wake, or on ``check``: ``SendKeepAlive`` on every open
tunnel, ``DropTunnel`` for an ACTIVE one silent past ``heartbeat_timeout``, drained ones are
retired, then ``DialTunnel`` if no tunnel is active, if open sessions per active tunnel
exceed ``sessions_per_tunnel``, or if every active tunnel's link is full (up to
``max_tunnels``). One bridge tunnel:

===========  ==================================  ===========  =============================
state        event                               next state   emits / does
===========  ==================================  ===========  =============================
(new)        the monitor dials                   DIALLED      DialTunnel, SendKeepAlive
DIALLED      control_received(ACTIVE)            ACTIVE       TunnelConfirmed; failures = 0
DIALLED      control_received(DRAIN)             DRAIN        TunnelConfirmed,
                                                              TunnelStateChanged; wake now
ACTIVE       control_received(DRAIN)             DRAIN        TunnelStateChanged; wake now
any open     drain (bridge stops)                retired      SendDrain; CloseTunnel once it
                                                              has no session (then no dials)
DRAIN        control_received(ACTIVE)            ACTIVE       TunnelStateChanged (stays
                                                              retired: V2Ray never undrains)
DIALLED,     monitor: no Control message for     CLOSED       DropTunnel("no heartbeat"),
ACTIVE       ``heartbeat_timeout`` seconds                    then as tunnel_closed
any          tunnel_closed                       CLOSED       failures += 1 if never heard
                                                              and no other tunnel is heard
                                                              and active; if none is active:
                                                              wake after the backoff
===========  ==================================  ===========  =============================

The backoff is ``min(backoff_cap, backoff_base * 2**(failures - 1))`` times a jitter in
``1 +- backoff_jitter`` (0 s while ``failures`` is 0). A wake earlier than a pending one
replaces it, so a DRAIN is acted on at once even during a backoff wait.

Portal machine, one tunnel (*suspect*, not a state: it has sent KeepAlives and has been
silent over ``suspect_after``; it is not chosen for new clients):

===========  ==================================  ===========  =============================
state        event                               next state   emits / does
===========  ==================================  ===========  =============================
(new)        tunnel_arrived                      LIVE         OpenControl (first heartbeat);
                                                              serves waiting clients
LIVE         heard / keepalive                   LIVE         (keepalive: serves waiting
                                                              clients)
LIVE         heartbeat timer                     LIVE         SendControl(heartbeat)
LIVE         heartbeat timer, over               DRAINING     SendControl(DRAIN, end=True);
             ``drain_after`` sessions opened                  CloseTunnel if idle
LIVE         bridge_drained (the bridge's DRAIN)  DRAINING     SendControl(end=True); never
                                                              chosen again
DRAINING     sessions_changed(0)                 CLOSED       CloseTunnel
LIVE,        heartbeat timer, KeepAlives seen    CLOSED       DropTunnel("bridge silent")
DRAINING     and silent over ``peer_timeout``
any          tunnel_closed / close()             CLOSED       (close(): CloseTunnel)
===========  ==================================  ===========  =============================

A client (``client_arrived``) goes to the live, non-suspect, non-draining tunnel with the
fewest open sessions whose link is not full (else a full one, else a draining one):

===========  ==================================  ===========  =============================
state        event                               next state   emits
===========  ==================================  ===========  =============================
(new)        a tunnel can take it                OPEN         OpenSession
(new)        none can, ``tunnel_wait`` is 0      REFUSED      RefuseClient(NO_TUNNEL)
(new)        none can, ``max_waiting`` wait      REFUSED      RefuseClient(TOO_MANY_WAITING)
(new)        none can                            WAITING
WAITING      tunnel_arrived / keepalive          OPEN         OpenSession (in arrival order)
WAITING      client_left                         LEFT         (still counts as waiting)
LEFT         tunnel_arrived / keepalive          (gone)
WAITING,     ``tunnel_wait`` elapses             REFUSED      RefuseClient(WAIT_EXPIRED)
LEFT
WAITING,     close()                             REFUSED      RefuseClient(SHUTDOWN)
LEFT
===========  ==================================  ===========  =============================
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from raybridge.protocols.reverse import ControlState, heartbeat

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "BACKOFF_JITTER",
    "DRAIN_AFTER",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_TUNNELS",
    "MAX_WAITING",
    "MONITOR_INTERVAL",
    "PEER_TIMEOUT",
    "SESSIONS_PER_TUNNEL",
    "SUSPECT_AFTER",
    "TUNNEL_WAIT",
    "BridgeEvent",
    "BridgePolicy",
    "BridgeTunnelState",
    "CloseTunnel",
    "DialTunnel",
    "DropTunnel",
    "OpenControl",
    "OpenSession",
    "PortalEvent",
    "PortalPolicy",
    "PortalTunnelState",
    "Refusal",
    "RefuseClient",
    "SendControl",
    "SendDrain",
    "SendKeepAlive",
    "Timings",
    "TunnelConfirmed",
    "TunnelEvent",
    "TunnelStateChanged",
    "Uniform",
]

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
#: ...times a factor drawn from 1 +- this.
BACKOFF_JITTER = 0.25
#: Portal: seconds between heartbeats on each tunnel.
HEARTBEAT_INTERVAL = 2.0
#: Portal: drain a tunnel once it has opened more sessions than this in total.
DRAIN_AFTER = 256
#: Portal: how long a client waits for a tunnel when there is none.
TUNNEL_WAIT = 4.0
#: Portal: at most this many clients wait for a tunnel at once; more are refused at once.
MAX_WAITING = 256
#: Bridge: seconds between KeepAlive frames on each tunnel (sent at each monitor check).
KEEPALIVE_INTERVAL = MONITOR_INTERVAL
#: Portal: a tunnel that sends KeepAlives and has been silent this long is not chosen...
SUSPECT_AFTER = 4.5
#: ...and this long, is dropped.
PEER_TIMEOUT = 7.0

#: Added to the session count of a tunnel whose link is full: chosen only when all are.
_FULL_LINK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """Every timing and bound of both machines (the defaults are the module constants)."""

    monitor_interval: float = MONITOR_INTERVAL
    sessions_per_tunnel: int = SESSIONS_PER_TUNNEL
    max_tunnels: int = MAX_TUNNELS
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP
    backoff_jitter: float = BACKOFF_JITTER
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    drain_after: int = DRAIN_AFTER
    tunnel_wait: float = TUNNEL_WAIT
    max_waiting: int = MAX_WAITING
    suspect_after: float = SUSPECT_AFTER
    peer_timeout: float = PEER_TIMEOUT
    #: A tunnel's mux session cap (``raybridge.muxMaxSessions``; 0: none). A raybridge
    #: bridge refuses New frames past it, so its portal does not pick a tunnel at the cap
    #: (the client waits for another), and the bridge dials another tunnel as soon as every
    #: one is three quarters full, instead of at its next monitor tick.
    max_sessions: int = 0

    @property
    def keepalive_interval(self) -> float:
        """The bridge sends its KeepAlives at each monitor check."""
        return self.monitor_interval


class Uniform(Protocol):
    """What the bridge needs of an rng (``random.Random`` and ``SystemRandom`` have it)."""

    def uniform(self, a: float, b: float) -> float: ...


class Refusal(Enum):
    """Why a client gets no tunnel."""

    NO_TUNNEL = "no tunnel"  # none, and clients may not wait (tunnel_wait 0)
    TOO_MANY_WAITING = "too many waiting"  # max_waiting clients wait already
    WAIT_EXPIRED = "no tunnel in time"  # none came within tunnel_wait
    SHUTDOWN = "shutting down"


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelEvent:
    """An event about one tunnel (the adapter finds it by the policy's id); every event
    but :class:`RefuseClient` is one."""

    tunnel: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DialTunnel(TunnelEvent):
    """Bridge: dial a new tunnel to the portal (``redial``: not the first one)."""

    redial: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SendKeepAlive(TunnelEvent):
    """Bridge: send a Mux.Cool KeepAlive on the tunnel (a raybridge portal watches them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDrain(TunnelEvent):
    """Bridge: tell the portal on the tunnel's control session that this bridge drains
    (a Control message with state DRAIN, bridge to portal): a raybridge portal opens no
    new session on it and ends the control session to say so; V2Ray 4.34's portal never
    reads that direction (``app/reverse/portal.go``) and goes on choosing it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DropTunnel(TunnelEvent):
    """Abort the tunnel: nothing heard from the other end for ``silence`` seconds."""

    reason: str
    silence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseTunnel(TunnelEvent):
    """Close the tunnel cleanly (drained and idle, or shutting down)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelConfirmed(TunnelEvent):
    """Bridge: the tunnel's first Control message: it reaches a portal (worth a log line;
    ``failures``: failed dials before it)."""

    failures: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelStateChanged(TunnelEvent):
    """Bridge: the portal switched the tunnel to ``state`` (worth a log line)."""

    state: ControlState


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenControl(TunnelEvent):
    """Portal: open the tunnel's control session with ``payload`` in its New frame."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SendControl(TunnelEvent):
    """Portal: send a Control message on the control session if it is open (``end``: end
    the session after it); then report ``sessions_changed`` if ``end``."""

    payload: bytes
    end: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenSession(TunnelEvent):
    """Portal: open a mux session on ``tunnel`` for ``client`` (counted already)."""

    client: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RefuseClient:
    """Portal: fail ``client``; ``waiting`` clients wait, ``refused`` were refused for too
    many waiting so far."""

    client: int
    reason: Refusal
    waiting: int
    refused: int


#: What :meth:`BridgePolicy.next_event` returns.
BridgeEvent = (
    DialTunnel
    | SendKeepAlive
    | SendDrain
    | DropTunnel
    | CloseTunnel
    | TunnelConfirmed
    | TunnelStateChanged
)
#: What :meth:`PortalPolicy.next_event` returns.
PortalEvent = OpenControl | SendControl | OpenSession | RefuseClient | DropTunnel | CloseTunnel


# -- bridge -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False, kw_only=True)
class BridgeTunnelState:
    """What the bridge machine knows of one tunnel (read it; only the machine writes)."""

    id: int
    opened: float
    last_control: float  # when the last Control message came (``opened`` before one)
    state: ControlState = ControlState.ACTIVE
    heard: bool = False  # any Control message yet: the tunnel reaches a portal
    sessions: int = 0  # open mux sessions, the control one included
    paused: bool = False  # its link is full
    closed: bool = False

    @property
    def active(self) -> bool:
        return self.state is ControlState.ACTIVE and not self.closed


class BridgePolicy:
    """Node A's tunnels to a portal (see the module docstring's bridge table)."""

    def __init__(self, timings: Timings, *, rng: Uniform) -> None:
        self.timings = timings
        self._rng = rng
        #: Active tunnels and new ones not yet retired, in dial order.
        self.tunnels: list[BridgeTunnelState] = []
        #: Drained tunnels: still open, serving their sessions until the portal closes them.
        self.retired: list[BridgeTunnelState] = []
        self.failures = 0  # dials in a row that never reached the portal
        self.dials = 0
        #: Seconds of the last redial wait chosen (0 when the portal was reachable).
        self.redial_delay = 0.0
        self.running = False
        #: ``drain`` was called: nothing is dialled; tunnels close once idle.
        self.draining = False
        self._known: dict[int, BridgeTunnelState] = {}
        self._events: deque[BridgeEvent] = deque()
        self._next_tick = 0.0
        self.wake_at: float | None = None  # a monitor run sooner than the next tick

    def next_event(self) -> BridgeEvent | None:
        return self._events.popleft() if self._events else None

    def tunnel(self, tunnel: int) -> BridgeTunnelState | None:
        """An open tunnel's record (active, new or retired)."""
        return self._known.get(tunnel)

    # -- the clock ---------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        if not self.running:
            return None
        wake = self.wake_at
        return self._next_tick if wake is None or wake > self._next_tick else wake

    def handle_timer(self, now: float) -> None:
        """Run the monitor if its tick or a wake is due (once, if both are)."""
        if not self.running:
            return
        due = False
        if self.wake_at is not None and self.wake_at <= now:
            self.wake_at = None
            due = True
        if self._next_tick <= now:
            self._next_tick = now + self.timings.monitor_interval
            due = True
        if due:
            self.check(now)

    # -- entry points ------------------------------------------------------------------------
    def start(self, now: float) -> None:
        self.running = True
        self.check(now)  # dials the first tunnel at once
        self._next_tick = now + self.timings.monitor_interval

    def close(self, now: float) -> None:
        """Stop: close every open tunnel; nothing is dialled or woken any more."""
        self.running = False
        self.wake_at = None
        for tunnel in [*self.tunnels, *self.retired]:
            tunnel.closed = True
            self._events.append(CloseTunnel(tunnel=tunnel.id))
        self.tunnels.clear()
        self.retired.clear()
        self._known.clear()

    def drain(self, now: float) -> None:
        """Stop taking work (SIGTERM, or the bridge left the config): ``SendDrain`` on
        every open tunnel, no more dials or heartbeat drops; each tunnel gets
        ``CloseTunnel`` once it has no session left (the portal ends the control session
        when it has heard the DRAIN; a V2Ray portal never does, so its tunnels stay open,
        serving, until the bridge is closed)."""
        if self.draining or not self.running:
            return
        self.draining = True
        self.wake_at = None
        self.retired += self.tunnels
        self.tunnels = []
        for tunnel in list(self.retired):
            self._events.append(SendDrain(tunnel=tunnel.id))
            self._close_if_idle(tunnel)

    @property
    def drained(self) -> bool:
        """Draining, and every tunnel is closed."""
        return self.draining and not self._known

    def _close_if_idle(self, tunnel: BridgeTunnelState) -> None:
        if self.draining and tunnel.sessions == 0 and not tunnel.closed:
            self._events.append(CloseTunnel(tunnel=tunnel.id))
            self._lost(0.0, tunnel)

    def wake(self, now: float, delay: float = 0.0) -> None:
        """Run the monitor ``delay`` seconds from ``now`` instead of at the next tick; an
        earlier request replaces a later one still pending."""
        if not self.running:
            return
        due = now + delay
        if self.wake_at is None or due < self.wake_at:
            self.wake_at = due

    def check(self, now: float) -> None:
        """The monitor (see the module docstring)."""
        timings = self.timings
        for tunnel in [*self.tunnels, *self.retired]:
            self._events.append(SendKeepAlive(tunnel=tunnel.id))  # lets a portal see us
        if self.draining:
            return
        for tunnel in list(self.tunnels):
            silence = now - tunnel.last_control
            if tunnel.active and silence > timings.heartbeat_timeout:
                self._events.append(
                    DropTunnel(tunnel=tunnel.id, reason="no heartbeat", silence=silence)
                )
                self._lost(now, tunnel)
        # Inactive tunnels leave the list (a drained one stays open until the portal closes
        # it, serving its sessions).
        self.retired += [t for t in self.tunnels if not t.active]
        self.tunnels = [t for t in self.tunnels if t.active]
        active = len(self.tunnels)
        sessions = sum(t.sessions for t in self.tunnels)
        if (
            active == 0
            or sessions // active > timings.sessions_per_tunnel
            or self._all_nearly_full()
        ):
            self.dial(now)
        elif active < timings.max_tunnels and all(t.paused for t in self.tunnels):
            self.dial(now)  # every tunnel's link is full: another TCP connection gets its share

    def dial(self, now: float) -> int:
        """Dial one more tunnel now; returns its id."""
        self.dials += 1
        tunnel = BridgeTunnelState(id=self.dials, opened=now, last_control=now)
        self.tunnels.append(tunnel)
        self._known[tunnel.id] = tunnel
        self._events.append(DialTunnel(tunnel=tunnel.id, redial=self.dials > 1))
        # A KeepAlive right away (it rides with the VMess request header): the portal knows
        # from the start that this bridge sends them, so it can tell when they stop.
        self._events.append(SendKeepAlive(tunnel=tunnel.id))
        return tunnel.id

    def control_received(self, now: float, tunnel: int, state: ControlState) -> None:
        """A valid Control message arrived on the tunnel's control session."""
        record = self._known.get(tunnel)
        if record is None:
            return
        record.last_control = now
        if not record.heard:
            record.heard = True
            self._events.append(TunnelConfirmed(tunnel=tunnel, failures=self.failures))
            self.failures = 0
        if state is not record.state:
            self._events.append(TunnelStateChanged(tunnel=tunnel, state=state))
            record.state = state
            if state is ControlState.DRAIN:
                self.wake(now)  # retire it and dial a replacement at once

    def tunnel_closed(self, now: float, tunnel: int) -> None:
        record = self._known.get(tunnel)
        if record is not None:
            self._lost(now, record)

    def sessions_changed(self, now: float, tunnel: int, count: int) -> None:
        """The tunnel now has ``count`` open mux sessions (the control one included)."""
        record = self._known.get(tunnel)
        if record is not None:
            record.sessions = count
            self._close_if_idle(record)
            if self._all_nearly_full():
                self.wake(now)  # a burst: the monitor dials another one now

    def write_paused(self, now: float, tunnel: int, paused: bool) -> None:
        """The tunnel's link is full (``paused``) or takes more again."""
        record = self._known.get(tunnel)
        if record is not None:
            record.paused = paused

    # -- internals ---------------------------------------------------------------------------
    def _all_nearly_full(self) -> bool:
        """Every active tunnel has three quarters of its session cap, and no dial is
        still waiting to be heard (one more tunnel at a time)."""
        cap = self.timings.max_sessions
        if not cap or not self.running or self.draining:
            return False
        any_active = False
        for t in self.tunnels:  # (a loop: this runs each time a tunnel's sessions change)
            if t.active:
                if not (t.heard and 4 * t.sessions >= 3 * cap):
                    return False
                any_active = True
        return any_active

    def _lost(self, now: float, tunnel: BridgeTunnelState) -> None:
        tunnel.closed = True
        del self._known[tunnel.id]
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
        if tunnel in self.retired:
            self.retired.remove(tunnel)
        if not self.running or self.draining:
            return
        if not tunnel.heard and not any(t.heard and t.active for t in self.tunnels):
            # A dial that failed while another tunnel is up says nothing about the portal
            # being unreachable, which is what the backoff is for.
            self.failures += 1
        if any(t.active for t in self.tunnels):
            return  # the monitor tops up if the remaining ones are busy
        self.wake(now, self._backoff())

    def _backoff(self) -> float:
        delay = 0.0
        if self.failures:
            timings = self.timings
            delay = min(timings.backoff_cap, timings.backoff_base * 2 ** (self.failures - 1))
            jitter = timings.backoff_jitter
            delay *= self._rng.uniform(1 - jitter, 1 + jitter)
        self.redial_delay = delay
        return delay


# -- portal -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False, kw_only=True)
class PortalTunnelState:
    """What the portal machine knows of one tunnel (read it; only the machine writes)."""

    id: int
    opened: float
    last_heard: float  # when the bridge last sent anything
    next_beat: float  # the heartbeat timer
    sessions: int = 1  # open mux sessions: the control one, and the clients'
    opened_total: int = 1  # sessions ever opened on it, the control one included
    keepalives: bool = False  # the bridge sends KeepAlives (raybridge): silence counts
    paused: bool = False  # its link is full
    draining: bool = False
    #: The bridge said DRAIN (it is stopping): never chosen again, not even as a fallback.
    bridge_draining: bool = False
    closed: bool = False

    def silence(self, now: float) -> float:
        """Seconds without a word from a bridge that sends KeepAlives (else 0)."""
        return now - self.last_heard if self.keepalives else 0.0


@dataclass(slots=True)
class _Waiting:
    deadline: float
    left: bool = False  # the client went away (kept, and counted, until served or expired)


class PortalPolicy:
    """Node B's tunnels from bridges and the clients sent through them (see the module
    docstring's portal tables)."""

    def __init__(self, timings: Timings, *, urandom: Callable[[int], bytes]) -> None:
        self.timings = timings
        self._urandom = urandom
        self._tunnels: dict[int, PortalTunnelState] = {}  # in arrival order
        self._waiting: dict[int, _Waiting] = {}  # in arrival order, so by deadline
        self.refused_waiting = 0  # clients refused because too many were waiting
        self._events: deque[PortalEvent] = deque()
        self._ids = 0

    def next_event(self) -> PortalEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def tunnels(self) -> list[PortalTunnelState]:
        """Live tunnels, in arrival order."""
        return list(self._tunnels.values())

    @property
    def waiting(self) -> int:
        """Clients waiting for a tunnel (those that left meanwhile included)."""
        return len(self._waiting)

    def tunnel(self, tunnel: int) -> PortalTunnelState | None:
        return self._tunnels.get(tunnel)

    # -- the clock ---------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        when: float | None = None
        for tunnel in self._tunnels.values():
            if when is None or tunnel.next_beat < when:
                when = tunnel.next_beat
        for entry in self._waiting.values():  # the first one is due first
            if when is None or entry.deadline < when:
                when = entry.deadline
            break
        return when

    def handle_timer(self, now: float) -> None:
        """Heartbeats that are due, then clients whose wait is over."""
        for tunnel in list(self._tunnels.values()):
            if tunnel.next_beat <= now and not tunnel.closed:
                self._beat(now, tunnel)
        for client, entry in list(self._waiting.items()):
            if entry.deadline > now:
                break
            del self._waiting[client]
            self._refuse(client, Refusal.WAIT_EXPIRED)

    # -- tunnels -----------------------------------------------------------------------------
    def tunnel_arrived(self, now: float) -> int:
        """A bridge's tunnel is adopted: returns its id."""
        self._ids += 1
        tunnel = PortalTunnelState(
            id=self._ids,
            opened=now,
            last_heard=now,
            next_beat=now + self.timings.heartbeat_interval,
        )
        self._tunnels[tunnel.id] = tunnel
        # The control session opens with the first heartbeat in its New frame.
        self._events.append(OpenControl(tunnel=tunnel.id, payload=heartbeat(self._urandom)))
        self._serve(now)
        return tunnel.id

    def tunnel_closed(self, now: float, tunnel: int) -> None:
        record = self._tunnels.get(tunnel)
        if record is not None:
            self._remove(record)

    def heard(self, now: float, tunnel: int) -> None:
        """The bridge sent something (any carrier read). Emits nothing."""
        record = self._tunnels.get(tunnel)
        if record is not None:
            record.last_heard = now

    def keepalive(self, now: float, tunnel: int) -> None:
        """A KeepAlive frame arrived: a raybridge bridge, whose silence will count. A tunnel
        heard again after a silence can take the clients waiting meanwhile."""
        record = self._tunnels.get(tunnel)
        if record is None:
            return
        record.keepalives = True
        record.last_heard = now
        if self._waiting:
            self._serve(now)

    def write_paused(self, now: float, tunnel: int, paused: bool) -> None:
        record = self._tunnels.get(tunnel)
        if record is not None:
            record.paused = paused

    def bridge_drained(self, now: float, tunnel: int) -> None:
        """The bridge sent DRAIN on the control session (raybridge's graceful stop): new
        clients go to the other tunnels at once (or wait for one); the control session is
        ended (``SendControl(end=True)``, which tells the bridge that no New frame follows)
        and the tunnel is closed when its last session ends."""
        record = self._tunnels.get(tunnel)
        if record is None or record.bridge_draining:
            return
        record.bridge_draining = True
        if not record.draining:
            record.draining = True
            self._events.append(SendControl(tunnel=tunnel, payload=b"", end=True))
        self._maybe_close(record)

    def sessions_changed(self, now: float, tunnel: int, count: int) -> None:
        """The tunnel now has ``count`` open mux sessions (the control one included)."""
        record = self._tunnels.get(tunnel)
        if record is not None:
            record.sessions = count
            self._maybe_close(record)
            if self._waiting and self.timings.max_sessions:
                self._serve(now)  # a tunnel at its cap may take the waiting ones again

    def close(self, now: float) -> None:
        """Refuse every waiting client and close every tunnel."""
        for client in list(self._waiting):
            del self._waiting[client]
            self._refuse(client, Refusal.SHUTDOWN)
        for tunnel in list(self._tunnels.values()):
            self._events.append(CloseTunnel(tunnel=tunnel.id))
            self._remove(tunnel)

    # -- clients -----------------------------------------------------------------------------
    def client_arrived(self, now: float) -> int:
        """A link routed to the portal: returns the client's id. It gets ``OpenSession`` or
        ``RefuseClient`` at once, or waits."""
        self._ids += 1
        client = self._ids
        tunnel = self._pick(now)
        if tunnel is not None:
            self._open(tunnel, client)
        elif self.timings.tunnel_wait <= 0:
            self._refuse(client, Refusal.NO_TUNNEL)
        elif len(self._waiting) >= self.timings.max_waiting:
            self.refused_waiting += 1
            self._refuse(client, Refusal.TOO_MANY_WAITING)
        else:
            self._waiting[client] = _Waiting(now + self.timings.tunnel_wait)
        return client

    def client_left(self, now: float, client: int) -> None:
        """A waiting client went away (it stays counted until served or expired)."""
        entry = self._waiting.get(client)
        if entry is not None:
            entry.left = True

    def pick(self, now: float) -> int | None:
        """The tunnel a client arriving now would get (nothing changes)."""
        tunnel = self._pick(now)
        return None if tunnel is None else tunnel.id

    # -- internals ---------------------------------------------------------------------------
    def _pick(self, now: float) -> PortalTunnelState | None:
        """The live, non-draining tunnel with the fewest open sessions whose link is not
        full (else a full one, else a draining one); never a suspect one."""
        best: PortalTunnelState | None = None
        fallback: PortalTunnelState | None = None
        best_count = fallback_count = 0
        suspect_after = self.timings.suspect_after
        cap = self.timings.max_sessions
        for tunnel in self._tunnels.values():
            if tunnel.keepalives and now - tunnel.last_heard > suspect_after:
                continue
            if tunnel.bridge_draining:
                continue
            if tunnel.keepalives and cap and tunnel.sessions >= cap - 1:
                continue  # a raybridge bridge would refuse the session (with the control one)
            count = tunnel.sessions + (_FULL_LINK if tunnel.paused else 0)
            if tunnel.draining:
                if fallback is None or count < fallback_count:
                    fallback, fallback_count = tunnel, count
            elif best is None or count < best_count:
                best, best_count = tunnel, count
        return best or fallback

    def _open(self, tunnel: PortalTunnelState, client: int) -> None:
        tunnel.sessions += 1
        tunnel.opened_total += 1
        self._events.append(OpenSession(tunnel=tunnel.id, client=client))

    def _refuse(self, client: int, reason: Refusal) -> None:
        self._events.append(
            RefuseClient(
                client=client,
                reason=reason,
                waiting=len(self._waiting),
                refused=self.refused_waiting,
            )
        )

    def _serve(self, now: float) -> None:
        """Waiting clients, in order of arrival, each to the best tunnel at its turn."""
        found = True
        for client, entry in list(self._waiting.items()):
            if entry.left:
                del self._waiting[client]
                continue
            tunnel = self._pick(now) if found else None
            if tunnel is None:
                found = False  # none for this one: none for the next either
                continue
            del self._waiting[client]
            self._open(tunnel, client)

    def _beat(self, now: float, tunnel: PortalTunnelState) -> None:
        timings = self.timings
        silence = tunnel.silence(now)
        if silence > timings.peer_timeout:
            self._events.append(
                DropTunnel(tunnel=tunnel.id, reason="bridge silent", silence=silence)
            )
            self._remove(tunnel)
            return
        tunnel.next_beat = now + timings.heartbeat_interval
        if tunnel.draining:
            return  # no more heartbeats, but keep watching the bridge
        if tunnel.opened_total > timings.drain_after:
            # Tell the bridge to open no new work here; close once the sessions are done.
            tunnel.draining = True
            message = heartbeat(self._urandom, drain=True)
            self._events.append(SendControl(tunnel=tunnel.id, payload=message, end=True))
            self._maybe_close(tunnel)
            return
        message = heartbeat(self._urandom)
        if message:  # an empty ACTIVE message is not sent at all (as V2Ray)
            self._events.append(SendControl(tunnel=tunnel.id, payload=message))

    def _maybe_close(self, tunnel: PortalTunnelState) -> None:
        if tunnel.draining and tunnel.sessions == 0 and not tunnel.closed:
            self._events.append(CloseTunnel(tunnel=tunnel.id))
            self._remove(tunnel)

    def _remove(self, tunnel: PortalTunnelState) -> None:
        tunnel.closed = True
        self._tunnels.pop(tunnel.id, None)
