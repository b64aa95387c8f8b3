"""Process-level settings for a node: the event loop and the memory allocator.

* uvloop (libuv) is used when installed: faster I/O callbacks than asyncio's selector loop.
* The soft limit on open files is raised to the hard limit, as Go (so V2Ray) does at start:
  a relay holds two sockets per connection, and 1024 would stop it at ~500.
* glibc's malloc serves blocks of 128 KiB and more with ``mmap`` and returns them with
  ``munmap``, and trims the top of the heap as soon as 128 KiB are free there. A relay
  allocates and frees a few blocks of ~256 KiB per read (the read itself, the sealed
  chunks), so with the defaults every one of them costs fresh page faults and zeroing
  by the kernel: measured at up to a fifth of a node's CPU time. Raising the mmap
  threshold keeps those blocks in the heap, reused from one read to the next; the trim
  threshold goes up to 4 MiB only, so the heap's top stays bounded.
* Freed blocks in the middle of the heap still stay in the process, so under mixed load a
  node's RSS would creep up with fragmentation. A running node calls ``malloc_trim(0)``
  every ``TRIM_INTERVAL`` seconds, which hands every free page of the heap back to the
  kernel (a few milliseconds each time). In the soak (``bench/soak.py``) the bridge held
  100-130 MB with a 64 MiB trim threshold and no trims, 45-65 MB with both, at the same
  speed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger("raybridge")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024

#: Seconds between two heap trims of a running node.
TRIM_INTERVAL = 30.0

#: The C library, once ``tune_allocator`` has set its thresholds (then trims are possible).
_libc: ctypes.CDLL | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring). Returns whether
    it did; a no-op on other C libraries."""
    global _libc
    if _libc is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if ok:
        _libc = libc
    return ok


def trim_heap() -> bool:
    """Give the heap's free pages back to the kernel (glibc's ``malloc_trim``); returns
    whether memory was released. A no-op unless ``tune_allocator`` ran."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))


class HeapTrimmer:
    """Calls ``trim_heap`` every ``interval`` seconds on the running loop until stopped."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self.trims = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if _libc is not None and self._handle is None:
            self._schedule()

    def _schedule(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._run)

    def _run(self) -> None:
        trim_heap()
        self.trims += 1
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def loop_name() -> str:
    import asyncio

    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"
