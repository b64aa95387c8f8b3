"""geoip.dat / geosite.dat files for tests, written in V2Ray's format (test_geodata,
test_geo_routing)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from raybridge.protocols.geodata import (
    CIDR,
    DOMAIN,
    FULL,
    PLAIN,
    REGEX,
    Attribute,
    Domain,
    GeoIP,
    GeoSite,
    write_geoip_list,
    write_geosite_list,
)


def cidr(text: str) -> CIDR:
    net = ipaddress.ip_network(text)
    return CIDR(net.network_address.packed, net.prefixlen)


def write_test_files(directory: Path) -> None:
    """The geo files the routing tests use, in V2Ray's format (Go's field order)."""
    sites = [
        GeoSite(
            "TEST",
            [
                Domain(DOMAIN, "blocked.test"),
                Domain(FULL, "exact.test"),
                Domain(PLAIN, "evilword"),
                Domain(REGEX, r"^ads[0-9]+\."),
                Domain(DOMAIN, "cn-only.test", (Attribute("cn", True),)),
                Domain(DOMAIN, "ads.test", (Attribute("ads", True), Attribute("cn", True))),
            ],
        ),
        GeoSite("OTHER", [Domain(DOMAIN, "other.test")]),
    ]
    ips = [
        GeoIP("XX", [cidr("127.0.0.2/32"), cidr("10.20.0.0/16"), cidr("fd00:1::/32")]),
        GeoIP("YY", [cidr("192.0.2.0/24")]),
    ]
    (directory / "geosite.dat").write_bytes(write_geosite_list(sites))
    (directory / "geoip.dat").write_bytes(write_geoip_list(ips))
