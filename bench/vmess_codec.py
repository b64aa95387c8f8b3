"""Micro-benchmark of the VMess body codec (sans-IO, no sockets).

    python bench/vmess_codec.py [--seconds 0.5]

For AES-128-GCM and ChaCha20-Poly1305 with the options a V2Ray 4.34 client sends (S|M|P),
prints MB/s of ``ClientConnection.send`` and ``ServerConnection.receive_data`` for 16 KiB and
64 KiB inputs, with the default 16 KiB chunks and with maximal (64 KiB) chunks, plus the
receive rate for a V2Ray-sized chunk stream (1966-byte payloads) read in 64 KiB pieces
that cut across chunk boundaries, as a socket returns them.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from raybridge.address import tcp
from raybridge.protocols.vmess import (
    ClientConnection,
    Command,
    Option,
    RequestReceived,
    Security,
    ServerConnection,
    User,
    UserValidator,
)

USER = User(uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811"))
OPTIONS = Option.CHUNK_STREAM | Option.CHUNK_MASKING | Option.GLOBAL_PADDING


def _pair(security: Security, chunk_size: int) -> tuple[ClientConnection, ServerConnection]:
    now = time.time()
    validator = UserValidator([USER], clock=lambda: now)
    client = ClientConnection(
        USER,
        Command.TCP,
        tcp("example.com", 443),
        security,
        now=now,
        urandom=os.urandom,
        options=OPTIONS,
        chunk_size=chunk_size,
    )
    server = ServerConnection(validator, urandom=os.urandom, chunk_size=chunk_size)
    events = server.receive_data(client.header())
    assert isinstance(events[0], RequestReceived)
    return client, server


def _rate(total_bytes: int, seconds: float) -> float:
    return total_bytes / seconds / 1e6


def bench_send(security: Security, size: int, chunk_size: int, seconds: float) -> float:
    client, _ = _pair(security, chunk_size)
    data = os.urandom(size)
    send = client.send
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            send(data)
        n += 64
        now = time.perf_counter()
        if now >= deadline:
            return _rate(n * size, now - start)


def _wire(client: ClientConnection, data: bytes, count: int, read_size: int | None) -> list[bytes]:
    pieces = [client.send(data) for _ in range(count)]
    if read_size is None:  # each piece exactly what one send() produced (one transport write)
        return pieces
    wire = b"".join(pieces)  # as a socket would return it: fixed-size reads across chunks
    return [wire[i : i + read_size] for i in range(0, len(wire), read_size)]


def bench_receive(
    security: Security, size: int, chunk_size: int, seconds: float, read_size: int | None = None
) -> float:
    client, server = _pair(security, chunk_size)
    data = os.urandom(size)
    count = max(1, (32 << 20) // size)  # ~32 MiB of payload per pass
    pieces = _wire(client, data, count, read_size)
    receive = server.receive_data
    total = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for piece in pieces:
            receive(piece)
        total += count * size
        now = time.perf_counter()
        if now >= deadline:
            return _rate(total, now - start)
        # keep going with a fresh pair: the nonce/SHAKE state must match the sender's
        client, server = _pair(security, chunk_size)
        pieces = _wire(client, data, count, read_size)
        receive = server.receive_data
        start += time.perf_counter() - now  # do not count re-encoding time
        deadline = start + seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    print(f"{'security':<20}{'input':>8}{'chunks':>8}{'send MB/s':>12}{'recv MB/s':>12}")
    for security in (Security.AES_128_GCM, Security.CHACHA20_POLY1305):
        for size in (16384, 65536):
            for chunk_size, label in ((16384, "16K"), (65472, "64K")):
                sent = bench_send(security, size, chunk_size, args.seconds)
                received = bench_receive(security, size, chunk_size, args.seconds)
                print(
                    f"{security.name:<20}{size // 1024:>7}K{label:>8}{sent:>12.0f}{received:>12.0f}"
                )
        v2ray = bench_receive(security, 65536, 1966, args.seconds, read_size=65536)
        print(
            f"{security.name:<20}{'64':>7}K{'1966':>8}{'':>12}{v2ray:>12.0f}"
            "  (V2Ray-sized chunks, 64 KiB reads)"
        )


if __name__ == "__main__":
    main()
