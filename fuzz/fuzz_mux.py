#!/usr/bin/env python3
"""Fuzz Mux.Cool: ``FrameDecoder`` and ``MuxConnection`` in both roles.

The fuzzer picks the decoder (FrameDecoder, client role, server role), a session cap, how
many sessions the client role has opened (alternately TCP and UDP) and, between received
pieces, a local action on a session (half-close, end, end with error, keepalive), so that
incoming frames meet sessions in every state. The stream is cut at fuzzer-chosen points,
each piece passed as bytes, bytearray or memoryview.

Allowed: MuxError. Anything else is a finding.

    python fuzz/fuzz_mux.py [libFuzzer args]
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
    from raybridge.address import tcp, udp
    from raybridge.protocols.mux import (
        Frame,
        FrameDecoder,
        KeepAliveReceived,
        MuxConnection,
        MuxError,
        Role,
        SessionData,
        SessionEnded,
        SessionOpened,
        Status,
        encode_frame,
    )

NAME = "mux"
TARGETS = (tcp("example.com", 80), udp("8.8.8.8", 53))
_MAX_PIECES = 9  # read_cuts gives at most 8 cuts


@dataclass
class Plan:
    decoder: int  # 0 FrameDecoder, 1 client role, 2 server role
    max_sessions: int
    opened: int
    actions: list[tuple[int, int]]  # (action, session ID) after each piece
    buffer: int
    cuts: list[int]
    payload: bytes


def parse(ch: Chooser) -> Plan:
    decoder = ch.int("decoder", 0, 2)
    max_sessions = ch.int("max_sessions", 0, 3)
    opened = ch.int("opened", 0, 3)
    actions = [(ch.int(f"act{i}", 0, 4), ch.int(f"sid{i}", 0, 4)) for i in range(_MAX_PIECES)]
    buffer = read_buffer_kind(ch)
    return Plan(decoder, max_sessions, opened, actions, buffer, read_cuts(ch), ch.rest())


def _frame_decoder(plan: Plan, pieces: list[bytes]) -> list[str]:
    decoder = FrameDecoder()
    outcome: list[str] = []
    for piece in pieces:
        for frame in call_with(plan.buffer, piece, decoder.feed):
            if not isinstance(frame, Frame):
                raise TypeError(f"unexpected frame {frame!r}")
            outcome.append(f"Frame:{frame.status.name}")
    return outcome


def _connection(plan: Plan, pieces: list[bytes]) -> list[str]:
    role = Role.CLIENT if plan.decoder == 1 else Role.SERVER
    conn = MuxConnection(role, max_sessions=plan.max_sessions)
    if role is Role.CLIENT:
        for i in range(plan.opened):
            if plan.max_sessions and conn.session_count >= plan.max_sessions:
                break
            conn.open_session(TARGETS[i % 2])
    conn.data_to_send()
    outcome: list[str] = []
    try:
        for piece, (action, session_id) in zip(pieces, plan.actions, strict=False):
            for event in call_with(plan.buffer, piece, conn.receive_data):
                if not isinstance(
                    event, SessionOpened | SessionData | SessionEnded | KeepAliveReceived
                ):
                    raise TypeError(f"unexpected event {event!r}")
                if isinstance(event, SessionData) and plan.buffer and type(event.data) is not bytes:
                    # Only a piece fed as bytes may be returned as a view of it (SessionData).
                    raise TypeError(
                        f"SessionData is {type(event.data).__name__} for {plan.buffer=}"
                    )
                outcome.append(type(event).__name__)
            if action == 1:
                conn.half_close(session_id)
            elif action == 2:
                conn.end_session(session_id)
            elif action == 3:
                conn.end_session(session_id, error=True)
            elif action == 4:
                conn.send_keepalive()
            conn.data_to_send()
    finally:
        conn.connection_lost()
    return outcome


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (event names, then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    pieces = split(plan.payload, plan.cuts)
    try:
        return _frame_decoder(plan, pieces) if plan.decoder == 0 else _connection(plan, pieces)
    except MuxError:
        return ["error"]


def TestOneInput(data: bytes) -> None:
    run(data)


def seeds() -> dict[str, bytes]:
    """Frame sequences a real peer sends, for each decoder."""
    tcp_target, udp_target = TARGETS
    server_bound = b"".join(
        (
            encode_frame(1, Status.NEW, target=tcp_target, data=b"GET / HTTP/1.1\r\n\r\n"),
            encode_frame(2, Status.NEW, target=udp_target, data=b"\x12\x34dns"),
            encode_frame(1, Status.KEEP, data=b"more"),
            encode_frame(2, Status.KEEP, data=b"datagram"),
            encode_frame(0, Status.KEEPALIVE),
            encode_frame(1, Status.END),
            encode_frame(2, Status.END, error=True),
        )
    )
    client_bound = b"".join(
        (
            encode_frame(1, Status.KEEP, data=b"HTTP/1.1 200 OK\r\n\r\n"),
            encode_frame(2, Status.KEEP, data=b"answer"),
            encode_frame(3, Status.KEEP, data=b"unknown session"),
            encode_frame(1, Status.END),
            encode_frame(2, Status.END, error=True),
        )
    )
    return {
        "decoder": seed_input(parse, {"decoder": 0, **cut_values(5, 40)}, server_bound),
        "server": seed_input(
            parse, {"decoder": 2, "max_sessions": 3, **cut_values(9, 33, 70)}, server_bound
        ),
        "server-capped": seed_input(
            parse, {"decoder": 2, "max_sessions": 1, "act0": 1, "sid0": 1}, server_bound
        ),
        "client": seed_input(
            parse, {"decoder": 1, "opened": 2, "act0": 1, "sid0": 1, **cut_values(30)}, client_bound
        ),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
