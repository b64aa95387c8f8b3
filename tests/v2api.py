"""Helpers for the stats and API tests: a node config with V2Ray's API behind a
dokodemo-door, ``v2ctl api`` (the real one, from Debian's v2ray package), a reader of its
protobuf text output, and HandlerService requests built as a V2Ray client builds them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from raybridge.api import messages as pb
from raybridge.protocols.protobuf import Message
from tests.support import LOCAL

V2CTL = shutil.which("v2ctl") or "/usr/bin/v2ctl"
HAVE_V2CTL = os.path.exists(V2CTL)
NEEDS_V2CTL = "needs /usr/bin/v2ctl (apt-get install v2ray)"
LOOPBACK_IP = bytes([127, 0, 0, 1])

ALL_STATS = {
    "statsInboundUplink": True,
    "statsInboundDownlink": True,
    "statsOutboundUplink": True,
    "statsOutboundDownlink": True,
}


def api_config(
    api_port: int,
    inbounds: list[dict[str, Any]],
    *,
    outbounds: list[dict[str, Any]] | None = None,
    rules: list[dict[str, Any]] | None = None,
    services: tuple[str, ...] = ("StatsService", "HandlerService", "LoggerService"),
    stats: bool = True,
    user_stats: bool = True,
    system: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """A node that runs on raybridge and on V2Ray 4.34 alike: the API on ``api_port``
    (dokodemo-door "api-in" routed to the "api" tag), ``inbounds``, and freedom for
    loopback only (everything else to blackhole, as the house rules ask)."""
    config: dict[str, Any] = {
        "log": {"loglevel": "warning"},
        "api": {"tag": "api", "services": list(services)},
        "policy": {
            "levels": {"0": {"statsUserUplink": user_stats, "statsUserDownlink": user_stats}},
            "system": ALL_STATS if system is None else system,
        },
        "inbounds": [
            {
                "tag": "api-in",
                "listen": LOCAL,
                "port": api_port,
                "protocol": "dokodemo-door",
                "settings": {"address": LOCAL},
            },
            *inbounds,
        ],
        "outbounds": outbounds
        or [{"tag": "direct", "protocol": "freedom"}, {"tag": "block", "protocol": "blackhole"}],
        "routing": {
            "rules": [
                {"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"},
                *(rules or []),
                {"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "direct"},
                {"type": "field", "network": "tcp,udp", "outboundTag": "block"},
            ]
        },
    }
    if stats:
        config["stats"] = {}
    return config


async def v2ctl(port: int, method: str, request: str = "") -> tuple[int, str, str]:
    """``v2ctl api --server=127.0.0.1:PORT METHOD REQUEST``: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        V2CTL,
        "api",
        f"--server={LOCAL}:{port}",
        method,
        request,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def v2ctl_ok(port: int, method: str, request: str = "") -> dict[str, Any]:
    code, out, err = await v2ctl(port, method, request)
    assert code == 0, f"v2ctl {method} failed: {err or out}"
    return parse_text(out)


_TOKEN = re.compile(
    r"\s*(?:(?P<key>[A-Za-z_]\w*):\s*(?P<open><)?|(?P<close>>)"
    r'|(?P<value>"(?:[^"\\]|\\.)*"|[^\s>]+))'
)


def parse_text(text: str) -> dict[str, Any]:
    """Protobuf text format (``proto.MarshalTextString``) as a dict; a key seen twice
    gives a list."""
    stack: list[dict[str, Any]] = [{}]
    key: str | None = None
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match, f"cannot read {text[pos : pos + 40]!r}"
        pos = match.end()
        if match["key"]:
            key = match["key"]
            if match["open"]:
                child: dict[str, Any] = {}
                _put(stack[-1], key, child)
                stack.append(child)
                key = None
        elif match["close"]:
            stack.pop()
        else:
            assert key is not None
            raw = match["value"]
            value: Any = raw[1:-1].encode().decode("unicode_escape") if raw[0] == '"' else int(raw)
            _put(stack[-1], key, value)
            key = None
    assert len(stack) == 1, "unbalanced text"
    return stack[0]


def _put(obj: dict[str, Any], key: str, value: Any) -> None:
    if key in obj:
        if not isinstance(obj[key], list):
            obj[key] = [obj[key]]
        obj[key].append(value)
    else:
        obj[key] = value


def stats_of(parsed: dict[str, Any]) -> dict[str, int]:
    """QueryStats' output as name -> value (a value of 0 is left out by the text format)."""
    stats = parsed.get("stat", [])
    if isinstance(stats, dict):
        stats = [stats]
    return {s["name"]: s.get("value", 0) for s in stats}


# -- HandlerService requests, as V2Ray's infra/conf compiles a config ---------------------


def receiver(port: int) -> pb.TypedMessage:
    return pb.TypedMessage.of(
        pb.ReceiverConfig(
            port_range=pb.PortRange(From=port, To=port), listen=pb.IPOrDomain(ip=LOOPBACK_IP)
        )
    )


def add_socks_inbound(tag: str, port: int) -> pb.AddInboundRequest:
    settings = pb.SocksServerConfig(auth_type=0, address=pb.IPOrDomain(ip=LOOPBACK_IP))
    return add_inbound(tag, port, settings)


def vmess_user(user_id: str, email: str, level: int = 0) -> pb.User:
    account = pb.VMessAccount(id=user_id, alter_id=0)
    return pb.User(level=level, email=email, account=pb.TypedMessage.of(account))


def add_user(tag: str, user_id: str, email: str) -> pb.AlterInboundRequest:
    operation = pb.AddUserOperation(user=vmess_user(user_id, email))
    return pb.AlterInboundRequest(tag=tag, operation=pb.TypedMessage.of(operation))


def remove_user(tag: str, email: str) -> pb.AlterInboundRequest:
    operation = pb.RemoveUserOperation(email=email)
    return pb.AlterInboundRequest(tag=tag, operation=pb.TypedMessage.of(operation))


def add_freedom_outbound(tag: str) -> pb.AddOutboundRequest:
    return pb.AddOutboundRequest(
        outbound=pb.OutboundHandlerConfig(
            tag=tag,
            sender_settings=pb.TypedMessage.of(pb.SenderConfig()),
            proxy_settings=pb.TypedMessage.of(pb.FreedomConfig()),
        )
    )


async def until_true(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, *, what: str = "it"
) -> None:
    """``support.until`` for a coroutine predicate (a call to the API): polls with a
    deadline against hangs, not a timing assert."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"{what}: not true within {timeout:g} s"
        await asyncio.sleep(0.05)


def door_inbound(port: int, target_port: int, tag: str = "door") -> dict[str, Any]:
    """A dokodemo-door on 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""
    return {
        "tag": tag,
        "listen": LOCAL,
        "port": port,
        "protocol": "dokodemo-door",
        "settings": {"address": LOCAL, "port": target_port},
    }


def add_inbound(tag: str, port: int, settings: Message) -> pb.AddInboundRequest:
    """AddInbound for an inbound with ``settings`` (a proxy's config message) on
    127.0.0.1:``port``."""
    return pb.AddInboundRequest(
        inbound=pb.InboundHandlerConfig(
            tag=tag, receiver_settings=receiver(port), proxy_settings=pb.TypedMessage.of(settings)
        )
    )


def vmess_inbound(port: int, user_id: str, email: str, tag: str = "vmess-in") -> dict[str, Any]:
    """A VMess inbound on 127.0.0.1:``port`` with one AEAD user."""
    return {
        "tag": tag,
        "listen": LOCAL,
        "port": port,
        "protocol": "vmess",
        "settings": {"clients": [{"id": user_id, "alterId": 0, "email": email}]},
    }
