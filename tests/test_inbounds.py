"""HTTP and dokodemo-door inbounds, SOCKS auth, freedom redirect, blackhole and routing, all
through raybridge nodes on loopback with verified bytes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from typing import Any

import pytest

from raybridge.proxy.blackhole import HTTP_RESPONSE
from tests.support import (
    LOCAL,
    EchoServer,
    echo_roundtrip,
    free_port,
    http_body,
    http_server,
    new_uuid,
    node,
    server_config,
    socks_connect,
    socks_echo,
)


def vmess_out(port: int, uid: str) -> dict[str, Any]:
    return {
        "tag": "vmess-out",
        "protocol": "vmess",
        "settings": {"vnext": [{"address": LOCAL, "port": port, "users": [{"id": uid}]}]},
    }


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        data = await reader.read(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def http_connect(port: int, target: str, auth: str | None = None) -> tuple[Any, Any, bytes]:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    extra = f"Proxy-Authorization: Basic {auth}\r\n" if auth else ""
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def test_http_inbound_connect_and_forward() -> None:
    uid = new_uuid()
    b_port, h_port = free_port(), free_port()
    c = {
        "inbounds": [{"tag": "http-in", "protocol": "http", "listen": LOCAL, "port": h_port}],
        "outbounds": [vmess_out(b_port, uid)],
    }
    async with EchoServer() as echo, http_server() as web, node(server_config(b_port, uid)):
        async with node(c):
            # CONNECT: a raw tunnel, 2 MB each way.
            reader, writer, head = await http_connect(h_port, f"{LOCAL}:{echo.port}")
            assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            sent, got = await echo_roundtrip(reader, writer, 2_000_000)
            assert sent == got
            writer.close()
            # A plain proxied GET: the body arrives intact and the connection closes.
            reader, writer = await asyncio.open_connection(LOCAL, h_port)
            writer.write(
                f"GET http://{LOCAL}:{web}/300000 HTTP/1.1\r\nHost: {LOCAL}:{web}\r\n"
                "Proxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\n".encode()
            )
            response = await asyncio.wait_for(read_all(reader), 10)
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"Connection: close" in head
            assert b"Keep-Alive" not in head
            assert hashlib.sha256(body).digest() == hashlib.sha256(http_body(300000)).digest()
            writer.close()


async def test_http_inbound_basic_auth() -> None:
    h_port = free_port()
    c = {
        "inbounds": [
            {
                "protocol": "http",
                "listen": LOCAL,
                "port": h_port,
                "settings": {"accounts": [{"user": "alice", "pass": "s3cret"}]},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    async with EchoServer() as echo, node(c):
        target = f"{LOCAL}:{echo.port}"
        reader, writer, head = await http_connect(h_port, target)
        assert head.startswith(b"HTTP/1.1 407 ")
        assert b'Proxy-Authenticate: Basic realm="proxy"' in head
        assert await reader.read() == b""  # closed
        writer.close()
        bad = base64.b64encode(b"alice:wrong").decode()
        reader, writer, head = await http_connect(h_port, target, bad)
        assert head.startswith(b"HTTP/1.1 407 ")
        writer.close()
        good = base64.b64encode(b"alice:s3cret").decode()
        reader, writer, head = await http_connect(h_port, target, good)
        assert head.startswith(b"HTTP/1.1 200 ")
        sent, got = await echo_roundtrip(reader, writer, 100_000)
        assert sent == got
        writer.close()


async def test_dokodemo_door_tcp_and_udp() -> None:
    uid = new_uuid()
    b_port, d_port = free_port(), free_port()
    async with EchoServer() as echo:
        c = {
            "inbounds": [
                {
                    "tag": "door",
                    "protocol": "dokodemo-door",
                    "listen": LOCAL,
                    "port": d_port,
                    "settings": {
                        "address": LOCAL,
                        "port": echo.port,
                        "network": "tcp,udp",
                    },
                }
            ],
            "outbounds": [vmess_out(b_port, uid)],
        }
        async with node(server_config(b_port, uid)), node(c):
            reader, writer = await asyncio.open_connection(LOCAL, d_port)
            sent, got = await echo_roundtrip(reader, writer, 3_000_000)
            assert sent == got
            writer.close()

            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[bytes] = asyncio.Queue()

            class Client(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    queue.put_nowait(data)

            transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(LOCAL, d_port))
            try:
                for size in (1, 512, 1900):
                    datagram = os.urandom(size)
                    transport.sendto(datagram)
                    assert await asyncio.wait_for(queue.get(), 5) == datagram
            finally:
                transport.close()


async def test_socks_password_auth() -> None:
    s_port = free_port()
    c = {
        "inbounds": [
            {
                "protocol": "socks",
                "listen": LOCAL,
                "port": s_port,
                "settings": {"auth": "password", "accounts": [{"user": "u", "pass": "p"}]},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    async with EchoServer() as echo, node(c):
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            await socks_connect(s_port, LOCAL, echo.port, username="u", password="x")
        with pytest.raises(Exception):  # noqa: B017
            await socks_connect(s_port, LOCAL, echo.port)
        reader, writer = await socks_connect(s_port, LOCAL, echo.port, username="u", password="p")
        sent, got = await echo_roundtrip(reader, writer, 200_000)
        assert sent == got
        writer.close()


async def test_routing_redirect_and_blackhole() -> None:
    """Rules by domain pick freedom-with-redirect (port mapping) or blackhole (http)."""
    s_port = free_port()
    async with EchoServer() as echo:
        c = {
            "inbounds": [{"tag": "in", "protocol": "socks", "listen": LOCAL, "port": s_port}],
            "outbounds": [
                {"tag": "direct", "protocol": "freedom"},
                {
                    "tag": "mapped",
                    "protocol": "freedom",
                    "settings": {"redirect": f"{LOCAL}:{echo.port}"},
                },
                {
                    "tag": "block",
                    "protocol": "blackhole",
                    "settings": {"response": {"type": "http"}},
                },
            ],
            "routing": {
                "rules": [
                    {"type": "field", "domain": ["full:nas.lan"], "outboundTag": "mapped"},
                    {"type": "field", "domain": ["domain:ads.test"], "outboundTag": "block"},
                    {"type": "field", "port": "1-1024", "outboundTag": "block"},
                ]
            },
        }
        async with node(c):
            # nas.lan:80 is redirected to the echo server.
            reader, writer = await socks_connect(s_port, "nas.lan", 80)
            sent, got = await echo_roundtrip(reader, writer, 500_000)
            assert sent == got
            writer.close()
            # Anything under ads.test gets V2Ray's 403 and is closed.
            reader, writer = await socks_connect(s_port, "x.ads.test", 5555)
            assert await asyncio.wait_for(read_all(reader), 5) == HTTP_RESPONSE
            writer.close()
            # The port rule: 127.0.0.1:22 is blocked, the echo port is direct.
            reader, writer = await socks_connect(s_port, LOCAL, 22)
            assert await asyncio.wait_for(read_all(reader), 5) == HTTP_RESPONSE
            writer.close()
            await socks_echo(s_port, echo.port, 100_000)


# -- SOCKS: fail closed, and UDP only for live associations (issue 11, finding 1 and 7) ------


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until it holds (a deadline, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _associate(port: int, **creds: str) -> tuple[Any, Any, Any]:
    """An authenticated UDP ASSOCIATE; returns (reader, writer, the relay Destination)."""
    from raybridge.address import Destination, Network, parse_host
    from raybridge.protocols.socks import SocksClient, SocksCommand

    reader, writer = await asyncio.open_connection(LOCAL, port)
    client = SocksClient(
        Destination(Network.UDP, parse_host("0.0.0.0"), 0),
        command=SocksCommand.UDP_ASSOCIATE,
        **creds,  # type: ignore[arg-type]
    )
    writer.write(client.initial_bytes())
    while not client.done:
        data = await asyncio.wait_for(reader.read(1024), 10)
        assert data, "the server closed the control connection"
        out = client.receive_data(data)
        if out:
            writer.write(out)
    return reader, writer, client.bound


async def test_socks_password_without_accounts_refuses_everyone() -> None:
    """What the node builds for ``"auth": "password"`` with no accounts (the loader now
    refuses that config): no client gets in, with or without credentials. It used to be an
    open proxy."""
    from raybridge.proxy.base import InboundCommon
    from raybridge.proxy.socks import SocksInbound

    s_port = free_port()
    async with EchoServer() as echo, node({"outbounds": [{"protocol": "freedom"}]}) as n:
        common = InboundCommon(tag="pw", listen=LOCAL, port=s_port, dispatcher=n.dispatcher)
        inbound = SocksInbound(common, accounts={})
        await inbound.start()
        try:
            reader, writer = await asyncio.open_connection(LOCAL, s_port)
            writer.write(b"\x05\x01\x00")  # offering only "no authentication"
            assert await asyncio.wait_for(read_all(reader), 10) == b"\x05\xff"
            writer.close()
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                await socks_connect(s_port, LOCAL, echo.port, username="u", password="p")
            assert echo.connections == 0
        finally:
            await inbound.close()


async def test_socks_password_udp_needs_a_live_association() -> None:
    """RFC 1928 section 7: with a password, a datagram from an address that holds no
    authenticated association is dropped (it used to be relayed: an open UDP proxy); once
    the association's TCP connection closes, its flows end and datagrams are dropped
    again."""
    from raybridge.address import Destination, Network, parse_host
    from raybridge.protocols.socks import encode_udp_datagram

    reason = "no UDP association from this address"
    s_port = free_port()
    c = {
        "inbounds": [
            {
                "protocol": "socks",
                "listen": LOCAL,
                "port": s_port,
                "settings": {
                    "auth": "password",
                    "accounts": [{"user": "u", "pass": "p"}],
                    "udp": True,
                },
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    loop = asyncio.get_running_loop()
    async with EchoServer() as echo, node(c) as n:
        udp_server = n.inbounds[0].udp_server
        target = Destination(Network.UDP, parse_host(LOCAL), echo.port)
        transport, proto = await loop.create_datagram_endpoint(_Datagrams, local_addr=(LOCAL, 0))
        try:
            # No association: dropped, counted, nothing reaches the echo server.
            transport.sendto(encode_udp_datagram(target, b"bare"), (LOCAL, s_port))
            await _until(lambda: udp_server.drops.counts[reason] == 1, "the drop")
            assert not udp_server.flows and proto.queue.empty()

            _, writer, relay = await _associate(s_port, username="u", password="p")
            relay_addr = (str(relay.host), relay.port)
            transport.sendto(encode_udp_datagram(target, b"one"), relay_addr)
            reply = await asyncio.wait_for(proto.queue.get(), 10)
            assert reply.endswith(b"one")
            assert len(udp_server.flows) == 1

            writer.close()  # the association ends, and its flow with it
            await _until(lambda: not udp_server.flows, "the flow to end")
            transport.sendto(encode_udp_datagram(target, b"late"), relay_addr)
            await _until(lambda: udp_server.drops.counts[reason] == 2, "the second drop")
            assert proto.queue.empty()
        finally:
            transport.close()


async def test_socks_udp_association_idle_timeout() -> None:
    """A UDP ASSOCIATE control connection used to be held forever; it now ends after the
    policy's connIdle without traffic on it or its flows (here 1 s)."""
    s_port = free_port()
    c = {
        "inbounds": [
            {"protocol": "socks", "listen": LOCAL, "port": s_port, "settings": {"udp": True}}
        ],
        "outbounds": [{"protocol": "freedom"}],
        "policy": {"levels": {"0": {"connIdle": 1}}},
    }
    async with node(c):
        reader, writer, _ = await _associate(s_port)
        try:
            # The server closes it (EOF or reset); 10 s is a deadline, not a measurement.
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(1024), 10) == b""
        finally:
            writer.close()


def test_every_protocol_the_config_accepts_has_a_builder() -> None:
    """The registry covers exactly what the config layer lets through; a config made by
    hand with another protocol, or with another protocol's settings, is a ConfigError
    naming the entry."""
    from raybridge.config.model import (
        SUPPORTED_INBOUNDS,
        SUPPORTED_OUTBOUNDS,
        BlackholeSettings,
        Config,
        FreedomSettings,
        OutboundConfig,
    )
    from raybridge.errors import ConfigError
    from raybridge.node import Node
    from raybridge.registry import INBOUNDS, OUTBOUNDS

    assert set(INBOUNDS) == SUPPORTED_INBOUNDS
    assert set(OUTBOUNDS) == SUPPORTED_OUTBOUNDS
    for protocol, settings, message in (
        ("trojan", FreedomSettings(), "unknown outbound protocol 'trojan'"),
        ("freedom", BlackholeSettings(), "outbound protocol 'freedom' cannot take"),
    ):
        out = OutboundConfig(protocol=protocol, settings=settings, file="a.json", line=7, index=1)
        with pytest.raises(ConfigError) as info:
            Node(Config(outbounds=[out]))
        assert str(info.value).startswith(f"a.json:7: outbounds[1]: {message}")
