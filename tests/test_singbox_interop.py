"""Interop with sing-box 1.14 (issue 10): a third VMess implementation, with the options V2Ray
4.34 lacks (zero, GlobalPadding off, AuthenticatedLength, xudp, packetaddr).

a. sing-box C (SOCKS in, VMess out) against a raybridge B (VMess in, freedom out).
b. raybridge C against a sing-box B (VMess in, direct out to loopback only).
c. sing-box C as the client of the seed's reverse chain: raybridge portal B, and a raybridge
   or V2Ray 4.34 bridge A.

Every case moves 10 MB each way through C's SOCKS port to an echo server (SHA-256) and echoes
UDP datagrams through SOCKS UDP ASSOCIATE. The cases of b that name a feature also decode the
request header raybridge sent (a tap between C and B) and check that the feature is on the
wire, since raybridge ignores a config key it does not know (with a warning) and the echo
would pass without it. The full-cone cases check what xudp and packetaddr exist for: each
datagram carries its own address, so a reply from another port arrives labelled with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

import pytest

from raybridge.address import Destination, Network, parse_host
from raybridge.protocols.socks import (
    SocksClient,
    SocksCommand,
    decode_udp_datagram,
    encode_udp_datagram,
)
from raybridge.protocols.vmess.account import cmd_key_of
from raybridge.protocols.vmess.header import (
    Command,
    Option,
    ParsedRequest,
    Security,
    open_aead_request_header,
    open_aead_request_length,
    parse_request_plaintext,
)
from tests import singbox
from tests.singbox import requires_sing_box, sing_box
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    EchoServer,
    StartNode,
    StartPeer,
    _socks_replies,
    bridge_config,
    client_config,
    free_port,
    new_uuid,
    node,
    portal_config,
    server_config,
    socks_echo,
    socks_udp_echo,
    wait_chain,
)

SIZE = 10_000_000
DATAGRAM_SIZES = (1, 100, 1400, 1900)
#: V2Ray v5's (and sing-box's) destination of a packetaddr request (v2fly ``packetaddr``).
PACKETADDR_DOMAIN = "sp.packet-addr.v2fly.arpa"

pytestmark = [pytest.mark.interop, requires_sing_box]

needs_v2ray = pytest.mark.skipif(
    not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)"
)


async def exercise(socks_port: int, echo_port: int) -> None:
    """10 MB each way over TCP, then the datagrams, each echoed exactly."""
    await socks_echo(socks_port, echo_port, SIZE)
    datagrams = [os.urandom(n) for n in DATAGRAM_SIZES]
    assert await socks_udp_echo(socks_port, echo_port, datagrams) == datagrams


# -- full cone: a reply from another port --------------------------------------------------------


class _Queue(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


class _Reflect(asyncio.DatagramProtocol):
    """Answers each datagram twice: from its own port and from ``other``'s."""

    def __init__(self, other: asyncio.DatagramTransport) -> None:
        self.other = other

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"same:" + data, addr)
        self.other.sendto(b"other:" + data, addr)


async def check_full_cone(socks_port: int, timeout: float = 5.0) -> None:
    """One datagram through C's SOCKS UDP to a port P whose server answers from P and from Q:
    both replies must come back, each with its own source port in the SOCKS header."""
    loop = asyncio.get_running_loop()
    p, q = free_port(), free_port()
    other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(LOCAL, q))
    reflector, _ = await loop.create_datagram_endpoint(
        lambda: _Reflect(other), local_addr=(LOCAL, p)
    )
    reader, writer = await asyncio.open_connection(LOCAL, socks_port)
    client = SocksClient(
        Destination(Network.UDP, parse_host("0.0.0.0"), 0), command=SocksCommand.UDP_ASSOCIATE
    )
    writer.write(client.initial_bytes())
    await _socks_replies(client, reader, writer)
    udp, proto = await loop.create_datagram_endpoint(_Queue, local_addr=(LOCAL, 0))
    try:
        target = Destination(Network.UDP, parse_host(LOCAL), p)
        udp.sendto(
            encode_udp_datagram(target, b"ping"), (str(client.bound.host), client.bound.port)
        )
        sources: dict[bytes, int] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(sources) < 2:
                    source, payload = decode_udp_datagram(await proto.queue.get())
                    sources[bytes(payload)] = source.port
        assert sources == {b"same:ping": p, b"other:ping": q}, (
            f"replies by source port (P={p}, Q={q}): {sources}"
        )
    finally:
        udp.close()
        writer.close()
        reflector.close()
        other.close()


# -- a tap that reads raybridge's request header ------------------------------------------------


class Tap:
    """TCP forwarder 127.0.0.1:``port`` -> ``target_port`` that keeps the first bytes each
    connection sends, to decode the VMess request header afterwards."""

    KEEP = 4096

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.heads: list[bytearray] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Tap:
        self.server = await asyncio.start_server(self._serve, LOCAL, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        # Closing the sockets ends the pumps; cancelling a start_server task instead would
        # make asyncio log the CancelledError.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        head = bytearray()
        self.heads.append(head)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(LOCAL, self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, head), self._pump(up_reader, writer, None)
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
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, head: bytearray | None
    ) -> None:
        while data := await src.read(1 << 16):
            if head is not None and len(head) < self.KEEP:
                head += data[: self.KEEP - len(head)]
            dst.write(data)
            await dst.drain()
        if not dst.is_closing() and dst.can_write_eof():
            dst.write_eof()

    def requests(self, user_id: str) -> list[ParsedRequest]:
        """The AEAD request headers of every connection so far that sent anything."""
        return [request_header(bytes(h), user_id) for h in self.heads if h]


def request_header(head: bytes, user_id: str) -> ParsedRequest:
    """Open a VMess AEAD request (docs/protocols.md 1.5.3): AuthID, sealed length, nonce, header."""
    key = cmd_key_of(uuid.UUID(user_id).bytes)
    auth_id, sealed_length, nonce = head[:16], head[16:34], head[34:42]
    length = open_aead_request_length(key, auth_id, sealed_length, nonce)
    assert length is not None, "not an AEAD request of this user"
    plain = open_aead_request_header(key, auth_id, nonce, head[42 : 42 + length + 16])
    assert plain is not None, "the AEAD request header does not open"
    parsed = parse_request_plaintext(plain)
    assert isinstance(parsed, ParsedRequest) and parsed.checksum_ok
    return parsed


# -- a: sing-box C, raybridge B ---------------------------------------------------------------


def raybridge_server(port: int, user_id: str, *, alter_id: int = 0) -> dict[str, Any]:
    """``templates.server_config`` with the project's rule for a node under test that dials
    out: only loopback reaches freedom, everything else the blackhole. A domain matches no
    IP rule (domainStrategy AsIs: nothing is resolved), so it is refused without a lookup;
    before raybridge knew packetaddr, its magic domain would have gone to DNS."""
    config: dict[str, Any] = server_config(port, user_id, alter_id=alter_id)
    direct = config["outbounds"][0]
    assert direct["protocol"] == "freedom"
    config["outbounds"].append({"tag": "refuse", "protocol": "blackhole"})
    config["routing"] = {
        "rules": [
            {"type": "field", "ip": ["127.0.0.0/8", "::1/128"], "outboundTag": direct["tag"]},
            {"type": "field", "network": "tcp,udp", "outboundTag": "refuse"},
        ]
    }
    return config


SECURITIES = ["auto", "aes-128-gcm", "chacha20-poly1305", "none", "zero"]


def _singbox_client_cases() -> list[Any]:
    cases = []
    for alter_id, mode in ((0, "aead"), (64, "legacy")):
        for security in SECURITIES:
            for padding in (False, True):
                options = {"alter_id": alter_id, "security": security, "global_padding": padding}
                name = f"{mode}-{security}" + ("-padding" if padding else "")
                cases.append(pytest.param(options, id=name))
    for security in ("aes-128-gcm", "chacha20-poly1305"):
        options = {"security": security, "authenticated_length": True}
        cases.append(pytest.param(options, id=f"aead-{security}-authlen"))
    for encoding in ("xudp", "packetaddr"):
        cases.append(pytest.param({"packet_encoding": encoding}, id=f"aead-auto-{encoding}"))
    return cases


@pytest.mark.parametrize("options", _singbox_client_cases())
async def test_singbox_client(
    options: dict[str, Any], echo: EchoServer, start_node: StartNode
) -> None:
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    alter_id = options.get("alter_id", 0)
    await start_node(raybridge_server(b_port, uid, alter_id=alter_id))
    with sing_box(singbox.client_config(c_port, b_port, uid, **options), [c_port]):
        await exercise(c_port, echo.port)


@pytest.mark.parametrize("encoding", ["xudp", "packetaddr"])
async def test_singbox_client_full_cone(encoding: str, start_node: StartNode) -> None:
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    await start_node(raybridge_server(b_port, uid))
    config = singbox.client_config(c_port, b_port, uid, packet_encoding=encoding)
    with sing_box(config, [c_port]):
        await check_full_cone(c_port)


# -- b: raybridge C, sing-box B ---------------------------------------------------------------


def _vmess_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The VMess outbound's ``settings`` in a config from ``templates.client_config``."""
    outbound = config["outbounds"][0]
    assert outbound["protocol"] == "vmess"
    settings: dict[str, Any] = outbound["settings"]
    return settings


def _vmess_user(config: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = _vmess_settings(config)["vnext"][0]["users"][0]
    return user


def _raybridge_client_cases() -> list[Any]:
    cases = []
    for alter_id, mode in ((0, "aead"), (64, "legacy")):
        for security in ["aes-128-gcm", "chacha20-poly1305", "none", "zero", "auto"]:
            options = {"alter_id": alter_id, "security": security}
            cases.append(pytest.param(options, id=f"{mode}-{security}"))
    for security in ("aes-128-gcm", "chacha20-poly1305"):
        options = {"security": security, "experiments": "AuthenticatedLength"}
        cases.append(pytest.param(options, id=f"aead-{security}-authlen"))
    for encoding in ("xudp", "packet"):
        options = {"packetEncoding": encoding}
        cases.append(pytest.param(options, id=f"aead-auto-{encoding}"))
    return cases


def _raybridge_client(
    c_port: int, b_port: int, uid: str, options: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = client_config(
        c_port,
        b_port,
        uid,
        alter_id=options.get("alter_id", 0),
        security=options.get("security", "auto"),
    )
    if "experiments" in options:
        _vmess_user(config)["experiments"] = options["experiments"]
    if "packetEncoding" in options:
        _vmess_settings(config)["packetEncoding"] = options["packetEncoding"]
    return config


def check_wire(requests: list[ParsedRequest], options: dict[str, Any]) -> None:
    """What the AEAD request headers raybridge sent must say for ``options``."""
    assert requests, "no VMess request went through the tap"
    security = options.get("security", "auto")
    tcp = [r for r in requests if r.command == Command.TCP]
    assert tcp, f"no TCP request among {requests}"
    for r in tcp:
        options_byte = Option(r.options)
        if security == "zero":
            # zero: NONE without chunk stream or masking, the body is the raw stream.
            assert r.security_nibble == Security.NONE, r
            assert not options_byte & (Option.CHUNK_STREAM | Option.CHUNK_MASKING), r
        elif security == "none":
            assert r.security_nibble == Security.NONE, r
            assert options_byte & Option.CHUNK_STREAM, r
        elif security == "aes-128-gcm":
            assert r.security_nibble == Security.AES_128_GCM, r
        elif security == "chacha20-poly1305":
            assert r.security_nibble == Security.CHACHA20_POLY1305, r
        else:
            assert r.security_nibble in (Security.AES_128_GCM, Security.CHACHA20_POLY1305), r
        if options.get("experiments") == "AuthenticatedLength":
            assert options_byte & Option.AUTHENTICATED_LENGTH, f"no option A in {r}"
    udp = [r for r in requests if r.command != Command.TCP]
    assert udp, f"no UDP request among {requests}"
    encoding = options.get("packetEncoding")
    for r in udp:
        if encoding == "xudp":
            # XUDP is Mux.Cool (command 3) with an address in each frame.
            assert r.command == Command.MUX, f"not XUDP: {r}"
        elif encoding == "packet":
            assert r.command == Command.UDP, r
            assert r.target is not None and str(r.target.host) == PACKETADDR_DOMAIN, (
                f"not packetaddr: {r}"
            )
        else:
            assert r.command == Command.UDP, r


@pytest.mark.parametrize("options", _raybridge_client_cases())
async def test_raybridge_client(options: dict[str, Any], echo: EchoServer) -> None:
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    alter_id = options.get("alter_id", 0)
    with sing_box(singbox.server_config(b_port, uid, alter_id=alter_id), [b_port]):
        async with Tap(b_port) as tap:
            async with node(_raybridge_client(c_port, tap.port, uid, options)):
                await exercise(c_port, echo.port)
            if alter_id == 0:  # the legacy header is not decoded here
                check_wire(tap.requests(uid), options)


@pytest.mark.parametrize("encoding", ["xudp", "packet"])
async def test_raybridge_client_full_cone(encoding: str) -> None:
    uid = new_uuid()
    b_port, c_port = free_port(), free_port()
    with sing_box(singbox.server_config(b_port, uid), [b_port]):
        config = _raybridge_client(c_port, b_port, uid, {"packetEncoding": encoding})
        async with node(config):
            await check_full_cone(c_port)


# -- c: sing-box C through the seed's reverse chain ----------------------------------------------


@pytest.mark.parametrize(
    "a_kind",
    ["raybridge", pytest.param("v2ray", marks=needs_v2ray)],
    ids=["A=rb", "A=v2"],
)
async def test_singbox_client_reverse_chain(
    a_kind: str, echo: EchoServer, start_node: StartNode, start_peer: StartPeer
) -> None:
    bridge_id, client_id = new_uuid(), new_uuid()
    t_port, b_port, c_port = free_port(), free_port(), free_port()
    await start_node(portal_config(t_port, b_port, bridge_id, client_id))
    await start_peer(a_kind, bridge_config(t_port, bridge_id))
    with sing_box(singbox.client_config(c_port, b_port, client_id), [c_port]):
        await wait_chain(c_port, echo.port)
        await exercise(c_port, echo.port)


# -- the configs themselves --------------------------------------------------------------------


def test_configs_pass_sing_box_check() -> None:
    """Every shape the builders make is accepted by ``sing-box check`` (which refuses
    unknown and removed fields)."""
    uid = new_uuid()
    configs = [singbox.server_config(1080, uid, alter_id=a) for a in (0, 64)]
    for options in _singbox_client_cases():
        configs.append(singbox.client_config(1081, 1080, uid, **options.values[0]))
    configs.append(singbox.client_config(1081, 1080, uid, network="tcp"))
    for config in configs:
        singbox.check(config)


def test_harness_reports_a_refused_config() -> None:
    """sing-box exits at once on a config it refuses; the RuntimeError shows why."""
    port = free_port()
    config = singbox.client_config(port, free_port(), new_uuid())
    config["inbounds"][0]["sniff"] = True  # removed in 1.13: a rule action now
    with pytest.raises(RuntimeError, match="legacy inbound fields"), sing_box(config, [port]):
        pass
