"""The TLS layer (``protocols/tls.py``): two layers wired to each other in memory, no socket."""

from __future__ import annotations

import os
import ssl
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.certs import make_ca, make_leaf
from raybridge.config.stream import TlsCertificate, TlsSettings
from raybridge.protocols.stream import EndReceived, Established, Received
from raybridge.protocols.tls import TlsError, TlsLayer
from raybridge.transport.tls import client_context, server_tls

CA = make_ca()
LEAF = make_leaf(CA, ["example.test", "127.0.0.1"])
OTHER_CA = make_ca("someone else")


def server_settings() -> TlsSettings:
    return TlsSettings(
        certificates=(
            TlsCertificate(certificate=LEAF.cert, key=LEAF.key, usage="encipherment", where="t"),
        )
    )


def client_settings(ca: bytes = CA.cert, **kw: object) -> TlsSettings:
    cert = TlsCertificate(certificate=ca, key=None, usage="verify", where="t")
    return TlsSettings(certificates=(cert,), disable_system_root=True, **kw)  # type: ignore[arg-type]


def pair(
    client: TlsSettings | None = None, name: str = "example.test"
) -> tuple[TlsLayer, TlsLayer]:
    c = TlsLayer(
        client_context(client or client_settings(), "tcp"), server_side=False, server_hostname=name
    )
    s = TlsLayer(server_tls(server_settings(), "tcp").context, server_side=True)
    return c, s


def pump(a: TlsLayer, b: TlsLayer, pieces: int = 0) -> tuple[list[object], list[object]]:
    """Move bytes both ways until neither has anything to send; events seen by each."""
    ea: list[object] = []
    eb: list[object] = []
    for _ in range(20):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        for data, layer, events in ((out_a, b, eb), (out_b, a, ea)):
            if not data:
                continue
            if pieces:
                for i in range(0, len(data), pieces):
                    events += layer.receive_data(data[i : i + pieces])
            else:
                events += layer.receive_data(data)
    return ea, eb


def payload(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Received))


@pytest.mark.parametrize("pieces", [0, 1, 7])
def test_handshake_data_and_close_notify(pieces: int) -> None:
    client, server = pair()
    client.send_data(b"early")  # before the handshake: held, then sent
    ec, es = pump(client, server, pieces)
    assert any(isinstance(e, Established) for e in ec)
    assert any(isinstance(e, Established) for e in es)
    assert payload(es) == b"early"
    info = next(e for e in ec if isinstance(e, Established)).info
    assert info["tls_version"] in ("TLSv1.2", "TLSv1.3") and info["alpn"] == "h2"
    big = os.urandom(300_000)
    server.send_data(big)
    ec, _ = pump(client, server, pieces)
    assert payload(ec) == big
    client.send_eof()
    _, es = pump(client, server, pieces)
    assert EndReceived() in es


def test_untrusted_server_certificate_is_refused() -> None:
    client, server = pair(client_settings(OTHER_CA.cert))
    with pytest.raises(TlsError, match="CERTIFICATE_VERIFY_FAILED"):
        pump(client, server)


def test_wrong_name_is_refused_and_the_right_ca_works() -> None:
    client, server = pair(name="not-example.test")
    with pytest.raises(TlsError, match="CERTIFICATE_VERIFY_FAILED"):
        pump(client, server)
    client, server = pair(name="127.0.0.1")  # an IP SAN
    pump(client, server)
    assert client.established and server.established


def test_allow_insecure_skips_verification() -> None:
    client, server = pair(TlsSettings(allow_insecure=True))
    pump(client, server)
    assert client.established


def test_plaintext_on_a_tls_port_gets_nothing_back() -> None:
    _, server = pair()
    with pytest.raises(TlsError):
        server.receive_data(b"\x00" * 16 + b"VMess, not TLS" * 10)
    with pytest.raises(TlsError):
        pair()[1].receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_eof_during_the_handshake_is_an_error_after_it_an_end() -> None:
    client, server = pair()
    with pytest.raises(TlsError):
        server.receive_eof()
    pump(client, server)
    assert server.receive_eof() == [EndReceived()]


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_tls_error(data: bytes) -> None:
    _, server = pair()
    try:
        events = server.receive_data(data)
    except TlsError:
        return
    assert all(isinstance(e, (Received, EndReceived, Established)) for e in events)


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_split_anywhere(cuts: list[int]) -> None:
    client, server = pair()
    pump(client, server)
    server.send_data(b"x" * 5000)
    wire = server.data_to_send()
    events: list[object] = []
    pos, i = 0, 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        events += client.receive_data(wire[pos : pos + n])
        pos += n
        i += 1
    assert payload(events) == b"x" * 5000


def test_server_picks_its_certificate_by_sni() -> None:
    other = make_leaf(CA, ["other.test"])
    settings = TlsSettings(
        certificates=(
            TlsCertificate(certificate=LEAF.cert, key=LEAF.key, usage="encipherment", where="t"),
            TlsCertificate(certificate=other.cert, key=other.key, usage="encipherment", where="t"),
        )
    )
    for name in ("other.test", "example.test"):
        client = TlsLayer(
            client_context(client_settings(), "tcp"), server_side=False, server_hostname=name
        )
        server = TlsLayer(server_tls(settings, "tcp").context, server_side=True)
        pump(client, server)
        assert client.established  # verified: the certificate for that name was served


def test_issue_certificate_mints_a_leaf_per_name() -> None:
    settings = TlsSettings(
        certificates=(TlsCertificate(certificate=CA.cert, key=CA.key, usage="issue", where="t"),)
    )
    holder = server_tls(settings, "tcp")
    client = TlsLayer(
        client_context(client_settings(), "tcp"), server_side=False, server_hostname="minted.test"
    )
    server = TlsLayer(holder.context, server_side=True)
    pump(client, server)
    assert client.established and "minted.test" in holder.minted


def test_tls_1_1_is_refused() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    _, server = pair()
    with pytest.raises(TlsError):  # this OpenSSL may refuse to offer it at all
        client = TlsLayer(ctx, server_side=False, server_hostname="example.test")
        pump(client, server)
