"""``raybridge demo``: the whole reverse chain on loopback, in one command.

It starts a small web page "inside" A's network (127.0.0.1, reachable only through A), then
the three nodes with fresh UUIDs on free ports: A (the bridge), B (the portal), C (the
client, SOCKS5 and HTTP proxy). It fetches the page through C's SOCKS port, prints what it
did and how to try it by hand, and runs until Ctrl-C. ``--check`` fetches once and exits
0 (the page came back through the chain) or 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from raybridge.address import Destination, Network, parse_host
from raybridge.init import write_private
from raybridge.protocols.socks import SocksClient
from raybridge.templates import (
    DOMAIN,
    LOCAL,
    Setup,
    safe_bridge_config,
    safe_client_config,
    safe_portal_config,
)


def free_port() -> int:
    """A port that is free for TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as s:
            s.bind((LOCAL, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((LOCAL, port))
        except OSError:
            continue
        return port


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>raybridge demo</title></head>
<body><h1>Hello from inside A's network</h1>
<p>This page is served on {address}, which only node A (the bridge) can reach.
You fetched it through C (SOCKS/HTTP proxy) &rarr; B (portal) &rarr; A (bridge).</p>
</body></html>
"""


class _Page(asyncio.Protocol):
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer or len(self.buffer) > 65536:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                + f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )
            self.transport.close()


async def fetch_via_socks(socks_port: int, host: str, port: int, path: str = "/") -> bytes:
    """GET ``http://host:port/path`` through a SOCKS5 proxy; returns the response body."""
    reader, writer = await asyncio.open_connection(LOCAL, socks_port)
    try:
        client = SocksClient(Destination(Network.TCP, parse_host(host), port))
        writer.write(client.initial_bytes())
        while not client.done:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("the SOCKS proxy closed the connection")
            out = client.receive_data(data)
            if out:
                writer.write(out)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        response = client.trailing + await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected response: {response[:80]!r}")
    return body


def demo_configs(
    tunnel_port: int,
    client_port: int,
    socks_port: int,
    http_port: int,
    *,
    bridge_id: str,
    client_id: str,
) -> dict[str, dict[str, Any]]:
    """a.json, b.json and c.json: raybridge init's configs on loopback. The portal gives the
    bridge an inbound and a user of its own and refuses the tunnel domain to clients, so a
    client cannot register as a bridge (docs/RELIABILITY.md, "Who may be a bridge")."""
    setup = Setup(
        portal_address=LOCAL,
        portal_port=tunnel_port,
        client_port=client_port,
        bridge_id=bridge_id,
        client_id=client_id,
        domain=DOMAIN,
        socks_port=socks_port,
        http_port=http_port,
        listen=LOCAL,
    )
    configs = {
        "a.json": safe_bridge_config(setup).config,
        "b.json": safe_portal_config(setup).config,
        "c.json": safe_client_config(setup).config,
    }
    for config in configs.values():
        config["log"] = {"loglevel": "warning"}
    return configs


#: The demo's ports on 127.0.0.1 besides the page's: B's for bridges and for clients, C's
#: SOCKS5 and HTTP proxies.
_Ports = tuple[int, int, int, int]


async def demo(*, check: bool = False, directory: str | None = None, timeout: float = 15.0) -> int:
    from raybridge.config.loader import load_config
    from raybridge.node import Node

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    web_port = free_port()
    body = PAGE.format(address=f"http://{LOCAL}:{web_port}/").encode()
    web = await loop.create_server(lambda: _Page(body), LOCAL, web_port)

    ports: _Ports = (free_port(), free_port(), free_port(), free_port())
    configs = demo_configs(*ports, bridge_id=str(uuid.uuid4()), client_id=str(uuid.uuid4()))
    folder = _write_configs(configs, directory)
    nodes: list[Node] = []
    try:
        for name in ("b.json", "a.json", "c.json"):  # portal, bridge, client
            node = Node(load_config([str(folder / name)]))
            await node.start()
            nodes.append(node)
        ok = await _fetch_page(ports[2], web_port, timeout) == body
        elapsed = time.perf_counter() - started
        _report(sys.stdout, folder, configs, web_port, ports, ok, elapsed)
        if check or not ok:
            return 0 if ok else 1
        _print_hints(sys.stdout, web_port, ports)
        await _until_stopped(loop)
        return 0
    finally:
        for node in reversed(nodes):
            await node.close()
        web.close()


def _write_configs(configs: dict[str, dict[str, Any]], directory: str | None) -> Path:
    """The configs as files in ``directory`` (default: a new temporary folder)."""
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="raybridge-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        # 0600, never through a symlink: the configs hold the users' UUIDs.
        write_private(folder / name, json.dumps(config, indent=2) + "\n", replace=True)
    return folder


async def _fetch_page(socks_port: int, web_port: int, timeout: float) -> bytes:
    """The page through C's SOCKS port, tried again until ``timeout`` passes (the bridge
    may not have its tunnel yet); ``b""`` if it never came."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(fetch_via_socks(socks_port, LOCAL, web_port), 5)
        except (TimeoutError, OSError):
            if time.monotonic() > deadline:
                return b""
            await asyncio.sleep(0.02)


def _report(
    out: TextIO,
    folder: Path,
    configs: dict[str, dict[str, Any]],
    web_port: int,
    ports: _Ports,
    ok: bool,
    elapsed: float,
) -> None:
    tunnel_port, client_port, socks_port, http_port = ports
    domain = configs["a.json"]["reverse"]["bridges"][0]["domain"]
    print(f"raybridge demo: the reverse chain on loopback, configs in {folder}/", file=out)
    print(f"  web page inside A's network  http://{LOCAL}:{web_port}/", file=out)
    print(f"  A (bridge)   a.json: dials B at {LOCAL}:{tunnel_port}, domain {domain}", file=out)
    print(
        f"  B (portal)   b.json: tunnels on {LOCAL}:{tunnel_port}, clients on "
        f"{LOCAL}:{client_port} (VMess)",
        file=out,
    )
    print(
        f"  C (client)   c.json: SOCKS5 {LOCAL}:{socks_port}, HTTP proxy {LOCAL}:{http_port}",
        file=out,
    )
    if ok:
        print(f"fetched the page through C -> B -> A in {elapsed:.2f} s after start: OK", file=out)
    else:
        print("could not fetch the page through the chain: FAILED", file=out)


def _print_hints(out: TextIO, web_port: int, ports: _Ports) -> None:
    _, _, socks_port, http_port = ports
    page = f"http://{LOCAL}:{web_port}/"
    print("\nTry it by hand:", file=out)
    print(f"  curl --socks5-hostname {LOCAL}:{socks_port} {page}", file=out)
    print(f"  curl -x http://{LOCAL}:{http_port} {page}", file=out)
    print(
        "Anything A can reach is reachable this way (TCP and UDP). The configs also run "
        "on V2Ray 4.34: v2ray -config a.json ...",
        file=out,
    )
    print("Ctrl-C stops.", file=out, flush=True)


async def _until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Wait for SIGINT or SIGTERM."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
