"""VMess errors (docs/protocols.md 1.6 for when a server drains instead of closing at once)."""

from __future__ import annotations

from raybridge.errors import RemoteProtocolError

__all__ = ["VMessAuthError", "VMessError"]


class VMessError(RemoteProtocolError):
    """The peer sent bytes that are not valid VMess: the only exception raised on bad input."""


class VMessAuthError(VMessError):
    """A server-side handshake failure that V2Ray 4.34 answers by draining the connection.

    ``drain_to`` is the total number of bytes, counted from the first byte of the connection,
    that the server should read and discard before closing, so that the point where it hangs
    up does not reveal how far parsing got. ``None`` means close at once (V2Ray would already
    have read at least that much).
    """

    def __init__(self, message: str, *, drain_to: int | None) -> None:
        super().__init__(message)
        self.drain_to = drain_to
