"""The seed's reverse chain A (bridge) - B (portal) - C (client) on loopback, each node
raybridge or V2Ray 4.34, alterId 64 and 0.

Each case: 20 MB each way through C's SOCKS port (SHA-256), 200 concurrent connections each
echoing 100 KB, and UDP datagrams through SOCKS UDP ASSOCIATE, all leaving through A.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import (
    HAVE_V2RAY,
    EchoServer,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    socks_echo,
    socks_udp_echo,
    v2ray,
)

RB, V2 = "raybridge", "v2ray"
MIXES = list(itertools.product([RB, V2], repeat=3))  # (A, B, C)


@contextlib.asynccontextmanager
async def run(kind: str, config: dict[str, Any], port: int | None) -> AsyncIterator[None]:
    if kind == RB:
        async with node(config):
            yield
    else:
        with v2ray(config, wait=[port] if port else []):
            yield


async def wait_chain(socks_port: int, echo_port: int, timeout: float = 20.0) -> float:
    """Seconds until a connection through the chain echoes (the bridge has registered)."""
    start = time.monotonic()
    while True:
        try:
            await asyncio.wait_for(socks_echo(socks_port, echo_port, 100), 5)
            return time.monotonic() - start
        except (TimeoutError, OSError, AssertionError):
            if time.monotonic() - start > timeout:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def chain(
    a: str, b: str, c: str, *, alter_id: int = 0, single_inbound: bool = False
) -> AsyncIterator[tuple[int, EchoServer]]:
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    b_conf = portal_config(t_port, c_port, ua, uc, alter_id=alter_id, single_inbound=single_inbound)
    if single_inbound:
        c_port = t_port
    async with EchoServer() as echo:
        async with (
            run(b, b_conf, t_port),
            run(a, bridge_config(t_port, ua, alter_id=alter_id), None),
            run(c, client_config(s_port, c_port, uc, alter_id=alter_id), s_port),
        ):
            await wait_chain(s_port, echo.port)
            yield s_port, echo


async def exercise(s_port: int, echo: EchoServer) -> None:
    await socks_echo(s_port, echo.port, 20_000_000)
    before = echo.connections
    await asyncio.gather(*(socks_echo(s_port, echo.port, 100_000) for _ in range(200)))
    assert echo.connections - before == 200
    datagrams = [os.urandom(n) for n in (1, 700, 1400, 1900)]
    assert await socks_udp_echo(s_port, echo.port, datagrams) == datagrams


def mix_id(mix: tuple[str, str, str]) -> str:
    return "-".join(
        f"{role}={'rb' if kind == RB else 'v2'}" for role, kind in zip("ABC", mix, strict=True)
    )


@pytest.mark.parametrize("alter_id", [0, 64], ids=["aead", "legacy"])
@pytest.mark.parametrize("mix", MIXES, ids=[mix_id(m) for m in MIXES])
def test_seed_chain(mix: tuple[str, str, str], alter_id: int) -> None:
    if V2 in mix and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")

    async def main() -> None:
        async with chain(*mix, alter_id=alter_id) as (s_port, echo):
            await exercise(s_port, echo)

    asyncio.run(main())
