"""What a node counts for ``/metrics``, ``/api/status`` and the dashboard.

Nothing here is on the hot path: ends already keep per-session byte counters
(``Session.bytes_up``/``bytes_down``, plain attribute arithmetic); the dispatcher registers
each session once, and it is folded into the totals once when its inbound side closes.
Live sessions are read at scrape time, so totals include transfers still running.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field

from raybridge.link import Session


@dataclass(slots=True)
class Totals:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _totals(table: dict[str, Totals], key: str) -> Totals:
    """``table[key]``, made on first use (no throw-away ``Totals`` per call)."""
    totals = table.get(key)
    if totals is None:
        totals = table[key] = Totals()
    return totals


@dataclass(slots=True)
class Event:
    time: float
    level: str
    message: str


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors of the node's error log for the dashboard."""

    def __init__(self, size: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.events: deque[Event] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - a bad format string must not break logging
            message = str(record.msg)
        self.events.append(Event(record.created, record.levelname.lower(), message))


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    inbound: dict[str, Totals] = field(default_factory=dict)
    outbound: dict[str, Totals] = field(default_factory=dict)
    #: (inbound tag, reason) -> count of connections refused during their handshake
    handshake_failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: bridge tag -> tunnels dialled after the first one
    reconnects: Counter[str] = field(default_factory=Counter)
    #: (role, tag, reason) -> tunnels dropped
    tunnel_drops: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    live: weakref.WeakSet[Session] = field(default_factory=weakref.WeakSet)
    recent: RecentErrors = field(default_factory=RecentErrors)

    def opened(self, session: Session, outbound: str) -> None:
        session.outbound_tag = outbound
        _totals(self.inbound, session.inbound_tag).connections += 1
        _totals(self.outbound, outbound).connections += 1
        self.live.add(session)

    def closed(self, session: Session) -> None:
        """Fold a finished session into the totals (once)."""
        if session.counted:
            return
        session.counted = True
        self.live.discard(session)
        for totals in (
            _totals(self.inbound, session.inbound_tag),
            _totals(self.outbound, session.outbound_tag),
        ):
            totals.bytes_up += session.bytes_up
            totals.bytes_down += session.bytes_down

    def handshake_failed(self, inbound: str, reason: str) -> None:
        self.handshake_failures[(inbound, reason)] += 1

    # -- reading -----------------------------------------------------------------------
    def bytes_by(self, attr: str) -> dict[str, tuple[int, int]]:
        """tag -> (bytes up, bytes down) including live sessions."""
        source = self.inbound if attr == "inbound_tag" else self.outbound
        out = {tag: (t.bytes_up, t.bytes_down) for tag, t in source.items()}
        for session in list(self.live):
            if session.counted:
                continue
            tag = getattr(session, attr)
            up, down = out.get(tag, (0, 0))
            out[tag] = (up + session.bytes_up, down + session.bytes_down)
        return out

    def open_connections(self) -> Counter[str]:
        return Counter(s.inbound_tag for s in list(self.live) if not s.counted)
