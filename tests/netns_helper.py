"""Run inside a network namespace by tests/test_transparent.py (``ip netns exec NS python
tests/netns_helper.py MODE ...``); stdlib only, one job per process.

    echo HOST PORT                  echo TCP until killed; print "ready", then each
                                    client's "host port" on its own line
    wait HOST PORT                  exit 0 once something listens on TCP PORT in this
                                    namespace (read from /proc/net/tcp*, no connection
                                    made: a node would take it for a client), 10 s
    client HOST PORT SIZE           connect, send SIZE random bytes while reading the
                                    echo; print {"ok": ..., "local": [host, port]}
    uecho HOST PORT                 echo UDP until killed; print "ready"
    uclient HOST PORT               send datagrams of several sizes to HOST:PORT, each
                                    answered in turn; print {"ok": ..., "sources": [...]}
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time


def echo(host: str, port: int) -> None:
    server = socket.create_server((host, port), reuse_port=False)
    print("ready", flush=True)
    while True:
        conn, peer = server.accept()
        print(f"{peer[0]} {peer[1]}", flush=True)
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


def _serve(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _listening(port: int) -> bool:
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as table:
                rows = table.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                return True
    return False


def wait(host: str, port: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _listening(port):
            return 0
        time.sleep(0.02)
    return 1


def client(host: str, port: int, size: int) -> None:
    payload = os.urandom(size)
    got = bytearray()
    with socket.create_connection((host, port), timeout=20) as conn:
        local = conn.getsockname()[:2]
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        while len(got) < size:
            data = conn.recv(65536)
            if not data:
                break
            got += data
        sender.join()
    same = hashlib.sha256(payload).digest() == hashlib.sha256(got).digest()
    print(json.dumps({"ok": same, "received": len(got), "local": list(local)}), flush=True)


def uecho(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        print("ready", flush=True)
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)


def uclient(host: str, port: int) -> None:
    ok, sources = True, []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for size in (1, 700, 1400, 1900):
            payload = os.urandom(size)
            sock.sendto(payload, (host, port))
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                ok = False
                break
            ok = ok and data == payload
            sources.append(list(source[:2]))
    print(json.dumps({"ok": ok, "sources": sources}), flush=True)


def main(argv: list[str]) -> int:
    mode, host, port = argv[0], argv[1], int(argv[2])
    if mode == "uecho":
        uecho(host, port)
    elif mode == "uclient":
        uclient(host, port)
    elif mode == "echo":
        echo(host, port)
    elif mode == "wait":
        return wait(host, port)
    elif mode == "client":
        client(host, port, int(argv[3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
