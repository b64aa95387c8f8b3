"""Protocol ``settings`` objects, VMess users and ``streamSettings``.

Mirrors ``infra/conf/{socks,http,vmess,dokodemo,freedom,blackhole,transport_internet}.go``
of V2Ray 4.34 (docs/protocols.md 4.3, 4.4), with these deliberate differences:

* SOCKS ``auth`` must be ``noauth`` or ``password`` (any case); V2Ray silently treats every
  other value, even ``"Password"``, as noauth, which would open a proxy that was meant to
  be protected.
* SOCKS ``"auth": "password"`` needs accounts (missing, ``[]`` or a misspelled key is an
  error; V2Ray starts and refuses every client), and every SOCKS account a non-empty
  ``user`` (RFC 1929 has no empty user name, so such an account could never log in).
* Values V2Ray silently replaces by a default (an unknown VMess ``security``, an unknown
  freedom ``domainStrategy``, an unknown network name) produce a warning.
"""

from __future__ import annotations

import difflib
import json
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

from raybridge.config.fields import UINT16, UINT32, Ctx, Obj, describe, parse_address
from raybridge.config.jsonc import JValue
from raybridge.config.model import (
    VMESS_EXPERIMENTS,
    BlackholeSettings,
    DokodemoSettings,
    FreedomDomainStrategy,
    FreedomSettings,
    HttpInboundSettings,
    InboundSettings,
    Network,
    OutboundSettings,
    PacketEncoding,
    SocksInboundSettings,
    VMessInboundSettings,
    VMessOutboundSettings,
    VMessSecurity,
    VMessServerConfig,
    VMessUserConfig,
)
from raybridge.errors import ConfigError

T = TypeVar("T")

# --------------------------------------------------------------------------- VMess users

_UUID_GROUPS = (8, 4, 4, 4, 12)
_HEX = frozenset("0123456789abcdefABCDEF")
_SECURITIES: dict[str, VMessSecurity] = {
    "auto": "auto",
    "aes-128-gcm": "aes-128-gcm",
    "chacha20-poly1305": "chacha20-poly1305",
    "none": "none",
    "zero": "zero",
}
_PACKET_ENCODINGS: dict[str, PacketEncoding] = {
    "none": "none",
    "": "none",
    "packet": "packet",
    "packetaddr": "packet",
    "xudp": "xudp",
}


def parse_vmess_id(ctx: Ctx, node: JValue, path: str) -> uuid.UUID:
    """A VMess ``id`` the way V2Ray's ``uuid.ParseString`` reads it: five hex groups
    (8-4-4-4-12), each optionally preceded by one ``-``. V2Ray ignores anything after the
    32nd hex digit; we accept that too, with a warning."""
    text = ctx.expect_string(node, path)
    shown = describe(node)
    rest = text
    digits: list[str] = []
    for size in _UUID_GROUPS:
        if rest.startswith("-"):
            rest = rest[1:]
        group = rest[:size]
        if len(group) < size or not _HEX.issuperset(group):
            raise ctx.error(node, path, f"{shown} is not a valid UUID")
        digits.append(group)
        rest = rest[size:]
    if rest:
        ctx.warn(node, path, f"{shown}: text after the UUID is ignored")
    return uuid.UUID("".join(digits))


def vmess_user(obj: Obj, *, server: bool) -> VMessUserConfig:
    """A VMess user object (``id``, ``alterId``, ``level``, ``email``, ``security``)."""
    id_node = obj.get("id")
    if id_node is None:
        raise obj.missing("id")
    user = VMessUserConfig(
        id=parse_vmess_id(obj.ctx, id_node, obj.sub("id")),
        alter_id=obj.integer("alterId", 0, UINT16),
        level=obj.integer("level", 0, UINT32),
        email=obj.string("email"),
        security=_security(obj, server=server),
        experiments=_experiments(obj, server=server),
        file=obj.ctx.file,
        line=obj.line,
    )
    obj.finish()
    return user


def _security(obj: Obj, *, server: bool) -> VMessSecurity:
    node = obj.get("security")
    if node is None:
        return "auto"
    known = _SECURITIES.get(obj.ctx.expect_string(node, obj.sub("security")).lower())
    if known is not None:
        return known
    if not server:
        obj.ctx.warn(
            node, obj.sub("security"), f'unknown security {describe(node)}: V2Ray 4.34 uses "auto"'
        )
    return "auto"


def _experiments(obj: Obj, *, server: bool) -> frozenset[str]:
    node = obj.get("experiments")
    if node is None:
        return frozenset()
    raw = obj.ctx.expect_string(node, obj.sub("experiments"))
    names = frozenset(part.strip() for part in raw.split("|") if part.strip())
    unknown = sorted(names - VMESS_EXPERIMENTS)
    if unknown:
        raise obj.ctx.error(
            node,
            obj.sub("experiments"),
            f"unknown experiment {unknown[0]!r} (known: "
            + ", ".join(sorted(VMESS_EXPERIMENTS))
            + ")",
        )
    if server:
        obj.ctx.warn(
            node,
            obj.sub("experiments"),
            "experiments are a client's choice: a raybridge server accepts them all",
        )
        return frozenset()
    return names


def _accounts(obj: Obj, *, named: bool = False) -> dict[str, str]:
    """``accounts``; ``named``: every account needs a non-empty ``user`` (SOCKS)."""
    accounts: dict[str, str] = {}
    for acc in obj.objects("accounts"):
        user = acc.string("user")
        if named and not user:
            raise acc.ctx.error(
                acc.get("user") or acc.node,
                acc.sub("user"),
                'the account has no "user" name: no SOCKS client can log in with an empty '
                "one (RFC 1929)",
            )
        accounts[user] = acc.string("pass")
        acc.finish()
    return accounts


def _no_accounts(obj: Obj, auth_node: JValue | None) -> ConfigError:
    """``"auth": "password"`` without accounts: say where, and spot a misspelled key."""
    node = obj.get("accounts")
    if node is not None:
        return obj.ctx.error(
            node,
            obj.sub("accounts"),
            '"auth" is "password" but "accounts" is empty: nobody could log in (V2Ray starts '
            'and refuses every client); add {"user": "<name>", "pass": "<secret>"}',
        )
    for key, _ in obj.node.items:
        if key.value.lower() != "accounts" and difflib.get_close_matches(
            key.value.lower(), ["accounts"], n=1, cutoff=0.75
        ):
            return obj.ctx.error(
                key,
                obj.sub(key.value),
                f'"auth" is "password" but there are no accounts: did you mean "accounts"? '
                f'("{key.value}" is not a key)',
            )
    return obj.ctx.error(
        auth_node or obj.node,
        obj.sub("auth"),
        '"auth" is "password" but there are no "accounts": nobody could log in (V2Ray starts '
        'and refuses every client); add "accounts": [{"user": "<name>", "pass": "<secret>"}]',
    )


# --------------------------------------------------------------------------- inbound settings


def socks_inbound(obj: Obj) -> SocksInboundSettings:
    auth_node = obj.get("auth")
    auth = "noauth"
    if auth_node is not None:
        raw = obj.ctx.expect_string(auth_node, obj.sub("auth"))
        if raw.lower() in ("noauth", "password"):
            auth = raw.lower()
        else:
            close = difflib.get_close_matches(raw.lower(), ["noauth", "password"], n=1, cutoff=0.5)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise obj.ctx.error(
                auth_node,
                obj.sub("auth"),
                f'{describe(auth_node)} is not a SOCKS auth method: {hint}write "noauth" or '
                '"password" (V2Ray would silently run without authentication)',
            )
    accounts = _accounts(obj, named=True)
    if auth == "password" and not accounts:
        raise _no_accounts(obj, auth_node)
    ip_node = obj.get("ip")
    ip = None if ip_node is None else parse_address(obj.ctx.expect_string(ip_node, obj.sub("ip")))
    settings = SocksInboundSettings(
        auth="password" if auth == "password" else "noauth",
        accounts=accounts,
        udp=obj.boolean("udp"),
        ip=ip or None,
        user_level=obj.integer("userLevel", 0, UINT32),
        timeout=obj.integer("timeout", 0, UINT32),
    )
    obj.finish()
    return settings


def http_inbound(obj: Obj) -> HttpInboundSettings:
    settings = HttpInboundSettings(
        accounts=_accounts(obj),
        allow_transparent=obj.boolean("allowTransparent"),
        timeout=obj.integer("timeout", 0, UINT32),
        user_level=obj.integer("userLevel", 0, UINT32),
    )
    obj.finish()
    return settings


def _detour_to(obj: Obj) -> str | None:
    """``detour.to`` (or ``features.detour.to``, which ``detour`` wins over, as in
    ``infra/conf/vmess.go``): the tag of the dynamic-port inbound clients are sent to."""
    found: str | None = None
    for holder in (obj, obj.object("features")):
        if holder is None:
            continue
        detour = holder.object("detour")
        if detour is not None:
            to = detour.required_string("to")
            detour.finish()
            found = found or to
        if holder is not obj:
            holder.finish()
    return found


def vmess_inbound(obj: Obj) -> VMessInboundSettings:
    clients: list[VMessUserConfig] = []
    emails: dict[str, str] = {}
    for i, (path, item) in enumerate(obj.array("clients") or ()):
        user = vmess_user(obj.ctx.expect_object(item, path), server=True)
        if user.email:
            # V2Ray refuses to start: "User x already exists." (emails compare lower-cased)
            key = user.email.lower()
            if key in emails:
                raise obj.ctx.error(
                    item, path, f'email "{user.email}" is already used by {emails[key]}'
                )
            emails[key] = f"clients[{i}]"
        clients.append(user)
    default_alter_id = default_level = 0
    default = obj.object("default")
    if default is not None:
        default_alter_id = default.integer("alterId", 0, UINT16)
        default_level = default.integer("level", 0, 255)
        default.finish()
    settings = VMessInboundSettings(
        clients=clients,
        disable_insecure_encryption=obj.boolean("disableInsecureEncryption"),
        aead_forced=obj.boolean("aeadForced"),
        detour_to=_detour_to(obj),
        default_alter_id=default_alter_id,
        default_level=default_level,
    )
    if not clients:
        obj.ctx.warn(
            obj.node,
            obj.path,
            "no clients: every connection will be refused (but those a detour sends here)",
        )
    obj.finish()
    return settings


def network_set(ctx: Ctx, node: JValue, path: str) -> frozenset[Network]:
    """V2Ray's ``NetworkList`` (``"tcp"``, ``"tcp,udp"``, ``["tcp", "udp"]``), split without
    trimming; unknown names (``" udp"``) are dropped with a warning, as V2Ray drops them
    silently."""
    names = ctx.string_list(node, path)
    found: set[Network] = set()
    for name in names:
        low = name.lower()
        if low == "tcp":
            found.add("tcp")
        elif low == "udp":
            found.add("udp")
        else:
            hint = ' (no spaces: write "tcp,udp")' if name.strip().lower() in ("tcp", "udp") else ""
            ctx.warn(node, path, f"unknown network {json.dumps(name)} is ignored{hint}")
    return frozenset(found)


def dokodemo(obj: Obj) -> DokodemoSettings:
    address_node = obj.get("address")
    address = None
    if address_node is not None:
        address = parse_address(obj.ctx.expect_string(address_node, obj.sub("address"))) or None
    networks: frozenset[Network] = frozenset({"tcp"})
    net_node = obj.get("network")
    if net_node is not None:
        networks = network_set(obj.ctx, net_node, obj.sub("network"))
        if not networks:
            raise obj.ctx.error(net_node, obj.sub("network"), "no network specified")
    settings = DokodemoSettings(
        address=address,
        port=obj.integer("port", 0, UINT16),
        networks=networks,
        follow_redirect=obj.boolean("followRedirect"),
        timeout=obj.integer("timeout", 0, UINT32),
        user_level=obj.integer("userLevel", 0, UINT32),
    )
    if settings.address is None and not settings.follow_redirect:
        obj.ctx.warn(
            obj.node, obj.path, 'no "address" and followRedirect is off: every connection fails'
        )
    if settings.follow_redirect:
        node = obj.get("followRedirect")
        where = obj.sub("followRedirect")
        if not sys.platform.startswith("linux"):
            message = "followRedirect needs Linux (SO_ORIGINAL_DST, IP_TRANSPARENT)"
            raise obj.ctx.error(node, where, message)
    obj.finish()
    return settings


INBOUND_SETTINGS: dict[str, Callable[[Obj], InboundSettings]] = {
    "socks": socks_inbound,
    "http": http_inbound,
    "vmess": vmess_inbound,
    "dokodemo-door": dokodemo,
}

# --------------------------------------------------------------------------- outbound settings

_FREEDOM_STRATEGIES: dict[str, FreedomDomainStrategy] = {
    "asis": "AsIs",
    "": "AsIs",
    "useip": "UseIP",
    "use_ip": "UseIP",
    "useip4": "UseIPv4",
    "useipv4": "UseIPv4",
    "use_ipv4": "UseIPv4",
    "use_ip_v4": "UseIPv4",
    "use_ip4": "UseIPv4",
    "useip6": "UseIPv6",
    "useipv6": "UseIPv6",
    "use_ipv6": "UseIPv6",
    "use_ip_v6": "UseIPv6",
    "use_ip6": "UseIPv6",
}


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort`` for ``host:port``, ``[v6]:port`` and ``:port``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            return None
        host, port = text[1:close], text[close + 2 :]
        if "[" in host or "]" in port or "[" in port:
            return None
        return host, port
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host or "[" in host or "]" in host or "]" in port:
        return None
    return host, port


def freedom(obj: Obj) -> FreedomSettings:
    strategy: FreedomDomainStrategy = "AsIs"
    ds_node = obj.get("domainStrategy")
    if ds_node is not None:
        raw = obj.ctx.expect_string(ds_node, obj.sub("domainStrategy"))
        mapped = _FREEDOM_STRATEGIES.get(raw.lower())
        if mapped is None:
            obj.ctx.warn(
                ds_node,
                obj.sub("domainStrategy"),
                f'unknown domainStrategy {describe(ds_node)}: using "AsIs" as V2Ray does',
            )
        else:
            strategy = mapped
    redirect: tuple[str | None, int] | None = None
    red_node = obj.get("redirect")
    if red_node is not None:
        path = obj.sub("redirect")
        text = obj.ctx.expect_string(red_node, path)
        if text:
            parts = _split_host_port(text)
            if parts is None:
                raise obj.ctx.error(
                    red_node, path, f'{describe(red_node)} is not a "host:port" address'
                )
            host, port_text = parts
            if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > UINT16:
                raise obj.ctx.error(red_node, path, f"{describe(red_node)} has an invalid port")
            host = parse_address(host) if host else ""
            # freedom leaves the address alone for an empty host and for 0.0.0.0 (AnyIP).
            redirect = (host if host and host != "0.0.0.0" else None, int(port_text))
    settings = FreedomSettings(
        domain_strategy=strategy,
        redirect=redirect,
        user_level=obj.integer("userLevel", 0, UINT32),
        timeout=obj.integer("timeout", 0, UINT32),
        block_private=obj.boolean("blockPrivate"),
    )
    obj.finish()
    return settings


def _one_of(obj: Obj, name: str, choices: Mapping[str, T], what: str) -> T | None:
    """Key ``name`` (a string, any case) as one of ``choices``; ``None`` when absent. An
    unknown value is an error: ``unknown <what> "x" (<the choices>)``."""
    node = obj.get(name)
    if node is None:
        return None
    value = choices.get(obj.ctx.expect_string(node, obj.sub(name)).lower())
    if value is None:
        names = [f'"{choice}"' for choice in dict.fromkeys(choices.values())]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise obj.ctx.error(node, obj.sub(name), f"unknown {what} {describe(node)} ({listed})")
    return value


_BLACKHOLE_RESPONSES: dict[str, Literal["none", "http"]] = {"none": "none", "http": "http"}


def blackhole(obj: Obj) -> BlackholeSettings:
    response: Literal["none", "http"] = "none"
    resp = obj.object("response")
    if resp is not None:
        if resp.get("type") is None:
            raise resp.missing("type")
        response = _one_of(resp, "type", _BLACKHOLE_RESPONSES, "blackhole response type") or "none"
        resp.finish()
    obj.finish()
    return BlackholeSettings(response=response)


def vmess_outbound(obj: Obj) -> VMessOutboundSettings:
    vnext = obj.array("vnext")
    if not vnext:
        raise obj.error('"vnext" is missing or empty: no VMess server configured')
    servers: list[VMessServerConfig] = []
    for path, item in vnext:
        srv = obj.ctx.expect_object(item, path)
        addr_node = srv.get("address")
        if addr_node is None:
            raise srv.missing("address")
        address = parse_address(srv.ctx.expect_string(addr_node, srv.sub("address")))
        if not address:
            raise srv.ctx.error(addr_node, srv.sub("address"), "address is empty")
        port_node = srv.get("port")
        if port_node is None:
            raise srv.missing("port")
        port = srv.ctx.expect_int(port_node, srv.sub("port"), 0, UINT16)
        if port == 0:
            raise srv.ctx.error(port_node, srv.sub("port"), "0 is not a server port")
        users = [vmess_user(u, server=False) for u in srv.objects("users")]
        if not users:
            raise srv.error('"users" is missing or empty: no VMess user configured')
        srv.finish()
        servers.append(
            VMessServerConfig(
                address=address, port=port, users=users, file=srv.ctx.file, line=srv.line
            )
        )
    packet_encoding = _one_of(obj, "packetEncoding", _PACKET_ENCODINGS, "packetEncoding")
    obj.finish()
    return VMessOutboundSettings(servers=servers, packet_encoding=packet_encoding or "none")


OUTBOUND_SETTINGS: dict[str, Callable[[Obj], OutboundSettings]] = {
    "freedom": freedom,
    "blackhole": blackhole,
    "vmess": vmess_outbound,
}

# --------------------------------------------------------------------------- streamSettings
