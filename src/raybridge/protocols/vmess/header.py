"""VMess request and response headers (docs/protocols.md 1.3 to 1.8).

Request header plaintext (1.3), identical for both variants::

    VER(1) IV(16) KEY(16) V(1) OPT(1) PL<<4|SEC(1) RSV(1) CMD(1)
    [PORT(2) ATYP(1) ADDR]            only for CMD 1 (TCP) and 2 (UDP); ATYP 1/2/3
    PADDING(PL) FNV1a32(4)            checksum over every preceding byte

Legacy wire (1.4)::  HMAC-MD5(id, ts)(16) ‖ AES-128-CFB(cmdKey, MD5(ts ‖ ts ‖ ts ‖ ts))(plaintext)
AEAD wire (1.5.3)::  AuthID(16) ‖ GCM(len)(18) ‖ N8(8) ‖ GCM(plaintext)(L+16)
AuthID (1.5.2)::     AES-ECB(KDF16(cmdKey, "AES Auth ID Encryption"), ts(8) ‖ R4 ‖ CRC32(12))

Response header plaintext (1.8)::  V(1) OPT(1) CMD(1) CL(1) CMDDATA(CL)
Legacy: CFB(respKey, respIV); AEAD: GCM(len)(18) ‖ GCM(plaintext)(len+16), keys from the KDF.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from raybridge.address import VMESS_ADDRESS, Destination, Network
from raybridge.protocols.vmess.errors import VMessError
from raybridge.protocols.vmess.kdf import (
    SALT_AEAD_RESP_HEADER_IV,
    SALT_AEAD_RESP_HEADER_KEY,
    SALT_AEAD_RESP_HEADER_LEN_IV,
    SALT_AEAD_RESP_HEADER_LEN_KEY,
    SALT_HEADER_LEN_KEY,
    SALT_HEADER_LEN_NONCE,
    SALT_HEADER_PAYLOAD_KEY,
    SALT_HEADER_PAYLOAD_NONCE,
    kdf,
)
from raybridge.protocols.vmess.primitives import fnv1a32, md5, sha256_16

__all__ = [
    "AEAD_HEADER_PREFIX",
    "SWITCH_ACCOUNT",
    "VERSION",
    "Command",
    "Option",
    "ParsedRequest",
    "RequestHeader",
    "Security",
    "SwitchAccount",
    "create_auth_id",
    "encode_request_plaintext",
    "encode_response_plaintext",
    "legacy_auth",
    "legacy_header_iv",
    "open_aead_request_header",
    "open_aead_request_length",
    "open_aead_response_header",
    "open_aead_response_length",
    "parse_request_plaintext",
    "response_body_key_iv",
    "seal_aead_request",
    "seal_aead_response",
    "security_from_config",
]

#: What V2Ray writes as the version byte; servers do not check it (1.3).
VERSION = 1
#: Fixed part of the plaintext request header, up to and including the command byte.
FIXED_LEN = 38
#: AuthID + encrypted length + connection nonce (1.5.3).
AEAD_HEADER_PREFIX = 16 + 18 + 8
TAG = 16


class Security(IntEnum):
    """Low nibble of request byte 35: body security (docs/protocols.md 1.3)."""

    UNKNOWN = 0
    LEGACY = 1
    AUTO = 2
    AES_128_GCM = 3
    CHACHA20_POLY1305 = 4
    NONE = 5


class Command(IntEnum):
    """Request byte 37 (docs/protocols.md 1.3)."""

    TCP = 1
    UDP = 2
    MUX = 3


class Option(IntFlag):
    """Request byte 34 (docs/protocols.md 1.3). Unknown bits are kept and ignored."""

    CHUNK_STREAM = 0x01
    CONNECTION_REUSE = 0x02
    CHUNK_MASKING = 0x04
    GLOBAL_PADDING = 0x08
    #: Chunk lengths sealed with their own AEAD (V2Ray 4.41+ ``experiments:
    #: "AuthenticatedLength"``, Xray, sing-box ``authenticated_length``); not in 4.34.
    AUTHENTICATED_LENGTH = 0x10


def security_from_config(name: str, arch_has_aes: bool = True) -> Security:
    """V2Ray 4.34's ``security`` config string (``infra/conf/vmess.go``), auto resolved (1.3).

    Only ``aes-128-gcm``, ``chacha20-poly1305`` and ``none`` are recognised (case-insensitive);
    everything else, ``legacy`` and ``zero`` included, means ``auto``, which the client resolves
    from its CPU: AES-128-GCM where AES is in hardware, else ChaCha20-Poly1305.
    """
    lowered = name.lower()
    if lowered == "aes-128-gcm":
        return Security.AES_128_GCM
    if lowered == "chacha20-poly1305":
        return Security.CHACHA20_POLY1305
    if lowered == "none":
        return Security.NONE
    return Security.AES_128_GCM if arch_has_aes else Security.CHACHA20_POLY1305


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """A decoded request header. ``target`` is ``None`` for :attr:`Command.MUX`."""

    version: int
    body_iv: bytes
    body_key: bytes
    response_auth: int
    options: Option
    padding_len: int
    security: Security
    command: Command
    target: Destination | None


# -- request plaintext ------------------------------------------------------------------------


def encode_request_plaintext(
    *,
    body_iv: bytes,
    body_key: bytes,
    response_auth: int,
    options: Option,
    security: Security,
    command: Command,
    target: Destination | None,
    padding: bytes,
    version: int = VERSION,
) -> bytes:
    if len(body_iv) != 16 or len(body_key) != 16 or len(padding) > 15:
        raise ValueError("bad IV/key/padding length")
    out = bytearray((version,))
    out += body_iv
    out += body_key
    out += bytes((response_auth, int(options) & 0xFF, (len(padding) << 4) | int(security), 0))
    out.append(int(command))
    if command != Command.MUX:
        if target is None:
            raise ValueError("TCP/UDP request needs a target")
        out += VMESS_ADDRESS.encode(target.host, target.port)
    out += padding
    out += fnv1a32(out).to_bytes(4, "big")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """Result of :func:`parse_request_plaintext`, before the server's policy checks.

    ``target_ok`` is False when the address could not be read (unknown ATYP or command, bad
    domain); like V2Ray, parsing then goes on to read padding and checksum from wherever the
    address reader stopped, so the failure is reported by the checksum or, if that happens
    to match, as "invalid remote address" (server.go ``DecodeRequestHeader``).
    """

    version: int
    body_iv: bytes
    body_key: bytes
    response_auth: int
    options: int
    padding_len: int
    security_nibble: int
    command: int
    target: Destination | None
    target_ok: bool
    checksum_ok: bool
    length: int


def parse_request_plaintext(p: bytes | bytearray | memoryview) -> ParsedRequest | int:
    """Parse a (possibly incomplete) plaintext header; return the total length still needed
    (an ``int`` greater than ``len(p)``) if ``p`` is too short."""
    n = len(p)
    if n < FIXED_LEN:
        return FIXED_LEN
    command = p[37]
    pos = FIXED_LEN
    target: Destination | None = None
    target_ok = True
    if command in (Command.TCP, Command.UDP):
        if n < pos + 3:
            return pos + 3
        atyp = p[pos + 2]
        if atyp == 1:
            end = pos + 3 + 4
        elif atyp == 3:
            end = pos + 3 + 16
        elif atyp == 2:
            if n < pos + 4:
                return pos + 4
            end = pos + 4 + p[pos + 3]
        else:
            end = pos + 3  # V2Ray stops after the bad type byte
            target_ok = False
        if n < end:
            return end
        if target_ok:
            try:
                decoded = VMESS_ADDRESS.decode(p, pos, error=VMessError)
            except VMessError:
                target_ok = False
            else:
                if decoded is None:  # cannot happen: every byte is present
                    return end
                host, port, _ = decoded
                network = Network.TCP if command == Command.TCP else Network.UDP
                target = Destination(network, host, port)
        pos = end
    elif command != Command.MUX:
        target_ok = False  # unknown command: V2Ray reads no address and later rejects it
    padding_len = p[35] >> 4
    end = pos + padding_len + 4
    if n < end:
        return end
    checksum_ok = fnv1a32(p[: end - 4]) == int.from_bytes(p[end - 4 : end], "big")
    return ParsedRequest(
        version=p[0],
        body_iv=bytes(p[1:17]),
        body_key=bytes(p[17:33]),
        response_auth=p[33],
        options=p[34],
        padding_len=padding_len,
        security_nibble=p[35] & 0x0F,
        command=command,
        target=target,
        target_ok=target_ok,
        checksum_ok=checksum_ok,
        length=end,
    )


# -- legacy authentication (1.4) --------------------------------------------------------------


def legacy_auth(id_bytes: bytes, ts: int) -> bytes:
    return hmac.new(id_bytes, (ts & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"), hashlib.md5).digest()


def legacy_header_iv(ts: int) -> bytes:
    return md5((ts & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") * 4)


# -- AEAD request header (1.5) ----------------------------------------------------------------


_AUTH_ID_ENCRYPTORS: dict[bytes, CipherContext] = {}


def create_auth_id(auth_id_key: bytes, ts: int, r4: bytes) -> bytes:
    block = ts.to_bytes(8, "big", signed=True) + r4
    block += zlib.crc32(block).to_bytes(4, "big")
    # ECB encrypts each block on its own, so one context per user key serves every request.
    enc = _AUTH_ID_ENCRYPTORS.get(auth_id_key)
    if enc is None:
        if len(_AUTH_ID_ENCRYPTORS) >= 256:
            _AUTH_ID_ENCRYPTORS.clear()
        enc = Cipher(algorithms.AES(auth_id_key), modes.ECB()).encryptor()
        _AUTH_ID_ENCRYPTORS[auth_id_key] = enc
    return enc.update(block)


def seal_aead_request(cmd_key: bytes, auth_id: bytes, nonce8: bytes, plaintext: bytes) -> bytes:
    if len(plaintext) > 0xFFFF:
        raise ValueError("header too long")
    enc_len = AESGCM(kdf(cmd_key, SALT_HEADER_LEN_KEY, auth_id, nonce8)[:16]).encrypt(
        kdf(cmd_key, SALT_HEADER_LEN_NONCE, auth_id, nonce8)[:12],
        len(plaintext).to_bytes(2, "big"),
        auth_id,
    )
    enc_hdr = AESGCM(kdf(cmd_key, SALT_HEADER_PAYLOAD_KEY, auth_id, nonce8)[:16]).encrypt(
        kdf(cmd_key, SALT_HEADER_PAYLOAD_NONCE, auth_id, nonce8)[:12], plaintext, auth_id
    )
    return auth_id + enc_len + nonce8 + enc_hdr


def open_aead_request_length(
    cmd_key: bytes, auth_id: bytes, enc_len: bytes, nonce8: bytes
) -> int | None:
    """The plaintext header length, or None if the 18-byte sealed length does not open."""
    try:
        raw = AESGCM(kdf(cmd_key, SALT_HEADER_LEN_KEY, auth_id, nonce8)[:16]).decrypt(
            kdf(cmd_key, SALT_HEADER_LEN_NONCE, auth_id, nonce8)[:12], enc_len, auth_id
        )
    except InvalidTag:
        return None
    return int.from_bytes(raw, "big")


def open_aead_request_header(
    cmd_key: bytes, auth_id: bytes, nonce8: bytes, enc_hdr: bytes
) -> bytes | None:
    try:
        return AESGCM(kdf(cmd_key, SALT_HEADER_PAYLOAD_KEY, auth_id, nonce8)[:16]).decrypt(
            kdf(cmd_key, SALT_HEADER_PAYLOAD_NONCE, auth_id, nonce8)[:12], enc_hdr, auth_id
        )
    except InvalidTag:
        return None


# -- response header (1.7, 1.8) ---------------------------------------------------------------


def response_body_key_iv(req_key: bytes, req_iv: bytes, *, aead: bool) -> tuple[bytes, bytes]:
    """respKey/respIV: MD5 for the legacy header, SHA-256[:16] for the AEAD one (1.7)."""
    if aead:
        return sha256_16(req_key), sha256_16(req_iv)
    return md5(req_key), md5(req_iv)


def encode_response_plaintext(
    response_auth: int, command_id: int = 0, command_data: bytes = b""
) -> bytes:
    if command_id == 0:
        return bytes((response_auth, 0, 0, 0))
    if len(command_data) > 255:
        raise ValueError("response command too long")
    return bytes((response_auth, 0, command_id, len(command_data))) + command_data


#: Response command 1 (1.8), sent by an inbound with ``detour``.
SWITCH_ACCOUNT = 1


def encode_switch_account(
    *, port: int, user_id: bytes, alter_ids: int, level: int, valid_minutes: int, host: str = ""
) -> bytes:
    """The data of response command 1, "switch account" (1.8; ``CommandSwitchAccountFactory``
    in ``proxy/vmess/encoding/commands.go``): ``FNV1a32(body) || body`` with ``body = hostLen
    || host || port || UUID || alterIds || level || validMinutes``. An empty ``host`` means
    the server the client already talks to."""
    raw_host = host.encode("ascii")
    if len(raw_host) > 255 or len(user_id) != 16:
        raise ValueError("bad switch-account fields")
    body = (
        bytes((len(raw_host),))
        + raw_host
        + port.to_bytes(2, "big")
        + user_id
        + alter_ids.to_bytes(2, "big")
        + bytes((level & 0xFF, min(max(valid_minutes, 0), 255)))
    )
    return fnv1a32(body).to_bytes(4, "big") + body


@dataclass(frozen=True, slots=True)
class SwitchAccount:
    """Command 1 as a client reads it (``host`` ``""``: the server it came from)."""

    host: str
    port: int
    user_id: bytes
    alter_ids: int
    level: int
    valid_minutes: int


def decode_switch_account(data: bytes) -> SwitchAccount | None:
    """The inverse of :func:`encode_switch_account`; ``None`` when the checksum fails, the
    data is short or the host is not ASCII (V2Ray's client ignores such a command)."""
    if len(data) <= 4 or fnv1a32(data[4:]) != int.from_bytes(data[:4], "big"):
        return None
    body = data[4:]
    n = body[0]
    if len(body) < 1 + n + 22:
        return None
    try:
        host = body[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError:
        return None
    rest = body[1 + n :]
    return SwitchAccount(
        host=host,
        port=int.from_bytes(rest[0:2], "big"),
        user_id=bytes(rest[2:18]),
        alter_ids=int.from_bytes(rest[18:20], "big"),
        level=rest[20],
        valid_minutes=rest[21],
    )


def seal_aead_response(resp_key: bytes, resp_iv: bytes, plaintext: bytes) -> bytes:
    enc_len = AESGCM(kdf(resp_key, SALT_AEAD_RESP_HEADER_LEN_KEY)[:16]).encrypt(
        kdf(resp_iv, SALT_AEAD_RESP_HEADER_LEN_IV)[:12], len(plaintext).to_bytes(2, "big"), None
    )
    enc = AESGCM(kdf(resp_key, SALT_AEAD_RESP_HEADER_KEY)[:16]).encrypt(
        kdf(resp_iv, SALT_AEAD_RESP_HEADER_IV)[:12], plaintext, None
    )
    return enc_len + enc


def open_aead_response_length(resp_key: bytes, resp_iv: bytes, enc_len: bytes) -> int | None:
    try:
        raw = AESGCM(kdf(resp_key, SALT_AEAD_RESP_HEADER_LEN_KEY)[:16]).decrypt(
            kdf(resp_iv, SALT_AEAD_RESP_HEADER_LEN_IV)[:12], enc_len, None
        )
    except InvalidTag:
        return None
    return int.from_bytes(raw, "big")


def open_aead_response_header(resp_key: bytes, resp_iv: bytes, enc: bytes) -> bytes | None:
    try:
        return AESGCM(kdf(resp_key, SALT_AEAD_RESP_HEADER_KEY)[:16]).decrypt(
            kdf(resp_iv, SALT_AEAD_RESP_HEADER_IV)[:12], enc, None
        )
    except InvalidTag:
        return None
