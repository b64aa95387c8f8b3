"""The ``blackhole`` outbound: refuse the connection.

``response: {"type": "none"}`` closes at once; ``{"type": "http"}`` first answers with
V2Ray's exact 403 bytes and closes a second later (docs/protocols.md 4.4).
"""

from __future__ import annotations

import asyncio

from raybridge.address import Destination
from raybridge.config.model import BlackholeSettings, OutboundConfig
from raybridge.link import End, Outbound, Session, UnpacedEnd, join

HTTP_RESPONSE = (
    b"HTTP/1.1 403 Forbidden\nConnection: close\nCache-Control: max-age=3600, public\n"
    b"Content-Length: 0\n\n\n"
)


class BlackholeEnd(UnpacedEnd):
    def __init__(self, response: bytes) -> None:
        self.peer: End | None = None
        self.response = response
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.response:
            loop.call_soon(self._respond)
        else:
            loop.call_soon(self._close)

    def _respond(self) -> None:
        if self.peer is not None:
            self.peer.write(self.response)
            self._handle = asyncio.get_running_loop().call_later(1.0, self._close)

    def _close(self) -> None:
        self._handle = None
        if self.peer is not None:
            self.peer.abort(ConnectionRefusedError("blackhole"))

    def write(self, data: bytes) -> None:
        pass  # swallowed

    def write_eof(self) -> None:
        pass

    def abort(self, exc: BaseException | None = None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class BlackholeOutbound(Outbound):
    def __init__(self, tag: str, *, response: str = "none") -> None:
        self.tag = tag
        self.response = HTTP_RESPONSE if response == "http" else b""

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        end = BlackholeEnd(self.response)
        join(peer, end)
        end.start()
        return end


def build_outbound(config: OutboundConfig, settings: BlackholeSettings) -> BlackholeOutbound:
    return BlackholeOutbound(config.tag, response=settings.response)
