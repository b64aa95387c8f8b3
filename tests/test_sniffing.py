"""Inbound sniffing with live traffic on loopback: ad blocking by HTTP Host and TLS SNI,
``destOverride`` dialling the sniffed name, ``protocol`` rules (BitTorrent, HTTP), what
sniffing must not break (server-first protocols, large transfers, half-close), and the same
outcomes with V2Ray 4.34 as the node under test (``interop``).

Every node under test routes what is not on loopback to blackhole: the sniffed names that
get dialled are ``localhost`` (``/etc/hosts``) or loopback IPs; other names are blocked by
rule before anything resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from raybridge.address import Destination, tcp, udp
from raybridge.certs import make_ca, make_leaf
from raybridge.config.checks import check_config
from raybridge.config.loader import load_config_text
from raybridge.dispatcher import Dispatcher
from raybridge.errors import ConfigError
from raybridge.link import End, Outbound, Session, join
from raybridge.protocols.sniff import SNIFF_WINDOW
from raybridge.router import Router, compile_rule
from tests.protocols.test_sniff import client_hello
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    echo_roundtrip,
    free_port,
    http_body,
    new_uuid,
    node,
    socks_connect,
    v2ray,
    wait_port_async,
)

HELLO_ADS = client_hello("ads.example")
BT_HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + os.urandom(20) + b"-qB4250-" + bytes(12)
NOWHERE = "127.0.0.2"  # loopback, but nothing listens there: reached only by a dial by name
TIMEOUT = 20


# -- loopback servers that record what reaches them ---------------------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.data = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.origin.live.add(self.transport)
        self.origin.received.append(self.data)
        if self.origin.banner:
            self.transport.write(self.origin.banner)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.origin.mode == "echo":
            self.transport.write(data)
        elif b"\r\n\r\n" in self.data:
            # An HTTP origin: GET /<n> answers n bytes of http_body, then closes.
            path = bytes(self.data).split(b" ", 2)[1]
            n = int(path.strip(b"/") or 0)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            self.transport.write(head.encode() + http_body(n))
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.live.discard(self.transport)


class Origin:
    """A TCP server on 127.0.0.1 (TLS with ``tls``): ``http`` or ``echo``; ``received`` holds
    the bytes of every connection it got, in order."""

    def __init__(
        self, mode: str = "http", *, tls: ssl.SSLContext | None = None, banner: bytes = b""
    ) -> None:
        self.mode = mode
        self.tls = tls
        self.banner = banner
        self.received: list[bytearray] = []
        self.live: set[asyncio.Transport] = set()
        self.port = 0

    async def __aenter__(self) -> Origin:
        self.port = free_port()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), LOCAL, self.port, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for transport in list(self.live):
            transport.abort()


class Certs:
    """A private CA and a leaf for ``localhost`` and ``ads.example``, as ssl contexts."""

    def __init__(self, tmp: Path) -> None:
        ca = make_ca()
        leaf = make_leaf(ca, ["localhost", "ads.example"])
        (tmp / "cert.pem").write_bytes(leaf.cert)
        (tmp / "key.pem").write_bytes(leaf.key)
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        self.client = ssl.create_default_context(cadata=ca.cert.decode())


# -- clients -----------------------------------------------------------------------------------


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while data := await reader.read(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def request(host: str, size: int) -> bytes:
    return f"GET /{size} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n".encode()


async def http_via(
    port: int, target: tuple[str, int], host: str, size: int = 5000, *, socks: bool = True
) -> bytes:
    """One request through a SOCKS inbound (or straight to a dokodemo-door): the response
    body, checked against what the origin sends; ``b""`` if nothing came back."""
    if socks:
        reader, writer = await socks_connect(port, *target)
    else:
        reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(request(host, size))
        response = await asyncio.wait_for(read_all(reader), TIMEOUT)
    except ConnectionResetError:  # closed with our request unread: nothing came back
        response = b""
    finally:
        writer.close()
    if not response:
        return b""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert body == http_body(size)
    return body


async def tls_via(
    socks_port: int, target: tuple[str, int], sni: str, certs: Certs, size: int = 100_000
) -> bool:
    """TLS with ``sni`` through a SOCKS inbound, then ``size`` bytes echoed and checked;
    False if the handshake never completes."""
    reader, writer = await socks_connect(socks_port, *target)
    try:
        try:
            await asyncio.wait_for(writer.start_tls(certs.client, server_hostname=sni), TIMEOUT)
        except (OSError, EOFError, ssl.SSLError):
            return False
        sent, got = await asyncio.wait_for(echo_roundtrip(reader, writer, size), TIMEOUT)
        assert sent == got
        return True
    finally:
        writer.close()


async def raw_via(
    socks_port: int, target: tuple[str, int], payload: bytes, *, half_close: bool = True
) -> bytes:
    """``payload`` through a SOCKS inbound to an echo server: what came back (until EOF
    after a half-close; else up to ``len(payload)`` bytes, for V2Ray's mux, which ends a
    session on the client's EOF: docs/protocols.md 8.11)."""
    reader, writer = await socks_connect(socks_port, *target)
    try:
        writer.write(payload)
        if half_close:
            writer.write_eof()
            try:
                return await asyncio.wait_for(read_all(reader), TIMEOUT)
            except ConnectionResetError:
                return b""
        try:
            return await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    finally:
        writer.close()


# -- configs -----------------------------------------------------------------------------------


def sniffing(dest_override: list[str] | None = None) -> dict[str, Any]:
    return {
        "enabled": True,
        "destOverride": ["http", "tls"] if dest_override is None else dest_override,
    }


def socks_in(port: int, sniff: dict[str, Any] | None) -> dict[str, Any]:
    inbound: dict[str, Any] = {
        "tag": "in",
        "protocol": "socks",
        "listen": LOCAL,
        "port": port,
        "settings": {"auth": "noauth"},
    }
    if sniff is not None:
        inbound["sniffing"] = sniff
    return inbound


def loopback_only(*front: dict[str, Any]) -> list[dict[str, Any]]:
    """The ad-block rules after ``front``; then loopback (by IP, or the name localhost)
    goes to freedom and everything else to blackhole."""
    return [
        *front,
        {"type": "field", "domain": ["domain:ads.example"], "outboundTag": "block"},
        {"type": "field", "protocol": ["bittorrent"], "outboundTag": "block"},
        {"type": "field", "domain": ["full:localhost"], "outboundTag": "direct"},
        {"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "direct"},
        {"type": "field", "network": "tcp,udp", "outboundTag": "block"},
    ]


def node_config(
    inbounds: list[dict[str, Any]],
    rules: list[dict[str, Any]],
    extra_outbounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": inbounds,
        "outbounds": [
            {"tag": "direct", "protocol": "freedom"},
            {"tag": "block", "protocol": "blackhole"},
            *(extra_outbounds or []),
        ],
        "routing": {"rules": rules},
    }


# -- raybridge as the node under test ----------------------------------------------------------


@pytest.mark.parametrize("inbound", ["socks", "dokodemo-door"])
async def test_adblock_by_sniffed_http_host(inbound: str) -> None:
    async with Origin() as origin:
        port = free_port()
        if inbound == "socks":
            first = socks_in(port, sniffing())
        else:
            first = {
                "tag": "in",
                "protocol": "dokodemo-door",
                "listen": LOCAL,
                "port": port,
                "settings": {"address": LOCAL, "port": origin.port, "network": "tcp"},
                "sniffing": sniffing(),
            }
        target = (LOCAL, origin.port)
        async with node(node_config([first], loopback_only())):
            socks = inbound == "socks"
            for host in ("ads.example", "www.ads.example", f"ads.example:{origin.port}"):
                assert await http_via(port, target, host, socks=socks) == b""
            assert origin.received == []  # the blocked names reached nothing
            for host in (f"localhost:{origin.port}", "LocalHost", LOCAL):
                assert await http_via(port, target, host, 70_000, socks=socks)
            # Each request reached the origin whole: the held bytes went out first.
            assert [bytes(r) for r in origin.received] == [
                request(h, 70_000) for h in (f"localhost:{origin.port}", "LocalHost", LOCAL)
            ]


async def test_adblock_by_sniffed_tls_server_name(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    async with Origin("echo", tls=certs.server) as origin:
        port = free_port()
        async with node(node_config([socks_in(port, sniffing())], loopback_only())):
            target = (LOCAL, origin.port)
            assert not await tls_via(port, target, "ads.example", certs)
            assert origin.received == []
            assert await tls_via(port, target, "localhost", certs)
            # destOverride: the client asked for an address where nothing listens; the
            # sniffed name (localhost, same port) is what was dialled.
            assert await tls_via(port, (NOWHERE, origin.port), "localhost", certs)
            assert len(origin.received) == 2


@pytest.mark.parametrize("override", [True, False])
async def test_dest_override_dials_and_routes_the_sniffed_name(override: bool) -> None:
    """With destOverride the sniffed name replaces the address: it is what routing sees
    (full:localhost -> an outbound redirecting to a second server) and what is dialled.
    Without it, V2Ray 4.34 routes and dials the address the client asked for."""

    async with Origin() as by_ip, Origin() as by_name:
        port = free_port()
        rules = loopback_only(
            {"type": "field", "domain": ["full:localhost"], "outboundTag": "by-name"}
        )
        redirect = {
            "tag": "by-name",
            "protocol": "freedom",
            "settings": {"redirect": f"{LOCAL}:{by_name.port}"},
        }
        config = node_config(
            [socks_in(port, sniffing(None if override else []))], rules, [redirect]
        )
        async with node(config):
            host = f"localhost:{by_ip.port}"
            assert await http_via(port, (LOCAL, by_ip.port), host)
            assert (len(by_name.received), len(by_ip.received)) == ((1, 0) if override else (0, 1))
            # By name: 127.0.0.2 has no server; only a dial of "localhost" reaches one.
            got = await http_via(port, (NOWHERE, by_ip.port), host)
            assert bool(got) is override


@pytest.mark.parametrize(
    "blocked,payload,sniff",
    [
        (["bittorrent"], BT_HANDSHAKE, True),
        (["http"], request("localhost", 10), True),  # "http" is a prefix of "http1"
        (["tls"], b"\x16\x03\x01\x00\x05hello", True),  # no ClientHello: no result
        (["bittorrent"], BT_HANDSHAKE, False),  # no sniffing: protocol rules never match
    ],
    ids=["bittorrent", "http", "tls-without-hello", "bittorrent-unsniffed"],
)
async def test_protocol_rules(blocked: list[str], payload: bytes, sniff: bool) -> None:
    async with Origin("echo") as echo:
        port = free_port()
        rules = loopback_only({"type": "field", "protocol": blocked, "outboundTag": "block"})
        inbound = socks_in(port, sniffing() if sniff else None)
        async with node(node_config([inbound], rules)):
            got = await raw_via(port, (LOCAL, echo.port), payload)
            expect_block = sniff and blocked != ["tls"]
            assert got == (b"" if expect_block else payload)
            assert len(echo.received) == (0 if expect_block else 1)
            if not expect_block:
                assert echo.received[0] == payload
            # Anything else still passes, bytes checked.
            other = b"SSH-2.0-client\r\n" + os.urandom(5000)
            assert await raw_via(port, (LOCAL, echo.port), other) == other


async def test_sniffing_keeps_server_first_protocols_large_transfers_and_half_close() -> None:
    banner = b"220 loopback ESMTP ready\r\n"
    async with Origin("echo", banner=banner) as smtp, Origin("echo") as echo:
        port = free_port()
        async with node(node_config([socks_in(port, sniffing())], loopback_only())):
            # The server speaks first: the sniff gives up after its windows and routes.
            reader, writer = await socks_connect(port, LOCAL, smtp.port)
            assert await asyncio.wait_for(reader.readexactly(len(banner)), TIMEOUT) == banner
            writer.write(b"EHLO x\r\n")
            assert await asyncio.wait_for(reader.readexactly(8), TIMEOUT) == b"EHLO x\r\n"
            writer.close()
            # 8 MiB after a sniffed HTTP head (dialled by its name): every byte, in order.
            reader, writer = await socks_connect(port, NOWHERE, echo.port)
            head = request(f"localhost:{echo.port}", 0)
            writer.write(head)
            assert await asyncio.wait_for(reader.readexactly(len(head)), TIMEOUT) == head
            sent, got = await asyncio.wait_for(echo_roundtrip(reader, writer, 8 << 20), TIMEOUT * 3)
            assert sent == got
            writer.close()
            # Half a request, then EOF: the end of input ends the sniff; routed by address.
            payload = b"GET / HTTP/1.0\r\nAccept: */*"
            assert await raw_via(port, (LOCAL, echo.port), payload) == payload
            hashes = {hashlib.sha256(r).hexdigest() for r in echo.received}
            assert hashlib.sha256(payload).hexdigest() in hashes


async def test_mux_sessions_are_sniffed() -> None:
    """A raybridge client muxes over VMess to a raybridge server whose inbound sniffs:
    every mux session is sniffed on its own (V2Ray's mux server dispatches each session in
    the inbound's context)."""

    async with Origin() as origin:
        uid, b_port, c_port = new_uuid(), free_port(), free_port()
        server = node_config(
            [
                {
                    "tag": "vmess-in",
                    "protocol": "vmess",
                    "listen": LOCAL,
                    "port": b_port,
                    "settings": {"clients": [{"id": uid}]},
                    "sniffing": sniffing(),
                }
            ],
            loopback_only(),
        )
        client = c_config(c_port, b_port, uid, mux=True)
        async with node(server), node(client):
            outcomes = await asyncio.gather(*(chain_cases(c_port, origin) for _ in range(3)))
        assert outcomes == [EXPECTED_HTTP] * 3


# -- the same through a V2Ray 4.34 client, with raybridge or V2Ray as the node under test -------

EXPECTED_HTTP = {"ads.example": False, "localhost": True, "localhost by name": True}


def c_config(socks_port: int, b_port: int, uid: str, *, mux: bool) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [socks_in(socks_port, None)],
        "outbounds": [
            {
                "protocol": "vmess",
                "settings": {"vnext": [{"address": LOCAL, "port": b_port, "users": [{"id": uid}]}]},
                "mux": {"enabled": mux, "concurrency": 8},
            }
        ],
    }


def b_config(b_port: int, uid: str) -> dict[str, Any]:
    return node_config(
        [
            {
                "tag": "vmess-in",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": b_port,
                "settings": {"clients": [{"id": uid, "alterId": 0}]},
                "sniffing": sniffing(),
            }
        ],
        loopback_only(),
    )


async def chain_cases(socks_port: int, origin: Origin) -> dict[str, bool]:
    target = (LOCAL, origin.port)
    return {
        "ads.example": bool(await http_via(socks_port, target, "ads.example")),
        "localhost": bool(await http_via(socks_port, target, f"localhost:{origin.port}")),
        "localhost by name": bool(
            await http_via(socks_port, (NOWHERE, origin.port), f"localhost:{origin.port}")
        ),
    }


@contextlib.asynccontextmanager
async def node_b(kind: str, config: dict[str, Any], port: int) -> AsyncIterator[None]:
    if kind == "raybridge":
        async with node(config):
            yield
    else:
        with v2ray(config):
            await wait_port_async(port)
            yield


@pytest.mark.interop
@pytest.mark.skipif(not HAVE_V2RAY, reason="needs /usr/bin/v2ray (V2Ray 4.34)")
@pytest.mark.parametrize("mux", [False, True])
@pytest.mark.parametrize("b_kind", ["raybridge", "v2ray"])
async def test_v2ray_client_through_a_sniffing_node(b_kind: str, mux: bool, tmp_path: Path) -> None:
    """C (V2Ray: socks in, vmess out) -> B (vmess in with sniffing, the ad-block rules) ->
    loopback servers. Run with raybridge and with V2Ray 4.34 as B: the same outcomes."""

    certs = Certs(tmp_path)
    async with Origin() as origin, Origin("echo", tls=certs.server) as tls_origin:
        async with Origin("echo") as echo:
            uid, b_port, c_port = new_uuid(), free_port(), free_port()
            async with node_b(b_kind, b_config(b_port, uid), b_port):
                with v2ray(c_config(c_port, b_port, uid, mux=mux)):
                    await wait_port_async(c_port)
                    outcome = await chain_cases(c_port, origin)
                    tls_target = (LOCAL, tls_origin.port)
                    outcome["tls ads.example"] = await tls_via(
                        c_port, tls_target, "ads.example", certs
                    )
                    outcome["tls localhost"] = await tls_via(
                        c_port, (NOWHERE, tls_origin.port), "localhost", certs
                    )
                    to_echo = (LOCAL, echo.port)
                    bt = await raw_via(c_port, to_echo, BT_HANDSHAKE, half_close=False)
                    outcome["bittorrent"] = bool(bt)
                    other = b"plain bytes, not sniffed" * 100
                    back = await raw_via(c_port, to_echo, other, half_close=False)
                    outcome["other"] = back == other
    assert outcome == {
        **EXPECTED_HTTP,
        "tls ads.example": False,
        "tls localhost": True,
        "bittorrent": False,
        # V2Ray 4.34 shares one session.Content among the sessions of a mux connection:
        # a session it cannot sniff keeps the previous one's "bittorrent" and is blocked
        # (docs/protocols.md 8.23). raybridge sniffs each session on its own.
        "other": not (b_kind == "v2ray" and mux),
    }
    # What reached the servers: only the allowed connections.
    assert len(origin.received) == 2
    assert len(tls_origin.received) == 1
    assert len(echo.received) == int(outcome["other"])


# -- routing and config ------------------------------------------------------------------------


def test_protocol_condition_is_a_prefix_and_ignores_empty_names() -> None:
    text = """{"outbounds": [{"tag": "a", "protocol": "freedom"},
                    {"tag": "b", "protocol": "freedom"}],
      "routing": {"rules": [{"type": "field", "protocol": "bittorrent,", "outboundTag": "b"},
                            {"type": "field", "protocol": ["http"], "outboundTag": "a"}]}}"""
    cfg = load_config_text(text)
    router = Router([compile_rule(r) for r in cfg.routing.rules], ["a", "b"])
    dest = tcp("1.2.3.4", 80)
    picks = {
        p: router.pick(Session(inbound_tag="in", protocol=p), dest)
        for p in ("", "http1", "http/1.1", "tls", "bittorrent")
    }
    assert picks == {"": None, "http1": "a", "http/1.1": "a", "tls": None, "bittorrent": "b"}


def _inbound_config(sniff: str) -> str:
    return (
        '{\n "inbounds": [\n  {"protocol": "socks", "port": 1080, "listen": "127.0.0.1",\n'
        f'   "sniffing": {sniff}\n  }}\n ],\n "outbounds": [{{"protocol": "freedom"}}]\n}}\n'
    )


@pytest.mark.parametrize(
    "sniff,line,path,message",
    [
        (
            '{"enabled": true,\n "destOverride": ["http",\n  "fakedns"]}',
            6,
            "inbounds[0].sniffing.destOverride[1]",
            'unknown sniffing protocol "fakedns": V2Ray 4.34 overrides "http" and "tls"',
        ),
        (
            '{"enabled": true, "destOverride": "tls,bittorrent"}',
            4,
            "inbounds[0].sniffing.destOverride",
            'unknown sniffing protocol "bittorrent": V2Ray 4.34 overrides "http" and "tls" '
            '(BitTorrent is sniffed anyway, for "protocol" rules; it has no name)',
        ),
        (
            '{"enabled": true,\n "routeOnly": true}',
            5,
            "inbounds[0].sniffing.routeOnly",
            '"routeOnly" is not a V2Ray 4.34 setting',
        ),
        (
            '{"enabled": true, "metadataOnly": false}',
            4,
            "inbounds[0].sniffing.metadataOnly",
            '"metadataOnly" is not a V2Ray 4.34 setting',
        ),
    ],
)
def test_sniffing_config_errors_name_file_line_and_field(
    sniff: str, line: int, path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(_inbound_config(sniff), "b.json")
    err = info.value
    assert (err.file, err.line, err.path) == ("b.json", line, path)
    assert err.message.startswith(message)
    assert str(err).startswith(f"b.json:{line}: {path}: {message}")


def test_sniffing_warnings_and_checks() -> None:
    cfg = load_config_text(_inbound_config('{"destOverride": ["http"]}'), "c.json")
    assert not cfg.inbounds[0].sniffing_enabled
    [warning] = [w for w in cfg.warnings if "destOverride" in w.path]
    assert (warning.line, warning.message) == (
        4,
        'has no effect: sniffing is off (add "enabled": true)',
    )
    text = """{
 "inbounds": [{"tag": "s", "protocol": "socks", "port": 1080, "listen": "127.0.0.1"},
              {"tag": "h", "protocol": "http", "port": 1081, "listen": "127.0.0.1"}],
 "outbounds": [{"protocol": "freedom"}, {"tag": "block", "protocol": "blackhole"}],
 "routing": {"rules": [
  {"type": "field", "protocol": ["bittorrent"], "outboundTag": "block"},
  {"type": "field", "inboundTag": ["h"], "protocol": ["http"], "outboundTag": "block"},
  {"type": "field", "protocol": ["quic"], "inboundTag": ["s"], "outboundTag": "block"},
  {"type": "field", "protocol": ["BitTorrent"], "inboundTag": ["s"], "outboundTag": "block"}
 ]}
}"""
    found = check_config(load_config_text(text, "d.json"))
    messages = [(f.line, f.path, f.message) for f in found]
    assert (
        6,
        "routing.rules[0].protocol",
        "this rule never matches: no inbound it applies to has sniffing enabled, so no "
        "session has a protocol",
    ) in messages
    assert not any(path == "routing.rules[1].protocol" for _, path, _ in messages)  # http/1.1
    assert any(
        path == "routing.rules[2].protocol" and message.startswith('"quic" never matches')
        for _, path, message in messages
    )
    [bittorrent] = [
        f for f in found if f.path == "routing.rules[3].protocol" and "BitTorrent" in f.message
    ]
    assert (bittorrent.line, bittorrent.fix) == (9, 'write "bittorrent"')
    # With sniffing on, a BitTorrent rule is fine.
    sniffed = text.replace(
        '"listen": "127.0.0.1"}', '"listen": "127.0.0.1", "sniffing": {"enabled": true}}', 1
    )
    found = check_config(load_config_text(sniffed, "d.json"))
    assert not any(f.path == "routing.rules[0].protocol" for f in found)


# -- the dispatcher's SniffingEnd, with recording ends -----------------------------------------


class Recorder(End):
    def __init__(self) -> None:
        self.peer: End | None = None
        self.data: list[bytes] = []
        self.eof = False
        self.aborted = False
        self.paused = 0

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def write_eof(self) -> None:
        self.eof = True

    def abort(self, exc: BaseException | None = None) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1


class RecordingOutbound(Outbound):
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.links: list[tuple[Session, Destination, Recorder]] = []

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        end = Recorder()
        join(peer, end)
        self.links.append((session, dest, end))
        return end


def dispatcher_with(*tags: str) -> tuple[Dispatcher, dict[str, RecordingOutbound]]:
    outbounds = {t: RecordingOutbound(t) for t in tags}
    rules = load_config_text(json.dumps(node_config([], loopback_only()))).routing.rules
    return Dispatcher(
        Router([compile_rule(r) for r in rules], list(tags)), list(outbounds.values())
    ), outbounds


async def test_sniffing_end_holds_routes_and_replays_in_order() -> None:
    dispatcher, out = dispatcher_with("direct", "block")
    client = Recorder()
    session = Session(inbound_tag="in", sniffing=frozenset({"tls"}))
    end = dispatcher.dispatch(session, tcp(LOCAL, 443), client)
    assert client.peer is end and not out["direct"].links  # nothing routed yet
    parts = [HELLO_ADS[:1], HELLO_ADS[1:100], HELLO_ADS[100:]]
    for part in parts[:2]:
        end.write(part)
    assert not out["block"].links
    end.write(parts[2])  # the ClientHello is complete: routed at once
    [(routed, dest, real)] = out["block"].links
    assert routed is session and session.protocol == "tls"
    assert dest == tcp("ads.example", 443)  # destOverride: the name, same port
    assert b"".join(real.data) == HELLO_ADS and client.peer is real
    end.write(b"later")  # a stale reference still reaches the real end
    end.write_eof()
    assert real.data[-1] == b"later" and real.eof


async def test_sniffing_end_times_out_routes_by_address_and_aborts_cleanly() -> None:
    dispatcher, out = dispatcher_with("direct", "block")
    # Nothing sent: after the two windows the link is routed without a result.
    session = Session(inbound_tag="in", sniffing=frozenset({"http", "tls"}))
    dispatcher.dispatch(session, tcp(LOCAL, 25), Recorder())
    while not out["direct"].links:
        await asyncio.sleep(SNIFF_WINDOW / 4)
    [(_, dest, _)] = out["direct"].links
    assert dest == tcp(LOCAL, 25) and session.protocol == ""
    # Aborted while sniffing: nothing is ever routed.
    quiet = Session(inbound_tag="in", sniffing=frozenset({"http"}))
    end = dispatcher.dispatch(quiet, tcp(LOCAL, 80), Recorder())
    end.write(b"GET / HTTP/1.1\r\n")
    end.abort()
    await asyncio.sleep(3 * SNIFF_WINDOW)
    assert len(out["direct"].links) == 1 and not out["block"].links
    # UDP is never sniffed (V2Ray sniffs TCP only): routed at once.
    dispatcher.dispatch(quiet, udp(LOCAL, 53), Recorder())
    assert len(out["direct"].links) == 2
