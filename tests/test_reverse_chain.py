"""The seed's reverse chain A (bridge) - B (portal) - C (client) on loopback, each node
raybridge or V2Ray 4.34, alterId 64 and 0.

Each case: 20 MB each way through C's SOCKS port (SHA-256), 200 concurrent connections each
echoing 100 KB, and UDP datagrams through SOCKS UDP ASSOCIATE, all leaving through A.
"""

from __future__ import annotations

import itertools

import pytest

from tests.support import RB, V2, StartChain, exercise

MIXES = list(itertools.product([RB, V2], repeat=3))  # (A, B, C)


def mix_id(mix: tuple[str, str, str]) -> str:
    return "-".join(
        f"{role}={'rb' if kind == RB else 'v2'}" for role, kind in zip("ABC", mix, strict=True)
    )


@pytest.mark.parametrize("alter_id", [0, 64], ids=["aead", "legacy"])
@pytest.mark.parametrize("mix", MIXES, ids=[mix_id(m) for m in MIXES])
async def test_seed_chain(
    mix: tuple[str, str, str], alter_id: int, start_chain: StartChain
) -> None:
    s_port, echo = await start_chain(*mix, alter_id=alter_id)  # skips V2 mixes without V2Ray
    await exercise(s_port, echo)
