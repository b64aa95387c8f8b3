"""Small cryptographic building blocks of VMess (docs/protocols.md 1.3, 1.4, 1.7, 1.9).

* FNV-1a 32 (header checksum, LEGACY chunk authenticator);
* AES-128-CFB with a full 128-bit feedback segment (Go's ``cipher.NewCFBEncrypter``);
* the SHAKE128 stream that masks chunk sizes and draws padding lengths (1.9.6);
* the ChaCha20-Poly1305 key stretch (1.9.3) and the response key/IV derivations (1.7).

Everything here is sans-IO; randomness is always passed in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import struct
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms

__all__ = [
    "FNV_EMPTY",
    "HashlibShakeStream",
    "ShakeStream",
    "aes_cfb_decryptor",
    "aes_cfb_encryptor",
    "chacha20_key",
    "fnv1a32",
    "fnv1a32_pure",
    "md5",
    "new_shake_stream",
    "randbelow",
    "sha256_16",
]

Urandom = Callable[[int], bytes]
BytesLike = bytes | bytearray | memoryview

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
#: FNV-1a 32 of the empty string: the authenticator of a LEGACY end-of-stream chunk.
FNV_EMPTY = _FNV_OFFSET


def fnv1a32_pure(data: BytesLike) -> int:
    h = _FNV_OFFSET
    for b in bytes(data):
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def _load_fast_fnv() -> Callable[[bytes], int] | None:
    # FNV-1a is inherently byte-serial, so pure Python manages only ~20 MB/s. It is needed on a
    # body path only for the LEGACY security (never negotiated by V2Ray 4.34 clients: their
    # "legacy" config string means "auto"). If the optional C implementation from the
    # ``fnv-hash-fast`` distribution is installed we use it; the result is identical.
    try:
        module = importlib.import_module("fnv_hash_fast")
    except ImportError:
        return None
    fn: Callable[[bytes], int] = module.fnv1a_32
    try:
        if fn(b"hello") != 0x4F9F2CAB:
            return None
    except Exception:
        return None
    return fn


_FAST_FNV = _load_fast_fnv()


def fnv1a32(data: BytesLike) -> int:
    """FNV-1a 32-bit (docs/protocols.md 1.3)."""
    if _FAST_FNV is not None:
        return _FAST_FNV(data if type(data) is bytes else bytes(data))
    return fnv1a32_pure(data)


def md5(data: BytesLike) -> bytes:
    return hashlib.md5(data).digest()


def sha256_16(data: BytesLike) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def chacha20_key(key: bytes) -> bytes:
    """32-byte ChaCha20-Poly1305 key from a 16-byte body key: MD5(K) ‖ MD5(MD5(K)) (1.9.3)."""
    k1 = hashlib.md5(key).digest()
    return k1 + hashlib.md5(k1).digest()


def aes_cfb_encryptor(key: bytes, iv: bytes) -> CipherContext:
    """A continuous AES-128-CFB (128-bit segment) encryption stream (1.4, 1.8, 1.9.4)."""
    return Cipher(algorithms.AES(key), CFB(iv)).encryptor()


def aes_cfb_decryptor(key: bytes, iv: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), CFB(iv)).decryptor()


def randbelow(urandom: Urandom, n: int) -> int:
    """A number in ``range(n)`` from the injected random source (n is small here: bias < 2**-25)."""
    return int.from_bytes(urandom(4), "big") % n


# -- SHAKE128 size-mask / padding stream (docs/protocols.md 1.9.6) ---------------------------------

_SQUEEZE = 4096  # even, so 2-byte draws never straddle two squeezes
#: The first squeeze is small: a short connection draws a handful of words, a long one
#: two per 64 KiB chunk, so squeezes grow (doubling up to _SQUEEZE) only as words are used.
_FIRST_SQUEEZE = 64


@functools.lru_cache(maxsize=64)
def _unpack_words(count: int) -> Callable[[bytes, int], tuple[int, ...]]:
    return struct.Struct(f">{count}H").unpack_from


class _WordStream:
    """Consecutive big-endian uint16 words of SHAKE128(seed), read from ``_buf``; a subclass
    says how the next part of the output is made (:meth:`_refill`, once per squeeze)."""

    __slots__ = ("_buf", "_pos")

    _buf: bytes
    _pos: int

    def _refill(self) -> bytes:
        raise NotImplementedError

    def next_u16(self) -> int:
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            buf = self._buf = self._refill()
            pos = 0
        self._pos = pos + 2
        return (buf[pos] << 8) | buf[pos + 1]

    def next_words(self, count: int) -> tuple[int, ...]:
        """The next ``count`` words at once (one unpack instead of ``count`` calls)."""
        pos = self._pos
        buf = self._buf
        if pos + 2 * count <= len(buf):
            self._pos = pos + 2 * count
            return _unpack_words(count)(buf, pos)
        return tuple(self.next_u16() for _ in range(count))


class ShakeStream(_WordStream):
    """SHAKE128(seed), squeezed incrementally.

    The first ``_FIRST_SQUEEZE`` bytes come from hashlib's one-shot digest (a third of the
    cost of setting up an XOF, and all most connections use); the XOF is made, and skips
    those bytes, only when a stream goes on."""

    __slots__ = ("_next", "_seed", "_xof")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._xof: hashes.XOFHash | None = None
        self._buf = hashlib.shake_128(seed).digest(_FIRST_SQUEEZE)
        self._next = 2 * _FIRST_SQUEEZE
        self._pos = 0

    def _refill(self) -> bytes:
        xof = self._xof
        if xof is None:
            xof = self._xof = hashes.XOFHash(hashes.SHAKE128(digest_size=2**63 - 1))
            xof.update(self._seed)
            xof.squeeze(_FIRST_SQUEEZE)  # what the one-shot digest gave
        size = self._next
        self._next = min(2 * size, _SQUEEZE)
        return xof.squeeze(size)


class HashlibShakeStream(_WordStream):
    """Fallback for OpenSSL builds without XOF squeezing: ``shake_128(seed).digest(n)`` is a
    prefix of ``digest(m)`` for ``m > n``, so regenerate with a doubled length when exhausted."""

    __slots__ = ("_shake", "_total")

    def __init__(self, seed: bytes) -> None:
        self._shake = hashlib.shake_128(seed)
        self._buf = self._shake.digest(_SQUEEZE)
        self._total = _SQUEEZE
        self._pos = 0

    def _refill(self) -> bytes:
        # Keep only the new half: memory stays proportional to one refill.
        total = self._total
        self._total = 2 * total
        return self._shake.digest(2 * total)[total:]


def _xof_works() -> bool:
    try:
        stream = ShakeStream(b"\0" * 16)
        for _ in range(_FIRST_SQUEEZE // 2 + 1):  # past the one-shot part: the XOF
            stream.next_u16()
    except (UnsupportedAlgorithm, AttributeError):
        return False
    return True


_SHAKE_CLASS: type[ShakeStream] | type[HashlibShakeStream] = (
    ShakeStream if _xof_works() else HashlibShakeStream
)


def new_shake_stream(seed: bytes) -> ShakeStream | HashlibShakeStream:
    return _SHAKE_CLASS(seed)
