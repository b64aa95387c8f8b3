"""The benchmark target's known pattern: the soak's verified downloads and uploads rely on it
telling intact bytes from lost, repeated or altered ones."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from target import PERIOD, expected  # noqa: E402


@pytest.fixture
def target() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "target.py"), str(port)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # printed once it listens
        yield port
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def recv_all(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def test_expected_wraps_around_the_period() -> None:
    assert expected(PERIOD - 3, 6) == expected(PERIOD - 3, 3) + expected(0, 3)
    assert expected(5 * PERIOD + 7, 100) == expected(7, 100)
    # A piece lost or repeated at any power-of-two size breaks the match.
    for size in (1, 256, 4096, 65536, 65448, 1 << 20):
        assert expected(size, 64) != expected(0, 64)


def test_download_is_the_pattern(target: int) -> None:
    size = 3 * PERIOD + 12345
    with socket.create_connection(("127.0.0.1", target)) as sock:
        sock.sendall(b"S" + struct.pack("!Q", size))
        got = recv_all(sock, size)
    assert len(got) == size
    for offset in range(0, size, PERIOD):
        n = min(PERIOD, size - offset)
        assert got[offset : offset + n] == expected(offset, n)


def upload(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"V" + struct.pack("!Q", len(data)) + data)
        return recv_all(sock, 1)


@pytest.mark.parametrize("fault", ["none", "flip", "drop", "repeat"])
def test_verified_upload_tells_intact_from_damaged(target: int, fault: str) -> None:
    size = 2 * PERIOD + 999
    data = b"".join(expected(o, min(PERIOD, size - o)) for o in range(0, size, PERIOD))
    if fault == "flip":
        data = data[:PERIOD] + bytes([data[PERIOD] ^ 1]) + data[PERIOD + 1 :]
    elif fault == "drop":  # a 64 KiB piece lost, the length made up at the end
        data = data[:65536] + data[2 * 65536 :] + data[:65536]
    elif fault == "repeat":  # a piece delivered twice, the end cut to keep the length
        data = (data[:65536] + data[:])[:size]
    assert upload(target, data) == (b"k" if fault == "none" else b"x")
