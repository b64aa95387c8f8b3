"""Logs no input can forge (issue 11, findings 4 and 9): strict addresses from the wire,
control characters escaped in the text format, and no VMess UUID in any line."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge import log
from raybridge.address import SOCKS_ADDRESS, VMESS_ADDRESS, decode_domain
from raybridge.errors import ProtocolError
from tests.support import (
    LOCAL,
    EchoServer,
    client_config,
    free_port,
    new_uuid,
    node,
    server_config,
    socks_echo,
)

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d "


class AddressError(ProtocolError):
    pass


@contextlib.contextmanager
def captured(level: str = "info", fmt: str = "text") -> Iterator[io.StringIO]:
    """Both logs to a buffer, as ``raybridge run`` sets them up; restored afterwards."""
    stream = io.StringIO()
    log.setup(access="", error="", level=level, fmt=fmt, stream=stream)
    try:
        yield stream
    finally:
        log.setup(access=None, error=None, stream=sys.stderr)
        for name in (log.ERROR_LOGGER, log.ACCESS_LOGGER):
            logger = logging.getLogger(name)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)


# -- addresses from the wire ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[::1%\n2026/01/01 00:00:00 [Error] forged]",
        b"[::1%\x1b[2J]",
        b"[fe80::1%eth0]",
        b"::1%\r",
        b"1.2.3.4%lo",
        b"[::1%25]",
    ],
)
def test_scope_ids_are_refused(raw: bytes) -> None:
    with pytest.raises(AddressError, match="invalid"):
        decode_domain(raw, AddressError)


@pytest.mark.parametrize(
    "raw",
    [
        b"127.1",
        b"0x7f.1",
        b"0177.0.0.1",
        b"2130706433",
        b"0x7f000001",
        b"0X7F.0.0.1",
        b"127.0.0.01",
        b"127.0.0.1.",
        b"127.1.",
        b"127.0.0.1..",
        b"example.123",
        b"a.0x1f",
    ],
)
def test_non_canonical_ipv4_forms_are_refused(raw: bytes) -> None:
    with pytest.raises(AddressError, match="not a canonical IPv4 address"):
        decode_domain(raw, AddressError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"127.0.0.1", ipaddress.IPv4Address("127.0.0.1")),
        (b"[::1]", ipaddress.IPv6Address("::1")),
        (b"[::ffff:10.0.0.1]", ipaddress.IPv4Address("10.0.0.1")),
        (b"1e100.net", "1e100.net"),
        (b"10.0.0.1.nip.io", "10.0.0.1.nip.io"),
        (b"example.com.", "example.com."),
        (b"0x.example", "0x.example"),
    ],
)
def test_canonical_addresses_and_domains_pass(raw: bytes, expected: object) -> None:
    assert decode_domain(raw, AddressError) == expected


#: IP literals with a scope id of any text (how the red team forged a line), and their kin.
scoped = st.tuples(
    st.ip_addresses().map(str), st.sampled_from(["%", ""]), st.text(max_size=8), st.booleans()
).map(lambda t: (f"[{t[0]}{t[1]}{t[2]}]" if t[3] else f"{t[0]}{t[1]}{t[2]}").encode())


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), scoped))
def test_arbitrary_domain_bytes_raise_only_our_error_and_decode_clean(raw: bytes) -> None:
    try:
        host = decode_domain(raw, AddressError)
    except AddressError:
        return
    if isinstance(host, str):
        assert re.fullmatch(r"[0-9A-Za-z._-]+", host)
    else:
        assert getattr(host, "scope_id", None) is None
    assert CONTROL.search(str(host)) is None


@settings(max_examples=500, deadline=None)
@given(
    prefix=st.sampled_from([b"\x00\x50\x02", b"\x03"]),  # VMess domain / SOCKS domain ATYP
    name=st.one_of(
        st.binary(max_size=60),
        scoped,
        st.text("[]0123456789abcdefx:.%\n\r\x1b", max_size=40).map(str.encode),
    ),
    tail=st.binary(max_size=4),
)
def test_address_codecs_never_decode_a_control_character(
    prefix: bytes, name: bytes, tail: bytes
) -> None:
    codec = VMESS_ADDRESS if len(prefix) == 3 else SOCKS_ADDRESS
    data = prefix + bytes((len(name),)) + name + tail
    try:
        decoded = codec.decode(data, 0, AddressError)
    except AddressError:
        return
    if decoded is not None:
        assert CONTROL.search(str(decoded[0])) is None


# -- the formatters ---------------------------------------------------------------------------

HOSTILE = "a\nb\rc\x1b[31md\x00e\x7ff\x85g\u2028h\tend"


def test_text_format_escapes_control_characters() -> None:
    record = logging.LogRecord(
        "raybridge.proxy", logging.WARNING, "", 0, "bad %s", (HOSTILE,), None
    )
    line = log.TextFormatter(access=False).format(record)
    assert "\n" not in line and CONTROL.search(line) is None
    assert line.endswith(r"bad a\x0ab\x0dc\x1b[31md\x00e\x7ff\x85g\u2028h\x09end")
    access = log.TextFormatter(access=True).format(record)
    assert CONTROL.search(access) is None


def test_text_format_indents_traceback_lines() -> None:
    try:
        raise ValueError("boom\n2026/01/01 00:00:00 [Error] forged")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("raybridge", logging.ERROR, "", 0, "failed", (), exc_info)
    lines = log.TextFormatter(access=False).format(record).split("\n")
    assert len(lines) > 2 and re.match(STAMP, lines[0])
    assert all(line.startswith("    ") for line in lines[1:])


def test_json_format_is_one_line_without_control_characters() -> None:
    record = logging.LogRecord("raybridge", logging.WARNING, "", 0, "bad %s", (HOSTILE,), None)
    line = log.JsonFormatter(access=False).format(record)
    assert CONTROL.search(line) is None
    assert json.loads(line)["message"] == "bad " + HOSTILE


async def test_forged_address_does_not_forge_a_log_line() -> None:
    """The red-team request: a SOCKS domain ``[::1%\\n<forged line>]`` used to be parsed
    as an IPv6 address with that scope id and written, newline and all, to both logs."""
    forged = "2026/01/01 00:00:00 [Error] core: forged"
    raw = f"[::1%\n{forged}\x1b[2J]".encode()

    with captured(level="debug") as stream:
        s_port = free_port()
        conf = {
            "inbounds": [{"tag": "in", "protocol": "socks", "listen": LOCAL, "port": s_port}],
            "outbounds": [{"protocol": "freedom"}],
        }
        async with node(conf):
            reader, writer = await asyncio.open_connection(LOCAL, s_port)
            writer.write(b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(raw),)) + raw + b"\x00\x50")
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 10)  # refused: the server closes
            writer.close()
    lines = stream.getvalue().splitlines()
    assert any("invalid address" in line for line in lines), lines
    assert not any(line.startswith(forged) for line in lines)
    assert all(re.match(STAMP, line) for line in lines)
    assert "\x1b" not in stream.getvalue()


# -- no UUID in any line ------------------------------------------------------------------------


def test_user_label() -> None:
    uid = "B831381D-6324-4d53-ad4f-8cda48b30811"
    digest = hashlib.sha256(uid.lower().encode()).hexdigest()[:8]
    assert log.user_label("", uid) == f"user#{digest}"
    assert log.user_label("a@b", uid) == "a@b"


async def test_debug_log_names_a_user_without_email_by_hash_not_uuid() -> None:
    """At debug, every VMess request used to log the UUID of a user without email (the
    user's secret)."""
    uid = new_uuid()

    with captured(level="debug") as stream:
        b_port, c_port = free_port(), free_port()
        async with EchoServer() as echo, node(server_config(b_port, uid)):
            async with node(client_config(c_port, b_port, uid)):
                await socks_echo(c_port, echo.port, 1000)
    text = stream.getvalue()
    assert log.user_label("", uid) in text  # the request line is there...
    assert uid not in text and uid.replace("-", "") not in text  # ...without the secret
