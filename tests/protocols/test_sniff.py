"""The sniffer (V2Ray's app/dispatcher sniffers): HTTP Host, TLS SNI, BitTorrent handshake.

Vectors: ClientHellos made by Python's ``ssl`` (with and without ``server_hostname``), one
from V2Ray's own tests (``common/protocol/tls/sniff_test.go``, a TLS 1.3 draft hello),
hand-written HTTP requests and a BEP 3 handshake. Each is decoded whole, one byte at a time
and followed by more bytes; hypothesis splits input anywhere and feeds arbitrary bytes.
"""

from __future__ import annotations

import ipaddress
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.protocols.sniff import (
    SNIFF_LIMIT,
    SNIFF_WINDOW,
    Sniffed,
    Sniffer,
    SniffError,
    Unsniffed,
    sniff_bittorrent,
    sniff_http,
    sniff_tls,
)
from tests.protocols.test_httpheader import bytewise, split_at


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight of a real TLS client (Python's ssl over memory BIOs)."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = client_hello("www.example.com")
HELLO_ADS = client_hello("ads.example")
HELLO_NO_SNI = client_hello(None)
#: V2Ray's TestTLSHeaders vector "dogfish" (a TLS 1.3 draft ClientHello).
HELLO_V2RAY = bytes.fromhex(
    "16030100e6010000e203038147c166d51bfa4bb5e02ae1a787131d11aac6cefc7fab94c862adc8ab0cddcb"
    "206f9d07f1953e99d8f36d97ee190b061bf4840bb68fccdee2d02d6b0c1f525313000813021303130100ff"
    "010000910000000c000a000007646f6766697368000b000403000102000a000c000a001d0017001e001900"
    "18002300000016000000170000000d001e001c040305030603080708080809080a080b0804080508060401"
    "05010601002b0007067f1c7f1b7f1a002d00020101003300260024001d00202f350cb6900ab7d5c41b2f60"
    "aa567b3f71c8017e86d3b70c291a9e5b383f0172"
)

GET = b"GET /index.html HTTP/1.1\r\nUser-Agent: t\r\nHost: Ads.Example:8080\r\nAccept: */*\r\n\r\n"
POST_LF = b"post /form HTTP/1.0\nhost: localhost\n\nname=value"
BT_HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + bytes(range(20)) + b"-qB4250-" + bytes(12)


def hello_with_name(name: bytes, *, name_type: int = 0) -> bytes:
    """A minimal TLS 1.2 ClientHello with one server_name entry."""
    entry = bytes([name_type]) + struct.pack("!H", len(name)) + name
    sni = struct.pack("!H", len(entry)) + entry
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    body = (
        b"\x03\x03"
        + bytes(32)  # random
        + b"\x00"  # no session id
        + b"\x00\x02\x00\x2f"  # one cipher suite
        + b"\x01\x00"  # null compression
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def feed(chunks: list[bytes]) -> Sniffed | Unsniffed | None:
    sniffer = Sniffer(0.0)
    outcome = None
    for chunk in chunks:
        outcome = sniffer.receive_data(chunk, 0.0)
        if outcome is not None:
            break
    assert sniffer.buffered <= SNIFF_LIMIT
    return outcome


def kind(outcome: Sniffed | Unsniffed | None) -> object:
    """Results compare whole; a refusal compares by its type (its reason lists the decoders
    in the order they gave up, which depends on the split)."""
    return Unsniffed if isinstance(outcome, Unsniffed) else outcome


def three_ways(data: bytes, tail: bytes = b"more bytes after it") -> Sniffed | Unsniffed | None:
    whole = feed([data])
    assert kind(feed(bytewise(data))) == kind(whole)
    assert kind(feed([data + tail])) == kind(whole)
    return whole


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,host",
    [
        (HELLO, "www.example.com"),
        (HELLO_ADS, "ads.example"),
        (HELLO_V2RAY, "dogfish"),
        (hello_with_name(b"Mixed.Case.Example"), "Mixed.Case.Example"),  # not lower-cased
        (hello_with_name(b"10.42.0.243"), ipaddress.ip_address("10.42.0.243")),
    ],
)
def test_tls_server_name(data: bytes, host: object) -> None:
    assert three_ways(data) == Sniffed(protocol="tls", host=host)
    assert sniff_tls(data) == Sniffed(protocol="tls", host=host)


def test_tls_needs_the_whole_first_record() -> None:
    for cut in (0, 1, 4, 5, 6, 40, len(HELLO) - 1):
        assert sniff_tls(HELLO[:cut]) is None


@pytest.mark.parametrize(
    "data,message",
    [
        (HELLO_NO_SNI, "without a server name"),
        (b"\x17\x03\x03\x00\x05hello", "not a TLS handshake record"),
        (b"\x16\x02\x00\x00\x01\x01", "version is not 3.x"),
        (hello_with_name(b"example.com."), "trailing dot"),
        (hello_with_name(b""), "empty domain"),
        (hello_with_name(b"bad name"), "invalid domain"),
        (hello_with_name(b"127.1"), "not a canonical IPv4"),
        (hello_with_name(b"a" * 256), "longer than 255"),
        (hello_with_name(b"example.com", name_type=1), "without a server name"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),  # a ServerHello type
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x09", "does not fill the first record"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "truncated"),
    ],
)
def test_tls_refusals(data: bytes, message: str) -> None:
    with pytest.raises(SniffError, match=message):
        sniff_tls(data)
    assert isinstance(three_ways(data), Unsniffed)


def test_tls_malformed_lengths() -> None:
    good = bytearray(hello_with_name(b"example.com"))
    session_id = 5 + 4 + 2 + 32
    bad_sid = bytearray(good)
    bad_sid[session_id] = 33
    with pytest.raises(SniffError, match="session id"):
        sniff_tls(bad_sid)
    odd = bytearray(good)
    odd[session_id + 2] = 3  # cipher suites of 3 bytes
    with pytest.raises(SniffError, match="odd length"):
        sniff_tls(odd)
    extensions_length = session_id + 1 + 4 + 2
    short = bytearray(good)
    short[extensions_length + 1] -= 1
    with pytest.raises(SniffError, match="extensions do not end"):
        sniff_tls(short)


# -- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,host",
    [
        (GET, "ads.example"),  # lower-cased, port removed
        (POST_LF, "localhost"),  # LF only, lower-case method
        (b"CONNECT x HTTP/1.1\r\nHOST:  example.com  \r\n", "example.com"),
        (b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n", ipaddress.ip_address("127.0.0.1")),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n", ipaddress.ip_address("::1")),
        (b"GET / HTTP/1.1\r\nHost: [::1]\r\n", ipaddress.ip_address("::1")),
        (b"GET / HTTP/1.1\r\nHost: example.com:\r\n", "example.com"),  # empty port: default
        (b"GET / HTTP/1.1\r\nNo colon here\r\nHost: a.example\r\n", "a.example"),
        (b"GET / HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n", "first.example"),
        (b"OPTIONS * HTTP/1.1\r\nX-Host: decoy\r\nHost: real.example\r\n", "real.example"),
        (b"DELETE /x HTTP/1.1\r\nHost: under_score.example\r\n", "under_score.example"),
    ],
)
def test_http_host(data: bytes, host: object) -> None:
    assert three_ways(data) == Sniffed(protocol="http1", host=host)


def test_http_waits_for_the_host_line() -> None:
    head = b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: exa"
    sniffer = Sniffer(0.0)
    for cut in range(len(head) + 1):  # V2Ray would answer "exa" here
        assert sniff_http(head[:cut]) is None
    assert sniffer.receive_data(head, 0.0) is None
    outcome = sniffer.receive_data(b"mple.com\r\n", 0.0)
    assert outcome == Sniffed(protocol="http1", host="example.com")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"X /foo HTTP/1.1\r\nHost: localhost\r\n", "not an HTTP request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "not an HTTP request"),  # the HTTP/2 preface
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP request"),
        # V2Ray's vector: the Host line is in the body, after the blank line.
        (b"GET /foo.php HTTP/1.1\nAccept: */*\n\nHost: localhost\n", "without a Host"),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\nHost: localhost\r\n", "without a Host"),
        (b"GET / HTTP/1.1\r\nHost: \r\n", "empty domain"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n", "invalid domain"),
        (b"GET / HTTP/1.1\r\nHost: 0x7f.1\r\n", "not a canonical IPv4"),
        (b"GET / HTTP/1.1\r\nHost: ::1\r\n", "too many colons"),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n", "no ']'"),
        (b"GET / HTTP/1.1\r\nHost: [::1]x:80\r\n", "after ']'"),
        (b"GET / HTTP/1.1\r\nHost: example.com:99999\r\n", "invalid port"),
        (b"GET / HTTP/1.1\r\nHost: example.com:http\r\n", "invalid port"),
        (b"GET / HTTP/1.1\r\nHost: " + b"a" * 300 + b"\r\n", "longer than 255"),
    ],
)
def test_http_refusals(data: bytes, message: str) -> None:
    with pytest.raises(SniffError, match=message):
        sniff_http(data)
    assert isinstance(three_ways(data), Unsniffed)


def test_http_method_prefixes() -> None:
    # A method is a case-insensitive prefix, as V2Ray checks it; short input waits.
    for data in (b"", b"g", b"Po", b"OPTIO", b"CONNEC"):
        assert sniff_http(data) is None
    with pytest.raises(SniffError):
        sniff_http(b"GX")
    assert sniff_http(b"GETX / HTTP/1.1\r\nHost: x.example\r\n") == Sniffed(
        protocol="http1", host="x.example"
    )


# -- BitTorrent ------------------------------------------------------------------------------


def test_bittorrent_handshake() -> None:
    assert three_ways(BT_HANDSHAKE) == Sniffed(protocol="bittorrent", host=None)
    assert sniff_bittorrent(BT_HANDSHAKE[:20]) == Sniffed(protocol="bittorrent", host=None)
    assert sniff_bittorrent(BT_HANDSHAKE[:19]) is None
    with pytest.raises(SniffError):
        sniff_bittorrent(b"\x13BitTorrent protocoX")
    with pytest.raises(SniffError):
        sniff_bittorrent(b"\x12")


# -- the Sniffer: bounds, time, the end of input ------------------------------------------------


def test_nothing_but_an_answer_in_the_first_2048_bytes() -> None:
    # A request line longer than the limit: no answer, and no more than the limit is kept.
    data = b"GET /" + b"a" * (SNIFF_LIMIT + 100) + b" HTTP/1.1\r\nHost: late.example\r\n"
    sniffer = Sniffer(0.0)
    outcome = sniffer.receive_data(data, 0.0)
    assert outcome == Unsniffed(reason=f"no answer in the first {SNIFF_LIMIT} bytes")
    assert sniffer.buffered == SNIFF_LIMIT
    assert kind(feed(bytewise(data))) is Unsniffed
    # The Host line ending exactly at the limit still counts.
    line = b"GET / HTTP/1.1\r\nHost: edge.example\r\n"
    padded = line[:16] + b"X-Pad: " + b"p" * (SNIFF_LIMIT - len(line) - 9) + b"\r\n" + line[16:]
    assert len(padded) == SNIFF_LIMIT
    assert feed([padded, b"tail"]) == Sniffed(protocol="http1", host="edge.example")


def test_two_windows_from_the_start_when_nothing_arrives() -> None:
    sniffer = Sniffer(10.0)
    assert sniffer.timer() == pytest.approx(10.0 + SNIFF_WINDOW)
    assert sniffer.handle_timer(10.05) is None  # early wake-ups change nothing
    assert sniffer.timer() == pytest.approx(10.0 + SNIFF_WINDOW)
    assert sniffer.handle_timer(10.0 + SNIFF_WINDOW) is None  # the first read timed out
    assert sniffer.timer() == pytest.approx(10.0 + 2 * SNIFF_WINDOW)
    outcome = sniffer.handle_timer(10.0 + 2 * SNIFF_WINDOW)
    assert isinstance(outcome, Unsniffed) and "timed out" in outcome.reason
    assert sniffer.timer() is None
    assert sniffer.receive_data(b"GET / HTTP/1.1\r\nHost: a.example\r\n", 11.0) is outcome


def test_the_second_window_starts_with_the_first_data() -> None:
    sniffer = Sniffer(0.0)
    assert sniffer.receive_data(b"GET / HTTP/1.1\r\n", 0.03) is None
    assert sniffer.timer() == pytest.approx(0.03 + SNIFF_WINDOW)
    assert sniffer.receive_data(b"Accept: */*\r\n", 0.05) is None  # the window stays put
    assert sniffer.timer() == pytest.approx(0.03 + SNIFF_WINDOW)
    assert sniffer.receive_data(b"Host: b.example\r\n", 0.1) == Sniffed(
        protocol="http1", host="b.example"
    )
    assert sniffer.timer() is None
    late = Sniffer(0.0)
    late.handle_timer(SNIFF_WINDOW)  # first window empty; the second runs to 0.2
    assert late.receive_data(b"GET / HTTP/1.1\r\n", 0.15) is None
    assert late.timer() == pytest.approx(2 * SNIFF_WINDOW)
    assert isinstance(late.handle_timer(2 * SNIFF_WINDOW), Unsniffed)


def test_end_of_input_ends_the_sniff() -> None:
    sniffer = Sniffer(0.0)
    assert sniffer.receive_data(b"\x16\x03\x01\x02", 0.0) is None
    outcome = sniffer.receive_eof()
    assert isinstance(outcome, Unsniffed) and "ended after 4 bytes" in outcome.reason
    assert sniffer.receive_eof() is outcome
    assert isinstance(Sniffer(0.0).receive_eof(), Unsniffed)


def test_empty_writes_and_memoryviews() -> None:
    sniffer = Sniffer(0.0)
    assert sniffer.receive_data(b"", 0.05) is None
    assert sniffer.timer() == pytest.approx(SNIFF_WINDOW)  # empty data is no read
    view = memoryview(bytearray(HELLO))
    assert sniffer.receive_data(view[:10], 0.06) is None
    assert sniffer.receive_data(view[10:], 0.06) == Sniffed(protocol="tls", host="www.example.com")


def test_refusal_names_every_decoder() -> None:
    outcome = feed([b"SSH-2.0-OpenSSH_9.2\r\n"])
    assert isinstance(outcome, Unsniffed)
    for name in ("http:", "tls:", "bittorrent:"):
        assert name in outcome.reason


# -- hypothesis --------------------------------------------------------------------------------

VECTORS = [HELLO, HELLO_V2RAY, HELLO_NO_SNI, GET, POST_LF, BT_HANDSHAKE]
PREFIXES = [
    b"",
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: ",
    b"\x16\x03\x01",
    HELLO[:60],
    b"\x13BitTorrent",
]


@st.composite
def inputs(draw: st.DrawFn) -> bytes:
    """Vectors, vectors with bytes flipped or cut, and random bytes after likely starts."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        data = bytearray(draw(st.sampled_from(VECTORS)))
        for _ in range(draw(st.integers(0, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))])
    if choice == 1:
        return draw(st.sampled_from(PREFIXES)) + draw(st.binary(max_size=300))
    return draw(st.binary(max_size=SNIFF_LIMIT + 100))


@settings(max_examples=400)
@given(inputs(), st.lists(st.integers(0, SNIFF_LIMIT + 100), max_size=8))
def test_split_anywhere_gives_the_same_answer(data: bytes, cuts: list[int]) -> None:
    whole = feed([data])
    assert kind(feed(split_at(data, cuts))) == kind(whole)


@settings(max_examples=600)
@given(inputs())
def test_arbitrary_bytes_raise_only_sniff_errors(data: bytes) -> None:
    for decode in (sniff_http, sniff_tls, sniff_bittorrent):
        for buffer in (data, bytearray(data)):
            try:
                result = decode(buffer)
            except SniffError:
                continue
            assert result is None or isinstance(result, Sniffed)
    sniffer = Sniffer(0.0)  # the Sniffer itself never raises
    sniffer.receive_data(data, 0.0)
    sniffer.handle_timer(1.0)
    sniffer.handle_timer(2.0)
    assert sniffer.receive_eof() is not None
