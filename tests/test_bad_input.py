"""Garbage on a listening port closes that one connection, is logged, and the node goes on
serving the next good connection (SOCKS, HTTP and VMess inbounds)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from typing import Any

import pytest

from raybridge.address import tcp
from raybridge.protocols.vmess import ClientConnection, Command, Security, User
from tests.support import (
    LOCAL,
    EchoServer,
    client_config,
    free_port,
    new_uuid,
    node,
    socks_echo,
)

UID = new_uuid()
OTHER = new_uuid()


def server(s_port: int, h_port: int, v_port: int) -> dict[str, Any]:
    return {
        "inbounds": [
            {"tag": "socks", "protocol": "socks", "listen": LOCAL, "port": s_port},
            {"tag": "http", "protocol": "http", "listen": LOCAL, "port": h_port},
            {
                "tag": "vmess",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": v_port,
                "settings": {"clients": [{"id": UID, "alterId": 4}]},
            },
        ],
        "outbounds": [{"protocol": "freedom"}],
    }


async def closed_after(port: int, payload: bytes, *, eof: bool = False) -> bytes:
    """Send ``payload`` (then EOF if asked) and return what the server said before closing."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(payload)
    if eof:
        writer.write_eof()
    chunks = []
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            chunks.append(data)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return b"".join(chunks)


def vmess_request(user_id: str, security: Security = Security.AES_128_GCM, **kw: Any) -> bytes:
    user = User(id=uuid.UUID(user_id), alter_id=kw.pop("alter_id", 0))
    conn = ClientConnection(
        user, Command.TCP, tcp(LOCAL, 9), security, now=time.time(), urandom=os.urandom, **kw
    )
    return conn.send(b"hello")


rng = random.Random(1234)
GARBAGE = bytes(rng.randrange(256) for _ in range(8192))

CASES: dict[str, tuple[str, bytes, bool]] = {
    # name: (inbound, payload, send EOF after it)
    "socks-random": ("socks", b"\x16\x03\x01" + GARBAGE[:200], False),
    "socks-truncated": ("socks", b"\x05\x01\x00\x05\x01\x00\x03\x20exa", True),
    "socks-oversized": (
        "socks",
        b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"\xfe" * 255 + b"\0P",
        False,
    ),
    "socks-flood": ("socks", b"\x05\xff" + GARBAGE[:4000], False),
    "http-random": ("http", GARBAGE[:300], False),
    "http-truncated": ("http", b"GET http://example.com/ HTTP/1.1\r\nHost: exa", True),
    "http-oversized": (
        "http",
        b"GET http://x/ HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        False,
    ),
    "vmess-random": ("vmess", GARBAGE, False),
    "vmess-truncated": ("vmess", vmess_request(UID)[:40], True),
    "vmess-wrong-uuid": ("vmess", vmess_request(OTHER) + GARBAGE[:4000], False),
    "vmess-wrong-uuid-legacy": (
        "vmess",
        vmess_request(OTHER, alter_id=4) + GARBAGE[:4000],
        False,
    ),
    # A valid header, then a chunk whose length field claims 65535 bytes of garbage.
    "vmess-oversized-chunk": (
        "vmess",
        vmess_request(UID, security=Security.AES_128_GCM)[:-2] + b"\xff\xff" + GARBAGE * 8,
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_bad_input_closes_one_connection(name: str, caplog: pytest.LogCaptureFixture) -> None:
    inbound, payload, eof = CASES[name]
    caplog.set_level(logging.INFO, logger="raybridge")

    s_port, h_port, v_port, c_port = free_port(), free_port(), free_port(), free_port()
    port = {"socks": s_port, "http": h_port, "vmess": v_port}[inbound]
    async with EchoServer() as echo, node(server(s_port, h_port, v_port)):
        async with node(client_config(c_port, v_port, UID)):
            # A good connection before, the bad one, and a good one after.
            await socks_echo(c_port, echo.port, 50_000)
            reply = await closed_after(port, payload, eof=eof)
            if inbound == "http" and not eof:
                assert reply.startswith(b"HTTP/1.1 4"), reply[:100]
            if inbound == "vmess":
                assert reply == b""  # a VMess server never answers a bad request
            await socks_echo(c_port, echo.port, 50_000)
            await socks_echo(s_port, echo.port, 50_000)
    rejected = [r for r in caplog.records if "127.0.0.1" in r.getMessage()]
    assert any(inbound in r.getMessage().lower() for r in rejected), [
        r.getMessage() for r in caplog.records
    ]
