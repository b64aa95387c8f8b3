"""The ``freedom`` outbound: connect to the destination directly (TCP or UDP).

``domainStrategy`` (PROTOCOLS.md 4.4): ``AsIs`` leaves resolution to the dialer; ``UseIP``,
``UseIPv4`` and ``UseIPv6`` resolve the domain first and dial an address of that family.
``redirect: "host:port"`` replaces the destination's host (when non-empty and not
``0.0.0.0``) and port (when non-zero): the port-mapping mode of the reverse chapter.
"""

from __future__ import annotations

import logging
import socket

from raybridge.address import Destination, Host, Network, format_host
from raybridge.dispatcher import resolve
from raybridge.link import End, Outbound, Session, join
from raybridge.router import is_private
from raybridge.transport.tcp import StreamEnd, open_tcp
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
    ) -> None:
        self.tag = tag
        self.block_private = block_private
        self.domain_strategy = domain_strategy
        self.redirect = redirect
        self.send_through = send_through

    def target(self, dest: Destination) -> Destination:
        if self.redirect is None:
            return dest
        host, port = self.redirect
        new_host = dest.host
        if host is not None and host != "" and format_host(host) not in ("0.0.0.0", "::"):
            new_host = host
        return Destination(dest.network, new_host, port or dest.port)

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        dest = self.target(dest)
        if dest.network is Network.UDP:
            flow = DatagramFlowEnd(session)
            join(peer, flow)
            flow.start_async(self._udp_address(dest))
            return flow
        end = StreamEnd(session)
        join(peer, end)
        end.start_connect(lambda e: self._dial(e, dest))
        return end

    async def _udp_address(self, dest: Destination) -> tuple[str, int]:
        return await self._address(dest), dest.port

    async def _address(self, dest: Destination) -> str:
        host = dest.host
        family = _FAMILIES.get(self.domain_strategy)
        if isinstance(host, str) and (family is not None or self.block_private):
            ips = await resolve(host, family or 0)
            if self.block_private:
                ips = [ip for ip in ips if not is_private(ip)]
            if not ips:
                reason = "private" if self.block_private else "unresolvable"
                raise OSError(f"refused {reason} destination {host} ({self.domain_strategy})")
            return str(ips[0])
        if self.block_private and not isinstance(host, str) and is_private(host):
            raise OSError(f"refused private destination {host}")
        return format_host(host)

    async def _dial(self, end: StreamEnd, dest: Destination) -> None:
        try:
            address = await self._address(dest)
            local = (self.send_through, 0) if self.send_through else None
            await open_tcp(end, address, dest.port, local_addr=local)
        except OSError as exc:
            logger.info("failed to open connection to %s: %s", dest, exc)
            raise
