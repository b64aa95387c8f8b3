"""The reverse proxy's policy machines (``protocols/reverse_policy.py``), scenario by scenario.

No event loop and no sleeping: time is the ``now`` each call passes, and a test moves it.
The hypothesis machines over the same classes are in ``tests/test_reverse_stateful.py``.
"""

from __future__ import annotations

import random
from dataclasses import replace

from raybridge.protocols.reverse import ControlState, decode_control, heartbeat
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

T0 = 1000.0
ACTIVE, DRAIN = ControlState.ACTIVE, ControlState.DRAIN


def urandom(n: int) -> bytes:
    return b"\x07" * n


def events(policy: BridgePolicy | PortalPolicy) -> list[object]:
    out: list[object] = []
    while (event := policy.next_event()) is not None:
        out.append(event)
    return out


def bridge(timings: Timings | None = None, seed: int = 0) -> BridgePolicy:
    policy = BridgePolicy(timings or Timings(), rng=random.Random(seed))
    policy.start(T0)
    return policy


def portal(**kwargs: float) -> PortalPolicy:
    return PortalPolicy(replace(Timings(), **kwargs), urandom=urandom)


# -- bridge -----------------------------------------------------------------------------------


def test_bridge_dials_at_start_then_ticks() -> None:
    policy = bridge()
    assert events(policy) == [DialTunnel(tunnel=1, redial=False), SendKeepAlive(tunnel=1)]
    assert policy.dials == 1 and [t.id for t in policy.tunnels] == [1]
    assert policy.get_timer() == T0 + 2.0  # the monitor's next tick
    policy.handle_timer(T0 + 1.0)  # not due: nothing
    assert events(policy) == [] and policy.get_timer() == T0 + 2.0
    policy.handle_timer(T0 + 2.0)  # a KeepAlive on the (unheard, but young) tunnel
    assert events(policy) == [SendKeepAlive(tunnel=1)]
    assert policy.get_timer() == T0 + 4.0


def test_bridge_confirms_a_tunnel_on_its_first_control_message() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0 + 0.1, 1, ACTIVE)
    assert events(policy) == [TunnelConfirmed(tunnel=1, failures=0)]
    policy.control_received(T0 + 0.2, 1, ACTIVE)
    assert events(policy) == []  # heard already, same state
    assert policy.tunnels[0].heard and policy.tunnels[0].last_control == T0 + 0.2


def test_bridge_backoff_grows_caps_jitters_and_resets() -> None:
    timings = Timings(backoff_base=0.05, backoff_cap=0.75, monitor_interval=1000.0)
    policy = bridge(timings, seed=7)
    expected_rng = random.Random(7)
    now = T0
    for n in range(1, 8):
        (dial, _) = events(policy)
        assert isinstance(dial, DialTunnel) and dial.redial == (n > 1)
        policy.tunnel_closed(now, dial.tunnel)  # the dial failed
        assert policy.failures == n
        nominal = min(0.75, 0.05 * 2 ** (n - 1))
        delay = nominal * expected_rng.uniform(0.75, 1.25)
        assert policy.redial_delay == delay and policy.wake_at == now + delay
        assert policy.get_timer() == now + delay
        now += delay
        policy.handle_timer(now)
    (dial, _) = events(policy)
    assert isinstance(dial, DialTunnel)
    # The portal is heard: the count resets, and losing that tunnel redials at once.
    policy.control_received(now, dial.tunnel, ACTIVE)
    assert events(policy) == [TunnelConfirmed(tunnel=dial.tunnel, failures=7)]
    assert policy.failures == 0
    policy.tunnel_closed(now + 1, dial.tunnel)
    assert policy.failures == 0 and policy.redial_delay == 0.0
    assert policy.get_timer() == now + 1  # due at once
    policy.handle_timer(now + 1)
    assert isinstance(events(policy)[0], DialTunnel)


def test_bridge_a_failed_extra_dial_is_no_failure_while_a_tunnel_is_up() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0, 1, ACTIVE)
    extra = policy.dial(T0 + 1)
    policy.tunnel_closed(T0 + 1, extra)  # never reached the portal, but 1 is up and heard
    assert policy.failures == 0 and policy.wake_at is None  # 1 is still active: no redial
    policy.tunnel_closed(T0 + 2, 1)
    assert policy.failures == 0  # it had been heard
    lone = policy.dial(T0 + 2)
    policy.tunnel_closed(T0 + 3, lone)  # no tunnel up: this one counts
    assert policy.failures == 1


def test_bridge_drain_retires_the_tunnel_and_dials_a_replacement() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0 + 1, 1, ACTIVE)
    policy.control_received(T0 + 1.5, 1, DRAIN)
    assert events(policy) == [
        TunnelConfirmed(tunnel=1, failures=0),
        TunnelStateChanged(tunnel=1, state=DRAIN),
    ]
    assert policy.get_timer() == T0 + 1.5  # the monitor runs at once
    policy.handle_timer(T0 + 1.5)
    assert events(policy) == [
        SendKeepAlive(tunnel=1),
        DialTunnel(tunnel=2, redial=True),
        SendKeepAlive(tunnel=2),
    ]
    assert [t.id for t in policy.retired] == [1] and [t.id for t in policy.tunnels] == [2]
    # The drained tunnel still gets KeepAlives until the portal closes it, and a portal
    # that re-activates it does not bring it back (V2Ray never undrains).
    policy.control_received(T0 + 2, 1, ACTIVE)
    policy.check(T0 + 2)
    assert events(policy) == [
        TunnelStateChanged(tunnel=1, state=ACTIVE),
        SendKeepAlive(tunnel=2),
        SendKeepAlive(tunnel=1),
    ]
    assert [t.id for t in policy.retired] == [1]
    policy.tunnel_closed(T0 + 3, 1)
    assert policy.retired == [] and policy.wake_at is None  # 2 is up: no redial


def test_bridge_drops_a_tunnel_that_hears_no_heartbeat() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0 + 1, 1, ACTIVE)
    events(policy)
    policy.check(T0 + 7.5)  # 6.5 s since the last Control message: kept
    assert events(policy) == [SendKeepAlive(tunnel=1)]
    policy.check(T0 + 8.5)  # 7.5 s: dropped, and replaced at once
    assert events(policy) == [
        SendKeepAlive(tunnel=1),
        DropTunnel(tunnel=1, reason="no heartbeat", silence=7.5),
        DialTunnel(tunnel=2, redial=True),
        SendKeepAlive(tunnel=2),
    ]
    assert policy.failures == 0  # it had been heard
    policy.tunnel_closed(T0 + 8.5, 1)  # the close of the dropped tunnel: already forgotten
    assert policy.failures == 0 and [t.id for t in policy.tunnels] == [2]


def test_bridge_tops_up_busy_or_full_tunnels() -> None:
    policy = bridge(Timings(max_tunnels=2))
    events(policy)
    policy.sessions_changed(T0, 1, 16)
    policy.check(T0 + 1)
    assert DialTunnel(tunnel=2, redial=True) not in events(policy)  # 16 per tunnel: enough
    policy.sessions_changed(T0, 1, 17)
    policy.check(T0 + 1)
    assert DialTunnel(tunnel=2, redial=True) in events(policy)
    policy.check(T0 + 1)  # 17 // 2: enough
    assert [type(e) for e in events(policy)] == [SendKeepAlive, SendKeepAlive]
    # Every tunnel's link is full: one more, up to max_tunnels.
    policy.sessions_changed(T0, 1, 1)
    policy.write_paused(T0, 1, True)
    policy.write_paused(T0, 2, True)
    policy.check(T0 + 1)
    assert not any(isinstance(e, DialTunnel) for e in events(policy))  # 2 == max_tunnels
    policy.tunnel_closed(T0 + 1, 2)
    policy.check(T0 + 1)
    assert DialTunnel(tunnel=3, redial=True) in events(policy)  # 1 tunnel, full


def test_bridge_dials_at_once_when_every_tunnel_nears_its_session_cap() -> None:
    """A burst: with a session cap, the bridge does not wait for its monitor tick once every
    heard tunnel is three quarters full, and dials one tunnel at a time."""
    policy = bridge(Timings(max_sessions=8))
    events(policy)
    policy.sessions_changed(T0, 1, 6)
    policy.handle_timer(T0 + 0.1)
    assert events(policy) == []  # not heard yet: its dial is still pending
    policy.control_received(T0 + 0.1, 1, ACTIVE)
    events(policy)
    policy.sessions_changed(T0 + 0.2, 1, 5)
    policy.handle_timer(T0 + 0.2)
    assert events(policy) == []  # 5 of 8: under three quarters
    policy.sessions_changed(T0 + 0.3, 1, 6)
    assert policy.get_timer() == T0 + 0.3
    policy.handle_timer(T0 + 0.3)
    assert DialTunnel(tunnel=2, redial=True) in events(policy)
    policy.sessions_changed(T0 + 0.4, 1, 7)
    policy.handle_timer(T0 + 0.4)
    assert not any(isinstance(e, DialTunnel) for e in events(policy))  # 2 not heard yet
    policy.control_received(T0 + 0.5, 2, ACTIVE)
    policy.sessions_changed(T0 + 0.5, 2, 2)
    policy.handle_timer(T0 + 0.5)
    assert not any(isinstance(e, DialTunnel) for e in events(policy))  # 2 has room


def test_bridge_without_a_session_cap_dials_only_at_its_ticks() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0 + 0.1, 1, ACTIVE)
    policy.sessions_changed(T0 + 0.1, 1, 5000)
    assert policy.get_timer() == T0 + 2.0
    policy.handle_timer(T0 + 2.0)
    assert DialTunnel(tunnel=2, redial=True) in events(policy)


def test_bridge_close_closes_every_tunnel_and_stops() -> None:
    policy = bridge()
    events(policy)
    policy.control_received(T0, 1, DRAIN)
    policy.check(T0)  # 1 retired, 2 dialled
    events(policy)
    policy.close(T0 + 1)
    assert events(policy) == [CloseTunnel(tunnel=2), CloseTunnel(tunnel=1)]
    assert policy.get_timer() is None and not policy.running
    policy.tunnel_closed(T0 + 1, 2)
    policy.wake(T0 + 1)
    policy.handle_timer(T0 + 10)
    assert events(policy) == [] and policy.failures == 0 and policy.dials == 2


# -- portal -----------------------------------------------------------------------------------


def test_portal_opens_the_control_session_and_heartbeats() -> None:
    policy = portal()
    tunnel = policy.tunnel_arrived(T0)
    assert events(policy) == [OpenControl(tunnel=tunnel, payload=heartbeat(urandom))]
    assert policy.get_timer() == T0 + 2.0
    policy.handle_timer(T0 + 2.0)
    (beat,) = events(policy)
    assert isinstance(beat, SendControl) and not beat.end
    assert decode_control(beat.payload) is ACTIVE
    assert policy.get_timer() == T0 + 4.0


def test_portal_never_sends_an_empty_heartbeat() -> None:
    policy = PortalPolicy(Timings(), urandom=lambda n: b"\x00" * n)  # draws no padding
    policy.tunnel_arrived(T0)
    assert events(policy) == [OpenControl(tunnel=1, payload=b"")]  # the New frame goes anyway
    policy.handle_timer(T0 + 2)
    assert events(policy) == []


def test_portal_picks_the_least_loaded_tunnel_preferring_free_links() -> None:
    policy = portal()
    a, b = policy.tunnel_arrived(T0), policy.tunnel_arrived(T0)
    events(policy)
    opened = []
    for _ in range(4):
        policy.client_arrived(T0)
        (event,) = events(policy)
        assert isinstance(event, OpenSession)
        opened.append(event.tunnel)
    assert opened == [a, b, a, b]  # ties go to the first
    policy.write_paused(T0, a, True)  # A's link is full: B even with more sessions
    policy.sessions_changed(T0, b, 9)
    assert policy.pick(T0) == b
    policy.write_paused(T0, b, True)  # both full: the least loaded again
    assert policy.pick(T0) == a
    policy.tunnel_closed(T0, a)
    assert policy.pick(T0) == b


def test_portal_skips_a_raybridge_tunnel_at_its_session_cap() -> None:
    """A tunnel whose bridge sends KeepAlives (raybridge, which refuses sessions past the
    cap) is not picked at the cap, the control session counted: the client waits and is
    served when a session ends. A V2Ray bridge's tunnel (no KeepAlives, no cap) is."""
    policy = portal(max_sessions=4, tunnel_wait=4.0)
    a = policy.tunnel_arrived(T0)
    policy.keepalive(T0, a)
    events(policy)
    policy.sessions_changed(T0, a, 3)  # the control session and 2 clients
    client = policy.client_arrived(T0)
    assert events(policy) == [] and policy.waiting == 1
    policy.sessions_changed(T0 + 1, a, 2)
    assert events(policy) == [OpenSession(tunnel=a, client=client)]
    v2 = portal(max_sessions=4)
    b = v2.tunnel_arrived(T0)
    events(v2)
    v2.sessions_changed(T0, b, 100)
    v2.client_arrived(T0)
    assert [type(e) for e in events(v2)] == [OpenSession]


def test_portal_drains_then_closes_when_the_last_session_ends() -> None:
    policy = portal(drain_after=2)
    a = policy.tunnel_arrived(T0)
    events(policy)
    for _ in range(2):
        policy.client_arrived(T0)
    events(policy)  # 3 sessions opened on A (the control one included) > 2
    b = policy.tunnel_arrived(T0 + 1)
    events(policy)
    policy.handle_timer(T0 + 2)
    (drain,) = events(policy)
    assert drain == SendControl(tunnel=a, payload=heartbeat(urandom, drain=True), end=True)
    assert decode_control(drain.payload) is DRAIN
    record = policy.tunnel(a)
    assert record is not None and record.draining
    policy.sessions_changed(T0 + 2, a, 2)  # the control session ended: two clients left
    assert policy.pick(T0 + 2) == b  # not the draining A
    policy.tunnel_closed(T0 + 2, b)
    assert policy.pick(T0 + 2) == a  # a draining tunnel still beats none
    policy.handle_timer(T0 + 4)
    assert events(policy) == []  # no more heartbeats on a draining tunnel
    policy.sessions_changed(T0 + 5, a, 1)
    assert events(policy) == []
    policy.sessions_changed(T0 + 5, a, 0)
    assert events(policy) == [CloseTunnel(tunnel=a)]
    assert policy.tunnels == [] and policy.get_timer() is None


def test_portal_suspects_then_drops_a_silent_bridge() -> None:
    policy = portal()
    a = policy.tunnel_arrived(T0)
    events(policy)
    policy.handle_timer(T0 + 2)
    events(policy)
    policy.heard(T0 + 10, a)  # bytes only: V2Ray's bridge, whose silence says nothing
    assert policy.pick(T0 + 100) == a
    policy.keepalive(T0 + 10, a)  # a raybridge bridge: its silence counts from now on
    assert policy.pick(T0 + 14.5) == a
    assert policy.pick(T0 + 14.6) is None  # suspect: not chosen
    policy.heard(T0 + 15, a)
    assert policy.pick(T0 + 15) == a  # heard again
    policy.handle_timer(T0 + 21.9)  # 6.9 s of silence: a heartbeat
    assert [type(e) for e in events(policy)] == [SendControl]
    policy.handle_timer(T0 + 24)  # 9 s: dropped
    assert events(policy) == [DropTunnel(tunnel=a, reason="bridge silent", silence=9.0)]
    assert policy.tunnels == []
    policy.tunnel_closed(T0 + 24, a)  # its close, reported later: nothing
    assert events(policy) == []


def test_portal_waiting_clients_are_served_when_a_tunnel_arrives() -> None:
    policy = portal(tunnel_wait=4.0)
    first, second, third = (policy.client_arrived(T0 + i) for i in range(3))
    assert events(policy) == [] and policy.waiting == 3
    assert policy.get_timer() == T0 + 4.0  # the first one's deadline
    policy.client_left(T0 + 3, second)
    assert policy.waiting == 3  # counted until the next serving pass
    a = policy.tunnel_arrived(T0 + 3)
    assert events(policy) == [
        OpenControl(tunnel=a, payload=heartbeat(urandom)),
        OpenSession(tunnel=a, client=first),
        OpenSession(tunnel=a, client=third),
    ]
    assert policy.waiting == 0 and policy.get_timer() == T0 + 5.0  # A's heartbeat


def test_portal_refuses_clients_it_cannot_keep_waiting() -> None:
    policy = portal(tunnel_wait=4.0, max_waiting=2)
    policy.client_arrived(T0)
    policy.client_arrived(T0 + 1)
    third = policy.client_arrived(T0 + 2)
    assert events(policy) == [
        RefuseClient(client=third, reason=Refusal.TOO_MANY_WAITING, waiting=2, refused=1)
    ]
    assert policy.refused_waiting == 1
    policy.handle_timer(T0 + 4.5)  # the first one's wait is over
    assert events(policy) == [
        RefuseClient(client=1, reason=Refusal.WAIT_EXPIRED, waiting=1, refused=1)
    ]
    assert policy.get_timer() == T0 + 5.0
    policy.close(T0 + 4.5)
    assert events(policy) == [RefuseClient(client=2, reason=Refusal.SHUTDOWN, waiting=0, refused=1)]
    assert policy.waiting == 0 and policy.get_timer() is None

    at_once = portal(tunnel_wait=0.0)
    client = at_once.client_arrived(T0)
    assert events(at_once) == [
        RefuseClient(client=client, reason=Refusal.NO_TUNNEL, waiting=0, refused=0)
    ]
