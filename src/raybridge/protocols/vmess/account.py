"""VMess identities: UUID, cmdKey and alter IDs (docs/protocols.md 1.1).

Derived values are computed once per :class:`User` and cached on the instance (the AuthID
AES key alone costs two nested HMACs, and a legacy user with alter IDs has a chain of MD5s).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import cached_property

from raybridge.protocols.vmess.kdf import SALT_AUTH_ID_ENCRYPTION_KEY, kdf16

__all__ = ["User"]

_CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
_ALTER_ID_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
_ALTER_ID_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"


def cmd_key_of(id_bytes: bytes) -> bytes:
    """``MD5(UUIDBYTES ‖ "c48619fe-...")`` (1.1)."""
    return hashlib.md5(id_bytes + _CMD_KEY_SALT).digest()


def derive_alter_ids(id_bytes: bytes, count: int) -> tuple[bytes, ...]:
    """The chain of derived IDs (1.1): each is MD5 of the previous one and a fixed salt."""
    result = []
    prev = id_bytes
    for _ in range(count):
        h = hashlib.md5(prev)
        h.update(_ALTER_ID_SALT)
        cand = h.digest()
        while cand == prev:  # astronomically unlikely; kept for exactness
            h.update(_ALTER_ID_RETRY_SALT)
            cand = h.digest()
        result.append(cand)
        prev = cand
    return tuple(result)


@dataclass(frozen=True)
class User:
    """A VMess account. ``alter_id`` is V2Ray's ``alterId`` (0 means AEAD-only clients)."""

    id: uuid.UUID
    alter_id: int = 0
    level: int = 0
    email: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, uuid.UUID):
            raise TypeError("User.id must be a uuid.UUID")
        if not 0 <= self.alter_id <= 0xFFFF:
            raise ValueError(f"alterId must be 0..65535, got {self.alter_id}")

    @cached_property
    def id_bytes(self) -> bytes:
        return self.id.bytes

    @cached_property
    def cmd_key(self) -> bytes:
        """Key of the legacy header cipher and root secret of the AEAD header (1.1)."""
        return cmd_key_of(self.id.bytes)

    @cached_property
    def alter_ids(self) -> tuple[bytes, ...]:
        """The ``alter_id`` derived IDs, 16 bytes each, in chain order."""
        return derive_alter_ids(self.id.bytes, self.alter_id)

    @cached_property
    def auth_id_key(self) -> bytes:
        """AES-128 key that encrypts AuthIDs: ``KDF16(cmdKey, "AES Auth ID Encryption")``."""
        return kdf16(self.cmd_key, SALT_AUTH_ID_ENCRYPTION_KEY)
