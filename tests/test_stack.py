"""``transport/stack.py``: layers under real loopback sockets (TLS here; the other layers
have their own tests), with an ordinary protocol on top that never knows."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import pytest

from raybridge.certs import make_ca, make_leaf
from raybridge.config.stream import TlsCertificate, TlsSettings
from raybridge.protocols.tls import TlsLayer
from raybridge.transport.stack import LayerStack
from raybridge.transport.tls import client_context, server_tls
from tests.support import LOCAL, free_port

CA = make_ca()
LEAF = make_leaf(CA, ["example.test"])
SERVER = TlsSettings(
    certificates=(
        TlsCertificate(certificate=LEAF.cert, key=LEAF.key, usage="encipherment", where="t"),
    )
)
CLIENT = TlsSettings(
    certificates=(TlsCertificate(certificate=CA.cert, key=None, usage="verify", where="t"),),
    disable_system_root=True,
)


class Echo(asyncio.Protocol):
    """An ordinary protocol: echoes, and half-closes when its peer does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = hashlib.sha256()
        self.size = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got.update(data)
        self.size += len(data)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_tls_stack_carries_a_protocol_that_never_knows() -> None:
    loop = asyncio.get_running_loop()
    port = free_port()
    holder = server_tls(SERVER, "tcp")
    server = await loop.create_server(
        lambda: LayerStack(
            [TlsLayer(holder.context, server_side=True)],
            Echo(),
            server_side=True,
            handshake_timeout=5,
        ),
        LOCAL,
        port,
    )
    try:
        collect = Collect()
        ctx = client_context(CLIENT, "tcp")
        await loop.create_connection(
            lambda: LayerStack(
                [TlsLayer(ctx, server_side=False, server_hostname="example.test")],
                collect,
                server_side=False,
            ),
            LOCAL,
            port,
        )
        data = os.urandom(3_000_000)
        collect.transport.write(data[:1000])  # before the handshake: held
        collect.transport.write(data[1000:])
        collect.transport.write_eof()  # close_notify, then TCP half-close
        await asyncio.wait_for(collect.done, 20)
        assert collect.size == len(data)
        assert collect.got.digest() == hashlib.sha256(data).digest()
    finally:
        server.close()


async def test_plaintext_client_on_a_tls_port_gets_nothing_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        loop = asyncio.get_running_loop()
        port = free_port()
        holder = server_tls(SERVER, "tcp")
        failures: list[tuple[str, str]] = []
        server = await loop.create_server(
            lambda: LayerStack(
                [TlsLayer(holder.context, server_side=True)],
                Echo(),
                server_side=True,
                on_failure=lambda layer, reason: failures.append((layer, reason)),
            ),
            LOCAL,
            port,
        )
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"\x16\x03\x01\x00\x05hello, not TLS at all" * 4)
            answer = await asyncio.wait_for(reader.read(), 5)
            # OpenSSL may send an alert record; never application data.
            assert answer == b"" or answer[:1] == b"\x15"
            writer.close()
            assert failures and failures[0][0] == "tls"
            # and the server serves the next (TLS) client
            collect = Collect()
            ctx = client_context(CLIENT, "tcp")
            await loop.create_connection(
                lambda: LayerStack(
                    [TlsLayer(ctx, server_side=False, server_hostname="example.test")],
                    collect,
                    server_side=False,
                ),
                LOCAL,
                port,
            )
            collect.transport.write(b"ping")
            collect.transport.write_eof()
            await asyncio.wait_for(collect.done, 5)
            assert collect.size == 4
        finally:
            server.close()
    assert "tls:" in caplog.text


async def test_a_silent_client_is_dropped_at_the_handshake_deadline() -> None:
    loop = asyncio.get_running_loop()
    port = free_port()
    holder = server_tls(SERVER, "tcp")
    upper = Echo()
    server = await loop.create_server(
        lambda: LayerStack(
            [TlsLayer(holder.context, server_side=True)],
            upper,
            server_side=True,
            handshake_timeout=0.2,
        ),
        LOCAL,
        port,
    )
    try:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        assert not hasattr(upper, "transport")  # never connected above the stack
    finally:
        server.close()
