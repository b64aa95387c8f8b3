#!/usr/bin/env python3
"""Fuzz SOCKS: ``SocksServer`` (SOCKS4/4a/5; no-auth or password; UDP on or off),
``decode_udp_datagram`` and ``SocksClient.receive_data``.

The fuzzer picks the decoder and its settings; handshake bytes are cut at fuzzer-chosen
points, each piece passed as bytes, bytearray or memoryview. A server that returns a request
is then answered (accept or a reject code).

Allowed: SocksError. Anything else is a finding.

    python fuzz/fuzz_socks.py [libFuzzer args]
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
    from raybridge.address import Destination, tcp, udp
    from raybridge.protocols.socks import (
        SocksClient,
        SocksCommand,
        SocksError,
        SocksRequest,
        SocksServer,
        decode_udp_datagram,
        encode_udp_datagram,
    )

NAME = "socks"
ACCOUNTS = {"user": "pass", "ünï": "cödé"}
BIND = tcp("127.0.0.1", 1080)
CLIENT_TARGETS = (tcp("93.184.216.34", 80), tcp("example.com", 443), tcp("2001:db8::1", 8080))


@dataclass
class Plan:
    kind: int  # 0 server, 1 UDP datagram, 2 client
    password: bool
    udp: bool
    socks4: bool
    answer: int  # server: 0 nothing, 1 accept, 2 reject with `code`
    code: int
    command: int  # client
    target: int  # client
    buffer: int
    cuts: list[int]
    payload: bytes


def parse(ch: Chooser) -> Plan:
    return Plan(
        kind=ch.int("kind", 0, 2),
        password=ch.flag("password"),
        udp=ch.flag("udp"),
        socks4=ch.flag("socks4"),
        answer=ch.int("answer", 0, 2),
        code=ch.int("code", 1, 255),
        command=ch.int("command", 1, 3),
        target=ch.int("target", 0, len(CLIENT_TARGETS) - 1),
        buffer=read_buffer_kind(ch),
        cuts=read_cuts(ch),
        payload=ch.rest(),
    )


def _server(plan: Plan) -> list[str]:
    accounts = ACCOUNTS if plan.password else None
    server = SocksServer(accounts=accounts, udp=plan.udp, socks4=plan.socks4)
    outcome: list[str] = []
    request = None
    try:
        for piece in split(plan.payload, plan.cuts):
            request = call_with(plan.buffer, piece, server.receive_data)
            server.data_to_send()
            if request is not None:
                break
    finally:
        server.data_to_send()
    if request is None:
        return outcome
    if not isinstance(request, SocksRequest) or not isinstance(server.trailing, bytes):
        raise TypeError(f"unexpected request {request!r}")
    outcome.append(f"request:v{request.version}:{request.command.name}")
    if plan.answer == 1:
        server.accept(BIND)
    elif plan.answer == 2:
        server.reject(plan.code)
    return outcome


def _client(plan: Plan) -> list[str]:
    credentials = {"username": "user", "password": "pass"} if plan.password else {}
    target = CLIENT_TARGETS[plan.target]
    client = SocksClient(target, command=SocksCommand(plan.command), **credentials)
    client.initial_bytes()
    for piece in split(plan.payload, plan.cuts):
        reply = call_with(plan.buffer, piece, client.receive_data)
        if reply is not None and not isinstance(reply, bytes):
            raise TypeError(f"unexpected client output {reply!r}")
        if client.done:
            if not isinstance(client.bound, Destination):
                raise TypeError(f"unexpected bound address {client.bound!r}")
            return ["done"]
    return []


def _datagram(datagram: bytes | bytearray | memoryview) -> tuple[Destination, bytes]:
    # The payload is a view of the datagram (documented): copy it and let the view go.
    destination, view = decode_udp_datagram(datagram)
    with view:
        return destination, bytes(view)


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    try:
        if plan.kind == 0:
            return _server(plan)
        if plan.kind == 1:
            destination, payload = call_with(plan.buffer, plan.payload, _datagram)
            if not isinstance(destination, Destination) or not payload:
                raise TypeError("decode_udp_datagram returned nonsense")
            return ["datagram"]
        return _client(plan)
    except SocksError:
        return ["error"]


def TestOneInput(data: bytes) -> None:
    run(data)


def _client_bytes(target: Destination, command: SocksCommand, **credentials: str) -> bytes:
    """What a SocksClient sends to a server that agrees to everything."""
    client = SocksClient(target, command=command, **credentials)
    server = SocksServer(accounts=ACCOUNTS if credentials else None, udp=True)
    wire = client.initial_bytes()
    sent = wire
    while not client.done:
        request = server.receive_data(sent)
        reply = server.data_to_send()
        if request is not None:
            reply += server.accept(BIND)
        sent = client.receive_data(reply) or b""
        wire += sent
    return wire


def _server_replies(command: SocksCommand, **credentials: str) -> bytes:
    """What a server sends to a client that asks for ``command``."""
    server = SocksServer(accounts=ACCOUNTS if credentials else None, udp=True)
    client = SocksClient(tcp("example.com", 443), command=command, **credentials)
    wire = b""
    sent = client.initial_bytes()
    while True:
        request = server.receive_data(sent)
        reply = server.data_to_send()
        if request is not None:
            reply += server.accept(BIND)
        wire += reply
        sent = client.receive_data(reply) or b""
        if client.done:
            return wire


def seeds() -> dict[str, bytes]:
    connect = SocksCommand.CONNECT
    assoc = SocksCommand.UDP_ASSOCIATE
    return {
        "server-v5": seed_input(
            parse,
            {"answer": 1, **cut_values(3, 5)},
            _client_bytes(tcp("example.com", 443), connect),
        ),
        "server-v5-password-udp": seed_input(
            parse,
            {"password": 1, "udp": 1, "answer": 1, **cut_values(2)},
            _client_bytes(udp("0.0.0.0", 0), assoc, username="user", password="pass"),
        ),
        "server-v5-ipv6": seed_input(
            parse, {"answer": 2, "code": 5}, _client_bytes(tcp("2001:db8::2", 22), connect)
        ),
        "server-v4": seed_input(
            parse, {"socks4": 1, "answer": 1}, bytes.fromhex("040100500a000001") + b"me\x00"
        ),
        "server-v4a": seed_input(
            parse,
            {"socks4": 1, **cut_values(9)},
            bytes.fromhex("0401005000000001") + b"\x00a.io\x00",
        ),
        "udp-domain": seed_input(
            parse, {"kind": 1}, encode_udp_datagram(udp("example.com", 53), b"query")
        ),
        "udp-ipv4": seed_input(parse, {"kind": 1}, encode_udp_datagram(udp("1.2.3.4", 9), b"x")),
        "client": seed_input(
            parse, {"kind": 2, "command": 1, **cut_values(1)}, _server_replies(connect)
        ),
        "client-password-udp": seed_input(
            parse,
            {"kind": 2, "password": 1, "command": 3},
            _server_replies(assoc, username="user", password="pass"),
        ),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
