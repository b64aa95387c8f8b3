#!/usr/bin/env python3
"""Fuzz the VMess server: handshake (legacy and AEAD) and request body reader.

Input: choices (see ``_harness``), then the payload. Half of the inputs (``valid=1``) first
feed a valid request header made by ``ClientConnection`` (fixed time and randomness; the
fuzzer picks user, header kind, security, options and command), so the body reader for
that security is reached; the payload follows. The stream is cut at fuzzer-chosen points
and each piece passed as bytes, bytearray or memoryview (``_harness.call_with``).
The validator holds a legacy (alterId 4) and an AEAD (alterId 0) user and a fixed clock.

Allowed: VMessError (VMessAuthError included). Anything else is a finding.

    python fuzz/fuzz_vmess_server.py [libFuzzer args]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from _harness import (
    Chooser,
    DetRandom,
    FuzzedDataProvider,
    call_with,
    cut_values,
    instrumented,
    read_buffer_kind,
    read_cuts,
    seed_input,
    split,
)

with instrumented(__name__):
    from _vmess import ValidatorPool, make_client, read_request_choices

    from raybridge.protocols.vmess import (
        Data,
        EndOfStream,
        RequestReceived,
        ServerConnection,
        VMessError,
    )

NAME = "vmess_server"
_POOL = ValidatorPool()


@dataclass
class Plan:
    request: dict[str, int] | None  # None: the payload is the whole stream
    secure_only: bool
    eof: bool
    buffer: int
    cuts: list[int]
    payload: bytes


def parse(ch: Chooser) -> Plan:
    request = read_request_choices(ch) if ch.flag("valid") else None
    return Plan(
        request=request,
        secure_only=ch.flag("secure_only"),
        eof=ch.flag("eof"),
        buffer=read_buffer_kind(ch),
        cuts=read_cuts(ch),
        payload=ch.rest(),
    )


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (event names, then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    prefix = b"" if plan.request is None else make_client(plan.request).header()
    server = ServerConnection(
        _POOL.get(),
        urandom=DetRandom(b"vmess-server"),
        disable_insecure_encryption=plan.secure_only,
    )
    outcome: list[str] = []
    try:
        for piece in split(prefix + plan.payload, plan.cuts):
            for event in call_with(plan.buffer, piece, server.receive_data):
                if not isinstance(event, RequestReceived | Data | EndOfStream):
                    raise TypeError(f"unexpected event {event!r}")
                outcome.append(type(event).__name__)
        if plan.eof:
            outcome += [type(event).__name__ for event in server.receive_eof()]
    except VMessError:
        outcome.append("error")
    if server.request is not None:
        # An accepted request must be answerable, whatever its options.
        server.send(b"pong")
        server.send_eof()
    return outcome


def TestOneInput(data: bytes) -> None:
    run(data)


def seeds() -> dict[str, bytes]:
    """Valid requests (header, body, end) for every security and both header kinds, fed as
    ``valid=1`` (the harness makes the header) and as a raw payload."""
    out: dict[str, bytes] = {}
    for security in range(4):
        for user, aead in ((0, 0), (1, 1)):
            request = {"user": user, "aead": aead, "security": security, "command": 1}
            request["options"] = 0x0D if security < 2 else 0x05
            client = make_client(request)
            header = client.header()
            body = bytes(client.send(b"hello, fuzzer") + client.send(b"x" * 40))
            body += client.send_eof()
            values = {"valid": 1, **request, "eof": 1, **cut_values(3, 20)}
            out[f"valid-s{security}-aead{aead}"] = seed_input(parse, values, body)
            if security == 0:
                raw = {"eof": 1, **cut_values(17, 60)}
                out[f"raw-aead{aead}"] = seed_input(parse, raw, header + body)
    for label, request, message in (
        ("udp-none", {"user": 1, "aead": 1, "security": 2, "options": 0x05, "command": 2}, b"?"),
        ("mux-legacy", {"user": 0, "aead": 0, "security": 3, "options": 0x01, "command": 3}, b"m"),
    ):
        client = make_client(request)
        client.header()
        body = bytes(client.send(message))
        out[f"valid-{label}"] = seed_input(parse, {"valid": 1, **request}, body)
    out["junk"] = seed_input(parse, cut_values(5), bytes(range(64)))
    return out


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
