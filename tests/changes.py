"""Helpers for tests that change a running node (test_node_changes, test_reload,
test_drain): a config base with loopback-only freedom, a SOCKS inbound, and connections
that must be refused or must live through a change."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from tests.support import LOCAL, socks_connect, socks_echo

#: How long a connection that should fail may take to show it (a VMess server drains an
#: unknown user's bytes rather than closing at once): a bound against hangs only.
REFUSED_WITHIN = 5.0


def loopback_only(outbounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Blackhole first (the default), freedom for loopback, then ``outbounds``."""
    return {
        "log": {"loglevel": "warning"},
        "outbounds": [
            {"tag": "block", "protocol": "blackhole"},
            {"tag": "direct", "protocol": "freedom"},
            *outbounds,
        ],
        "routing": {"rules": [{"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "direct"}]},
    }


def socks_in(tag: str, port: int) -> dict[str, Any]:
    return {"tag": tag, "protocol": "socks", "listen": LOCAL, "port": port}


async def refused(port: int, echo_port: int) -> bool:
    """True if a connection through SOCKS ``port`` does not echo."""
    try:
        await asyncio.wait_for(socks_echo(port, echo_port, 1000), REFUSED_WITHIN)
    except (OSError, AssertionError, TimeoutError, asyncio.IncompleteReadError):
        return True
    return False


class Live:
    """A connection through SOCKS kept open across a change, echoing on demand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def echo(self, size: int = 50_000) -> None:
        data = os.urandom(size)
        self.writer.write(data)
        got = await asyncio.wait_for(self.reader.readexactly(size), 30)
        assert got == data


@contextlib.asynccontextmanager
async def live(port: int, echo_port: int) -> AsyncIterator[Live]:
    reader, writer = await socks_connect(port, LOCAL, echo_port)
    conn = Live(reader, writer)
    try:
        await conn.echo()
        yield conn
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
