"""The transport of an inbound or an outbound: ``streamSettings`` turned into layer stacks.

:class:`ServerTransport` gives a listener its protocol factory, :class:`ClientTransport`
dials for an outbound; both are built from a :class:`~raybridge.config.model.StreamSettings`
when the node is built, so certificates and keys are checked before anything listens
(docs/transports.md 2.4 and 6 for the order of layers)::

    tcp   [PROXY] [TLS] [HTTP header]       the proxy protocol's end on top
    ws    [PROXY] [TLS] WebSocket
    h2    [PROXY] [TLS] HTTP/2 (each stream one connection of the proxy protocol)

Plain TCP (no layer) costs nothing: the end is the socket's protocol itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from raybridge.address import Destination, Network, parse_host
from raybridge.config.model import StreamSettings
from raybridge.errors import ConfigError
from raybridge.link import Outbound, Session
from raybridge.protocols.proxyproto import ProxyProtocolLayer
from raybridge.protocols.stream import StreamLayer
from raybridge.protocols.tls import TlsLayer
from raybridge.stats import Stats
from raybridge.transport.chain import connect_through
from raybridge.transport.stack import FailureHandler, LayerStack
from raybridge.transport.tcp import open_tcp
from raybridge.transport.tls import (
    ServerTls,
    client_context,
    client_server_name,
    server_tls,
)

if TYPE_CHECKING:
    from raybridge.protocols.httpheader import HttpRequestConfig, HttpResponseConfig
    from raybridge.transport.h2 import H2ClientPool, H2ServerProtocol

# WebSocket (wsproto, h11), HTTP/2 (h2, hpack) and the HTTP header (email) are imported
# by the first transport that uses them: a node on plain TCP never loads them (about 4 MB
# of RSS and a fifth of the start-up time).

logger = logging.getLogger("raybridge.transport")

ProtocolFactory = Callable[[], asyncio.Protocol]


def _request(settings: StreamSettings) -> HttpRequestConfig:
    from raybridge.protocols.httpheader import HttpRequestConfig

    r = settings.tcp.request
    return HttpRequestConfig(version=r.version, method=r.method, paths=r.paths, headers=r.headers)


def _response(settings: StreamSettings) -> HttpResponseConfig:
    from raybridge.protocols.httpheader import HttpResponseConfig

    r = settings.tcp.response
    return HttpResponseConfig(
        version=r.version, status=r.status, reason=r.reason, headers=r.headers
    )


class ServerTransport:
    """What a listener puts under each accepted connection."""

    def __init__(
        self,
        settings: StreamSettings,
        *,
        handshake_timeout: float,
        on_failure: FailureHandler | None = None,
        describe: str = "",
    ) -> None:
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self.on_failure = on_failure
        self.describe = describe
        self.tls: ServerTls | None = None
        if settings.tls is not None:
            self.tls = server_tls(settings.tls, settings.network)
        self._rng = random.SystemRandom()
        #: Live HTTP/2 connections (closing the listener does not end them; close() does).
        self.h2: weakref.WeakSet[H2ServerProtocol] = weakref.WeakSet()

    @property
    def plain(self) -> bool:
        return self.settings.plain

    def _accept_proxy(self) -> bool:
        s = self.settings
        if s.network == "tcp":
            return s.tcp.accept_proxy_protocol
        if s.network == "ws":
            return s.ws.accept_proxy_protocol
        return s.sockopt.accept_proxy_protocol

    def layers(self) -> list[StreamLayer]:
        s = self.settings
        layers: list[StreamLayer] = []
        if self._accept_proxy():
            from raybridge.protocols.ws import MALFORMED_REQUEST_REPLY

            # Without a PROXY header, a V2Ray ws listener answers Go's 400 (docs/transports.md 6).
            reply = MALFORMED_REQUEST_REPLY if s.network == "ws" else b""
            layers.append(ProxyProtocolLayer(error_reply=reply))
        if self.tls is not None:
            layers.append(TlsLayer(self.tls.context, server_side=True))
        if s.network == "ws":
            from raybridge.protocols.httpheader import Role
            from raybridge.protocols.ws import WebSocketLayer

            layers.append(WebSocketLayer(Role.SERVER, path=s.ws.path, clock=time.time))
        elif s.tcp.header == "http":
            from raybridge.protocols.httpheader import HttpHeaderLayer, Role

            layers.append(
                HttpHeaderLayer(
                    Role.SERVER,
                    rng=self._rng,
                    request=_request(s),
                    response=_response(s),
                    clock=time.time,
                )
            )
        return layers

    def factory(self, upper: ProtocolFactory) -> ProtocolFactory:
        """The listener's protocol factory for ends made by ``upper``: one end per
        connection, or per HTTP/2 stream."""
        if self.plain:
            return upper
        h2 = self.settings.network == "http"

        def make() -> asyncio.Protocol:
            top = self._h2_connection(upper) if h2 else upper()
            layers = self.layers()
            if not layers:
                return top  # h2c on bare TCP
            return LayerStack(
                layers,
                top,
                server_side=True,
                handshake_timeout=self.handshake_timeout,
                on_failure=self.on_failure,
                describe=self.describe,
            )

        return make

    def _h2_connection(self, upper: ProtocolFactory) -> asyncio.Protocol:
        from raybridge.transport.h2 import HANDSHAKE_TIMEOUT, H2ServerProtocol

        conn = H2ServerProtocol(
            upper,
            hosts=self.settings.http.hosts,
            path=self.settings.http.path,
            handshake_timeout=HANDSHAKE_TIMEOUT,  # Go's ReadHeaderTimeout in V2Ray
            on_failure=self.on_failure,
            name=f"{self.describe}h2",
        )
        self.h2.add(conn)
        return conn

    def close(self) -> None:
        """End the connections a listener no longer sees (HTTP/2 ones carry many ends)."""
        for conn in list(self.h2):
            conn.abort()


class ClientTransport:
    """How an outbound reaches its server: a TCP connection per end with the layers on
    it, or (h2) a stream on the HTTP/2 connection to that server, one per destination as
    in V2Ray."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.context = None
        if settings.tls is not None:
            self.context = client_context(settings.tls, settings.network)
        elif settings.network == "http":
            # V2Ray 4.34: "TLS must be enabled for http transport" (docs/transports.md 4.1).
            raise ConfigError(
                'the h2 transport ("network": "http") needs "security": "tls" on a client, '
                "as in V2Ray 4.34"
            )
        self._rng = random.SystemRandom()
        self.pool: H2ClientPool | None = None
        if settings.network == "http":
            from raybridge.transport.h2 import H2ClientPool

            self.pool = H2ClientPool()
        #: ``proxySettings``: the outbound that carries each connection instead of a socket
        #: of our own (set by the node once every outbound is built; transport/chain.py).
        self.via: Outbound | None = None
        #: The node's counters, for the links through ``via``.
        self.via_stats: Stats | None = None
        self._plain = settings.plain  # (StreamSettings.plain is a property: a call per dial)

    @property
    def plain(self) -> bool:
        return self._plain

    def layers(self, address: str, port: int) -> list[StreamLayer]:
        s = self.settings
        layers: list[StreamLayer] = []
        if self.context is not None:
            assert s.tls is not None
            name = client_server_name(s.tls, address)
            layers.append(TlsLayer(self.context, server_side=False, server_hostname=name))
        if s.network == "ws":
            from raybridge.protocols.httpheader import Role
            from raybridge.protocols.ws import WebSocketLayer, url_host

            layers.append(
                WebSocketLayer(
                    Role.CLIENT,
                    path=s.ws.path,
                    host=url_host(address, port, tls=self.context is not None),
                    headers=s.ws.headers,
                    urandom=os.urandom,
                )
            )
        elif s.tcp.header == "http":
            from raybridge.protocols.httpheader import HttpHeaderLayer, Role

            layers.append(
                HttpHeaderLayer(
                    Role.CLIENT, rng=self._rng, request=_request(s), response=_response(s)
                )
            )
        return layers

    def wrap(self, protocol: asyncio.Protocol, address: str, port: int) -> asyncio.Protocol:
        """The socket's protocol for an end that talks to ``address:port``."""
        if self._plain:
            return protocol
        return LayerStack(self.layers(address, port), protocol, server_side=False)

    async def connect(
        self,
        protocol: asyncio.Protocol,
        address: str,
        port: int,
        *,
        dial_address: str | None = None,
        attempts: int = 1,
        delays: Sequence[float] = (),
        local_addr: tuple[str, int] | None = None,
        session: Session | None = None,
    ) -> None:
        """Connect ``protocol`` (an end) to the server at ``address:port`` (``dial_address``:
        the IP to dial when the name was resolved already). With ``via`` set, the
        connection is a link through that outbound, with only our TLS on it, as in V2Ray
        4.34 (``session``: the link's session, for the hop's)."""
        target = dial_address or address
        if self.via is not None:
            top = protocol
            if self.context is not None:
                assert self.settings.tls is not None
                name = client_server_name(self.settings.tls, address)
                tls = TlsLayer(self.context, server_side=False, server_hostname=name)
                top = LayerStack([tls], protocol, server_side=False)
            dest = Destination(Network.TCP, parse_host(target), port)
            connect_through(self.via, session, dest, top, self.via_stats)
            return
        sockopt = self.settings.sockopt

        def dial(conn: asyncio.Protocol) -> Awaitable[object]:
            return open_tcp(
                self.wrap(conn, address, port),
                target,
                port,
                attempts=attempts,
                delays=delays,
                local_addr=local_addr,
                sockopt=sockopt,
            )

        if self.pool is None:
            await dial(protocol)
            return
        http = self.settings.http
        await self.pool.connect(
            protocol, (target, port, local_addr), dial, path=http.path, hosts=http.hosts
        )


def describe_settings(settings: StreamSettings) -> dict[str, Any]:
    """For the status page: the transport and, for TLS, its name."""
    out: dict[str, Any] = {"transport": settings.describe()}
    if settings.tls is not None and settings.tls.server_name:
        out["server_name"] = settings.tls.server_name
    return out
