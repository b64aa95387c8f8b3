"""Stateful tests of the reverse proxy's policy machines (``protocols/reverse_policy.py``).

Two hypothesis ``RuleBasedStateMachine``s drive a :class:`PortalPolicy` and a
:class:`BridgePolicy` directly and synchronously: no event loop, no sockets, no sleeping.
Time is the machine's ``now``, which only rules move; when one does, the timers due on the
way fire in order (``handle_timer`` at ``get_timer()``), as the adapter's one ``call_at``
would. Silence is made by moving ``now`` without "heard" events.

Each machine keeps a model of what the policy should know. Every event the policy emits
must be the next one the model expects, and the machine answers it as the adapter
(``proxy/reverse.py``) does: a tunnel it drops or closes is reported closed afterwards, the
control session ended with a DRAIN is reported as a changed session count, a dial may fail
at once (reported closed while the events are still being carried out).

Bugs the earlier, loop-driven versions of these machines found are pinned at the end of the
file as policy-level regression tests (their adapter-level twins are in
``test_reverse_unit.py``).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from raybridge.protocols.reverse import ControlState, heartbeat
from raybridge.protocols.reverse_policy import (
    BridgePolicy,
    CloseTunnel,
    DialTunnel,
    DropTunnel,
    OpenControl,
    OpenSession,
    PortalPolicy,
    Refusal,
    RefuseClient,
    SendControl,
    SendKeepAlive,
    Timings,
    TunnelConfirmed,
    TunnelStateChanged,
)

T0 = 10_000.0
ACTIVE, DRAIN = ControlState.ACTIVE, ControlState.DRAIN

MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

indexes = st.integers(0, 15)
steps = st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0])


def fixed_urandom(n: int) -> bytes:
    """Heartbeats never draw empty padding (so every one is an event)."""
    return b"\x07" * n


ACTIVE_BEAT = heartbeat(fixed_urandom)
DRAIN_BEAT = heartbeat(fixed_urandom, drain=True)


def pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


class PolicyMachine(RuleBasedStateMachine):
    """What both machines share: the clock, and checking the events against the model."""

    policy: BridgePolicy | PortalPolicy

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.expected: deque[object] = deque()

    def expect(self, event: object) -> None:
        self.expected.append(event)

    def pump(self) -> None:
        """Carry out the policy's events: each must be the next one the model expects."""
        while (event := self.policy.next_event()) is not None:
            assert self.expected, f"unexpected {event}"
            want = self.expected.popleft()
            assert event == want, (event, want)
            self.answer(event)
        assert not self.expected, f"not emitted: {list(self.expected)}"

    def answer(self, event: object) -> None:
        """What the adapter does with ``event`` that the policy hears of again."""
        if isinstance(event, DropTunnel | CloseTunnel):
            # The worker closes and says so: the policy has forgotten the tunnel already.
            self.policy.tunnel_closed(self.now, event.tunnel)

    def model_timer(self) -> float | None:
        raise NotImplementedError

    def expect_timer(self) -> None:
        """The model's side of ``handle_timer(self.now)``."""
        raise NotImplementedError

    def fire_due(self, until: float) -> None:
        """Move the clock to ``until``, firing each timer due on the way at its time."""
        same_time = 0
        while (when := self.policy.get_timer()) is not None and when <= until:
            assert when >= self.now, "a timer in the past"
            assert when == self.model_timer()
            same_time = same_time + 1 if when == self.now else 0
            assert same_time < 5, "handle_timer makes no progress"
            self.now = when
            self.expect_timer()
            self.policy.handle_timer(when)
            self.pump()
        self.now = max(self.now, until)

    @rule(dt=steps)
    def time_passes(self, dt: float) -> None:
        self.fire_due(self.now + dt)

    @precondition(lambda self: self.policy.get_timer() is not None)
    @rule()
    def next_timer_fires(self) -> None:
        when = self.policy.get_timer()
        assert when is not None
        self.fire_due(when)

    @invariant()
    def one_timer_never_in_the_past(self) -> None:
        when = self.policy.get_timer()
        assert when == self.model_timer()
        assert when is None or when >= self.now


# == portal ===============================================================================


@dataclass(eq=False)
class PTunnel:
    """The model of one tunnel at the portal."""

    id: int
    last_heard: float
    next_beat: float
    sessions: int = 1  # the control session and the clients' open ones
    opened_total: int = 1
    control_open: bool = True
    keepalives: bool = False
    paused: bool = False
    draining: bool = False
    closed: bool = False


@dataclass(eq=False)
class PClient:
    """The model of one client routed to the portal."""

    id: int
    state: str = "new"  # open, waiting, left (still counted), gone, ended, refused
    tunnel: PTunnel | None = None
    deadline: float = 0.0


class PortalMachine(PolicyMachine):
    """Rules: tunnels arrive and close, bridges are heard (bytes or KeepAlives) or fall
    silent, links fill up and drain, clients arrive, end, leave while waiting; the control
    session is aborted by the bridge; time passes (heartbeats, drains, drops, expiries)."""

    policy: PortalPolicy

    def __init__(self) -> None:
        super().__init__()
        self.timings = Timings()
        self.policy = PortalPolicy(self.timings, urandom=fixed_urandom)  # replaced in setup
        self.tunnels: list[PTunnel] = []
        self.clients: list[PClient] = []
        self.ids = 0
        self.refused = 0
        self.max_live = 3
        # Waiting clients are served when a tunnel arrives or a KeepAlive is heard. A suspect
        # tunnel heard again through other bytes takes them at the bridge's next KeepAlive
        # (keepalive_interval later at most): until then they may wait beside it.
        self.heard_without_keepalive = False

    @initialize(
        drain_after=st.integers(1, 4),
        tunnel_wait=st.sampled_from([0.0, 3.0, 100.0]),
        max_waiting=st.sampled_from([1, 3, 256]),
        max_live=st.sampled_from([1, 3]),
    )
    def setup(self, drain_after: int, tunnel_wait: float, max_waiting: int, max_live: int) -> None:
        # One tunnel at a time often: its clients then share it (drains with several open,
        # silences that leave no tunnel to choose).
        self.max_live = max_live
        self.timings = Timings(
            drain_after=drain_after, tunnel_wait=tunnel_wait, max_waiting=max_waiting
        )
        self.policy = PortalPolicy(self.timings, urandom=fixed_urandom)

    # -- the model -----------------------------------------------------------------------
    def live(self) -> list[PTunnel]:
        return [t for t in self.tunnels if not t.closed]

    def by_id(self, tunnel: int) -> PTunnel:
        (t,) = [t for t in self.tunnels if t.id == tunnel]
        return t

    def waiting(self) -> list[PClient]:
        """In order of arrival: those that left meanwhile still count."""
        return [c for c in self.clients if c.state in ("waiting", "left")]

    def open_clients(self) -> list[PClient]:
        return [c for c in self.clients if c.state == "open"]

    def eligible(self, t: PTunnel) -> bool:
        return not (t.keepalives and self.now - t.last_heard > self.timings.suspect_after)

    def choice(self) -> PTunnel | None:
        """Where a client goes now: among live, non-suspect tunnels, a non-draining one if
        any; of those the first with the fewest sessions, a full link counting as more."""
        for draining in (False, True):
            pool = [t for t in self.live() if self.eligible(t) and t.draining == draining]
            if pool:
                return min(pool, key=lambda t: (t.paused, t.sessions))
        return None

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def open_on(self, t: PTunnel, c: PClient) -> None:
        t.sessions += 1
        t.opened_total += 1
        c.tunnel, c.state = t, "open"
        self.expect(OpenSession(tunnel=t.id, client=c.id))

    def refuse(self, c: PClient, reason: Refusal) -> None:
        c.state = "refused"
        self.expect(
            RefuseClient(
                client=c.id, reason=reason, waiting=len(self.waiting()), refused=self.refused
            )
        )

    def serve(self) -> None:
        self.heard_without_keepalive = False
        found = True
        for c in self.waiting():
            if c.state == "left":
                c.state = "gone"
                continue
            t = self.choice() if found else None
            if t is None:
                found = False
                continue
            self.open_on(t, c)

    def lose(self, t: PTunnel) -> None:
        t.closed = True
        for c in self.open_clients():
            if c.tunnel is t:
                c.state = "ended"

    def report(self, t: PTunnel) -> None:
        """The adapter reports the tunnel's session count (a drained, idle one closes)."""
        self.policy.sessions_changed(self.now, t.id, t.sessions)
        if not t.closed and t.draining and t.sessions == 0:
            self.lose(t)
            self.expect(CloseTunnel(tunnel=t.id))

    def answer(self, event: object) -> None:
        super().answer(event)
        if isinstance(event, SendControl) and event.end:
            t = self.by_id(event.tunnel)
            if t.control_open:  # the DRAIN went out and the control session ended
                t.control_open = False
                t.sessions -= 1
            self.report(t)

    def model_timer(self) -> float | None:
        times = [t.next_beat for t in self.live()] + [c.deadline for c in self.waiting()]
        return min(times, default=None)

    def expect_timer(self) -> None:
        now, timings = self.now, self.timings
        for t in self.live():
            if t.next_beat > now:
                continue
            silence = now - t.last_heard if t.keepalives else 0.0
            if silence > timings.peer_timeout:
                self.expect(DropTunnel(tunnel=t.id, reason="bridge silent", silence=silence))
                self.lose(t)
                continue
            t.next_beat = now + timings.heartbeat_interval
            if t.draining:
                continue
            if t.opened_total > timings.drain_after:
                t.draining = True
                self.expect(SendControl(tunnel=t.id, payload=DRAIN_BEAT, end=True))
                if t.sessions == 0:
                    self.lose(t)
                    self.expect(CloseTunnel(tunnel=t.id))
                continue
            self.expect(SendControl(tunnel=t.id, payload=ACTIVE_BEAT))
        for c in self.waiting():
            if c.deadline > now:
                break
            self.refuse(c, Refusal.WAIT_EXPIRED)

    # -- tunnels -------------------------------------------------------------------------
    @precondition(lambda self: len(self.live()) < self.max_live and len(self.tunnels) < 8)
    @rule()
    def tunnel_arrives(self) -> None:
        t = PTunnel(
            id=self.next_id(),
            last_heard=self.now,
            next_beat=self.now + self.timings.heartbeat_interval,
        )
        self.tunnels.append(t)
        self.expect(OpenControl(tunnel=t.id, payload=ACTIVE_BEAT))
        self.serve()
        assert self.policy.tunnel_arrived(self.now) == t.id
        self.pump()

    @precondition(lambda self: self.live())
    @rule(i=indexes)
    def carrier_closes(self, i: int) -> None:
        t = pick(self.live(), i)
        self.lose(t)
        self.policy.tunnel_closed(self.now, t.id)
        self.pump()
        assert self.policy.tunnel(t.id) is None

    @precondition(lambda self: self.live())
    @rule(i=indexes, keepalive=st.booleans())
    def bridge_is_heard(self, i: int, keepalive: bool) -> None:
        """The bridge sends something: any bytes, or a KeepAlive frame."""
        t = pick(self.live(), i)
        was_eligible = self.eligible(t)
        t.last_heard = self.now
        self.policy.heard(self.now, t.id)
        assert self.policy.next_event() is None  # never an event: it runs on every read
        if keepalive:
            t.keepalives = True
            if self.waiting():
                self.serve()
            self.policy.keepalive(self.now, t.id)
        elif not was_eligible and any(c.state == "waiting" for c in self.clients):
            self.heard_without_keepalive = True
        self.pump()

    @precondition(
        lambda self: (
            self.timings.tunnel_wait > 0
            and self.live()
            and len(self.waiting()) < self.timings.max_waiting
        )
    )
    @rule(i=indexes)
    def bridge_hiccup(self, i: int) -> None:
        """Every bridge falls silent past suspect_after (after a KeepAlive, so that it
        counts); a client arrives and waits; one bridge is heard again: the client goes to
        a tunnel at once. (The steps, each a rule of its own, seldom come in this order.)"""
        for t in self.live():
            self.bridge_is_heard(self.live().index(t), True)
        self.fire_due(self.now + self.timings.suspect_after + 0.5)
        if not self.live() or len(self.waiting()) >= self.timings.max_waiting:
            return  # a drained tunnel closed meanwhile, or others wait still
        assert self.choice() is None
        self.client_arrives()
        client = self.clients[-1]
        assert client.state == "waiting"
        self.bridge_is_heard(i % len(self.live()), True)
        assert client.state == "open" and client.tunnel is not None

    @precondition(lambda self: self.live())
    @rule(i=indexes, paused=st.booleans())
    def link_fills_or_drains(self, i: int, paused: bool) -> None:
        t = pick(self.live(), i)
        t.paused = paused
        self.policy.write_paused(self.now, t.id, paused)
        self.pump()

    @precondition(lambda self: [t for t in self.live() if t.control_open])
    @rule(i=indexes)
    def bridge_aborts_control(self, i: int) -> None:
        """End+Error on session 1: the worker forgets it and reports the count."""
        t = pick([t for t in self.live() if t.control_open], i)
        t.control_open = False
        t.sessions -= 1
        self.report(t)
        self.pump()

    # -- clients -------------------------------------------------------------------------
    @precondition(lambda self: len(self.open_clients()) + len(self.waiting()) < 8)
    @rule()
    def client_arrives(self) -> None:
        c = PClient(id=self.next_id())
        self.clients.append(c)
        timings = self.timings
        t = self.choice()
        if t is not None:
            self.open_on(t, c)
        elif timings.tunnel_wait <= 0:
            self.refuse(c, Refusal.NO_TUNNEL)
        elif len(self.waiting()) >= timings.max_waiting:
            self.refused += 1
            self.refuse(c, Refusal.TOO_MANY_WAITING)
        else:
            c.state, c.deadline = "waiting", self.now + timings.tunnel_wait
        assert self.policy.client_arrived(self.now) == c.id
        self.pump()

    @precondition(lambda self: self.open_clients())
    @rule(i=indexes)
    def session_ends(self, i: int) -> None:
        c = pick(self.open_clients(), i)
        t = c.tunnel
        assert t is not None
        c.state = "ended"
        t.sessions -= 1
        self.report(t)
        self.pump()

    @precondition(lambda self: [c for c in self.clients if c.state == "waiting"])
    @rule(i=indexes)
    def waiting_client_leaves(self, i: int) -> None:
        c = pick([c for c in self.clients if c.state == "waiting"], i)
        c.state = "left"
        self.policy.client_left(self.now, c.id)
        self.pump()

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def tunnel_list(self) -> None:
        policy = self.policy
        assert [r.id for r in policy.tunnels] == [t.id for t in self.live()]
        for r, t in zip(policy.tunnels, self.live(), strict=True):
            assert not r.closed
            assert (r.sessions, r.opened_total, r.draining) == (
                t.sessions,
                t.opened_total,
                t.draining,
            )
            assert (r.keepalives, r.paused, r.last_heard) == (t.keepalives, t.paused, t.last_heard)
            assert r.next_beat == t.next_beat  # exactly one heartbeat timer per live tunnel
        assert policy.waiting == len(self.waiting())
        assert policy.refused_waiting == self.refused

    @invariant()
    def sessions_are_on_live_tunnels(self) -> None:
        for c in self.open_clients():
            assert c.tunnel is not None and not c.tunnel.closed
        for t in self.live():
            assert t.sessions == int(t.control_open) + sum(
                1 for c in self.open_clients() if c.tunnel is t
            )
            if t.draining:
                assert not t.control_open  # the control session ended with the DRAIN
                assert t.sessions > 0  # a drained tunnel closes with its last session

    @invariant()
    def nobody_waits_beside_a_tunnel(self) -> None:
        if any(c.state == "waiting" for c in self.clients):
            assert self.choice() is None or self.heard_without_keepalive

    def teardown(self) -> None:
        for c in self.waiting():
            self.refuse(c, Refusal.SHUTDOWN)
        for t in self.live():
            self.expect(CloseTunnel(tunnel=t.id))
            self.lose(t)
        self.policy.close(self.now)
        self.pump()
        assert self.policy.tunnels == [] and self.policy.waiting == 0
        assert self.policy.get_timer() is None


def test_portal_policy_machine() -> None:
    run_state_machine_as_test(PortalMachine, settings=MACHINE_SETTINGS)


# == bridge ===============================================================================


@dataclass(eq=False)
class BTunnel:
    """The model of one tunnel the bridge dialled."""

    id: int
    last_control: float
    state: ControlState = ACTIVE
    heard: bool = False
    sessions: int = 0
    paused: bool = False
    closed: bool = False
    ever_drained: bool = False

    @property
    def active(self) -> bool:
        return self.state is ACTIVE and not self.closed


class BridgeMachine(PolicyMachine):
    """Rules: the portal sends ACTIVE or DRAIN on a tunnel, a carrier closes, sessions come
    and go, links fill up, the portal becomes (un)reachable (dials then fail at once), the
    monitor is run or one more tunnel dialled by hand; time passes (monitor ticks, wakes,
    redial backoffs, heartbeat timeouts)."""

    policy: BridgePolicy

    def __init__(self) -> None:
        super().__init__()
        self.timings = Timings()
        self.rng = random.Random(0)  # a twin of the policy's: the same jitter, draw by draw
        self.policy = BridgePolicy(self.timings, rng=random.Random(0))  # replaced in start
        self.tunnels: list[BTunnel] = []  # active, and new ones not yet retired
        self.retired: list[BTunnel] = []
        self.running = False
        self.failures = 0
        self.dials = 0
        self.redial_delay = 0.0
        self.wake_at: float | None = None
        self.next_tick = 0.0
        self.unreachable = False  # dials fail at once
        self.closures = 0
        self.drains = 0  # ACTIVE -> DRAIN transitions: each may wake the monitor
        self.woken = 0  # monitor runs a wake caused

    @initialize(
        backoff=st.sampled_from([(0.05, 0.75), (1.0, 10.0)]),
        max_tunnels=st.sampled_from([1, 3, 8]),
        per_tunnel=st.sampled_from([2, 16]),
        seed=st.integers(0, 3),
    )
    def start(
        self, backoff: tuple[float, float], max_tunnels: int, per_tunnel: int, seed: int
    ) -> None:
        base, cap = backoff
        self.timings = Timings(
            backoff_base=base,
            backoff_cap=cap,
            max_tunnels=max_tunnels,
            sessions_per_tunnel=per_tunnel,
        )
        self.rng = random.Random(seed)
        self.policy = BridgePolicy(self.timings, rng=random.Random(seed))
        self.running = True
        self.expect_check()
        self.next_tick = self.now + self.timings.monitor_interval
        self.policy.start(self.now)
        self.pump()
        assert self.dials == 1

    # -- the model -----------------------------------------------------------------------
    def open(self) -> list[BTunnel]:
        return [*self.tunnels, *self.retired]

    def by_id(self, tunnel: int) -> BTunnel:
        (t,) = [t for t in [*self.tunnels, *self.retired] if t.id == tunnel]
        return t

    def wake(self, delay: float) -> None:
        if self.running:
            due = self.now + delay
            if self.wake_at is None or due < self.wake_at:
                self.wake_at = due

    def lose(self, t: BTunnel) -> None:
        t.closed = True
        self.closures += 1
        for tunnels in (self.tunnels, self.retired):
            if t in tunnels:
                tunnels.remove(t)
        if not self.running:
            return
        if not t.heard and not any(o.heard and o.active for o in self.tunnels):
            self.failures += 1
        if any(o.active for o in self.tunnels):
            return
        delay = 0.0
        if self.failures:
            timings = self.timings
            nominal = min(timings.backoff_cap, timings.backoff_base * 2 ** (self.failures - 1))
            delay = nominal * self.rng.uniform(0.75, 1.25)
            assert 0.75 * nominal <= delay <= 1.25 * nominal <= 1.25 * timings.backoff_cap
        self.redial_delay = delay
        self.wake(delay)

    def expect_dial(self) -> BTunnel:
        self.dials += 1
        t = BTunnel(id=self.dials, last_control=self.now)
        self.tunnels.append(t)
        self.expect(DialTunnel(tunnel=t.id, redial=self.dials > 1))
        self.expect(SendKeepAlive(tunnel=t.id))
        return t

    def expect_check(self) -> None:
        now, timings = self.now, self.timings
        for t in self.open():
            self.expect(SendKeepAlive(tunnel=t.id))
        for t in list(self.tunnels):
            silence = now - t.last_control
            if t.active and silence > timings.heartbeat_timeout:
                self.expect(DropTunnel(tunnel=t.id, reason="no heartbeat", silence=silence))
                self.lose(t)
        self.retired += [t for t in self.tunnels if not t.active]
        self.tunnels = [t for t in self.tunnels if t.active]
        active = len(self.tunnels)
        sessions = sum(t.sessions for t in self.tunnels)
        busy = active == 0 or sessions // active > timings.sessions_per_tunnel
        full = active < timings.max_tunnels and all(t.paused for t in self.tunnels)
        if busy or full:
            self.expect_dial()

    def answer(self, event: object) -> None:
        super().answer(event)
        if isinstance(event, DialTunnel) and self.unreachable:
            # The dispatch fails at once: the worker closes while the events are carried
            # out (its SendKeepAlive, already queued, then finds no tunnel).
            self.lose(self.by_id(event.tunnel))
            self.policy.tunnel_closed(self.now, event.tunnel)

    def model_timer(self) -> float | None:
        if not self.running:
            return None
        return min(self.next_tick, self.wake_at if self.wake_at is not None else self.next_tick)

    def expect_timer(self) -> None:
        due = False
        if self.wake_at is not None and self.wake_at <= self.now:
            self.wake_at = None
            self.woken += 1
            due = True
        if self.next_tick <= self.now:
            self.next_tick = self.now + self.timings.monitor_interval
            due = True
        if due:
            self.expect_check()

    # -- the portal ----------------------------------------------------------------------
    @precondition(lambda self: self.open())
    @rule(i=indexes, drain=st.booleans())
    def portal_sends_control(self, i: int, drain: bool) -> None:
        t = pick(self.open(), i)
        state = DRAIN if drain else ACTIVE
        t.last_control = self.now
        if not t.heard:
            t.heard = True
            self.expect(TunnelConfirmed(tunnel=t.id, failures=self.failures))
            self.failures = 0
        if state is not t.state:
            self.expect(TunnelStateChanged(tunnel=t.id, state=state))
            t.state = state
            if state is DRAIN:
                t.ever_drained = True
                self.drains += 1
                self.wake(0.0)
        self.policy.control_received(self.now, t.id, state)
        self.pump()

    @precondition(lambda self: self.open())
    @rule(i=indexes)
    def carrier_closes(self, i: int) -> None:
        t = pick(self.open(), i)
        self.lose(t)
        self.policy.tunnel_closed(self.now, t.id)
        self.pump()

    @precondition(lambda self: self.open())
    @rule(i=indexes, count=st.integers(0, 40))
    def sessions_change(self, i: int, count: int) -> None:
        t = pick(self.open(), i)
        t.sessions = count
        self.policy.sessions_changed(self.now, t.id, count)
        self.pump()

    @precondition(lambda self: self.open())
    @rule(i=indexes, paused=st.booleans())
    def link_fills_or_drains(self, i: int, paused: bool) -> None:
        t = pick(self.open(), i)
        t.paused = paused
        self.policy.write_paused(self.now, t.id, paused)
        self.pump()

    @rule(reachable=st.booleans())
    def portal_reachable(self, reachable: bool) -> None:
        self.unreachable = not reachable

    # -- the bridge's own activity -------------------------------------------------------
    @rule()
    def monitor_runs(self) -> None:
        """``Bridge.check()``: the monitor, now."""
        self.expect_check()
        self.policy.check(self.now)
        self.pump()
        if not self.unreachable:
            # After a check there is always a tunnel: an active one or one being dialled.
            assert self.tunnels and all(t.active for t in self.tunnels)

    @precondition(lambda self: len(self.tunnels) < 6)
    @rule()
    def one_more_dial(self) -> None:
        t = self.expect_dial()
        assert self.policy.dial(self.now) == t.id
        self.pump()

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def tunnel_lists(self) -> None:
        policy = self.policy
        assert [r.id for r in policy.tunnels] == [t.id for t in self.tunnels]
        assert [r.id for r in policy.retired] == [t.id for t in self.retired]
        for r, t in zip([*policy.tunnels, *policy.retired], self.open(), strict=True):
            assert not r.closed and policy.tunnel(r.id) is r
            assert (r.state, r.heard, r.last_control) == (t.state, t.heard, t.last_control)
            assert (r.sessions, r.paused) == (t.sessions, t.paused)
        for t in self.retired:
            # Drained (V2Ray never un-drains; one the portal re-activates stays here).
            assert t.ever_drained
        if any(not t.active for t in self.tunnels):
            # A check is on its way to retire it, at once (not after a backoff).
            assert self.wake_at is not None and self.wake_at <= self.now
        if self.running:
            # While running there is a tunnel (an active one, or one being dialled) or a
            # redial is on its way.
            assert any(t.active for t in self.tunnels) or self.wake_at is not None

    @invariant()
    def counts_and_backoff(self) -> None:
        policy = self.policy
        assert (policy.failures, policy.dials) == (self.failures, self.dials)
        assert policy.redial_delay == self.redial_delay
        assert policy.wake_at == self.wake_at
        assert self.woken <= self.closures + self.drains

    def teardown(self) -> None:
        for t in self.open():
            self.expect(CloseTunnel(tunnel=t.id))
        self.running = False
        self.policy.close(self.now)
        self.pump()
        for t in self.open():
            self.lose(t)
        self.wake_at = None
        assert self.policy.tunnels == [] and self.policy.retired == []
        assert self.policy.get_timer() is None
        dials = self.policy.dials
        self.policy.wake(self.now)
        self.policy.handle_timer(self.now + 100)
        assert self.policy.next_event() is None and self.policy.dials == dials


def test_bridge_policy_machine() -> None:
    run_state_machine_as_test(BridgeMachine, settings=MACHINE_SETTINGS)


# == bugs found by the machines ===========================================================
# Fixed ones, as policy-level regression tests.


def drained(policy: PortalPolicy | BridgePolicy) -> list[object]:
    out: list[object] = []
    while (event := policy.next_event()) is not None:
        out.append(event)
    return out


def test_portal_drained_tunnel_closes_after_a_pending_link_aborts() -> None:
    """An end aborted before its New frame went out used to stay counted until the flush,
    and nothing closed the drained tunnel once the flush dropped it. The adapter reports
    every count change, that one too."""
    policy = PortalPolicy(Timings(heartbeat_interval=1000, drain_after=1), urandom=fixed_urandom)
    tunnel = policy.tunnel_arrived(T0)
    policy.client_arrived(T0)  # 2 sessions opened > drain_after
    drained(policy)
    policy.handle_timer(T0 + 1000)  # the heartbeat timer fires: the tunnel drains
    assert drained(policy) == [SendControl(tunnel=tunnel, payload=DRAIN_BEAT, end=True)]
    policy.sessions_changed(T0 + 1000, tunnel, 1)  # the control session ended with it
    record = policy.tunnel(tunnel)
    assert record is not None and record.draining and drained(policy) == []

    # The only tunnel is draining: a new client gets it, and leaves at once.
    late = policy.client_arrived(T0 + 1000)
    assert drained(policy) == [OpenSession(tunnel=tunnel, client=late)]
    policy.sessions_changed(T0 + 1000, tunnel, 1)  # the first client left
    policy.sessions_changed(T0 + 1000, tunnel, 0)  # the late one, before its New frame
    assert drained(policy) == [CloseTunnel(tunnel=tunnel)]
    assert policy.tunnels == [] and policy.get_timer() is None


def test_portal_waiting_client_served_when_a_suspect_tunnel_recovers() -> None:
    """Waiting clients used to be served only when a tunnel was adopted."""
    policy = PortalPolicy(Timings(heartbeat_interval=1000, tunnel_wait=100), urandom=fixed_urandom)
    tunnel = policy.tunnel_arrived(T0)
    policy.keepalive(T0, tunnel)  # a raybridge bridge: its silence counts
    drained(policy)
    now = T0 + policy.timings.suspect_after + 1
    assert policy.pick(now) is None
    client = policy.client_arrived(now)
    assert drained(policy) == [] and policy.waiting == 1  # waits for a tunnel

    policy.heard(now + 0.5, tunnel)
    policy.keepalive(now + 0.5, tunnel)  # the bridge is heard again
    assert drained(policy) == [OpenSession(tunnel=tunnel, client=client)]
    assert policy.waiting == 0 and policy.pick(now + 0.5) == tunnel


def test_bridge_drain_while_a_backoff_wake_is_pending() -> None:
    """wake() used to ignore any request while a wake was pending, even a later one."""
    policy = BridgePolicy(Timings(backoff_base=10.0, backoff_cap=10.0), rng=random.Random(0))
    policy.start(T0)
    drained(policy)
    policy.tunnel_closed(T0, 1)  # the first dial fails
    assert policy.failures == 1 and policy.wake_at is not None and policy.wake_at > T0 + 7
    policy.check(T0 + 1)  # the monitor's tick comes before the backoff ends: it dials
    assert policy.dials == 2
    policy.control_received(T0 + 1, 2, ACTIVE)
    drained(policy)

    policy.control_received(T0 + 1.5, 2, DRAIN)
    assert drained(policy) == [TunnelStateChanged(tunnel=2, state=DRAIN)]
    assert policy.get_timer() == T0 + 1.5  # at once, as without the backoff
    policy.handle_timer(T0 + 1.5)
    assert [t.id for t in policy.retired] == [2] and [t.id for t in policy.tunnels] == [3]
    assert policy.dials == 3  # a replacement at once
    assert DialTunnel(tunnel=3, redial=True) in drained(policy)


def test_portal_drained_tunnel_delivers_sessions_that_end_together() -> None:
    """Sessions ending in one carrier read used to close a draining tunnel at the first of
    them, losing the rest: the worker reports the count once the read is dispatched, and a
    count above zero never closes it."""
    policy = PortalPolicy(Timings(heartbeat_interval=1000, drain_after=1), urandom=fixed_urandom)
    tunnel = policy.tunnel_arrived(T0)
    policy.client_arrived(T0)
    policy.client_arrived(T0)
    policy.handle_timer(T0 + 1000)
    drained(policy)
    policy.sessions_changed(T0 + 1000, tunnel, 2)  # the control session ended with the DRAIN
    policy.sessions_changed(T0 + 1000, tunnel, 1)
    assert drained(policy) == []
    policy.sessions_changed(T0 + 1000, tunnel, 0)
    assert drained(policy) == [CloseTunnel(tunnel=tunnel)]
