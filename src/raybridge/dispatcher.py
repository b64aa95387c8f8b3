"""The dispatcher: routes an inbound's request to an outbound and joins the two ends.

This is V2Ray's ``app/dispatcher``: every inbound (and the mux server and reverse bridge,
which act as inbounds for the streams they carry) calls :meth:`Dispatcher.dispatch`; the
router picks an outbound tag; the outbound returns its end, joined to the inbound's.

A TCP link from an inbound with ``sniffing`` waits for its first bytes before it is routed
(docs/protocols.md 4.10): a :class:`SniffingEnd` holds them while ``protocols/sniff.py`` reads
them (at most 2048 bytes, at most two 100 ms windows), then the session's ``protocol`` is set
and, if ``destOverride`` names the sniffed protocol, the sniffed name replaces the
destination's address (same port) for routing and dialling, as in V2Ray 4.34.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from raybridge import log as logs
from raybridge.address import Destination, IPAddress, Network, parse_host
from raybridge.link import ClosedEnd, DeferredEnd, End, Outbound, Resolver, Session, join
from raybridge.protocols.sniff import Outcome, Sniffed, Sniffer
from raybridge.router import Router
from raybridge.stats import Stats

logger = logging.getLogger("raybridge.dispatcher")

#: A handler that takes over destinations by domain (e.g. ``v1.mux.cool``).
Interceptor = Callable[[Session, Destination, End], End]


class NoRouteError(ConnectionRefusedError):
    pass


class Dispatcher:
    def __init__(
        self, router: Router, outbounds: Sequence[Outbound], resolver: Resolver | None = None
    ) -> None:
        """``resolver``: what ``routing.domainStrategy`` resolves names with (the ``dns``
        section's client; the system's by default)."""
        self.router = router
        self.resolver = resolver or SystemResolver()
        #: The first outbound is the default (V2Ray's rule), tagged or not.
        self.default: Outbound | None = outbounds[0] if outbounds else None
        self.outbounds: dict[str, Outbound] = {o.tag: o for o in outbounds if o.tag}
        self.interceptors: dict[str, Interceptor] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = Stats()

    def add_outbound(self, outbound: Outbound) -> None:
        """Register an outbound at run time (reverse portals); never the default unless
        there is no other."""
        self.outbounds[outbound.tag] = outbound
        self.router.add_outbound(outbound.tag)
        if self.default is None:
            self.default = outbound

    def remove_outbound(self, tag: str) -> Outbound:
        """Unregister the outbound ``tag`` (``KeyError`` if there is none): new links can
        no longer reach it, live ones keep their ends. Like V2Ray's ``RemoveHandler``, a
        removed default leaves no default."""
        outbound = self.outbounds.pop(tag)
        self.router.remove_outbound(tag)
        if self.default is outbound:
            self.default = None
        return outbound

    def set_outbounds(self, outbounds: Sequence[Outbound], router: Router) -> None:
        """Route new links with ``router`` to ``outbounds`` from now on (a reload; the
        first is the default); live links keep the ends they have."""
        self.outbounds = {o.tag: o for o in outbounds if o.tag}
        self.default = outbounds[0] if outbounds else None
        self.router = router

    def intercept(self, domain: str, handler: Interceptor) -> None:
        """Let ``handler`` take every destination with this domain, before routing."""
        self.interceptors[domain] = handler

    def dispatch(self, session: Session, dest: Destination, peer: End) -> End:
        """Return the outbound end for ``dest``, joined to ``peer``. Never blocks."""
        if isinstance(dest.host, str):
            handler = self.interceptors.get(dest.host)
            if handler is not None:
                return handler(session, dest, peer)
        if session.sniffing is not None and dest.network is Network.TCP:
            return self._dispatch_after_sniff(session, dest, peer, session.sniffing)
        return self._route(session, dest, peer)

    def _route(self, session: Session, dest: Destination, peer: End) -> End:
        if isinstance(dest.host, str) and self.router.wants_ips(session, dest):
            return self._dispatch_after_resolve(session, dest, peer)
        return self._connect(session, dest, peer, self.router.pick(session, dest))

    def _connect(self, session: Session, dest: Destination, peer: End, tag: str | None) -> End:
        outbound = self.outbounds.get(tag) if tag else None
        if outbound is None:
            if tag:
                logger.warning("routing names unknown outbound %r; using the default", tag)
            outbound = self.default
        if outbound is None:
            logs.rejected(session.source, f"{dest}: no outbound", session.inbound_tag)
            end = ClosedEnd(NoRouteError(f"no outbound for {dest}"))
            join(peer, end)
            end.start()
            return end
        logs.accepted(session.source, dest, session.inbound_tag, outbound.tag, session.user)
        self.stats.opened(session, outbound.tag)
        return outbound.connect(session, dest, peer)

    def _dispatch_after_resolve(self, session: Session, dest: Destination, peer: End) -> End:
        deferred = DeferredEnd()
        join(peer, deferred)

        async def route() -> None:
            ips = await self.resolver.lookup(str(dest.host))
            if deferred.aborted:
                return
            tag = self.router.pick(session, dest, ips)
            deferred.bind(self._connect(session, dest, peer, tag))

        task = asyncio.ensure_future(route())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return deferred

    def _dispatch_after_sniff(
        self, session: Session, dest: Destination, peer: End, override: frozenset[str]
    ) -> End:
        def sniffed(outcome: Outcome) -> None:
            target = dest
            if isinstance(outcome, Sniffed):
                session.protocol = outcome.protocol
                # V2Ray's shouldOverride: a destOverride entry is a prefix of the protocol.
                if outcome.host is not None and outcome.protocol.startswith(tuple(override)):
                    target = Destination(dest.network, outcome.host, dest.port)
                    logger.info("sniffed %s: %s instead of %s", outcome.protocol, target, dest)
                else:
                    logger.debug("sniffed %s for %s", outcome.protocol, dest)
            else:
                logger.debug("sniffing %s: no result (%s)", dest, outcome.reason)
            end.bind(self._route(session, target, peer))

        end = SniffingEnd(sniffed)
        join(peer, end)
        return end


class SniffingEnd(DeferredEnd):
    """Stands in for a TCP link's outbound end while the sniffer reads its first bytes
    (V2Ray's ``cachedReader``).

    What the peer writes is held as it is (the :class:`DeferredEnd` backlog, which pauses
    the peer past its limit) and also fed to the sniffer, which copies at most 2048 bytes.
    ``on_outcome`` gets the outcome once (a result, none of the protocols, the end of the
    peer's input, or the time-out) and must :meth:`bind` the real end; the held bytes then
    go to it first. One ``call_at`` follows the sniffer's timer.
    """

    def __init__(self, on_outcome: Callable[[Outcome], None]) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sniffer: Sniffer | None = Sniffer(self._loop.time())
        self._on_outcome = on_outcome
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    def write(self, data: bytes) -> None:
        super().write(data)
        sniffer = self._sniffer
        if sniffer is not None:
            outcome = sniffer.receive_data(data, self._loop.time())
            if outcome is not None:
                self._finish(outcome)

    def write_eof(self) -> None:
        super().write_eof()
        if self._sniffer is not None:
            self._finish(self._sniffer.receive_eof())

    def abort(self, exc: BaseException | None = None) -> None:
        self._stop()
        super().abort(exc)

    def _arm(self) -> None:
        when = self._sniffer.timer() if self._sniffer is not None else None
        if when is not None:
            self._timer = self._loop.call_at(when, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._sniffer is None:
            return
        outcome = self._sniffer.handle_timer(self._loop.time())
        if outcome is None:
            self._arm()  # the window moved (the first data arrived) or the loop woke early
        else:
            self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        self._stop()
        self._on_outcome(outcome)

    def _stop(self) -> None:
        self._sniffer = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


async def resolve(host: str, family: int = 0) -> list[IPAddress]:
    """Resolve a domain to IP addresses (empty list on failure)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    out: list[IPAddress] = []
    for info in infos:
        ip = parse_host(str(info[4][0]))
        if not isinstance(ip, str) and ip not in out:
            out.append(ip)
    return out


class SystemResolver(Resolver):
    """The system's resolver (``getaddrinfo``): what a node without a ``dns`` section uses."""

    async def lookup(self, host: str, family: int = 0) -> list[IPAddress]:
        return await resolve(host, family)
