"""Transports on loopback (issue 13): TLS, WebSocket, HTTP/2 and the TCP HTTP header, between
raybridge and V2Ray 4.34, raybridge and sing-box 1.14, in the seed's reverse chain, and behind
a real nginx; the security cases; the config errors.

Every interop case moves 10 MB each way through C's SOCKS port to an echo server (SHA-256)
and echoes UDP datagrams through SOCKS UDP ASSOCIATE. The streamSettings are V2Ray 4.34's
JSON, built by ``tests/transports.py`` (which also says what each transport name means); the
same harness was checked with V2Ray and sing-box on both sides, so a failure here is
raybridge's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.protocols.socks import SocksError
from tests.singbox import requires_sing_box
from tests.support import (
    HAVE_V2RAY,
    EchoServer,
    client_config,
    free_port,
    new_uuid,
    server_config,
    socks_echo,
    until,
)
from tests.transports import (
    HAVE_NGINX,
    RB,
    SB,
    SERVER_NAME,
    SING_BOX_KINDS,
    TLS_KINDS,
    V2,
    WS_PATH,
    Certs,
    Tap,
    b_node,
    c_node,
    certificates,
    client_server,
    client_ssl_context,
    exercise,
    h2_probe,
    nginx,
    reverse_chain,
    send_and_read,
    server_with,
    write_certs,
    ws_probe,
)

pytestmark = [pytest.mark.interop]

needs_v2ray = pytest.mark.skipif(
    not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)"
)
needs_nginx = pytest.mark.skipif(not HAVE_NGINX, reason="needs nginx (apt-get install nginx)")

#: How a SOCKS connection through C fails when C cannot reach B: C answers the SOCKS request
#: with an error, or accepts it and then closes.
REFUSED = (OSError, AssertionError, asyncio.IncompleteReadError, SocksError)

#: Every transport but bare TCP (which tests/test_interop_vmess.py covers).
TRANSPORTS = ["tls", "ws", "ws+tls", "h2", "tcp+http"]


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with certificates() as made:
        yield made


def _short(impl: str) -> str:
    return {RB: "rb", V2: "v2", SB: "sb"}[impl]


def _needs(*impls: str) -> None:
    if V2 in impls and not HAVE_V2RAY:
        pytest.skip("needs /usr/bin/v2ray")


# -- 1. raybridge and V2Ray, each transport ---------------------------------------------------

PAIRS = [(RB, V2), (V2, RB), (RB, RB)]


@pytest.mark.parametrize(
    "c_impl,b_impl", PAIRS, ids=[f"C={_short(c)}-B={_short(b)}" for c, b in PAIRS]
)
@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_client_server(kind: str, c_impl: str, b_impl: str, certs: Certs) -> None:
    _needs(c_impl, b_impl)
    await client_server(c_impl, b_impl, kind, certs)


# -- 2. raybridge and sing-box ----------------------------------------------------------------


@requires_sing_box
@pytest.mark.parametrize("kind", SING_BOX_KINDS)
async def test_singbox_client(kind: str, certs: Certs) -> None:
    await client_server(SB, RB, kind, certs)


@requires_sing_box
@pytest.mark.parametrize("kind", SING_BOX_KINDS)
async def test_singbox_server(kind: str, certs: Certs) -> None:
    await client_server(RB, SB, kind, certs)


# -- 3. the seed's reverse chain ------------------------------------------------------------------

#: (A, B, C): every mix has raybridge on one end of the A-B link at least.
CHAIN_MIXES = [(RB, RB, RB), (V2, RB, V2), (RB, V2, RB)]


def _mix_id(mix: tuple[str, str, str]) -> str:
    return "-".join(f"{role}={_short(impl)}" for role, impl in zip("ABC", mix, strict=True))


@pytest.mark.parametrize("mix", CHAIN_MIXES, ids=[_mix_id(m) for m in CHAIN_MIXES])
@pytest.mark.parametrize("link", ["ws+tls", "h2"])
async def test_reverse_chain(link: str, mix: tuple[str, str, str], certs: Certs) -> None:
    """A-B over ``link``, C-B over tls; C's traffic leaves through A."""
    _needs(*mix)
    async with reverse_chain(*mix, certs, link=link, client_kind="tls") as (s_port, echo):
        await exercise(s_port, echo.port)


# -- 4. behind nginx ------------------------------------------------------------------------------


@needs_nginx
@pytest.mark.parametrize(
    "c_impl",
    [RB, pytest.param(V2, marks=needs_v2ray), pytest.param(SB, marks=requires_sing_box)],
    ids=["C=rb", "C=v2", "C=sb"],
)
async def test_nginx_client(c_impl: str, certs: Certs) -> None:
    """nginx terminates TLS and proxies ``/ray`` to raybridge B (plain ws on loopback); C
    speaks ws+tls to nginx."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    with nginx(certs, {WS_PATH: b_port}) as front:
        async with (
            EchoServer() as echo,
            b_node(RB, b_port, uid, "ws", None),
            c_node(c_impl, c_port, front.port, uid, "ws+tls", certs),
        ):
            await exercise(c_port, echo.port)


@needs_nginx
@pytest.mark.parametrize("a_impl", [RB, pytest.param(V2, marks=needs_v2ray)], ids=["A=rb", "A=v2"])
async def test_nginx_reverse_chain(a_impl: str, certs: Certs) -> None:
    """The bridge A and the client C both reach raybridge's portal B through one nginx."""
    async with reverse_chain(a_impl, RB, RB, certs, behind_nginx=True) as (s_port, echo):
        await exercise(s_port, echo.port)


# -- 5. security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("trust", [False, True], ids=["no-CA", "CA"])
@pytest.mark.parametrize("kind", TLS_KINDS)
async def test_client_verifies_the_server(kind: str, trust: bool, certs: Certs) -> None:
    """A raybridge C with ``disableSystemRoot`` and no ``verify`` CA refuses B's
    certificate: the SOCKS connection fails and B never sees a VMess request (nothing
    reaches the echo server). Given the CA, the same setup works."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    async with EchoServer() as echo, b_node(RB, b_port, uid, kind, certs), Tap(b_port) as tap:
        async with c_node(RB, c_port, tap.port, uid, kind, certs, trust=trust):
            if trust:
                await exercise(c_port, echo.port)
                return
            with pytest.raises(REFUSED):
                await asyncio.wait_for(socks_echo(c_port, echo.port, 1000), 15)
            assert tap.up, "C did not even try to reach B"
            assert echo.connections == 0, "B served a request over an unverified TLS link"


@pytest.mark.parametrize("kind", TLS_KINDS)
async def test_plain_client_on_tls_port(
    kind: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """A raybridge C without TLS dialing B's TLS port gets nothing back: B closes the
    connection without a byte and logs it; then it serves a TLS client as before."""
    caplog.set_level(logging.INFO, logger="raybridge")

    uid = new_uuid()
    b_port, c_port, good_port = free_port(), free_port(), free_port()
    async with EchoServer() as echo, b_node(RB, b_port, uid, kind, certs), Tap(b_port) as tap:
        async with c_node(RB, c_port, tap.port, uid, "tcp", None):
            with pytest.raises(REFUSED):
                await asyncio.wait_for(socks_echo(c_port, echo.port, 1000), 15)
            await until(lambda: tap.target_closed and all(tap.target_closed), 10)
        assert tap.up and all(n > 0 for n in tap.up), tap.up
        assert tap.down == [0] * len(tap.down), f"B answered plain TCP: {tap.down}"
        assert echo.connections == 0
        async with c_node(RB, good_port, b_port, uid, kind, certs):
            await socks_echo(good_port, echo.port, 100_000)
    messages = [r.getMessage() for r in caplog.records]
    assert any("127.0.0.1" in m and "tls" in m.lower() for m in messages), messages


GARBAGE = random.Random(1313).randbytes(8192)


GARBAGE_CASES = [
    pytest.param(kind, inside, id=f"{kind}-{'inside-tls' if inside else 'raw'}")
    for kind in TRANSPORTS
    for inside in (False, True)
    if kind in TLS_KINDS or not inside
]


@pytest.mark.parametrize("kind,inside_tls", GARBAGE_CASES)
async def test_garbage_closes_one_connection(kind: str, inside_tls: bool, certs: Certs) -> None:
    """Random bytes on B's port (or, on a TLS port, inside a good TLS session) end that one
    connection; B serves a good client before and after."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    # Inside TLS: garbage where the HTTP/1.1 request, the h2 preface or VMess belongs.
    alpn = ["h2"] if kind == "h2" else ["http/1.1"]
    tls = client_ssl_context(certs, alpn=alpn) if inside_tls else None
    async with (
        EchoServer() as echo,
        b_node(RB, b_port, uid, kind, certs),
        c_node(RB, c_port, b_port, uid, kind, certs),
    ):
        await socks_echo(c_port, echo.port, 100_000)
        _, closed = await send_and_read(b_port, GARBAGE, tls=tls)
        assert closed, "B kept a connection that sent garbage"
        await socks_echo(c_port, echo.port, 100_000)


@pytest.mark.parametrize("kind", ["ws", "ws+tls"])
async def test_wrong_websocket_path(kind: str, certs: Certs) -> None:
    """An upgrade for another path gets V2Ray's 404, and B closes that connection (V2Ray
    keeps it open for the next request); the next client is served."""
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    tls = client_ssl_context(certs, alpn=["http/1.1"]) if kind == "ws+tls" else None
    async with (
        EchoServer() as echo,
        b_node(RB, b_port, uid, kind, certs),
        c_node(RB, c_port, b_port, uid, kind, certs),
    ):
        head, closed = await ws_probe(b_port, "/wrong", tls=tls, timeout=2)
        assert head.startswith(b"HTTP/1.1 404 "), head
        assert closed, "B kept the connection after the 404 (2 s)"
        await socks_echo(c_port, echo.port, 100_000)


@pytest.mark.parametrize(
    "path,authority",
    [("/wrong", SERVER_NAME), ("/h2", f"{SERVER_NAME}:443")],
    ids=["path", "authority"],
)
async def test_wrong_h2_stream(path: str, authority: str, certs: Certs) -> None:
    """An h2 stream for another path (``/wrong`` does not start with ``/h2``) or another
    ``:authority`` gets ``:status 404`` and ends; the next client is served."""
    pytest.importorskip("h2")  # python-hyper's h2, raybridge's own h2 layer
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    async with (
        EchoServer() as echo,
        b_node(RB, b_port, uid, "h2", certs),
        c_node(RB, c_port, b_port, uid, "h2", certs),
    ):
        headers, ended = await h2_probe(b_port, certs, path, authority=authority)
        assert headers.get(":status") == "404", headers
        assert ended, "the stream did not end after the 404"
        await socks_echo(c_port, echo.port, 100_000)


# -- 6. config errors -----------------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def _cli_errors(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``raybridge test -c path``: its exit code must be non-zero; its ``error:`` lines."""
    from raybridge.cli import main

    capsys.readouterr()
    code = main(["test", "-c", str(path)])
    err = capsys.readouterr().err
    assert code != 0, err
    return [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error:")]


def _tls_server_text(certs: Certs, **certificate: str) -> str:
    config: dict[str, Any] = server_with(server_config(free_port(), new_uuid()), "tls", certs)
    entry = config["inbounds"][0]["streamSettings"]["tlsSettings"]["certificates"][0]
    entry.update(certificate)
    return json.dumps(config, indent=1)


CERT_PATH = "inbounds[0].streamSettings.tlsSettings.certificates[0]"


def test_missing_certificate_file(
    tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no-such-cert.pem")
    text = _tls_server_text(certs, certificateFile=missing)
    path = tmp_path / "b.json"
    path.write_text(text)
    line = _line_of(text, '"certificateFile"')
    want = f"{path}:{line}: {CERT_PATH}.certificateFile: "
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(path))
    assert str(info.value).startswith(want), str(info.value)
    assert "no-such-cert.pem" in str(info.value)
    assert any(e.startswith(want) for e in _cli_errors(path, capsys))


def test_key_that_does_not_match(
    tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caught before anything listens (``raybridge test`` builds the TLS contexts)."""
    other = tmp_path / "other"
    other.mkdir()
    text = _tls_server_text(certs, keyFile=write_certs(str(other)).key_file)
    path = tmp_path / "b.json"
    path.write_text(text)
    first = _line_of(text, '"certificateFile"') - 1  # the "{" of the entry
    last = _line_of(text, '"usage"') + 1
    errors = _cli_errors(path, capsys)
    located = [
        e
        for e in errors
        if e.startswith(f"{path}:")
        and first <= int(e.split(":")[1]) <= last
        and e.split(": ")[1].startswith(CERT_PATH)
    ]
    assert located, errors
    assert any("match" in e.lower() and "key" in e.lower() for e in located), located


@pytest.mark.parametrize("side", ["server", "client"])
def test_unknown_network(tmp_path: Path, side: str, capsys: pytest.CaptureFixture[str]) -> None:
    uid = new_uuid()
    if side == "server":
        config: dict[str, Any] = server_config(free_port(), uid)
        config["inbounds"][0]["streamSettings"] = {"network": "carrier-pigeon"}
        where = "inbounds[0].streamSettings.network"
    else:
        config = client_config(free_port(), free_port(), uid)
        config["outbounds"][0]["streamSettings"] = {"network": "carrier-pigeon"}
        where = "outbounds[0].streamSettings.network"
    text = json.dumps(config, indent=1)
    path = tmp_path / f"{side}.json"
    path.write_text(text)
    want = f"{path}:{_line_of(text, 'carrier-pigeon')}: {where}: "
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(path))
    assert str(info.value).startswith(want), str(info.value)
    assert "carrier-pigeon" in str(info.value)
    assert any(e.startswith(want) for e in _cli_errors(path, capsys))
