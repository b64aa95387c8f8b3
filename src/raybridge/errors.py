"""The exception hierarchy.

Every codec in :mod:`raybridge.protocols` raises only its own subclass of
:class:`ProtocolError` on bad input (as h11 does), so a transport can catch exactly that,
close the one connection and log it, and treat anything else as a bug.
"""

from __future__ import annotations


class RaybridgeError(Exception):
    """Base class of every error raybridge raises on purpose."""


class ProtocolError(RaybridgeError):
    """Bytes on the wire that violate a protocol, or a codec used in a way it forbids."""


class LocalProtocolError(ProtocolError):
    """We asked a codec to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the protocol."""


class ConfigError(RaybridgeError):
    """A configuration problem, located as precisely as we can.

    ``str()`` gives V2Ray-like messages that name the file, the line and the field:
    ``b.json:12: inbounds[0]: "protocol" is missing``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        #: Further problems found in the same place (all of them are reported together).
        self.also: list[ConfigError] = []

    def __str__(self) -> str:
        return "\n".join([self._one(), *(str(more) for more in self.also)])

    def _one(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"
