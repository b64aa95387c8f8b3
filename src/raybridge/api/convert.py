"""V2Ray's protobuf handler configs as the JSON objects of a config file.

``HandlerService.AddInbound``/``AddOutbound``/``AlterInbound`` carry V2Ray's compiled
config (``core.InboundHandlerConfig`` with ``TypedMessage`` settings, what ``infra/conf``
builds from JSON). raybridge turns each back into the JSON object a config file would
have, so that the node builds and checks it exactly as it does a file's (the same
defaults, the same ``ConfigError`` messages). Taken: socks, vmess and dokodemo-door
inbounds on plain TCP; freedom, blackhole and vmess outbounds. Anything else is refused
with an :class:`ApiError` that says what, never half-applied.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, TypeVar

from raybridge.api import messages as pb
from raybridge.protocols.protobuf import Message, ProtobufError


class ApiError(Exception):
    """A request raybridge cannot carry out (the call ends with this message)."""


_INBOUND_PROTOCOLS = {
    pb.SocksServerConfig.TYPE: "socks",
    pb.VMessInboundConfig.TYPE: "vmess",
    pb.DokodemoConfig.TYPE: "dokodemo-door",
}
_OUTBOUND_PROTOCOLS = {
    pb.FreedomConfig.TYPE: "freedom",
    pb.BlackholeConfig.TYPE: "blackhole",
    pb.VMessOutboundConfig.TYPE: "vmess",
}
_NETWORKS = {2: "tcp", 3: "udp"}  # common/net/network.proto (1, RawTCP, is deprecated TCP)
_DOMAIN_STRATEGIES = ("AsIs", "UseIP", "UseIPv4", "UseIPv6")
_SECURITY = {2: "auto", 3: "aes-128-gcm", 4: "chacha20-poly1305", 5: "none"}
_SNIFF = {0: "http", 1: "tls"}  # app/proxyman KnownProtocols


def unpack(typed: pb.TypedMessage | None, expected: type[Message], what: str) -> Any:
    """The message of type ``expected`` inside ``typed``."""
    if typed is None:
        raise ApiError(f"{what} is missing")
    if typed.type != expected.TYPE:
        raise ApiError(f"{what}: expected {expected.TYPE}, got {typed.type or 'no type'}")
    try:
        return expected.decode(typed.value)
    except ProtobufError as exc:
        raise ApiError(f"{what}: {exc}") from None


def address(value: pb.IPOrDomain | None) -> str | None:
    if value is None:
        return None
    if value.ip:
        if len(value.ip) not in (4, 16):
            raise ApiError(f"an IP address of {len(value.ip)} bytes")
        return str(ipaddress.ip_address(value.ip))
    return value.domain or None


_Handler = TypeVar("_Handler", pb.InboundHandlerConfig, pb.OutboundHandlerConfig)


def _protocol(
    config: _Handler | None, side: str, protocols: dict[str, str]
) -> tuple[_Handler, str, str]:
    """``config``, the type of its proxy settings and the protocol that names; refused if
    there is no config (``side``: "inbound" or "outbound") or the API does not add it."""
    if config is None:
        raise ApiError(f"Add{side.capitalize()}: no {side} given")
    kind = config.proxy_settings.type if config.proxy_settings is not None else ""
    protocol = protocols.get(kind)
    if protocol is None:
        *names, last = protocols.values()
        raise ApiError(
            f"{side} {config.tag!r}: {kind or 'no proxy settings'} is not taken: raybridge's "
            f"API adds {', '.join(names)} and {last} {side}s"
        )
    return config, kind, protocol


# --------------------------------------------------------------------------- inbounds


def inbound_json(config: pb.InboundHandlerConfig | None) -> dict[str, Any]:
    """The ``inbounds`` entry that ``config`` (``AddInboundRequest.inbound``) describes."""
    config, kind, protocol = _protocol(config, "inbound", _INBOUND_PROTOCOLS)
    receiver: pb.ReceiverConfig = unpack(
        config.receiver_settings, pb.ReceiverConfig, "receiver settings"
    )
    out: dict[str, Any] = {"protocol": protocol}
    if config.tag:
        out["tag"] = config.tag
    if receiver.port_range is None or not receiver.port_range.From:
        raise ApiError(f"inbound {config.tag!r}: no port")
    first, last = receiver.port_range.From, receiver.port_range.To or receiver.port_range.From
    out["port"] = first if first == last else f"{first}-{last}"
    listen = address(receiver.listen)
    if listen is not None:
        out["listen"] = listen
    if receiver.allocation_strategy:
        raise ApiError("allocation strategies are not taken: raybridge listens on every port")
    if receiver.stream_settings:
        raise ApiError(
            "stream settings are not taken through the API: raybridge adds plain TCP inbounds"
        )
    sniffing = receiver.sniffing_settings
    overrides = [_SNIFF.get(p, "") for p in receiver.domain_override]
    if sniffing is not None and (sniffing.enabled or sniffing.destination_override):
        out["sniffing"] = {
            "enabled": sniffing.enabled,
            "destOverride": list(sniffing.destination_override),
        }
    elif overrides:
        out["domainOverride"] = overrides
    settings = unpack(config.proxy_settings, _TYPES[kind], f"{protocol} settings")
    if isinstance(settings, pb.SocksServerConfig):
        out["settings"] = _socks(settings)
    elif isinstance(settings, pb.VMessInboundConfig):
        out["settings"] = _vmess_inbound(settings)
    else:
        out["settings"] = _dokodemo(settings, receiver.receive_original_destination)
    return out


def _socks(config: pb.SocksServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "auth": "password" if config.auth_type == 1 else "noauth",
        "udp": config.udp_enabled,
        "userLevel": config.user_level,
    }
    if config.accounts:
        out["accounts"] = [{"user": u, "pass": p} for u, p in config.accounts.items()]
    ip = address(config.address)
    if ip is not None:
        out["ip"] = ip
    if config.timeout:
        out["timeout"] = config.timeout
    return out


def _vmess_inbound(config: pb.VMessInboundConfig) -> dict[str, Any]:
    if config.detour is not None and config.detour.to:
        raise ApiError("VMess detour (dynamic ports) is not supported by raybridge")
    out: dict[str, Any] = {"clients": [vmess_client(u) for u in config.user]}
    if config.default is not None:
        out["default"] = {"alterId": config.default.alter_id, "level": config.default.level}
    if config.secure_encryption_only:
        out["disableInsecureEncryption"] = True
    return out


def vmess_client(user: pb.User | None) -> dict[str, Any]:
    """A VMess ``clients`` entry from a ``protocol.User`` with a ``vmess.Account``."""
    if user is None:
        raise ApiError("no user given")
    account: pb.VMessAccount = unpack(user.account, pb.VMessAccount, "user account")
    try:
        uuid.UUID(account.id)
    except ValueError:
        raise ApiError(f"invalid VMess user id {account.id!r}") from None
    out: dict[str, Any] = {"id": account.id, "alterId": account.alter_id, "level": user.level}
    if user.email:
        out["email"] = user.email
    return out


def _dokodemo(config: pb.DokodemoConfig, follow: bool) -> dict[str, Any]:
    networks = list(config.networks) or (
        list(config.network_list.network) if config.network_list else []
    )
    names = sorted({_NETWORKS.get(n, "tcp" if n == 1 else "") for n in networks} - {""})
    out: dict[str, Any] = {"port": config.port, "userLevel": config.user_level}
    target = address(config.address)
    if target is not None:
        out["address"] = target
    if names:
        out["network"] = ",".join(names)
    if config.follow_redirect or follow:
        out["followRedirect"] = True
    if config.timeout:
        out["timeout"] = config.timeout
    return out


# --------------------------------------------------------------------------- outbounds


def outbound_json(config: pb.OutboundHandlerConfig | None) -> dict[str, Any]:
    """The ``outbounds`` entry that ``config`` (``AddOutboundRequest.outbound``) describes."""
    config, kind, protocol = _protocol(config, "outbound", _OUTBOUND_PROTOCOLS)
    out: dict[str, Any] = {"protocol": protocol}
    if config.tag:
        out["tag"] = config.tag
    if config.sender_settings is not None:
        sender: pb.SenderConfig = unpack(config.sender_settings, pb.SenderConfig, "sender")
        via = address(sender.via)
        if via is not None:
            out["sendThrough"] = via
        if sender.stream_settings:
            raise ApiError(
                "stream settings are not taken through the API: raybridge adds plain TCP outbounds"
            )
        if sender.proxy_settings is not None and sender.proxy_settings.tag:
            out["proxySettings"] = {"tag": sender.proxy_settings.tag}
        mux = sender.multiplex_settings
        if mux is not None and mux.enabled:
            out["mux"] = {"enabled": True, "concurrency": mux.concurrency}
    settings = unpack(config.proxy_settings, _TYPES[kind], f"{protocol} settings")
    if isinstance(settings, pb.FreedomConfig):
        out["settings"] = _freedom(settings)
    elif isinstance(settings, pb.BlackholeConfig):
        kind = settings.response.type if settings.response is not None else ""
        out["settings"] = {"response": {"type": "http" if kind == pb.BLACKHOLE_HTTP else "none"}}
    else:
        out["settings"] = {"vnext": [_server(s) for s in settings.Receiver]}
    return out


def _freedom(config: pb.FreedomConfig) -> dict[str, Any]:
    if config.domain_strategy >= len(_DOMAIN_STRATEGIES):
        raise ApiError(f"unknown freedom domain strategy {config.domain_strategy}")
    out: dict[str, Any] = {
        "domainStrategy": _DOMAIN_STRATEGIES[config.domain_strategy],
        "userLevel": config.user_level,
    }
    override = config.destination_override
    if override is not None and override.server is not None:
        host = address(override.server.address) or ""
        if ":" in host:
            host = f"[{host}]"
        out["redirect"] = f"{host}:{override.server.port}"
    if config.timeout:
        out["timeout"] = config.timeout
    return out


def _server(server: pb.ServerEndpoint) -> dict[str, Any]:
    users = []
    for user in server.user:
        entry = vmess_client(user)
        account: pb.VMessAccount = unpack(user.account, pb.VMessAccount, "user account")
        security = account.security_settings.type if account.security_settings else 0
        entry["security"] = _SECURITY.get(security, "auto")
        users.append(entry)
    return {"address": address(server.address) or "", "port": server.port, "users": users}


#: Each settings message by type name (what ``unpack`` decodes into).
_TYPES: dict[str, type[Message]] = {
    t.TYPE: t
    for t in (
        pb.SocksServerConfig,
        pb.VMessInboundConfig,
        pb.DokodemoConfig,
        pb.FreedomConfig,
        pb.BlackholeConfig,
        pb.VMessOutboundConfig,
    )
}
