"""Hostile clients: floods of stalled handshakes, mux session floods and duplicate IDs,
legacy VMess headers where only AEAD is allowed, and private destinations on a public
portal's freedom path."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import stat
import time
import uuid
from typing import Any

import pytest

from raybridge.address import Destination, Network, tcp
from raybridge.protocols.mux import (
    FrameDecoder,
    MuxConnection,
    Role,
    SessionData,
    SessionEnded,
    Status,
    encode_frame,
)
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Data,
    Security,
    User,
)
from raybridge.runtime import raise_fd_limit
from tests.support import (
    LOCAL,
    EchoServer,
    StartNode,
    client_config,
    free_port,
    new_uuid,
    node,
    server_config,
    socks_echo,
    until,
)


async def test_stalled_half_handshakes_do_not_block_service(
    echo: EchoServer, start_node: StartNode
) -> None:
    """2000 connections each send half a VMess request and stall; a real client is still
    served at once (each stalled one costs a socket and a small object until the
    handshake timeout, nothing more)."""
    soft = raise_fd_limit()
    # Both ends of every stalled connection live in this process (the node runs in-process).
    count = min(2000, max(100, (soft - 300) // 2))
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    b = await start_node(server_config(b_port, uid))
    async with node(client_config(c_port, b_port, uid)):
        request = ClientConnection(
            User(id=uuid.UUID(uid)),
            Command.TCP,
            tcp(LOCAL, echo.port),
            Security.AES_128_GCM,
            now=time.time(),
            urandom=os.urandom,
        ).send(b"x")
        stalled = []
        for i in range(count):
            _, writer = await asyncio.open_connection(LOCAL, b_port)
            writer.write(request[: 20 + i % 30])  # AuthID, then part of the rest
            stalled.append(writer)
        vmess_in = b.inbounds[0]
        await until(lambda: len(vmess_in.tracker.ends) >= count)
        assert len(vmess_in.tracker.ends) >= count  # all held, none served
        for _ in range(5):
            await socks_echo(c_port, echo.port, 500_000)
        for writer in stalled:
            writer.close()


async def mux_over_vmess(port: int, uid: str) -> tuple[asyncio.StreamReader, Any, Any]:
    """A raw VMess command-0x03 (Mux) connection; returns (reader, writer, codec)."""
    codec = ClientConnection(
        User(id=uuid.UUID(uid)),
        Command.MUX,
        None,
        Security.AES_128_GCM,
        now=time.time(),
        urandom=os.urandom,
    )
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(codec.header())
    return reader, writer, codec


async def test_mux_session_flood_is_capped(echo: EchoServer, start_node: StartNode) -> None:
    """With "raybridge": {"muxMaxSessions": 8}, a peer that opens 50 sessions on one mux
    connection gets 8 and End+Error for the rest; a repeated session ID replaces the old
    session instead of leaking it."""
    uid = new_uuid()
    b_port = free_port()
    conf = server_config(b_port, uid)
    conf["raybridge"] = {"muxMaxSessions": 8}
    await start_node(conf)
    reader, writer, codec = await mux_over_vmess(b_port, uid)
    mux = MuxConnection(Role.CLIENT)
    sids = [
        mux.open_session(Destination(Network.TCP, echo.port and LOCAL, echo.port), b"hi")
        for _ in range(50)
    ]
    writer.write(codec.send(mux.data_to_send()))
    refused: set[int] = set()
    echoed: dict[int, bytes] = {}
    deadline = time.monotonic() + 20
    while len(refused) + len(echoed) < 50 and time.monotonic() < deadline:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data
        for event in codec.receive_data(data):
            if isinstance(event, Data):
                for mux_event in mux.receive_data(event.data):
                    if isinstance(mux_event, SessionEnded) and mux_event.error:
                        refused.add(mux_event.session_id)
                    elif isinstance(mux_event, SessionData):
                        echoed[mux_event.session_id] = bytes(mux_event.data)
    assert len(echoed) == 8 and all(v == b"hi" for v in echoed.values())
    assert len(refused) == 42
    assert set(echoed) | refused == set(sids)

    # A duplicate New for an open session: the old one is ended, not leaked.
    dup = encode_frame(sids[0], Status.NEW, target=tcp(LOCAL, echo.port), data=b"again")
    writer.write(codec.send(dup))
    frames: list[Any] = []
    decoder = FrameDecoder()
    while not any(f.data == b"again" for f in frames):
        data = await asyncio.wait_for(reader.read(65536), 10)
        for event in codec.receive_data(data):
            if isinstance(event, Data):
                frames += decoder.feed(event.data)
    writer.close()


@pytest.mark.parametrize("forced", [False, True])
async def test_aead_forced_refuses_legacy_headers(
    forced: bool, echo: EchoServer, start_node: StartNode
) -> None:
    uid = new_uuid()
    b_port, legacy_port, aead_port = free_port(), free_port(), free_port()
    b = server_config(b_port, uid, alter_id=4)
    b["inbounds"][0]["settings"]["aeadForced"] = forced
    await start_node(b)
    async with (
        node(client_config(legacy_port, b_port, uid, alter_id=4)),
        node(client_config(aead_port, b_port, uid, alter_id=0)),
    ):
        await socks_echo(aead_port, echo.port, 100_000)
        if forced:
            with pytest.raises((OSError, AssertionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(socks_echo(legacy_port, echo.port, 1000), 10)
        else:
            await socks_echo(legacy_port, echo.port, 100_000)


@pytest.mark.parametrize("block", [False, True])
async def test_block_private_destinations(
    block: bool, echo: EchoServer, start_node: StartNode
) -> None:
    """A public portal's freedom can refuse private and loopback destinations (Xray does
    by default), so a client cannot reach the portal host's own services."""
    s_port = free_port()
    conf: dict[str, Any] = {
        "inbounds": [{"protocol": "socks", "listen": LOCAL, "port": s_port}],
        "outbounds": [{"protocol": "freedom", "settings": {"blockPrivate": block}}],
    }
    await start_node(conf)
    if block:
        for host in (LOCAL, "localhost"):
            with pytest.raises((OSError, AssertionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(socks_echo(s_port, echo.port, 1000, host), 10)
    else:
        await socks_echo(s_port, echo.port, 1000)
        await socks_echo(s_port, echo.port, 1000, "localhost")


def test_fd_limit_is_raised() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_fd_limit() == (hard if hard != resource.RLIM_INFINITY else soft)


@pytest.mark.parametrize("safe", [False, True])
async def test_who_may_be_a_bridge(safe: bool) -> None:
    """With the seed's portal config, a *client* can register as a bridge by asking for
    the tunnel domain, and then receives other clients' connections; ``raybridge test``
    warns about it. The safe config (the tunnel domain from the client inbound goes to a
    blackhole) refuses the impostor and says nothing."""
    from raybridge.config.checks import check_config
    from raybridge.config.loader import load_config_text
    from tests.support import DOMAIN, bridge_config, portal_config, wait_chain

    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b = portal_config(t_port, c_port, ua, uc)
    if safe:
        b["outbounds"].append({"tag": "refuse", "protocol": "blackhole"})
        b["routing"]["rules"].insert(
            0,
            {
                "type": "field",
                "inboundTag": ["external"],
                "domain": [f"full:{DOMAIN}"],
                "outboundTag": "refuse",
            },
        )
    # The check only speaks about inbounds reachable from outside: as deployed.
    public = json.loads(json.dumps(b))
    for inbound in public["inbounds"]:
        inbound["listen"] = "0.0.0.0"
    findings = check_config(load_config_text(json.dumps(public), "b.json"))
    assert bool(findings) is not safe, findings
    async with EchoServer() as inside, EchoServer() as impostor_net:
        real = bridge_config(t_port, ua)
        real["outbounds"][1]["settings"] = {"redirect": f"{LOCAL}:{inside.port}"}
        # The impostor: a client's credentials, dialing the client inbound.
        fake = bridge_config(c_port, uc)
        fake["outbounds"][1]["settings"] = {"redirect": f"{LOCAL}:{impostor_net.port}"}
        async with (
            node(b) as portal_node,
            node(real),
            node(fake),
            node(client_config(s_port, c_port, uc)),
        ):
            await wait_chain(s_port, 9)
            # Kept: the impostor has tried by now. In the safe case nothing may come of
            # its try, and an absence shows only over time.
            await asyncio.sleep(0.5)
            tunnels = len(portal_node.portals[0].tunnels)
            # Concurrent connections: the portal spreads them over its tunnels.
            await asyncio.gather(*(socks_echo(s_port, 9, 1000) for _ in range(20)))
            if safe:
                assert tunnels == 1
                assert impostor_net.connections == 0 and inside.connections >= 20
            else:
                assert tunnels == 2
                assert impostor_net.connections > 0  # it received a victim's traffic


# -- issue 11: UDP bounds, oversized mux datagrams, replays across restarts, IPv4 forms ------


class _Records(logging.Handler):
    """Collects the records of the ``raybridge`` logger, whatever ``log.setup`` did to
    propagation (caplog only sees records that reach the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Records:
        self._logger = logging.getLogger("raybridge")
        self._level = self._logger.level
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def matching(self, text: str) -> list[str]:
        return [m for m in (r.getMessage() for r in self.records) if text in m]


async def test_udp_flow_share_per_client_and_rate_limited_drop_warnings() -> None:
    """One source flooding new flows gets its share of the table (256), not all of it
    (4096): another client still gets a flow. The drops are counted, and logged once per
    interval with the count, not once per datagram (4,904 lines in the red-team run)."""
    from raybridge.link import Session
    from raybridge.transport.udp import MAX_CLIENT_FLOWS, DropLog, UdpServer

    now = [0.0]
    drops = DropLog("udp-test", clock=lambda: now[0])
    dest = Destination(Network.UDP, tcp(LOCAL, 9).host, 9)
    server = UdpServer(
        lambda data, addr: (dest, data, b""),
        lambda flow: None,
        lambda addr: Session(inbound_tag="t"),
        drops=drops,
    )
    try:
        with _Records() as logs:
            for port in range(1, 5001):
                server.datagram_received(b"x", ("198.51.100.7", port))
            server.datagram_received(b"x", ("198.51.100.8", 1))
            assert len(server.flows) == MAX_CLIENT_FLOWS + 1
            assert (("198.51.100.8", 1), dest) in server.flows
            assert drops.total == 5000 - MAX_CLIENT_FLOWS
            assert len(logs.matching("dropped")) == 1
            now[0] += drops.interval  # the next drop after the interval: one line, counted
            server.datagram_received(b"x", ("198.51.100.7", 9999))
            lines = logs.matching("dropped")
            assert len(lines) == 2
            assert f"and {5000 - MAX_CLIENT_FLOWS - 1} more" in lines[1]
            server.datagram_received(b"x", ("198.51.100.7", 10000))
            drops.flush()  # what the timer does an interval later
            assert "dropped 1 more" in logs.matching("dropped")[-1]
    finally:
        server.close()


async def test_udp_flows_of_an_association_feed_its_idle_timer_and_end_with_it() -> None:
    from raybridge.link import Session
    from raybridge.transport.udp import FlowGroup, UdpServer

    control = Session(inbound_tag="t")
    group = FlowGroup(control)
    dest = Destination(Network.UDP, tcp(LOCAL, 9).host, 9)
    server = UdpServer(
        lambda data, addr: (dest, data, b""),
        lambda flow: None,
        lambda addr: Session(inbound_tag="t"),
        group_for=lambda addr: group if addr[0] == LOCAL else None,
        require_group=True,
    )
    try:
        server.datagram_received(b"x", ("192.0.2.1", 5))  # no association: dropped
        assert not server.flows and server.drops.total == 1
        control.active = False
        server.datagram_received(b"x", (LOCAL, 5))
        assert control.active  # the association is not idle while its flows carry data
        assert len(group.flows) == 1 and len(server.flows) == 1
        group.close()
        assert not server.flows
    finally:
        server.close()


async def test_oversized_mux_datagrams_are_counted_and_logged_once_per_session() -> None:
    """Datagrams over 2048 bytes on a Mux.Cool UDP session (V2Ray reads no more) used to
    vanish without a word."""
    from raybridge.link import End, Session
    from raybridge.transport.mux import MuxWorker

    class Sink(End):
        def __init__(self) -> None:
            self.peer: End | None = None
            self.data: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.data.append(data)

        def write_eof(self) -> None:
            pass

        def abort(self, exc: BaseException | None = None) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    worker = MuxWorker(Role.CLIENT, name="mux-test")
    carrier = Sink()
    worker.peer, carrier.peer = carrier, worker
    dest = Destination(Network.UDP, tcp(LOCAL, 53).host, 53)
    ends = [worker.open_session(Session(inbound_tag="t"), dest, Sink()) for _ in range(2)]
    worker.flush()  # the New frames go out
    with _Records() as logs:
        for end in ends:
            for _ in range(3):
                end.write(b"x" * 3000)
            end.write(b"small")
    assert worker.oversized_dropped == 6
    lines = logs.matching("3000-byte UDP datagram")
    assert len(lines) == 2 and all(r.levelno == logging.INFO for r in logs.records)
    for end in ends:
        end.abort()


def test_replay_file_round_trip_and_corruption(tmp_path: Any) -> None:
    from raybridge import replay
    from raybridge.protocols.vmess import UserValidator
    from raybridge.protocols.vmess.header import create_auth_id

    user = User(id=uuid.UUID(new_uuid()))
    now = [1_700_000_000.0]
    first = UserValidator([user], clock=lambda: now[0])
    ids = [create_auth_id(user.auth_id_key, int(now[0]), bytes((i,)) * 4) for i in range(3)]
    assert all(first.match_aead(a).user is user for a in ids)
    path = replay.file_for(str(tmp_path), "in/../x", 443)
    assert os.path.dirname(path) == str(tmp_path)  # the tag cannot leave the directory
    assert replay.save(path, first) == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left
    second = UserValidator([user], clock=lambda: now[0])
    assert replay.load(path, second) == 3
    assert all(second.match_aead(a).replay for a in ids)

    data = open(path, "rb").read()  # noqa: SIM115
    for bad in (data[:-1], data[:20], b"junk", data[:-5] + bytes((data[-5] ^ 1,)) + data[-4:]):
        with open(path, "wb") as f:
            f.write(bad)
        with _Records() as logs:
            assert replay.load(path, UserValidator([user], clock=lambda: now[0])) == 0
        assert len(logs.matching("ignored the VMess replay filter")) == 1
    assert replay.load(str(tmp_path / "missing.bin"), second) == 0
    now[0] += 121  # entries older than the window are dropped on load
    with open(path, "wb") as f:
        f.write(data)
    assert replay.load(path, UserValidator([user], clock=lambda: now[0])) == 0


async def test_replayed_header_is_refused_after_a_restart(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    echo: EchoServer,
    start_node: StartNode,
) -> None:
    """The AEAD replay filter outlives a restart of the node when there is a state
    directory (here systemd's $STATE_DIRECTORY); it used to live only in memory."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    uid = new_uuid()
    b_port = free_port()
    codec = ClientConnection(
        User(id=uuid.UUID(uid)),
        Command.TCP,
        tcp(LOCAL, echo.port),
        Security.AES_128_GCM,
        now=time.time(),
        urandom=os.urandom,
    )
    wire = codec.send(b"ping")
    async with node(server_config(b_port, uid)):
        reader, writer = await asyncio.open_connection(LOCAL, b_port)
        writer.write(wire)
        got = b""
        while b"ping" not in got:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data
            got += b"".join(bytes(e.data) for e in codec.receive_data(data) if isinstance(e, Data))
        writer.close()
    saved = list(tmp_path.glob("vmess-replay-*.bin"))
    assert len(saved) == 1 and stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    served = echo.connections
    b = await start_node(server_config(b_port, uid))
    failures = b.dispatcher.stats.handshake_failures
    reader, writer = await asyncio.open_connection(LOCAL, b_port)
    writer.write(wire)  # the captured header, replayed after the restart
    await until(lambda: any("replayed" in why for _, why in failures), 10, what="refused")
    assert echo.connections == served
    writer.close()


NON_CANONICAL_IPV4 = ["127.1", "0x7f.1", "0177.0.0.1", "2130706433", "0x7f000001", "127.0.0.1."]


async def test_non_canonical_ipv4_destinations_are_refused(
    echo: EchoServer, start_node: StartNode
) -> None:
    """``127.1`` and friends reach 127.0.0.1 through the system resolver, past IP rules
    (here: 127.0.0.0/8 is blocked). SOCKS, HTTP and VMess refuse them as invalid
    addresses; the canonical form still meets the rule."""
    uid = new_uuid()
    s_port, h_port, v_port = free_port(), free_port(), free_port()
    conf: dict[str, Any] = {
        "inbounds": [
            {"tag": "socks", "protocol": "socks", "listen": LOCAL, "port": s_port},
            {"tag": "http", "protocol": "http", "listen": LOCAL, "port": h_port},
            {
                "tag": "vmess",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": v_port,
                "settings": {"clients": [{"id": uid}]},
            },
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom"},
            {"tag": "block", "protocol": "blackhole"},
        ],
        "routing": {"rules": [{"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "block"}]},
    }
    n = await start_node(conf)
    failures = n.dispatcher.stats.handshake_failures
    for host in NON_CANONICAL_IPV4:
        with pytest.raises((OSError, AssertionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(socks_echo(s_port, echo.port, 100, host), 10)
    reader, writer = await asyncio.open_connection(LOCAL, h_port)
    writer.write(f"CONNECT 127.1:{echo.port} HTTP/1.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.read(1024), 10)
    assert head.startswith(b"HTTP/1.1 400"), head
    writer.close()
    codec = ClientConnection(
        User(id=uuid.UUID(uid)),
        Command.TCP,
        tcp("0x7f.1", echo.port),
        Security.AES_128_GCM,
        now=time.time(),
        urandom=os.urandom,
    )
    _, writer = await asyncio.open_connection(LOCAL, v_port)
    writer.write(codec.send(b"ping"))
    await until(lambda: any(tag == "vmess" and "address" in r for tag, r in failures), 10)
    writer.close()
    assert echo.connections == 0
    socks = [r for (tag, r), count in failures.items() if tag == "socks" for _ in range(count)]
    assert len(socks) == len(NON_CANONICAL_IPV4)
