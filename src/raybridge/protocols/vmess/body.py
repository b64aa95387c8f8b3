"""VMess body framing, one direction at a time (docs/protocols.md 1.9).

Generic chunk (1.9.1), used by AES-128-GCM and ChaCha20-Poly1305 always, by LEGACY with
option S (inside one AES-CFB stream) and by NONE over UDP with S::

    SIZE(2) = uint16(len(SEALED) + p) XOR mask    mask: SHAKE128 word if M, else 0
    SEALED  = AEAD(payload) (+16) | FNV32(payload) ‖ payload (+4) | payload (+0)
    PADDING = p bytes, p = SHAKE128 word % 64 if P (drawn before the mask), else 0

    AEAD nonce = uint16(count) ‖ IV[2:12], count += 1 per chunk, wrapping at 65536.
    End of stream: a chunk whose payload is empty (SIZE == overhead + p).

With option A (AuthenticatedLength, 0x10; V2Ray 4.41+, Xray, sing-box; not in 4.34), SIZE is
not masked but sealed with an AEAD of its own, for AES-128-GCM, ChaCha20-Poly1305 and NONE
with S alike::

    SIZE(18) = LEN_AEAD(uint16(len(SEALED) + p - 16)) (+16)
    LEN_AEAD = AES-128-GCM(KDF16(request key, "auth_len")), or ChaCha20-Poly1305 keyed with
               the MD5 expansion of that for ChaCha20-Poly1305 bodies
    nonce    = uint16(length count) ‖ request IV[2:12]: the *request* key and IV in both
               directions, and a counter of its own

(``proxy/vmess/encoding/{client,server}.go`` in v2fly/v2ray-core v5, ``CreateReader`` /
``CreateWriter`` in SagerNet/sing-vmess ``protocol.go``.) P still draws the padding length;
M is ignored.

NONE over TCP/Mux with S (1.9.5): ``SIZE(2, masked if M) ‖ payload``, no padding, EOS = 0.
Without S (NONE, LEGACY, and "zero"): raw bytes (LEGACY: through AES-CFB), no framing, no
EOS chunk.

Readers accept any SIZE up to 65535 and fail on a bad tag or checksum (V2Ray silently
skips small bad chunks; we do not). Writers never emit a SIZE over :data:`SEND_CHUNK_SIZE`
(16 KiB), the most that every implementation in use reads; see there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from raybridge.errors import LocalProtocolError
from raybridge.protocols.vmess.errors import VMessError
from raybridge.protocols.vmess.events import Data, EndOfStream
from raybridge.protocols.vmess.header import Command, Option, Security
from raybridge.protocols.vmess.kdf import kdf16
from raybridge.protocols.vmess.primitives import (
    FNV_EMPTY,
    HashlibShakeStream,
    ShakeStream,
    aes_cfb_decryptor,
    aes_cfb_encryptor,
    chacha20_key,
    fnv1a32,
    new_shake_stream,
)

__all__ = [
    "MAX_CHUNK_SIZE",
    "SEND_CHUNK_SIZE",
    "BodyReader",
    "BodySpec",
    "BodyWriter",
    "max_payload",
]

BytesLike = bytes | bytearray | memoryview
Urandom = Callable[[int], bytes]

#: The largest SIZE a reader accepts: the full uint16 range (1.9.7).
MAX_CHUNK_SIZE = 0xFFFF
#: The largest chunk a writer sends: SIZE, and so ``len(SEALED) + padding``, at most 16 KiB.
#: What the implementations in use read (each checked in its source, 2026-12):
#:
#: * sing-box 1.14 and everything on SagerNet/sing-vmess (NekoBox, Hiddify, and mihomo, whose
#:   ``adapter/outbound/vmess.go`` uses the metacubex fork): the body reader of TCP and Mux
#:   requests sits behind ``bufio.NewChunkReader(reader, ReadChunkSize)`` with
#:   ``ReadChunkSize = 16384`` (``protocol.go``, ``client.go``, ``service.go``), and
#:   ``StreamChunkReader.Read`` / ``AEADChunkReader.Read`` fail with "short buffer: ... chunk
#:   need N" when ``SIZE - padding`` exceeds it. The tightest limit, so it sets ours.
#: * Xray-core (``common/crypto/auth.go`` ``AuthenticationReader.readInternal``): any SIZE;
#:   chunks over ``buf.Size`` (8192) are read into a pooled buffer. It writes <= 8 KiB.
#: * V2Ray 4.34 and v2fly v5 (the same ``common/crypto/auth.go``): any SIZE up to 65535, over
#:   2048 into a pooled buffer (1.9.7, checked against the 4.34 binary). They write <= 2 KiB.
#:
#: Bigger chunks cost less Python per byte, but only V2Ray and Xray read them, and a sender
#: cannot know which implementation it talks to.
SEND_CHUNK_SIZE = 16384
_MAX_PADDING = 63

_RAW = 0  # no framing
_STREAM = 1  # NONE over TCP/Mux with S: SIZE ‖ payload
_AUTH = 2  # generic chunk format

# Option bits as plain ints: IntFlag arithmetic costs a Python call per operation.
_OPT_S = int(Option.CHUNK_STREAM)
_OPT_M = int(Option.CHUNK_MASKING)
_OPT_P = int(Option.GLOBAL_PADDING)

_OPT_A = int(Option.AUTHENTICATED_LENGTH)

_AUTH_NOOP = 0
_AUTH_FNV = 1
_AUTH_AEAD = 2

_pack_u16 = struct.Struct(">H").pack
_pack_u16_into = struct.Struct(">H").pack_into
_pack_u32 = struct.Struct(">I").pack
_PAD_POOL = 4096


class _AEAD(Protocol):
    def encrypt(self, nonce: bytes, data: BytesLike, associated_data: None) -> bytes: ...
    def decrypt(self, nonce: bytes, data: BytesLike, associated_data: None) -> bytes: ...
    def encrypt_into(
        self, nonce: bytes, data: BytesLike, associated_data: None, buf: BytesLike
    ) -> int: ...


def _framing(security: Security, options: Option, command: Command) -> tuple[int, int, int]:
    """(mode, authenticator, overhead) chosen as ``DecodeRequestBody`` & co. do (1.9)."""
    chunked = bool(int(options) & _OPT_S)
    if security == Security.NONE:
        if not chunked:
            return _RAW, _AUTH_NOOP, 0
        if command == Command.UDP or int(options) & _OPT_A:
            return _AUTH, _AUTH_NOOP, 0
        return _STREAM, _AUTH_NOOP, 0
    if security == Security.LEGACY:
        return (_AUTH, _AUTH_FNV, 4) if chunked else (_RAW, _AUTH_NOOP, 0)
    if security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305):
        return _AUTH, _AUTH_AEAD, 16  # chunked whatever S says
    raise ValueError(f"no body framing for security {security!r}")


def max_payload(
    security: Security, options: Option, command: Command, limit: int = SEND_CHUNK_SIZE
) -> int:
    """Largest payload one chunk can carry without SIZE exceeding ``limit`` (any padding)."""
    mode, _, overhead = _framing(security, options, command)
    if mode == _RAW:
        return 1 << 62
    if mode == _STREAM:
        return limit
    padding = _MAX_PADDING if int(options) & _OPT_P else 0
    return limit - overhead - padding


def _check_options(options: Option) -> None:
    if int(options) & _OPT_P and not int(options) & _OPT_M:
        # The padding length comes from the masking stream; V2Ray 4.34 crashes on P without M.
        raise ValueError("option GlobalPadding requires ChunkMasking")


@dataclass(frozen=True, slots=True)
class BodySpec:
    """How one direction's body is framed and keyed: the request header's security, options
    and command, the direction's body key and IV, and for the response direction the
    request's key and IV, which key option A's length AEAD in both directions."""

    security: Security
    options: Option
    command: Command
    key: bytes
    iv: bytes
    request_key_iv: tuple[bytes, bytes] | None = None

    def response(self, key: bytes, iv: bytes) -> BodySpec:
        """The response body of this (request) body: the same framing, keyed with the
        response body key and IV (``header.response_body_key_iv``)."""
        return BodySpec(self.security, self.options, self.command, key, iv, (self.key, self.iv))


class _Direction:
    """State shared by writer and reader of one direction: cipher, nonce counter, SHAKE."""

    __slots__ = (
        "_aead",
        "_auth",
        "_cfb",
        "_count",
        "_iv_tail",
        "_len_aead",
        "_len_count",
        "_len_tail",
        "_mask",
        "_mode",
        "_overhead",
        "_pad",
        "_shake",
    )

    def __init__(
        self,
        spec: BodySpec,
        cfb: CipherContext | None,
        new_cfb: Callable[[bytes, bytes], CipherContext],
    ) -> None:
        """``cfb``: see :class:`BodyWriter`; ``new_cfb`` starts a LEGACY body's stream
        from the body key and IV where no ``cfb`` continues one."""
        security, options, key, iv = spec.security, spec.options, spec.key, spec.iv
        _check_options(options)
        self._mode, self._auth, self._overhead = _framing(security, options, spec.command)
        self._aead: _AEAD | None = None
        if security == Security.AES_128_GCM:
            self._aead = AESGCM(key)
        elif security == Security.CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(chacha20_key(key))
        if security != Security.LEGACY:
            cfb = None
        elif cfb is None:
            cfb = new_cfb(key, iv)
        self._cfb = cfb
        self._count = 0
        self._iv_tail = iv[2:12]
        # AuthenticatedLength: the length AEAD is keyed from the request body key and IV in
        # both directions (a response's spec carries them).
        self._len_aead: _AEAD | None = None
        self._len_tail = b""
        self._len_count = 0
        if int(options) & _OPT_A and self._mode == _AUTH and security != Security.LEGACY:
            req_key, req_iv = spec.request_key_iv or (key, iv)
            len_key = kdf16(req_key, b"auth_len")
            if security == Security.CHACHA20_POLY1305:
                self._len_aead = ChaCha20Poly1305(chacha20_key(len_key))
            else:
                self._len_aead = AESGCM(len_key)
            self._len_tail = req_iv[2:12]
        # With A the length is sealed, not masked.
        self._mask = bool(int(options) & _OPT_M) and self._len_aead is None
        # NONE over TCP/Mux ignores P: its chunk-stream framing has no padding (1.9.5).
        self._pad = bool(int(options) & _OPT_P) and self._mode == _AUTH
        self._shake: ShakeStream | HashlibShakeStream | None = (
            new_shake_stream(iv) if self._mask or self._pad else None
        )

    def _len_nonce(self) -> bytes:
        """The length AEAD's nonce for the next chunk (option A): its own counter, with the
        request IV."""
        count = self._len_count
        self._len_count = (count + 1) & 0xFFFF
        return _pack_u16(count) + self._len_tail


class BodyWriter(_Direction):
    """Seals one direction's body. ``cfb`` continues an existing AES-CFB stream (LEGACY body
    after a legacy response header, 1.8); by default LEGACY starts a fresh one from key/IV;
    other bodies have none, whatever ``cfb`` is."""

    __slots__ = ("_closed", "_max", "_packet", "_pad_pool", "_pad_pos", "_urandom")

    def __init__(
        self,
        spec: BodySpec,
        *,
        urandom: Urandom,
        chunk_size: int = SEND_CHUNK_SIZE,
        cfb: CipherContext | None = None,
        send_limit: int = SEND_CHUNK_SIZE,
    ) -> None:
        """``send_limit``: the largest SIZE to write (tests raise it to 65535 to make the
        big chunks only V2Ray and Xray read)."""
        super().__init__(spec, cfb, aes_cfb_encryptor)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._packet = spec.command == Command.UDP
        # A datagram cannot be split: UDP is bounded only by what one chunk can carry.
        if not 1 <= send_limit <= MAX_CHUNK_SIZE:
            raise ValueError(f"send_limit must be 1..{MAX_CHUNK_SIZE}")
        limit = max_payload(spec.security, spec.options, spec.command, send_limit)
        self._max = limit if self._packet else min(chunk_size, limit)
        self._urandom = urandom
        self._pad_pool = b""
        self._pad_pos = 0
        self._closed = False

    @property
    def framed(self) -> bool:
        """False for raw bodies (no S with NONE/LEGACY): their end is the connection's end."""
        return self._mode != _RAW

    def _padding(self, n: int) -> bytes:
        pos = self._pad_pos
        if pos + n > len(self._pad_pool):
            # Start small (a short connection pads a few chunks), grow to _PAD_POOL.
            size = max(n, min(_PAD_POOL, max(256, 2 * len(self._pad_pool))))
            self._pad_pool = self._urandom(size)
            pos = 0
        self._pad_pos = pos + n
        return self._pad_pool[pos : pos + n]

    def write(self, data: BytesLike) -> bytes | bytearray:
        if self._closed:
            raise LocalProtocolError("VMess body already ended")
        n = len(data)
        if n == 0:
            return b""  # an empty chunk would be the end-of-stream marker
        if self._mode == _RAW:
            out = bytes(data)
            return self._cfb.update(out) if self._cfb is not None else out
        if self._packet and n > self._max:
            raise LocalProtocolError(f"UDP datagram of {n} bytes does not fit one chunk")
        mv = memoryview(data)
        if self._aead is not None:
            return self._seal_aead(mv, n)
        parts: list[bytes] = []
        if self._mode == _STREAM:
            self._seal_stream(mv, n, parts)
        else:
            self._seal_auth(mv, n, parts)
        out = b"".join(parts)
        return self._cfb.update(out) if self._cfb is not None else out

    def _seal_aead(self, mv: memoryview, n: int) -> bytearray:
        """AES-GCM / ChaCha20-Poly1305 chunks sealed straight into one output buffer: one
        allocation and one cipher call per chunk (two with A), no intermediate ciphertext
        or join. The SHAKE words of all chunks are drawn in one call, and the padding bytes
        in one slice: what is left per chunk is the cipher call."""
        step = self._max
        k = (n + step - 1) // step if n else 1
        last = n - (k - 1) * step
        shake = self._shake
        pad_on = self._pad
        mask_on = self._mask
        # Per chunk, V2Ray draws the padding word first, then the mask word (1.9.6).
        per = pad_on + mask_on
        words = shake.next_words(k * per) if per and shake is not None else ()
        pads = [w % 64 for w in words[::per]] if pad_on else None
        masks = words[per - 1 :: per] if mask_on else None
        len_aead = self._len_aead
        head = 18 if len_aead is not None else 2
        pad_total = sum(pads) if pads is not None else 0
        out = bytearray(k * (head + 16) + n + pad_total)
        view = memoryview(out)
        pad_view = memoryview(self._padding(pad_total)) if pad_total else None
        aead = self._aead
        assert aead is not None
        encrypt_into = aead.encrypt_into
        tail = self._iv_tail
        count = self._count
        off = 0
        pad_off = 0
        for i in range(k):
            length = step if i < k - 1 else last
            pad = pads[i] if pads is not None else 0
            if len_aead is not None:
                len_aead.encrypt_into(
                    self._len_nonce(),
                    _pack_u16(length + pad),  # uint16(len(SEALED) + p - 16)
                    None,
                    view[off : off + 18],
                )
            else:
                word = length + 16 + pad
                _pack_u16_into(out, off, word ^ masks[i] if masks is not None else word)
            off += head
            pos = i * step
            end = off + length + 16
            encrypt_into(_pack_u16(count) + tail, mv[pos : pos + length], None, view[off:end])
            count = (count + 1) & 0xFFFF
            off = end
            if pad:
                assert pad_view is not None
                view[off : off + pad] = pad_view[pad_off : pad_off + pad]
                off += pad
                pad_off += pad
        view.release()
        self._count = count
        return out

    def write_eof(self) -> bytes:
        """The end-of-stream chunk (b"" for raw bodies, which end when the connection does)."""
        if self._closed:
            raise LocalProtocolError("VMess body already ended")
        self._closed = True
        if self._mode == _RAW:
            return b""
        parts: list[bytes] = []
        if self._mode == _STREAM:
            mask = self._shake.next_u16() if self._shake is not None else 0
            parts.append(_pack_u16(mask))
        elif self._aead is not None:
            parts.append(self._seal_aead(memoryview(b""), 0))  # type: ignore[arg-type]
        else:
            self._seal_auth(memoryview(b""), 0, parts)
        out = b"".join(parts)
        return self._cfb.update(out) if self._cfb is not None else out

    def _seal_stream(self, mv: memoryview, n: int, parts: list[bytes]) -> None:
        shake = self._shake
        step = self._max
        append = parts.append
        for pos in range(0, n, step):
            chunk = mv[pos : pos + step]
            mask = shake.next_u16() if shake is not None else 0
            append(_pack_u16(len(chunk) ^ mask))
            append(bytes(chunk))

    def _seal_auth(self, mv: memoryview, n: int, parts: list[bytes]) -> None:
        """The generic chunk without an AEAD payload: LEGACY (FNV) and NONE over UDP, or
        NONE with A (its length is still sealed)."""
        shake = self._shake
        pad_on = self._pad
        mask_on = self._mask
        len_aead = self._len_aead
        overhead = self._overhead
        auth = self._auth
        step = self._max
        append = parts.append
        pos = 0
        while True:
            chunk = mv[pos : pos + step]
            pos += step
            pad = shake.next_u16() % 64 if pad_on and shake is not None else 0
            if len_aead is not None:
                word = (len(chunk) + overhead + pad - 16) & 0xFFFF
                append(len_aead.encrypt(self._len_nonce(), _pack_u16(word), None))
            else:
                mask = shake.next_u16() if mask_on and shake is not None else 0
                append(_pack_u16((len(chunk) + overhead + pad) ^ mask))
            if auth == _AUTH_FNV:
                payload = bytes(chunk)
                append(_pack_u32(fnv1a32(payload) if payload else FNV_EMPTY))
                append(payload)
            else:
                append(bytes(chunk))
            if pad:
                append(self._padding(pad))
            if pos >= n:
                break


class BodyReader(_Direction):
    """Opens one direction's body from bytes that may arrive split anywhere (``cfb`` as for
    :class:`BodyWriter`)."""

    __slots__ = ("_buf", "_done", "_head", "_off", "_pending_pad", "_pending_size")

    def __init__(self, spec: BodySpec, *, cfb: CipherContext | None = None) -> None:
        super().__init__(spec, cfb, aes_cfb_decryptor)
        self._head = 18 if self._len_aead is not None else 2  # bytes of SIZE on the wire
        self._buf = bytearray()  # unparsed bytes start at self._off
        self._off = 0
        self._pending_size = -1  # SIZE already read (and SHAKE words drawn) for the next chunk
        self._pending_pad = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: BytesLike) -> list[Data | EndOfStream]:
        was_done = self._done
        payloads = self.feed_payloads(data)
        events: list[Data | EndOfStream] = [Data(p) for p in payloads]
        if self._done and not was_done:
            events.append(EndOfStream())
        return events

    def feed_payloads(self, data: BytesLike) -> list[bytes]:
        """:meth:`feed` without the event objects, for the relay's hot path: the payloads in
        order; the end of stream shows as :attr:`done` becoming true."""
        if self._done:
            if len(data):
                raise VMessError("data after end of stream")
            return []
        if self._cfb is not None:
            data = self._cfb.update(data)
        if self._mode == _RAW:
            return [bytes(data)] if len(data) else []
        out: list[bytes] = []
        buf = self._buf
        with memoryview(data) as mv:
            end = len(mv)
            pos = 0
            # A chunk split across reads: top it up with just the bytes it still needs
            # (at most one chunk is ever copied; the rest is parsed in place).
            while len(buf) > self._off and pos < end:
                have = len(buf) - self._off
                size = self._pending_size
                need = (self._head if size < 0 else size) - have
                take = min(need, end - pos)
                buf += mv[pos : pos + take]
                pos += take
                if take < need:
                    return out
                with memoryview(buf) as bmv:
                    self._off = self._parse(bmv, self._off, len(bmv), out)
                if self._off == len(buf):
                    buf.clear()
                    self._off = 0
                if self._done:
                    if pos < end:
                        raise VMessError("data after end of stream")
                    return out
            if pos < end:
                pos = self._parse(mv, pos, end, out)
                if pos < end:
                    if self._off:
                        del buf[: self._off]
                        self._off = 0
                    buf += mv[pos:]
        return out

    def feed_eof(self) -> list[Data | EndOfStream]:
        """The connection was closed by the peer. V2Ray takes that as a clean end when it
        falls on a chunk boundary (its size read sees io.EOF) and as an error mid-chunk."""
        if self._done:
            return []
        if len(self._buf) > self._off or self._pending_size >= 0:
            raise VMessError("connection closed in the middle of a chunk")
        self._done = True
        return [EndOfStream()]

    def _open_length(self, len_aead: _AEAD, sealed: memoryview) -> int:
        """SIZE of the next chunk from its sealed length (option A)."""
        try:
            word = len_aead.decrypt(self._len_nonce(), sealed, None)
        except InvalidTag:
            raise VMessError("chunk length authentication failed") from None
        return (((word[0] << 8) | word[1]) + 16) & 0xFFFF

    def _parse(self, mv: memoryview, pos: int, end: int, out: list[bytes]) -> int:
        shake = self._shake
        pad_on = self._pad
        mask_on = self._mask
        len_aead = self._len_aead
        head = self._head
        overhead = self._overhead
        aead = self._aead
        auth = self._auth
        stream = self._mode == _STREAM
        tail = self._iv_tail
        count = self._count
        size = self._pending_size
        pad = self._pending_pad
        append = out.append
        try:
            while True:
                if size < 0:
                    if end - pos < head:
                        break
                    pad = shake.next_u16() % 64 if pad_on and shake is not None else 0
                    if len_aead is not None:
                        size = self._open_length(len_aead, mv[pos : pos + 18])
                    else:
                        mask = shake.next_u16() if mask_on and shake is not None else 0
                        size = ((mv[pos] << 8) | mv[pos + 1]) ^ mask
                    pos += head
                    if size < overhead + pad:
                        raise VMessError(f"chunk size {size} below overhead and padding")
                if end - pos < size:
                    break
                sealed_end = pos + size - pad
                if stream:
                    payload = bytes(mv[pos:sealed_end])
                elif aead is not None:
                    try:
                        payload = aead.decrypt(_pack_u16(count) + tail, mv[pos:sealed_end], None)
                    except InvalidTag:
                        raise VMessError("chunk authentication failed") from None
                    count = (count + 1) & 0xFFFF
                elif auth == _AUTH_FNV:
                    payload = _fnv_checked(mv, pos, sealed_end)
                else:
                    payload = bytes(mv[pos:sealed_end])
                pos += size
                size = -1
                if not payload:
                    self._done = True
                    if pos < end:
                        raise VMessError("data after end of stream")
                    break
                append(payload)
        finally:
            self._count = count
            self._pending_size = size
            self._pending_pad = pad
        return pos


def _fnv_checked(mv: memoryview, pos: int, sealed_end: int) -> bytes:
    """A LEGACY chunk's payload, once its FNV-1a checksum (the first 4 bytes) matches."""
    payload = bytes(mv[pos + 4 : sealed_end])
    expected = int.from_bytes(mv[pos : pos + 4], "big")
    if (fnv1a32(payload) if payload else FNV_EMPTY) != expected:
        raise VMessError("chunk checksum mismatch")
    return payload
