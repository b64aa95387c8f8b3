"""VMess ``detour`` with dynamic ports (issue 14): the server's responses tell each client
to move to a random port of a ``"allocate": {"strategy": "random"}`` inbound, with a user
made for it there, as V2Ray 4.34 does (``proxy/vmess/inbound``, ``app/proxyman/inbound/
dynamic.go``). The live test has V2Ray 4.34 as the client: it follows the command only if
the command is right (checksum, layout), and then connects to a dynamic port with a user it
was given; the test sees connections arrive there, with the bytes echoed end to end."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.node import Node
from raybridge.protocols.vmess.header import encode_switch_account
from raybridge.protocols.vmess.primitives import fnv1a32_pure
from tests.support import (
    LOCAL,
    EchoServer,
    StartNode,
    StartV2Ray,
    client_config,
    free_port,
    new_uuid,
    socks_echo,
)

PORTS_IN_RANGE = 6


def free_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free for TCP on 127.0.0.1."""
    for _ in range(200):
        first = free_port()
        if first + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                held.append(s)
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


async def test_v2ray_client_follows_the_detour(
    start_node: StartNode, start_v2ray: StartV2Ray, echo: EchoServer
) -> None:
    port, socks = free_port(), free_port()
    user = new_uuid()
    ports = free_range(PORTS_IN_RANGE)
    server: Node = await start_node(detour_server(port, user, ports))
    start_v2ray(client_config(socks, port, user), wait=[socks])
    stats = server.dispatcher.stats
    # The first response carries the command; V2Ray then takes its servers in turn.
    for _ in range(6):
        await socks_echo(socks, echo.port, 50_000)
    main = stats.inbound["main"].connections
    dyn = stats.inbound.get("dyn")
    assert dyn is not None and dyn.connections >= 1, (main, stats.inbound)
    assert main >= 1
    open_ports = {inbound.port for inbound in server.inbound("dyn").current}
    assert len(open_ports) == 2 and all(ports[0] <= p <= ports[1] for p in open_ports)


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
