"""The ``dns`` section with live traffic on loopback: ``hosts`` with freedom's ``UseIP``,
``routing.domainStrategy`` resolving names against IP rules, ``servers`` picked by
``domains``, ``expectIPs`` falling back, and the section's ``tag`` routing its queries.

Every name is answered by a DNS server the test runs on 127.0.0.1 (``FakeDns``, dnspython
messages) or by ``hosts``; no public resolver is ever asked. Each node routes what is not on
loopback (or not one of the test's names) to blackhole. Where V2Ray 4.34 has the feature,
the same config runs on V2Ray too and must give the same outcome (``interop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from raybridge.address import Destination, IPAddress, Network
from raybridge.config.loader import load_config_text
from raybridge.errors import ConfigError
from raybridge.link import Resolver
from raybridge.matchers import ASSET_ENV
from raybridge.node import Node
from raybridge.protocols.dnspolicy import QUERY_TIMEOUT
from raybridge.protocols.geodata import (
    CIDR,
    DOMAIN,
    FULL,
    Domain,
    GeoIP,
    GeoSite,
    write_geoip_list,
    write_geosite_list,
)
from raybridge.proxy.freedom import FreedomOutbound
from tests.support import (
    RB,
    V2,
    StartPeer,
    client_config,
    free_port,
    new_uuid,
    server_config,
    socks_connect,
)

TARGET = "127.0.0.5"  # where the echo server listens: reached only through a lookup
ELSEWHERE = "127.0.0.6"  # loopback, nothing listens: a wrong answer
TIMEOUT = 20
KINDS = [RB, pytest.param(V2, marks=pytest.mark.interop)]


# -- loopback servers ------------------------------------------------------------------------


class FakeDns(asyncio.DatagramProtocol):
    """A DNS server with fixed A records (``name -> address``); other names get NXDOMAIN,
    AAAA questions an empty answer. ``asked`` lists the names asked, in order."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.asked: list[str] = []
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.asked.append(name)
        address = self.records.get(name)
        if address is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@contextlib.asynccontextmanager
async def fake_dns(records: dict[str, str]) -> AsyncIterator[FakeDns]:
    loop = asyncio.get_running_loop()
    server = FakeDns(records)
    server.port = free_port()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", server.port)
    )
    try:
        yield server
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def echo_at(host: str) -> AsyncIterator[int]:
    """A TCP echo server on ``host``; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def echoes(socks_port: int, host: str, port: int) -> bool:
    """Whether 64 KiB sent to ``host:port`` through the SOCKS inbound come back intact
    (False when the connection is refused or closed first)."""
    payload = os.urandom(65536)
    try:
        reader, writer = await asyncio.wait_for(socks_connect(socks_port, host, port), TIMEOUT)
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return False
    try:
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
        return got == payload
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def config(
    socks: int,
    *,
    dns_section: dict[str, Any],
    rules: list[dict[str, Any]],
    strategy: str = "AsIs",
    freedom: dict[str, Any] | None = None,
    extra_outbounds: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """A node with a SOCKS inbound; the default outbound is blackhole, "direct" is freedom."""
    return {
        "log": {"loglevel": "warning"},
        "dns": dns_section,
        "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": socks, "tag": "in"}],
        "outbounds": [
            {"protocol": "blackhole", "tag": "block"},
            {"protocol": "freedom", "tag": "direct", "settings": freedom or {}},
            *extra_outbounds,
        ],
        "routing": {"domainStrategy": strategy, "rules": rules},
    }


def dns_rule(*servers: FakeDns, tag: str = "direct") -> dict[str, Any]:
    """The rule that lets the DNS client's queries reach the fake servers (through ``tag``,
    a freedom that does not redirect)."""
    return {
        "type": "field",
        "network": "udp",
        "ip": ["127.0.0.1/32"],
        "port": ",".join(str(s.port) for s in servers),
        "outboundTag": tag,
    }


# -- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_hosts_name_reaches_the_echo_server_with_use_ip(
    kind: str, start_peer: StartPeer
) -> None:
    socks = free_port()
    async with echo_at(TARGET) as port:
        cfg = config(
            socks,
            dns_section={"hosts": {"example.test": TARGET, "domain:alias.test": "example.test"}},
            rules=[
                {
                    "type": "field",
                    "domain": ["full:example.test", "domain:alias.test"],
                    "outboundTag": "direct",
                },
            ],
            freedom={"domainStrategy": "UseIP"},
        )
        await start_peer(kind, cfg, socks)
        assert await echoes(socks, "example.test", port)
        assert await echoes(socks, "www.alias.test", port)  # an alias in hosts, followed


# -- routing.domainStrategy ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["AsIs", "IPIfNonMatch", "IPOnDemand"])
async def test_domain_strategy_matches_ip_rules_with_the_resolved_address(
    kind: str, strategy: str, start_peer: StartPeer
) -> None:
    socks = free_port()
    records = {"routed.test": TARGET, "other.test": ELSEWHERE}
    async with fake_dns(records) as server, echo_at(TARGET) as port:
        cfg = config(
            socks,
            dns_section={"servers": [{"address": "127.0.0.1", "port": server.port}]},
            rules=[
                dns_rule(server),
                {"type": "field", "ip": [f"{TARGET}/32"], "outboundTag": "direct"},
            ],
            strategy=strategy,
            freedom={"domainStrategy": "UseIPv4"},
        )
        await start_peer(kind, cfg, socks)
        # AsIs: no rule matches the name, so the default (blackhole) takes it.
        assert await echoes(socks, "routed.test", port) == (strategy != "AsIs")
        # The name's address is in no rule: blackhole whatever the strategy.
        assert not await echoes(socks, "other.test", port)
        assert ("routed.test" in server.asked) == (strategy != "AsIs")


# -- servers: domains and expectIPs --------------------------------------------------------------


def two_servers(
    socks: int,
    first: FakeDns,
    second: FakeDns,
    *,
    expect: str,
    pick: str,
    hosts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``first`` with ``expectIPs: [expect]``, then ``second`` with ``domains: [pick]``; the
    names in ``.test`` go to freedom, which resolves them with the dns section (IPv4)."""
    servers = [
        {"address": "127.0.0.1", "port": first.port, "expectIPs": [expect]},
        {"address": "127.0.0.1", "port": second.port, "domains": [pick]},
    ]
    return config(
        socks,
        dns_section={"servers": servers, "hosts": hosts or {}},
        rules=[
            dns_rule(first, second),
            {"type": "field", "domain": ["domain:test"], "outboundTag": "direct"},
        ],
        freedom={"domainStrategy": "UseIPv4"},
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_domains_pick_the_server_and_expect_ips_falls_back(
    kind: str, start_peer: StartPeer
) -> None:
    socks = free_port()
    first_records = {"www.b.test": ELSEWHERE, "e.test": ELSEWHERE, "ok.test": TARGET}
    second_records = {"www.b.test": TARGET, "e.test": TARGET, "ok.test": ELSEWHERE}
    async with (
        fake_dns(first_records) as first,
        fake_dns(second_records) as second,
        echo_at(TARGET) as port,
    ):
        cfg = two_servers(socks, first, second, expect=f"{TARGET}/32", pick="domain:b.test")
        await start_peer(kind, cfg, socks)
        assert await echoes(socks, "www.b.test", port)  # the second server, by its domains
        assert "www.b.test" in second.asked and "www.b.test" not in first.asked
        assert await echoes(socks, "ok.test", port)  # the first server's answer passes
        assert "ok.test" not in second.asked
        assert await echoes(socks, "e.test", port)  # filtered out by expectIPs: the next
        assert "e.test" in first.asked and "e.test" in second.asked


# -- the section's tag -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_tag_routes_the_queries(kind: str, start_peer: StartPeer) -> None:
    """The queries carry the dns tag as inbound tag: a rule sends them to an outbound that
    redirects them to the real server (the configured address has no server)."""
    socks = free_port()
    async with fake_dns({"tagged.test": TARGET}) as server, echo_at(TARGET) as port:
        cfg = config(
            socks,
            dns_section={"servers": [{"address": "127.0.0.1", "port": free_port()}], "tag": "q"},
            rules=[
                {"type": "field", "inboundTag": ["q"], "outboundTag": "to-dns"},
                {"type": "field", "ip": [f"{TARGET}/32"], "outboundTag": "direct"},
            ],
            strategy="IPIfNonMatch",
            freedom={"redirect": f"{TARGET}:0"},  # routing resolves; freedom needs no name
            extra_outbounds=[
                {
                    "protocol": "freedom",
                    "tag": "to-dns",
                    "settings": {"redirect": f"127.0.0.1:{server.port}"},
                },
            ],
        )
        await start_peer(kind, cfg, socks)
        assert await echoes(socks, "tagged.test", port)
        assert server.asked == ["tagged.test", "tagged.test"]  # A and AAAA


async def test_unanswered_server_times_out_and_the_next_answers(start_node: Any) -> None:
    socks = free_port()
    silent = free_port()  # nothing listens there: no answer (or ICMP, which UDP ignores)
    async with fake_dns({"slow.test": TARGET}) as server, echo_at(TARGET) as port:
        cfg = config(
            socks,
            dns_section={
                "servers": [
                    {"address": "127.0.0.1", "port": silent},
                    {"address": "127.0.0.1", "port": server.port},
                ]
            },
            rules=[
                {
                    "type": "field",
                    "network": "udp",
                    "ip": ["127.0.0.1/32"],
                    "outboundTag": "direct",
                },
                {"type": "field", "domain": ["full:slow.test"], "outboundTag": "direct"},
            ],
            freedom={"domainStrategy": "UseIPv4"},
        )
        node = await start_node(cfg)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await echoes(socks, "slow.test", port)
        assert server.asked == ["slow.test"]
        assert loop.time() - started >= QUERY_TIMEOUT  # the first server had its 4 s
        assert await node.dns.lookup("slow.test") == [ipaddress.ip_address(TARGET)]  # cached


# -- geo lists: geosite: hosts keys and domains, geoip: expectIPs ----------------------------------


@pytest.fixture
def geo_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """geosite.dat (list DNSTEST) and geoip.dat (list LOOP: the echo's address) in V2Ray's
    format, found through V2RAY_LOCATION_ASSET by raybridge and V2Ray alike."""
    sites = [
        GeoSite("DNSTEST", [Domain(DOMAIN, "geo.test"), Domain(FULL, "exact.test")]),
        GeoSite("PICKED", [Domain(DOMAIN, "picked.test")]),
    ]
    ips = [GeoIP("LOOP", [CIDR(bytes([127, 0, 0, 5]), 32)])]
    (tmp_path / "geosite.dat").write_bytes(write_geosite_list(sites))
    (tmp_path / "geoip.dat").write_bytes(write_geoip_list(ips))
    for name in ASSET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("kind", KINDS)
async def test_geosite_hosts_and_domains_geoip_expect_ips(
    kind: str, start_peer: StartPeer, geo_files: Path
) -> None:
    socks = free_port()
    first_records = {"www.picked.test": ELSEWHERE, "f.test": ELSEWHERE, "g.test": TARGET}
    second_records = {"www.picked.test": TARGET, "f.test": TARGET}
    async with (
        fake_dns(first_records) as first,
        fake_dns(second_records) as second,
        echo_at(TARGET) as port,
    ):
        cfg = two_servers(
            socks,
            first,
            second,
            expect="geoip:loop",
            pick="geosite:picked",
            hosts={"geosite:dnstest": TARGET},
        )
        await start_peer(kind, cfg, socks)
        assert await echoes(socks, "www.geo.test", port)  # hosts, by the geosite list
        assert await echoes(socks, "exact.test", port)
        assert await echoes(socks, "www.picked.test", port)  # the server the list picks
        assert "www.picked.test" not in first.asked
        assert await echoes(socks, "g.test", port)  # in geoip:loop
        assert await echoes(socks, "f.test", port)  # not in it: the next server
        assert "f.test" in first.asked and "f.test" in second.asked
        assert not {"www.geo.test", "exact.test"} & {*first.asked, *second.asked}


def test_missing_geo_list_names_the_dns_field(geo_files: Path) -> None:
    text = json.dumps(
        {
            "dns": {
                "hosts": {"geosite:nosuch": "10.0.0.1"},
                "servers": [{"address": "127.0.0.1", "expectIPs": ["geoip:zz"]}],
            },
            "outbounds": [{"protocol": "freedom"}],
        },
        indent=1,
    )
    cfg = load_config_text(text, "g.json", environ={})
    with pytest.raises(ConfigError) as info:
        Node(cfg)
    err = info.value
    assert err.path == "dns.servers[0].expectIPs" and "'geoip:zz'" in err.message
    assert "no list 'ZZ'" in err.message
    del cfg.dns.servers[:]  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        Node(cfg)
    assert info.value.path == "dns.hosts.geosite:nosuch" and "NOSUCH" in info.value.message
    assert info.value.line == 4 and info.value.file == "g.json"


@pytest.mark.parametrize("server_kind", KINDS)
async def test_queries_routed_through_vmess_to_the_server(
    server_kind: str, start_peer: StartPeer, start_node: Any
) -> None:
    """A client node whose dns tag is routed to its VMess outbound: the queries travel as
    VMess UDP to the server (raybridge or V2Ray 4.34), whose freedom reaches the DNS server;
    the resolved address then picks the route on the client."""
    socks, vmess_port, user = free_port(), free_port(), new_uuid()
    async with fake_dns({"far.test": TARGET}) as server, echo_at(TARGET) as port:
        await start_peer(server_kind, server_config(vmess_port, user), vmess_port)
        vmess_out = client_config(socks, vmess_port, user)["outbounds"][0]
        cfg = config(
            socks,
            dns_section={"servers": [{"address": "127.0.0.1", "port": server.port}], "tag": "q"},
            rules=[
                {"type": "field", "inboundTag": ["q"], "outboundTag": vmess_out["tag"]},
                {"type": "field", "ip": [f"{TARGET}/32"], "outboundTag": "direct"},
            ],
            strategy="IPIfNonMatch",
            freedom={"redirect": f"{TARGET}:0"},
            extra_outbounds=[vmess_out],
        )
        await start_node(cfg)
        assert await echoes(socks, "far.test", port)
        assert "far.test" in server.asked


class _Recorder(Resolver):
    def __init__(self, answer: list[str]) -> None:
        self.answer = [ipaddress.ip_address(a) for a in answer]
        self.asked: list[tuple[str, int]] = []

    async def lookup(self, host: str, family: int = 0) -> list[IPAddress]:
        self.asked.append((host, family))
        return list(self.answer)


@pytest.mark.parametrize(
    ("strategy", "send_through", "family"),
    [
        ("UseIP", None, 0),
        ("UseIPv4", None, socket.AF_INET),
        ("UseIPv6", None, socket.AF_INET6),
        ("UseIP", "127.0.0.1", socket.AF_INET),  # the family of sendThrough, as 4.34
        ("UseIP", "::1", socket.AF_INET6),
    ],
)
async def test_freedom_asks_the_resolver_for_its_family(
    strategy: str, send_through: str | None, family: int
) -> None:
    freedom = FreedomOutbound("direct", domain_strategy=strategy, send_through=send_through)
    recorder = _Recorder(["10.0.0.7", "10.0.0.8"])
    freedom.use_resolver(recorder)
    dest = Destination(Network.TCP, "name.test", 80)
    assert await freedom._address(dest) == "10.0.0.7"
    assert recorder.asked == [("name.test", family)]


async def test_freedom_dials_an_unresolved_name_as_it_is_unless_blocking_private() -> None:
    freedom = FreedomOutbound("direct", domain_strategy="UseIP")
    freedom.use_resolver(_Recorder([]))
    dest = Destination(Network.TCP, "name.test", 80)
    assert await freedom._address(dest) == "name.test"  # 4.34: the system resolver's turn
    guarded = FreedomOutbound("direct", domain_strategy="UseIP", block_private=True)
    guarded.use_resolver(_Recorder([]))
    with pytest.raises(OSError, match="private or unresolvable"):
        await guarded._address(dest)
    guarded.use_resolver(_Recorder(["127.0.0.1"]))
    with pytest.raises(OSError):
        await guarded._address(dest)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_answer_ends_the_lookup_without_fallback(
    kind: str, start_peer: StartPeer
) -> None:
    """NXDOMAIN from the first server is the answer: the second is not asked (4.34's
    lookupIPInternal), so routing finds no address and the default (blackhole) takes it."""
    socks = free_port()
    async with (
        fake_dns({"found.test": TARGET}) as first,
        fake_dns({"nx.test": TARGET, "found.test": ELSEWHERE}) as second,
        echo_at(TARGET) as port,
    ):
        cfg = config(
            socks,
            dns_section={
                "servers": [
                    {"address": "127.0.0.1", "port": first.port},
                    {"address": "127.0.0.1", "port": second.port},
                ]
            },
            rules=[
                dns_rule(first, second, tag="plain"),
                {"type": "field", "ip": [f"{TARGET}/32"], "outboundTag": "direct"},
            ],
            strategy="IPIfNonMatch",
            freedom={"redirect": f"{TARGET}:0"},
            extra_outbounds=[{"protocol": "freedom", "tag": "plain"}],
        )
        await start_peer(kind, cfg, socks)
        assert await echoes(socks, "found.test", port)  # the first server's answer
        assert not await echoes(socks, "nx.test", port)
        assert "nx.test" in first.asked
        assert "nx.test" not in second.asked and "found.test" not in second.asked
