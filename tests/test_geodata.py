"""geoip.dat / geosite.dat: the protobuf reader and writer, the matchers, the file lookup.

Vectors are written out by hand from ``app/router/config.proto`` (field keys 0x0a = field 1
bytes, 0x08 = field 1 varint, 0x10 = field 2 varint, 0x12 = field 2 bytes, 0x1a = field 3
bytes). Hypothesis checks writer -> reader round trips and that arbitrary bytes raise only
GeoDataError. V2Ray itself reading the same files is in test_geo_routing.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raybridge.errors import ConfigError
from raybridge.matchers import (
    SYSTEM_ASSET_DIRS,
    DomainMatcher,
    DomainSet,
    GeoAssets,
    IPMatcher,
    IPRanges,
    asset_dirs,
    load_geoip,
    load_geosite,
)
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
    read_geoip_list,
    read_geosite_list,
    write_geoip_list,
    write_geosite_list,
)
from tests.geofiles import cidr, write_test_files

# GeoIPList{entry: GeoIP{country_code: "CN", cidr: CIDR{ip: 1.2.3.0, prefix: 24}}}
GEOIP_VECTOR = bytes.fromhex("0a0e0a02434e12080a04010203001018")
# GeoSiteList{entry: GeoSite{"TEST", domain: Domain{type: Domain, value: "a.cn",
#                                          attribute: {key: "ads", bool_value: true}}}}
GEOSITE_VECTOR = bytes.fromhex("0a190a0454455354121108021204612e636e1a070a036164731001")


# ---------------------------------------------------------------------------- reader / writer


def test_vectors_read() -> None:
    assert read_geoip_list(GEOIP_VECTOR) == [GeoIP("CN", [CIDR(bytes([1, 2, 3, 0]), 24)])]
    assert read_geosite_list(GEOSITE_VECTOR) == [
        GeoSite("TEST", [Domain(DOMAIN, "a.cn", (Attribute("ads", True),))])
    ]


def test_vectors_written() -> None:
    assert write_geoip_list([GeoIP("CN", [CIDR(bytes([1, 2, 3, 0]), 24)])]) == GEOIP_VECTOR
    site = GeoSite("TEST", [Domain(DOMAIN, "a.cn", (Attribute("ads", True),))])
    assert write_geosite_list([site]) == GEOSITE_VECTOR
    # proto3 defaults are left out: Plain (type 0), prefix 0; a oneof value is always written.
    assert write_geosite_list([GeoSite("", [Domain(PLAIN, "x", (Attribute("k", False),))])]) == (
        bytes.fromhex("0a0c120a1201781a050a016b1000")
    )
    assert write_geoip_list([GeoIP("A", [CIDR(b"", 0)])]) == bytes.fromhex("0a050a01411200")


def test_index_reads_only_codes_first_wins_without_case() -> None:
    data = write_geoip_list(
        [GeoIP("cn", [cidr("1.0.0.0/8")]), GeoIP("CN", [cidr("2.0.0.0/8")]), GeoIP("US", [])]
    )
    index = index_entries(data)
    assert sorted(index) == ["CN", "US"]
    assert list(read_cidrs(data, index["CN"])) == [cidr("1.0.0.0/8")]


def test_unknown_fields_and_any_order_are_read() -> None:
    # GeoSite with the domain before the code, and unknown fields of each wire type
    # (9: varint, 10: fixed64, 11: bytes, 12: fixed32) at every level.
    unknown = bytes.fromhex("48015101020304050607085a01786501020304")
    domain = bytes.fromhex("1201790803") + unknown  # value "y", type Full
    entry = bytes([0x12, len(domain)]) + domain + bytes.fromhex("0a0141") + unknown
    data = unknown + bytes([0x0A, len(entry)]) + entry
    assert read_geosite_list(data) == [GeoSite("A", [Domain(FULL, "y")])]
    assert list(index_entries(data)) == ["A"]


def test_int_attributes_and_negative_values() -> None:
    site = GeoSite(
        "T", [Domain(FULL, "x", (Attribute("n", -5), Attribute("m", 7), Attribute("e")))]
    )
    assert read_geosite_list(write_geosite_list([site])) == [site]


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x0a\x05\x0a\x01", "announced"),  # entry longer than the file
        (b"\x0a", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint"),  # 11-byte varint
        (b"\x0b", "wire type 3"),  # groups
        (b"\x00\x00", "field number 0"),
        (b"\x08\x01", "wire type 0, expected 2"),  # entry as a varint
        (b"\x0a\x04\x0a\x02\xff\xfe", "UTF-8"),
        (b"\x0d\x01\x02", "fixed-size"),
    ],
)
def test_malformed_input_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(GeoDataError, match=message):
        read_geoip_list(data)
        read_geosite_list(data)


texts = st.text(st.characters(codec="utf-8"), max_size=12)
attributes = st.builds(
    Attribute, texts, st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
)
domains = st.builds(
    Domain,
    st.sampled_from([PLAIN, REGEX, DOMAIN, FULL]),
    texts,
    st.lists(attributes, max_size=3).map(tuple),
)
cidrs = st.builds(CIDR, st.binary(max_size=17), st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(GeoSite, texts, st.lists(domains, max_size=5)), max_size=5))
def test_geosite_round_trip(entries: list[GeoSite]) -> None:
    data = write_geosite_list(entries)
    assert read_geosite_list(data) == entries
    index = index_entries(data)
    for entry in entries:
        assert entry.code.upper() in index
    first = {}
    for entry in entries:
        first.setdefault(entry.code.upper(), entry)
    for code, span in index.items():
        assert list(read_domains(data, span)) == first[code].domains


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(GeoIP, texts, st.lists(cidrs, max_size=5)), max_size=5))
def test_geoip_round_trip(entries: list[GeoIP]) -> None:
    assert read_geoip_list(write_geoip_list(entries)) == entries


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_geodata_error(data: bytes) -> None:
    for read in (read_geoip_list, read_geosite_list, index_entries):
        with contextlib.suppress(GeoDataError):
            read(data)  # type: ignore[operator]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.builds(GeoSite, texts, st.lists(domains, max_size=3)), min_size=1, max_size=3),
    st.data(),
)
def test_corrupted_files_raise_only_geodata_error(
    entries: list[GeoSite], data: st.DataObject
) -> None:
    raw = bytearray(write_geosite_list(entries))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        index = index_entries(bytes(raw))
        for span in index.values():
            list(read_domains(bytes(raw), span))
    except GeoDataError:
        pass


# ---------------------------------------------------------------------------- matchers


def test_domain_set_types() -> None:
    ds = DomainSet(
        [(DOMAIN, "example.com"), (FULL, "exact.org"), (PLAIN, "word"), (REGEX, r"^ad\d+\.")]
    )
    assert ds("example.com") and ds("a.b.example.com")
    assert not ds("badexample.com") and not ds("example.com.evil")
    assert ds("exact.org") and not ds("www.exact.org")
    assert ds("xwordy.net") and not ds("wor.d")
    assert ds("ad12.net") and not ds("bad12.net")
    assert not ds("Example.com")  # case-sensitive, as V2Ray


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abgo.*+?()[]{}|^$\\", min_size=0, max_size=5), max_size=12),
    st.text("abgo.*+?()[]{}|^$\\", max_size=12),
)
def test_keyword_trie_matches_like_substring_search(keywords: list[str], name: str) -> None:
    ds = DomainSet((PLAIN, k) for k in keywords)
    assert ds(name) == any(k in name for k in keywords)


def go_domain_match(pattern: str, name: str) -> bool:
    """V2Ray's domain matcher (common/strmatcher/matchers.go), restated."""
    if not name.endswith(pattern):
        return False
    return len(name) == len(pattern) or name[len(name) - len(pattern) - 1] == "."


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([DOMAIN, FULL]), st.text("ab.", max_size=5)), max_size=8),
    st.text("ab.", max_size=8),
)
def test_domain_and_full_match_like_v2ray(entries: list[tuple[int, str]], name: str) -> None:
    ds = DomainSet(entries)
    expected = any(go_domain_match(v, name) if kind == DOMAIN else v == name for kind, v in entries)
    assert ds(name) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=20),
    st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_ip_ranges_match_like_networks(nets: list[tuple[int, int]], probes: list[int]) -> None:
    networks = [ipaddress.ip_network((a, p), strict=False) for a, p in nets]
    ranges = IPRanges((4, int(n.network_address), n.prefixlen) for n in networks)
    for value in probes + [int(n.broadcast_address) for n in networks]:
        ip = ipaddress.IPv4Address(value)
        assert ranges(ip) == any(ip in n for n in networks)


def test_ipv6_ranges() -> None:
    m = IPMatcher(["fd00:1::/32", "2001:db8::1"], ConfigError)
    assert m(ipaddress.ip_address("fd00:1:ffff::1"))
    assert m(ipaddress.ip_address("2001:db8::1"))
    assert not m(ipaddress.ip_address("2001:db8::2"))
    assert not m(ipaddress.ip_address("10.0.0.1"))


# ---------------------------------------------------------------------------- files


def test_asset_dirs(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text("{}")
    assert asset_dirs(str(config), {}) == [str(tmp_path), *SYSTEM_ASSET_DIRS]
    env = {"V2RAY_LOCATION_ASSET": "/a"}
    assert asset_dirs(str(config), env) == ["/a", *SYSTEM_ASSET_DIRS]
    env["v2ray.location.asset"] = "/b"  # V2Ray's dotted name is read first
    assert asset_dirs(str(config), env) == ["/b", *SYSTEM_ASSET_DIRS]
    assert asset_dirs(None, {}) == [os.getcwd(), *SYSTEM_ASSET_DIRS]


def test_load_geosite_with_attributes(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    everything = load_geosite("test", locations=[str(tmp_path)])
    assert len(everything) == 6
    assert everything("x.blocked.test") and everything("cn-only.test")
    cn = load_geosite("TEST", ["CN"], [str(tmp_path)])  # names and attributes without case
    assert len(cn) == 2
    assert cn("cn-only.test") and cn("ads.test") and not cn("blocked.test")
    both = load_geosite("test", ["cn", "ads"], [str(tmp_path)])
    assert both("ads.test") and not both("cn-only.test")
    # the same list of the same file is built once and shared
    assert load_geosite("test", ["cn"], [str(tmp_path)]).parts[0] is cn.parts[0]


def test_load_geoip(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    xx = load_geoip("xx", [str(tmp_path)])
    assert xx(ipaddress.ip_address("10.20.30.40")) and xx(ipaddress.ip_address("127.0.0.2"))
    assert not xx(ipaddress.ip_address("127.0.0.1"))
    assert xx(ipaddress.ip_address("fd00:1::5"))


def test_lookup_order_and_missing_file(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_test_files(second)
    assert load_geoip("yy", [str(first), str(second)])(ipaddress.ip_address("192.0.2.9"))
    with pytest.raises(ConfigError) as info:
        load_geoip("yy", [str(first)], file="nope.dat")
    assert f"looked in {first}/nope.dat" in str(info.value)
    assert "V2RAY_LOCATION_ASSET" in str(info.value)


def test_missing_list_and_attribute(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no list 'NOPE' in .*geosite\.dat \(2 lists: OTHER, TEST\)"
    ):
        load_geosite("nope", locations=[str(tmp_path)])
    with pytest.raises(ConfigError, match=r"has the attribute\(s\) @zz"):
        load_geosite("test", ["zz"], [str(tmp_path)])
    with pytest.raises(ConfigError, match=r"not a valid geoip file"):
        (tmp_path / "bad.dat").write_bytes(b"\x0a\x09")
        load_geoip("xx", [str(tmp_path)], file="bad.dat")


def test_bad_entries_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "geosite.dat").write_bytes(
        write_geosite_list([GeoSite("R", [Domain(REGEX, "(")]), GeoSite("T", [Domain(7, "x")])])
    )
    (tmp_path / "geoip.dat").write_bytes(write_geoip_list([GeoIP("B", [CIDR(b"\x01\x02", 8)])]))
    with pytest.raises(ConfigError, match="invalid regexp"):
        load_geosite("r", locations=[str(tmp_path)])
    with pytest.raises(ConfigError, match="unknown domain type 7"):
        load_geosite("t", locations=[str(tmp_path)])
    with pytest.raises(ConfigError, match="bad CIDR 0102/8"):
        load_geoip("b", [str(tmp_path)])


def test_rule_patterns_mix_lists_and_literals(tmp_path: Path) -> None:
    write_test_files(tmp_path)
    with GeoAssets([str(tmp_path)]) as assets:
        dm = DomainMatcher(
            ["geosite:test@ads", "ext:geosite.dat:other", "full:mine.test"], ConfigError, assets
        )
        im = IPMatcher(["ext-ip:geoip.dat:yy", "geoip:xx", "198.51.100.7"], ConfigError, assets)
    assert dm("ads.test") and dm("x.other.test") and dm("mine.test")
    assert not dm("blocked.test")
    assert im(ipaddress.ip_address("192.0.2.1")) and im(ipaddress.ip_address("10.20.1.1"))
    assert im(ipaddress.ip_address("198.51.100.7")) and not im(ipaddress.ip_address("8.8.8.8"))


@pytest.mark.parametrize(
    "pattern,message",
    [
        ("geoip:", "empty list name"),
        ("ext:geoip.dat", "ext:FILE:LIST"),
        ("ext:a:b:c", "ext:FILE:LIST"),
        ("geoip:!xx", "no negated geoip"),
    ],
)
def test_malformed_ip_references(tmp_path: Path, pattern: str, message: str) -> None:
    write_test_files(tmp_path)
    with pytest.raises(ConfigError, match=message):
        IPMatcher([pattern], ConfigError, GeoAssets([str(tmp_path)]))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.builds(GeoSite, texts, st.lists(domains, max_size=3)), min_size=1, max_size=3),
    st.lists(st.builds(GeoIP, texts, st.lists(cidrs, max_size=3)), min_size=1, max_size=3),
    st.binary(max_size=8),
    st.integers(0, 200),
)
def test_loading_any_file_raises_only_config_errors(
    tmp_path: Path, sites: list[GeoSite], ips: list[GeoIP], junk: bytes, cut: int
) -> None:
    """Whatever a .dat file holds (bad regexes, unknown types, odd IP lengths, truncation),
    loading a list from it gives a matcher or a ConfigError, nothing else."""
    site_data = write_geosite_list(sites) + junk
    ip_data = write_geoip_list(ips) + junk
    (tmp_path / "geosite.dat").write_bytes(site_data[: len(site_data) - cut % 4])
    (tmp_path / "geoip.dat").write_bytes(ip_data[: len(ip_data) - cut % 4])
    attrs = [a.key for d in sites[0].domains for a in d.attributes][:1]
    for name, wanted in ((sites[0].code, []), (sites[0].code, attrs), ("x", []), ("@a", [])):
        with contextlib.suppress(ConfigError):
            load_geosite(name, wanted, [str(tmp_path)])
    with contextlib.suppress(ConfigError):
        load_geoip(ips[0].code, [str(tmp_path)])
