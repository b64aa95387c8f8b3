"""The destination service for benchmarks, run as its own process.

One TCP port, a one-byte command, then:

* ``S`` + uint64 N: the server sends N bytes (download);
* ``R`` + uint64 N: the server reads N bytes, then answers one byte (upload);
* ``V`` + uint64 N: the same, but the bytes must be the pattern below from offset 0: the
  answer is ``k`` when they are, ``x`` when not (a verified upload, for the soak);
* ``E``: echo everything until EOF (latency, concurrency).

A second port (the optional second argument) speaks first: it sends one
byte ``G`` as soon as a connection is accepted, then echoes (SSH, SMTP and most databases
work like this; a proxy that waits for the client's first bytes before it connects shows
here).

Blocking sockets, one thread per connection: simple, and fast enough that the proxies are
what a benchmark measures. ``target.py --echo PORT`` instead serves only ``E`` on one
event loop (uvloop when installed), for the scale runs' thousands of idle connections.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import threading

# What ``S`` sends and ``V`` expects: byte i of a stream is PATTERN[i % PERIOD]. The period
# is a prime just under 1 MiB, so a lost, repeated or reordered piece of any size a relay
# uses (powers of two, 64 KiB chunks, mux frames) shows as a mismatch.
PERIOD = 1_048_573
PATTERN = random.Random(0x5EED).randbytes(PERIOD)
_TWICE = PATTERN + PATTERN
BLOCK = memoryview(PATTERN)


def expected(offset: int, n: int) -> bytes:
    """The pattern's ``n`` bytes (``n`` <= PERIOD) at stream offset ``offset``."""
    start = offset % PERIOD
    return _TWICE[start : start + n]


def recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = conn.recv(n - len(out))
        if not data:
            raise ConnectionError("closed")
        out += data
    return out


def serve(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cmd = recv_exact(conn, 1)
        if cmd == b"S":
            (n,) = struct.unpack("!Q", recv_exact(conn, 8))
            while n > 0:
                k = min(n, len(BLOCK))
                conn.sendall(BLOCK[:k])
                n -= k
            conn.recv(1)  # wait for the client to go away
        elif cmd == b"R":
            (n,) = struct.unpack("!Q", recv_exact(conn, 8))
            buf = bytearray(1 << 20)
            while n > 0:
                k = conn.recv_into(buf, min(n, len(buf)))
                if not k:
                    return
                n -= k
            conn.sendall(b"k")
            conn.recv(1)
        elif cmd == b"V":
            (n,) = struct.unpack("!Q", recv_exact(conn, 8))
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            offset, good = 0, True
            while offset < n:
                k = conn.recv_into(buf, min(n - offset, len(buf)))
                if not k:
                    return
                good = good and view[:k] == expected(offset, k)
                offset += k
            conn.sendall(b"k" if good else b"x")
            conn.recv(1)
        elif cmd == b"E":
            conn.sendall(b"E")
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def greet(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"G")
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def serve_greeter(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port), backlog=4096)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=greet, args=(conn,), daemon=True).start()


def serve_echo_async(port: int) -> None:
    """``E`` (then echo until EOF) on an event loop: 10,000 idle connections cost no threads."""
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.started = False

        def data_received(self, data: bytes) -> None:
            if not self.started:
                self.started = True
                if data[:1] != b"E":
                    self.transport.close()
                    return
                self.transport.write(b"E")
                data = data[1:]
            if data:
                self.transport.write(data)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def main() -> None:
    if sys.argv[1] == "--echo":
        serve_echo_async(int(sys.argv[2]))
        return
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        threading.Thread(target=serve_greeter, args=(int(sys.argv[2]),), daemon=True).start()
    server = socket.create_server(("127.0.0.1", port), backlog=4096)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))

    def udp_echo() -> None:
        while True:
            data, addr = udp.recvfrom(65535)
            udp.sendto(data, addr)

    threading.Thread(target=udp_echo, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
