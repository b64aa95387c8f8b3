"""The ``freedom`` outbound: connect to the destination directly (TCP or UDP).

``domainStrategy`` (docs/protocols.md 4.4): ``AsIs`` leaves resolution to the dialer; ``UseIP``,
``UseIPv4`` and ``UseIPv6`` resolve the domain first with the node's resolver (its ``dns``
section, docs/protocols.md 4.12) and dial an address of that family; with ``sendThrough``,
``UseIP`` asks for its family, as 4.34 does. A name that does not resolve is dialled as it
is (4.34's fallback to the system resolver), unless ``blockPrivate`` needs the address.
``redirect: "host:port"`` replaces the destination's host (when non-empty and not
``0.0.0.0``) and port (when non-zero): the port-mapping mode of the reverse chapter.
"""

from __future__ import annotations

import logging
import socket

from raybridge.address import Destination, Host, Network, format_host, parse_host
from raybridge.config.model import PLAIN, FreedomSettings, OutboundConfig
from raybridge.dispatcher import SystemResolver
from raybridge.link import End, Outbound, Resolver, Session, join
from raybridge.router import is_private
from raybridge.stats import Stats
from raybridge.transport.dial import ClientTransport
from raybridge.transport.tcp import StreamEnd
from raybridge.transport.udp import DatagramFlowEnd

logger = logging.getLogger("raybridge.proxy.freedom")

_FAMILIES = {"UseIP": 0, "UseIPv4": socket.AF_INET, "UseIPv6": socket.AF_INET6}


class FreedomOutbound(Outbound):
    def __init__(
        self,
        tag: str,
        *,
        domain_strategy: str = "AsIs",
        redirect: tuple[Host | None, int] | None = None,
        send_through: str | None = None,
        block_private: bool = False,
        transport: ClientTransport | None = None,
    ) -> None:
        """``transport``: streamSettings under each TCP connection (V2Ray applies them to
        any outbound: TLS to the destination, for one)."""
        self.tag = tag
        self.transport = transport or ClientTransport(PLAIN)
        self.block_private = block_private
        self.domain_strategy = domain_strategy
        self.redirect = redirect
        self.send_through = send_through
        self.resolver: Resolver = SystemResolver()

    def use_resolver(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def target(self, dest: Destination) -> Destination:
        if self.redirect is None:
            return dest
        host, port = self.redirect
        new_host = dest.host
        if host is not None and host != "" and format_host(host) not in ("0.0.0.0", "::"):
            new_host = host
        return Destination(dest.network, new_host, port or dest.port)

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        if self.redirect is not None:
            dest = self.target(dest)
        via = self.transport.via
        if dest.network is Network.UDP and via is not None:
            # V2Ray 4.34 dials UDP through the hop as well: it carries the datagrams.
            return via.connect(session, dest, peer)
        if dest.network is Network.UDP:
            flow = DatagramFlowEnd(session)
            flow.rx, flow.tx = self.downlink, self.uplink
            join(peer, flow)
            flow.start_async(self._udp_address(dest))
            return flow
        end = StreamEnd(session)
        end.rx, end.tx = self.downlink, self.uplink
        join(peer, end)
        end.start_connect(lambda e: self._dial(e, dest, session))
        return end

    def chain(self, hop: Outbound, stats: Stats | None = None) -> bool:
        self.transport.via = hop
        self.transport.via_stats = stats
        return True

    async def _udp_address(self, dest: Destination) -> tuple[str, int]:
        return await self._address(dest), dest.port

    async def _address(self, dest: Destination, name: str | None = None) -> str:
        """The address to dial for ``dest`` (``name``: its host as text, when known)."""
        host = dest.host
        family = _FAMILIES.get(self.domain_strategy)
        if isinstance(host, str) and (family is not None or self.block_private):
            if family == 0 and self.send_through:
                family = socket.AF_INET6 if ":" in self.send_through else socket.AF_INET
            ips = await self.resolver.lookup(host, family or 0)
            if self.block_private:
                ips = [ip for ip in ips if not is_private(ip)]
                if not ips:
                    raise OSError(f"refused private or unresolvable destination {host}")
            if not ips:
                logger.info("failed to get an IP address for %s: dialling the name", host)
                return host
            return str(ips[0])
        if self.block_private and not isinstance(host, str) and is_private(host):
            raise OSError(f"refused private destination {host}")
        return format_host(host) if name is None else name

    async def _dial(self, end: StreamEnd, dest: Destination, session: Session) -> None:
        try:
            name = format_host(dest.host)  # (an IP address's str() is two Python calls)
            address = await self._address(dest, name)
            local = (self.send_through, 0) if self.send_through else None
            await self.transport.connect(
                end,
                name,  # what TLS checks: the name asked for
                dest.port,
                dial_address=address,
                local_addr=local,
                session=session,
            )
        except OSError as exc:
            logger.info("failed to open connection to %s: %s", dest, exc)
            raise


def build_outbound(config: OutboundConfig, settings: FreedomSettings) -> FreedomOutbound:
    redirect = None
    if settings.redirect is not None:
        host, port = settings.redirect
        redirect = (parse_host(host) if host else None, port)
    return FreedomOutbound(
        config.tag,
        domain_strategy=settings.domain_strategy,
        redirect=redirect,
        send_through=config.send_through,
        block_private=settings.block_private,
        transport=ClientTransport(config.stream),
    )
