"""Regression guards for the Python work per new connection: the number of Python function
calls (``sys.setprofile`` "call" events, generator resumptions included) that the sans-IO
codecs make for one whole exchange. A count, not a time: the same on a busy machine.

The budgets leave headroom over what the code needs now (VMess: 169 calls, SOCKS: 16 on
CPython 3.11) and sit well under what it needed before the per-connection work was cut
(292 and 21): an accidental slow path (an enum call, a generator, a wrapper function per
key derivation) shows up here. bench/calls.py counts the same for whole nodes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from raybridge.address import Destination, Network
from raybridge.protocols.socks import SocksServer
from raybridge.protocols.vmess import Command, Security, UserValidator
from tests.protocols.test_vmess_support import SPEC_USER, Clock, make_pair

VMESS_BUDGET = 200
SOCKS_BUDGET = 20


def count_calls(fn: Callable[[], object]) -> int:
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_vmess_exchange_call_budget() -> None:
    validator = UserValidator([SPEC_USER], clock=Clock())

    def exchange() -> None:
        # What a VMess client and server do for one connection that echoes one byte:
        # request header with the first data, response, both ends' EOS chunks.
        client, server, _ = make_pair(Security.AES_128_GCM, Command.TCP, validator=validator)
        assert server.receive_data(client.header() + client.send(b"E"))
        assert client.receive_data(server.send(b"E"))
        assert server.receive_data(client.send_eof())
        assert client.receive_data(server.send_eof())

    exchange()  # first use: caches filled
    calls = min(count_calls(exchange) for _ in range(3))
    assert calls <= VMESS_BUDGET, f"{calls} Python calls for one VMess exchange"


def test_socks_handshake_call_budget() -> None:
    request = (
        b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 80)
    )
    bind = Destination(Network.TCP, ipaddress.IPv4Address("127.0.0.1"), 1080)

    def handshake() -> None:
        codec = SocksServer(udp=True)
        assert codec.receive_data(request) is not None
        assert codec.accept(bind)

    handshake()
    calls = min(count_calls(handshake) for _ in range(3))
    assert calls <= SOCKS_BUDGET, f"{calls} Python calls for one SOCKS handshake"
