"""One parsed file -> :class:`FileConfig` (its sections, validated, not yet merged).

Mirrors ``infra/conf/v2ray.go`` (``Config``, ``InboundDetourConfig``,
``OutboundDetourConfig``), ``log.go``, ``policy.go`` and ``reverse.go`` of V2Ray 4.34.
Merging several files is :mod:`raybridge.config.loader`'s job.

raybridge's own top-level sections are added with :func:`register_section`; V2Ray ignores
unknown top-level keys, so a config with, say, a ``"status"`` section still runs on V2Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict, TypeVar

from raybridge.config.dns import build_dns
from raybridge.config.fields import (
    INT32_MAX,
    INT32_MIN,
    UINT16,
    UINT32,
    Ctx,
    Obj,
    describe,
    describe_typed,
    inbound_ports,
    join,
    normalize_ip,
    parse_address,
)
from raybridge.config.jsonc import JArray, JObject, JString, JValue
from raybridge.config.model import (
    API_SERVICES,
    SUPPORTED_INBOUNDS,
    SUPPORTED_OUTBOUNDS,
    AllocateConfig,
    ApiConfig,
    DnsConfig,
    DokodemoSettings,
    InboundConfig,
    LevelPolicy,
    LogConfig,
    LogLevel,
    MuxConfig,
    OutboundConfig,
    PolicyConfig,
    RaybridgeOptions,
    ReverseConfig,
    ReverseEndpoint,
    RoutingConfig,
    StreamSettings,
    SystemPolicy,
)
from raybridge.config.rules import build_routing
from raybridge.config.settings import (
    INBOUND_SETTINGS,
    OUTBOUND_SETTINGS,
)
from raybridge.config.stream import parse_transport, stream_for

#: Protocols V2Ray 4.34 knows but raybridge does not implement.
KNOWN_V2RAY_INBOUNDS = frozenset({"shadowsocks", "vless", "trojan", "mtproto"})
KNOWN_V2RAY_OUTBOUNDS = frozenset(
    {"http", "socks", "shadowsocks", "vless", "trojan", "mtproto", "dns"}
)

#: V2Ray 4.34's top-level keys (``conf.Config``).
V2RAY_TOP_LEVEL = (
    "port",
    "inbound",
    "outbound",
    "inboundDetour",
    "outboundDetour",
    "log",
    "routing",
    "dns",
    "inbounds",
    "outbounds",
    "transport",
    "policy",
    "api",
    "stats",
    "reverse",
)

SectionParser = Callable[[Obj], object]
T = TypeVar("T")
_EXTRA_SECTIONS: dict[str, tuple[str, SectionParser]] = {}


def register_section(name: str, parser: SectionParser) -> None:
    """Add a raybridge top-level section. ``parser`` gets the section as an :class:`Obj`
    (call ``obj.finish()`` to warn about unknown keys) and returns the value stored in
    ``Config.sections[name]``. Like V2Ray's sections, a later file replaces it whole."""
    key = name.lower()
    if key in {n.lower() for n in V2RAY_TOP_LEVEL}:
        raise ValueError(f"{name!r} is a V2Ray top-level key")
    _EXTRA_SECTIONS[key] = (name, parser)


@dataclass(slots=True)
class PendingInbound:
    """An inbound before merging: V2Ray's top-level ``port`` may still supply its port."""

    config: InboundConfig
    has_port: bool


@dataclass(slots=True)
class FileConfig:
    """The sections one file defines (``None``: absent, so an earlier file's stays)."""

    file: str
    port: int | None = None
    log: LogConfig | None = None
    routing: RoutingConfig | None = None
    policy: PolicyConfig | None = None
    stats: bool | None = None
    api: ApiConfig | None = None
    reverse: ReverseConfig | None = None
    dns: DnsConfig | None = None
    inbound: PendingInbound | None = None
    inbound_detours: list[PendingInbound] | None = None
    inbounds: list[PendingInbound] = field(default_factory=list)
    outbound: OutboundConfig | None = None
    outbound_detours: list[OutboundConfig] | None = None
    outbounds: list[OutboundConfig] = field(default_factory=list)
    sections: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- protocol names


def _protocol(obj: Obj, supported: frozenset[str], known: frozenset[str], kind: str) -> str:
    node = obj.get("protocol")
    if node is None:
        raise obj.missing("protocol")
    path = obj.sub("protocol")
    name = obj.ctx.expect_string(node, path).lower()  # V2Ray lower-cases it too
    if name in supported:
        return name
    if name in known:
        raise obj.ctx.error(node, path, f'protocol "{name}" is not supported by raybridge')
    other = SUPPORTED_OUTBOUNDS if kind == "inbound" else SUPPORTED_INBOUNDS
    hint = (
        f" (it is an {'outbound' if kind == 'inbound' else 'inbound'} protocol)"
        if (name in other)
        else ""
    )
    raise obj.ctx.error(node, path, f"unknown protocol {describe(node)} for an {kind}{hint}")


def _settings(obj: Obj) -> Obj:
    node = obj.get("settings")
    if node is None:
        return Obj(obj.ctx, JObject([], obj.line, obj.node.col), obj.sub("settings"))
    return obj.ctx.expect_object(node, obj.sub("settings"))


# --------------------------------------------------------------------------- inbounds

# V2Ray 4.34's names for destOverride/domainOverride (infra/conf/v2ray.go), case-insensitive.
_SNIFF_PROTOCOLS = {"http": "http", "tls": "tls", "https": "tls", "ssl": "tls"}
#: Keys of later V2Ray/Xray sniffing objects; 4.34 ignores them, which would change what
#: they ask for (docs/protocols.md 4.10), so they are refused.
_LATER_SNIFF_KEYS = {
    "routeOnly": "4.34 dials the sniffed name whenever destOverride names its protocol",
    "metadataOnly": "4.34 always reads the first bytes of the connection",
    "domainsExcluded": "4.34 overrides every sniffed name",
}


def _sniff_list(obj: Obj, name: str) -> frozenset[str] | None:
    values = obj.string_list(name)
    if values is None:
        return None
    node = obj.get(name)
    out: set[str] = set()
    for i, value in enumerate(values):
        mapped = _SNIFF_PROTOCOLS.get(value.lower())
        if mapped is None:
            item = node.items[i] if isinstance(node, JArray) else node
            path = join(obj.sub(name), i) if isinstance(node, JArray) else obj.sub(name)
            raise obj.ctx.error(item, path, _unknown_sniff_protocol(value))
        out.add(mapped)
    return frozenset(out)


def _unknown_sniff_protocol(value: str) -> str:
    text = f'unknown sniffing protocol "{value}": V2Ray 4.34 overrides "http" and "tls"'
    if value.lower() == "bittorrent":
        return text + ' (BitTorrent is sniffed anyway, for "protocol" rules; it has no name)'
    return text + ' ("https" and "ssl" mean "tls")'


def _listen(obj: Obj) -> str:
    node = obj.get("listen")
    if node is None:
        return "0.0.0.0"
    path = obj.sub("listen")
    raw = obj.ctx.expect_string(node, path)
    ip = normalize_ip(raw)
    if ip is not None:
        return ip
    name = parse_address(raw)
    if name == "localhost":
        return "127.0.0.1"  # V2Ray listens on 127.0.0.1 for "localhost"
    if name.startswith(("/", "@")):
        raise obj.ctx.error(
            node, path, f"listening on a Unix domain socket ({describe(node)}) is not supported"
        )
    raise obj.ctx.error(node, path, f"cannot listen on {describe(node)}: not an IP address")


def _allocate(alloc: Obj, ports: list[int]) -> AllocateConfig | None:
    """``allocate``: ``"always"`` (every port of the range: ``None``), ``"random"``
    (dynamic ports, :class:`AllocateConfig`); ``"external"`` is refused, as V2Ray 4.34
    does not start with it (``app/proxyman/inbound/inbound.go``)."""
    ctx = alloc.ctx
    strategy_node = alloc.get("strategy")
    strategy = (
        ""
        if strategy_node is None
        else ctx.expect_string(strategy_node, alloc.sub("strategy")).lower()
    )
    if strategy not in ("always", "random", "external"):
        raise ctx.error(
            strategy_node or alloc.node,
            alloc.sub("strategy"),
            f"unknown allocation strategy {describe(strategy_node) if strategy_node else ''}",
        )
    concurrency = alloc.integer("concurrency", 0, UINT32, 3)
    refresh = alloc.integer("refresh", 0, UINT32, 5)
    if strategy == "external":
        raise ctx.error(
            strategy_node,
            alloc.sub("strategy"),
            'strategy "external" is not implemented (V2Ray 4.34 refuses to start with it '
            'too): use "always"',
        )
    alloc.finish()
    if strategy != "random":
        return None
    if concurrency >= len(ports):  # V2Ray's check, in infra/conf/v2ray.go
        node = alloc.get("concurrency") or alloc.node
        message = f"not enough ports: concurrency {concurrency}, {len(ports)} in the range"
        raise ctx.error(node, alloc.sub("concurrency"), message)
    for name, value in (("concurrency", concurrency), ("refresh", refresh)):
        if value == 0:
            raise ctx.error(alloc.get(name), alloc.sub(name), f"{name} must be at least 1")
    return AllocateConfig(concurrency=concurrency, refresh=refresh)


def _sniffing(obj: Obj) -> tuple[bool, frozenset[str]]:
    """``sniffing`` (or the legacy ``domainOverride``): (enabled, destOverride)."""
    legacy = _sniff_list(obj, "domainOverride")  # validated even when "sniffing" wins
    sniff = obj.object("sniffing")
    if sniff is not None:
        enabled = sniff.boolean("enabled")
        dest_override = _sniff_list(sniff, "destOverride") or frozenset()
        for key, why in _LATER_SNIFF_KEYS.items():
            node = sniff.get(key)
            if node is not None:
                raise sniff.ctx.error(
                    node, sniff.sub(key), f'"{key}" is not a V2Ray 4.34 setting ({why}); remove it'
                )
        if dest_override and not enabled:
            sniff.ctx.warn(
                sniff.get("destOverride"),
                sniff.sub("destOverride"),
                'has no effect: sniffing is off (add "enabled": true)',
            )
        sniff.finish()
        return enabled, dest_override
    if legacy:
        # V2Ray: a non-empty domainOverride means sniffing on, overriding these.
        return True, legacy
    return False, frozenset()


class _Where(TypedDict):
    file: str
    line: int
    path: str


def _where(obj: Obj) -> _Where:
    """Where an inbound or outbound object was written (see ``model.Located``)."""
    return {"file": obj.ctx.file, "line": obj.line, "path": obj.path}


def build_inbound(obj: Obj) -> PendingInbound:
    ctx = obj.ctx
    protocol = _protocol(obj, SUPPORTED_INBOUNDS, KNOWN_V2RAY_INBOUNDS, "inbound")
    tag = obj.string("tag")
    listen = _listen(obj)
    port_node = obj.get("port")
    ports = [] if port_node is None else inbound_ports(ctx, port_node, obj.sub("port"))
    alloc = obj.object("allocate")
    allocate = None if alloc is None else _allocate(alloc, ports)
    stream = stream_for(obj)
    sniffing_enabled, dest_override = _sniffing(obj)
    settings_obj = _settings(obj)
    settings = INBOUND_SETTINGS[protocol](settings_obj)
    if (
        isinstance(settings, DokodemoSettings)
        and settings.follow_redirect
        and "udp" in settings.networks
        and stream.sockopt.tproxy != "tproxy"
    ):
        raise ctx.error(
            settings_obj.get("followRedirect"),
            settings_obj.sub("followRedirect"),
            'followRedirect for UDP needs TPROXY ("streamSettings": {"sockopt": {"tproxy": '
            '"tproxy"}}): after a REDIRECT a datagram no longer says where it was going',
        )
    obj.finish()
    return PendingInbound(
        InboundConfig(
            protocol=protocol,
            tag=tag,
            listen=listen,
            ports=ports,
            settings=settings,
            stream=stream,
            sniffing_enabled=sniffing_enabled,
            sniffing_dest_override=dest_override,
            allocate=allocate,
            **_where(obj),
        ),
        has_port=port_node is not None,
    )


# --------------------------------------------------------------------------- outbounds


def _mux(obj: Obj) -> MuxConfig:
    enabled = obj.boolean("enabled")
    node = obj.get("concurrency")
    concurrency = (
        0 if node is None else obj.ctx.expect_int(node, obj.sub("concurrency"), -32768, 32767)
    )
    obj.finish()
    if concurrency < 0:
        return MuxConfig(enabled=False)
    if concurrency > 1024:
        raise obj.ctx.error(
            node, obj.sub("concurrency"), f"invalid mux concurrency {concurrency} (1..1024)"
        )
    return MuxConfig(enabled=enabled, concurrency=concurrency or 8)


def _proxy_tag(obj: Obj) -> str | None:
    proxy = obj.object("proxySettings")
    if proxy is None:
        return None
    tag = proxy.string("tag")
    if not tag:
        raise proxy.error("proxy tag is not set")
    proxy.finish()
    return tag


def _chained(obj: Obj, protocol: str, stream: StreamSettings, send_through: str | None) -> None:
    """Warn about what V2Ray 4.34 does not apply to an outbound with ``proxySettings``
    (``Handler.Dial`` in ``app/proxyman/outbound/handler.go``: the hop carries the
    connection and only the TLS of ``streamSettings`` is put on it)."""
    path = obj.sub("proxySettings")
    node = obj.get("proxySettings")
    if protocol == "blackhole":
        obj.ctx.warn(node, path, "has no effect: blackhole makes no connection to carry")
        return
    unused = []
    if stream.network != "tcp":
        unused.append(f'"network": "{stream.network}"')
    if stream.tcp.header != "none":
        unused.append("the tcp http header")
    if stream.sockopt.mark or stream.sockopt.tcp_fast_open is not None:
        unused.append("sockopt")
    if send_through is not None:
        unused.append("sendThrough")
    if unused:
        obj.ctx.warn(
            node,
            path,
            f"{', '.join(unused)} not applied: the connection is carried by the outbound "
            '"proxySettings" names, with only the TLS of streamSettings on it (as in V2Ray 4.34)',
        )


def build_outbound(obj: Obj) -> OutboundConfig:
    protocol = _protocol(obj, SUPPORTED_OUTBOUNDS, KNOWN_V2RAY_OUTBOUNDS, "outbound")
    tag = obj.string("tag")
    send_through = obj.opt_ip("sendThrough", "unable to send through {}: not an IP address")
    stream = stream_for(obj)
    proxy_tag = _proxy_tag(obj)
    if proxy_tag is not None:
        _chained(obj, protocol, stream, send_through)
    mux_obj = obj.object("mux")
    mux = MuxConfig() if mux_obj is None else _mux(mux_obj)
    settings = OUTBOUND_SETTINGS[protocol](_settings(obj))
    obj.finish()
    return OutboundConfig(
        protocol=protocol,
        tag=tag,
        settings=settings,
        send_through=send_through,
        mux=mux,
        proxy_tag=proxy_tag,
        stream=stream,
        **_where(obj),
    )


# --------------------------------------------------------------------------- log, policy, reverse

_LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error", "none")


def build_log(obj: Obj) -> LogConfig:
    def target(name: str) -> str | None:
        value = obj.string(name)
        return None if value == "none" else value  # V2Ray compares "none" exactly

    access, error = target("access"), target("error")
    level: LogLevel = "warning"
    node = obj.get("loglevel")
    if node is not None:
        raw = obj.ctx.expect_string(node, obj.sub("loglevel")).lower()
        for known in _LOG_LEVELS:
            if raw == known:
                level = known
                break
        else:
            obj.ctx.warn(
                node, obj.sub("loglevel"), f'unknown loglevel {describe(node)}: using "warning"'
            )
    if level == "none":
        access = error = None
    obj.finish()

    def line(name: str) -> int | None:
        node = obj.get(name)
        return None if node is None else node.line

    return LogConfig(
        access=access,
        error=error,
        level=level,
        **obj.where(),
        access_line=line("access"),
        error_line=line("error"),
    )


def _level_policy(obj: Obj) -> LevelPolicy:
    defaults = LevelPolicy()
    buffer = obj.opt_integer("bufferSize", INT32_MIN, INT32_MAX)  # KiB; negative: unlimited
    buffer_size = defaults.buffer_size if buffer is None else max(buffer * 1024, -1)
    policy = LevelPolicy(
        handshake=obj.integer("handshake", 0, UINT32, defaults.handshake),
        conn_idle=obj.integer("connIdle", 0, UINT32, defaults.conn_idle),
        uplink_only=obj.opt_integer("uplinkOnly", 0, UINT32),
        downlink_only=obj.opt_integer("downlinkOnly", 0, UINT32),
        buffer_size=buffer_size,
        stats_user_uplink=obj.boolean("statsUserUplink"),
        stats_user_downlink=obj.boolean("statsUserDownlink"),
    )
    obj.finish()
    return policy


def build_policy(obj: Obj) -> PolicyConfig:
    ctx = obj.ctx
    levels: dict[int, LevelPolicy] = {}
    levels_obj = obj.object("levels")
    if levels_obj is not None:
        # A Go map: keys are exact (no case folding) and must be uint32 numbers.
        for key, value in levels_obj.node.items:
            path = levels_obj.sub(key.value)
            if not (key.value.isascii() and key.value.isdigit()) or int(key.value) > UINT32:
                raise ctx.error(key, path, f'policy level "{key.value}" is not a number')
            if value.kind == "null":
                continue
            levels[int(key.value)] = _level_policy(ctx.expect_object(value, path))
    system_obj = obj.object("system")
    system = SystemPolicy()
    if system_obj is not None:
        system = SystemPolicy(
            stats_inbound_uplink=system_obj.boolean("statsInboundUplink"),
            stats_inbound_downlink=system_obj.boolean("statsInboundDownlink"),
            stats_outbound_uplink=system_obj.boolean("statsOutboundUplink"),
            stats_outbound_downlink=system_obj.boolean("statsOutboundDownlink"),
        )
        system_obj.finish()
    obj.finish()
    return PolicyConfig(levels=levels, system=system, **obj.where())


def build_api(obj: Obj) -> ApiConfig:
    """``api`` (``infra/conf/api.go``): a non-empty ``tag`` and the ``services``. V2Ray
    4.34 skips names it does not know; raybridge refuses them, and ReflectionService."""
    tag = obj.string("tag")
    if not tag:
        raise obj.error("API tag can't be empty")
    services: list[str] = []
    node = obj.get("services")
    known = {name.lower(): name for name in API_SERVICES}
    for i, name in enumerate(obj.string_list("services") or []):
        canonical = known.get(name.lower())
        if canonical is None:
            item = node.items[i] if isinstance(node, JArray) else node
            why = (
                "is not supported by raybridge"
                if name.lower() == "reflectionservice"
                else "is not a V2Ray 4.34 API service"
            )
            raise obj.ctx.error(
                item,
                join(obj.sub("services"), i),
                f'"{name}" {why} (raybridge serves {", ".join(API_SERVICES)})',
            )
        if canonical not in services:
            services.append(canonical)
    obj.finish()
    return ApiConfig(tag=tag, services=tuple(services), **obj.where())


def build_stats(obj: Obj) -> bool:
    """``stats``: an empty object in 4.34 (``StatsConfig``); its presence turns counting on."""
    obj.finish()
    return True


def _endpoints(obj: Obj, name: str, kind: str) -> list[ReverseEndpoint]:
    def build(path: str, node: JValue) -> ReverseEndpoint:
        item = obj.ctx.expect_object(node, path)
        tag = item.string("tag")
        if not tag:
            raise item.error(f"{kind} tag is empty")
        domain = item.string("domain")
        if not domain:
            raise item.error(f"{kind} domain is empty")
        item.finish()
        return ReverseEndpoint(tag=tag, domain=domain, file=obj.ctx.file, line=item.line)

    out: list[ReverseEndpoint] = []
    for path, node in obj.array(name) or ():

        def run(path: str = path, node: JValue = node) -> ReverseEndpoint:
            return build(path, node)

        endpoint = obj.ctx.attempt(kind, path, node, run)
        if endpoint is not None:
            out.append(endpoint)
    return out


def build_reverse(obj: Obj) -> ReverseConfig:
    config = ReverseConfig(
        bridges=_endpoints(obj, "bridges", "bridge"),
        portals=_endpoints(obj, "portals", "portal"),
        **obj.where(),
    )
    obj.finish()
    return config


# --------------------------------------------------------------------------- a whole file


def _section(top: Obj, name: str, build: Callable[[Obj], T]) -> T | None:
    """Top-level section ``name`` (``None`` if absent); lenient loading leaves out a
    section that fails as a whole."""

    def run() -> T | None:
        obj = top.object(name)
        return None if obj is None else build(obj)

    return top.ctx.attempt(name, name, top.node.get(name), run)


def _entries(top: Obj, name: str, kind: str, build: Callable[[Obj], T]) -> list[T] | None:
    """Each object of top-level array ``name`` (``None`` if absent); lenient loading
    leaves out the entries that fail and keeps the others."""
    ctx = top.ctx
    items = ctx.attempt(name, name, top.node.get(name), lambda: top.array(name))
    if items is None:
        return None
    out: list[T] = []
    for path, item in items:

        def run(path: str = path, item: JValue = item) -> T:
            return build(ctx.expect_object(item, path))

        built = ctx.attempt(kind, path, item, run)
        if built is not None:
            out.append(built)
    return out


def build_file(ctx: Ctx, value: JValue) -> FileConfig:
    """Validate one parsed file and return its sections (entries that fail are left out
    when ``ctx`` is lenient, see :class:`~raybridge.config.fields.Ctx`)."""
    fc = FileConfig(file=ctx.file)
    if value.kind == "null":
        return fc  # Go decodes `null` into an empty config
    top = ctx.expect_object(value, "", "an object at the top level")

    port = ctx.attempt(
        "port", "port", top.node.get("port"), lambda: top.opt_integer("port", 0, UINT16)
    )
    fc.port = port or None

    fc.log = _section(top, "log", build_log)
    fc.routing = _section(top, "routing", build_routing)
    fc.policy = _section(top, "policy", build_policy)
    fc.reverse = _section(top, "reverse", build_reverse)
    fc.stats = _section(top, "stats", build_stats)
    fc.api = _section(top, "api", build_api)
    fc.dns = _section(top, "dns", build_dns)
    ctx.transport = _section(top, "transport", parse_transport)

    fc.inbound = _section(top, "inbound", build_inbound)
    fc.inbound_detours = _entries(top, "inboundDetour", "inbound", build_inbound)
    fc.inbounds = _entries(top, "inbounds", "inbound", build_inbound) or []

    fc.outbound = _section(top, "outbound", build_outbound)
    fc.outbound_detours = _entries(top, "outboundDetour", "outbound", build_outbound)
    fc.outbounds = _entries(top, "outbounds", "outbound", build_outbound) or []

    for key, (name, parser) in _EXTRA_SECTIONS.items():
        node = top.get(key)
        if node is not None:

            def run(
                node: JValue = node, name: str = name, parser: SectionParser = parser
            ) -> object:
                return parser(ctx.expect_object(node, name))

            section = ctx.attempt(name, name, node, run)
            if section is not None:
                fc.sections[name] = section

    top.finish()
    return fc


def _status_options(obj: Obj) -> tuple[str | None, str | None, tuple[str, ...]]:
    """``"status"``: ``"host:port"``, or ``{"listen": "host:port", "token": "...",
    "hosts": ["name", ...]}`` -> (listen, token, hosts)."""
    node = obj.get("status")
    if node is None:
        return None, None, ()
    # Only here: raybridge.status brings prometheus_client (a node without it never loads it).
    from raybridge.status import TOKEN_CHARS, host_name
    from raybridge.status import parse_address as parse_status_address

    token: str | None = None
    hosts: list[str] = []
    if isinstance(node, JObject):
        sub = obj.ctx.expect_object(node, obj.sub("status"))
        listen = sub.required_string("listen")
        listen_node, listen_path = sub.get("listen"), sub.sub("listen")
        token = sub.opt_string("token")
        if token is not None and not TOKEN_CHARS.fullmatch(token):
            raise obj.ctx.error(
                sub.get("token"),
                sub.sub("token"),
                "the token must be non-empty letters, digits and -._~+/ (a bearer token, "
                'RFC 6750), e.g. the output of "openssl rand -hex 32"',
            )
        for i, name in enumerate(sub.string_list("hosts") or []):
            if not host_name(name) or any(c in name for c in " /\t@"):
                raise obj.ctx.error(
                    sub.get("hosts"), join(sub.sub("hosts"), i), f"{name!r} is not a host name"
                )
            hosts.append(name)
        sub.finish()
    elif isinstance(node, JString):
        listen, listen_node, listen_path = node.value, node, obj.sub("status")
    else:
        raise obj.ctx.error(
            node,
            obj.sub("status"),
            'expected "host:port" or {"listen": "host:port", "token": ...}, got '
            + describe_typed(node),
        )
    if listen:
        try:
            parse_status_address(listen)
        except ValueError:
            raise obj.ctx.error(
                listen_node, listen_path, f'{listen!r} is not "host:port" (e.g. "127.0.0.1:9090")'
            ) from None
    return listen or None, token, tuple(hosts)


def _raybridge_options(obj: Obj) -> RaybridgeOptions:
    status, token, hosts = _status_options(obj)
    options = RaybridgeOptions(
        mux_max_sessions=obj.integer("muxMaxSessions", 1, 65535, 1024),
        status=status,
        status_token=token,
        status_hosts=hosts,
        state_dir=obj.opt_string("stateDir"),
        drain_timeout=obj.integer("drainTimeout", 0, 86400, 30),
        **obj.where(),
    )
    obj.finish()
    return options


register_section("raybridge", _raybridge_options)
