#!/usr/bin/env python3
"""Fuzz the VMess client's response reader: response header (legacy, AEAD) and body.

A ``ClientConnection`` (user, header kind, security, options and command chosen by the
fuzzer; fixed time and randomness) sends its request header, then receives the payload cut
at fuzzer-chosen points, each piece as bytes, bytearray or memoryview. Half of the inputs
(``valid=1``) are preceded by the valid response header a server sends to that client, so
the response body reader is reached.

Allowed: VMessError. Anything else is a finding.

    python fuzz/fuzz_vmess_client_response.py [libFuzzer args]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from _harness import (
    Chooser,
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
    from _vmess import accepting_server, make_client, read_request_choices

    from raybridge.protocols.vmess import (
        Data,
        EndOfStream,
        ResponseReceived,
        VMessError,
    )

NAME = "vmess_client_response"


@dataclass
class Plan:
    request: dict[str, int]
    valid: bool
    eof: bool
    buffer: int
    cuts: list[int]
    payload: bytes


def parse(ch: Chooser) -> Plan:
    return Plan(
        request=read_request_choices(ch),
        valid=ch.flag("valid"),
        eof=ch.flag("eof"),
        buffer=read_buffer_kind(ch),
        cuts=read_cuts(ch),
        payload=ch.rest(),
    )


_RESPONSE_HEADERS: dict[bool, bytes] = {}


def response_header(request: dict[str, int]) -> bytes:
    """The response header a server sends the client of ``request``. It depends only on the
    header kind: body key, IV and response byte V come first from the fixed randomness."""
    aead = bool(request["aead"])
    header = _RESPONSE_HEADERS.get(aead)
    if header is None:
        header = bytes(accepting_server(make_client(request)).send(b""))
        _RESPONSE_HEADERS[aead] = header
    return header


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (event names, then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    client = make_client(plan.request)
    prefix = response_header(plan.request) if plan.valid else b""
    client.header()
    outcome: list[str] = []
    try:
        for piece in split(prefix + plan.payload, plan.cuts):
            for event in call_with(plan.buffer, piece, client.receive_data):
                if not isinstance(event, ResponseReceived | Data | EndOfStream):
                    raise TypeError(f"unexpected event {event!r}")
                outcome.append(type(event).__name__)
        if plan.eof:
            outcome += [type(event).__name__ for event in client.receive_eof()]
    except VMessError:
        outcome.append("error")
    return outcome


def TestOneInput(data: bytes) -> None:
    run(data)


def seeds() -> dict[str, bytes]:
    """Valid responses (header, body, end) for every security and both header kinds."""
    out: dict[str, bytes] = {}
    for security in range(4):
        for user, aead in ((0, 0), (1, 1)):
            request = {"user": user, "aead": aead, "security": security, "command": 1}
            request["options"] = 0x0D if security < 2 else 0x05
            server = accepting_server(make_client(request))
            wire = bytes(server.send(b"response body") + server.send(b"y" * 30))
            wire += server.send_eof()
            header = response_header(request)
            assert wire.startswith(header)
            values = {**request, "eof": 1, **cut_values(2, 25)}
            out[f"valid-s{security}-aead{aead}"] = seed_input(
                parse, {"valid": 1, **values}, wire[len(header) :]
            )
            if security == 0:
                out[f"raw-aead{aead}"] = seed_input(parse, values, wire)
    out["junk"] = seed_input(parse, cut_values(9), bytes(range(255, 191, -1)))
    return out


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
