"""Process-level settings: the allocator's thresholds and the periodic heap trim."""

from __future__ import annotations

import asyncio
import sys

import pytest

from raybridge import runtime
from tests.support import until

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


@linux
async def test_heap_trimmer_runs_until_stopped() -> None:
    assert runtime.tune_allocator()
    trimmer = runtime.HeapTrimmer(interval=0.001)
    trimmer.start()
    await until(lambda: trimmer.trims >= 3, step=0.001)
    trimmer.stop()
    trims = trimmer.trims
    await asyncio.sleep(0.01)  # kept: ten intervals in which no trim may happen (an absence)
    assert trimmer.trims == trims  # stopped: no timer left behind


@linux
def test_trim_hands_freed_heap_back() -> None:
    assert runtime.tune_allocator()
    # Below the raised mmap threshold these come from the heap and stay there once freed.
    blocks = [bytearray(200_000) for _ in range(300)]
    del blocks[::2]  # holes between live blocks: only a trim can return those pages
    assert runtime.trim_heap()
    del blocks
