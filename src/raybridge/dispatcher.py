"""The dispatcher: routes an inbound's request to an outbound and joins the two ends.

This is V2Ray's ``app/dispatcher``: every inbound (and the mux server and reverse bridge,
which act as inbounds for the streams they carry) calls :meth:`Dispatcher.dispatch`; the
router picks an outbound tag; the outbound returns its end, joined to the inbound's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from raybridge import log as logs
from raybridge.address import Destination, IPAddress, parse_host
from raybridge.link import ClosedEnd, DeferredEnd, End, Outbound, Session, join
from raybridge.router import Router
from raybridge.stats import Stats

logger = logging.getLogger("raybridge.dispatcher")

#: A handler that takes over destinations by domain (e.g. ``v1.mux.cool``).
Interceptor = Callable[[Session, Destination, End], End]


class NoRouteError(ConnectionRefusedError):
    pass


class Dispatcher:
    def __init__(self, router: Router, outbounds: Sequence[Outbound]) -> None:
        self.router = router
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

    def intercept(self, domain: str, handler: Interceptor) -> None:
        """Let ``handler`` take every destination with this domain, before routing."""
        self.interceptors[domain] = handler

    def dispatch(self, session: Session, dest: Destination, peer: End) -> End:
        """Return the outbound end for ``dest``, joined to ``peer``. Never blocks."""
        if isinstance(dest.host, str):
            handler = self.interceptors.get(dest.host)
            if handler is not None:
                return handler(session, dest, peer)
            if self.router.wants_ips(session, dest):
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
            ips = await resolve(str(dest.host))
            if deferred.aborted:
                return
            tag = self.router.pick(session, dest, ips)
            deferred.bind(self._connect(session, dest, peer, tag))

        task = asyncio.ensure_future(route())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return deferred


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
