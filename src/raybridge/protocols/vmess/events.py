"""Events returned by :class:`ClientConnection` and :class:`ServerConnection`."""

from __future__ import annotations

from dataclasses import dataclass

from raybridge.protocols.vmess.account import User
from raybridge.protocols.vmess.header import RequestHeader

__all__ = ["Data", "EndOfStream", "Event", "RequestReceived", "ResponseReceived"]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side: a complete, authenticated and valid request header (docs/protocols.md 1.3)."""

    header: RequestHeader
    user: User
    aead: bool


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client side: the response header (1.8). ``command_id`` 0 and ``b""`` when none."""

    command_id: int
    command_data: bytes


@dataclass(frozen=True, slots=True)
class Data:
    """One chunk's payload (1.9); for :attr:`Command.UDP` exactly one datagram."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer's end-of-stream chunk (or the clean end of an unframed body)."""


Event = RequestReceived | ResponseReceived | Data | EndOfStream
