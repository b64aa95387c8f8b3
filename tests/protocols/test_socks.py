"""SOCKS 4/4a/5 codec: V2Ray's reply bytes (docs/protocols.md 5.1), three-way decoding, fuzzing."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.address import Destination, Host, Network, tcp, udp
from raybridge.errors import LocalProtocolError
from raybridge.protocols.socks import (
    SocksClient,
    SocksCommand,
    SocksError,
    SocksRequest,
    SocksServer,
    decode_udp_datagram,
    encode_udp_datagram,
)

ACCOUNTS = {"alice": "s3cret", "bob": ""}
LISTEN = tcp("127.0.0.1", 1080)
ZERO_V5_TAIL = bytes.fromhex("0001000000000000")  # RSV ATYP=1 0.0.0.0 port 0

GREETING_NOAUTH = bytes.fromhex("050100")
GREETING_PASSWORD = bytes.fromhex("050102")
AUTH_ALICE = b"\x01\x05alice\x06s3cret"
CONNECT_IPV4 = bytes.fromhex("05010001010203040050")  # 1.2.3.4:80
CONNECT_DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
CONNECT_IPV6 = bytes.fromhex("0501000420010db80000000000000000000000011f90")


def feed_whole(server: SocksServer, data: bytes) -> tuple[SocksRequest | None, bytes]:
    return server.receive_data(data), b""


def feed_bytewise(server: SocksServer, data: bytes) -> tuple[SocksRequest | None, bytes]:
    """One byte at a time, stopping at the request; returns it and the bytes not fed."""
    for i in range(len(data)):
        request = server.receive_data(data[i : i + 1])
        if request is not None:
            return request, data[i + 1 :]
    return None, b""


FEEDERS = [feed_whole, feed_bytewise]


def three_ways(
    make: Callable[[], SocksServer], data: bytes
) -> list[tuple[SocksServer, SocksRequest]]:
    """Decode `data` whole, one byte at a time and with trailing bytes; all must agree."""
    results = []
    for feed in FEEDERS:
        for trailing in (b"", b"\x05\x01payload\x00"):
            server = make()
            request, unfed = feed(server, data + trailing)
            assert request is not None
            assert server.trailing + unfed == trailing
            results.append((server, request))
    assert len({request for _, request in results}) == 1
    return results


# --- SOCKS5 ------------------------------------------------------------------------------


def test_noauth_connect_replies_like_v2ray() -> None:
    for server, request in three_ways(SocksServer, GREETING_NOAUTH + CONNECT_IPV4):
        assert request == SocksRequest(
            command=SocksCommand.CONNECT, target=tcp("1.2.3.4", 80), user=None, version=5
        )
        assert server.data_to_send() == b"\x05\x00"
        # docs/protocols.md 5.1 [interop]: 05 00 00 01 7f 00 00 01 <port>
        assert server.accept(LISTEN) == bytes.fromhex("050000017f0000010438")


@pytest.mark.parametrize(
    ("request_bytes", "target"),
    [
        (CONNECT_DOMAIN, tcp("example.com", 443)),
        (CONNECT_IPV6, tcp("2001:db8::1", 8080)),
        # IP literals in domain form become IPs (V2Ray's address parser)
        (b"\x05\x01\x00\x03\x0810.0.0.1\x00\x16", tcp("10.0.0.1", 22)),
        (b"\x05\x01\x00\x03\x05[::1]\x00\x16", tcp("::1", 22)),
        # Tor RESOLVE / RESOLVE_PTR are treated as CONNECT; VER and RSV are not checked
        (b"\x05\xf0\x00\x01\x01\x02\x03\x04\x00\x50", tcp("1.2.3.4", 80)),
        (b"\x00\xf1\x07\x01\x01\x02\x03\x04\x00\x50", tcp("1.2.3.4", 80)),
    ],
)
def test_connect_targets(request_bytes: bytes, target: Destination) -> None:
    for _, request in three_ways(SocksServer, GREETING_NOAUTH + request_bytes):
        assert request.command is SocksCommand.CONNECT
        assert request.target == target


def test_greeting_offering_several_methods() -> None:
    server = SocksServer()
    assert server.receive_data(bytes.fromhex("0503020100") + CONNECT_IPV4) is not None
    assert server.data_to_send() == b"\x05\x00"


@pytest.mark.parametrize(
    ("accounts", "greeting"),
    [(None, bytes.fromhex("050102")), (ACCOUNTS, bytes.fromhex("050100")), (None, b"\x05\x00")],
)
def test_no_acceptable_method(accounts: dict[str, str] | None, greeting: bytes) -> None:
    server = SocksServer(accounts=accounts)
    with pytest.raises(SocksError):
        server.receive_data(greeting + b"junk")
    assert server.data_to_send() == b"\x05\xff"
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


@pytest.mark.parametrize("accounts", [None, {}])
def test_password_required_without_accounts_refuses_everyone(
    accounts: dict[str, str] | None,
) -> None:
    """``"auth": "password"`` with no accounts: never fall back to no authentication
    (V2Ray answers 05 FF to a client that offers only "no authentication")."""
    server = SocksServer(accounts=accounts, password=True)
    with pytest.raises(SocksError):
        server.receive_data(GREETING_NOAUTH + CONNECT_IPV4)
    assert server.data_to_send() == b"\x05\xff"
    server = SocksServer(accounts=accounts, password=True)
    with pytest.raises(SocksError):
        server.receive_data(GREETING_PASSWORD + b"\x01\x00\x00" + CONNECT_IPV4)
    assert server.data_to_send() == b"\x05\x02\x01\xff"
    server = SocksServer(accounts=accounts, password=True)
    with pytest.raises(SocksError):  # SOCKS4 has no authentication at all
        server.receive_data(bytes.fromhex("040100500102030400"))


def test_password_auth() -> None:
    data = GREETING_PASSWORD + AUTH_ALICE + CONNECT_DOMAIN
    for server, request in three_ways(lambda: SocksServer(accounts=ACCOUNTS), data):
        assert request.user == "alice"
        assert request.target == tcp("example.com", 443)
        assert server.data_to_send() == b"\x05\x02\x01\x00"


def test_password_auth_ignores_version_byte_and_allows_empty_password() -> None:
    server = SocksServer(accounts=ACCOUNTS)
    request = server.receive_data(GREETING_PASSWORD + b"\x07\x03bob\x00" + CONNECT_IPV4)
    assert request is not None and request.user == "bob"


@pytest.mark.parametrize(
    "auth", [b"\x01\x05alice\x06s3creT", b"\x01\x05alicx\x06s3cret", b"\x01\x00\x00"]
)
def test_password_rejected(auth: bytes) -> None:
    server = SocksServer(accounts=ACCOUNTS)
    with pytest.raises(SocksError):
        server.receive_data(GREETING_PASSWORD + auth + CONNECT_IPV4)
    assert server.data_to_send() == b"\x05\x02\x01\xff"


@pytest.mark.parametrize("cmd", [2, 3, 4, 0, 0xEF, 0xFF])
def test_unsupported_commands_get_0x07(cmd: int) -> None:
    server = SocksServer()
    # V2Ray judges the command from the first three bytes, before the address arrives.
    with pytest.raises(SocksError):
        server.receive_data(GREETING_NOAUTH + bytes((5, cmd, 0)))
    assert server.data_to_send() == b"\x05\x00" + b"\x05\x07" + ZERO_V5_TAIL


def test_udp_associate_when_enabled() -> None:
    data = GREETING_NOAUTH + bytes.fromhex("05030001000000000000")
    for server, request in three_ways(lambda: SocksServer(udp=True), data):
        assert request.command is SocksCommand.UDP_ASSOCIATE
        assert request.target == udp("0.0.0.0", 0)
        server.data_to_send()
        assert server.accept(udp("127.0.0.1", 1080)) == bytes.fromhex("050000017f0000010438")


def test_accept_and_reject_flush_queued_output_first() -> None:
    server = SocksServer(accounts=ACCOUNTS)
    assert server.receive_data(GREETING_PASSWORD + AUTH_ALICE + CONNECT_IPV4) is not None
    assert server.accept(tcp("::1", 1)) == (
        b"\x05\x02\x01\x00" + b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x01"
    )
    assert server.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        server.accept(LISTEN)

    server = SocksServer()
    server.receive_data(GREETING_NOAUTH + CONNECT_IPV4)
    assert server.reject(5) == b"\x05\x00" + b"\x05\x05" + ZERO_V5_TAIL
    with pytest.raises(LocalProtocolError):
        server.reject()


def test_accept_before_request_is_a_local_error() -> None:
    server = SocksServer()
    with pytest.raises(LocalProtocolError):
        server.accept(LISTEN)
    server.receive_data(GREETING_NOAUTH)
    with pytest.raises(LocalProtocolError):
        server.reject()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x05\x01\x00\x02\x01\x02\x03\x04\x00\x50",  # ATYP 2 is VMess's domain, not SOCKS's
        b"\x05\x01\x00\x03\x00\x00\x50",  # empty domain
        b"\x05\x01\x00\x03\x0bexa mple.com\x00\x50",  # invalid character
        b"\x05\x01\x00\x03\x04\xff\xfe\xfd\xfc\x00\x50",
    ],
)
def test_bad_addresses(request_bytes: bytes) -> None:
    for feed in FEEDERS:
        server = SocksServer()
        with pytest.raises(SocksError):
            feed(server, GREETING_NOAUTH + request_bytes)


def test_unknown_version_closes_without_reply() -> None:
    server = SocksServer()
    with pytest.raises(SocksError):
        server.receive_data(b"GET / HTTP/1.1\r\n")
    assert server.data_to_send() == b""


def test_incomplete_handshake_needs_more() -> None:
    server = SocksServer(accounts=ACCOUNTS)
    data = GREETING_PASSWORD + AUTH_ALICE + CONNECT_DOMAIN
    assert server.receive_data(data[:-1]) is None
    assert server.data_to_send() == b"\x05\x02\x01\x00"
    assert server.request is None


# --- SOCKS4 / 4a -------------------------------------------------------------------------

SOCKS4_GRANTED = bytes.fromhex("005a000000000000")
SOCKS4_REJECTED = bytes.fromhex("005b000000000000")


def test_socks4_connect() -> None:
    data = bytes.fromhex("0401005001020304") + b"someuser\x00"
    for server, request in three_ways(SocksServer, data):
        assert request == SocksRequest(
            command=SocksCommand.CONNECT, target=tcp("1.2.3.4", 80), user=None, version=4
        )
        assert server.data_to_send() == b""
        assert server.accept(LISTEN) == SOCKS4_GRANTED  # V2Ray: always 0.0.0.0:0


def test_socks4a_domain() -> None:
    data = bytes.fromhex("040101bb00000001") + b"\x00example.com\x00"
    for server, request in three_ways(SocksServer, data):
        assert request.target == tcp("example.com", 443)
        assert request.version == 4
        assert server.reject(3) == SOCKS4_REJECTED


@pytest.mark.parametrize(
    ("kwargs", "data"),
    [
        ({"accounts": ACCOUNTS}, bytes.fromhex("04010050010203040000")),  # no SOCKS4 with auth
        ({"socks4": False}, bytes.fromhex("04010050010203040000")),
        ({}, bytes.fromhex("04020050010203040000")),  # BIND
        ({}, bytes.fromhex("04f00050010203040000")),  # Tor commands are SOCKS5-only
    ],
)
def test_socks4_rejected(kwargs: dict[str, object], data: bytes) -> None:
    server = SocksServer(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(SocksError):
        server.receive_data(data)
    assert server.data_to_send() == SOCKS4_REJECTED


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("0401005000000001") + b"\x00bad domain\x00",
        bytes.fromhex("0401005000000001") + b"\x00\x00",
        bytes.fromhex("0401005000000001") + b"\x00" + b"a" * 256 + b"\x00",
    ],
)
def test_socks4a_bad_domain(data: bytes) -> None:
    with pytest.raises(SocksError):
        SocksServer().receive_data(data)


def test_handshake_buffer_is_capped() -> None:
    # A SOCKS4 user id that never ends must not grow memory without bound.
    server = SocksServer()
    server.receive_data(bytes.fromhex("0401005001020304"))
    with pytest.raises(SocksError, match="too long"):
        for _ in range(100):
            server.receive_data(b"u" * 100)
    # Same with one byte at a time (compaction must not hide the growth).
    server = SocksServer()
    data = bytes.fromhex("0401005000000001") + b"\x00" + b"d" * 2000
    with pytest.raises(SocksError):
        feed_bytewise(server, data)


# --- hypothesis: fuzzing and round trips -------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=80),
    prefix=st.sampled_from([b"", b"\x05", b"\x05\x01\x00", b"\x05\x01\x02\x01", b"\x04\x01"]),
    cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=4),
    accounts=st.sampled_from([None, ACCOUNTS]),
    udp_on=st.booleans(),
)
def test_arbitrary_bytes_raise_only_socks_error(
    data: bytes, prefix: bytes, cuts: list[int], accounts: dict[str, str] | None, udp_on: bool
) -> None:
    server = SocksServer(accounts=accounts, udp=udp_on)
    blob = prefix + data
    points = sorted({min(c, len(blob)) for c in cuts} | {0, len(blob)})
    try:
        for start, stop in itertools.pairwise(points):
            if server.receive_data(blob[start:stop]) is not None:
                break
    except SocksError:
        pass
    server.data_to_send()


def _not_v4_mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)


def hosts() -> st.SearchStrategy[Host]:
    label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
    domain = (
        st.lists(label, min_size=1, max_size=4)
        .map(".".join)
        .filter(lambda d: not d[0].isdigit())
        # A numeric last label reads as an IPv4 address: refused from the wire (address.py).
        .filter(lambda d: re.fullmatch(r"[0-9]+|0x[0-9a-f]*", d.rpartition(".")[2]) is None)
    )
    return st.one_of(
        st.ip_addresses(v=4),
        st.ip_addresses(v=6).filter(_not_v4_mapped),  # those decode as IPv4
        domain,
    )


@st.composite
def destinations(draw: st.DrawFn, network: Network = Network.TCP) -> Destination:
    return Destination(network, draw(hosts()), draw(st.integers(0, 65535)))


@settings(max_examples=200, deadline=None)
@given(
    target=destinations(),
    bind=destinations(),
    auth=st.booleans(),
    udp_assoc=st.booleans(),
    payload=st.binary(max_size=20),
    chunk=st.integers(1, 40),
)
def test_client_server_round_trip(
    target: Destination,
    bind: Destination,
    auth: bool,
    udp_assoc: bool,
    payload: bytes,
    chunk: int,
) -> None:
    command = SocksCommand.UDP_ASSOCIATE if udp_assoc else SocksCommand.CONNECT
    creds = {"username": "alice", "password": "s3cret"} if auth else {}
    client = SocksClient(target, command=command, **creds)
    server = SocksServer(accounts=ACCOUNTS if auth else None, udp=True)

    def deliver(to: SocksServer | SocksClient, data: bytes) -> tuple[object, bytes]:
        """Feed `data` in `chunk`-sized pieces; stop at a result, returning what is left."""
        result: object = None
        for i in range(0, len(data), chunk):
            result = to.receive_data(data[i : i + chunk])
            finished = to.done if isinstance(to, SocksClient) else result is not None
            if finished:
                return result, data[i + chunk :]
        return result, b""

    assert deliver(server, client.initial_bytes()) == (None, b"")
    to_server, _ = deliver(client, server.data_to_send())
    if auth:
        assert deliver(server, to_server) == (None, b"")  # type: ignore[arg-type]
        to_server, _ = deliver(client, server.data_to_send())
    assert isinstance(to_server, bytes)
    request, rest = deliver(server, to_server + payload)
    assert isinstance(request, SocksRequest)
    assert request.command is command
    assert request.user == ("alice" if auth else None)
    assert request.target.host == target.host and request.target.port == target.port
    assert server.trailing + rest == payload

    reply = server.accept(bind)
    assert deliver(client, reply + b"echo")[0] == b""
    assert client.done
    assert client.bound == Destination(
        Network.UDP if udp_assoc else Network.TCP, bind.host, bind.port
    )
    assert client.trailing == b"echo"[: len(client.trailing)]


def test_client_errors() -> None:
    client = SocksClient(tcp("example.com", 80))
    assert client.initial_bytes() == b"\x05\x01\x00"
    with pytest.raises(SocksError):
        client.receive_data(b"\x05\xff")
    client = SocksClient(tcp("example.com", 80), username="a", password="b")
    assert client.initial_bytes() == b"\x05\x01\x02"
    assert client.receive_data(b"\x05\x02") == b"\x01\x01a\x01b"
    with pytest.raises(SocksError):
        client.receive_data(b"\x01\xff")
    client = SocksClient(tcp("1.2.3.4", 80))
    assert client.receive_data(b"\x05\x00") == CONNECT_IPV4
    with pytest.raises(SocksError, match="rejected"):
        client.receive_data(b"\x05\x07" + ZERO_V5_TAIL)
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        SocksClient(tcp("x" * 256, 80))
    with pytest.raises(LocalProtocolError):
        SocksClient(tcp("x", 80), username="only")


# --- UDP datagrams -----------------------------------------------------------------------


def test_udp_datagram_bytes() -> None:
    datagram = bytes.fromhex("00000001080808080035") + b"query"
    destination, payload = decode_udp_datagram(datagram)
    assert destination == udp("8.8.8.8", 53)
    assert isinstance(payload, memoryview) and payload.tobytes() == b"query"
    assert encode_udp_datagram(destination, b"query") == datagram
    domain = b"\x00\x00\x00\x03\x0bexample.com\x00\x35" + b"x"
    assert decode_udp_datagram(memoryview(domain))[0] == udp("example.com", 53)
    assert encode_udp_datagram(udp("example.com", 53), b"x") == domain


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00\x00\x00\x01",
        bytes.fromhex("00000101080808080035") + b"frag",  # FRAG != 0
        bytes.fromhex("00000001080808080035"),  # empty payload
        bytes.fromhex("00000001080808"),  # truncated address
        bytes.fromhex("00000009080808080035") + b"x",  # bad ATYP
    ],
)
def test_bad_udp_datagrams(datagram: bytes) -> None:
    with pytest.raises(SocksError):
        decode_udp_datagram(datagram)


@settings(max_examples=200, deadline=None)
@given(destination=destinations(Network.UDP), payload=st.binary(min_size=1, max_size=64))
def test_udp_round_trip(destination: Destination, payload: bytes) -> None:
    decoded, data = decode_udp_datagram(encode_udp_datagram(destination, payload))
    assert decoded == destination
    assert data == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_udp_arbitrary_bytes_raise_only_socks_error(datagram: bytes) -> None:
    with contextlib.suppress(SocksError):
        decode_udp_datagram(datagram)
