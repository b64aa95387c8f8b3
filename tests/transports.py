"""Transports for the interop tests (issue 13): certificates, V2Ray 4.34 ``streamSettings``
and their sing-box 1.14 equivalents, nodes of any kind with them, nginx in front, and probes
for the security cases.

The transports, by the name the tests use (``docs/transports.md``):

========== ===========================================================================
tcp        bare TCP (no ``streamSettings`` at all)
tls        TCP + TLS (``security: "tls"``)
ws         WebSocket, path ``/ray``, client Host header ``example.test``
ws+tls     the same over TLS
h2         ``network: "http"`` over TLS (a 4.34 h2 client needs TLS): host
           ``example.test``, path ``/h2``
tcp+http   ``tcpSettings.header.type: "http"`` (V2Ray's HTTP camouflage), no TLS
========== ===========================================================================

Certificates: a private CA and a leaf for ``example.test`` and ``127.0.0.1`` made with
``raybridge.certs``, written (0600) to a temporary directory. Servers serve the leaf
(``usage: "encipherment"``); clients dial 127.0.0.1 with ``serverName: "example.test"`` and
trust only the CA (``usage: "verify"``, ``disableSystemRoot: true``), so nothing passes on
the machine's roots. sing-box's client ``certificate_path`` *replaces* the root pool
(docs/transports.md 7), which is the same thing here.

Everything binds 127.0.0.1, and every server or process a helper starts is stopped by the
helper's context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from raybridge.certs import Pem, make_ca, make_leaf
from tests import singbox
from tests.support import (  # noqa: F401 - RB and V2 re-exported, next to SB
    LOCAL,
    RB,
    V2,
    EchoServer,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    portal_config,
    run,
    server_config,
    socks_echo,
    socks_udp_echo,
    stop_process,
    wait_chain,
    wait_port,
)

#: The third kind of node, next to ``support.RB`` and ``support.V2``.
SB = "sing-box"

SERVER_NAME = "example.test"
WS_PATH = "/ray"
H2_PATH = "/h2"

KINDS = ("tcp", "tls", "ws", "ws+tls", "h2", "tcp+http")
TLS_KINDS = ("tls", "ws+tls", "h2")
#: What sing-box can do against a 4.34 peer (docs/transports.md 7: its "plain HTTP" is not
#: V2Ray's TCP header).
SING_BOX_KINDS = ("tls", "ws", "ws+tls", "h2")

SIZE = 10_000_000
DATAGRAM_SIZES = (1, 100, 1400, 1900)


# -- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certs:
    """The CA, the leaf it signed for ``example.test`` and ``127.0.0.1``, and their files."""

    directory: str
    ca: Pem
    leaf: Pem
    ca_file: str
    cert_file: str
    key_file: str


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_certs(directory: str, names: tuple[str, ...] = (SERVER_NAME, LOCAL)) -> Certs:
    """A fresh CA and leaf, written to ``directory`` as ca.pem, cert.pem, key.pem (0600)."""
    ca = make_ca("raybridge test CA")
    leaf = make_leaf(ca, list(names))
    files = {}
    for name, data in (("ca.pem", ca.cert), ("cert.pem", leaf.cert), ("key.pem", leaf.key)):
        files[name] = os.path.join(directory, name)
        _write_private(files[name], data)
    return Certs(directory, ca, leaf, files["ca.pem"], files["cert.pem"], files["key.pem"])


@contextlib.contextmanager
def certificates() -> Iterator[Certs]:
    """:func:`write_certs` in a temporary directory, removed when the block ends."""
    directory = tempfile.mkdtemp(prefix="raybridge-certs-")
    try:
        yield write_certs(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def client_ssl_context(certs: Certs, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A Python client context that trusts only the test CA (for the probes)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=certs.ca.cert.decode())
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# -- V2Ray 4.34 streamSettings -------------------------------------------------------------------

#: The TCP header camouflage of the tcp+http cases, the same on both sides (the server checks
#: only the path, docs/transports.md 5). Two paths, so each connection picks one; ``Pragma`` as a
#: plain string (a StringList takes either form).
HTTP_HEADER: dict[str, Any] = {
    "type": "http",
    "request": {
        "version": "1.1",
        "method": "GET",
        "path": ["/", "/index.html"],
        "headers": {
            "Host": [SERVER_NAME],
            "User-Agent": [
                "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/53.0.2785.143 Safari/537.36"
            ],
            "Accept-Encoding": ["gzip, deflate"],
            "Connection": ["keep-alive"],
            "Pragma": "no-cache",
        },
    },
    "response": {
        "version": "1.1",
        "status": "200",
        "reason": "OK",
        "headers": {
            "Content-Type": ["application/octet-stream", "video/mpeg"],
            "Transfer-Encoding": ["chunked"],
            "Connection": ["keep-alive"],
            "Pragma": "no-cache",
        },
    },
}


def tls_settings(side: str, certs: Certs, *, trust: bool = True) -> dict[str, Any]:
    """``tlsSettings``: the leaf to serve (server), or the CA to trust (client). With
    ``trust=False`` the client has no CA and no system roots: nothing vouches for B."""
    if side == "server":
        return {
            "certificates": [
                {
                    "certificateFile": certs.cert_file,
                    "keyFile": certs.key_file,
                    "usage": "encipherment",
                }
            ]
        }
    if side != "client":
        raise ValueError(f"side: {side!r}")
    settings: dict[str, Any] = {"serverName": SERVER_NAME, "disableSystemRoot": True}
    if trust:
        settings["certificates"] = [{"certificateFile": certs.ca_file, "usage": "verify"}]
    return settings


def stream_settings(
    kind: str,
    side: str,
    certs: Certs | None,
    *,
    ws_path: str = WS_PATH,
    h2_path: str = H2_PATH,
    trust: bool = True,
) -> dict[str, Any] | None:
    """V2Ray 4.34 ``streamSettings`` for ``kind`` (see the module docstring) on ``side``
    ("client": an outbound, "server": an inbound); None for bare TCP."""
    if side not in ("client", "server"):
        raise ValueError(f"side: {side!r}")
    if kind == "tcp":
        return None
    stream: dict[str, Any]
    if kind == "tls":
        stream = {"network": "tcp"}
    elif kind in ("ws", "ws+tls"):
        ws: dict[str, Any] = {"path": ws_path}
        if side == "client":
            # A 4.34 server ignores headers; the client's Host line would otherwise be
            # "127.0.0.1:port" (docs/transports.md 3.2).
            ws["headers"] = {"Host": SERVER_NAME}
        stream = {"network": "ws", "wsSettings": ws}
    elif kind == "h2":
        # The server accepts exactly these :authority values (without a port); the client
        # picks one at random (docs/transports.md 4).
        stream = {"network": "http", "httpSettings": {"host": [SERVER_NAME], "path": h2_path}}
    elif kind == "tcp+http":
        stream = {"network": "tcp", "tcpSettings": {"header": copy.deepcopy(HTTP_HEADER)}}
    else:
        raise ValueError(f"transport kind: {kind!r}")
    if kind in TLS_KINDS:
        if certs is None:
            raise ValueError(f"{kind} needs certificates")
        stream["security"] = "tls"
        stream["tlsSettings"] = tls_settings(side, certs, trust=trust)
    return stream


def vmess_entries(config: dict[str, Any], side: str, tag: str | None = None) -> list[Any]:
    """The VMess outbounds (client side) or inbounds (server side) of ``config``, or the one
    tagged ``tag``."""
    section = "outbounds" if side == "client" else "inbounds"
    found = [
        entry
        for entry in config.get(section, [])
        if entry.get("protocol") == "vmess" and (tag is None or entry.get("tag") == tag)
    ]
    if not found:
        raise LookupError(f"no VMess {section[:-1]} tagged {tag!r} in the config")
    return found


def with_stream(
    config: dict[str, Any],
    kind: str,
    side: str,
    certs: Certs | None,
    *,
    tag: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``config`` with ``streamSettings`` for ``kind`` on its VMess inbound (server) or
    outbound (client); with ``tag``, only on that one. Changes ``config`` and returns it."""
    stream = stream_settings(kind, side, certs, **options)
    for entry in vmess_entries(config, side, tag):
        if stream is None:
            entry.pop("streamSettings", None)
        else:
            entry["streamSettings"] = copy.deepcopy(stream)
    return config


def client_with(config: dict[str, Any], kind: str, certs: Certs | None, **kw: Any) -> Any:
    """A ``templates.client_config`` (node C) over ``kind``."""
    return with_stream(config, kind, "client", certs, **kw)


def server_with(config: dict[str, Any], kind: str, certs: Certs | None, **kw: Any) -> Any:
    """A ``templates.server_config`` (node B) over ``kind``."""
    return with_stream(config, kind, "server", certs, **kw)


def bridge_with(config: dict[str, Any], kind: str, certs: Certs | None, **kw: Any) -> Any:
    """A ``templates.bridge_config`` (node A) whose tunnel outbound uses ``kind``."""
    return with_stream(config, kind, "client", certs, tag="tunnel", **kw)


def portal_with(
    config: dict[str, Any],
    tunnel_kind: str,
    client_kind: str,
    certs: Certs | None,
    *,
    tunnel_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> Any:
    """A ``templates.portal_config`` (node B, two inbounds): the bridges' inbound
    (``interconn``) over ``tunnel_kind``, the clients' (``external``) over ``client_kind``."""
    with_stream(config, tunnel_kind, "server", certs, tag="interconn", **(tunnel_options or {}))
    with_stream(config, client_kind, "server", certs, tag="external", **(client_options or {}))
    return config


# -- sing-box 1.14 ---------------------------------------------------------------------------


def singbox_tls(
    kind: str, side: str, certs: Certs | None, *, trust: bool = True
) -> dict[str, Any] | None:
    """sing-box's ``tls`` object (docs/configuration/shared/tls.md) for ``kind``; None
    without TLS. No ``alpn``: sing-box's defaults (ws: http/1.1, http: h2) are what a 4.34
    peer needs, and a ws client must not offer h2 to a 4.34 ws+tls server (docs/transports.md 7)."""
    if kind not in TLS_KINDS:
        return None
    if certs is None:
        raise ValueError(f"{kind} needs certificates")
    if side == "server":
        return {"enabled": True, "certificate_path": certs.cert_file, "key_path": certs.key_file}
    if side != "client":
        raise ValueError(f"side: {side!r}")
    tls: dict[str, Any] = {"enabled": True, "server_name": SERVER_NAME}
    if trust:
        # The client's certificate replaces the root pool: only the CA is trusted.
        tls["certificate_path"] = certs.ca_file
    return tls


def singbox_transport(
    kind: str, side: str, *, ws_path: str = WS_PATH, h2_path: str = H2_PATH
) -> dict[str, Any] | None:
    """sing-box's ``transport`` object (docs/configuration/shared/v2ray-transport.md) for
    ``kind``; None for TCP (with or without TLS)."""
    if side not in ("client", "server"):
        raise ValueError(f"side: {side!r}")
    if kind in ("tcp", "tls"):
        return None
    if kind in ("ws", "ws+tls"):
        # max_early_data 0: early data in the path would miss a 4.34 server's exact path
        # match, in a header it would be dropped (docs/transports.md 7).
        transport: dict[str, Any] = {"type": "ws", "path": ws_path, "max_early_data": 0}
        if side == "client":
            # Without it, sing-box sends Host "127.0.0.1:port" (port always included).
            transport["headers"] = {"Host": SERVER_NAME}
        return transport
    if kind == "h2":
        return {"type": "http", "host": [SERVER_NAME], "path": h2_path}
    raise ValueError(f"no sing-box equivalent of {kind!r}")


def singbox_client(
    socks_port: int, server_port: int, uid: str, kind: str, certs: Certs | None, **kw: Any
) -> dict[str, Any]:
    """sing-box node C over ``kind`` (``kw``: ws_path, h2_path, trust)."""
    trust = kw.pop("trust", True)
    return singbox.client_config(
        socks_port,
        server_port,
        uid,
        tls=singbox_tls(kind, "client", certs, trust=trust),
        transport=singbox_transport(kind, "client", **kw),
    )


def singbox_server(
    port: int, uid: str, kind: str, certs: Certs | None, **kw: Any
) -> dict[str, Any]:
    """sing-box node B over ``kind``."""
    return singbox.server_config(
        port,
        uid,
        tls=singbox_tls(kind, "server", certs),
        transport=singbox_transport(kind, "server", **kw),
    )


# -- nodes of any kind -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def b_node(
    impl: str, port: int, uid: str, kind: str, certs: Certs | None, **kw: Any
) -> AsyncIterator[None]:
    """Node B (VMess in, out to loopback) of ``impl`` (RB, V2 or SB) on ``port``."""
    if impl == SB:
        with singbox.sing_box(singbox_server(port, uid, kind, certs, **kw), [port]):
            yield
        return
    async with run(impl, server_with(server_config(port, uid), kind, certs, **kw), port):
        yield


@contextlib.asynccontextmanager
async def c_node(
    impl: str,
    socks_port: int,
    server_port: int,
    uid: str,
    kind: str,
    certs: Certs | None,
    **kw: Any,
) -> AsyncIterator[None]:
    """Node C (SOCKS in on ``socks_port``, VMess out to ``server_port``) of ``impl``."""
    if impl == SB:
        config = singbox_client(socks_port, server_port, uid, kind, certs, **kw)
        with singbox.sing_box(config, [socks_port]):
            yield
        return
    config = client_with(client_config(socks_port, server_port, uid), kind, certs, **kw)
    async with run(impl, config, socks_port):
        yield


async def exercise(socks_port: int, echo_port: int, size: int = SIZE) -> None:
    """``size`` bytes each way over TCP (SHA-256 checked), then UDP datagrams, each echoed."""
    await socks_echo(socks_port, echo_port, size)
    datagrams = [os.urandom(n) for n in DATAGRAM_SIZES]
    assert await socks_udp_echo(socks_port, echo_port, datagrams) == datagrams


async def client_server(c_impl: str, b_impl: str, kind: str, certs: Certs | None) -> None:
    """C of ``c_impl`` and B of ``b_impl`` over ``kind``: :func:`exercise` through C."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    async with (
        EchoServer() as echo,
        b_node(b_impl, b_port, uid, kind, certs),
        c_node(c_impl, c_port, b_port, uid, kind, certs),
    ):
        await exercise(c_port, echo.port)


# -- the seed's reverse chain ------------------------------------------------------------------

#: The WebSocket paths of the portal's two inbounds behind nginx (nginx's ``location /ray``
#: is a prefix match, so the clients' path must not start with ``/ray``).
TUNNEL_PATH = WS_PATH
CLIENT_PATH = "/client"


@contextlib.asynccontextmanager
async def reverse_chain(
    a: str,
    b: str,
    c: str,
    certs: Certs,
    *,
    link: str = "tcp",
    client_kind: str = "tcp",
    behind_nginx: bool = False,
) -> AsyncIterator[tuple[int, EchoServer]]:
    """The seed's chain A (bridge) - B (portal) - C (client), each RB or V2, with the A-B
    link over ``link`` and C-B over ``client_kind``; yields C's SOCKS port and the echo
    server once a connection through the chain works (the bridge has registered).

    ``behind_nginx``: B's two inbounds are plain WebSocket on loopback (``/ray`` for the
    bridge, ``/client`` for clients) behind one nginx that terminates TLS; A and C dial
    nginx over ws+tls (``link`` and ``client_kind`` are then ignored)."""
    ua, uc = new_uuid(), new_uuid()
    t_port, c_port, s_port = free_port(), free_port(), free_port()
    portal = portal_config(t_port, c_port, ua, uc)
    bridge = bridge_config(t_port, ua)
    client = client_config(s_port, c_port, uc)
    with contextlib.ExitStack() as stack:
        if behind_nginx:
            tunnel_opts, client_opts = {"ws_path": TUNNEL_PATH}, {"ws_path": CLIENT_PATH}
            portal_with(
                portal, "ws", "ws", None, tunnel_options=tunnel_opts, client_options=client_opts
            )
            front = stack.enter_context(nginx(certs, {TUNNEL_PATH: t_port, CLIENT_PATH: c_port}))
            bridge = bridge_config(front.port, ua)
            client = client_config(s_port, front.port, uc)
            bridge_with(bridge, "ws+tls", certs, **tunnel_opts)
            client_with(client, "ws+tls", certs, **client_opts)
        else:
            portal_with(portal, link, client_kind, certs)
            bridge_with(bridge, link, certs)
            client_with(client, client_kind, certs)
        async with EchoServer() as echo:
            async with run(b, portal, t_port), run(a, bridge, None), run(c, client, s_port):
                await wait_chain(s_port, echo.port)
                yield s_port, echo


# -- nginx ------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = os.path.exists(NGINX)

#: One ``location`` of the WebSocket reverse proxy, as the usual deployment guides write it.
_LOCATION = """\
        location {path} {{
            proxy_pass http://127.0.0.1:{port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
        }}
"""


def nginx_config(directory: str, port: int, certs: Certs, locations: dict[str, int]) -> str:
    """nginx.conf for one process (no daemon, no master) with everything it writes inside
    ``directory``: TLS on 127.0.0.1:``port`` with the test leaf, and each path of
    ``locations`` proxied as a WebSocket to 127.0.0.1:its port. Anything else: 404."""
    d = directory
    body = "".join(_LOCATION.format(path=path, port=p) for path, p in locations.items())
    return f"""\
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{
    worker_connections 1024;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {SERVER_NAME};
        ssl_certificate {certs.cert_file};
        ssl_certificate_key {certs.key_file};
{body}        location / {{
            return 404;
        }}
    }}
}}
"""


@dataclass(slots=True)
class Nginx:
    port: int
    directory: str
    proc: subprocess.Popen[bytes] | None = None

    def error_log(self) -> str:
        with open(os.path.join(self.directory, "error.log"), errors="replace") as f:
            return f.read()


@contextlib.contextmanager
def nginx(certs: Certs, locations: dict[str, int]) -> Iterator[Nginx]:
    """Run nginx (TLS on a free loopback port, the WebSocket ``locations`` proxied) until the
    block ends; its config, logs, pid and temp files live in a temporary directory."""
    directory = tempfile.mkdtemp(prefix="nginx-")
    server = Nginx(free_port(), directory)
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_config(directory, server.port, certs, locations))
    out = open(os.path.join(directory, "output.log"), "wb")  # noqa: SIM115 - closed below
    try:
        # -e: the error log before the config is read (else /var/log/nginx/error.log).
        proc = subprocess.Popen(
            [NGINX, "-c", conf, "-p", directory, "-e", os.path.join(directory, "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        server.proc = proc
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"nginx exited with {proc.returncode}:\n{_read(out.name)}"
                        f"{_read(os.path.join(directory, 'error.log'))}"
                    )
                try:
                    wait_port(server.port, timeout=0.1)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not listen:\n{server.error_log()}") from None
            yield server
        finally:
            stop_process(proc)  # SIGTERM: fast shutdown
    finally:
        out.close()
        shutil.rmtree(directory, ignore_errors=True)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# -- probes ---------------------------------------------------------------------------------------


async def read_until_closed(
    reader: asyncio.StreamReader, timeout: float = 10.0
) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes: (bytes, closed). ``closed`` is False if
    the connection was still open after ``timeout`` seconds."""
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                chunks.append(data)
    except TimeoutError:
        return b"".join(chunks), False
    except (ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks), True


async def send_and_read(
    port: int,
    payload: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> tuple[bytes, bool]:
    """Connect to 127.0.0.1:``port`` (through TLS with ``tls``), send ``payload``, and
    return what came back until the server closed: (bytes, closed)."""
    reader, writer = await asyncio.open_connection(
        LOCAL, port, ssl=tls, server_hostname=SERVER_NAME if tls else None
    )
    try:
        writer.write(payload)
        await writer.drain()
        return await read_until_closed(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def ws_upgrade(path: str, host: str = SERVER_NAME) -> bytes:
    """A WebSocket upgrade request, as a 4.34 client writes it (docs/transports.md 8)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
    ).encode()


async def ws_probe(
    port: int, path: str, *, tls: ssl.SSLContext | None = None, timeout: float = 5.0
) -> tuple[bytes, bool]:
    """Send an upgrade request for ``path``; return the response head and whether the server
    closed the connection within ``timeout`` seconds after it."""
    reader, writer = await asyncio.open_connection(
        LOCAL, port, ssl=tls, server_hostname=SERVER_NAME if tls else None
    )
    try:
        writer.write(ws_upgrade(path))
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
        _, closed = await read_until_closed(reader, timeout)
        return head, closed
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def h2_probe(
    port: int, certs: Certs, path: str, *, authority: str = SERVER_NAME, timeout: float = 5.0
) -> tuple[dict[str, str], bool]:
    """One HTTP/2 stream over TLS (ALPN h2): ``PUT path`` as a 4.34 client sends it. Returns
    the response headers and whether that stream ended (END_STREAM or RST_STREAM)."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = client_ssl_context(certs, alpn=["h2"])
    reader, writer = await asyncio.open_connection(
        LOCAL, port, ssl=ctx, server_hostname=SERVER_NAME
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    headers: dict[str, str] = {}
    ended = False
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "h2", ssl_object.selected_alpn_protocol()
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":authority", authority),
                (":method", "PUT"),
                (":path", path),
                (":scheme", "https"),
                ("accept-encoding", "identity"),
                ("user-agent", "Go-http-client/2.0"),
            ],
        )
        writer.write(conn.data_to_send())
        async with asyncio.timeout(timeout):
            while not ended:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in event.headers
                        }
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        ended = ended or event.stream_id == stream
                writer.write(conn.data_to_send())
    except TimeoutError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return headers, ended


class Tap:
    """TCP forwarder 127.0.0.1:``port`` -> ``target_port`` that counts the bytes of each
    connection both ways and notes when the target closed it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up: list[int] = []  # bytes client -> target, per connection
        self.down: list[int] = []  # bytes target -> client
        self.target_closed: list[bool] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Tap:
        self.server = await asyncio.start_server(self._serve, LOCAL, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        index = len(self.up)
        self.up.append(0)
        self.down.append(0)
        self.target_closed.append(False)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(LOCAL, self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, self.up, index, None),
                self._pump(up_reader, writer, self.down, index, self.target_closed),
            )
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        counts: list[int],
        index: int,
        closed: list[bool] | None,
    ) -> None:
        try:
            while data := await src.read(1 << 16):
                counts[index] += len(data)
                dst.write(data)
                await dst.drain()
        except ConnectionResetError:
            pass
        if closed is not None:
            closed[index] = True
        if not dst.is_closing() and dst.can_write_eof():
            dst.write_eof()
