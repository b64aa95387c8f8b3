"""A small client for V2Ray's API (raybridge's or V2Ray's own), on grpclib.

``v2ctl api`` (4.34) only has StatsService and LoggerService; this also calls
HandlerService with the messages of :mod:`raybridge.api.messages`::

    async with ApiClient("127.0.0.1", 10085) as api:
        await api.call(HANDLER, "RemoveInbound", RemoveInboundRequest(tag="socks"))
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

from grpclib.client import Channel, UnaryUnaryMethod

from raybridge.api import messages as pb
from raybridge.api.server import MessageCodec
from raybridge.protocols.protobuf import Message

R = TypeVar("R", bound=Message)


class ApiClient:
    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.channel = Channel(host, port, codec=MessageCodec())
        self.timeout = timeout

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        reply: type[R] = pb.Empty,  # type: ignore[assignment]
    ) -> R:
        """One unary call; a ``grpclib.exceptions.GRPCError`` if the server refuses it."""
        stub: UnaryUnaryMethod[Message, R] = UnaryUnaryMethod(
            self.channel, f"/{service}/{method}", type(request), reply
        )
        return await stub(request, timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
