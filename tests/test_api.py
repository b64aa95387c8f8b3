"""V2Ray's HandlerService on a running node, called the way panels call it: over gRPC with
V2Ray 4.34's protobuf messages (``raybridge.api.client``; ``v2ctl api`` 4.34 has no
HandlerService). Each scenario runs against raybridge and against V2Ray 4.34 in the same
test, which also shows the requests are V2Ray's own: V2Ray carries them out too.

Bad input on the API port (garbage bytes, an unknown method, an undecodable request, a
handler raybridge does not take) ends that call or connection with a gRPC error, and the
node goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel, StreamUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from raybridge import log as logs
from raybridge.api import messages as pb
from raybridge.api.client import ApiClient
from raybridge.api.convert import ApiError, inbound_json, outbound_json, vmess_client
from raybridge.api.server import HANDLER, LOGGER, STATS, MessageCodec
from raybridge.node import parse_inbound, parse_outbound
from raybridge.protocols.protobuf import Message
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    RB,
    SUBPROCESS_ENV,
    V2,
    EchoServer,
    StartNode,
    StartPeer,
    client_config,
    free_port,
    new_uuid,
    socks_echo,
)
from tests.v2api import (
    LOOPBACK_IP,
    add_freedom_outbound,
    add_inbound,
    add_socks_inbound,
    add_user,
    api_config,
    door_inbound,
    remove_user,
    until_true,
    vmess_inbound,
    vmess_user,
)

NEEDS_V2RAY = "needs /usr/bin/v2ray (apt-get install v2ray)"
KINDS = [RB, V2]
TCP = 2  # common/net/network.proto
#: How a refused client connection ends (reset, EOF in the middle of the echo).
REFUSED = (ConnectionError, asyncio.IncompleteReadError, OSError)


def needs(kind: str) -> None:
    if kind == V2 and not HAVE_V2RAY:
        pytest.skip(NEEDS_V2RAY)


async def refused(coro: Any) -> bool:
    """True if the connection ``coro`` makes is refused or cut (a 30 s guard on hangs)."""
    try:
        await asyncio.wait_for(coro, 30)
    except REFUSED:
        return True
    return False


async def call(api: int, service: str, method: str, request: Message, reply: Any = pb.Empty) -> Any:
    async with ApiClient(LOCAL, api) as client:
        return await client.call(service, method, request, reply)


async def grpc_error(api: int, service: str, method: str, request: Message) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await call(api, service, method, request)
    return info.value


@pytest.mark.interop
async def test_alter_inbound_adds_a_user_that_can_connect_then_removes_it(
    echo: EchoServer, start_peer: StartPeer, start_node: StartNode
) -> None:
    errors: dict[str, Status] = {}
    for kind in KINDS:
        needs(kind)
        api, vmess, socks = free_port(), free_port(), free_port()
        known, added = new_uuid(), new_uuid()
        config = api_config(api, [vmess_inbound(vmess, known, "known@test")])
        # An unknown user's connection is closed after 2 s of handshake, not drained forever.
        config["policy"]["levels"]["0"]["handshake"] = 2
        await start_peer(kind, config, api)
        await start_node(client_config(socks, vmess, added))
        assert await refused(socks_echo(socks, echo.port, 1000)), kind

        await call(api, HANDLER, "AlterInbound", add_user("vmess-in", added, "added@test"))
        await socks_echo(socks, echo.port, 300_000)  # checked end to end by SHA-256

        await call(api, HANDLER, "AlterInbound", remove_user("vmess-in", "added@test"))
        assert await refused(socks_echo(socks, echo.port, 1000)), kind

        missing = await grpc_error(api, HANDLER, "AlterInbound", add_user("nope", added, "x@y"))
        errors[kind] = missing.status
    assert errors.get(RB) == errors.get(V2, errors[RB]) == Status.UNKNOWN


@pytest.mark.interop
async def test_add_inbound_starts_a_socks_inbound_and_remove_inbound_stops_it(
    echo: EchoServer, start_peer: StartPeer
) -> None:
    errors: dict[str, Status] = {}
    for kind in KINDS:
        needs(kind)
        api, socks = free_port(), free_port()
        await start_peer(kind, api_config(api, []), api)
        assert await refused(asyncio.open_connection(LOCAL, socks))

        await call(api, HANDLER, "AddInbound", add_socks_inbound("added", socks))
        await socks_echo(socks, echo.port, 300_000)

        await call(api, HANDLER, "RemoveInbound", pb.RemoveInboundRequest(tag="added"))

        async def closed(socks: int = socks) -> bool:
            return await refused(socks_echo(socks, echo.port, 1000))

        await until_true(closed, 10, what=f"{kind}: the removed inbound refuses clients")
        gone = pb.RemoveInboundRequest(tag="added")
        again = await grpc_error(api, HANDLER, "RemoveInbound", gone)
        errors[kind] = again.status
    assert errors.get(RB) == errors.get(V2, errors[RB]) == Status.UNKNOWN


@pytest.mark.interop
async def test_add_inbound_vmess_and_dokodemo_door(
    echo: EchoServer, start_peer: StartPeer, start_node: StartNode
) -> None:
    for kind in KINDS:
        needs(kind)
        api, vmess, socks, door = free_port(), free_port(), free_port(), free_port()
        uid = new_uuid()
        await start_peer(kind, api_config(api, []), api)
        users = pb.VMessInboundConfig(user=[vmess_user(uid, "new@test")])
        await call(api, HANDLER, "AddInbound", add_inbound("vmess-added", vmess, users))
        await start_node(client_config(socks, vmess, uid))
        await socks_echo(socks, echo.port, 200_000)
        target = pb.DokodemoConfig(
            address=pb.IPOrDomain(ip=LOOPBACK_IP), port=echo.port, networks=[TCP]
        )
        await call(api, HANDLER, "AddInbound", add_inbound("door-added", door, target))
        await door_roundtrip(door)


@pytest.mark.interop
async def test_add_outbound_and_remove_outbound(echo: EchoServer, start_peer: StartPeer) -> None:
    for kind in KINDS:
        needs(kind)
        api, door = free_port(), free_port()
        config = api_config(
            api,
            [door_inbound(door, echo.port)],
            # the default (first) outbound drops; a rule names an outbound not there yet
            outbounds=[
                {"tag": "block", "protocol": "blackhole"},
                {"tag": "direct", "protocol": "freedom"},
            ],
            rules=[{"type": "field", "inboundTag": ["door"], "outboundTag": "extra"}],
        )
        await start_peer(kind, config, api)
        assert await refused(door_roundtrip(door)), kind

        await call(api, HANDLER, "AddOutbound", add_freedom_outbound("extra"))
        await door_roundtrip(door)

        await call(api, HANDLER, "RemoveOutbound", pb.RemoveOutboundRequest(tag="extra"))
        assert await refused(door_roundtrip(door)), kind


async def door_roundtrip(port: int) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        payload = os.urandom(50_000)
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def no_message(api: int) -> GRPCError:
    """A call that ends without its request message."""
    channel = Channel(LOCAL, api, codec=MessageCodec())
    try:
        # client streaming, which may end without a message; the server's method is unary
        stub = StreamUnaryMethod(channel, f"/{STATS}/GetStats", pb.Empty, pb.Empty)
        async with stub.open() as stream:
            await stream.send_request(end=True)
            with pytest.raises(GRPCError) as info:
                await stream.recv_message()
        return info.value
    finally:
        channel.close()


class Raw(Message):
    """Whatever bytes a test wants on the wire as a request."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def encode(self) -> bytes:
        return self.data


@pytest.mark.interop
async def test_bad_input_ends_the_call_and_the_node_goes_on(start_peer: StartPeer) -> None:
    unknown: dict[str, Status] = {}
    for kind in KINDS:
        needs(kind)
        api = free_port()
        await start_peer(kind, api_config(api, []), api)

        # Not HTTP/2 at all: the connection is closed.
        reader, writer = await asyncio.open_connection(LOCAL, api)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(3000))
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), 30):
                pass
        writer.close()

        unknown[kind] = (await grpc_error(api, STATS, "NoSuchMethod", pb.Empty())).status
        bad = await grpc_error(api, STATS, "GetStats", Raw(b"\x0a\xff\xff\xff"))
        if kind == RB:
            assert bad.status == Status.INVALID_ARGUMENT
            assert (await no_message(api)).status == Status.INVALID_ARGUMENT
            http = pb.AddInboundRequest(
                inbound=pb.InboundHandlerConfig(
                    tag="h",
                    receiver_settings=pb.TypedMessage.of(pb.ReceiverConfig()),
                    proxy_settings=pb.TypedMessage(type="v2ray.core.proxy.http.ServerConfig"),
                )
            )
            refusal = await grpc_error(api, HANDLER, "AddInbound", http)
            assert refusal.status == Status.UNKNOWN
            assert "raybridge's API adds socks, vmess and dokodemo-door" in str(refusal.message)
            stream = add_socks_inbound("s", free_port())
            assert stream.inbound is not None and stream.inbound.receiver_settings is not None
            receiver = pb.ReceiverConfig.decode(stream.inbound.receiver_settings.value)
            receiver.stream_settings = b"\x0a\x02ws"
            stream.inbound.receiver_settings = pb.TypedMessage.of(receiver)
            refusal = await grpc_error(api, HANDLER, "AddInbound", stream)
            assert "stream settings are not taken" in str(refusal.message)

        # ... and the node still answers.
        reply = await call(api, STATS, "QueryStats", pb.QueryStatsRequest(), pb.QueryStatsResponse)
        assert any(s.name == "inbound>>>api-in>>>traffic>>>uplink" for s in reply.stat)
    assert set(unknown.values()) == {Status.UNIMPLEMENTED}, unknown


async def test_restart_logger_reopens_the_log_file(tmp_path: Path, start_node: StartNode) -> None:
    """After a rotation moved the error log away, RestartLogger makes the node write a
    new file at the configured path (what logrotate's postrotate would call)."""
    error_log = tmp_path / "error.log"
    api = free_port()
    logs.setup(error=str(error_log), level="info")
    try:
        await start_node(api_config(api, []))
        await grpc_error(api, HANDLER, "RemoveInbound", pb.RemoveInboundRequest(tag="one"))
        assert "handler not found: one" in error_log.read_text()
        error_log.rename(tmp_path / "error.log.1")
        await call(api, LOGGER, "RestartLogger", pb.Empty())
        await grpc_error(api, HANDLER, "RemoveInbound", pb.RemoveInboundRequest(tag="two"))
        assert "handler not found: two" in error_log.read_text()
        assert "two" not in (tmp_path / "error.log.1").read_text()
    finally:  # as tests/test_logs.py restores them, for caplog in later tests
        logs.setup(access=None, error=None, stream=sys.stderr)
        for name in (logs.ERROR_LOGGER, logs.ACCESS_LOGGER):
            logging.getLogger(name).propagate = True
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_handler_configs_become_config_entries() -> None:
    """What HandlerService builds from V2Ray's compiled configs, checked by the config
    layer as a file's entries are (a ConfigError would name the field)."""
    socks = pb.SocksServerConfig(
        auth_type=1, accounts={"u": "p"}, udp_enabled=True, address=pb.IPOrDomain(ip=LOOPBACK_IP)
    )
    entry = parse_inbound(inbound_json(add_inbound("s", 1080, socks).inbound))
    assert (entry.protocol, entry.tag, entry.listen, entry.ports) == ("socks", "s", LOCAL, [1080])
    assert entry.settings.auth == "password" and entry.settings.accounts == {"u": "p"}
    assert entry.settings.udp and entry.settings.ip == LOCAL

    ranged = add_inbound("r", 0, pb.DokodemoConfig(address=pb.IPOrDomain(domain="a.b"), port=7))
    assert ranged.inbound is not None
    ranged.inbound.receiver_settings = pb.TypedMessage.of(
        pb.ReceiverConfig(
            port_range=pb.PortRange(From=2000, To=2002),
            sniffing_settings=pb.SniffingConfig(enabled=True, destination_override=["tls"]),
        )
    )
    entry = parse_inbound(inbound_json(ranged.inbound))
    assert entry.ports == [2000, 2001, 2002] and entry.listen == "0.0.0.0"
    assert entry.sniffing_enabled and entry.sniffing_dest_override == frozenset({"tls"})
    assert (entry.settings.address, entry.settings.port) == ("a.b", 7)

    freedom = pb.FreedomConfig(
        domain_strategy=2,
        destination_override=pb.FreedomDestinationOverride(
            server=pb.ServerEndpoint(address=pb.IPOrDomain(ip=LOOPBACK_IP), port=8080)
        ),
    )
    out = parse_outbound(
        outbound_json(pb.OutboundHandlerConfig(tag="f", proxy_settings=pb.TypedMessage.of(freedom)))
    )
    assert out.settings.domain_strategy == "UseIPv4" and out.settings.redirect == (LOCAL, 8080)

    hole = pb.BlackholeConfig(response=pb.TypedMessage(type=pb.BLACKHOLE_HTTP))
    out = parse_outbound(
        outbound_json(pb.OutboundHandlerConfig(tag="b", proxy_settings=pb.TypedMessage.of(hole)))
    )
    assert out.settings.response == "http"

    uid = new_uuid()
    user = vmess_user(uid, "v@x")
    assert user.account is not None
    account = pb.VMessAccount.decode(user.account.value)
    account.security_settings = pb.SecurityConfig(type=4)
    user.account = pb.TypedMessage.of(account)
    server = pb.ServerEndpoint(address=pb.IPOrDomain(domain="vps.example"), port=443, user=[user])
    vmess = pb.OutboundHandlerConfig(
        tag="v",
        sender_settings=pb.TypedMessage.of(
            pb.SenderConfig(multiplex_settings=pb.MultiplexingConfig(enabled=True, concurrency=4))
        ),
        proxy_settings=pb.TypedMessage.of(pb.VMessOutboundConfig(Receiver=[server])),
    )
    out = parse_outbound(outbound_json(vmess))
    assert out.mux.enabled and out.mux.concurrency == 4
    (target,) = out.settings.servers
    assert (target.address, target.port) == ("vps.example", 443)
    assert str(target.users[0].id) == uid and target.users[0].security == "chacha20-poly1305"

    with pytest.raises(ApiError, match=r"expected v2ray\.core\.app\.proxyman\.ReceiverConfig"):
        inbound_json(
            pb.InboundHandlerConfig(
                receiver_settings=pb.TypedMessage(type="x"),
                proxy_settings=pb.TypedMessage.of(socks),
            )
        )
    with pytest.raises(ApiError, match="invalid VMess user id"):
        vmess_client(pb.User(account=pb.TypedMessage.of(pb.VMessAccount(id="nope"))))


async def raybridge_api(api: int, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "raybridge",
        "api",
        f"--server={LOCAL}:{api}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=SUBPROCESS_ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.interop
async def test_raybridge_api_command(echo: EchoServer, start_peer: StartPeer) -> None:
    for kind in KINDS:
        needs(kind)
        api, vmess = free_port(), free_port()
        await start_peer(kind, api_config(api, [vmess_inbound(vmess, new_uuid(), "a@test")]), api)
        added = await raybridge_api(api, "adduser", "vmess-in", new_uuid(), "--email", "b@x")
        assert added == (0, "", ""), kind
        assert (await raybridge_api(api, "rmuser", "vmess-in", "b@x"))[0] == 0
        code, _, err = await raybridge_api(api, "rmuser", "vmess-in", "b@x")
        assert code == 1 and err.startswith("raybridge api: UNKNOWN: "), (kind, err)
        code, out, _ = await raybridge_api(api, "stats", "vmess-in")
        assert code == 0 and sorted(out.split()[0::2]) == [  # V2Ray's order is its map's
            "inbound>>>vmess-in>>>traffic>>>downlink",
            "inbound>>>vmess-in>>>traffic>>>uplink",
        ]
        code, out, _ = await raybridge_api(api, "sys")
        assert code == 0 and out.split()[0::2][:2] == ["NumGoroutine", "NumGC"]
        assert (await raybridge_api(api, "rminbound", "vmess-in"))[0] == 0
        # an absent outbound is no error (V2Ray's outbound manager), no tag is
        assert (await raybridge_api(api, "rmoutbound", "nothing"))[0] == 0, kind
        assert (await raybridge_api(api, "rmoutbound", ""))[0] == 1, kind
    code, _, err = await raybridge_api(free_port(), "stats")
    assert code == 1 and "cannot reach" in err


async def test_an_open_api_channel_does_not_hold_a_drain(start_node: StartNode) -> None:
    """Panels keep their gRPC channel open: a draining node ends it rather than wait for
    it until drainTimeout."""
    api = free_port()
    node = await start_node(api_config(api, []))
    async with ApiClient(LOCAL, api) as client:
        await client.call(STATS, "QueryStats", pb.QueryStatsRequest(), pb.QueryStatsResponse)
        assert node.live_connections == 1  # the channel, idle now
        assert await node.drain(timeout=20)
        assert node.live_connections == 0
