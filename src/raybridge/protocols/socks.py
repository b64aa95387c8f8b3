"""SOCKS 4/4a/5 handshakes (server and a small client) and SOCKS5 UDP datagrams, sans-IO.

Byte layouts (RFC 1928, RFC 1929, SOCKS4/4a; docs/protocols.md 5.1)::

    greeting        05 NMETHODS METHODS...                -> 05 METHOD     (05 FF: none acceptable)
    password        VER ULEN UNAME PLEN PASSWD            -> 01 00 | 01 FF (VER is not checked)
    request         05 CMD RSV ATYP ADDR PORT(2)          -> 05 REP 00 ATYP BND.ADDR BND.PORT(2)
    socks4 / 4a     04 CMD PORT(2) IP(4) USERID 00 [DOMAIN 00]  -> 00 5A|5B PORT(2) IP(4)
    udp datagram    00 00 FRAG ATYP ADDR PORT(2) DATA

ATYP is 01 IPv4, 03 domain, 04 IPv6 (:data:`raybridge.address.SOCKS_ADDRESS`). SOCKS4a is
signalled, as V2Ray checks it, by a first IP byte of zero.

Like V2Ray, the server answers success *before* anything is dialled (docs/protocols.md 5.1, quirk
19); upstream failures are reported by closing the connection, not with a SOCKS code.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from functools import lru_cache
from typing import ClassVar

from raybridge.address import SOCKS_ADDRESS, Destination, Network, decode_domain
from raybridge.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AuthMethod",
    "Reply",
    "Socks4Reply",
    "SocksClient",
    "SocksCommand",
    "SocksError",
    "SocksRequest",
    "SocksServer",
    "decode_udp_datagram",
    "encode_udp_datagram",
]


class SocksError(RemoteProtocolError):
    """The SOCKS peer sent bytes we cannot accept (or failed authentication)."""


class SocksCommand(IntEnum):
    """SOCKS request commands (RFC 1928 section 4; docs/protocols.md 5.1)."""

    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class AuthMethod(IntEnum):
    """SOCKS5 authentication methods (RFC 1928 section 3; docs/protocols.md 5.1)."""

    NO_AUTH = 0x00
    PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Reply(IntEnum):
    """SOCKS5 reply codes, REP (RFC 1928 section 6; docs/protocols.md 5.1)."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class Socks4Reply(IntEnum):
    """SOCKS4 reply codes, CD (SOCKS4 protocol; docs/protocols.md 5.1)."""

    GRANTED = 0x5A
    REJECTED = 0x5B


#: Tor's RESOLVE and RESOLVE_PTR extensions; V2Ray treats both as CONNECT (docs/protocols.md 5.1).
_TOR_RESOLVE = 0xF0
_TOR_RESOLVE_PTR = 0xF1
_CONNECT_LIKE = frozenset((SocksCommand.CONNECT, _TOR_RESOLVE, _TOR_RESOLVE_PTR))

# No valid handshake stage is longer than 513 bytes (the password message), so more than this
# many unconsumed bytes while a stage is still incomplete can only be an attack (or SOCKS4
# with an absurd user id); either way we stop buffering.
_MAX_PENDING = 1024

# Failure replies carry 0.0.0.0:0, byte for byte what V2Ray writes.
_SOCKS5_NOT_SUPPORTED = bytes((5, Reply.COMMAND_NOT_SUPPORTED, 0, 1, 0, 0, 0, 0, 0, 0))
_SOCKS4_GRANTED = bytes((0, Socks4Reply.GRANTED, 0, 0, 0, 0, 0, 0))
_SOCKS4_REJECTED = bytes((0, Socks4Reply.REJECTED, 0, 0, 0, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """A complete SOCKS request: what the client wants, and who it authenticated as.

    For UDP ASSOCIATE ``target`` is the address the client says it will send from (often
    ``0.0.0.0:0``) and its network is UDP; V2Ray ignores it, and so may the caller.
    """

    command: SocksCommand
    target: Destination
    user: str | None
    version: int


class _State(StrEnum):  # (str's hash: _STEPS is looked up per connection; Enum's is slow)
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    SOCKS4 = "socks4"
    DONE = "done"
    REPLIED = "replied"
    ERROR = "error"


class SocksServer:
    """Server side of a SOCKS 4/4a/5 handshake.

    Feed bytes with :meth:`receive_data` until it returns a :class:`SocksRequest`, sending
    :meth:`data_to_send` after every call. Then answer with :meth:`accept` (V2Ray does so at
    once, before dialling) or :meth:`reject`; both return the queued output first, so their
    result alone is what goes on the wire next. Bytes the client pipelined after its request
    are in :attr:`trailing`.
    """

    __slots__ = (
        "_accounts",
        "_buf",
        "_method",
        "_out",
        "_request",
        "_socks4",
        "_state",
        "_trailing",
        "_udp",
        "_user",
    )

    def __init__(
        self,
        *,
        accounts: Mapping[str, str] | None = None,
        password: bool | None = None,
        udp: bool = False,
        socks4: bool = True,
    ) -> None:
        """``password``: require RFC 1929 authentication (``"auth": "password"``); by default
        it is required when there are ``accounts``. With ``password=True`` and no accounts
        nobody gets in (05 FF to a client not offering it, 01 FF to one that does), as in
        V2Ray: never fall back to no authentication."""
        # Compare bytes, as V2Ray compares Go strings: a name that is not UTF-8 can't match.
        self._accounts = {u.encode(): p.encode() for u, p in accounts.items()} if accounts else {}
        if password is None:
            password = bool(self._accounts)
        self._method = AuthMethod.PASSWORD if password else AuthMethod.NO_AUTH
        self._udp = udp
        # SOCKS4 has no authentication, so V2Ray refuses it when a password is required.
        self._socks4 = socks4 and not password
        self._buf = bytearray()
        self._out = bytearray()
        self._state = _State.GREETING
        self._user: str | None = None
        self._request: SocksRequest | None = None
        self._trailing = b""

    @property
    def request(self) -> SocksRequest | None:
        return self._request

    @property
    def trailing(self) -> bytes:
        """Bytes the client sent after its request (payload it did not wait to send)."""
        return self._trailing

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> SocksRequest | None:
        if self._state not in (_State.GREETING, _State.AUTH, _State.REQUEST, _State.SOCKS4):
            raise LocalProtocolError(f"SOCKS handshake is over (state {self._state.value})")
        self._buf += data
        try:
            return self._advance()
        except SocksError:
            self._state = _State.ERROR
            self._buf.clear()
            raise

    def _fail(self, reply: bytes, message: str) -> SocksError:
        self._out += reply
        return SocksError(message)

    def _advance(self) -> SocksRequest | None:
        # One step per stage (see _STEPS): each returns where the next stage starts in the
        # buffer, or None while its bytes are not all there yet.
        buf = self._buf
        pos = 0
        while self._state is not _State.DONE:
            step = self._STEPS[self._state](self, buf, pos)
            if step is None:
                break
            pos = step
        else:
            return self._request  # _finish has taken the trailing bytes and cleared buf
        if len(buf) - pos > _MAX_PENDING:
            raise SocksError("SOCKS handshake too long")
        if pos:
            del buf[:pos]
        return None

    def _greeting(self, buf: bytearray, pos: int) -> int | None:
        if len(buf) - pos < 2:
            return None
        version, second = buf[pos], buf[pos + 1]
        if version == 5:
            end = pos + 2 + second
            if len(buf) < end:
                return None
            if self._method not in buf[pos + 2 : end]:
                raise self._fail(bytes((5, AuthMethod.NO_ACCEPTABLE)), "no acceptable auth method")
            self._out += bytes((5, self._method))
            self._state = _State.AUTH if self._method is AuthMethod.PASSWORD else _State.REQUEST
            return end
        if version == 4:
            if not self._socks4:
                raise self._fail(_SOCKS4_REJECTED, "SOCKS4 is not allowed")
            if second != SocksCommand.CONNECT:
                raise self._fail(_SOCKS4_REJECTED, f"unsupported SOCKS4 command {second}")
            self._state = _State.SOCKS4  # the header is parsed from `pos` as a whole
            return pos
        raise SocksError(f"unknown SOCKS version {version}")

    def _auth(self, buf: bytearray, pos: int) -> int | None:
        # RFC 1929; V2Ray does not check VER, nor do we.
        n = len(buf)
        if n - pos < 2:
            return None
        plen_at = pos + 2 + buf[pos + 1]
        if n <= plen_at:
            return None
        end = plen_at + 1 + buf[plen_at]
        if n < end:
            return None
        name = bytes(buf[pos + 2 : plen_at])
        password = bytes(buf[plen_at + 1 : end])
        expected = self._accounts.get(name)
        if expected is None or not hmac.compare_digest(expected, password):
            raise self._fail(b"\x01\xff", "invalid username or password")
        self._out += b"\x01\x00"
        self._user = name.decode()  # it matched an account, so it is UTF-8
        self._state = _State.REQUEST
        return end

    def _socks5_request(self, buf: bytearray, pos: int) -> int | None:
        if len(buf) - pos < 3:
            return None
        # V2Ray judges the command before the address has arrived, and ignores VER and RSV;
        # so do we.
        cmd = buf[pos + 1]
        if cmd in _CONNECT_LIKE:
            command = SocksCommand.CONNECT
        elif cmd == SocksCommand.UDP_ASSOCIATE and self._udp:
            command = SocksCommand.UDP_ASSOCIATE
        else:
            raise self._fail(_SOCKS5_NOT_SUPPORTED, f"unsupported SOCKS5 command {cmd}")
        decoded = SOCKS_ADDRESS.decode(buf, pos + 3, SocksError)
        if decoded is None:
            return None
        host, port, end = decoded
        network = Network.UDP if command is SocksCommand.UDP_ASSOCIATE else Network.TCP
        return self._finish(command, Destination(network, host, port), 5, end)

    def _socks4_request(self, buf: bytearray, pos: int) -> int | None:
        if len(buf) - pos < 8:
            return None
        user_end = buf.find(0, pos + 8)
        if user_end < 0:
            return None
        port = (buf[pos + 2] << 8) | buf[pos + 3]
        if buf[pos + 4] == 0:  # SOCKS4a: the domain follows the user id
            domain_end = buf.find(0, user_end + 1)
            if domain_end < 0:
                return None
            raw = bytes(buf[user_end + 1 : domain_end])
            if len(raw) > 255:
                raise SocksError("SOCKS4a domain longer than 255 bytes")
            host = decode_domain(raw, SocksError)
            end = domain_end + 1
        else:
            host = ipaddress.IPv4Address(bytes(buf[pos + 4 : pos + 8]))
            end = user_end + 1
        return self._finish(SocksCommand.CONNECT, Destination(Network.TCP, host, port), 4, end)

    _STEPS: ClassVar[dict[_State, Callable[[SocksServer, bytearray, int], int | None]]] = {
        _State.GREETING: _greeting,
        _State.AUTH: _auth,
        _State.REQUEST: _socks5_request,
        _State.SOCKS4: _socks4_request,
    }

    def _finish(self, command: SocksCommand, target: Destination, version: int, end: int) -> int:
        """Record the request and the bytes after it; the state becomes DONE."""
        self._trailing = bytes(self._buf[end:])
        self._buf.clear()
        self._state = _State.DONE
        # SOCKS4 user ids are ignored, as V2Ray does: there is no authentication there.
        self._request = SocksRequest(
            command=command, target=target, user=self._user, version=version
        )
        return 0

    def _replied(self) -> SocksRequest:
        if self._state is not _State.DONE or self._request is None:
            raise LocalProtocolError(f"no SOCKS request to answer (state {self._state.value})")
        self._state = _State.REPLIED
        return self._request

    def accept(self, bind: Destination) -> bytes:
        """Queued output plus the success reply.

        ``bind`` is the inbound's listening address for CONNECT, the UDP relay address for
        UDP ASSOCIATE. SOCKS4 replies carry ``0.0.0.0:0`` whatever ``bind`` is, as in V2Ray.
        """
        request = self._replied()
        if request.version == 4:
            return self.data_to_send() + _SOCKS4_GRANTED
        try:
            address = SOCKS_ADDRESS.encode(bind.host, bind.port)
        except (ValueError, UnicodeError) as exc:
            raise LocalProtocolError(f"cannot encode bind address {bind}: {exc}") from exc
        return self.data_to_send() + b"\x05\x00\x00" + address

    def reject(self, code: int = Reply.GENERAL_FAILURE) -> bytes:
        """Queued output plus a failure reply (SOCKS4: always 0x5B, whatever ``code``)."""
        request = self._replied()
        if request.version == 4:
            return self.data_to_send() + _SOCKS4_REJECTED
        if not 1 <= code <= 0xFF:
            raise LocalProtocolError(f"SOCKS5 failure code must be 1..255, not {code}")
        return self.data_to_send() + bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


# ---------------------------------------------------------------------------------------
# UDP datagrams (RFC 1928 section 7)


@lru_cache(maxsize=4096)
def _udp_header(destination: Destination) -> bytes:
    # Replies to one client go back with the same few headers over and over: cache them.
    return b"\x00\x00\x00" + SOCKS_ADDRESS.encode(destination.host, destination.port)


def decode_udp_datagram(datagram: bytes | bytearray | memoryview) -> tuple[Destination, memoryview]:
    """Split a client datagram into its destination and payload (a view, no copy).

    Fragments (FRAG != 0), truncated headers and empty payloads raise :class:`SocksError`;
    V2Ray drops such datagrams, and so should the caller. RSV is not checked (V2Ray doesn't).
    """
    view = memoryview(datagram)
    if len(view) < 5:
        raise SocksError("UDP datagram too short")
    if view[2] != 0:
        raise SocksError("fragmented UDP datagram")
    decoded = SOCKS_ADDRESS.decode(view, 3, SocksError)
    if decoded is None:
        raise SocksError("truncated UDP datagram header")
    host, port, end = decoded
    if end == len(view):
        raise SocksError("empty UDP datagram")
    return Destination(Network.UDP, host, port), view[end:]


def encode_udp_datagram(source: Destination, payload: bytes | bytearray | memoryview) -> bytes:
    """A datagram for the client; ``source`` is the destination as the client named it."""
    try:
        header = _udp_header(source)
    except (ValueError, UnicodeError) as exc:
        raise LocalProtocolError(f"cannot encode UDP source {source}: {exc}") from exc
    return header + payload


# ---------------------------------------------------------------------------------------
# Client


class _ClientState(Enum):
    METHOD = "method"
    AUTH = "auth"
    REPLY = "reply"
    DONE = "done"
    ERROR = "error"


class SocksClient:
    """Client side of a SOCKS5 handshake (for tests, the demo and benchmarks).

    Send :meth:`initial_bytes`, then feed what the server says to :meth:`receive_data` and
    send what it returns (``None``: nothing yet, wait for more). When the final reply has
    arrived ``done`` is true, ``bound`` holds BND.ADDR/BND.PORT and ``trailing`` any bytes
    that followed the reply.
    """

    __slots__ = ("_auth", "_buf", "_method", "_request", "_state", "bound", "command", "trailing")

    def __init__(
        self,
        target: Destination,
        *,
        command: SocksCommand = SocksCommand.CONNECT,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise LocalProtocolError("give both username and password, or neither")
        self.command = command
        self._auth = b""
        if username is not None and password is not None:
            name, secret = username.encode(), password.encode()
            if len(name) > 255 or len(secret) > 255:
                raise LocalProtocolError("SOCKS username and password are at most 255 bytes")
            self._auth = bytes((1, len(name))) + name + bytes((len(secret),)) + secret
        self._method = AuthMethod.PASSWORD if self._auth else AuthMethod.NO_AUTH
        try:
            address = SOCKS_ADDRESS.encode(target.host, target.port)
        except (ValueError, UnicodeError) as exc:
            raise LocalProtocolError(f"cannot encode target {target}: {exc}") from exc
        self._request = bytes((5, command, 0)) + address
        self._buf = bytearray()
        self._state = _ClientState.METHOD
        self.bound: Destination | None = None
        self.trailing = b""

    @property
    def done(self) -> bool:
        return self._state is _ClientState.DONE

    def initial_bytes(self) -> bytes:
        """The greeting, offering exactly one method (as V2Ray's client does)."""
        return bytes((5, 1, self._method))

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes | None:
        if self._state in (_ClientState.DONE, _ClientState.ERROR):
            raise LocalProtocolError(f"SOCKS handshake is over (state {self._state.value})")
        self._buf += data
        try:
            return self._advance()
        except SocksError:
            self._state = _ClientState.ERROR
            raise

    def _advance(self) -> bytes | None:
        buf = self._buf
        out = b""
        while True:
            state = self._state
            if state is _ClientState.METHOD:
                if len(buf) < 2:
                    break
                if buf[0] != 5:
                    raise SocksError(f"unexpected SOCKS version {buf[0]} in method reply")
                if buf[1] != self._method:
                    raise SocksError(f"server chose auth method {buf[1]}, not {self._method}")
                del buf[:2]
                if self._auth:
                    out += self._auth
                    self._state = _ClientState.AUTH
                else:
                    out += self._request
                    self._state = _ClientState.REPLY
            elif state is _ClientState.AUTH:
                if len(buf) < 2:
                    break
                if buf[1] != 0:
                    raise SocksError(f"server rejected our credentials ({buf[1]})")
                del buf[:2]
                out += self._request
                self._state = _ClientState.REPLY
            else:  # _ClientState.REPLY
                if len(buf) < 3:
                    break
                if buf[0] != 5:
                    raise SocksError(f"unexpected SOCKS version {buf[0]} in reply")
                if buf[1] != Reply.SUCCEEDED:
                    raise SocksError(f"server rejected the request ({buf[1]})")
                decoded = SOCKS_ADDRESS.decode(buf, 3, SocksError)
                if decoded is None:
                    break
                host, port, end = decoded
                network = Network.UDP if self.command is SocksCommand.UDP_ASSOCIATE else Network.TCP
                self.bound = Destination(network, host, port)
                self.trailing = bytes(buf[end:])
                buf.clear()
                self._state = _ClientState.DONE
                return out
        if len(buf) > _MAX_PENDING:
            raise SocksError("SOCKS reply too long")
        return out or None
