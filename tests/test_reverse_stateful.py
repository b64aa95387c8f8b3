"""Stateful tests of the reverse proxy's tunnel lists (``proxy/reverse.py``; PROTOCOLS.md 3).

Two hypothesis ``RuleBasedStateMachine``s drive a :class:`Portal` and a :class:`Bridge`
against scripted Mux.Cool peers, in the style of ``test_reverse_unit.py``: a tunnel's carrier
is a recording end, and the far side of the tunnel is a sans-IO ``MuxConnection`` of the
opposite role, fed from the carrier and answering through ``worker.write()``.

No sockets, no sleeping and no timing assertions. Each machine owns an event loop whose
clock only moves when a rule moves it (:class:`ManualClockLoop`): timers never fire by
themselves, so the monitor and heartbeat run when a rule calls ``check()`` /
``_heartbeat()``, and silence is made by moving ``last_received`` / ``last_control`` back.
Rules run with that loop set as the running loop but not running, so ``call_soon``
callbacks (scheduled flushes, the bridge's wake) wait for the ``settle`` rule: the machines
also see the states between an event and the callbacks it schedules.

Bugs these machines found are pinned at the end of the file: regression tests for the fixed
ones, an ``xfail(strict=True)`` test for each open one (the machines steer around those, where
noted).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pytest
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

import raybridge.proxy.reverse as reverse
from raybridge.address import Destination, Network
from raybridge.link import ClosedEnd, DeferredEnd, End, Session
from raybridge.protocols.mux import (
    FC_HELLO,
    KeepAliveReceived,
    MuxConnection,
    Role,
    SessionData,
    SessionEnded,
    SessionOpened,
    Status,
    encode_frame,
)
from raybridge.protocols.reverse import (
    CONTROL_TARGET,
    ControlState,
    decode_control,
    encode_control,
    is_control_target,
)
from raybridge.proxy.reverse import BridgeTunnel, Portal, PortalTunnel
from raybridge.transport.mux import MuxSessionEnd, MuxWorker
from tests.test_reverse_unit import (
    DOMAIN,
    EXAMPLE,
    PORTAL_TAG,
    TAG,
    TUNNEL_DEST,
    Echo,
    Recorder,
    _fixed_heartbeat,
    adopt,
    client_link,
    make_bridge,
    open_control,
    run,
    settle,
)

UDP_DEST = Destination(Network.UDP, "dns.example", 53)

#: Portal timing: the heartbeat timer never fires by itself (rules call _heartbeat()).
HEARTBEAT_INTERVAL = 1000.0
SUSPECT_AFTER = 4.5
PEER_TIMEOUT = 7.0

MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

payloads = st.binary(min_size=1, max_size=24)
indexes = st.integers(0, 15)


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    # Heartbeats never draw empty padding (so every one is a frame), and the bridge's
    # monitor never ticks by itself: a rule calls check(), and wakes fire when a rule moves
    # the clock.
    monkeypatch.setattr(reverse, "heartbeat", _fixed_heartbeat)
    monkeypatch.setattr(reverse, "MONITOR_INTERVAL", 1e9)


# -- the loop ------------------------------------------------------------------------------


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when a test sets :attr:`now`."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 10_000.0

    def time(self) -> float:
        return self.now


F = TypeVar("F", bound=Callable[..., Any])


def in_loop(method: F) -> F:
    """Run a rule or an invariant with the machine's loop as the running loop (not running:
    what it schedules waits for :meth:`LoopMachine.settle`)."""

    @functools.wraps(method)
    def wrapper(self: LoopMachine, *args: Any, **kwargs: Any) -> Any:
        outer = asyncio._get_running_loop()
        asyncio._set_running_loop(self.loop)
        try:
            return method(self, *args, **kwargs)
        finally:
            asyncio._set_running_loop(outer)

    return cast(F, wrapper)


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = ManualClockLoop()

    def settle(self) -> None:
        """Run loop iterations until no callback is ready (due timers included); from a rule
        running :func:`in_loop` too."""
        loop = self.loop
        inside = asyncio._get_running_loop() is loop
        asyncio._set_running_loop(None)
        try:
            for _ in range(100):
                loop.call_soon(loop.stop)
                loop.run_forever()
                if not loop._ready:  # type: ignore[attr-defined]
                    return
            raise AssertionError("callbacks keep scheduling callbacks")
        finally:
            if inside:
                asyncio._set_running_loop(loop)

    def live_timers(self) -> list[asyncio.TimerHandle]:
        scheduled = cast(list[asyncio.TimerHandle], self.loop._scheduled)  # type: ignore[attr-defined]
        return [h for h in scheduled if not h.cancelled()]

    def assert_quiet(self) -> None:
        assert self.live_timers() == []
        assert not self.loop._ready  # type: ignore[attr-defined]


def prefix(network: Network, part: list[bytes], whole: list[bytes]) -> bool:
    """``part`` is a prefix of ``whole``: as a byte stream (TCP) or as datagrams (UDP)."""
    if network is Network.UDP:
        return whole[: len(part)] == part
    return b"".join(whole).startswith(b"".join(part))


def same(network: Network, a: list[bytes], b: list[bytes]) -> bool:
    return prefix(network, a, b) and prefix(network, b, a)


def pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


# == portal ===============================================================================


@dataclass(eq=False)
class Stream:
    """One mux session as the scripted far side sees it."""

    network: Network
    received: list[bytes] = field(default_factory=list)
    echoed: list[bytes] = field(default_factory=list)
    got_eof: bool = False
    sent_eof: bool = False
    dead: bool = False


class ScriptedBridge:
    """The bridge side of one portal tunnel: a server-role MuxConnection that echoes."""

    def __init__(self, carrier: Recorder) -> None:
        self.codec = MuxConnection(Role.SERVER)
        self.carrier = carrier
        self.streams: dict[int, Stream] = {}
        self.control_sid: int | None = None
        self.control: list[ControlState] = []
        self.control_ended = False  # the portal ended the control session
        self.control_half_closed = False  # we did

    @property
    def worker(self) -> MuxWorker:
        return cast(MuxWorker, self.carrier.peer)

    def flush(self) -> bool:
        """Hand what we queued to the portal; whether anything was written."""
        out = self.codec.data_to_send()
        if out:
            self.worker.write(out)
        return bool(out)

    def _got(self, sid: int, stream: Stream, data: bytes) -> None:
        stream.received.append(data)
        if not stream.sent_eof and self.codec.is_open(sid):
            self.codec.send_data(sid, data)
            stream.echoed.append(data)

    def pump(self, echo_eof: bool, separate_ends: bool = False) -> bool:
        """Read what the portal sent and answer it: echo data, and EOF if ``echo_eof``; with
        ``separate_ends`` each End goes out in a write of its own."""
        wrote = False
        raw = self.carrier.take()
        events = self.codec.receive_data(raw) if raw else []
        for event in events:
            if isinstance(event, SessionOpened):
                sid = event.session_id
                if is_control_target(event.target):
                    self.control_sid = sid
                    if event.data:
                        self.control.append(decode_control(event.data))
                    continue
                stream = self.streams[sid] = Stream(event.target.network)
                if event.data:
                    self._got(sid, stream, bytes(event.data))
            elif isinstance(event, SessionData):
                sid = event.session_id
                if sid == self.control_sid:
                    self.control.append(decode_control(bytes(event.data)))
                else:
                    self._got(sid, self.streams[sid], bytes(event.data))
            elif isinstance(event, SessionEnded):
                sid = event.session_id
                if sid == self.control_sid:
                    self.control_ended = True
                    continue
                stream = self.streams[sid]
                if event.error:
                    stream.dead = True
                    continue
                stream.got_eof = True
                if echo_eof and not stream.sent_eof and self.codec.is_open(sid):
                    self.codec.half_close(sid)
                    stream.sent_eof = True
                    if separate_ends:
                        wrote = self.flush() or wrote
            else:
                # Portals send no KeepAlives but the flow-control announcement (FC_HELLO).
                assert not isinstance(event, KeepAliveReceived) or event.data == FC_HELLO
        return self.flush() or wrote


@dataclass(eq=False)
class PTunnel:
    """The machine's model of one tunnel at the portal."""

    carrier: Recorder
    worker: MuxWorker
    tunnel: PortalTunnel
    bridge: ScriptedBridge
    closed: bool = False
    draining: bool = False
    control_open: bool = True  # the control session is in the portal's session table
    keepalives: bool = False  # the bridge has sent one: silence counts
    silence: float = 0.0  # seconds since the bridge last wrote anything
    expect_drain_message: bool = False


@dataclass(eq=False)
class PLink:
    """A client link routed to the portal."""

    client: Recorder
    dest: Destination
    tunnel: PTunnel | None = None
    sent: list[bytes] = field(default_factory=list)
    waiting: bool = False
    refused: bool = False
    client_eof: bool = False  # the client ended its direction
    bridge_eof: bool = False  # the far side ended its direction
    client_aborted: bool = False
    killed: bool = False  # aborted from the portal's side (tunnel lost, far side, refused)
    waited: bool = False  # arrived while no tunnel could take it

    @property
    def finished(self) -> bool:
        return self.client_aborted or self.killed or (self.client_eof and self.bridge_eof)

    @property
    def end(self) -> End:
        assert self.client.peer is not None
        return self.client.peer

    @property
    def network(self) -> Network:
        return self.dest.network


class PortalMachine(LoopMachine):
    """Rules: tunnels arrive and close, client links open, send, end and abort, the scripted
    bridges echo, end or abort sessions, send KeepAlives, go silent, end the control session
    or send a New for an ID in use; heartbeat ticks (which drain); waiting clients give up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.portal = Portal(PORTAL_TAG, DOMAIN)  # replaced in setup
        self.tunnels: list[PTunnel] = []
        self.links: list[PLink] = []
        self.max_live = 3
        # Waiting clients are served when a tunnel arrives or a KeepAlive is heard. A suspect
        # tunnel heard again through other bytes takes them at the bridge's next KeepAlive
        # (KEEPALIVE_INTERVAL later at most): until then they may wait beside it.
        self.heard_without_keepalive = False

    @initialize(
        drain_after=st.integers(1, 4),
        tunnel_wait=st.sampled_from([0.0, 100.0]),
        max_live=st.sampled_from([1, 3]),
    )
    @in_loop
    def setup(self, drain_after: int, tunnel_wait: float, max_live: int) -> None:
        # One tunnel at a time often: its links then share it (drains with several open,
        # silences that leave no tunnel to choose).
        self.max_live = max_live
        self.portal = Portal(
            PORTAL_TAG,
            DOMAIN,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            drain_after=drain_after,
            tunnel_wait=tunnel_wait,
            peer_timeout=PEER_TIMEOUT,
            suspect_after=SUSPECT_AFTER,
        )

    # -- the model ---------------------------------------------------------------------------
    def live(self) -> list[PTunnel]:
        return [t for t in self.tunnels if not t.closed]

    def suspect(self, t: PTunnel) -> bool:
        return t.keepalives and t.silence > SUSPECT_AFTER

    def eligible(self) -> list[PTunnel]:
        return [t for t in self.live() if not self.suspect(t)]

    def open_links(self, t: PTunnel) -> list[PLink]:
        return [link for link in self.links if link.tunnel is t and not link.finished]

    def count(self, t: PTunnel) -> int:
        """Open sessions: the control session and the unfinished links."""
        return int(t.control_open) + len(self.open_links(t))

    def choices(self) -> list[PTunnel]:
        """Where a new link may go: among live, non-suspect tunnels, a non-draining one if
        any, and of those the ones with the fewest open sessions."""
        eligible = self.eligible()
        pool = [t for t in eligible if not t.draining] or eligible
        if not pool:
            return []
        low = min(self.count(t) for t in pool)
        return [t for t in pool if self.count(t) == low]

    def by_worker(self, worker: MuxWorker) -> PTunnel:
        (t,) = [t for t in self.tunnels if t.worker is worker]
        return t

    def heard_from(self, t: PTunnel, keepalive: bool = False) -> None:
        """The bridge wrote something on ``t``: the portal saw it alive just now."""
        if t.closed:
            return
        was_eligible = t in self.eligible()
        t.silence = 0.0
        if keepalive:
            t.keepalives = True
            self.waiting_served()
        elif not was_eligible and self.waiting():
            self.heard_without_keepalive = True

    def waiting_served(self) -> None:
        """A tunnel came, or a KeepAlive: every waiting client has one now, each the least
        loaded at its turn (in order of arrival)."""
        for link in self.links:
            if not link.waiting:
                continue
            link.waiting = False
            if link.finished:
                continue  # it left: dropped
            end = link.end
            assert isinstance(end, MuxSessionEnd), "a waiting client was not served"
            # Its New frame is queued (sid None) or, when the write went out at once, the
            # session is open on the worker.
            if end.sid is None:
                assert end in end.worker._pending
            else:
                assert end.worker.sessions[end.sid] is end
            chosen = self.by_worker(end.worker)
            assert chosen in self.choices()
            link.tunnel = chosen
        self.heard_without_keepalive = False
        assert self.portal._waiting == []

    def lost(self, t: PTunnel) -> None:
        t.closed = True
        for link in self.open_links(t):
            link.killed = True

    def stream(self, link: PLink) -> Stream | None:
        end = link.end
        if link.tunnel is None or not isinstance(end, MuxSessionEnd) or end.sid is None:
            return None
        return link.tunnel.bridge.streams.get(end.sid)

    def drained_if_idle(self, t: PTunnel) -> None:
        if t.draining and not t.closed and self.count(t) == 0:
            t.closed = True

    def check_echo(self, t: PTunnel) -> None:
        """Byte-exact echo: the far side got a prefix of what the client sent (all of it once
        the portal has flushed), and the client got exactly what the far side echoed."""
        # All the client wrote is on the far side: nothing queued, nothing unread.
        flushed = t.worker._flush_handle is None and not t.carrier.received
        for link in self.links:
            stream = self.stream(link) if link.tunnel is t else None
            if stream is None:
                continue
            got = bytes(link.client.received)
            echoed = b"".join(stream.echoed)
            assert prefix(link.network, stream.received, link.sent)
            assert echoed.startswith(got)
            if not link.finished:
                assert got == echoed
            if flushed and not (link.client_aborted or link.killed):
                assert same(link.network, stream.received, link.sent)
                if not stream.sent_eof:
                    assert got == b"".join(link.sent)

    # -- tunnels -------------------------------------------------------------------------
    @precondition(lambda self: len(self.live()) < self.max_live and len(self.tunnels) < 6)
    @rule()
    @in_loop
    def adopt(self) -> None:
        carrier = Recorder()
        worker = self.portal.connect(Session(inbound_tag="vmess-in"), TUNNEL_DEST, carrier)
        assert isinstance(worker, MuxWorker) and not worker.closed
        (tunnel,) = [t for t in self.portal.tunnels if t.worker is worker]
        bridge = ScriptedBridge(carrier)
        assert not bridge.pump(echo_eof=False)
        assert bridge.control_sid == 1 and bridge.control == [ControlState.ACTIVE]
        t = PTunnel(carrier, worker, tunnel, bridge)
        self.tunnels.append(t)
        self.waiting_served()

    @precondition(lambda self: any(not t.closed for t in self.tunnels))
    @rule(i=indexes, abort=st.booleans())
    @in_loop
    def carrier_closes(self, i: int, abort: bool) -> None:
        t = pick(self.live(), i)
        if abort:
            t.worker.abort(ConnectionResetError("carrier lost"))
        else:
            t.worker.write_eof()  # the carrier's EOF
            assert t.carrier.eof  # the worker ends its side too
        self.lost(t)
        assert t.worker.closed and t.tunnel not in self.portal.tunnels

    @precondition(lambda self: any(not t.closed for t in self.tunnels))
    @rule(i=indexes, every=st.booleans())
    @in_loop
    def heartbeat_tick(self, i: int, every: bool) -> None:
        """The heartbeat timer of one tunnel, or of each, fires."""
        for t in list(self.live()) if every else [pick(self.live(), i)]:
            if not t.closed:  # (a tunnel closing may not close another, but be safe)
                self.tick(t)

    def tick(self, t: PTunnel) -> None:
        handle = t.tunnel._timer
        assert handle is not None and not handle.cancelled()
        handle.cancel()  # the timer fires now
        before = t.worker.codec.allocated_total
        t.tunnel._heartbeat()
        if t.keepalives and t.silence > PEER_TIMEOUT:
            self.lost(t)
            assert t.carrier.aborted and isinstance(t.carrier.abort_exc, TimeoutError)
        elif not t.draining and before > self.portal.drain_after:
            t.draining = True
            t.expect_drain_message = t.control_open
            t.control_open = False
            self.drained_if_idle(t)
            if t.closed:
                assert t.carrier.eof and not t.carrier.aborted
        assert t.tunnel.draining == t.draining
        assert t.worker.closed == t.closed

    # -- client links --------------------------------------------------------------------
    @precondition(lambda self: sum(not link.finished for link in self.links) < 6)
    @rule(udp=st.booleans(), first=st.none() | payloads)
    @in_loop
    def open_link(self, udp: bool, first: bytes | None) -> None:
        expected = self.choices()
        dest = UDP_DEST if udp else EXAMPLE
        client, end = client_link(self.portal, dest)
        link = PLink(client, dest)
        self.links.append(link)
        if isinstance(end, MuxSessionEnd):
            link.tunnel = self.by_worker(end.worker)
            assert link.tunnel in expected
            assert end.sid is None and end in end.worker._pending
        elif isinstance(end, DeferredEnd):
            assert not expected and self.portal.tunnel_wait > 0
            link.waiting = True
        else:
            assert isinstance(end, ClosedEnd)
            assert not expected and self.portal.tunnel_wait == 0
            link.refused = link.killed = True
            return
        link.waited = link.waiting
        if first is not None:  # sent before the New frame goes out (or a tunnel comes)
            end.write(first)
            link.sent.append(first)

    def sendable(self) -> list[PLink]:
        return [link for link in self.links if not link.finished and not link.client_eof]

    @precondition(lambda self: self.sendable())
    @rule(i=indexes, data=payloads)
    @in_loop
    def client_sends(self, i: int, data: bytes) -> None:
        link = pick(self.sendable(), i)
        link.end.write(data)
        link.sent.append(data)

    @precondition(lambda self: self.sendable())
    @rule(i=indexes)
    @in_loop
    def client_eof(self, i: int) -> None:
        link = pick(self.sendable(), i)
        link.end.write_eof()
        link.client_eof = True
        if link.tunnel is not None:
            self.drained_if_idle(link.tunnel)

    @precondition(lambda self: any(not link.finished for link in self.links))
    @rule(i=indexes)
    @in_loop
    def client_aborts(self, i: int) -> None:
        link = pick([link for link in self.links if not link.finished], i)
        end = link.end
        end.abort(ConnectionResetError("client left"))
        link.client_aborted = True
        if isinstance(end, MuxSessionEnd) and end.sid is None:
            assert end not in end.worker._pending  # forgotten before its New frame
        if link.tunnel is not None:
            self.drained_if_idle(link.tunnel)

    def waiting(self) -> list[PLink]:
        return [link for link in self.links if link.waiting and not link.finished]

    @precondition(lambda self: self.waiting())
    @rule(i=indexes)
    @in_loop
    def waiting_client_gives_up(self, i: int) -> None:
        link = pick(self.waiting(), i)
        (entry,) = [e for e in self.portal._waiting if e[2] is link.end]
        entry[3].cancel()  # the tunnel_wait timer fires now
        self.portal._give_up(entry)
        assert link.client.aborted and isinstance(link.client.abort_exc, ConnectionRefusedError)
        link.killed = True
        link.waiting = False

    # -- the scripted bridges ------------------------------------------------------------
    def unread(self) -> list[PTunnel]:
        return [t for t in self.live() if t.carrier.received or t.worker._pending]

    @precondition(lambda self: self.unread())
    @rule(i=indexes, echo_eof=st.booleans(), settle_first=st.booleans())
    @in_loop
    def bridge_pumps(self, i: int, echo_eof: bool, settle_first: bool) -> None:
        t = pick(self.unread(), i)
        if settle_first:
            self.settle()
            self.after_settle()
            if t.closed:
                return
        ended = {sid for sid, s in t.bridge.streams.items() if s.sent_eof}
        # Known bug (test_portal_drained_tunnel_delivers_sessions_that_end_together): on a
        # draining tunnel, sessions that end in one read lose data. One End per write there.
        if t.bridge.pump(echo_eof, separate_ends=t.draining):
            self.heard_from(t)
        for link in self.open_links(t):
            end = link.end
            assert isinstance(end, MuxSessionEnd)
            stream = self.stream(link)
            if stream is not None and stream.sent_eof and end.sid not in ended:
                link.bridge_eof = True
        if t.expect_drain_message:
            assert t.bridge.control[-1] is ControlState.DRAIN and t.bridge.control_ended
            t.expect_drain_message = False
        assert ControlState.DRAIN not in t.bridge.control or t.draining
        self.drained_if_idle(t)
        self.check_echo(t)

    def bridge_streams(self) -> list[tuple[PLink, Stream]]:
        out = []
        for link in self.links:
            stream = self.stream(link)
            if stream is not None and not link.finished and not stream.sent_eof:
                out.append((link, stream))
        return out

    @precondition(lambda self: self.bridge_streams())
    @rule(i=indexes, error=st.booleans())
    @in_loop
    def bridge_ends_link(self, i: int, error: bool) -> None:
        link, stream = pick(self.bridge_streams(), i)
        t = link.tunnel
        assert t is not None
        end = link.end
        assert isinstance(end, MuxSessionEnd) and end.sid is not None
        if error:
            t.bridge.codec.end_session(end.sid, error=True)
            stream.dead = True
        else:
            t.bridge.codec.half_close(end.sid)
            stream.sent_eof = True
        assert t.bridge.flush()
        self.heard_from(t)
        if error:
            link.killed = True
            assert link.client.aborted
        else:
            link.bridge_eof = True
            assert link.client.eof
        assert end.closed == link.finished
        self.drained_if_idle(t)

    @precondition(lambda self: any(not t.closed for t in self.tunnels))
    @rule(i=indexes, silence=st.sampled_from([0.0, 3.0, 5.0, 8.0]))
    @in_loop
    def bridge_liveness(self, i: int, silence: float) -> None:
        """The bridge sends a KeepAlive (``silence == 0``), or nothing for ``silence`` more
        seconds (the carrier's last bytes are moved back in time)."""
        t = pick(self.live(), i)
        if not silence:
            t.bridge.codec.send_keepalive()
            assert t.bridge.flush()
            self.heard_from(t, keepalive=True)
            assert t.worker.keepalives_received > 0
            return
        t.worker.last_received -= silence
        t.silence += silence

    @precondition(lambda self: self.portal.tunnel_wait > 0 and self.live())
    @rule(i=indexes)
    @in_loop
    def bridge_hiccup(self, i: int) -> None:
        """Every bridge falls silent past SUSPECT_AFTER (after a KeepAlive, so that it
        counts); a client arrives and waits; one bridge is heard again: the client goes to
        a tunnel at once. (The steps, each a rule of its own, seldom come in this order.)"""
        for t in self.live():
            if not t.keepalives:
                self.bridge_liveness(self.live().index(t), 0.0)
            self.bridge_liveness(self.live().index(t), SUSPECT_AFTER + 0.5)
        assert not self.eligible()
        self.open_link(False, b"hello")
        link = self.links[-1]
        assert link.waiting
        self.bridge_liveness(i, 0.0)
        assert not link.waiting and link.tunnel is not None

    def bridge_controls(self) -> list[PTunnel]:
        return [
            t for t in self.live() if t.bridge.codec.is_open(1) and not t.bridge.control_half_closed
        ]

    @precondition(lambda self: self.bridge_controls())
    @rule(i=indexes, error=st.booleans())
    @in_loop
    def bridge_ends_control(self, i: int, error: bool) -> None:
        t = pick(self.bridge_controls(), i)
        if error:
            t.bridge.codec.end_session(1, error=True)
            t.control_open = False  # gone from the portal's table too (if still there)
            t.expect_drain_message = False  # we forgot the session: a DRAIN is dropped
        else:
            t.bridge.codec.half_close(1)
        t.bridge.control_half_closed = True
        assert t.bridge.flush()
        self.heard_from(t)

    @precondition(lambda self: any(not t.closed for t in self.tunnels))
    @rule(i=indexes, j=indexes, data=payloads)
    @in_loop
    def bridge_sends_duplicate_new(self, i: int, j: int, data: bytes) -> None:
        """A New for an ID in use, from the server side: the portal (the mux client) must
        ignore it (PROTOCOLS.md 2.3), whichever session holds the ID."""
        t = pick(self.live(), i)
        sid = pick([1, *t.bridge.streams], j)
        count = t.worker.session_count
        received = [bytes(link.client.received) for link in self.links]
        t.worker.write(encode_frame(sid, Status.NEW, target=EXAMPLE, data=data))
        self.heard_from(t)
        assert not t.worker.closed
        assert t.worker.session_count == count  # (the write flushed pending New frames)
        assert [bytes(link.client.received) for link in self.links] == received

    @precondition(lambda self: self.loop._ready)
    @rule()
    def settle_loop(self) -> None:
        self.settle()
        self.after_settle()

    def after_settle(self) -> None:
        for link in self.links:
            if link.refused:
                assert link.client.aborted
                assert isinstance(link.client.abort_exc, ConnectionRefusedError)
        for t in self.tunnels:
            self.drained_if_idle(t)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    @in_loop
    def tunnel_list(self) -> None:
        portal = self.portal
        assert all(not t.worker.closed for t in portal.tunnels)
        assert portal.tunnels == [t.tunnel for t in self.tunnels if not t.closed]
        for t in self.tunnels:
            assert t.worker.closed == t.closed
            assert t.tunnel.draining == t.draining
            if t.closed:
                assert t.tunnel._timer is None
                assert t.worker.sessions == {} and t.worker._pending == []
                assert t.worker.session_count == 0
            else:
                # Exactly one heartbeat timer per live tunnel.
                assert t.tunnel._timer is not None and not t.tunnel._timer.cancelled()
                assert t.worker.session_count == self.count(t)
                # Sessions ever opened: the control session and each link's New frame.
                assert t.worker.codec.allocated_total == 1 + sum(
                    1
                    for link in self.links
                    if link.tunnel is t and cast(MuxSessionEnd, link.end).sid is not None
                )

    @invariant()
    @in_loop
    def links_are_open_on_one_live_tunnel_or_ended(self) -> None:
        owners: dict[int, MuxWorker] = {}
        for t in self.tunnels:
            for end in [*t.worker.sessions.values(), *t.worker._pending]:
                if end.closed:
                    continue
                assert id(end) not in owners, "a session on two tunnels"
                owners[id(end)] = t.worker
        ours = set()
        for link in self.links:
            end = link.end
            client = link.client
            assert client.eof == link.bridge_eof
            if client.aborted:
                assert link.killed
            if link.killed and not link.refused:
                assert client.aborted or link.client_aborted
            if link.finished:
                if isinstance(end, MuxSessionEnd):
                    assert end.closed and id(end) not in owners
                continue
            if link.waiting:
                assert isinstance(end, DeferredEnd)
                assert any(e[2] is end for e in self.portal._waiting)
                # Nobody waits while a tunnel could take them (bar the known bug).
                assert not self.eligible() or self.heard_without_keepalive
                continue
            t = link.tunnel
            assert t is not None and not t.closed and t.tunnel in self.portal.tunnels
            assert isinstance(end, MuxSessionEnd) and not end.closed
            assert owners.get(id(end)) is t.worker
            if end.sid is None:
                assert end in t.worker._pending
            else:
                assert t.worker.sessions[end.sid] is end
            ours.add(id(end))
        assert ours == set(owners), "a session no client link owns"

    @invariant()
    @in_loop
    def no_stray_timers(self) -> None:
        # A heartbeat timer per live tunnel, an idle timer per open session end, a
        # tunnel_wait timer per waiting client: nothing else.
        ends = sum(
            1
            for t in self.live()
            for end in [*t.worker.sessions.values(), *t.worker._pending]
            if not end.closed
        )
        assert len(self.live_timers()) == len(self.live()) + ends + len(self.portal._waiting)

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.portal.close())
            self.settle()
            assert self.portal.tunnels == [] and self.portal._waiting == []
            for t in self.tunnels:
                assert t.worker.closed and t.tunnel._timer is None
                assert t.worker.sessions == {} and t.worker._pending == []
                assert t.worker.codec.session_count == 0
            for link in self.links:
                assert link.finished or link.client.aborted
            self.assert_quiet()
        finally:
            self.loop.close()


def test_portal_tunnel_list_machine() -> None:
    run_state_machine_as_test(PortalMachine, settings=MACHINE_SETTINGS)


# == bridge ===============================================================================


@dataclass(eq=False)
class PStream:
    """A session the scripted portal opened on a tunnel to the bridge (echoed there)."""

    network: Network
    dest: Destination
    echo: Echo
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    sent_eof: bool = False
    got_eof: bool = False
    dead: bool = False


class ScriptedPortal:
    """The portal side of one bridge tunnel: a client-role MuxConnection."""

    def __init__(self, carrier: Recorder) -> None:
        self.codec = MuxConnection(Role.CLIENT)
        self.carrier = carrier
        self.control_sid: int | None = None
        self.control_done = False  # we ended (or aborted) the control session
        self.control_ended = False  # the bridge ended its side of it
        self.streams: dict[int, PStream] = {}
        self.keepalives = 0

    @property
    def worker(self) -> MuxWorker:
        return cast(MuxWorker, self.carrier.peer)

    def flush(self) -> None:
        out = self.codec.data_to_send()
        if out:
            self.worker.write(out)

    def pump(self) -> None:
        raw = self.carrier.take()
        for event in self.codec.receive_data(raw) if raw else []:
            if isinstance(event, KeepAliveReceived):
                self.keepalives += 1
            elif isinstance(event, SessionData):
                assert event.session_id != self.control_sid, "the bridge never writes there"
                self.streams[event.session_id].received.append(bytes(event.data))
            elif isinstance(event, SessionEnded):
                if event.session_id == self.control_sid:
                    self.control_ended = True
                elif event.error:
                    self.streams[event.session_id].dead = True
                else:
                    self.streams[event.session_id].got_eof = True
            else:
                raise AssertionError(f"a bridge opened a session: {event}")

    def sendable(self) -> list[int]:
        return [
            sid
            for sid, s in self.streams.items()
            if not (s.dead or s.sent_eof) and self.codec.is_open(sid)
        ]


@dataclass(eq=False)
class BTunnel:
    """The machine's model of one tunnel the bridge dialled."""

    carrier: Recorder
    worker: MuxWorker
    tunnel: BridgeTunnel
    portal: ScriptedPortal
    closed: bool = False
    state: ControlState = ControlState.ACTIVE
    heard: bool = False
    silenced: bool = False  # last_control moved back past HEARTBEAT_TIMEOUT
    ever_drained: bool = False


class BridgeMachine(LoopMachine):
    """Rules: the scripted portal says hello, sends ACTIVE or DRAIN, ends or aborts the
    control session, opens, uses, ends, aborts and duplicates sessions, reads what the bridge
    sent, closes or aborts the carrier, goes silent; the monitor runs (``check()``), pending
    callbacks run, a delayed wake fires."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge, self.dispatcher = make_bridge(random.Random(0))
        self.tunnels: list[BTunnel] = []
        self.explicit_checks = 0
        self.all_checks = 0
        self.drains = 0  # ACTIVE -> DRAIN transitions: each may wake the monitor

    @initialize()
    def start(self) -> None:
        bridge = self.bridge
        check = bridge.check

        def counted() -> None:
            self.all_checks += 1
            check()

        bridge.check = counted  # type: ignore[method-assign]
        self.loop.run_until_complete(bridge.start())
        self.sync()
        assert bridge.dials == 1 and len(bridge.tunnels) == 1

    def sync(self) -> None:
        """Model the tunnels dialled since the last call."""
        bridge = self.bridge
        for carrier in self.dispatcher.carriers[len(self.tunnels) :]:
            worker = cast(MuxWorker, carrier.peer)
            (tunnel,) = [t for t in [*bridge.tunnels, *bridge.retired] if t.worker is worker]
            assert tunnel in bridge.tunnels and tunnel.active and not worker.closed
            self.tunnels.append(BTunnel(carrier, worker, tunnel, ScriptedPortal(carrier)))

    def live(self) -> list[BTunnel]:
        return [t for t in self.tunnels if not t.closed]

    def observe_timeouts(self) -> None:
        """A check the loop ran (a wake) may have dropped silent tunnels, and only those."""
        for t in self.live():
            if t.worker.closed:
                assert t.silenced and t.carrier.aborted
                assert isinstance(t.carrier.abort_exc, TimeoutError)
                t.closed = True

    def streams(self) -> list[tuple[BTunnel, int]]:
        return [(t, sid) for t in self.live() for sid in t.portal.sendable()]

    def controls(self) -> list[BTunnel]:
        return [t for t in self.live() if t.portal.control_sid is not None]

    def sent_control(self, t: BTunnel, state: ControlState) -> None:
        if state is ControlState.DRAIN and t.state is ControlState.ACTIVE:
            self.drains += 1
            t.ever_drained = True
        t.state = state
        t.heard = True
        t.silenced = False
        assert t.tunnel.state is state and t.tunnel.heard

    # -- the scripted portal -----------------------------------------------------------------
    @precondition(lambda self: any(t.portal.control_sid is None for t in self.live()))
    @rule(i=indexes)
    @in_loop
    def portal_says_hello(self, i: int) -> None:
        t = pick([t for t in self.live() if t.portal.control_sid is None], i)
        message = encode_control(ControlState.ACTIVE, b"hello")
        t.portal.control_sid = t.portal.codec.open_session(CONTROL_TARGET, message)
        t.portal.flush()
        self.sent_control(t, ControlState.ACTIVE)
        assert self.dispatcher.targets.count(CONTROL_TARGET) == 0  # never dispatched

    @precondition(lambda self: any(not t.portal.control_done for t in self.controls()))
    @rule(i=indexes, drain=st.booleans(), pad=payloads)
    @in_loop
    def portal_sends_control(self, i: int, drain: bool, pad: bytes) -> None:
        t = pick([t for t in self.controls() if not t.portal.control_done], i)
        assert t.portal.control_sid is not None
        state = ControlState.DRAIN if drain else ControlState.ACTIVE
        t.portal.codec.send_data(t.portal.control_sid, encode_control(state, pad))
        t.portal.flush()
        self.sent_control(t, state)

    @precondition(lambda self: any(not t.portal.control_done for t in self.controls()))
    @rule(i=indexes, error=st.booleans())
    @in_loop
    def portal_ends_control(self, i: int, error: bool) -> None:
        t = pick([t for t in self.controls() if not t.portal.control_done], i)
        sid = t.portal.control_sid
        assert sid is not None
        if error:
            t.portal.codec.end_session(sid, error=True)
        else:
            t.portal.codec.half_close(sid)
        t.portal.control_done = True
        t.portal.flush()
        t.portal.pump()
        assert t.portal.control_ended == (not error)  # the bridge ends its side in turn
        assert not t.worker.closed

    @precondition(lambda self: self.live())
    @rule(i=indexes, udp=st.booleans(), data=payloads)
    @in_loop
    def portal_opens_session(self, i: int, udp: bool, data: bytes) -> None:
        t = pick(self.live(), i)
        dest = UDP_DEST if udp else EXAMPLE
        sid = t.portal.codec.open_session(dest, data)
        echoes = len(self.dispatcher.echoes)
        t.portal.flush()
        assert len(self.dispatcher.echoes) == echoes + 1
        session, target, end = self.dispatcher.calls[-1]
        assert target == dest and session.inbound_tag == TAG
        assert isinstance(end, MuxSessionEnd) and end.worker is t.worker and end.sid == sid
        t.portal.streams[sid] = PStream(dest.network, dest, self.dispatcher.echoes[-1], [data])

    @precondition(lambda self: self.streams())
    @rule(i=indexes, data=payloads)
    @in_loop
    def portal_sends(self, i: int, data: bytes) -> None:
        t, sid = pick(self.streams(), i)
        t.portal.codec.send_data(sid, data)
        t.portal.streams[sid].sent.append(data)
        t.portal.flush()

    @precondition(lambda self: self.streams())
    @rule(i=indexes, error=st.booleans())
    @in_loop
    def portal_ends_session(self, i: int, error: bool) -> None:
        t, sid = pick(self.streams(), i)
        stream = t.portal.streams[sid]
        if error:
            t.portal.codec.end_session(sid, error=True)
            stream.dead = True
        else:
            t.portal.codec.half_close(sid)
            stream.sent_eof = True
        t.portal.flush()
        if error:
            assert stream.echo.aborted and not stream.echo.eof
        else:
            assert stream.echo.eof and not stream.echo.aborted
        assert sid not in t.worker.sessions or not error

    @precondition(lambda self: self.streams())
    @rule(i=indexes, data=payloads)
    @in_loop
    def portal_duplicates_session(self, i: int, data: bytes) -> None:
        """A New for an ID that is open: the bridge aborts the old session and serves the new
        one (PROTOCOLS.md 2.3, raybridge's choice); no End goes out for the old one."""
        t, sid = pick(self.streams(), i)
        t.portal.pump()
        old = t.portal.streams[sid]
        if old.got_eof:
            return  # the bridge has ended its side: the ID is no longer "open" there
        echoes = len(self.dispatcher.echoes)
        t.worker.write(encode_frame(sid, Status.NEW, target=old.dest, data=data))
        assert old.echo.aborted
        assert len(self.dispatcher.echoes) == echoes + 1
        fresh = PStream(old.network, old.dest, self.dispatcher.echoes[-1], [data])
        t.portal.streams[sid] = fresh
        t.portal.pump()
        assert not fresh.dead and not fresh.got_eof
        assert fresh.received == [data]

    @precondition(lambda self: self.live())
    @rule(i=indexes)
    @in_loop
    def portal_reads(self, i: int) -> None:
        t = pick(self.live(), i)
        t.portal.pump()
        # Every session works, on a drained tunnel too: byte-exact echo.
        for stream in t.portal.streams.values():
            if stream.dead:
                continue
            assert same(stream.network, stream.received, stream.sent)
            assert stream.got_eof == stream.sent_eof

    @precondition(lambda self: self.live())
    @rule(i=indexes, abort=st.booleans())
    @in_loop
    def carrier_closes(self, i: int, abort: bool) -> None:
        t = pick(self.live(), i)
        if abort:
            t.worker.abort(ConnectionResetError("carrier lost"))
        else:
            t.worker.write_eof()
        t.closed = True
        for stream in t.portal.streams.values():
            # (A session we ended cleanly is over: the echo ended its side at once.)
            if not (stream.dead or stream.sent_eof):
                assert stream.echo.aborted

    @precondition(lambda self: self.live())
    @rule(i=indexes)
    @in_loop
    def portal_goes_silent(self, i: int) -> None:
        t = pick(self.live(), i)
        t.tunnel.last_control -= reverse.HEARTBEAT_TIMEOUT + 1
        t.silenced = True

    # -- the bridge's own activity ---------------------------------------------------------
    @rule()
    @in_loop
    def check(self) -> None:
        bridge = self.bridge
        before = list(bridge.tunnels)
        doomed = [t for t in self.live() if t.tunnel in before and t.tunnel.active and t.silenced]
        spared = [t for t in self.live() if t not in doomed]
        sent = [t.carrier.total for t in spared]
        self.explicit_checks += 1
        bridge.check()
        for t in doomed:
            t.closed = True
            assert t.worker.closed and t.carrier.aborted
            assert isinstance(t.carrier.abort_exc, TimeoutError)
        for t, total in zip(spared, sent, strict=True):
            assert not t.worker.closed
            assert t.carrier.total > total  # a KeepAlive
        # While running there is always a tunnel: an active one or one being dialled.
        assert bridge.tunnels and all(t.active for t in bridge.tunnels)
        self.sync()

    @precondition(lambda self: self.loop._ready)
    @rule()
    def settle_loop(self) -> None:
        self.settle()
        self.observe_timeouts()
        self.sync()
        # Drained tunnels have left the list, even with a redial backoff pending.
        assert all(t.active for t in self.bridge.tunnels)

    @precondition(
        lambda self: (
            isinstance(self.bridge._wake, asyncio.TimerHandle) and not self.bridge._wake.cancelled()
        )
    )
    @rule()
    def backoff_elapses(self) -> None:
        wake = self.bridge._wake
        assert isinstance(wake, asyncio.TimerHandle)
        self.loop.now = max(self.loop.now, wake.when())
        self.settle()
        self.observe_timeouts()
        self.sync()
        assert self.bridge._wake is None or self.bridge._wake is not wake

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def tunnel_lists(self) -> None:
        bridge = self.bridge
        tunnels, retired = bridge.tunnels, bridge.retired
        assert len({id(t) for t in tunnels}) == len(tunnels)
        assert len({id(t) for t in retired}) == len(retired)
        assert not {id(t) for t in tunnels} & {id(t) for t in retired}
        assert all(not t.worker.closed for t in [*tunnels, *retired])
        for m in self.tunnels:
            assert m.worker.closed == m.closed
            assert m.tunnel.state is m.state and m.tunnel.heard == m.heard
            where = (m.tunnel in tunnels) + (m.tunnel in retired)
            assert where == (0 if m.closed else 1)
            if m.tunnel in retired:
                # Drained (V2Ray never un-drains; one the portal re-activates stays here).
                assert m.ever_drained
            if m.tunnel in tunnels and not m.tunnel.active:
                # A check is on its way to retire it, at once (not after a backoff).
                assert bridge._wake is not None
                assert not isinstance(bridge._wake, asyncio.TimerHandle)
            if m.closed:
                assert m.worker.sessions == {} and m.worker.codec.session_count == 0
        assert any(t.active for t in tunnels) or bridge._wake is not None

    @invariant()
    def dials_are_bounded(self) -> None:
        bridge = self.bridge
        assert bridge.dials == len(self.dispatcher.carriers) == len(self.tunnels)
        closures = sum(1 for m in self.tunnels if m.closed)
        woken = self.all_checks - 1 - self.explicit_checks  # start() ran the first
        assert woken <= closures + self.drains
        assert bridge.dials <= 1 + self.explicit_checks + closures + self.drains

    @invariant()
    def no_stray_timers(self) -> None:
        bridge = self.bridge
        ends = sum(len(t.worker.sessions) for t in self.live())
        delayed = isinstance(bridge._wake, asyncio.TimerHandle)
        assert bridge._timer is not None
        assert len(self.live_timers()) == 1 + delayed + ends

    def teardown(self) -> None:
        try:
            bridge = self.bridge
            self.loop.run_until_complete(bridge.close())
            dials = bridge.dials
            self.settle()
            assert bridge.tunnels == [] and bridge.retired == []
            assert bridge._timer is None and bridge._wake is None
            assert bridge.dials == dials
            for m in self.tunnels:
                assert m.worker.closed
                assert m.worker.sessions == {} and m.worker.codec.session_count == 0
            assert all(echo.aborted or echo.eof for echo in self.dispatcher.echoes)
            self.assert_quiet()
        finally:
            self.loop.close()


def test_bridge_tunnel_list_machine() -> None:
    run_state_machine_as_test(BridgeMachine, settings=MACHINE_SETTINGS)


# == bugs found by the machines ===========================================================
# Fixed ones: regression tests.


def test_portal_drained_tunnel_closes_after_a_pending_link_aborts() -> None:
    """An end aborted before its New frame went out used to stay counted until the flush,
    and nothing closed the drained tunnel once the flush dropped it."""

    async def main() -> None:
        portal = Portal(PORTAL_TAG, DOMAIN, heartbeat_interval=1000, drain_after=1)
        _, worker, _ = adopt(portal)
        tunnel = portal.tunnels[0]
        _, first = client_link(portal)
        await settle()  # its New frame is out: 2 sessions opened > drain_after
        assert tunnel._timer is not None
        tunnel._timer.cancel()
        tunnel._heartbeat()  # the heartbeat timer fires: the tunnel drains
        assert tunnel.draining and not worker.closed  # `first` is still open

        # The only tunnel is draining: a new client gets it, and leaves at once.
        _, late = client_link(portal)
        assert isinstance(late, MuxSessionEnd) and late.worker is worker
        first.abort(ConnectionResetError("client left"))
        late.abort(ConnectionResetError("client left"))
        await settle()
        assert worker.session_count == 0
        assert worker.closed  # stays open: no session will ever end on it to close it
        await portal.close()

    run(main)


def test_portal_waiting_client_served_when_a_suspect_tunnel_recovers() -> None:
    """Waiting clients used to be served only when a tunnel was adopted."""

    async def main() -> None:
        portal = Portal(PORTAL_TAG, DOMAIN, heartbeat_interval=1000, tunnel_wait=100)
        _, worker, peer = adopt(portal)
        peer.codec.send_keepalive()  # a raybridge bridge: its silence counts
        peer.flush()
        worker.last_received -= portal.suspect_after + 1
        assert portal.pick() is None
        client, end = client_link(portal)
        assert isinstance(end, DeferredEnd)  # waits for a tunnel

        peer.codec.send_keepalive()  # the bridge is heard again
        peer.flush()
        assert portal.pick() is portal.tunnels[0]
        await settle()
        assert portal._waiting == []  # still waiting
        assert isinstance(client.peer, MuxSessionEnd)
        await portal.close()

    run(main)


def test_bridge_drain_while_a_backoff_wake_is_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """wake() used to ignore any request while a wake was pending, even a later one."""
    monkeypatch.setattr(reverse, "BACKOFF_BASE", 10.0)
    monkeypatch.setattr(reverse, "BACKOFF_CAP", 10.0)

    async def main() -> None:
        bridge, dispatcher = make_bridge(random.Random(0))
        await bridge.start()
        first = dispatcher.carriers[0].peer
        assert first is not None
        first.abort(ConnectionRefusedError("portal down"))  # the first dial fails
        assert bridge.failures == 1 and isinstance(bridge._wake, asyncio.TimerHandle)
        bridge.check()  # the monitor's tick comes before the backoff ends: it dials
        assert bridge.dials == 2
        peer = open_control(dispatcher)
        tunnel = bridge.tunnels[0]

        peer.codec.send_data(1, encode_control(ControlState.DRAIN, b"pad"))
        peer.flush()
        assert tunnel.state is ControlState.DRAIN
        await settle()
        assert tunnel not in bridge.tunnels and tunnel in bridge.retired
        assert bridge.dials == 3  # a replacement at once, as without the backoff
        await bridge.close()

    run(main)


def test_portal_drained_tunnel_delivers_sessions_that_end_together() -> None:
    async def main() -> None:
        portal = Portal(PORTAL_TAG, DOMAIN, heartbeat_interval=1000, drain_after=1)
        carrier, worker, peer = adopt(portal)
        tunnel = portal.tunnels[0]
        client_a, a = client_link(portal)
        client_b, b = client_link(portal)
        a.write_eof()  # both clients have sent their requests
        b.write_eof()
        await settle()
        peer.pump()
        assert tunnel._timer is not None
        tunnel._timer.cancel()
        tunnel._heartbeat()  # the heartbeat timer fires: the tunnel drains
        assert tunnel.draining and not worker.closed
        assert isinstance(a, MuxSessionEnd) and isinstance(b, MuxSessionEnd)
        assert a.sid is not None and b.sid is not None

        # The bridge finishes both replies; the portal reads it all at once.
        peer.codec.half_close(a.sid)
        peer.codec.send_data(b.sid, b"tail")
        peer.codec.half_close(b.sid)
        peer.flush()
        assert client_a.eof and not client_a.aborted
        assert not client_b.aborted  # (was aborted by the tunnel's close)
        assert client_b.received == b"tail" and client_b.eof  # (was lost)
        assert worker.closed and carrier.eof and not carrier.aborted
        await portal.close()

    run(main)
