"""Hostile clients: floods of stalled handshakes, mux session floods and duplicate IDs,
legacy VMess headers where only AEAD is allowed, and private destinations on a public
portal's freedom path."""

from __future__ import annotations

import asyncio
import json
import os
import resource
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
    client_config,
    free_port,
    new_uuid,
    node,
    server_config,
    socks_echo,
)


def test_stalled_half_handshakes_do_not_block_service() -> None:
    """2000 connections each send half a VMess request and stall; a real client is still
    served at once (each stalled one costs a socket and a small object until the
    handshake timeout, nothing more)."""
    soft = raise_fd_limit()
    # Both ends of every stalled connection live in this process (the node runs in-process).
    count = min(2000, max(100, (soft - 300) // 2))

    async def main() -> None:
        uid = new_uuid()
        b_port, c_port = free_port(), free_port()
        async with EchoServer() as echo, node(server_config(b_port, uid)) as b:
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
                await asyncio.sleep(0.2)
                vmess_in = b.inbounds[0]
                assert len(vmess_in.tracker.ends) >= count  # all held, none served
                for _ in range(5):
                    await socks_echo(c_port, echo.port, 500_000)
                for writer in stalled:
                    writer.close()

    asyncio.run(main())


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


def test_mux_session_flood_is_capped() -> None:
    """With "raybridge": {"muxMaxSessions": 8}, a peer that opens 50 sessions on one mux
    connection gets 8 and End+Error for the rest; a repeated session ID replaces the old
    session instead of leaking it."""

    async def main() -> None:
        uid = new_uuid()
        b_port = free_port()
        conf = server_config(b_port, uid)
        conf["raybridge"] = {"muxMaxSessions": 8}
        async with EchoServer() as echo, node(conf):
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

    asyncio.run(main())


@pytest.mark.parametrize("forced", [False, True])
def test_aead_forced_refuses_legacy_headers(forced: bool) -> None:
    async def main() -> None:
        uid = new_uuid()
        b_port, legacy_port, aead_port = free_port(), free_port(), free_port()
        b = server_config(b_port, uid, alter_id=4)
        b["inbounds"][0]["settings"]["aeadForced"] = forced
        async with EchoServer() as echo, node(b):
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

    asyncio.run(main())


@pytest.mark.parametrize("block", [False, True])
def test_block_private_destinations(block: bool) -> None:
    """A public portal's freedom can refuse private and loopback destinations (Xray does
    by default), so a client cannot reach the portal host's own services."""

    async def main() -> None:
        s_port = free_port()
        conf: dict[str, Any] = {
            "inbounds": [{"protocol": "socks", "listen": LOCAL, "port": s_port}],
            "outbounds": [{"protocol": "freedom", "settings": {"blockPrivate": block}}],
        }
        async with EchoServer() as echo, node(conf):
            if block:
                for host in (LOCAL, "localhost"):
                    with pytest.raises((OSError, AssertionError, asyncio.IncompleteReadError)):
                        await asyncio.wait_for(socks_echo(s_port, echo.port, 1000, host), 10)
            else:
                await socks_echo(s_port, echo.port, 1000)
                await socks_echo(s_port, echo.port, 1000, "localhost")

    asyncio.run(main())


def test_fd_limit_is_raised() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_fd_limit() == (hard if hard != resource.RLIM_INFINITY else soft)


@pytest.mark.parametrize("safe", [False, True])
def test_who_may_be_a_bridge(safe: bool) -> None:
    """With the seed's portal config, a *client* can register as a bridge by asking for
    the tunnel domain, and then receives other clients' connections; ``raybridge test``
    warns about it. The safe config (the tunnel domain from the client inbound goes to a
    blackhole) refuses the impostor and says nothing."""
    from raybridge.config.checks import check_config
    from raybridge.config.loader import load_config_text
    from tests.support import DOMAIN, bridge_config, portal_config
    from tests.test_reverse_chain import wait_chain

    async def main() -> None:
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
                await asyncio.sleep(0.5)  # the impostor has tried by now
                tunnels = len(portal_node.portals[0].tunnels)
                # Concurrent connections: the portal spreads them over its tunnels.
                await asyncio.gather(*(socks_echo(s_port, 9, 1000) for _ in range(20)))
                if safe:
                    assert tunnels == 1
                    assert impostor_net.connections == 0 and inside.connections >= 20
                else:
                    assert tunnels == 2
                    assert impostor_net.connections > 0  # it received a victim's traffic

    asyncio.run(main())
