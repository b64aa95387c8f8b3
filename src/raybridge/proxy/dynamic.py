"""Dynamic ports: an inbound with ``"allocate": {"strategy": "random"}``.

V2Ray 4.34's ``app/proxyman/inbound/dynamic.go``: instead of listening on every port of
its range, the inbound listens on ``concurrency`` ports picked at random, and picks a new
set every ``refresh`` minutes; each set is closed two periods after it was opened, so a
client told about a port (VMess ``detour``, proxy/vmess.py) has time to use it. Ports of
sets still open are not picked again. A port that cannot be bound is skipped (logged).

:meth:`DynamicPorts.pick` is what a detour asks: one open port at random and the minutes
it is still announced for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from raybridge.config.model import AllocateConfig
from raybridge.link import Inbound
from raybridge.proxy.base import StreamInbound

logger = logging.getLogger("raybridge.proxy.dynamic")


class DynamicPorts(Inbound):
    """A set of inbounds on random ports of ``ports``, renewed every ``refresh`` minutes.
    ``make(port)`` builds the inbound for one port; ``adopt`` (if set) sees each one before
    it starts (a detour shares its users with them)."""

    def __init__(
        self,
        tag: str,
        ports: list[int],
        allocate: AllocateConfig,
        make: Callable[[int], StreamInbound],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tag = tag
        self.ports = list(ports)
        self.concurrency = allocate.concurrency
        self.period = allocate.refresh * 60.0
        self.make = make
        self.adopt: Callable[[StreamInbound], None] | None = None
        self.current: list[StreamInbound] = []
        self._open: set[StreamInbound] = set()
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._refreshed = clock()
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- what a detour asks ------------------------------------------------------------
    def pick(self) -> tuple[StreamInbound, int] | None:
        """An open inbound of the current set at random, and the whole minutes left until
        the next refresh (V2Ray's ``GetRandomInboundProxy``); ``None`` if none is open."""
        if not self.current:
            return None
        inbound = self._rng.choice(self.current)
        elapsed = int((self._clock() - self._refreshed) // 60)
        return inbound, max(int(self.period // 60) - elapsed, 0)

    # -- running -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        if self._closed:
            return
        in_use = {inbound.port for inbound in self._open}
        free = [port for port in self.ports if port not in in_use]
        chosen = self._rng.sample(free, min(self.concurrency, len(free)))
        opened: list[StreamInbound] = []
        for port in chosen:
            inbound = self.make(port)
            if self.adopt is not None:
                self.adopt(inbound)
            try:
                await inbound.start()
            except OSError as exc:
                logger.warning("dynamic port %s of inbound [%s]: %s", port, self.tag, exc)
                continue
            opened.append(inbound)
            self._open.add(inbound)
        self.current = opened
        self._refreshed = self._clock()
        logger.info("inbound [%s] listens on ports %s", self.tag, [i.port for i in opened])
        self._later(2 * self.period, lambda: self._close_set(opened))
        self._later(self.period, self.refresh)

    def _later(self, delay: float, step: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._timers.discard(handle)
            result = step()
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        handle = loop.call_later(delay, run)
        self._timers.add(handle)

    async def _close_set(self, inbounds: list[StreamInbound]) -> None:
        for inbound in inbounds:
            self._open.discard(inbound)
            await inbound.close()

    async def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        inbounds, self._open = list(self._open), set()
        self.current = []
        for inbound in inbounds:
            await inbound.close()
