"""The seed's reverse chain A (bridge) - B (portal) - C (client) on loopback, each node
raybridge or V2Ray 4.34, alterId 64 and 0.

Each case: 20 MB each way through C's SOCKS port (SHA-256), 200 concurrent connections each
echoing 100 KB, and UDP datagrams through SOCKS UDP ASSOCIATE, all leaving through A.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from tests.support import (
    HAVE_V2RAY,
    RB,
    V2,
    EchoServer,
    chain,
    socks_echo,
    socks_udp_echo,
)

MIXES = list(itertools.product([RB, V2], repeat=3))  # (A, B, C)


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
