"""The ``dns`` section's client: V2Ray 4.34's ``app/dns`` on asyncio (docs/protocols.md 4.12).

:class:`DnsClient` is a :class:`~raybridge.link.Resolver`: ``routing.domainStrategy`` and
freedom's ``UseIP*`` look names up with it. The decisions (hosts, which server, cache,
``expectIPs``, fallback, time-outs) are :mod:`raybridge.protocols.dnspolicy`'s; this module
moves its datagrams and runs its one timer.

As in 4.34, a query to a UDP server is not sent from a socket of its own: it is dispatched
like a client's UDP datagram, with the section's ``tag`` as inbound tag (a made-up
``v2ray.system.<uuid>`` without one), so routing picks the outbound that carries it (a
``"inboundTag": [tag]`` rule can send DNS through a proxy). There is one link per server,
dropped after 4 s without traffic (``transport/internet/udp/dispatcher.go``). A server
given by name is itself looked up with the system resolver, never with this client, so that
finding it cannot loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from raybridge.address import Destination, IPAddress, Network, parse_host
from raybridge.config.model import DnsConfig, DnsPattern, DnsServerConfig, Located
from raybridge.dispatcher import Dispatcher, resolve
from raybridge.errors import ConfigError
from raybridge.link import Resolver, Session
from raybridge.matchers import DomainSet, GeoAssets, IPMatcher
from raybridge.protocols.dnspolicy import (
    Failed,
    HostEntry,
    Resolved,
    SendQuery,
    ServerSpec,
    StaticHosts,
    SystemLookup,
    Want,
)
from raybridge.protocols.dnspolicy import Resolver as Policy
from raybridge.transport.udp import FlowEnd

logger = logging.getLogger("raybridge.dns")

#: Seconds a server's link lives without traffic (V2Ray's UDP dispatcher).
LINK_IDLE = 4.0
_WANTS = {0: Want.BOTH, socket.AF_INET: Want.IPV4, socket.AF_INET6: Want.IPV6}
_FAMILIES = {Want.IPV4: socket.AF_INET, Want.IPV6: socket.AF_INET6, Want.BOTH: 0}


def _geosite(assets: GeoAssets, pattern: DnsPattern, where: Located) -> DomainSet:
    try:
        return assets.geosite(pattern.file, pattern.value)
    except ConfigError as exc:
        raise ConfigError(
            f"{pattern.text!r}: {exc.message}", file=where.file, line=where.line, path=where.path
        ) from None


def _spec(server: DnsServerConfig, default_client_ip: str | None, assets: GeoAssets) -> ServerSpec:
    expect: Callable[[IPAddress], bool] | None = None
    if server.expect_ips:

        def where(message: str) -> ConfigError:
            return ConfigError(
                message, file=server.file, line=server.line, path=server.path + ".expectIPs"
            )

        expect = IPMatcher(server.expect_ips, where, assets)
    client_ip = server.client_ip or default_client_ip
    name = server.address if server.system else f"udp:{server.address}:{server.port}"
    return ServerSpec(
        name=name,
        system=server.system,
        domains=tuple((p.kind, p.value) for p in server.domains if p.kind != "geosite"),
        domain_sets=tuple(
            _geosite(assets, p, server) for p in server.domains if p.kind == "geosite"
        ),
        expect=expect,
        client_ip=None if client_ip is None or server.system else ipaddress.ip_address(client_ip),
    )


def _hosts(config: DnsConfig, assets: GeoAssets) -> StaticHosts:
    entries = []
    for mapping in config.hosts:
        pattern = mapping.pattern
        entries.append(
            HostEntry(
                kind="full" if pattern.kind == "geosite" else pattern.kind,
                pattern=pattern.value,
                ips=tuple(ipaddress.ip_address(ip) for ip in mapping.ips),
                alias=mapping.alias,
                matcher=_geosite(assets, pattern, mapping) if pattern.kind == "geosite" else None,
            )
        )
    return StaticHosts(entries)


class DnsClient(Resolver):
    """Looks names up as the ``dns`` section says; :meth:`attach` gives it the dispatcher
    its queries go through (before the first lookup)."""

    def __init__(self, config: DnsConfig, *, new_id: Callable[[], int] | None = None) -> None:
        self.config = config
        self.tag = config.tag or f"v2ray.system.{uuid.uuid4()}"
        self.servers = list(config.servers)
        # Geo lists (geosite: keys and domains, geoip: expectIPs) are found as a routing
        # rule's are: near the config file, or in V2RAY_LOCATION_ASSET (matchers.py).
        with GeoAssets([]) as own:
            assets = own.near(config.file)
            specs = [_spec(s, config.client_ip, assets) for s in self.servers]
            hosts = _hosts(config, assets)
        self.policy = Policy(specs, hosts, new_id=new_id or (lambda: secrets.randbelow(65536)))
        #: Servers given by name: looked up by the system, never by this client.
        self._server_names = {
            s.address
            for s in self.servers
            if not s.system and isinstance(parse_host(s.address), str)
        }
        self._dispatcher: Dispatcher | None = None
        self._waiters: dict[int, asyncio.Future[list[IPAddress]]] = {}
        self._links: dict[int, _QueryLink] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    def attach(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def lookup(self, host: str, family: int = 0) -> list[IPAddress]:
        if host in self._server_names or self._closed:
            return await resolve(host, family)
        loop = asyncio.get_running_loop()
        lid = self.policy.lookup(host, _WANTS.get(family, Want.BOTH), loop.time())
        waiter: asyncio.Future[list[IPAddress]] = loop.create_future()
        self._waiters[lid] = waiter
        self._pump()
        try:
            return await waiter
        finally:
            if self._waiters.pop(lid, None) is not None:
                self.policy.cancel(lid)  # our caller went away

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in list(self._links.values()):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result([])
        self._waiters.clear()

    # -- the policy's events ---------------------------------------------------------------

    def _pump(self) -> None:
        policy = self.policy
        while (event := policy.next_event()) is not None:
            if isinstance(event, SendQuery):
                self._send(event.server, event.data)
            elif isinstance(event, SystemLookup):
                self._spawn(self._system(event))
            elif isinstance(event, Resolved):
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("dns: lookup %d: %s", event.lookup, [str(a) for a in event.ips])
                self._finish(event.lookup, list(event.ips))
            elif isinstance(event, Failed):
                logger.info("dns: %s", event.reason)
                self._finish(event.lookup, [])
        self._arm()

    def _finish(self, lookup: int, ips: list[IPAddress]) -> None:
        waiter = self._waiters.pop(lookup, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ips)

    def _arm(self) -> None:
        when = self.policy.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(when, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._timer_at = None
        self.policy.handle_timer(asyncio.get_running_loop().time())
        self._pump()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _system(self, event: SystemLookup) -> None:
        ips = await resolve(event.name, _FAMILIES[event.want])
        self.policy.system_answer(
            event.lookup, event.server, ips, asyncio.get_running_loop().time()
        )
        self._pump()

    # -- links to the servers --------------------------------------------------------------

    def _send(self, index: int, data: bytes) -> None:
        link = self._links.get(index)
        if link is None or link.closed:
            dispatcher = self._dispatcher
            if dispatcher is None or self._closed:
                return  # not attached: the query times out
            server = self.servers[index]
            session = Session(inbound_tag=self.tag, protocol="dns")
            dest = Destination(Network.UDP, parse_host(server.address), server.port)
            link = _QueryLink(self, index, session)
            self._links[index] = link
            dispatcher.dispatch(session, dest, link)
        link.send(data)

    def _received(self, index: int, data: bytes) -> None:
        self.policy.datagram_received(index, data, asyncio.get_running_loop().time())
        self._pump()

    def _dropped(self, link: _QueryLink) -> None:
        if self._links.get(link.index) is link:
            del self._links[link.index]
        if self._dispatcher is not None:
            self._dispatcher.stats.closed(link.session)  # its bytes into the totals


class _QueryLink(FlowEnd):
    """The DNS client's end of the UDP link to one server: what the outbound end writes
    to it are the server's answers. Ends after :data:`LINK_IDLE` seconds without traffic."""

    def __init__(self, client: DnsClient, index: int, session: Session) -> None:
        super().__init__(session, LINK_IDLE)
        self.client = client
        self.index = index

    def send(self, data: bytes) -> None:
        self.session.active = True
        self.session.bytes_up += len(data)
        if self.peer is not None:
            self.peer.write(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.session.active = True
        self.session.bytes_down += len(data)
        self.client._received(self.index, data)

    def write_to(self, data: bytes, address: Destination) -> None:
        pass  # only the server's own answers count (a full-cone reply from elsewhere)

    def close(self) -> None:
        peer = self.peer
        self._finish()
        if peer is not None:
            peer.abort(ConnectionAbortedError("DNS client closed"))

    def forget(self) -> None:
        self.client._dropped(self)
