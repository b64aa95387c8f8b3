"""The drain size checked against the real V2Ray 4.34 (docs/protocols.md 1.6 marks it [source]).

A V2Ray VMess inbound that gets 16 unknown bytes keeps reading until ``DrainSize`` bytes in
total have arrived, then hangs up. ``DrainSize`` lies in ``[base + 54, base + 54 + max - 1]``
where ``base`` and ``max`` come from Go's ``math/rand`` seeded by the configured user IDs:
exactly what :meth:`UserValidator.drain_params` computes. So V2Ray must still be waiting
after ``base + 53`` bytes and must have closed after ``base + 54 + max - 1``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import pytest

from raybridge.protocols.vmess import ServerConnection, User, UserValidator
from tests.support import HAVE_V2RAY, LOCAL, StartV2Ray, free_port

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not HAVE_V2RAY, reason="needs /usr/bin/v2ray (apt-get install v2ray)"),
]


def _config(port: int, users: list[User]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "none"},
        "inbounds": [
            {
                "protocol": "vmess",
                "listen": LOCAL,
                "port": port,
                "settings": {"clients": [{"id": str(u.id), "alterId": u.alter_id} for u in users]},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }


def _closed_after(port: int, total: int, wait: float) -> bool:
    """Send ``total`` bytes that match no user; True if V2Ray hangs up within ``wait``."""
    with socket.create_connection((LOCAL, port)) as sock:
        sock.sendall(b"\xa5" * 16 + os.urandom(total - 16))
        sock.settimeout(wait)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


@pytest.mark.parametrize("count", [1, 3])
def test_drain_size_matches_v2ray(count: int, start_v2ray: StartV2Ray) -> None:
    users = [User(uuid.uuid4(), alter_id=i) for i in range(count)]
    validator = UserValidator(users, clock=time.time)
    ServerConnection(validator, urandom=os.urandom)  # fuses the seed, as V2Ray's first conn
    params = validator.drain_params
    assert params is not None
    base, rand_max = params
    low, high = base + 54, base + 54 + rand_max - 1
    port = free_port()
    start_v2ray(_config(port, users), wait=[port])
    for _ in range(2):
        assert not _closed_after(port, low - 1, 0.4), "V2Ray hung up before base + 54"
        assert _closed_after(port, high, 5.0), "V2Ray still reading after the maximum"
