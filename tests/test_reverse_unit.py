"""Unit tests of the reverse proxy (``proxy/reverse.py``) against a scripted Mux.Cool peer.

No sockets and no nodes. A tunnel's carrier is a :class:`Recorder` end that collects what
the worker writes; the far side of the tunnel is a sans-IO ``MuxConnection`` of the opposite
role (:class:`MuxPeer`), fed from the carrier and answering through ``worker.write()``. The
bridge's dispatcher is a fake that hands out such carriers for ``domain:0`` and echo ends
for everything else. docs/protocols.md sections 2 and 3.

Timings are passed in (:data:`FAST`) so that no test waits more than a few hundredths of a
second, and the portal's heartbeat padding comes from a fixed ``urandom``; nothing asserts on
timing, only on what happened once a condition was met. The policy machines themselves are
tested without an event loop in ``test_reverse_policy.py`` and ``test_reverse_stateful.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import replace
from typing import Any, cast

import pytest

from raybridge.address import Destination, Network
from raybridge.dispatcher import Dispatcher
from raybridge.link import DeferredEnd, End, Session, join
from raybridge.protocols.mux import (
    FC_HELLO,
    FC_PAUSE,
    FC_RESUME,
    FrameDecoder,
    KeepAliveReceived,
    MuxConnection,
    MuxEvent,
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
    heartbeat,
)
from raybridge.protocols.reverse_policy import Timings
from raybridge.proxy.reverse import Bridge, BridgeTunnel, Portal, PortalTunnel
from raybridge.stats import Stats
from raybridge.transport.mux import FlowLimits, MuxSessionEnd, MuxWorker, buffered_total
from tests.support import until

DOMAIN = "tunnel.example"
TAG = "bridge"
PORTAL_TAG = "portal"
EXAMPLE = Destination(Network.TCP, "example.com", 80)
TUNNEL_DEST = Destination(Network.TCP, DOMAIN, 0)

#: What a heartbeat draws from _fixed_urandom: 7 bytes of padding, all 0x07 (docs/protocols.md 3.3).
PADDING = b"\x07" * 7
ACTIVE_BEAT = b"\x9a\x06\x07" + PADDING
DRAIN_BEAT = b"\x08\x01\x9a\x06\x07" + PADDING


def _fixed_urandom(n: int) -> bytes:
    """Heartbeats never draw empty padding (an empty ACTIVE message is not sent at all)."""
    return b"\x07" * n


#: The bridge's monitor only runs when a test calls check() or asks for a tick; heartbeat
#: timeouts only when a test makes one happen; backoff is a few milliseconds.
FAST = Timings(
    monitor_interval=100.0, heartbeat_timeout=100.0, backoff_base=0.002, backoff_cap=0.016
)


#: Each async test here is bounded at 10 s (a hang fails the test, it is not a timing assert).
pytestmark = pytest.mark.timeout(10)


def make_portal(**kwargs: Any) -> Portal:
    return Portal(PORTAL_TAG, DOMAIN, urandom=_fixed_urandom, **kwargs)


async def settle() -> None:
    """Let call_soon callbacks (scheduled flushes, wakes) run."""
    for _ in range(5):
        await asyncio.sleep(0)


#: Polls often: some conditions (``bridge.dials == n + 1``) hold only for a few milliseconds.
wait_until = functools.partial(until, timeout=3.0, step=0.002)


# -- ends and the scripted peer ------------------------------------------------------------


class Recorder(End):
    """A carrier or client end that records what it is given."""

    def __init__(self) -> None:
        self.peer: End | None = None
        self.received = bytearray()
        self.total = 0
        self.eof = False
        self.aborted = False
        self.abort_exc: BaseException | None = None
        self.paused = False

    def write(self, data: bytes) -> None:
        self.received += data
        self.total += len(data)

    def write_eof(self) -> None:
        self.eof = True

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = True
        self.abort_exc = exc

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def take(self) -> bytes:
        out = bytes(self.received)
        self.received.clear()
        return out


class Echo(End):
    """An outbound end on the bridge: writes back what it gets, one write per write."""

    def __init__(self, dest: Destination) -> None:
        self.dest = dest
        self.peer: End | None = None
        self.received = bytearray()
        self.writes: list[bytes] = []
        self.eof = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.received += data
        self.writes.append(bytes(data))
        if self.peer is not None:
            self.peer.write(data)

    def write_eof(self) -> None:
        self.eof = True
        if self.peer is not None:
            self.peer.write_eof()

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeDispatcher:
    """Records dispatches; ``domain:0`` gets a recording carrier, the rest an echo."""

    def __init__(self, domain: str = DOMAIN) -> None:
        self.domain = domain
        self.calls: list[tuple[Session, Destination, End]] = []
        self.carriers: list[Recorder] = []
        self.echoes: list[Echo] = []
        self.stats = Stats()

    def dispatch(self, session: Session, dest: Destination, peer: End) -> End:
        self.calls.append((session, dest, peer))
        if dest.host == self.domain and dest.port == 0:
            carrier = Recorder()
            join(peer, carrier)
            self.carriers.append(carrier)
            return carrier
        echo = Echo(dest)
        join(peer, echo)
        self.echoes.append(echo)
        return echo

    @property
    def targets(self) -> list[Destination]:
        return [dest for _, dest, _ in self.calls]


class MuxPeer:
    """The far side of a tunnel: a sans-IO MuxConnection fed from the carrier."""

    def __init__(self, role: Role, carrier: Recorder) -> None:
        self.codec = MuxConnection(role)
        self.carrier = carrier
        self.events: list[MuxEvent] = []
        self.opened: dict[int, SessionOpened] = {}
        self.data: dict[int, bytearray] = {}
        self.datagrams: dict[int, list[bytes]] = {}
        self.ended: dict[int, bool] = {}  # session ID -> Error bit seen

    @property
    def worker(self) -> MuxWorker:
        return cast(MuxWorker, self.carrier.peer)

    def pump(self) -> list[MuxEvent]:
        raw = self.carrier.take()
        events = self.codec.receive_data(raw) if raw else []
        for event in events:
            if isinstance(event, SessionOpened):
                sid = event.session_id
                self.opened[sid] = event
                self.data[sid] = bytearray(event.data)
                self.datagrams[sid] = [event.data] if event.data else []
            elif isinstance(event, SessionData):
                self.data.setdefault(event.session_id, bytearray()).extend(event.data)
                self.datagrams.setdefault(event.session_id, []).append(event.data)
            elif isinstance(event, SessionEnded):
                self.ended[event.session_id] = (
                    self.ended.get(event.session_id, False) or event.error
                )
        self.events += events
        return events

    def flush(self) -> None:
        out = self.codec.data_to_send()
        if out:
            self.worker.write(out)


# -- portal helpers --------------------------------------------------------------------------


def adopt(portal: Portal) -> tuple[Recorder, MuxWorker, MuxPeer]:
    """A bridge's tunnel arrives at the portal (routed to it with destination domain:0)."""
    carrier = Recorder()
    worker = portal.connect(Session(inbound_tag="vmess-in"), TUNNEL_DEST, carrier)
    assert isinstance(worker, MuxWorker)
    assert carrier.peer is worker and worker.peer is carrier
    peer = MuxPeer(Role.SERVER, carrier)
    peer.pump()
    return carrier, worker, peer


def client_link(portal: Portal, dest: Destination = EXAMPLE) -> tuple[Recorder, End]:
    client = Recorder()
    end = portal.connect(Session(inbound_tag="socks-in"), dest, client)
    assert client.peer is end
    return client, end


def tunnel_of(portal: Portal, worker: MuxWorker) -> PortalTunnel:
    (tunnel,) = [t for t in portal.tunnels if t.worker is worker]
    return tunnel


async def finish(peer: MuxPeer, end: End) -> None:
    """End a client session cleanly from both sides (the peer first)."""
    assert isinstance(end, MuxSessionEnd)
    peer.codec.half_close(end.sid)
    peer.flush()
    end.write_eof()
    await settle()
    peer.pump()
    peer.flush()


# -- portal ---------------------------------------------------------------------------------


async def test_portal_adopts_tunnel_and_sends_heartbeats() -> None:
    portal = make_portal(heartbeat_interval=0.01)
    carrier = Recorder()
    worker = portal.connect(Session(inbound_tag="vmess-in"), TUNNEL_DEST, carrier)
    assert isinstance(worker, MuxWorker) and worker.role is Role.CLIENT
    assert [t.worker for t in portal.tunnels] == [worker]
    # The control session's New frame goes out at once, the first heartbeat in it
    # (docs/protocols.md 3.3: META = 0001 01 01 02 0000 02 1a "reverse.internal.v2ray.com").
    # Before it, raybridge's flow-control announcement (a KeepAlive; V2Ray ignores it).
    raw = bytes(carrier.received)
    hello = encode_frame(0, Status.KEEPALIVE, data=FC_HELLO)
    head = bytes.fromhex("0023 0001 01 01 02 0000 02 1a") + b"reverse.internal.v2ray.com"
    assert raw == hello + head + len(ACTIVE_BEAT).to_bytes(2, "big") + ACTIVE_BEAT
    _, frame = FrameDecoder().feed(raw)
    assert frame.session_id == 1 and frame.status is Status.NEW
    assert frame.target == CONTROL_TARGET
    assert frame.target == Destination(Network.UDP, "reverse.internal.v2ray.com", 0)
    assert frame.data is not None and decode_control(frame.data) is ControlState.ACTIVE

    peer = MuxPeer(Role.SERVER, carrier)
    peer.pump()
    assert peer.opened[1].target == CONTROL_TARGET
    # More heartbeats follow, each one datagram on session 1 (Keep frames).
    await wait_until(lambda: peer.pump() is not None and len(peer.datagrams[1]) >= 4)
    assert all(d == ACTIVE_BEAT for d in peer.datagrams[1])
    assert all(decode_control(d) is ControlState.ACTIVE for d in peer.datagrams[1])
    assert list(peer.opened) == [1] and not peer.ended
    assert worker.session_count == 1
    await portal.close()


async def far_side_finishes_first(portal: Portal, worker: MuxWorker, peer: MuxPeer) -> None:
    """The second link of test_portal_client_link_relays_both_ways (session 3)."""
    client2, end2 = client_link(portal)
    assert isinstance(end2, MuxSessionEnd)
    end2.write(b"req")
    await settle()
    peer.pump()
    sid2 = end2.sid
    assert sid2 == 3 and peer.opened[sid2].target == EXAMPLE
    peer.codec.send_data(sid2, b"resp")
    peer.codec.half_close(sid2)
    peer.flush()
    assert client2.received == b"resp" and client2.eof and not client2.aborted
    if worker.codec.is_open(sid2):  # half-close semantics: we may still send
        end2.write(b"more")
        await settle()
        peer.pump()
        assert peer.data[sid2] == b"reqmore"
    end2.write_eof()
    await settle()
    peer.pump()
    assert peer.ended.get(sid2) is False
    assert not peer.codec.is_open(sid2) and not worker.codec.is_open(sid2)


async def test_portal_client_link_relays_both_ways() -> None:
    portal = make_portal(heartbeat_interval=60)
    carrier, worker, peer = adopt(portal)
    rng = random.Random(1)

    # Client finishes first.
    client, end = client_link(portal)
    assert isinstance(end, MuxSessionEnd) and end.worker is worker
    up = rng.randbytes(150_000)
    end.write(up[:10])
    end.write(up[10:])
    await settle()
    peer.pump()
    sid = end.sid
    assert sid == 2
    assert peer.opened[sid].target == EXAMPLE
    assert peer.data[sid] == up
    down = rng.randbytes(100_000)
    peer.codec.send_data(sid, down)
    peer.flush()
    assert client.received == down

    end.write_eof()
    await settle()
    peer.pump()
    assert peer.ended.get(sid) is False  # End without Error: the client's direction
    if peer.codec.is_open(sid):  # half-close semantics: the reply may go on
        peer.codec.send_data(sid, b"tail")
        peer.flush()
        assert client.received == down + b"tail"
    assert not client.eof
    peer.codec.half_close(sid)
    peer.flush()
    await settle()
    assert client.eof and not client.aborted
    assert not worker.codec.is_open(sid) and sid not in worker.sessions

    await far_side_finishes_first(portal, worker, peer)
    assert worker.session_count == 1  # the control session
    assert not carrier.eof and not carrier.aborted and not worker.closed
    await portal.close()


async def test_portal_udp_client_link_is_datagrams() -> None:
    portal = make_portal(heartbeat_interval=60)
    _, _, peer = adopt(portal)
    client, end = client_link(portal, Destination(Network.UDP, "dns.example", 53))
    end.write(b"query-1")
    end.write(b"query-22")
    await settle()
    peer.pump()
    assert isinstance(end, MuxSessionEnd)
    assert peer.opened[end.sid].target == Destination(Network.UDP, "dns.example", 53)
    assert peer.datagrams[end.sid] == [b"query-1", b"query-22"]
    peer.codec.send_data(end.sid, b"answer")
    peer.flush()
    assert client.received == b"answer"
    await portal.close()


@pytest.mark.parametrize("how", ["abort", "eof"])
async def test_portal_picks_least_loaded_and_never_a_closed_tunnel(how: str) -> None:
    portal = make_portal(heartbeat_interval=60)
    carrier_a, worker_a, peer_a = adopt(portal)
    _, worker_b, peer_b = adopt(portal)
    links = [client_link(portal) for _ in range(4)]
    # Counts (control included): 1/1 -> A, 2/1 -> B, 2/2 -> A, 3/2 -> B.
    assert [cast(MuxSessionEnd, e).worker for _, e in links] == [
        worker_a,
        worker_b,
        worker_a,
        worker_b,
    ]
    await settle()
    peer_a.pump()
    peer_b.pump()
    assert sorted(peer_a.opened) == [1, 2, 3] and sorted(peer_b.opened) == [1, 2, 3]

    # Tunnel A's carrier goes away; it leaves the list at once.
    if how == "abort":
        worker_a.abort(ConnectionResetError("carrier lost"))
    else:
        worker_a.write_eof()
    assert [t.worker for t in portal.tunnels] == [worker_b]
    assert links[0][0].aborted and links[2][0].aborted  # A's clients
    assert not links[1][0].aborted and not links[3][0].aborted
    carrier_a.take()

    # B has three sessions and the closed A none: B still gets every new link.
    for _ in range(5):
        _, end = client_link(portal)
        assert isinstance(end, MuxSessionEnd) and end.worker is worker_b
        end.write(b"x")
    assert portal.pick() is tunnel_of(portal, worker_b)
    await settle()
    peer_b.pump()
    assert carrier_a.received == b""
    assert sorted(peer_b.opened) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(peer_b.data[sid] == b"x" for sid in range(4, 9))
    await portal.close()


async def test_portal_pick_skips_a_closed_tunnel_still_listed() -> None:
    """V2Ray keeps a closed tunnel listed for up to 30 s and, with 0 sessions, picks it
    first (docs/protocols.md 3.2). Here the worker's close reaches the policy before anything
    else can pick: the empty, closed A is never chosen. (The policy only knows tunnels whose
    close has not been reported, so a closed one can no longer be listed: this test used to
    fake that by clearing the worker's close callbacks.)"""
    portal = make_portal(heartbeat_interval=60)
    _, worker_a, _ = adopt(portal)
    _, worker_b, _ = adopt(portal)
    _, first = client_link(portal)  # B would now lose to an empty A
    assert cast(MuxSessionEnd, first).worker is worker_a
    first.abort(ConnectionResetError("client left"))
    assert portal.pick() is tunnel_of(portal, worker_a)
    worker_a.abort(ConnectionResetError("carrier lost"))
    assert worker_a.closed and worker_a.session_count == 0
    assert portal.tunnels == [tunnel_of(portal, worker_b)]
    assert [r.id for r in portal.policy.tunnels] == [portal.tunnels[0].record.id]
    for _ in range(3):
        _, end = client_link(portal)
        assert isinstance(end, MuxSessionEnd) and end.worker is worker_b
    await portal.close()


async def test_portal_drains_after_drain_after_sessions() -> None:
    portal = make_portal(heartbeat_interval=0.01, drain_after=3)
    carrier_a, worker_a, peer_a = adopt(portal)
    tunnel_a = tunnel_of(portal, worker_a)
    links_a = [client_link(portal) for _ in range(3)]  # sessions 2..4: 4 allocated > 3
    assert all(cast(MuxSessionEnd, e).worker is worker_a for _, e in links_a)
    carrier_b, worker_b, _ = adopt(portal)
    tunnel_b = tunnel_of(portal, worker_b)
    links_b = [client_link(portal) for _ in range(2)]  # 3 allocated: not more than 3
    assert all(cast(MuxSessionEnd, e).worker is worker_b for _, e in links_b)

    await wait_until(lambda: tunnel_a.draining)
    await settle()
    peer_a.pump()
    # DRAIN on session 1, then End (no Error) for session 1.
    assert peer_a.datagrams[1][-1] == DRAIN_BEAT
    assert decode_control(peer_a.datagrams[1][-1]) is ControlState.DRAIN
    assert all(d == ACTIVE_BEAT for d in peer_a.datagrams[1][:-1])
    assert peer_a.ended == {1: False}
    assert not worker_a.codec.is_open(1)
    # No more heartbeats on a draining tunnel (its timer only watches the bridge now:
    # checked below, where A sends nothing more on session 1).
    assert not tunnel_b.draining
    assert not worker_a.closed  # its sessions go on

    # Two of A's sessions finish: A (draining) has 1 session, B has 3.
    for client, end in links_a[:2]:
        await finish(peer_a, end)
        assert client.eof and not client.aborted
    assert worker_a.session_count == 1 and worker_b.session_count == 3
    client, end = client_link(portal)
    assert isinstance(end, MuxSessionEnd) and end.worker is worker_b  # not the drained A

    # Time passes (B drains too now: 4 allocated); A sent nothing more on session 1.
    beats_a = len(peer_a.datagrams[1])
    await wait_until(lambda: tunnel_b.draining)
    peer_a.pump()
    assert len(peer_a.datagrams[1]) == beats_a

    # A's last session ends: the drained tunnel closes cleanly.
    assert not carrier_a.eof
    last_client, last_end = links_a[2]
    await finish(peer_a, last_end)
    assert last_client.eof and not last_client.aborted
    assert worker_a.closed and carrier_a.eof and not carrier_a.aborted
    assert tunnel_a not in portal.tunnels
    assert not carrier_b.eof and not worker_b.closed  # drained too, but still in use
    await portal.close()


async def test_portal_waiting_client_is_served_when_a_tunnel_arrives() -> None:
    portal = make_portal(heartbeat_interval=60, tunnel_wait=5)
    client, end = client_link(portal)
    assert isinstance(end, DeferredEnd)
    end.write(b"early")
    await settle()
    assert not client.aborted and not client.eof

    _, _, peer = adopt(portal)
    await settle()
    peer.pump()
    assert peer.opened[2].target == EXAMPLE
    assert peer.data[2] == b"early"
    assert portal.waiting == 0
    assert client.peer is not None
    client.peer.write(b" and later")
    await settle()
    peer.pump()
    assert peer.data[2] == b"early and later"
    peer.codec.send_data(2, b"served")
    peer.flush()
    assert client.received == b"served" and not client.aborted
    await portal.close()


async def test_portal_waiting_client_gives_up_after_tunnel_wait() -> None:
    portal = make_portal(heartbeat_interval=60, tunnel_wait=0.02)
    client, end = client_link(portal)
    assert isinstance(end, DeferredEnd)
    end.write(b"early")
    await wait_until(lambda: client.aborted)
    assert isinstance(client.abort_exc, ConnectionRefusedError)
    assert portal.waiting == 0
    # A tunnel that comes later opens nothing for it.
    _, worker, peer = adopt(portal)
    await settle()
    peer.pump()
    assert list(peer.opened) == [1] and worker.session_count == 1
    await portal.close()


async def test_portal_waiting_client_that_left_is_not_opened() -> None:
    portal = make_portal(heartbeat_interval=60, tunnel_wait=5)
    _, end = client_link(portal)
    end.abort(ConnectionResetError("client left"))
    _, worker, peer = adopt(portal)
    await settle()
    peer.pump()
    assert list(peer.opened) == [1] and worker.session_count == 1
    assert portal.waiting == 0
    await portal.close()


async def test_portal_without_tunnel_wait_refuses_at_once() -> None:
    portal = make_portal(tunnel_wait=0)
    client, end = client_link(portal)
    assert not isinstance(end, DeferredEnd)
    await settle()
    assert client.aborted and isinstance(client.abort_exc, ConnectionRefusedError)
    await portal.close()


async def test_portal_close_leaves_nothing_behind() -> None:
    portal = make_portal(heartbeat_interval=0.01, tunnel_wait=5)
    waiting, _ = client_link(portal)  # no tunnel yet
    await portal.close()
    assert waiting.aborted and isinstance(waiting.abort_exc, ConnectionAbortedError)
    assert portal.waiting == 0

    portal = make_portal(heartbeat_interval=0.01)
    changes: list[int] = []
    portal.listeners.append(lambda p: changes.append(len(p.tunnels)))
    carrier_a, worker_a, _ = adopt(portal)
    carrier_b, worker_b, _ = adopt(portal)
    client, _ = client_link(portal)
    assert changes == [1, 2]
    await portal.close()
    assert portal.tunnels == []
    assert portal._driver.handle is None and portal.policy.get_timer() is None
    assert worker_a.closed and worker_b.closed
    assert carrier_a.eof and carrier_b.eof
    assert client.aborted
    sent = (carrier_a.total, carrier_b.total)
    # Kept: nothing may be sent, and an absence shows only over time (several intervals).
    await asyncio.sleep(0.05)
    assert (carrier_a.total, carrier_b.total) == sent


async def test_portal_first_payload_rides_in_new_frame() -> None:
    portal = make_portal(heartbeat_interval=60)
    carrier, _, _ = adopt(portal)
    _, end = client_link(portal)
    end.write(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    frames = FrameDecoder().feed(carrier.take())
    assert frames[0].status is Status.NEW and frames[0].session_id == 2
    assert frames[0].data == b"GET / HTTP/1.1\r\n\r\n"
    await portal.close()


# -- bridge helpers ----------------------------------------------------------------------------


def make_bridge(
    rng: random.Random | None = None, timings: Timings = FAST
) -> tuple[Bridge, FakeDispatcher]:
    dispatcher = FakeDispatcher()
    return Bridge(TAG, DOMAIN, cast(Dispatcher, dispatcher), rng=rng, timings=timings), dispatcher


def open_control(dispatcher: FakeDispatcher, index: int = -1) -> MuxPeer:
    """The portal side of a tunnel: opens session 1 with an ACTIVE heartbeat."""
    peer = MuxPeer(Role.CLIENT, dispatcher.carriers[index])
    sid = peer.codec.open_session(CONTROL_TARGET, encode_control(ControlState.ACTIVE, b"abc"))
    assert sid == 1
    peer.flush()
    return peer


def tunnel_for(bridge: Bridge, worker: MuxWorker) -> BridgeTunnel:
    (tunnel,) = [t for t in bridge.tunnels if t.worker is worker]
    return tunnel


# -- bridge ----------------------------------------------------------------------------------


async def test_bridge_start_dials_one_tunnel() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    assert bridge.dials == 1 and len(dispatcher.calls) == 1
    session, dest, worker = dispatcher.calls[0]
    assert dest == TUNNEL_DEST
    assert session.inbound_tag == TAG and session.source is None and session.user is None
    assert isinstance(worker, MuxWorker) and worker.role is Role.SERVER
    assert worker.peer is dispatcher.carriers[0]
    assert [t.worker for t in bridge.tunnels] == [worker]
    await settle()
    assert bridge.dials == 1  # nothing else until the portal is heard or a check
    await bridge.close()


@pytest.mark.parametrize(
    "control",
    [
        CONTROL_TARGET,
        Destination(Network.UDP, "reverse.internal.v2fly.org", 0),
        Destination(Network.TCP, "reverse.internal.v2ray.com", 443),
    ],
)
async def test_bridge_control_session_is_never_dispatched(control: Destination) -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    tunnel = bridge.tunnels[0]
    peer = MuxPeer(Role.CLIENT, dispatcher.carriers[0])
    peer.codec.open_session(control, encode_control(ControlState.ACTIVE, b"xy"))
    peer.flush()
    await settle()
    assert dispatcher.targets == [TUNNEL_DEST]
    assert tunnel.heard and tunnel.active
    assert tunnel.worker.session_count == 1
    # The bridge sends nothing on the control session: only its KeepAlive frames.
    frames = FrameDecoder().feed(bytes(dispatcher.carriers[0].received))
    assert frames and all(f.status is Status.KEEPALIVE for f in frames)
    await bridge.close()


async def test_bridge_control_session_opened_with_an_empty_heartbeat_confirms_the_tunnel() -> None:
    # One heartbeat in 64 draws no padding: the portal's New frame then carries nothing.
    bridge, dispatcher = make_bridge()
    await bridge.start()
    tunnel = bridge.tunnels[0]
    bridge.policy.failures = 2  # dials that failed before the portal came up
    peer = MuxPeer(Role.CLIENT, dispatcher.carriers[0])
    peer.codec.open_session(CONTROL_TARGET, heartbeat(lambda n: bytes(n)))
    peer.flush()
    await settle()
    assert tunnel.heard and tunnel.active and bridge.failures == 0
    assert dispatcher.targets == [TUNNEL_DEST]
    await bridge.close()


async def test_bridge_dispatches_sessions_with_its_tag_and_echoes() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    peer = open_control(dispatcher)
    tunnel = bridge.tunnels[0]
    assert tunnel.heard and bridge.failures == 0
    rng = random.Random(2)

    # TCP, first payload in the New frame and more in Keep frames (split at 64 KiB).
    payload = rng.randbytes(200_000)
    sid = peer.codec.open_session(EXAMPLE, payload[:1000])
    peer.codec.send_data(sid, payload[1000:])
    peer.flush()
    await settle()
    peer.pump()
    session, dest, end = dispatcher.calls[1]
    assert dest == EXAMPLE
    assert session.inbound_tag == TAG and session.source is None and session.user is None
    assert isinstance(end, MuxSessionEnd) and end.sid == sid
    echo = dispatcher.echoes[0]
    assert echo.received == payload
    assert peer.data[sid] == payload  # byte-exact back

    # UDP: one datagram per write, both ways.
    udp = Destination(Network.UDP, "dns.example", 53)
    usid = peer.codec.open_session(udp, b"q1")
    peer.codec.send_data(usid, b"q22")
    peer.flush()
    await settle()
    peer.pump()
    assert dispatcher.targets[-1] == udp
    assert dispatcher.calls[-1][0].inbound_tag == TAG
    assert dispatcher.echoes[1].writes == [b"q1", b"q22"]
    assert peer.datagrams[usid] == [b"q1", b"q22"]

    # The portal ends the TCP session: EOF reaches the echo, whose EOF comes back.
    peer.codec.half_close(sid)
    peer.flush()
    await settle()
    peer.pump()
    assert echo.eof and not echo.aborted
    assert peer.ended.get(sid) is False
    assert not peer.codec.is_open(sid) and not tunnel.worker.codec.is_open(sid)
    assert tunnel.worker.session_count == 2  # control + UDP
    await bridge.close()


async def test_bridge_drain_dials_a_replacement_at_once() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    peer = open_control(dispatcher)
    old = bridge.tunnels[0]
    sid = peer.codec.open_session(EXAMPLE, b"before")
    peer.flush()
    await settle()
    peer.pump()

    peer.codec.send_data(1, encode_control(ControlState.DRAIN, b"pad"))
    peer.flush()
    assert old.state is ControlState.DRAIN and not old.active
    await settle()  # MONITOR_INTERVAL is 100 s: only the wake can have dialled
    assert bridge.dials == 2 and dispatcher.targets[-1] == TUNNEL_DEST
    assert old not in bridge.tunnels and len(bridge.tunnels) == 1
    # The drained tunnel stays open for its sessions.
    assert not old.worker.closed and not dispatcher.carriers[0].aborted
    peer.codec.send_data(sid, b" after")
    peer.flush()
    peer.pump()
    assert peer.data[sid] == b"before after"

    # The portal then ends the control session; the bridge ends its side too.
    peer.codec.end_session(1)
    peer.flush()
    await settle()
    frames = FrameDecoder().feed(dispatcher.carriers[0].take())
    assert [(f.session_id, f.status, int(f.option)) for f in frames] == [(1, Status.END, 0)]
    assert not old.worker.codec.is_open(1)
    await bridge.close()


async def test_bridge_opens_another_tunnel_above_16_sessions() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    peer = open_control(dispatcher)
    worker = bridge.tunnels[0].worker
    for _ in range(15):
        peer.codec.open_session(EXAMPLE)
    peer.flush()
    assert worker.session_count == 16  # control included
    bridge.check()
    assert bridge.dials == 1
    peer.codec.open_session(EXAMPLE)
    peer.flush()
    assert worker.session_count == 17
    bridge.check()
    assert bridge.dials == 2 and len(bridge.tunnels) == 2
    bridge.check()  # 17 // 2 tunnels: enough
    assert bridge.dials == 2
    await bridge.close()


async def test_bridge_failed_extra_dial_is_no_failure_while_a_tunnel_is_up() -> None:
    """A second tunnel that never reached the portal does not count towards the redial
    backoff while the first one is up and heard: the portal is reachable."""
    bridge, dispatcher = make_bridge()
    await bridge.start()
    open_control(dispatcher)  # the first tunnel is heard
    assert bridge.tunnels[0].heard and bridge.failures == 0
    bridge.dial()  # a second one (busy tunnel, or a dial still in flight)
    extra = bridge.tunnels[1]
    dispatcher.carriers[1].peer.abort(ConnectionRefusedError())  # it never connects
    assert extra.worker.closed and extra not in bridge.tunnels
    assert bridge.failures == 0
    # With no tunnel up, an unheard one that fails does count.
    first = bridge.tunnels[0]
    first.worker.abort(ConnectionResetError())
    await settle()
    lone = bridge.tunnels[0]
    assert not lone.heard
    dispatcher.carriers[-1].peer.abort(ConnectionRefusedError())
    assert bridge.failures == 1
    await bridge.close()


async def test_bridge_monitor_tick_tops_up() -> None:
    bridge, dispatcher = make_bridge(timings=replace(FAST, monitor_interval=0.01))
    await bridge.start()
    peer = open_control(dispatcher)
    for _ in range(16):
        peer.codec.open_session(EXAMPLE)
    peer.flush()
    await wait_until(lambda: bridge.dials == 2)
    await bridge.close()


async def test_bridge_drops_a_tunnel_without_heartbeats() -> None:
    timeout = 0.5
    bridge, dispatcher = make_bridge(timings=replace(FAST, heartbeat_timeout=timeout))
    await bridge.start()
    peer = open_control(dispatcher)
    old = bridge.tunnels[0]
    first_heard = old.last_control
    peer.codec.open_session(EXAMPLE, b"hi")
    peer.flush()
    echo = dispatcher.echoes[0]

    # A heartbeat refreshes the tunnel: one heard long ago, then a fresh one, is kept.
    # Kept, the sleeps here: time passing (past the heartbeat timeout) is the scenario.
    await asyncio.sleep(0.3)
    peer.codec.send_data(1, encode_control(ControlState.ACTIVE, b"beat"))
    peer.flush()
    await asyncio.sleep(0.3)
    assert asyncio.get_running_loop().time() - first_heard > timeout
    bridge.check()
    assert bridge.tunnels == [old] and bridge.dials == 1 and not old.worker.closed

    await asyncio.sleep(timeout + 0.1)
    bridge.check()
    carrier = dispatcher.carriers[0]
    assert carrier.aborted and isinstance(carrier.abort_exc, TimeoutError)
    assert old.worker.closed and echo.aborted
    assert old not in bridge.tunnels
    await settle()
    assert bridge.dials == 2 and len(bridge.tunnels) == 1
    assert not dispatcher.carriers[1].aborted
    assert bridge.failures == 0  # the tunnel had been heard: not a dial failure
    await bridge.close()


def _slow_session(limits: FlowLimits, *, raybridge_portal: bool):
    """A bridge with two sessions from the portal; the first one's destination is slow."""

    async def setup() -> tuple[Bridge, FakeDispatcher, MuxPeer, Recorder, int, int]:
        dispatcher = FakeDispatcher()
        bridge = Bridge(TAG, DOMAIN, cast(Dispatcher, dispatcher), limits=limits, timings=FAST)
        await bridge.start()
        peer = open_control(dispatcher)
        if raybridge_portal:
            peer.codec.send_keepalive(data=FC_HELLO)
        slow = peer.codec.open_session(EXAMPLE)
        fast = peer.codec.open_session(EXAMPLE)
        peer.flush()
        echo = dispatcher.echoes[0]
        assert echo.peer is not None
        echo.peer.pause_reading()  # the destination's socket is full
        return bridge, dispatcher, peer, dispatcher.carriers[0], slow, fast

    return setup()


async def test_a_slow_session_never_pauses_a_tunnel_to_a_v2ray_portal() -> None:
    # The portal cannot be asked to pause one session (V2Ray): past the soft limit for
    # longer than the grace, the slow session is ended; the tunnel is never paused.
    limits = FlowLimits(soft=100, hard=100_000, grace=0.05)
    bridge, _, peer, carrier, slow, fast = await _slow_session(limits, raybridge_portal=False)
    tunnel = bridge.tunnels[0]
    peer.codec.send_data(slow, b"z" * 1000)
    peer.codec.send_data(fast, b"fast")
    peer.flush()
    assert not carrier.paused and not tunnel.worker.peer_flow_control
    peer.pump()
    assert peer.data[fast] == b"fast"  # the other session goes on meanwhile
    await wait_until(lambda: peer.pump() is not None and slow in peer.ended)
    assert peer.ended[slow] is True  # End+Error: ended, not finished
    assert tunnel.worker.overflowed == 1
    peer.codec.send_data(fast, b"still")
    peer.flush()
    peer.pump()
    assert peer.data[fast] == b"faststill" and fast not in peer.ended
    assert not carrier.paused and not carrier.aborted
    assert buffered_total() == 0
    await bridge.close()


async def test_a_slow_session_beyond_the_hard_limit_is_ended_at_once() -> None:
    limits = FlowLimits(soft=100, hard=500, grace=100.0)
    bridge, _, peer, carrier, slow, _ = await _slow_session(limits, raybridge_portal=True)
    peer.codec.send_data(slow, b"z" * 1000)  # a portal that ignores FC_PAUSE
    peer.flush()
    peer.pump()
    assert peer.ended.get(slow) is True and not carrier.paused
    await bridge.close()


async def test_a_raybridge_portal_is_asked_to_pause_a_slow_session_only() -> None:
    limits = FlowLimits(soft=100, hard=100_000, grace=0.01)
    bridge, dispatcher, peer, carrier, slow, fast = await _slow_session(
        limits, raybridge_portal=True
    )
    tunnel = bridge.tunnels[0]
    peer.codec.send_data(slow, b"z" * 1000)
    peer.codec.send_data(fast, b"fast")
    peer.flush()
    assert tunnel.worker.peer_flow_control and not carrier.paused
    events = peer.pump()
    assert KeepAliveReceived(session_id=slow, data=FC_PAUSE) in events
    # Kept: longer than the grace, and no timer may end the session (an absence).
    await asyncio.sleep(0.03)  # FC_PAUSE was asked, no timer
    assert slow not in peer.ended and peer.data[fast] == b"fast"
    echo = dispatcher.echoes[0]
    assert echo.peer is not None
    echo.peer.resume_reading()
    assert echo.received == b"z" * 1000  # nothing lost
    events = peer.pump()
    assert KeepAliveReceived(session_id=slow, data=FC_RESUME) in events
    await bridge.close()


async def test_a_pause_from_the_far_end_stops_reading_that_session_only() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    peer = open_control(dispatcher)
    a = peer.codec.open_session(EXAMPLE)
    peer.codec.open_session(EXAMPLE)
    peer.flush()
    first, second = (Recorder(), Recorder())
    for echo, end in zip(dispatcher.echoes, (first, second), strict=True):
        assert echo.peer is not None
        echo.peer.peer = end  # watch what the session asks of its local peer
        end.peer = echo.peer
    peer.codec.send_keepalive(a, FC_PAUSE)
    peer.flush()
    assert first.paused and not second.paused
    tunnel = bridge.tunnels[0]
    tunnel.worker.pause_reading()  # the tunnel's link fills up: every session waits
    tunnel.worker.resume_reading()
    assert first.paused and not second.paused  # still paused by the far end
    peer.codec.send_keepalive(a, FC_RESUME)
    peer.flush()
    assert not first.paused
    await bridge.close()


async def test_bridge_backoff_grows_caps_and_resets() -> None:
    bridge, dispatcher = make_bridge(random.Random(7))
    delays: list[float] = []
    await bridge.start()
    failures = 6
    for n in range(1, failures + 1):
        carrier = dispatcher.carriers[-1]
        assert carrier.peer is not None
        carrier.peer.abort(ConnectionRefusedError("portal down"))  # the dial failed
        assert bridge.failures == n
        assert bridge.policy.wake_at is not None  # the redial waits
        delays.append(bridge.policy.redial_delay)
        await wait_until(lambda: bridge.dials == n + 1)  # noqa: B023 - awaited here
    assert len(delays) == failures
    base, cap = FAST.backoff_base, FAST.backoff_cap
    for i, delay in enumerate(delays):
        nominal = min(cap, base * 2**i)
        assert 0.75 * nominal <= delay <= 1.25 * nominal
    assert delays[0] < delays[2] < delays[3]  # grows (beyond the jitter)
    assert max(delays) <= 1.25 * cap  # capped

    # A tunnel that hears the portal resets the count; its loss redials at once.
    open_control(dispatcher)
    assert bridge.failures == 0
    carrier = dispatcher.carriers[-1]
    assert carrier.peer is not None
    carrier.peer.write_eof()  # the portal closed the tunnel
    assert carrier.eof and bridge.failures == 0
    assert bridge.policy.redial_delay == 0.0
    await wait_until(lambda: bridge.dials == failures + 2)
    await bridge.close()


async def test_bridge_ignores_malformed_control(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raybridge.reverse")
    bridge, dispatcher = make_bridge()
    await bridge.start()
    tunnel = bridge.tunnels[0]
    carrier = dispatcher.carriers[0]
    peer = MuxPeer(Role.CLIENT, carrier)
    peer.codec.open_session(CONTROL_TARGET, b"\x0f")  # wire type 7
    peer.flush()
    for bad in (b"\x08", b"\x9a\x06\x05ab", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"):
        peer.codec.send_data(1, bad)
        peer.flush()
    assert caplog.text.count("bad control message") == 4
    assert not tunnel.heard and tunnel.active and tunnel.state is ControlState.ACTIVE
    assert not tunnel.worker.closed and not carrier.aborted and not carrier.eof

    peer.codec.send_data(1, encode_control(ControlState.ACTIVE, b"ok"))
    peer.flush()
    assert tunnel.heard
    heard_at = tunnel.last_control
    peer.codec.send_data(1, b"\x0f")
    peer.flush()
    assert tunnel.state is ControlState.ACTIVE and tunnel.last_control == heard_at
    # The tunnel still works.
    sid = peer.codec.open_session(EXAMPLE, b"still here")
    peer.flush()
    peer.pump()
    assert peer.data[sid] == b"still here"
    await settle()
    assert bridge.dials == 1 and bridge.tunnels == [tunnel]
    await bridge.close()


async def test_bridge_close_leaves_nothing_behind() -> None:
    bridge, dispatcher = make_bridge(timings=replace(FAST, monitor_interval=0.01))
    await bridge.start()
    peer = open_control(dispatcher)
    peer.codec.open_session(EXAMPLE, b"x")
    peer.flush()
    worker = bridge.tunnels[0].worker
    bridge.wake(0.5)  # a pending wake, too
    await bridge.close()
    assert bridge._driver.handle is None and bridge.policy.get_timer() is None
    assert bridge.tunnels == []
    assert worker.closed and dispatcher.carriers[0].eof
    assert dispatcher.echoes[0].aborted
    dials = bridge.dials
    bridge.wake()
    await asyncio.sleep(0.05)  # kept: several monitor intervals in which no dial may happen
    assert bridge.dials == dials and bridge._driver.handle is None


async def test_bridge_close_closes_drained_tunnels() -> None:
    bridge, dispatcher = make_bridge()
    await bridge.start()
    peer = open_control(dispatcher)
    old = bridge.tunnels[0]
    peer.codec.open_session(EXAMPLE, b"busy")  # keeps the drained tunnel in use
    peer.codec.send_data(1, encode_control(ControlState.DRAIN, b""))
    peer.flush()
    await settle()
    assert old not in bridge.tunnels and bridge.dials == 2
    await bridge.close()
    assert dispatcher.carriers[1].eof  # the replacement is closed
    assert old.worker.closed and dispatcher.carriers[0].eof


# -- regressions, through the adapter (policy-level twins in test_reverse_stateful.py) -------


async def test_portal_drained_tunnel_closes_after_a_pending_link_aborts() -> None:
    portal = make_portal(heartbeat_interval=0.01, drain_after=1)
    _, worker, _ = adopt(portal)
    tunnel = portal.tunnels[0]
    _, first = client_link(portal)
    await settle()  # its New frame is out: 2 sessions opened > drain_after
    await wait_until(lambda: tunnel.draining)  # the heartbeat timer fired
    assert not worker.closed  # `first` is still open

    # The only tunnel is draining: a new client gets it, and leaves at once.
    _, late = client_link(portal)
    assert isinstance(late, MuxSessionEnd) and late.worker is worker and late.sid is None
    first.abort(ConnectionResetError("client left"))
    late.abort(ConnectionResetError("client left"))
    await settle()
    assert worker.session_count == 0
    assert worker.closed and portal.tunnels == []
    await portal.close()


async def test_portal_waiting_client_served_when_a_suspect_tunnel_recovers() -> None:
    portal = make_portal(heartbeat_interval=1000, tunnel_wait=100, suspect_after=0.05)
    _, _, peer = adopt(portal)
    peer.codec.send_keepalive()  # a raybridge bridge: its silence counts
    peer.flush()
    await asyncio.sleep(0.1)  # kept: the silence, longer than suspect_after, is the scenario
    assert portal.pick() is None
    client, end = client_link(portal)
    assert isinstance(end, DeferredEnd) and portal.waiting == 1  # waits for a tunnel

    peer.codec.send_keepalive()  # the bridge is heard again
    peer.flush()
    assert portal.pick() is portal.tunnels[0]
    assert portal.waiting == 0 and isinstance(client.peer, MuxSessionEnd)
    await portal.close()


async def test_bridge_drain_while_a_backoff_wake_is_pending() -> None:
    bridge, dispatcher = make_bridge(
        random.Random(0), replace(FAST, backoff_base=10.0, backoff_cap=10.0)
    )
    await bridge.start()
    first = dispatcher.carriers[0].peer
    assert first is not None
    first.abort(ConnectionRefusedError("portal down"))  # the first dial fails
    assert bridge.failures == 1 and bridge.policy.wake_at is not None
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


async def test_portal_drained_tunnel_delivers_sessions_that_end_together() -> None:
    portal = make_portal(heartbeat_interval=0.01, drain_after=1)
    carrier, worker, peer = adopt(portal)
    tunnel = portal.tunnels[0]
    client_a, a = client_link(portal)
    client_b, b = client_link(portal)
    a.write_eof()  # both clients have sent their requests
    b.write_eof()
    await settle()
    peer.pump()
    await wait_until(lambda: tunnel.draining)  # the heartbeat timer fired
    assert not worker.closed
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


async def test_portal_control_session_aborted_by_the_bridge_counts_at_once() -> None:
    """The control session is the codec's own (no session end): its End+Error still
    reaches the policy, so picks see the lower count."""
    portal = make_portal(heartbeat_interval=60)
    _, worker_a, peer_a = adopt(portal)
    _, worker_b, _ = adopt(portal)
    peer_a.codec.end_session(1, error=True)
    peer_a.flush()
    assert worker_a.session_count == 0 and portal.tunnels[0].record.sessions == 0
    _, end = client_link(portal)  # A has 0 sessions now, B its control one
    assert isinstance(end, MuxSessionEnd) and end.worker is worker_a
    _, end = client_link(portal)  # 1 / 1: the first
    assert isinstance(end, MuxSessionEnd) and end.worker is worker_a
    assert worker_b.session_count == 1
    await portal.close()


async def test_a_full_link_is_chosen_last_and_tops_up_the_bridge() -> None:
    """The carrier's backpressure reaches both policies (RELIABILITY.md, "One slow
    reader": a full link is shared)."""
    portal = make_portal(heartbeat_interval=60)
    _, worker_a, _ = adopt(portal)
    _, worker_b, _ = adopt(portal)
    worker_a.pause_reading()  # A's carrier is full
    for _ in range(3):
        _, end = client_link(portal)
        assert isinstance(end, MuxSessionEnd) and end.worker is worker_b
    worker_a.resume_reading()
    _, end = client_link(portal)
    assert isinstance(end, MuxSessionEnd) and end.worker is worker_a
    await portal.close()

    bridge, _ = make_bridge()
    await bridge.start()
    bridge.tunnels[0].worker.pause_reading()
    bridge.check()  # every tunnel's link is full: one more
    assert bridge.dials == 2
    bridge.check()  # the new one is not full
    assert bridge.dials == 2
    await bridge.close()
