"""Per-session isolation on one Mux.Cool connection, under hypothesis-chosen read rates.

Two raybridge mux workers (a portal-like client and a bridge-like server) joined by an
in-memory carrier. On the server side every session's source pushes data as fast as it is
let; on the client side one session's reader drains at a rate hypothesis picks (possibly
zero), the others drain everything at once. Whatever the rate, the fast sessions receive all
of their data while the slow one is held, the slow one loses nothing, what the client holds
stays within its soft limit plus what was in flight, and the carrier is never paused.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.address import Destination, Network
from raybridge.link import End, Session
from raybridge.protocols.mux import Role, SessionOpened
from raybridge.transport.mux import FlowLimits, MuxWorker, buffered_total

TARGET = Destination(Network.TCP, "example.com", 80)
BLOCK = bytes(range(256)) * 64  # 16 KiB


class Wire(End):
    """One direction of the carrier: delivers on the next loop pass, like a socket."""

    def __init__(self) -> None:
        self.peer: End | None = None
        self.to: End | None = None  # the worker at the far end
        self.paused = False

    def write(self, data: bytes) -> None:
        to = self.to
        if to is not None:
            asyncio.get_running_loop().call_soon(to.write, bytes(data))

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True  # the worker stopped reading the carrier: must never happen

    def resume_reading(self) -> None:
        self.paused = False


class Source(End):
    """The server side's destination: pushes ``total`` bytes while not paused, four blocks
    per loop pass (what a socket read hands over)."""

    def __init__(self, total: int) -> None:
        self.peer: End | None = None
        self.total = total
        self.sent = 0
        self.paused = False

    def pump(self) -> None:
        for _ in range(4):
            if self.paused or self.sent >= self.total or self.peer is None:
                return
            self.peer.write(BLOCK)
            self.sent += len(BLOCK)
        asyncio.get_running_loop().call_soon(self.pump)

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            asyncio.get_running_loop().call_soon(self.pump)


class Sink(End):
    """The client side's reader: takes ``rate`` bytes per tick (None: everything)."""

    def __init__(self, rate: int | None) -> None:
        self.peer: End | None = None
        self.rate = rate
        self.unread = 0
        self.got = bytearray()
        self.aborted = False
        self.paused_peer = False

    def write(self, data: bytes) -> None:
        self.got += data
        self.unread += len(data)
        if self.rate is not None and self.unread > 64 * 1024 and not self.paused_peer:
            self.paused_peer = True
            assert self.peer is not None
            self.peer.pause_reading()  # like a full socket buffer
        if self.rate is None:
            self.unread = 0

    def tick(self) -> None:
        if self.rate is None:
            return
        self.unread = max(0, self.unread - self.rate)
        if self.paused_peer and self.unread <= 16 * 1024:
            self.paused_peer = False
            assert self.peer is not None
            self.peer.resume_reading()

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@settings(max_examples=25, deadline=None)
@given(
    rate=st.sampled_from([0, 1, 100, 4096, 20_000]),
    fast=st.integers(1, 4),
    size=st.integers(8, 40).map(lambda blocks: blocks * len(BLOCK)),
)
async def test_a_slow_session_never_holds_up_the_others(rate: int, fast: int, size: int) -> None:
    limits = FlowLimits(soft=128 * 1024, hard=64 * 1024 * 1024, grace=1000.0)
    sources: list[Source] = []

    def on_open(worker: MuxWorker, event: SessionOpened) -> None:
        end = worker.accept(event, Session(inbound_tag="in"))
        source = Source(size if sources else 50 * size)  # the slow one wants a lot
        end.peer, source.peer = source, end
        sources.append(source)
        asyncio.get_running_loop().call_soon(source.pump)

    client = MuxWorker(Role.CLIENT, limits=limits)
    server = MuxWorker(Role.SERVER, on_open=on_open, limits=limits)
    up, down = Wire(), Wire()
    client.peer, up.to = up, server
    server.peer, down.to = down, client
    sinks = [Sink(rate)] + [Sink(None) for _ in range(fast)]
    for sink in sinks:
        sink.peer = client.open_session(Session(inbound_tag="c"), TARGET, sink)
    client.flush()
    for _ in range(4000):
        await asyncio.sleep(0)
        for sink in sinks:
            sink.tick()
        if all(len(s.got) >= size for s in sinks[1:]):
            break
    assert all(len(s.got) == size for s in sinks[1:]), [len(s.got) for s in sinks]
    assert all(s.got == BLOCK * (size // len(BLOCK)) for s in sinks[1:])
    slow = sinks[0]
    assert not slow.aborted  # paused, not cut: the other end speaks flow control
    whole = BLOCK * (len(slow.got) // len(BLOCK) + 1)
    assert slow.got == whole[: len(slow.got)]  # in order, nothing lost
    assert not up.paused and not down.paused
    # The client holds at most the soft limit plus what was on its way when it asked.
    assert buffered_total() <= limits.soft + 8 * len(BLOCK)
    client.close()
    server.close()
    assert buffered_total() == 0
