"""Bounds on what hostile clients can make a node hold (issue 11, findings 5 and 6).

* Mux inside a mux session is refused, as V2Ray refuses it (no nesting around the session
  cap, no recursion).
* A portal with no tunnel keeps at most ``max_waiting`` clients waiting, each holding at
  most ``link.PENDING_LIMIT`` bytes; an end waiting for its dial holds no more either.
* An exception the event loop catches is one line in the error log, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import pytest

from raybridge.address import Destination, Network, tcp
from raybridge.link import PENDING_LIMIT, DeferredEnd, End, Session, join
from raybridge.protocols.mux import MuxConnection, Role, SessionEnded, SessionOpened
from raybridge.protocols.vmess import ClientConnection, Command, Data, Security, User
from raybridge.proxy.reverse import Portal
from tests.support import LOCAL, free_port, node, server_config, until

MUX = Destination(Network.TCP, "v1.mux.cool", 0)


class Peer(End):
    def __init__(self) -> None:
        self.peer: End | None = None
        self.paused = False
        self.aborted: BaseException | None = None

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = exc or ConnectionError()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _mux_client(port: int, user: User, mux: MuxConnection) -> list[object]:
    """Open a VMess Mux connection, send what ``mux`` queued, return the mux events back."""
    client = ClientConnection(
        user, Command.MUX, None, Security.AES_128_GCM, now=time.time(), urandom=os.urandom
    )
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(client.send(mux.data_to_send()))
    events: list[object] = []
    try:
        async with asyncio.timeout(5):
            while not any(isinstance(e, SessionEnded) for e in events):
                data = await reader.read(65536)
                if not data:
                    break
                for event in client.receive_data(data):
                    if isinstance(event, Data):
                        events += mux.receive_data(event.data)
    finally:
        writer.close()
    return events


async def test_mux_inside_a_mux_session_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        uid = str(uuid.uuid4())
        port = free_port()
        async with node(server_config(port, uid)):
            mux = MuxConnection(Role.CLIENT)
            sid = mux.open_session(MUX)  # a session whose target is another mux server
            events = await _mux_client(port, User(uuid.UUID(uid)), mux)
            assert SessionEnded(session_id=sid, error=True) in events
            assert not any(isinstance(e, SessionOpened) for e in events)
    assert "refused a mux connection inside a mux session" in caplog.text


async def test_portal_waiting_clients_are_bounded() -> None:
    portal = Portal("portal", "tunnel.example", tunnel_wait=30, max_waiting=2)
    peers = [Peer() for _ in range(3)]
    ends = [portal.connect(Session(inbound_tag="in"), tcp("10.0.0.1", 80), p) for p in peers]
    await asyncio.sleep(0)
    assert peers[0].aborted is None and peers[1].aborted is None
    assert isinstance(peers[2].aborted, ConnectionRefusedError)  # the third: at once
    assert portal.refused_waiting == 1
    # A waiting client holds PENDING_LIMIT bytes, then its own reader is paused.
    waiting = ends[0]
    assert isinstance(waiting, DeferredEnd)
    waiting.write(bytes(PENDING_LIMIT))
    assert not peers[0].paused
    waiting.write(b"x")
    assert peers[0].paused
    await portal.close()


async def test_a_pending_dial_holds_at_most_the_pending_limit() -> None:
    from raybridge.transport.tcp import StreamEnd

    end = StreamEnd()
    peer = Peer()
    join(peer, end)
    end.write(bytes(PENDING_LIMIT))
    assert not peer.paused
    end.write(b"x")  # no transport yet: a dial in progress
    assert peer.paused
    end.abort()


async def test_an_exception_in_a_callback_is_one_log_line(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.ERROR, logger="raybridge"):
        port = free_port()
        async with node(server_config(port, str(uuid.uuid4()))):
            loop = asyncio.get_running_loop()

            def boom() -> None:
                raise RuntimeError("a bug met a packet")

            loop.call_soon(boom)
            await until(lambda: any("a bug met" in r.getMessage() for r in caplog.records))
    lines = [r for r in caplog.records if "a bug met a packet" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Traceback" not in capsys.readouterr().err
