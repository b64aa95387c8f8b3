"""The VMess client and server state machines (docs/protocols.md 1.2 to 1.9), sans-IO.

Client::   send/send_eof  -> [request header] ‖ request body chunks
           receive_data   <- response header (AEAD or legacy) ‖ response body chunks
Server::   receive_data   <- AuthID or legacy AUTH ‖ request header ‖ request body chunks
           send/send_eof  -> [response header] ‖ response body chunks

Server handshake states and what each needs (bytes from the start of the connection)::

    AUTH          16          AEAD AuthID lookup for all users, then the legacy table
    AEAD_LENGTH   16+18+8     open the sealed header length
    AEAD_HEADER   42+L+16     open the header, then parse it (1.3)
    LEGACY_HEADER 16+...      AES-CFB-decrypt exactly as many header bytes as parsing needs
    BODY                      everything else goes to the request body reader

Which failures drain (V2Ray 4.34 ``DecodeRequestHeader``, docs/protocols.md 1.6): no matching
user, replayed AuthID, AEAD length or header that does not open, and for legacy requests
only a replayed key/IV or a bad checksum (those two also taint the legacy AUTH). Everything
after a successful AEAD open closes at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.ciphers import CipherContext

from raybridge.address import Destination
from raybridge.errors import LocalProtocolError
from raybridge.protocols.vmess.account import User
from raybridge.protocols.vmess.body import SEND_CHUNK_SIZE, BodyReader, BodySpec, BodyWriter
from raybridge.protocols.vmess.errors import VMessAuthError, VMessError
from raybridge.protocols.vmess.events import (
    Data,
    EndOfStream,
    RequestReceived,
    ResponseReceived,
)
from raybridge.protocols.vmess.header import (
    AEAD_HEADER_PREFIX,
    FIXED_LEN,
    TAG,
    Command,
    Option,
    ParsedRequest,
    RequestHeader,
    Security,
    create_auth_id,
    encode_request_plaintext,
    encode_response_plaintext,
    legacy_auth,
    legacy_header_iv,
    open_aead_request_header,
    open_aead_request_length,
    open_aead_response_header,
    open_aead_response_length,
    parse_request_plaintext,
    response_body_key_iv,
    seal_aead_request,
    seal_aead_response,
)
from raybridge.protocols.vmess.primitives import (
    aes_cfb_decryptor,
    aes_cfb_encryptor,
    randbelow,
)
from raybridge.protocols.vmess.validator import UserValidator

__all__ = ["ClientConnection", "ServerConnection", "client_profile", "default_options"]

BytesLike = bytes | bytearray | memoryview
Urandom = Callable[[int], bytes]

_S = Option.CHUNK_STREAM
_M = int(Option.CHUNK_MASKING)
_P = int(Option.GLOBAL_PADDING)
_A = Option.AUTHENTICATED_LENGTH
_INSECURE = (Security.NONE, Security.LEGACY, Security.UNKNOWN)
_SMP = _S | _M | _P
_SM = _S | _M


def default_options(security: Security) -> Option:
    """The options byte a V2Ray 4.34 client sends for ``security`` (1.3, ``outbound.go``)."""
    if security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305):
        return _SMP
    if security == Security.NONE:
        return _SM
    return _S


_E = TypeVar("_E", Security, Command, Option)


def _member(kind: type[_E], value: int) -> _E:
    """``kind(value)`` by a look-up in the enum's own table: a per-connection call, and the
    enum call is slow; the call itself still raises for a value the enum does not know."""
    member = kind._value2member_map_.get(value)
    return member if member is not None else kind(value)  # type: ignore[return-value]


def client_profile(
    security: Security | None,
    command: Command,
    *,
    zero: bool = False,
    authenticated_length: bool = False,
) -> tuple[Security, Option]:
    """Security and options a client sends: V2Ray 4.34's, plus two later additions.

    ``zero`` (v2fly v5 ``SecurityType_ZERO``, sing-box ``"zero"``): NONE on the wire with
    neither S nor M, so the body is the raw stream (``proxy/vmess/outbound/outbound.go`` in
    v5). A UDP request keeps S, as sing-box's client does (``client.go``): a raw body would
    lose the datagram boundaries. ``authenticated_length``: option A (v5 ``experiments``).
    """
    if zero:
        return Security.NONE, (_S if command == Command.UDP else Option(0))
    assert security is not None
    options = default_options(security)
    if authenticated_length and security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305):
        options |= _A
    return security, options


def _security_from_nibble(nibble: int) -> Security:
    """``parseSecurityType``: 0 means LEGACY (backward compatibility), 6..15 unknown."""
    if nibble == 0:
        return Security.LEGACY
    if nibble <= Security.NONE:
        return _member(Security, nibble)
    return Security.UNKNOWN


def _checked_request(
    command: Command, target: Destination | None, security: Security, options: Option | None
) -> tuple[Command, Security, Option]:
    """What a client is asked to send, checked before anything is drawn or sealed."""
    try:
        command = _member(Command, command)
        security = _member(Security, security)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if security in (Security.AUTO, Security.UNKNOWN):
        raise LocalProtocolError("resolve the security type before connecting")
    if command != Command.MUX and target is None:
        raise LocalProtocolError("a TCP or UDP request needs a target")
    options = default_options(security) if options is None else _member(Option, options)
    if int(options) & _P and not int(options) & _M:
        raise LocalProtocolError("GlobalPadding without ChunkMasking crashes V2Ray 4.34")
    return command, security, options


# -- client -------------------------------------------------------------------------------------

_R_AEAD_LENGTH = 0
_R_AEAD_HEADER = 1
_R_LEGACY_HEADER = 2
_R_BODY = 3


_Head = TypeVar("_Head", ResponseReceived, RequestReceived)


class _Receiving(Generic[_Head]):
    """What both sides do with the bytes they receive: until the body reader is set up they
    collect in ``_head`` for the side's :meth:`_receive_head`, then go to the reader. The
    first :class:`VMessError` fails the connection for good."""

    #: Why an end before the body is an error (the side's words for its head).
    _EOF_BEFORE_BODY = ""

    def __init__(self, chunk_size: int) -> None:
        if chunk_size < 1:
            raise LocalProtocolError("chunk_size must be positive")
        self._chunk_size = chunk_size
        self._head = bytearray()
        self._received = 0
        self._failed = False
        self._reader: BodyReader | None = None

    def _receive_head(self) -> list[_Head | Data | EndOfStream]:
        raise NotImplementedError

    def _start_body(
        self, reader: BodyReader, event: _Head, consumed: int
    ) -> list[_Head | Data | EndOfStream]:
        """The head is in (its first ``consumed`` bytes): from now on bytes go to
        ``reader``, starting with those that came after the head."""
        self._reader = reader
        rest = bytes(self._head[consumed:])
        self._head = bytearray()
        events: list[_Head | Data | EndOfStream] = [event]
        if rest:
            events.extend(reader.feed(rest))
        return events

    def receive_data(self, data: BytesLike) -> list[_Head | Data | EndOfStream]:
        if self._failed:
            raise VMessError("connection already failed")
        self._received += len(data)
        try:
            if self._reader is not None:
                return list(self._reader.feed(data))
            self._head += data
            return self._receive_head()
        except VMessError:
            self._failed = True
            raise

    def receive_eof(self) -> list[_Head | Data | EndOfStream]:
        """The peer closed the connection (not in the codec API V2Ray needs, but it lets a
        raw body (no option S) end with an :class:`EndOfStream` like a chunked one)."""
        if self._failed:
            raise VMessError("connection already failed")
        if self._reader is None:
            self._failed = True
            raise VMessError(self._EOF_BEFORE_BODY)
        return list(self._reader.feed_eof())


class ClientConnection(_Receiving[ResponseReceived]):
    """One VMess request from the client side.

    Randomness is drawn from ``urandom`` in this order, all in the constructor (so tests can
    script it): 33 bytes (body key ‖ body IV ‖ response auth V, as V2Ray); legacy only:
    4 bytes for the timestamp offset (-30..+29) and, if the user has alter IDs, 4 bytes for
    the alter ID choice; 1 byte whose low nibble is the header padding length PL, then PL
    padding bytes; AEAD only: R4 (4 bytes) and the connection nonce N8 (8 bytes). Chunk
    padding bytes later come from ``urandom`` in blocks of 4096.
    """

    _EOF_BEFORE_BODY = "connection closed before the response header"

    def __init__(
        self,
        user: User,
        command: Command,
        target: Destination | None,
        security: Security,
        *,
        now: float,
        urandom: Urandom,
        aead: bool | None = None,
        options: Option | None = None,
        chunk_size: int = SEND_CHUNK_SIZE,
        send_eos: bool = True,
    ) -> None:
        """``send_eos=False``: :meth:`send_eof` sends no end-of-stream chunk (v5's
        ``experiments: "NoTerminationSignal"``); the body ends with the connection."""
        command, security, options = _checked_request(command, target, security, options)
        if aead is None:
            aead = user.alter_id == 0
        super().__init__(chunk_size)
        self.user = user
        self.command = command
        self.security = security
        self.options = options
        self.aead = aead
        self._send_eos = send_eos

        rnd = urandom(33)
        key, iv, self.response_auth = rnd[:16], rnd[16:32], rnd[32]
        self.body_key, self.body_iv = key, iv
        self._resp_key, self._resp_iv = response_body_key_iv(key, iv, aead=aead)
        self._header = self._seal_header(target, now, urandom)
        self._body = BodySpec(security, options, command, key, iv)
        self._writer = BodyWriter(self._body, urandom=urandom, chunk_size=chunk_size)
        self._rstate = _R_AEAD_LENGTH if aead else _R_LEGACY_HEADER
        self._resp_len = 0
        self._resp_cfb: CipherContext | None = None

    def _seal_header(self, target: Destination | None, now: float, urandom: Urandom) -> bytes:
        """The request header, AEAD or legacy, drawing randomness in the documented order."""
        user = self.user
        ts = int(now)
        auth = b""
        if not self.aead:
            ts += randbelow(urandom, 60) - 30
            ids = user.alter_ids
            id_bytes = ids[randbelow(urandom, len(ids))] if ids else user.id_bytes
            auth = legacy_auth(id_bytes, ts)
        padding_len = urandom(1)[0] & 0x0F
        padding = urandom(padding_len) if padding_len else b""
        try:
            plaintext = encode_request_plaintext(
                body_iv=self.body_iv,
                body_key=self.body_key,
                response_auth=self.response_auth,
                options=self.options,
                security=self.security,
                command=self.command,
                target=target,
                padding=padding,
            )
        except (ValueError, UnicodeEncodeError) as exc:
            raise LocalProtocolError(f"cannot encode the request header: {exc}") from None
        if self.aead:
            auth_id = create_auth_id(user.auth_id_key, ts, urandom(4))
            return seal_aead_request(user.cmd_key, auth_id, urandom(8), plaintext)
        return auth + aes_cfb_encryptor(user.cmd_key, legacy_header_iv(ts)).update(plaintext)

    @property
    def body_reader(self) -> BodyReader | None:
        """The response body's reader once the response header is in: a relay may feed it
        directly (``feed_payloads``), skipping the event objects."""
        return self._reader

    @property
    def framed(self) -> bool:
        """False for a raw request body (no S with NONE, LEGACY or "zero"): it has no
        end-of-stream chunk, so the caller ends it by half-closing the connection."""
        return self._writer.framed

    # sending

    def header(self) -> bytes:
        """The request header now, if not yet sent (else b"")."""
        out, self._header = self._header, b""
        return out

    def send(self, data: BytesLike) -> bytes | bytearray:
        body = self._writer.write(data)
        if self._header:
            return self.header() + body
        return body

    def send_eof(self) -> bytes:
        body = self._writer.write_eof()
        if not self._send_eos:
            body = b""
        if self._header:
            return self.header() + body
        return body

    # receiving

    def _receive_head(self) -> list[ResponseReceived | Data | EndOfStream]:
        buf = self._head
        if self._rstate == _R_AEAD_LENGTH:
            if len(buf) < 18:
                return []
            length = open_aead_response_length(self._resp_key, self._resp_iv, bytes(buf[:18]))
            if length is None:
                raise VMessError("response header length does not authenticate")
            self._resp_len = length
            self._rstate = _R_AEAD_HEADER
        if self._rstate == _R_AEAD_HEADER:
            end = 18 + self._resp_len + TAG
            if len(buf) < end:
                return []
            plain = open_aead_response_header(self._resp_key, self._resp_iv, bytes(buf[18:end]))
            if plain is None:
                raise VMessError("response header does not authenticate")
            event = self._parse_response(plain)
            if event is None:
                raise VMessError("response header too short")
            # A LEGACY body after an AEAD header starts a fresh CFB stream (1.8).
            cfb: CipherContext | None = None
        else:  # legacy header: decrypt exactly the header bytes with the CFB stream
            cfb = self._resp_cfb
            if cfb is None:
                if len(buf) < 4:
                    return []
                cfb = self._resp_cfb = aes_cfb_decryptor(self._resp_key, self._resp_iv)
                buf[:4] = cfb.update(bytes(buf[:4]))
                if buf[0] != self.response_auth:
                    raise VMessError(
                        f"unexpected response header: expected {self.response_auth}, got {buf[0]}"
                    )
                # Command data follows only when a command is present (client.go).
                self._resp_len = 4 + buf[3] if buf[2] != 0 else 4
            end = self._resp_len
            if len(buf) < end:
                return []
            if end > 4:  # reached once: all command bytes are decrypted in one go
                buf[4:end] = cfb.update(bytes(buf[4:end]))
            event = self._parse_response(bytes(buf[:end]))
            assert event is not None
        reader = BodyReader(self._body.response(self._resp_key, self._resp_iv), cfb=cfb)
        self._rstate = _R_BODY
        return self._start_body(reader, event, end)

    def _parse_response(self, plain: bytes) -> ResponseReceived | None:
        """``V OPT CMD CL [DATA]``; None if too short for what CMD/CL announce."""
        if len(plain) < 4:
            return None
        if plain[0] != self.response_auth:
            raise VMessError(
                f"unexpected response header: expected {self.response_auth}, got {plain[0]}"
            )
        command_id = plain[2]
        if command_id == 0:
            return ResponseReceived(command_id=0, command_data=b"")
        end = 4 + plain[3]
        if len(plain) < end:
            return None
        return ResponseReceived(command_id=command_id, command_data=bytes(plain[4:end]))


# -- server -------------------------------------------------------------------------------------

_AUTH = 0
_AEAD_LENGTH = 1
_AEAD_HEADER = 2
_LEGACY_HEADER = 3
_BODY = 4


class ServerConnection(_Receiving[RequestReceived]):
    """One VMess connection from the server side (an inbound connection)."""

    _EOF_BEFORE_BODY = "connection closed during the handshake"

    def __init__(
        self,
        validator: UserValidator,
        *,
        urandom: Urandom,
        disable_insecure_encryption: bool = False,
        chunk_size: int = SEND_CHUNK_SIZE,
        aead_only: bool = False,
        response_command: Callable[[User], tuple[int, bytes] | None] | None = None,
    ) -> None:
        """``aead_only``: refuse legacy (alterId > 0, MD5-based) headers, like V2Ray's
        ``v2ray.vmess.aead.forced``; they fail as an unknown user would (drained).
        ``response_command``: given the authenticated user, the (id, data) of a command for
        the response header (1.8), or ``None``; called once, when the request is in."""
        super().__init__(chunk_size)
        self._aead_only = aead_only
        self._validator = validator
        self._urandom = urandom
        self._secure_only = disable_insecure_encryption
        # V2Ray fixes the per-server drain seed when the first connection starts.
        validator.fuse_behavior_seed(urandom)
        self._state = _AUTH
        self._user: User | None = None
        self._aead = False
        self._header_len = 0
        self._legacy_ts = 0
        self._legacy_cfb: CipherContext | None = None
        self._legacy_plain = bytearray()
        self._session_checked = False
        self._writer: BodyWriter | None = None
        self._response_header = b""
        self._response_command = response_command
        self.request: RequestHeader | None = None

    @property
    def bytes_received(self) -> int:
        return self._received

    # receiving

    def _drain(self, message: str, consumed: int) -> VMessAuthError:
        # V2Ray reads until ``size`` bytes in total have been read, if it has not already.
        size = self._validator.drain_size(self._urandom)
        return VMessAuthError(message, drain_to=size if size > consumed else None)

    def _receive_head(self) -> list[RequestReceived | Data | EndOfStream]:
        buf = self._head
        if self._state == _AUTH and not self._match_user(buf):
            return []
        user = self._user
        assert user is not None
        if self._state == _LEGACY_HEADER:
            return self._legacy_header(buf, user)
        return self._aead_header(buf, user)

    def _match_user(self, buf: bytearray) -> bool:
        """AUTH: find the user by AEAD AuthID, then in the legacy table; False: too few bytes."""
        if len(buf) < 16:
            return False
        auth = bytes(buf[:16])
        match = self._validator.match_aead(auth)
        if match.user is not None:
            self._user = match.user
            self._aead = True
            self._state = _AEAD_LENGTH
            return True
        if match.replay:
            raise self._drain("replayed AuthID", 16)
        legacy = None if self._aead_only else self._validator.match_legacy(auth)
        if legacy is None:
            raise self._drain("invalid user", 16)
        self._user, self._legacy_ts = legacy
        self._legacy_cfb = aes_cfb_decryptor(self._user.cmd_key, legacy_header_iv(self._legacy_ts))
        self._state = _LEGACY_HEADER
        return True

    def _aead_header(
        self, buf: bytearray, user: User
    ) -> list[RequestReceived | Data | EndOfStream]:
        """AEAD_LENGTH then AEAD_HEADER: open the sealed length, then the header itself."""
        if self._state == _AEAD_LENGTH:
            if len(buf) < AEAD_HEADER_PREFIX:
                return []
            length = open_aead_request_length(
                user.cmd_key, bytes(buf[:16]), bytes(buf[16:34]), bytes(buf[34:42])
            )
            if length is None:
                raise self._drain("AEAD header length does not authenticate", 42)
            self._header_len = length
            self._state = _AEAD_HEADER
        end = AEAD_HEADER_PREFIX + self._header_len + TAG
        if len(buf) < end:
            return []
        plain = open_aead_request_header(
            user.cmd_key, bytes(buf[:16]), bytes(buf[34:42]), bytes(buf[42:end])
        )
        if plain is None:
            raise self._drain("AEAD header does not authenticate", end)
        if len(plain) < FIXED_LEN:
            raise VMessError("request header too short")
        if not self._validator.check_session(user, plain[17:33], plain[1:17]):
            raise VMessError("duplicated session id (AEAD request)")
        parsed = parse_request_plaintext(plain)
        if isinstance(parsed, int):
            raise VMessError("request header truncated")
        return self._accept(parsed, end)

    def _legacy_header(
        self, buf: bytearray, user: User
    ) -> list[RequestReceived | Data | EndOfStream]:
        """LEGACY_HEADER: decrypt only what parsing asks for; the body uses another stream."""
        cfb = self._legacy_cfb
        assert cfb is not None
        plain_buf = self._legacy_plain
        while True:
            if len(plain_buf) < FIXED_LEN:
                need = FIXED_LEN
            else:
                if not self._session_checked:
                    self._session_checked = True
                    if not self._validator.check_session(user, plain_buf[17:33], plain_buf[1:17]):
                        self._validator.taint(bytes(buf[:16]))
                        raise self._drain("duplicated session id (legacy request)", 16 + 38)
                result = parse_request_plaintext(plain_buf)
                if not isinstance(result, int):
                    if not result.checksum_ok:
                        self._validator.taint(bytes(buf[:16]))
                        raise self._drain("invalid auth (legacy checksum)", 16 + result.length)
                    return self._accept(result, 16 + result.length)
                need = result
            have = 16 + len(plain_buf)
            take = min(need - len(plain_buf), len(buf) - have)
            if take <= 0:
                return []
            plain_buf += cfb.update(bytes(buf[have : have + take]))

    def _accept(
        self, parsed: ParsedRequest, consumed: int
    ) -> list[RequestReceived | Data | EndOfStream]:
        """Policy checks in V2Ray's order, then set up both body directions."""
        user = self._user
        assert user is not None
        header = self._checked_header(parsed)
        self.request = header
        body = BodySpec(
            header.security, header.options, header.command, header.body_key, header.body_iv
        )
        reader = BodyReader(body)
        self._set_up_response(header, body)
        self._state = _BODY
        self._legacy_plain = bytearray()
        event = RequestReceived(header=header, user=user, aead=self._aead)
        return self._start_body(reader, event, consumed)

    def _checked_header(self, parsed: ParsedRequest) -> RequestHeader:
        """The request, once it passes V2Ray's checks (in V2Ray's order)."""
        if not parsed.checksum_ok:
            raise VMessError("invalid auth (header checksum)")
        if not parsed.target_ok:
            raise VMessError("invalid remote address")
        security = _security_from_nibble(parsed.security_nibble)
        if security in (Security.UNKNOWN, Security.AUTO):
            raise VMessError(f"unknown security type: {parsed.security_nibble}")
        if self._secure_only and security in _INSECURE:
            raise VMessError(f"client is using insecure encryption: {security.name}")
        options = _member(Option, parsed.options)
        if int(options) & _P and not int(options) & _M:
            raise VMessError("option GlobalPadding without ChunkMasking")
        return RequestHeader(
            version=parsed.version,
            body_iv=parsed.body_iv,
            body_key=parsed.body_key,
            response_auth=parsed.response_auth,
            options=options,
            padding_len=parsed.padding_len,
            security=security,
            command=_member(Command, parsed.command),
            target=parsed.target,
        )

    def _set_up_response(self, header: RequestHeader, body: BodySpec) -> None:
        """Seal the response header (it goes out with the first response bytes) and make
        the writer of the response to the request ``body``."""
        resp_key, resp_iv = response_body_key_iv(header.body_key, header.body_iv, aead=self._aead)
        user = self._user
        reply = None
        if self._response_command is not None and user is not None:
            reply = self._response_command(user)
        plaintext = encode_response_plaintext(header.response_auth, *(reply or ()))
        writer_cfb: CipherContext | None
        if self._aead:
            self._response_header = seal_aead_response(resp_key, resp_iv, plaintext)
            writer_cfb = None  # LEGACY body after an AEAD header: fresh CFB stream (1.8)
        else:
            stream = aes_cfb_encryptor(resp_key, resp_iv)
            self._response_header = stream.update(plaintext)
            writer_cfb = stream  # LEGACY body continues the header's CFB stream (1.8)
        self._writer = BodyWriter(
            body.response(resp_key, resp_iv),
            urandom=self._urandom,
            chunk_size=self._chunk_size,
            cfb=writer_cfb,
        )

    @property
    def body_reader(self) -> BodyReader | None:
        """The request body's reader once the request header is in (see
        :attr:`ClientConnection.body_reader`)."""
        return self._reader

    @property
    def framed(self) -> bool:
        """False for a raw response body (see :attr:`ClientConnection.framed`)."""
        return self._writer is None or self._writer.framed

    # sending

    def _take_response_header(self) -> bytes:
        out, self._response_header = self._response_header, b""
        return out

    def send(self, data: BytesLike) -> bytes | bytearray:
        """Response bytes; the response header goes out with the first call (1.8 timing)."""
        if self._writer is None:
            raise LocalProtocolError("no valid request received yet")
        body = self._writer.write(data)
        if self._response_header:
            return self._take_response_header() + body
        return body

    def send_eof(self) -> bytes:
        if self._writer is None:
            raise LocalProtocolError("no valid request received yet")
        body = self._writer.write_eof()
        if self._response_header:
            return self._take_response_header() + body
        return body
