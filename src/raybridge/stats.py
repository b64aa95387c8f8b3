"""What a node counts for ``/metrics``, ``/api/status``, the dashboard and V2Ray's stats API.

Nothing here is on the hot path: ends already keep per-session byte counters
(``Session.bytes_up``/``bytes_down``, plain attribute arithmetic); the dispatcher registers
each session once, and it is folded into the totals once when its inbound side closes.
Live sessions are read at scrape time, so totals include transfers still running.

``Session.bytes_up``/``bytes_down`` are the payload between the inbound and the rest of
the node, counted once, by the inbound side (V2Ray's user counters count the same bytes,
``app/dispatcher/default.go``). The outbound side never adds to them.

V2Ray's named counters (``app/stats``) are :class:`StatCounter` objects in a
:class:`Counters` registry; they exist only when the config has ``stats`` and the policy
turns them on, as in V2Ray:

- ``inbound>>>TAG>>>traffic>>>uplink/downlink`` (``policy.system.statsInbound*``): the bytes
  an inbound's connections read and write above the transport (TLS, WebSocket decoded),
  protocol handshakes included (``app/proxyman/inbound``); the inbound's ends hold the
  counter objects and add to them where they touch their medium;
- ``outbound>>>TAG>>>traffic>>>uplink/downlink`` (``statsOutbound*``): the same for the
  connections an outbound opens (``app/proxyman/outbound``);
- ``user>>>EMAIL>>>traffic>>>uplink/downlink`` (``policy.levels.N.statsUser*``): the payload
  of the user's sessions; the counter follows each live session's own byte counts and takes
  them in when it closes, so the relay does no work for it.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field

from raybridge.link import Session

USER_PREFIX = "user>>>"


class StatCounter:
    """One named counter: ``value`` (what ends add to directly) plus the bytes of the
    live sessions it follows (``Session.bytes_up`` or ``bytes_down`` since it started
    following them or was last reset)."""

    __slots__ = ("_live", "name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        #: session -> (which byte count, its value when the counter last took it in); weak,
        #: so a session that somehow never reports its end is not kept alive by a counter
        self._live: weakref.WeakKeyDictionary[Session, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )

    def follow(self, session: Session, attr: str) -> None:
        """Count ``session``'s ``attr`` (``"bytes_up"``/``"bytes_down"``) from now on."""
        self._live[session] = (attr, getattr(session, attr))
        session.counters = (*session.counters, self)

    def settle(self, session: Session) -> None:
        """``session`` ended: take its bytes in for good."""
        entry = self._live.pop(session, None)
        if entry is not None:
            self.value += getattr(session, entry[0]) - entry[1]

    def get(self) -> int:
        live: int = sum(getattr(s, attr) - base for s, (attr, base) in list(self._live.items()))
        return self.value + live

    def reset(self) -> int:
        """Set to 0 (V2Ray's ``Counter.Set(0)``); returns the value it had."""
        value = self.get()
        self.value = 0
        for s, (attr, _) in list(self._live.items()):
            self._live[s] = (attr, getattr(s, attr))
        return value


class Counters:
    """V2Ray's ``stats.Manager``: the named counters of a node."""

    def __init__(self) -> None:
        self.counters: dict[str, StatCounter] = {}

    def counter(self, name: str) -> StatCounter:
        """The counter ``name``, registered on first use (``GetOrRegisterCounter``)."""
        found = self.counters.get(name)
        if found is None:
            found = self.counters[name] = StatCounter(name)
        return found

    def get(self, name: str) -> StatCounter | None:
        return self.counters.get(name)

    def query(self, pattern: str) -> list[StatCounter]:
        """Counters whose name contains ``pattern`` (``strmatcher.Substr``), by name."""
        return [c for name, c in sorted(self.counters.items()) if pattern in name]

    def pair(self, kind: str, tag: str, up: bool, down: bool) -> tuple[StatCounter | None, ...]:
        """The (uplink, downlink) counters of inbound/outbound ``tag``, or ``None`` for
        each one off (an untagged handler has none, as in V2Ray)."""
        base = f"{kind}>>>{tag}>>>traffic>>>"
        return (
            self.counter(base + "uplink") if up and tag else None,
            self.counter(base + "downlink") if down and tag else None,
        )


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
    #: V2Ray's named counters; ``None`` when the config has no ``stats``.
    counters: Counters | None = None
    #: user level -> (statsUserUplink, statsUserDownlink), for the levels with either on
    user_levels: dict[int, tuple[bool, bool]] = field(default_factory=dict)

    def opened(self, session: Session, outbound: str) -> None:
        session.outbound_tag = outbound
        # (``get(...) or _totals(...)``: no call for a tag seen before; a Totals is true.)
        inbound, tag = self.inbound, session.inbound_tag
        (inbound.get(tag) or _totals(inbound, tag)).connections += 1
        (self.outbound.get(outbound) or _totals(self.outbound, outbound)).connections += 1
        self.live.add(session)
        if self.counters is not None and session.user and not session.counters:
            up, down = self.user_levels.get(session.level, (False, False))
            base = f"{USER_PREFIX}{session.user}>>>traffic>>>"
            if up:
                self.counters.counter(base + "uplink").follow(session, "bytes_up")
            if down:
                self.counters.counter(base + "downlink").follow(session, "bytes_down")

    def closed(self, session: Session) -> None:
        """Fold a finished session into the totals (once)."""
        if session.counted:
            return
        session.counted = True
        self.live.discard(session)
        for counter in session.counters:
            counter.settle(session)
        inbound, outbound = self.inbound, self.outbound
        itag, otag = session.inbound_tag, session.outbound_tag
        for totals in (
            inbound.get(itag) or _totals(inbound, itag),
            outbound.get(otag) or _totals(outbound, otag),
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
