"""The ``dns`` section (``infra/conf/dns.go`` of V2Ray 4.34; docs/protocols.md 4.12).

What 4.34 reads is read the same way: ``servers`` (a string, or ``{"address", "port",
"domains", "expectIPs", "clientIp"}``), ``hosts`` (a map from a name pattern to an address),
``clientIp`` and ``tag``. What raybridge does not implement is refused with the reason:
DNS over HTTPS, QUIC or TCP (``https://``, ``quic+local://``, ``tcp://``...), ``fakedns``
and the keys of later V2Ray/Xray versions, which 4.34 ignores or refuses.
"""

from __future__ import annotations

import ipaddress
import re

from raybridge.config.fields import UINT16, Obj, describe, describe_typed, join, normalize_ip
from raybridge.config.jsonc import JArray, JObject, JString, JValue
from raybridge.config.model import DnsConfig, DnsPattern, DnsServerConfig, HostMapping

#: Later keys that change what the section means; 4.34 ignores them, so they are refused.
_LATER_KEYS = {
    "queryStrategy": "4.34 always asks for both A and AAAA",
    "disableCache": "4.34 always caches answers",
    "disableFallback": "4.34 always falls back to the other servers",
    "disableFallbackIfMatch": "4.34 always falls back to the other servers",
}
_LATER_SERVER_KEYS = {
    "skipFallback": "4.34 asks this server for every name when others fail",
    "queryStrategy": "4.34 always asks for both A and AAAA",
    "tag": "4.34 has one tag for the whole dns section",
}
#: Server address schemes of DNS transports raybridge does not implement.
_SCHEMES = {
    "https": "DNS over HTTPS",
    "https+local": "DNS over HTTPS",
    "quic+local": "DNS over QUIC",
    "tcp": "DNS over TCP (a later V2Ray)",
    "tcp+local": "DNS over TCP (a later V2Ray)",
    "udp": "a udp:// address (a later V2Ray; 4.34 takes the bare IP)",
}


def parse_pattern(text: str, *, plain: str) -> DnsPattern | str:
    """A ``hosts`` key (``plain="full"``) or a ``domains`` entry (``plain="keyword"``) as
    4.34 reads it; a string is the error message."""
    for prefix in ("geosite:", "ext:", "ext-domain:"):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if prefix == "geosite:":
                if not rest:
                    return f"empty geosite rule {text!r}"
                file, name = "geosite.dat", rest
            else:
                parts = rest.split(":")
                if len(parts) != 2 or not all(parts):
                    return f'invalid external resource {text!r} (write "ext:file.dat:list")'
                file, name = parts
            # The list itself is read when the node is built (raybridge.dns, matchers.py).
            return DnsPattern(kind="geosite", value=name, text=text, file=file)
    if text.startswith("dotless:"):
        rest = text[8:]
        if "." in rest:
            return f"the text of a dotless rule must not contain a dot: {text!r}"
        value = "^[^.]*" + rest + "[^.]*$" if rest else "^[^.]*$"
        return _regexp(value, text)
    for prefix, kind in (
        ("regexp:", "regexp"),
        ("domain:", "domain"),
        ("full:", "full"),
        ("keyword:", "keyword"),
    ):
        if text.startswith(prefix):
            value = text[len(prefix) :]
            if not value:
                return f"empty {prefix[:-1]} rule {text!r}"
            if kind == "regexp":
                return _regexp(value, text)
            return DnsPattern(kind=kind, value=value, text=text)  # type: ignore[arg-type]
    return DnsPattern(kind=plain, value=text, text=text)  # type: ignore[arg-type]


def _regexp(value: str, text: str) -> DnsPattern | str:
    try:
        re.compile(value)
    except re.error as exc:
        return f"invalid regexp {text!r}: {exc}"
    return DnsPattern(kind="regexp", value=value, text=text)


def _refuse_later(obj: Obj, keys: dict[str, str]) -> None:
    for key, why in keys.items():
        node = obj.get(key)
        if node is not None:
            raise obj.ctx.error(
                node, obj.sub(key), f'"{key}" is not a V2Ray 4.34 setting ({why}); remove it'
            )


def _client_ip(obj: Obj) -> str | None:
    node = obj.get("clientIp")
    if node is None:
        return None
    ip = normalize_ip(obj.ctx.expect_string(node, obj.sub("clientIp")))
    if ip is None:
        raise obj.ctx.error(node, obj.sub("clientIp"), f"{describe(node)} is not an IP address")
    return ip


def _address(obj: Obj, node: JValue, path: str) -> tuple[str, bool]:
    """A server address -> (canonical IP or domain, is the system resolver)."""
    text = obj.ctx.expect_string(node, path).strip()
    ip = normalize_ip(text)
    if ip is not None:
        return ip, False
    if text == "localhost":
        return text, True
    scheme, sep, _ = text.partition("://")
    if sep:
        what = _SCHEMES.get(scheme.lower(), f"a {scheme}:// address")
        raise obj.ctx.error(
            node,
            path,
            f"{describe(node)}: {what} is not supported by raybridge; only plain UDP DNS "
            '(an IP address, or {"address": ..., "port": ...}) and "localhost"',
        )
    if text.lower() == "fakedns":
        raise obj.ctx.error(node, path, '"fakedns" is not a V2Ray 4.34 name server')
    if not text:
        raise obj.ctx.error(node, path, "the name server address is empty")
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and normalize_ip(host) is not None:
        raise obj.ctx.error(
            node,
            path,
            f"{describe(node)} is not an address (4.34 would take it for a domain name); "
            f'write {{"address": "{normalize_ip(host)}", "port": {port}}}',
        )
    if any(c.isspace() or c in "/@[]" for c in text):
        raise obj.ctx.error(node, path, f"{describe(node)} is neither an IP address nor a name")
    return text, False


def _server(obj: Obj, node: JValue, path: str, index: int) -> DnsServerConfig:
    ctx = obj.ctx
    where = {"file": ctx.file, "line": node.line, "index": index, "path": path}
    if isinstance(node, JString):
        address, system = _address(obj, node, path)
        return DnsServerConfig(address=address, system=system, **where)  # type: ignore[arg-type]
    if not isinstance(node, JObject):
        raise ctx.error(
            node, path, f"expected an address or a name server object, got {describe_typed(node)}"
        )
    server = ctx.expect_object(node, path)
    address_node = server.get("address")
    if address_node is None:
        raise server.error('the name server has no "address"')
    address, system = _address(server, address_node, server.sub("address"))
    port = server.integer("port", 0, UINT16) or 53
    domains: list[DnsPattern] = []
    domains_node = server.get("domains")
    if domains_node is not None:
        # A Go []string: an array only (a lone string is refused, as 4.34 does).
        items = ctx.expect_array(domains_node, server.sub("domains"))
        for i, item in enumerate(items.items):
            item_path = join(server.sub("domains"), i)
            parsed = parse_pattern(ctx.expect_string(item, item_path), plain="keyword")
            if isinstance(parsed, str):
                raise ctx.error(item, item_path, parsed)
            domains.append(parsed)
    expect = server.string_list("expectIPs") or []
    for i, text in enumerate(expect):
        problem = _ip_pattern_problem(text)
        if problem is not None:
            item_node = server.get("expectIPs")
            item_path = server.sub("expectIPs")
            if isinstance(item_node, JArray):
                item_node, item_path = item_node.items[i], join(item_path, i)
            raise ctx.error(item_node, item_path, problem)
    client_ip = _client_ip(server)
    _refuse_later(server, _LATER_SERVER_KEYS)
    server.finish()
    if system and client_ip:
        # 4.34 honours domains and expectIPs for "localhost" too; clientIp means nothing.
        message = "has no effect on the system resolver (localhost)"
        ctx.warn(server.get("clientIp"), server.sub("clientIp"), message)
    return DnsServerConfig(
        address=address,
        port=port,
        system=system,
        domains=tuple(domains),
        expect_ips=tuple(expect),
        client_ip=client_ip,
        **where,  # type: ignore[arg-type]
    )


def _ip_pattern_problem(text: str) -> str | None:
    """What is wrong with an ``expectIPs`` entry (as the router reads an ``ip`` entry)."""
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in ("geoip", "ext", "ext-ip"):
        # A geoip list: read when the node is built (raybridge.dns, matchers.py), as a
        # routing rule's are.
        return None if rest else f"empty list name in {text!r}"
    address, _, mask = text.partition("/")
    if normalize_ip(address) is None:
        return f"invalid IP or CIDR {text!r}"
    try:
        ipaddress.ip_network(f"{normalize_ip(address)}/{mask}" if mask else address, strict=False)
    except ValueError:
        return f"invalid IP or CIDR {text!r}"
    return None


def _hosts(obj: Obj) -> list[HostMapping]:
    ctx = obj.ctx
    hosts = obj.object("hosts")
    if hosts is None:
        return []
    # A Go map: keys are exact (no case folding), the last duplicate wins, and 4.34 adds
    # the entries in the sorted order of their keys.
    entries: dict[str, tuple[JString, JValue]] = {}
    for key, value in hosts.node.items:
        if key.value in entries:
            ctx.warn(key, hosts.sub(key.value), "duplicate name: the last one wins")
        entries[key.value] = (key, value)
    out: list[HostMapping] = []
    for index, name in enumerate(sorted(entries)):
        key, value = entries[name]
        path = hosts.sub(name)
        if value.kind == "null":
            raise ctx.error(value, path, "expected an address, got null")
        pattern = parse_pattern(name, plain="full")
        if isinstance(pattern, str):
            raise ctx.error(key, path, pattern)
        if not name:
            ctx.warn(key, path, "an empty name never matches")
        ips: tuple[str, ...] = ()
        alias: str | None = None
        if isinstance(value, JArray):
            found: list[str] = []
            for i, item in enumerate(value.items):
                ip = normalize_ip(ctx.expect_string(item, join(path, i)))
                if ip is None:
                    raise ctx.error(
                        item,
                        join(path, i),
                        f"{describe(item)} is not an IP address (a list "
                        "holds IP addresses; an alias is a single name)",
                    )
                found.append(ip)
            if not found:
                raise ctx.error(value, path, "an empty list maps the name to nothing")
            ips = tuple(found)
            ctx.warn(
                value,
                path,
                "a list of addresses is a later V2Ray's form: V2Ray 4.34 takes one address "
                "here and refuses this config",
            )
        elif isinstance(value, JString):
            text = value.value.strip()
            ip = normalize_ip(value.value)
            if ip is not None:
                ips = (ip,)
            elif not text:
                raise ctx.error(value, path, "neither an IP address nor a domain name")
            else:
                alias = text
        else:
            raise ctx.error(
                value, path, f"expected an IP address or a domain, got {describe_typed(value)}"
            )
        out.append(
            HostMapping(
                pattern=pattern,
                ips=ips,
                alias=alias,
                file=ctx.file,
                line=key.line,
                index=index,
                path=path,
            )
        )
    return out


def build_dns(obj: Obj) -> DnsConfig:
    ctx = obj.ctx
    servers: list[DnsServerConfig] = []
    for i, (path, node) in enumerate(obj.array("servers") or ()):
        servers.append(_server(obj, node, path, i))
    hosts = _hosts(obj)
    client_ip = _client_ip(obj)
    tag = obj.string("tag")
    _refuse_later(obj, _LATER_KEYS)
    obj.finish()
    return DnsConfig(
        servers=servers,
        hosts=hosts,
        client_ip=client_ip,
        tag=tag,
        file=ctx.file,
        line=obj.line,
    )
