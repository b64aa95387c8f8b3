"""The ``vmess`` inbound and outbound: the codec of :mod:`raybridge.protocols.vmess` on TCP.

Inbound: authenticates the request header (AEAD or legacy, for every user), dispatches
its destination (command 0x03, Mux, goes to ``v1.mux.cool`` like in V2Ray), and relays the
body. An authentication failure is *drained*: the server keeps reading and discarding up to
a per-server pseudo-random byte count before it closes, like V2Ray, so a prober cannot tell
where the check failed (docs/protocols.md 1.6).

Outbound: dials the server (round robin over ``vnext``, a random user of the server, 5
attempts), sends the request header together with the first payload, and never waits for
the response header before sending.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from raybridge import replay
from raybridge.address import Destination, Network
from raybridge.config.model import (
    PLAIN,
    OutboundConfig,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessUserConfig,
)
from raybridge.errors import LocalProtocolError
from raybridge.link import End, Inbound, Outbound, PacketEnd, Session, join
from raybridge.log import user_label
from raybridge.protocols.mux import (
    MuxConnection,
    MuxError,
    MuxEvent,
    Role,
    SessionData,
    SessionEnded,
)
from raybridge.protocols.packetaddr import (
    MAGIC_DOMAIN,
    PacketAddrError,
    decode_packet,
    encode_packet,
)
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Data,
    EndOfStream,
    Option,
    RequestReceived,
    ResponseReceived,
    Security,
    ServerConnection,
    User,
    UserValidator,
    VMessAuthError,
    VMessError,
    client_profile,
    security_from_config,
)
from raybridge.protocols.vmess.header import (
    SWITCH_ACCOUNT,
    decode_switch_account,
    encode_switch_account,
)
from raybridge.proxy.base import (
    InboundCommon,
    InboundContext,
    InboundEnd,
    StreamInbound,
    short_reason,
)
from raybridge.proxy.dynamic import DynamicPorts
from raybridge.proxy.mux import MUX_DOMAIN, MuxOutbound
from raybridge.stats import Stats
from raybridge.transport.dial import ClientTransport
from raybridge.transport.tcp import StreamEnd

logger = logging.getLogger("raybridge.proxy.vmess")

#: Dial retries. V2Ray's VMess outbound makes 5 attempts 200, 400, 600, 800 ms apart
#: (docs/protocols.md 3.1, 8.21); we start sooner (a node started a moment before its server is
#: connected 50 ms later, not 200) and give up at about the same time.
DIAL_ATTEMPTS = 6
DIAL_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)


#: Payloads smaller than this on average are joined before sealing: fewer, larger chunks
#: (V2Ray sends ~2 KiB chunks) cost less than the copy.
JOIN_BELOW = 32 * 1024


def seal_many(send: Callable[[bytes], bytes | bytearray], parts: list[bytes]) -> list[bytes]:
    """Seal a stream's payloads: small ones joined into one chunk run, large ones each."""
    if len(parts) > 1 and sum(len(p) for p in parts) < JOIN_BELOW * len(parts):
        return [send(b"".join(parts))]  # type: ignore[list-item]
    return [send(data) for data in parts]  # type: ignore[misc]


class VMessBody(StreamEnd):
    """A VMess connection as a link end, either role (h11, h2 and wsproto each have one
    connection class with ``our_role``, not a client copy and a server copy).

    The role supplies its codec (:class:`ClientConnection` or :class:`ServerConnection`)
    and :meth:`handshake`; everything after the handshake, both directions of the body,
    is here, once: payloads to the peer (one call per read, one datagram per chunk on UDP),
    the peer's data sealed into chunks, half-close as an EOS chunk (or a FIN for a raw
    body), and the end of the body read."""

    codec: ClientConnection | ServerConnection
    udp: bool = False

    def data_received(self, data: bytes) -> None:
        rx = self.rx
        if rx is not None:
            rx.value += len(data)
        if not self.relay_body(data):
            events = self.handshake(data)
            if events is not None:
                self._relay_events(events)

    def handshake(self, data: bytes) -> list[object] | None:
        """Feed ``data`` to the codec before its body starts; the events, or None if the
        connection failed (the role has dealt with it)."""
        raise NotImplementedError

    def on_event(self, event: object) -> None:
        """A handshake event other than data (the request or the response header)."""

    def relay_body(self, data: bytes) -> bool:
        """Feed ``data`` to the body reader and relay the payloads; False while the
        handshake is not done (the caller runs it)."""
        reader = self.codec.body_reader
        if reader is None:
            return False
        try:
            payloads = reader.feed_payloads(data)
        except VMessError as exc:
            self._failed(exc)
            return True
        if payloads:
            self._relay(payloads)
        if reader.done:
            self._body_ended()
        return True

    def _relay_events(self, events: list[object]) -> None:
        """The events of the call that completed the handshake: whatever came in with
        the header is relayed like the body that follows."""
        payloads: list[bytes] = []
        for event in events:
            if type(event) is Data:
                payloads.append(event.data)
            elif type(event) is EndOfStream:
                if payloads:
                    self._relay(payloads)
                    payloads = []
                self._body_ended()
            else:
                self.on_event(event)
        if payloads:
            self._relay(payloads)

    def _relay(self, payloads: list[bytes]) -> None:
        peer = self.peer
        if peer is None:
            return
        session = self.session
        if session is not None:
            session.active = True
            if self.inbound_side:
                session.bytes_up += sum(map(len, payloads))
        if self.udp:
            for payload in payloads:
                self.deliver_datagram(payload, peer)  # one datagram each
        elif len(payloads) == 1:
            peer.write(payloads[0])
        else:
            peer.write_many(payloads)  # one writev

    def deliver_datagram(self, data: bytes, peer: End) -> None:
        peer.write(data)

    def _failed(self, exc: VMessError) -> None:
        logger.info("bad VMess data: %s", exc)
        peer = self.peer
        self.abort(exc)
        if peer is not None:
            peer.abort(exc)

    # -- the peer's data, sealed ---------------------------------------------------------
    def write(self, data: bytes) -> None:
        session = self.session
        if session is not None and self.inbound_side:
            session.bytes_down += len(data)
        try:
            wire = self.codec.send(data)
        except LocalProtocolError as exc:
            if not self.udp:
                raise
            logger.debug("dropped UDP datagram: %s", exc)  # over one chunk
            return
        self.send_wire(wire)

    def write_many(self, parts: list[bytes]) -> None:
        if self.udp:
            for data in parts:
                self.write(data)
        else:
            session = self.session
            if session is not None and self.inbound_side:
                session.bytes_down += sum(map(len, parts))
            self.send_wire_many(seal_many(self.codec.send, parts))

    def write_eof(self) -> None:
        if self._write_eof or self._aborted or self._lost:  # (StreamEnd.closed, inline)
            return
        if self.transport is None:
            # A dial in progress: queue the EOS chunk now, in order after the pending data.
            self.send_wire(self.codec.send_eof())
            self._write_eof = True
            return
        super().write_eof()

    def _finish_write(self) -> None:
        transport = self.transport
        if transport is not None:
            self.send_wire(self.codec.send_eof())
            if self._read_eof:
                transport.close()
            elif not self.codec.framed and transport.can_write_eof():
                transport.write_eof()  # a raw body has no EOS chunk: its end is a FIN

    # -- the end of the body we read -----------------------------------------------------
    def _body_ended(self) -> None:
        if self._read_eof:
            return
        self._read_eof = True
        if self.peer is not None:
            self.peer.write_eof()
        self.input_ended()
        if self._write_eof and self.transport is not None:
            self.transport.close()

    def input_ended(self) -> None:
        """Hook: the body we read has ended."""

    def eof_received(self) -> bool:
        # A TCP EOF without an EOS chunk: the end of the body (and of a raw one).
        self._body_ended()
        return not self._write_eof


class VMessInboundEnd(InboundEnd, VMessBody):
    inbound: VMessInbound
    codec: ServerConnection

    def handshake_started(self) -> None:
        self.codec = ServerConnection(
            self.inbound.validator,
            urandom=os.urandom,
            disable_insecure_encryption=self.inbound.disable_insecure_encryption,
            aead_only=self.inbound.aead_only,
            response_command=None if self.inbound.detour is None else self.inbound.detour.command,
        )
        self.drain_to: int | None = None
        self.received = 0
        self.udp = False

    def data_received(self, data: bytes) -> None:
        if self.drain_to is not None:
            if self.rx is not None:
                self.rx.value += len(data)
            self.received += len(data)
            if self.received >= self.drain_to:
                self.abort()
            return
        VMessBody.data_received(self, data)

    def handshake(self, data: bytes) -> list[object] | None:
        if self.session is not None:
            self.session.active = True
        try:
            return list(self.codec.receive_data(data))
        except VMessAuthError as exc:
            self._auth_failed(exc, len(data))
        except VMessError as exc:
            self._failed(exc)
        return None

    def on_event(self, event: object) -> None:
        if type(event) is RequestReceived:
            self._request(event)

    def _request(self, event: RequestReceived) -> End:
        header, user = event.header, event.user
        self.new_session(user=user.email or None, level=user.level)
        if header.command is Command.MUX or header.target is None:
            dest = Destination(Network.TCP, MUX_DOMAIN, 0)
        elif header.command is Command.UDP:
            self.udp = True
            dest = Destination(Network.UDP, header.target.host, header.target.port)
        else:
            dest = header.target
        if logger.isEnabledFor(logging.DEBUG):  # describe() asks the socket for its port
            logger.debug(
                "%s: %s request from %s (%s, %s) to %s",
                self.inbound.describe(),
                "AEAD" if event.aead else "legacy",
                self.source_text,
                header.security.name,
                user_label(user.email, user.id),  # never the UUID (a secret)
                dest,
            )
        return self.start_relay(dest)

    def input_ended(self) -> None:
        self._half_closed(self.inbound.policy.uplink_only)

    def eof_received(self) -> bool:
        if not self.relaying:
            return InboundEnd.eof_received(self)  # during the handshake: rejected
        return VMessBody.eof_received(self)

    def write_eof(self) -> None:
        InboundEnd.write_eof(self)

    def _auth_failed(self, exc: VMessAuthError, size: int) -> None:
        reason = f"VMess: {exc}"
        if exc.drain_to is None:
            self.reject(reason)
            return
        from raybridge import log as logs

        logger.info("%s: %s from %s; draining", self.inbound.describe(), exc, self.source_text)
        logs.rejected(self.source, reason, self.inbound.tag)
        self.inbound.dispatcher.stats.handshake_failed(
            self.inbound.tag or "vmess", short_reason(reason)
        )
        self.drain_to = exc.drain_to
        self.received = self.codec.bytes_received
        if self.received >= self.drain_to:
            self.abort()

    def _failed(self, exc: VMessError) -> None:
        if self.relaying:
            logger.info("%s: bad data from %s: %s", self.inbound.describe(), self.source_text, exc)
            peer = self.peer
            self.abort(exc)
            if peer is not None:
                peer.abort(exc)
        else:
            self.reject(f"VMess: {exc}")


class VMessInbound(StreamInbound):
    protocol_name = "vmess"
    end_class = VMessInboundEnd

    def __init__(
        self,
        common: InboundCommon,
        *,
        users: Sequence[User],
        disable_insecure_encryption: bool = False,
        validator: UserValidator | None = None,
        aead_only: bool = False,
        state_dir: str | None = None,
    ) -> None:
        """``state_dir``: where the AEAD replay filter outlives a restart (None: the
        ``$STATE_DIRECTORY`` of systemd, if set; ``""``: nowhere), see raybridge.replay."""
        super().__init__(common)
        self.validator = validator or UserValidator(users, clock=time.time)
        self.disable_insecure_encryption = disable_insecure_encryption
        self.aead_only = aead_only
        self.state_dir = replay.state_dir(state_dir)
        self._replay_file: str | None = None
        #: ``detour``: sends each client on to a port of a dynamic-port inbound.
        self.detour: Detour | None = None

    async def start(self) -> None:
        # Replays of headers seen before a restart stay refused (beyond V2Ray).
        self._replay_file = replay.restore(self.state_dir, self.tag, self.port, self.validator)
        await super().start()

    async def close(self) -> None:
        await super().close()
        replay.persist(self._replay_file, self.validator)
        self._replay_file = None

    async def take_over(self, old: Inbound) -> None:
        """As :meth:`StreamInbound.take_over`; the AuthIDs ``old`` has seen stay refused."""
        if isinstance(old, VMessInbound):
            self.validator.import_replay(old.validator.export_replay())
        await super().take_over(old)

    # -- users at run time (V2Ray's AlterInbound; a reload's changed ``clients``) ----------
    @property
    def users(self) -> list[User]:
        return self.validator.users

    def add_user(self, user: User) -> None:
        """Accept ``user`` on new connections. A second user with the same (non-empty)
        email is refused, as V2Ray 4.34's ``AddUser`` does."""
        if user.email and any(u.email.lower() == user.email.lower() for u in self.users):
            raise ValueError(f"User {user.email} already exists.")
        self.validator.add(user)

    def remove_user(self, email: str) -> None:
        """Refuse new connections of the user with this email (case-insensitive); live
        ones go on. Errors as V2Ray 4.34's ``RemoveUser``."""
        if not email:
            raise ValueError("Email must not be empty.")
        if not self.validator.remove(email):
            raise ValueError(f"User {email} not found.")

    def set_users(self, users: Sequence[User]) -> tuple[list[User], list[User]]:
        """Make the user set ``users`` (a reload): returns (added, removed). Users in both
        sets keep their records (and their replay and legacy state)."""
        current = self.users
        before, after = set(current), set(users)
        added = [u for u in dict.fromkeys(users) if u not in before]
        removed = [u for u in current if u not in after]
        for user in removed:
            self.validator.discard(user)
        for user in added:
            self.validator.add(user)
        return added, removed


class Detour:
    """VMess ``detour`` (``proxy/vmess/inbound/inbound.go``, ``generateCommand``): each
    response of an inbound with ``detour.to`` carries command 1, "switch account", naming
    a port of the target's current set (proxy/dynamic.py), a user for the client to use
    there and how many minutes it holds. Users are made on demand, one per email (lower
    case; all clients without an email share one), with the target's ``default`` alterId
    and level, and are valid on every port of the target (V2Ray keeps one table per port
    and per refresh; one table means a client told of any port may use all)."""

    def __init__(self, target: DynamicPorts, *, alter_id: int = 0, level: int = 0) -> None:
        self.target = target
        self.alter_id = alter_id
        self.level = level
        self.validator = UserValidator((), clock=time.time)
        self._users: dict[str, User] = {}
        self._seeded = False
        target.adopt = self._adopt

    def _adopt(self, inbound: StreamInbound) -> None:
        """A new port of the target: it takes the shared users (and brings the configured
        ``clients``, the same on every port, the first time)."""
        if isinstance(inbound, VMessInbound) and inbound.validator is not self.validator:
            if not self._seeded:
                self._seeded = True
                for user in inbound.validator.users:
                    self.validator.add(user)
            inbound.validator = self.validator

    def user(self, email: str) -> User:
        key = email.lower()
        user = self._users.get(key)
        if user is None:
            user = User(id=uuid.uuid4(), alter_id=self.alter_id, level=self.level, email=key)
            self._users[key] = user
            self.validator.add(user)
        return user

    def command(self, client: User) -> tuple[int, bytes] | None:
        picked = self.target.pick()
        if picked is None:
            return None
        inbound, minutes = picked
        user = self.user(client.email)
        logger.debug("detour: port %s for %s minutes", inbound.port, minutes)
        data = encode_switch_account(
            port=inbound.port,
            user_id=user.id.bytes,
            alter_ids=user.alter_id,
            level=user.level,
            valid_minutes=minutes,
        )
        return SWITCH_ACCOUNT, data


class VMessOutboundEnd(VMessBody):
    codec: ClientConnection

    def __init__(self, session: Session, codec: ClientConnection, udp: bool) -> None:
        super().__init__(session)
        self.codec = codec
        self.udp = udp
        #: Called with the data of a response command 1 (detour), by the outbound.
        self.on_switch: Callable[[bytes], None] | None = None

    def on_event(self, event: object) -> None:
        on_switch = self.on_switch
        if (
            type(event) is ResponseReceived
            and event.command_id == SWITCH_ACCOUNT
            and on_switch is not None
        ):
            on_switch(event.command_data)

    def connection_made(self, transport: object) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if self.transport is not None:
            # Nothing to send yet: send the header alone so the server can dial early.
            header = self.codec.header()
            if header:
                self.send_wire(header)

    def handshake(self, data: bytes) -> list[object] | None:
        try:
            return list(self.codec.receive_data(data))
        except VMessError as exc:
            self._failed(exc)
            return None


class PacketAddrClientEnd(VMessOutboundEnd):
    """UDP as v2fly v5's ``packetEncoding: "packet"``: a UDP request to the magic domain,
    every datagram prefixed with its address (``protocols/packetaddr.py``)."""

    def __init__(self, session: Session, codec: ClientConnection, dest: Destination) -> None:
        super().__init__(session, codec, True)
        self.dest = dest

    def write(self, data: bytes) -> None:
        super().write(encode_packet(self.dest, data))

    def deliver_datagram(self, data: bytes, peer: End) -> None:
        try:
            source, payload = decode_packet(data)
        except PacketAddrError as exc:
            logger.debug("dropped a packetaddr reply: %s", exc)
            return
        if source == self.dest or not isinstance(peer, PacketEnd):
            peer.write(payload)
        else:
            peer.write_to(payload, source)  # full-cone: a reply from another address


class XudpClientEnd(VMessOutboundEnd):
    """UDP as XUDP (Xray, sing-box): a Mux.Cool connection with one UDP session, number 0,
    whose frames name each datagram's address (``protocols/mux.py``)."""

    def __init__(self, session: Session, codec: ClientConnection, dest: Destination) -> None:
        super().__init__(session, codec, True)
        self.dest = dest
        self.mux = MuxConnection(Role.CLIENT)
        self.mux.open_session(dest, xudp=True)

    def connection_made(self, transport: object) -> None:
        StreamEnd.connection_made(self, transport)  # type: ignore[arg-type]
        self._flush()

    def _flush(self) -> None:
        out = self.mux.data_to_send()
        if out:
            self.send_wire(self.codec.send(out))

    def write(self, data: bytes) -> None:
        if not self.mux.is_open(0):
            return
        try:
            self.mux.send_data(0, data, self.dest)
        except LocalProtocolError as exc:
            logger.debug("dropped UDP datagram: %s", exc)
            return
        self._flush()

    def write_many(self, parts: list[bytes]) -> None:
        for data in parts:
            self.write(data)

    def write_eof(self) -> None:
        if self.mux.is_open(0):
            self.mux.half_close(0)
            self._flush()

    def data_received(self, data: bytes) -> None:
        if self.rx is not None:
            self.rx.value += len(data)
        try:
            events = self.codec.receive_data(data)
        except VMessError as exc:
            logger.info("bad response from VMess server: %s", exc)
            self._fail(exc)
            return
        for event in events:
            if type(event) is Data:
                try:
                    frames = self.mux.receive_data(event.data)
                except MuxError as exc:
                    logger.info("bad XUDP stream from VMess server: %s", exc)
                    self._fail(exc)
                    return
                self._mux_events(frames)
            elif type(event) is EndOfStream:
                self._body_ended()
        self._flush()  # e.g. End for a session the server does not know
        if not self.mux.is_open(0) and not self._write_eof:
            VMessOutboundEnd.write_eof(self)  # the one session is over: so is the request

    def _mux_events(self, frames: list[MuxEvent]) -> None:
        peer = self.peer
        session = self.session
        for frame in frames:
            if type(frame) is SessionData and frame.session_id == 0 and peer is not None:
                data = bytes(frame.data)
                if session is not None:
                    session.active = True
                address = frame.address
                if address is None or address == self.dest or not isinstance(peer, PacketEnd):
                    peer.write(data)
                else:
                    peer.write_to(data, address)  # full-cone
            elif type(frame) is SessionEnded and frame.session_id == 0:
                if frame.error:
                    self._fail(ConnectionResetError("XUDP session aborted"))
                elif peer is not None:
                    peer.write_eof()

    def _fail(self, exc: BaseException) -> None:
        peer = self.peer
        self.abort(exc)
        if peer is not None:
            peer.abort(exc)


#: ClientUser.profile's results: (security name, AuthenticatedLength, command) -> profile.
_PROFILES: dict[tuple[str, bool, Command], tuple[Security, Option]] = {}


@dataclass(frozen=True, slots=True)
class ClientUser:
    """A user of a VMess outbound: who, and how its requests are made."""

    user: User
    security: str = "auto"  # the config's name: auto, aes-128-gcm, ..., none, zero
    experiments: frozenset[str] = frozenset()  # AuthenticatedLength, NoTerminationSignal

    def profile(self, command: Command) -> tuple[Security, Option]:
        """The security and options of a request: a function of the security name, the
        AuthenticatedLength experiment and the command only, so computed once for each."""
        key = (self.security, "AuthenticatedLength" in self.experiments, command)
        profile = _PROFILES.get(key)
        if profile is None:
            profile = _PROFILES[key] = self._profile(command)
        return profile

    def _profile(self, command: Command) -> tuple[Security, Option]:
        if self.security == "zero":
            return client_profile(None, command, zero=True)
        if self.security == "legacy":  # a detour's user (never from a config)
            return client_profile(Security.LEGACY, command)
        return client_profile(
            security_from_config(self.security),
            command,
            authenticated_length="AuthenticatedLength" in self.experiments,
        )


@dataclass(frozen=True, slots=True)
class VMessServer:
    address: str
    port: int
    users: tuple[ClientUser, ...]


class VMessOutbound(Outbound):
    def __init__(
        self,
        tag: str,
        servers: Sequence[VMessServer],
        *,
        send_through: str | None = None,
        rng: random.Random | None = None,
        packet_encoding: str = "none",
        transport: ClientTransport | None = None,
    ) -> None:
        """``packet_encoding``: how UDP goes: "none" (4.34's UDP request), "packet"
        (packetaddr; domain destinations still use a plain UDP request, since packetaddr
        carries IP addresses only) or "xudp". ``transport``: the streamSettings under
        each connection (TLS, WebSocket, ...; plain TCP when None)."""
        if not servers or not all(s.users for s in servers):
            raise ValueError("a VMess outbound needs at least one server with a user")
        self.tag = tag
        self.servers = list(servers)
        self.send_through = send_through
        self._turn = 0
        #: Servers a detour told us of (response command 1), until they expire.
        self.learned: dict[tuple[str, int, bytes], tuple[VMessServer, float]] = {}
        self._rng = rng or random.SystemRandom()
        self.packet_encoding = packet_encoding
        self.transport = transport or ClientTransport(PLAIN)

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        server = self._pick_server()
        users = server.users
        # (A draw from the system's random source costs a system call: none for one user.)
        client = users[0] if len(users) == 1 else self._rng.choice(users)
        target: Destination | None
        encoding = "none"
        if type(dest.host) is str and dest.host == MUX_DOMAIN:  # (IPv4Address.__eq__ is slow)
            command, target = Command.MUX, None
        elif dest.network is Network.UDP:
            encoding = self.packet_encoding
            if encoding == "packet" and isinstance(dest.host, str):
                encoding = "none"
            if encoding == "xudp":
                command, target = Command.MUX, None
            elif encoding == "packet":
                command, target = Command.UDP, Destination(Network.UDP, MAGIC_DOMAIN, 0)
            else:
                command, target = Command.UDP, dest
        else:
            command, target = Command.TCP, dest
        security, options = client.profile(command)
        codec = ClientConnection(
            client.user,
            command,
            target,
            security,
            now=time.time(),
            urandom=os.urandom,
            options=options,
            send_eos="NoTerminationSignal" not in client.experiments,
        )
        end: VMessOutboundEnd
        if encoding == "xudp":
            end = XudpClientEnd(session, codec, dest)
        elif encoding == "packet":
            end = PacketAddrClientEnd(session, codec, dest)
        else:
            end = VMessOutboundEnd(session, codec, command is Command.UDP)
        end.rx, end.tx = self.downlink, self.uplink
        join(peer, end)
        end.on_switch = lambda data: self.learn(server, data)
        local = (self.send_through, 0) if self.send_through else None
        transport = self.transport
        end.start_connect(
            lambda e: transport.connect(
                e,
                server.address,
                server.port,
                attempts=DIAL_ATTEMPTS,
                delays=DIAL_DELAYS,
                local_addr=local,
                session=session,
            )
        )
        return end

    def chain(self, hop: Outbound, stats: Stats | None = None) -> bool:
        self.transport.via = hop
        self.transport.via_stats = stats
        return True

    def _pick_server(self) -> VMessServer:
        """The configured servers and the unexpired learned ones, in turn (V2Ray's
        round-robin server picker over its server list)."""
        if self.learned:
            now = time.monotonic()
            for key, (_, until) in list(self.learned.items()):
                if until <= now:
                    del self.learned[key]
        servers = self.servers
        if self.learned:
            servers = servers + [server for server, _ in self.learned.values()]
        server = servers[self._turn % len(servers)]
        self._turn = (self._turn + 1) % (len(servers) * 1024)
        return server

    def learn(self, origin: VMessServer, data: bytes) -> None:
        """Response command 1 from ``origin``: use that port and user as one more server
        for ``valid_minutes`` (``handleSwitchAccount`` in ``proxy/vmess/outbound``, whose
        account has security LEGACY). The same server told again only lives longer; at
        most :data:`LEARNED_LIMIT` are kept (V2Ray appends every one)."""
        command = decode_switch_account(data)
        if command is None:
            logger.debug("ignored a detour command that does not check out")
            return
        key = (command.host or origin.address, command.port, command.user_id)
        if key not in self.learned and len(self.learned) >= LEARNED_LIMIT:
            return
        user = User(
            id=uuid.UUID(bytes=command.user_id), alter_id=command.alter_ids, level=command.level
        )
        server = VMessServer(address=key[0], port=command.port, users=(ClientUser(user, "legacy"),))
        self.learned[key] = (server, time.monotonic() + command.valid_minutes * 60)


#: Servers a VMess outbound keeps from detour commands at once.
LEARNED_LIMIT = 16


# -- building from the config ---------------------------------------------------------------
def _user(config: VMessUserConfig) -> User:
    return User(id=config.id, alter_id=config.alter_id, level=config.level, email=config.email)


def build_inbound(ctx: InboundContext, settings: VMessInboundSettings) -> VMessInbound:
    return VMessInbound(
        ctx.common(),  # each user has its own level
        users=[_user(c) for c in settings.clients],
        disable_insecure_encryption=settings.disable_insecure_encryption,
        aead_only=settings.aead_forced,
        state_dir=ctx.options.state_dir,
    )


def build_outbound(config: OutboundConfig, settings: VMessOutboundSettings) -> Outbound:
    """A VMess outbound, riding Mux.Cool sessions when the config's ``mux`` says so."""
    servers = [
        VMessServer(
            address=server.address,
            port=server.port,
            users=tuple(ClientUser(_user(u), u.security, u.experiments) for u in server.users),
        )
        for server in settings.servers
    ]
    if not servers or not all(server.users for server in servers):
        raise config.error("a VMess outbound needs a server with at least one user")
    outbound: Outbound = VMessOutbound(
        config.tag,
        servers,
        send_through=config.send_through,
        packet_encoding=settings.packet_encoding,
        transport=ClientTransport(config.stream),
    )
    if config.mux.enabled and config.mux.concurrency > 0:
        outbound = MuxOutbound(outbound, config.mux.concurrency)
    return outbound
