"""The VMess AEAD key derivation: nested HMAC-SHA256 (PROTOCOLS.md 1.5.1).

``KDF(key, p1, ..., pn)`` is HMAC with key ``pn`` whose hash function is HMAC with key
``p(n-1)`` ... whose innermost hash is ``HMAC-SHA256(b"VMess AEAD KDF", ·)``, applied to
``key``. The secret goes in as the *message*; path elements are keys of the nested layers.

A layer is kept as the pair of parent-hash states after absorbing ``K ⊕ ipad`` and
``K ⊕ opad`` (the usual HMAC precomputation), so deriving costs ``2**n`` C-level
HMAC-SHA256 finalisations and no per-byte Python work. Layers for the constant salt strings
are built once per process.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

__all__ = [
    "SALT_AEAD_RESP_HEADER_IV",
    "SALT_AEAD_RESP_HEADER_KEY",
    "SALT_AEAD_RESP_HEADER_LEN_IV",
    "SALT_AEAD_RESP_HEADER_LEN_KEY",
    "SALT_AUTH_ID_ENCRYPTION_KEY",
    "SALT_HEADER_LEN_KEY",
    "SALT_HEADER_LEN_NONCE",
    "SALT_HEADER_PAYLOAD_KEY",
    "SALT_HEADER_PAYLOAD_NONCE",
    "kdf",
    "kdf16",
]

SALT_ROOT = b"VMess AEAD KDF"
SALT_AUTH_ID_ENCRYPTION_KEY = b"AES Auth ID Encryption"
SALT_HEADER_LEN_KEY = b"VMess Header AEAD Key_Length"
SALT_HEADER_LEN_NONCE = b"VMess Header AEAD Nonce_Length"
SALT_HEADER_PAYLOAD_KEY = b"VMess Header AEAD Key"
SALT_HEADER_PAYLOAD_NONCE = b"VMess Header AEAD Nonce"
SALT_AEAD_RESP_HEADER_LEN_KEY = b"AEAD Resp Header Len Key"
SALT_AEAD_RESP_HEADER_LEN_IV = b"AEAD Resp Header Len IV"
SALT_AEAD_RESP_HEADER_KEY = b"AEAD Resp Header Key"
SALT_AEAD_RESP_HEADER_IV = b"AEAD Resp Header IV"

_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _Hash(Protocol):
    def copy(self) -> _Hash: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _HmacLayer:
    """HMAC over an arbitrary parent hash with 64-byte blocks and 32-byte output."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, inner: _Hash, outer: _Hash) -> None:
        self._inner = inner
        self._outer = outer

    @classmethod
    def keyed(cls, parent: _Hash, key: bytes) -> _HmacLayer:
        if len(key) > _BLOCK:  # never happens in VMess (path elements are <= 30 bytes)
            h = parent.copy()
            h.update(key)
            key = h.digest()
        key = key.ljust(_BLOCK, b"\0")
        inner = parent.copy()
        inner.update(key.translate(_IPAD))
        outer = parent.copy()
        outer.update(key.translate(_OPAD))
        return cls(inner, outer)

    def copy(self) -> _HmacLayer:
        return _HmacLayer(self._inner.copy(), self._outer.copy())

    def update(self, data: bytes, /) -> None:
        self._inner.update(data)

    def digest(self) -> bytes:
        outer = self._outer.copy()
        outer.update(self._inner.digest())
        return outer.digest()


_ROOT: _Hash = hmac.new(SALT_ROOT, digestmod=hashlib.sha256)

_FIRST_LAYERS: dict[bytes, _Hash] = {
    salt: _HmacLayer.keyed(_ROOT, salt)
    for salt in (
        SALT_AUTH_ID_ENCRYPTION_KEY,
        SALT_HEADER_LEN_KEY,
        SALT_HEADER_LEN_NONCE,
        SALT_HEADER_PAYLOAD_KEY,
        SALT_HEADER_PAYLOAD_NONCE,
        SALT_AEAD_RESP_HEADER_LEN_KEY,
        SALT_AEAD_RESP_HEADER_LEN_IV,
        SALT_AEAD_RESP_HEADER_KEY,
        SALT_AEAD_RESP_HEADER_IV,
    )
}


def kdf(key: bytes, *path: bytes) -> bytes:
    """``KDF(key, *path)``: 32 bytes (PROTOCOLS.md 1.5.1)."""
    h = _ROOT
    for i, element in enumerate(path):
        cached = _FIRST_LAYERS.get(element) if i == 0 else None
        h = cached if cached is not None else _HmacLayer.keyed(h, element)
    h = h.copy()  # layers are shared templates: never update them in place
    h.update(key)
    return h.digest()


def kdf16(key: bytes, *path: bytes) -> bytes:
    return kdf(key, *path)[:16]
