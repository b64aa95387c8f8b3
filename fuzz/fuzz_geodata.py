#!/usr/bin/env python3
"""Fuzz the geoip.dat / geosite.dat reader (``protocols/geodata.py``) and the matchers built
from what it reads (``matchers.DomainSet``, ``IPRanges``).

The fuzzer picks the file kind and whether the payload is bytes or a bytearray (an mmap
behaves as bytes; the reader takes no memoryview). The payload is indexed, every list is
read, and a matcher is built from it and asked once.

Allowed: GeoDataError; ValueError from ``DomainSet`` (a bad regexp or an unknown domain
type, which the loader reports as a config error). Anything else is a finding.

    python fuzz/fuzz_geodata.py [libFuzzer args]
"""

from __future__ import annotations

import ipaddress
import sys

from _harness import Chooser, FuzzedDataProvider, instrumented, seed_input

with instrumented(__name__):
    from raybridge.matchers import DomainSet, IPRanges
    from raybridge.protocols.geodata import (
        CIDR,
        DOMAIN,
        FULL,
        PLAIN,
        REGEX,
        Attribute,
        Domain,
        GeoDataError,
        GeoIP,
        GeoSite,
        index_entries,
        read_cidrs,
        read_domains,
        write_geoip_list,
        write_geosite_list,
    )

NAME = "geodata"
PROBE_V4 = ipaddress.IPv4Address("10.20.30.40")
PROBE_V6 = ipaddress.IPv6Address("2001:db8::1")


def parse(ch: Chooser) -> tuple[int, bool, bytes]:
    return ch.int("kind", 0, 1), ch.flag("bytearray"), ch.rest()


def _ips(data: bytes | bytearray, span: tuple[int, int]) -> str:
    cidrs = []
    for cidr in read_cidrs(data, span):
        bits = 8 * len(cidr.ip)
        if bits in (32, 128) and cidr.prefix <= bits:  # what the loader accepts
            cidrs.append((4 if bits == 32 else 6, int.from_bytes(cidr.ip, "big"), cidr.prefix))
    ranges = IPRanges(cidrs)
    return f"ip:{ranges.size}:{ranges(PROBE_V4)}:{ranges(PROBE_V6)}"


def _sites(data: bytes | bytearray, span: tuple[int, int]) -> str:
    domains = list(read_domains(data, span))
    for domain in domains:
        if not isinstance(domain.value, str) or not all(
            isinstance(a.key, str) for a in domain.attributes
        ):
            raise TypeError(f"unexpected domain {domain!r}")
    try:
        site = DomainSet((d.type, d.value) for d in domains)
    except ValueError:
        return "bad-entry"
    return f"site:{site.size}:{site('www.example.com')}"


def run(data: bytes) -> list[str]:
    """Read one file; return what each list gave (or ``["error"]``)."""
    kind, as_bytearray, payload = parse(Chooser(FuzzedDataProvider(data)))
    buffer = bytearray(payload) if as_bytearray else payload
    try:
        index = index_entries(buffer)
        read = _ips if kind == 0 else _sites
        return [f"{code}={read(buffer, span)}" for code, span in sorted(index.items())]
    except GeoDataError:
        return ["error"]


def TestOneInput(data: bytes) -> None:
    run(data)


def _cidr(text: str) -> CIDR:
    net = ipaddress.ip_network(text)
    return CIDR(net.network_address.packed, net.prefixlen)


def seeds() -> dict[str, bytes]:
    ips = write_geoip_list(
        [
            GeoIP("CN", [_cidr("10.20.0.0/16"), _cidr("1.2.3.0/24"), _cidr("2001:db8::/32")]),
            GeoIP("private", [_cidr("192.168.0.0/16")]),
        ]
    )
    sites = write_geosite_list(
        [
            GeoSite(
                "GOOGLE",
                [
                    Domain(DOMAIN, "example.com", (Attribute("cn", True),)),
                    Domain(FULL, "www.example.org"),
                    Domain(PLAIN, "ads"),
                    Domain(REGEX, r"^ad[0-9]+\."),
                    Domain(DOMAIN, "x.io", (Attribute("n", -3), Attribute("e"))),
                ],
            ),
            GeoSite("CN", [Domain(DOMAIN, "cn")]),
        ]
    )
    return {
        "geoip": seed_input(parse, {}, ips),
        "geosite": seed_input(parse, {"kind": 1, "bytearray": 1}, sites),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
