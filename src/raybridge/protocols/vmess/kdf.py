"""The VMess AEAD key derivation: nested HMAC-SHA256 (docs/protocols.md 1.5.1).

``KDF(key, p1, ..., pn)`` is HMAC with key ``pn`` whose hash function is HMAC with key
``p(n-1)`` ... whose innermost hash is ``HMAC-SHA256(b"VMess AEAD KDF", ·)``, applied to
``key``. The secret goes in as the *message*; path elements are keys of the nested layers.

Evaluation, written out: with ``F0(m) = S(o0 ‖ S(i0 ‖ m))`` (S = SHA-256, i/o the usual
HMAC pads of a layer's key) and ``Fl(x) = F(l-1)(ol ‖ F(l-1)(il ‖ x))``, every call at the
bottom hashes ``i0 ‖ (pads of the layers above) ‖ tail``. Those pad prefixes are whole
64-byte blocks, so the SHA-256 state after them is computed once and copied: for the
constant salt of the first layer once per process, for the per-connection path elements
(AuthID, nonce) once per derivation. A 3-element derivation is 8 bottom calls, 16 SHA-256
finalisations and a few state extensions, ~9 µs (a derivation runs 4 times per request
header, on both ends).
"""

from __future__ import annotations

import hashlib
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


class _Sha(Protocol):
    def copy(self) -> _Sha: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _pads(key: bytes) -> tuple[bytes, bytes]:
    key = key.ljust(_BLOCK, b"\0")
    return key.translate(_IPAD), key.translate(_OPAD)


_I0, _O0 = _pads(SALT_ROOT)
_ROOT_INNER: _Sha = hashlib.sha256(_I0)  # S-state after i0: copied, never updated in place
_ROOT_OUTER: _Sha = hashlib.sha256(_O0)


def _first_layer(salt: bytes) -> tuple[_Sha, _Sha]:
    """S-states after ``i0 ‖ i1`` and ``i0 ‖ o1`` for a first path element."""
    i1, o1 = _pads(salt)
    inner = _ROOT_INNER.copy()
    inner.update(i1)
    outer = _ROOT_INNER.copy()
    outer.update(o1)
    return inner, outer


_FIRST_LAYERS: dict[bytes, tuple[_Sha, _Sha]] = {
    salt: _first_layer(salt)
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


def _f0(state: _Sha, tail: bytes) -> bytes:
    """``F0(prefix ‖ tail)`` where ``state`` has absorbed ``i0 ‖ prefix``."""
    h = state.copy()
    h.update(tail)
    inner = h.digest()
    h = _ROOT_OUTER.copy()
    h.update(inner)
    return h.digest()


#: Pads of the latest per-connection path elements (AuthID, nonce): a request header's four
#: derivations share them. Bounded: cleared when full.
_RECENT_PADS: dict[bytes, tuple[bytes, bytes]] = {}


def _request_pads(element: bytes) -> tuple[bytes, bytes]:
    pads = _RECENT_PADS.get(element)
    if pads is None:
        if len(_RECENT_PADS) >= 64:
            _RECENT_PADS.clear()
        pads = _RECENT_PADS[element] = _pads(element)
    return pads


def kdf(key: bytes, *path: bytes) -> bytes:
    """``KDF(key, *path)``: 32 bytes (docs/protocols.md 1.5.1)."""
    if not path:
        return _f0(_ROOT_INNER, key)
    if max(map(len, path)) > _BLOCK:
        # HMAC hashes a key longer than a block with its hash function: the layers below.
        # (Never in VMess: its path elements are at most 30 bytes.)
        fixed: list[bytes] = []
        for element in path:
            fixed.append(element if len(element) <= _BLOCK else kdf(element, *fixed))
        path = tuple(fixed)
    first = _FIRST_LAYERS.get(path[0])
    inner1, outer1 = first if first is not None else _first_layer(path[0])
    if len(path) == 1:  # the response-header derivations: F1(key)
        prefixes: tuple[_Sha, ...] = (inner1,)
    elif len(path) == 3:  # the request-header derivations, unrolled (see the docstring)
        i2, o2 = _RECENT_PADS.get(path[1]) or _request_pads(path[1])
        i3, o3 = _RECENT_PADS.get(path[2]) or _request_pads(path[2])
        s_i2 = inner1.copy()
        s_i2.update(i2)
        s_o2 = inner1.copy()
        s_o2.update(o2)
        s_i2i3 = s_i2.copy()
        s_i2i3.update(i3)
        s_i2o3 = s_i2
        s_i2o3.update(o3)
        # F3(key) = F2(o3 ‖ F2(i3 ‖ key)), F2(x) = F1(o2 ‖ F1(i2 ‖ x)): four F1 steps.
        prefixes = (s_i2i3, s_o2, s_i2o3, s_o2)
    else:
        return _kdf_nested(key, path, inner1, outer1)
    # F1(p ‖ y) = F0(o1 ‖ F0(i1 ‖ p ‖ y)) for each prefix state in turn, with _f0 written
    # out (these run four times per request header and four per response, on both ends).
    root_outer = _ROOT_OUTER
    y = key
    for prefix in prefixes:
        h = prefix.copy()
        h.update(y)
        t = root_outer.copy()
        t.update(h.digest())
        h = outer1.copy()
        h.update(t.digest())
        t = root_outer.copy()
        t.update(h.digest())
        y = t.digest()
    return y


def _kdf_nested(key: bytes, path: tuple[bytes, ...], inner1: _Sha, outer1: _Sha) -> bytes:
    """Any other path length, layer by layer (``inner1``/``outer1``: the first layer's)."""
    pads = [_pads(p) for p in path[1:]]
    states: dict[tuple[bytes, ...], _Sha] = {(): inner1}

    def state(prefix: tuple[bytes, ...]) -> _Sha:
        """S-state after ``i0 ‖ i1 ‖ prefix`` (prefix: pads of layers 2 and up)."""
        st = states.get(prefix)
        if st is None:
            st = state(prefix[:-1]).copy()
            st.update(prefix[-1])
            states[prefix] = st
        return st

    def f(level: int, prefix: tuple[bytes, ...], tail: bytes) -> bytes:
        """``F_level(prefix ‖ tail)``, level >= 1."""
        if level == 1:
            return _f0(outer1, _f0(state(prefix), tail))
        i, o = pads[level - 2]
        return f(level - 1, (o,), f(level - 1, (i, *prefix), tail))

    return f(len(path), (), key)


def kdf16(key: bytes, *path: bytes) -> bytes:
    return kdf(key, *path)[:16]
