"""VMess ``detour`` with dynamic ports (issue 14): the server's responses tell each client
to move to a random port of a ``"allocate": {"strategy": "random"}`` inbound, with a user
made for it there, as V2Ray 4.34 does (``proxy/vmess/inbound``, ``app/proxyman/inbound/
dynamic.go``). The live tests have V2Ray 4.34 as the client (it follows the command only if
the command is right: checksum, layout; then it connects to a dynamic port with the user it
was given, and the test sees connections arrive there, bytes echoed end to end), raybridge
as the client of a V2Ray 4.34 detour server, and raybridge on both sides."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.node import Node
from raybridge.protocols.vmess.header import (
    SwitchAccount,
    decode_switch_account,
    encode_switch_account,
)
from raybridge.protocols.vmess.primitives import fnv1a32_pure
from tests.support import (
    LOCAL,
    RB,
    V2,
    EchoServer,
    StartNode,
    StartPeer,
    StartV2Ray,
    client_config,
    free_port,
    new_uuid,
    socks_echo,
    until,
)

PORTS_IN_RANGE = 6


def free_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free for TCP on 127.0.0.1, below the usual ephemeral
    range (whose ports outgoing connections take, and leave in TIME_WAIT)."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 32000)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as listeners do
                s.bind((LOCAL, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return first, first + count - 1
    raise RuntimeError("no free port range")


def detour_server(port: int, user: str, ports: tuple[int, int], **default: Any) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "main",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": port,
                "settings": {"clients": [{"id": user}], "detour": {"to": "dyn"}},
            },
            {
                "tag": "dyn",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": f"{ports[0]}-{ports[1]}",
                "allocate": {"strategy": "random", "concurrency": 2, "refresh": 5},
                "settings": {"default": {"alterId": 0, "level": 0, **default}},
            },
        ],
        "outbounds": [
            {"tag": "direct", "protocol": "freedom"},
            {"tag": "no-internet", "protocol": "blackhole"},
        ],
        "routing": {
            "rules": [
                {"type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "direct"},
                {"type": "field", "network": "tcp,udp", "outboundTag": "no-internet"},
            ]
        },
    }


@pytest.mark.parametrize("client_kind", [V2, RB])
async def test_client_follows_the_detour(
    start_node: StartNode, start_peer: StartPeer, echo: EchoServer, client_kind: str
) -> None:
    """raybridge as the detour server; V2Ray 4.34 (or raybridge) as the client."""
    port, socks = free_port(), free_port()
    user = new_uuid()
    ports = free_range(PORTS_IN_RANGE)
    server: Node = await start_node(detour_server(port, user, ports))
    await start_peer(client_kind, client_config(socks, port, user), socks)
    stats = server.dispatcher.stats
    # The first response carries the command; the client then takes its servers in turn.
    for _ in range(6):
        await socks_echo(socks, echo.port, 50_000)
    main = stats.inbound["main"].connections
    dyn = stats.inbound.get("dyn")
    assert dyn is not None and dyn.connections >= 1, (main, stats.inbound)
    assert main >= 1
    open_ports = {inbound.port for inbound in server.inbound("dyn").current}
    assert len(open_ports) == 2 and all(ports[0] <= p <= ports[1] for p in open_ports)


async def test_raybridge_client_follows_a_v2ray_detour(
    tmp_path: Path, start_node: StartNode, start_v2ray: StartV2Ray, echo: EchoServer
) -> None:
    """V2Ray 4.34 as the detour server: its dynamic inbound's traffic leaves by its own
    outbound, which its access log names."""
    port, socks = free_port(), free_port()
    user = new_uuid()
    ports = free_range(PORTS_IN_RANGE)
    log = tmp_path / "access.log"
    config = detour_server(port, user, ports)
    config["log"] = {"loglevel": "warning", "access": str(log)}
    config["outbounds"].append({"tag": "via-dyn", "protocol": "freedom"})
    config["routing"]["rules"].insert(
        0, {"type": "field", "inboundTag": ["dyn"], "ip": ["127.0.0.0/8"], "outboundTag": "via-dyn"}
    )
    start_v2ray(config, wait=[port])
    await start_node(client_config(socks, port, user))
    for _ in range(6):
        await socks_echo(socks, echo.port, 50_000)
    await until(lambda: log.exists() and "[via-dyn]" in log.read_text(), 10, what="via-dyn")


def test_switch_account_layout() -> None:
    """Command 1's data as commands.go lays it out (docs/protocols.md 1.8)."""
    uid = bytes(range(16))
    data = encode_switch_account(port=0x1234, user_id=uid, alter_ids=2, level=3, valid_minutes=4)
    body = b"\x00" + b"\x12\x34" + uid + b"\x00\x02" + b"\x03" + b"\x04"
    assert data == fnv1a32_pure(body).to_bytes(4, "big") + body
    with_host = encode_switch_account(
        port=1, user_id=uid, alter_ids=0, level=0, valid_minutes=300, host="a.b"
    )
    assert with_host[4:8] == b"\x03a.b" and with_host[-1] == 255


# -- the config check -----------------------------------------------------------------------


def config(main_settings: str, dyn: str = "") -> str:
    text = (
        '{"inbounds": [\n'
        '  {"tag": "main", "protocol": "vmess", "listen": "127.0.0.1", "port": 1,\n'
        f'   "settings": {main_settings}}}'
    )
    if dyn:
        text += ",\n  " + dyn
    return text + '],\n "outbounds": [{"protocol": "freedom"}]}\n'


CLIENT = '{"clients": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}], '


def test_detour_to_an_unknown_tag_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Node(load_config_text(config(CLIENT + '"detour": {"to": "nowhere"}}'), "d.json"))
    assert str(info.value) == (
        'd.json:2: inbounds[0].settings.detour.to: no VMess inbound with "allocate": '
        '{"strategy": "random"} has the tag "nowhere"'
    )


def test_detour_to_a_fixed_port_inbound_is_a_config_error() -> None:
    dyn = '{"tag": "dyn", "protocol": "vmess", "listen": "127.0.0.1", "port": "2000-2005"}'
    with pytest.raises(ConfigError, match='has the tag "dyn"'):
        Node(load_config_text(config(CLIENT + '"features": {"detour": {"to": "dyn"}}}', dyn), "d"))


@pytest.mark.parametrize(
    ("allocate", "message"),
    [
        ('{"strategy": "random", "concurrency": 6}', "not enough ports: concurrency 6, 6 in"),
        ('{"strategy": "random", "refresh": 0}', "refresh must be at least 1"),
        ('{"strategy": "external"}', "V2Ray 4.34 refuses to start with it"),
    ],
)
def test_bad_allocate_is_a_config_error(allocate: str, message: str) -> None:
    dyn = (
        '{"tag": "dyn", "protocol": "vmess", "listen": "127.0.0.1", "port": "2000-2005",'
        f' "allocate": {allocate}}}'
    )
    with pytest.raises(ConfigError, match=message):
        load_config_text(config(CLIENT + '"detour": {"to": "dyn"}}', dyn), "d.json")


def test_allocate_random_builds() -> None:
    dyn = (
        '{"tag": "dyn", "protocol": "vmess", "listen": "127.0.0.1", "port": "2000-2005",'
        ' "allocate": {"strategy": "random"}, "settings": {"default": {"alterId": 4}}}'
    )
    loaded = load_config_text(config(CLIENT + '"detour": {"to": "dyn"}}', dyn), "d.json")
    allocate = loaded.inbounds[1].allocate
    assert allocate is not None and (allocate.concurrency, allocate.refresh) == (3, 5)
    node = Node(loaded)
    detour = node.inbound("main").detour  # type: ignore[attr-defined]
    assert detour is not None and detour.alter_id == 4


async def test_dynamic_ports_rotate_and_close(start_node: StartNode) -> None:
    """Each refresh opens a new set among the ports not in use; a set closes two periods
    after it opened (here: by hand), and closing the node closes every port."""
    ports = free_range(PORTS_IN_RANGE)
    server: Node = await start_node(detour_server(free_port(), new_uuid(), ports))
    dyn = server.inbound("dyn")
    first = {inbound.port for inbound in dyn.current}  # type: ignore[attr-defined]
    await dyn.refresh()  # type: ignore[attr-defined]
    second = {inbound.port for inbound in dyn.current}  # type: ignore[attr-defined]
    assert len(first) == len(second) == 2 and not first & second
    for port in first | second:  # the old set still listens
        socket.create_connection((LOCAL, port), timeout=5).close()
    picked = dyn.pick()  # type: ignore[attr-defined]
    assert picked is not None and picked[0].port in second and picked[1] == 5
    await server.close()
    for port in first | second:
        with pytest.raises(OSError):
            socket.create_connection((LOCAL, port), timeout=5).close()


@given(
    port=st.integers(0, 65535),
    uid=st.binary(min_size=16, max_size=16),
    alter=st.integers(0, 65535),
    level=st.integers(0, 255),
    minutes=st.integers(0, 255),
    host=st.text(alphabet="abc.-1", max_size=40),
)
def test_switch_account_round_trip(
    port: int, uid: bytes, alter: int, level: int, minutes: int, host: str
) -> None:
    data = encode_switch_account(
        port=port, user_id=uid, alter_ids=alter, level=level, valid_minutes=minutes, host=host
    )
    assert decode_switch_account(data) == SwitchAccount(host, port, uid, alter, level, minutes)
    assert decode_switch_account(data[:-1]) is None  # checksum (or length) fails


@given(st.binary(max_size=300))
def test_switch_account_decoding_never_raises(data: bytes) -> None:
    found = decode_switch_account(data)
    assert found is None or isinstance(found, SwitchAccount)
