"""V2Ray's traffic counters (``stats``, ``policy``) read with the real ``v2ctl api``,
raybridge beside V2Ray 4.34 running the same config and moving the same bytes.

Also: the counters as units (a user counter follows live sessions, reset), each session's
payload counted once, and the config's ``stats``/``api``/``policy.system``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.link import Session
from raybridge.stats import Counters, Stats
from tests.support import (
    HAVE_V2RAY,
    LOCAL,
    RB,
    V2,
    EchoServer,
    StartNode,
    StartPeer,
    client_config,
    free_port,
    new_uuid,
    socks_echo,
    until,
)
from tests.v2api import (
    HAVE_V2CTL,
    NEEDS_V2CTL,
    api_config,
    door_inbound,
    stats_of,
    until_true,
    v2ctl,
    v2ctl_ok,
    vmess_inbound,
)

NEEDS_V2RAY = "needs /usr/bin/v2ray (apt-get install v2ray)"

needs_v2ctl = pytest.mark.skipif(not HAVE_V2CTL, reason=NEEDS_V2CTL)
EMAIL = "user@test"
SYS_FIELDS = {
    "NumGoroutine",
    "NumGC",
    "Alloc",
    "TotalAlloc",
    "Sys",
    "Mallocs",
    "Frees",
    "LiveObjects",
    "PauseTotalNs",
    "Uptime",
}


def counting_node(
    api_port: int, door_port: int, vmess_port: int, socks_port: int, echo_port: int, uid: str
) -> Any:
    udp_door = door_inbound(door_port, echo_port, tag="udp-door")  # the same port, UDP
    udp_door["settings"]["network"] = "udp"
    return api_config(
        api_port,
        [
            door_inbound(door_port, echo_port),
            udp_door,
            {"tag": "socks-in", "listen": LOCAL, "port": socks_port, "protocol": "socks"},
            vmess_inbound(vmess_port, uid, EMAIL),
        ],
    )


async def door_echo(port: int, size: int) -> None:
    """``size`` bytes through a dokodemo-door to the echo server and back, then close."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(size), 30) == payload
    finally:
        writer.close()
        await writer.wait_closed()


async def udp_door_echo(port: int, sizes: list[int]) -> int:
    """Datagrams of ``sizes`` bytes through a UDP dokodemo-door to the echo server, each
    echoed before the next is sent; their total size."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(LOCAL, port))
    try:
        for size in sizes:
            payload = bytes([size % 256]) * size
            transport.sendto(payload)
            assert await asyncio.wait_for(replies.get(), 10) == payload
    finally:
        transport.close()
    return sum(sizes)


async def query(api_port: int, pattern: str = "", reset: bool = False) -> dict[str, int]:
    request = f'pattern: "{pattern}" reset: {"true" if reset else "false"}'
    return stats_of(await v2ctl_ok(api_port, "StatsService.QueryStats", request))


@needs_v2ctl
@pytest.mark.interop
async def test_counters_match_the_bytes_moved_beside_v2ray(
    echo: EchoServer, start_peer: StartPeer, start_node: StartNode
) -> None:
    if not HAVE_V2RAY:
        pytest.skip(NEEDS_V2RAY)
    door_bytes, user_bytes = 300_001, 1_000_003
    names: dict[str, set[str]] = {}
    socks_counts: dict[str, tuple[int, int]] = {}
    for kind in (RB, V2):
        uid = new_uuid()
        api, door, vmess, socks, socks_in = (free_port() for _ in range(5))
        await start_peer(kind, counting_node(api, door, vmess, socks_in, echo.port, uid), api)
        await start_node(client_config(socks, vmess, uid))
        await door_echo(door, door_bytes)
        await socks_echo(socks, echo.port, user_bytes)
        udp_bytes = await udp_door_echo(door, [1, 700, 1400])
        await socks_echo(socks_in, echo.port, 10_000)
        expected = {
            "inbound>>>udp-door>>>traffic>>>uplink": udp_bytes,
            "inbound>>>udp-door>>>traffic>>>downlink": udp_bytes,
            "inbound>>>door>>>traffic>>>uplink": door_bytes,
            "inbound>>>door>>>traffic>>>downlink": door_bytes,
            f"user>>>{EMAIL}>>>traffic>>>uplink": user_bytes,
            f"user>>>{EMAIL}>>>traffic>>>downlink": user_bytes,
            # freedom writes and reads the payload itself
            "outbound>>>direct>>>traffic>>>uplink": door_bytes + user_bytes + udp_bytes + 10_000,
            "outbound>>>direct>>>traffic>>>downlink": door_bytes + user_bytes + udp_bytes + 10_000,
        }

        async def settled(expected: dict[str, int] = expected, api: int = api) -> bool:
            stats = await query(api)
            return all(stats.get(k) == v for k, v in expected.items())

        # The last bytes of a relay may be counted a moment after the client has them.
        await until_true(settled, 10, what=f"{kind}: counters equal to the bytes moved")
        stats = await query(api)
        for key, value in expected.items():
            assert stats[key] == value, (kind, key)
        # VMess on the wire: the payload plus its header and chunk framing.
        assert stats["inbound>>>vmess-in>>>traffic>>>uplink"] > user_bytes, kind
        assert stats["inbound>>>vmess-in>>>traffic>>>downlink"] > user_bytes, kind
        assert "outbound>>>block>>>traffic>>>uplink" in stats  # registered, never used

        # A pattern is a substring; reset returns the values and zeroes them.
        door_stats = await query(api, ">door", reset=True)
        assert set(door_stats) == {k for k in stats if ">door" in k} and len(door_stats) == 2
        assert door_stats["inbound>>>door>>>traffic>>>uplink"] == door_bytes
        assert set((await query(api, ">door")).values()) == {0}

        got = await v2ctl_ok(
            api,
            "StatsService.GetStats",
            f'name: "user>>>{EMAIL}>>>traffic>>>downlink" reset: false',
        )
        name = f"user>>>{EMAIL}>>>traffic>>>downlink"
        assert got == {"stat": {"name": name, "value": user_bytes}}
        code, _, err = await v2ctl(api, "StatsService.GetStats", 'name: "nothing>>>here"')
        assert code != 0 and "nothing>>>here not found." in err, (kind, err)
        names[kind] = set(stats)
        socks_counts[kind] = (
            stats["inbound>>>socks-in>>>traffic>>>uplink"],
            stats["inbound>>>socks-in>>>traffic>>>downlink"],
        )
    assert names[RB] == names[V2]
    # SOCKS: the payload and the handshake, byte for byte as V2Ray counts them
    assert socks_counts[RB] == socks_counts[V2]
    assert min(socks_counts[RB]) > 10_000


@needs_v2ctl
@pytest.mark.interop
async def test_sys_stats_have_v2rays_fields(start_peer: StartPeer) -> None:
    if not HAVE_V2RAY:
        pytest.skip(NEEDS_V2RAY)
    fields: dict[str, dict[str, Any]] = {}
    for kind in (RB, V2):
        api = free_port()
        await start_peer(kind, api_config(api, []), api)

        async def up(api: int = api, kind: str = kind) -> bool:
            fields[kind] = await v2ctl_ok(api, "StatsService.GetSysStats")
            return "Uptime" in fields[kind]  # 0 seconds is left out of the text

        await until_true(up, 10, what="an uptime of a second")
    assert set(fields[V2]) <= set(fields[RB]) <= SYS_FIELDS
    rb = fields[RB]
    assert rb["Alloc"] > 1_000_000 and rb["Sys"] >= rb["Alloc"] and rb["NumGoroutine"] >= 1


@needs_v2ctl
async def test_without_stats_there_are_no_counters(start_node: StartNode) -> None:
    api, door = free_port(), free_port()
    node = await start_node(api_config(api, [door_inbound(door, 9)], stats=False))
    assert node.counters is None
    code, _, err = await v2ctl(api, "StatsService.QueryStats", 'pattern: ""')
    assert code != 0 and 'no counters: the config has no "stats" object' in err
    # stats without policy: counting is on, nothing is counted (V2Ray: the same)
    api2 = free_port()
    await start_node(api_config(api2, [], system={}, user_stats=False))
    assert await query(api2) == {}


async def test_each_byte_is_counted_once(echo: EchoServer, start_node: StartNode) -> None:
    """The status totals (raybridge.stats.Stats): the payload, once, for the inbound and
    for the outbound (the outbound side used to add its own count to the session's)."""
    api, door = free_port(), free_port()
    node = await start_node(api_config(api, [door_inbound(door, echo.port)]))
    await door_echo(door, 123_457)
    stats = node.dispatcher.stats
    await until(lambda: not stats.open_connections().get("door"), 10, what="closed")
    assert stats.bytes_by("inbound_tag")["door"] == (123_457, 123_457)
    assert stats.bytes_by("outbound_tag")["direct"] == (123_457, 123_457)


def test_user_counter_follows_live_sessions_and_resets() -> None:
    counters = Counters()
    stats = Stats(counters=counters, user_levels={1: (True, False)})
    session = Session(inbound_tag="in", user="u@x", level=1)
    stats.opened(session, "out")
    other = Session(inbound_tag="in", user="u@x", level=0)  # level 0: not counted
    stats.opened(other, "out")
    up = counters.get("user>>>u@x>>>traffic>>>uplink")
    assert up is not None and counters.get("user>>>u@x>>>traffic>>>downlink") is None
    session.bytes_up += 10
    other.bytes_up += 100
    assert up.get() == 10
    assert up.reset() == 10 and up.get() == 0
    session.bytes_up += 5
    stats.closed(session)
    assert up.get() == 5
    session.bytes_up += 7  # after it closed: not counted
    assert up.get() == 5
    assert [c.name for c in counters.query("u@x")] == ["user>>>u@x>>>traffic>>>uplink"]


def test_config_sections() -> None:
    config = load_config_text(
        '{"stats": {}, "api": {"tag": "api", "services": ["statsservice", "HandlerService"]},'
        ' "policy": {"system": {"statsInboundUplink": true, "statsOutboundDownlink": true}}}',
        "c.json",
    )
    assert config.stats and config.api is not None
    assert config.api.services == ("StatsService", "HandlerService")
    system = config.policy.system
    assert system.stats_inbound_uplink and system.stats_outbound_downlink
    assert not system.stats_inbound_downlink and not system.stats_outbound_uplink
    assert not config.warnings
    assert not load_config_text("{}", "c.json").stats


@pytest.mark.parametrize(
    "api,message",
    [
        ('{"services": ["StatsService"]}', "API tag can't be empty"),
        (
            '{"tag": "api", "services": ["ReflectionService"]}',
            '"ReflectionService" is not supported by raybridge',
        ),
        ('{"tag": "api", "services": ["StatService"]}', '"StatService" is not a V2Ray 4.34'),
    ],
)
def test_api_config_errors(api: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f'{{"api": {api}}}', "c.json")
    assert message in str(info.value)


@needs_v2ctl
async def test_a_reload_keeps_the_api_and_the_counters(
    echo: EchoServer, start_node: StartNode
) -> None:
    """SIGHUP's reload replaces the routing table: the API's outbound stays reachable,
    counters keep their values, an inbound the new file adds is counted, and what was
    added through the API (not in the files) is gone."""
    from raybridge.reload import reload

    api, door, door2 = free_port(), free_port(), free_port()
    config = api_config(api, [door_inbound(door, echo.port)])
    node = await start_node(config)
    await door_echo(door, 1000)
    config["inbounds"].append(door_inbound(door2, echo.port, tag="door2"))
    record = await reload(node, load_config_text(json.dumps(config), "<reloaded>"))
    assert record.ok, record.error
    await door_echo(door2, 2000)

    async def counted() -> bool:
        stats = await query(api)
        return (
            stats.get("inbound>>>door>>>traffic>>>uplink") == 1000
            and stats.get("inbound>>>door2>>>traffic>>>uplink") == 2000
        )

    await until_true(counted, 10, what="both doors counted across the reload")
    config["stats"] = {}
    del config["api"]
    record = await reload(node, load_config_text(json.dumps(config), "<no api>"))
    assert record.ok and "api: changed" in record.changes
    assert await refused_api(api)


async def refused_api(port: int) -> bool:
    code, _, _ = await v2ctl(port, "StatsService.QueryStats", 'pattern: ""')
    return code != 0


def test_raybridge_test_warns_about_an_api_beyond_loopback() -> None:
    from raybridge.config.checks import check_config

    config = api_config(10085, [])
    assert not [w for w in check_config(load_config_text(json.dumps(config), "c.json"))]
    config["inbounds"][0]["listen"] = "0.0.0.0"
    text = json.dumps(config, indent=1)
    (warning,) = check_config(load_config_text(text, "c.json"))
    listen_line = text.splitlines().index('   "listen": "0.0.0.0",') + 1
    assert warning.path == "inbounds[0].listen"
    assert warning.line in (listen_line, listen_line - 2)  # its line, or its object's
    assert 'inbound "api-in" leads to the API ("api")' in warning.message
    assert "anyone who can reach the port can change this node" in warning.message
