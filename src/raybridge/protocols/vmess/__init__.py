"""VMess as spoken by V2Ray 4.34 (docs/protocols.md section 1), sans-IO.

Public API: :class:`ClientConnection`, :class:`ServerConnection`, :class:`UserValidator`,
:class:`User`, the wire enums, the events and the errors. See ``connection.py`` for the
state machines and ``body.py`` for the chunk formats.
"""

from __future__ import annotations

from raybridge.protocols.vmess.account import User
from raybridge.protocols.vmess.body import MAX_CHUNK_SIZE, SEND_CHUNK_SIZE, max_payload
from raybridge.protocols.vmess.connection import (
    ClientConnection,
    ServerConnection,
    client_profile,
    default_options,
)
from raybridge.protocols.vmess.errors import VMessAuthError, VMessError
from raybridge.protocols.vmess.events import (
    Data,
    EndOfStream,
    Event,
    RequestReceived,
    ResponseReceived,
)
from raybridge.protocols.vmess.header import (
    Command,
    Option,
    RequestHeader,
    Security,
    security_from_config,
)
from raybridge.protocols.vmess.validator import UserValidator

__all__ = [
    "MAX_CHUNK_SIZE",
    "SEND_CHUNK_SIZE",
    "ClientConnection",
    "Command",
    "Data",
    "EndOfStream",
    "Event",
    "Option",
    "RequestHeader",
    "RequestReceived",
    "ResponseReceived",
    "Security",
    "ServerConnection",
    "User",
    "UserValidator",
    "VMessAuthError",
    "VMessError",
    "client_profile",
    "default_options",
    "max_payload",
    "security_from_config",
]
