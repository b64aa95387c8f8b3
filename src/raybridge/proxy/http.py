"""The ``http`` inbound: an HTTP/1.1 proxy (CONNECT and absolute-URI requests).

CONNECT is answered ``200 Connection established`` before dialling, then relayed raw
(docs/protocols.md 5.2). A plain request (``GET http://host/...``) is forwarded in origin form
with ``Connection: close``; the response head is rewritten (hop-by-hop headers removed,
``Connection: close``) and the body passed through unchanged, one request per connection.
"""

from __future__ import annotations

import logging

from raybridge.config.model import HttpInboundSettings
from raybridge.protocols.http import (
    ConnectRequest,
    HttpProxyError,
    HttpProxyServer,
    ResponseRewriter,
)
from raybridge.proxy.base import InboundCommon, InboundContext, InboundEnd, StreamInbound

logger = logging.getLogger("raybridge.proxy.http")


class HttpInboundEnd(InboundEnd):
    inbound: HttpInbound

    def handshake_started(self) -> None:
        self.codec = HttpProxyServer(
            accounts=self.inbound.accounts, allow_transparent=self.inbound.allow_transparent
        )
        self.rewriter: ResponseRewriter | None = None

    def handshake_received(self, data: bytes) -> None:
        codec = self.codec
        try:
            request = codec.receive_data(data)
        except HttpProxyError as exc:
            self.reject(f"HTTP: {exc}", reply=codec.data_to_send())
            return
        if request is None:
            return
        assert self.transport is not None
        self.new_session(user=request.user, level=self.inbound.user_level)
        if isinstance(request, ConnectRequest):
            self.send_wire(codec.connect_established())
            self.start_relay(request.target, request.trailing)
            return
        assert self.session is not None
        # V2Ray dispatches a plain request with a fresh session.Content: labelled, not sniffed.
        self.session.protocol = "http/1.1"
        self.session.sniffing = None
        self.rewriter = ResponseRewriter()
        self.start_relay(request.target, request.head + request.trailing)

    def write(self, data: bytes) -> None:
        rewriter = self.rewriter
        if rewriter is not None and not rewriter.head_done:
            try:
                data = rewriter.feed(data)
            except HttpProxyError as exc:
                logger.info("bad upstream response for %s: %s", self.source_text, exc)
                peer = self.peer
                self.reject("bad upstream response", reply=HttpProxyServer.bad_gateway())
                if peer is not None:
                    peer.abort(exc)
                return
        super().write(data)

    def write_eof(self) -> None:
        if self.rewriter is not None:
            # One request per connection: the response is complete, close.
            super().write_eof()
            self.close()
            return
        super().write_eof()


class HttpInbound(StreamInbound):
    protocol_name = "http"
    end_class = HttpInboundEnd

    def __init__(
        self,
        common: InboundCommon,
        *,
        accounts: dict[str, str] | None = None,
        allow_transparent: bool = False,
    ) -> None:
        super().__init__(common)
        self.accounts = accounts or {}
        self.allow_transparent = allow_transparent


def build_inbound(ctx: InboundContext, settings: HttpInboundSettings) -> HttpInbound:
    return HttpInbound(
        ctx.common(settings.user_level),
        accounts=dict(settings.accounts),
        allow_transparent=settings.allow_transparent,
    )
