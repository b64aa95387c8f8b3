"""VMess fixtures shared by the two VMess harnesses: users, a fixed clock, request choices.

Imported by the harnesses inside their ``instrumented(...)`` block, so the raybridge modules
it pulls in are instrumented when a harness runs under atheris.
"""

from __future__ import annotations

import uuid

from _harness import Chooser, DetRandom

from raybridge.address import Destination, tcp, udp
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Option,
    Security,
    ServerConnection,
    User,
    UserValidator,
)
from raybridge.protocols.vmess.validator import AEADMatch

NOW = 1_700_000_000
#: The server's clock: fixed, a quarter second after the client's ``now``.
SERVER_TIME = NOW + 0.25
LEGACY_USER = User(uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811"), alter_id=4, email="l@f")
AEAD_USER = User(uuid.UUID("27848739-7e62-4138-9fd3-098a63964b6b"), alter_id=0, email="a@f")
USERS = (LEGACY_USER, AEAD_USER)
SECURITIES = (Security.AES_128_GCM, Security.CHACHA20_POLY1305, Security.NONE, Security.LEGACY)
TARGETS: dict[Command, Destination | None] = {
    Command.TCP: tcp("example.com", 443),
    Command.UDP: udp("8.8.8.8", 53),
    Command.MUX: None,
}
_M = int(Option.CHUNK_MASKING)
_P = int(Option.GLOBAL_PADDING)


def fixed_clock() -> float:
    return SERVER_TIME


class TrackingValidator(UserValidator):
    """A :class:`UserValidator` that notes when a request authenticated.

    Only an authenticated request changes a validator's state (AuthID replay filter, session
    history, tainted legacy AUTHs; the clock is fixed, so nothing expires or refreshes), and
    building one costs ~1500 HMACs (the legacy table of a user with 4 alter IDs). So a
    harness shares one validator across inputs and replaces it after any input that
    authenticated: every input starts from the same state, whatever ran before it.
    """

    matched = False

    def match_aead(self, auth_id: bytes) -> AEADMatch:
        match = super().match_aead(auth_id)
        if match.user is not None or match.replay:
            self.matched = True
        return match

    def match_legacy(self, auth: bytes) -> tuple[User, int] | None:
        found = super().match_legacy(auth)
        if found is not None:
            self.matched = True
        return found


class ValidatorPool:
    """Hands out a validator in its initial state (see :class:`TrackingValidator`)."""

    def __init__(self) -> None:
        self._validator: TrackingValidator | None = None

    def get(self) -> TrackingValidator:
        if self._validator is None or self._validator.matched:
            self._validator = TrackingValidator(USERS, clock=fixed_clock)
        return self._validator


def read_request_choices(ch: Chooser) -> dict[str, int]:
    """What the client asks for: user, header kind, body security, options, command."""
    return {
        "user": ch.int("user", 0, len(USERS) - 1),
        "aead": ch.int("aead", 0, 1),
        "security": ch.int("security", 0, len(SECURITIES) - 1),
        "options": ch.int("options", 0, 0xFF),
        "command": ch.int("command", 1, 3),
    }


def make_client(choices: dict[str, int]) -> ClientConnection:
    """A client with fixed time and randomness: the same choices give the same bytes."""
    options = choices["options"]
    if options & _P and not options & _M:
        options |= _M  # GlobalPadding needs ChunkMasking; the client refuses it otherwise
    command = Command(choices["command"])
    return ClientConnection(
        USERS[choices["user"]],
        command,
        TARGETS[command],
        SECURITIES[choices["security"]],
        now=NOW,
        urandom=DetRandom(b"vmess-client"),
        aead=bool(choices["aead"]),
        options=Option(options),
    )


def accepting_server(client: ClientConnection) -> ServerConnection:
    """A server (with a validator of its own) that has accepted ``client``'s request."""
    validator = UserValidator(USERS, clock=fixed_clock)
    server = ServerConnection(validator, urandom=DetRandom(b"vmess-server"))
    events = server.receive_data(client.header())
    if not events or server.request is None:
        raise AssertionError("the fixture request was not accepted")
    return server
