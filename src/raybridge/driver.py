"""A sans-IO policy machine on the event loop: aioquic's timer model, shared by its adapters.

The machines (``protocols/reverse_policy.py``, ``protocols/dnspolicy.py``) take ``now`` at
every entry point, queue events (``next_event()``), and say when they next want to be woken
(``get_timer()``, then ``handle_timer(now)``). Their asyncio adapters (``proxy/reverse.py``,
``dns.py``) each hold one :class:`PolicyDriver`: after every entry point it hands the queued
events to the adapter and keeps one ``loop.call_at`` on the machine's timer. The clock is
the running loop's, the one ``call_at`` uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class Policy(Protocol):
    def next_event(self) -> Any: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class PolicyDriver:
    """Carries out a policy machine's events and holds its one timer (aioquic's
    ``_handle_timer``): :meth:`run` after every entry point drains the events, then re-arms
    the timer."""

    def __init__(self, policy: Policy, handle: Callable[[Any], None]) -> None:
        self.policy = policy
        self._handle = handle
        self.handle: asyncio.TimerHandle | None = None
        self._at: float | None = None
        self._closed = False

    def run(self) -> None:
        next_event = self.policy.next_event
        while (event := next_event()) is not None:
            self._handle(event)  # may call an entry point, whose events queue up behind
        when = None if self._closed else self.policy.get_timer()
        if when == self._at:
            return
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self._at = when
        if when is not None:
            self.handle = asyncio.get_running_loop().call_at(when, self._fire)

    def close(self) -> None:
        """No more timers (the adapter is shutting down)."""
        self._closed = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self._at = None

    def _fire(self) -> None:
        at = self._at
        self.handle = self._at = None
        # The loop may run a timer a clock tick early: the machine is told it is due.
        now = asyncio.get_running_loop().time()
        self.policy.handle_timer(now if at is None else max(now, at))
        self.run()
