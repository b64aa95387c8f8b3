#!/usr/bin/env python3
"""Fuzz the reverse proxy's Control message decoder (``decode_control``, protobuf).

The payload is one message, passed as bytes, bytearray or memoryview (fuzzer's choice).

Allowed: ControlError. Anything else is a finding.

    python fuzz/fuzz_control.py [libFuzzer args]
"""

from __future__ import annotations

import sys

from _harness import (
    Chooser,
    FuzzedDataProvider,
    call_with,
    instrumented,
    read_buffer_kind,
    seed_input,
)

with instrumented(__name__):
    from raybridge.protocols.reverse import (
        ControlError,
        ControlState,
        decode_control,
        encode_control,
        heartbeat,
    )

NAME = "control"


def parse(ch: Chooser) -> tuple[int, bytes]:
    return read_buffer_kind(ch), ch.rest()


def run(data: bytes) -> list[str]:
    """Decode one message; return ``[state name]`` or ``["error"]``."""
    kind, payload = parse(Chooser(FuzzedDataProvider(data)))
    try:
        state = call_with(kind, payload, decode_control)
    except ControlError:
        return ["error"]
    if not isinstance(state, ControlState):
        raise TypeError(f"unexpected state {state!r}")
    return [state.name]


def TestOneInput(data: bytes) -> None:
    run(data)


def seeds() -> dict[str, bytes]:
    group = b"\x0b\x08\x01\x12\x02hi\x0c"  # field 1 group holding a varint and bytes, ended
    return {
        "active": seed_input(parse, {}, encode_control(ControlState.ACTIVE, b"\x01\x02\x03")),
        "drain": seed_input(parse, {"buffer": 1}, encode_control(ControlState.DRAIN, b"pad")),
        "heartbeat": seed_input(
            parse, {"buffer": 2}, heartbeat(lambda n: bytes(range(7, 7 + n)), drain=True)
        ),
        "unknown-fields": seed_input(
            parse, {}, group + b"\x11" + bytes(8) + b"\x1d" + bytes(4) + b"\x08\xff\x01"
        ),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
