"""The configuration model: what a V2Ray 4.34 JSON config means, with 4.34's defaults.

Every class is a frozen, slotted dataclass with keyword-only fields. Lists inside are plain
lists (frozen-ish: treat them as read-only). Objects built from a JSON object remember
``file`` and ``line`` (of the object's opening brace) and, where useful, ``path`` (such as
``inbounds[1]``) so the runtime can name the config location in its messages, e.g. a rule
whose CIDR fails to compile::

    raise ConfigError("invalid CIDR", file=rule.file, line=rule.line, path=rule.path + ".ip")

Sources for the defaults: ``docs/protocols.md`` sections 4.3-4.9 and 6, and
``infra/conf/*.go`` of V2Ray 4.34.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from raybridge.errors import ConfigError

__all__ = [
    "API_SERVICES",
    "DEFAULT_LEVEL_POLICY",
    "PLAIN",
    "SUPPORTED_INBOUNDS",
    "SUPPORTED_OUTBOUNDS",
    "AllocateConfig",
    "ApiConfig",
    "BalancerConfig",
    "BlackholeSettings",
    "Config",
    "ConfigWarning",
    "DnsConfig",
    "DnsPattern",
    "DnsServerConfig",
    "DokodemoSettings",
    "FreedomSettings",
    "HostMapping",
    "HttpInboundSettings",
    "HttpRequestHeader",
    "HttpResponseHeader",
    "HttpSettings",
    "InboundConfig",
    "InboundSettings",
    "LevelPolicy",
    "Located",
    "LogConfig",
    "MuxConfig",
    "OutboundConfig",
    "OutboundSettings",
    "PolicyConfig",
    "ReverseConfig",
    "ReverseEndpoint",
    "RoutingConfig",
    "RuleConfig",
    "Section",
    "SockOpt",
    "SocksInboundSettings",
    "StreamSettings",
    "SystemPolicy",
    "TcpSettings",
    "TlsCertificate",
    "TlsSettings",
    "VMessInboundSettings",
    "VMessOutboundSettings",
    "VMessServerConfig",
    "VMessUserConfig",
    "WsSettings",
]

Network = Literal["tcp", "udp"]
LogLevel = Literal["debug", "info", "warning", "error", "none"]
VMessSecurity = Literal["auto", "aes-128-gcm", "chacha20-poly1305", "none", "zero"]
#: How a VMess client carries UDP: V2Ray 4.34's one-destination UDP request ("none"),
#: v2fly v5's ``packetEncoding: "packet"`` (packetaddr) or Xray's XUDP ("xudp").
PacketEncoding = Literal["none", "packet", "xudp"]
#: VMess client ``experiments`` (v2fly 4.41+ / v5, Xray), "|"-separated in the JSON.
VMESS_EXPERIMENTS = frozenset({"AuthenticatedLength", "NoTerminationSignal"})
FreedomDomainStrategy = Literal["AsIs", "UseIP", "UseIPv4", "UseIPv6"]
RouterDomainStrategy = Literal["AsIs", "IPIfNonMatch", "IPOnDemand"]

#: Protocols raybridge implements (V2Ray names, lower case).
SUPPORTED_INBOUNDS = frozenset({"socks", "http", "vmess", "dokodemo-door"})
SUPPORTED_OUTBOUNDS = frozenset({"freedom", "blackhole", "vmess"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigWarning:
    """A non-fatal finding: V2Ray would accept (or ignore) this, but the user should know."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        field_ = f" {self.path}:" if self.path else ""
        return f"{where}:{field_} {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Located:
    """Where an entry of a config list (an inbound, an outbound, a routing rule) was
    written: ``file``, the ``line`` of its opening brace and its JSON ``path``
    (``inbounds[1]``); ``index`` is its position in the merged list."""

    #: The merged list the entry is in, as messages about the running node name it.
    section: ClassVar[str] = ""

    file: str = ""
    line: int = 0
    index: int = 0
    path: str = ""

    def error(self, message: str) -> ConfigError:
        """A problem with this entry found after loading (building the node):
        ``file:line: inbounds[index]: message``."""
        return ConfigError(
            message, file=self.file, line=self.line, path=f"{self.section}[{self.index}]"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """A top-level section: ``file`` and ``line`` of its object (``None`` when no file has
    it and it holds the defaults)."""

    file: str | None = None
    line: int | None = None


# --------------------------------------------------------------------------- log


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig(Section):
    """The ``log`` section (docs/protocols.md 4.9).

    ``access`` / ``error``: ``None`` = off, ``""`` = console, anything else = a file path.
    raybridge's console is **stderr**; V2Ray 4.34 writes its console logs to stdout. We use
    stderr so that stdout stays free for tools (``-test`` output, JSON dumps) and because
    that is where Python's logging and service managers expect diagnostics.

    ``level`` is the error-log severity; ``"none"`` turns both logs off (and then
    ``access`` and ``error`` are both ``None``).
    """

    access: str | None = None
    error: str | None = ""
    level: LogLevel = "warning"
    #: Lines of the ``access`` / ``error`` values, for messages about the files.
    access_line: int | None = None
    error_line: int | None = None


# --------------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True, kw_only=True)
class VMessUserConfig:
    """A VMess user (inbound ``clients[]`` or outbound ``vnext[].users[]``).

    ``alter_id`` 0 selects the AEAD header (docs/protocols.md 1.2). ``security`` is one of
    ``auto``, ``aes-128-gcm``, ``chacha20-poly1305``, ``none``, ``zero`` (v5 and sing-box;
    anything else in the JSON means ``auto``, as in V2Ray); a server ignores it.
    ``experiments``: a client's ``"AuthenticatedLength"`` and ``"NoTerminationSignal"``.
    """

    id: uuid.UUID
    alter_id: int = 0
    level: int = 0
    email: str = ""
    security: VMessSecurity = "auto"
    experiments: frozenset[str] = frozenset()
    file: str = ""
    line: int = 0


# --------------------------------------------------------------------------- inbound settings


@dataclass(frozen=True, slots=True, kw_only=True)
class SocksInboundSettings:
    """``socks`` inbound settings (docs/protocols.md 4.3, 5.1).

    ``accounts`` maps user name to password. ``ip`` is the address put in the UDP ASSOCIATE
    reply (``None``: use the rule of 5.1). ``timeout`` is V2Ray's deprecated idle timeout
    (seconds, 0 = unset; only applied at ``user_level`` 0).
    """

    auth: Literal["noauth", "password"] = "noauth"
    accounts: dict[str, str] = field(default_factory=dict)
    udp: bool = False
    ip: str | None = None
    user_level: int = 0
    timeout: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpInboundSettings:
    """``http`` inbound settings (docs/protocols.md 4.3, 5.2). Non-empty ``accounts`` turns on
    Basic proxy authentication. ``timeout``: deprecated idle seconds (0 = unset)."""

    accounts: dict[str, str] = field(default_factory=dict)
    allow_transparent: bool = False
    timeout: int = 0
    user_level: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VMessInboundSettings:
    """``vmess`` inbound settings. ``disable_insecure_encryption``: reject security NONE,
    LEGACY and unknown (docs/protocols.md 4.3). ``detour_to``: the tag of a VMess inbound
    with dynamic ports (``allocate`` ``random``) that each response tells the client to
    move to (command 1, 1.8). ``default_alter_id``/``default_level`` (the ``default``
    block): the users such an inbound makes for the clients sent to it."""

    clients: list[VMessUserConfig] = field(default_factory=list)
    disable_insecure_encryption: bool = False
    detour_to: str | None = None
    default_alter_id: int = 0
    default_level: int = 0
    #: raybridge only (V2Ray ignores the key): refuse legacy headers, accept AEAD only.
    aead_forced: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DokodemoSettings:
    """``dokodemo-door`` settings. ``address``/``port``: the fixed target (``port`` 0 =
    unset); ``networks``: what the inbound listens for (default TCP only).
    ``timeout``: deprecated idle seconds, applied only at ``user_level`` 0."""

    address: str | None = None
    port: int = 0
    networks: frozenset[Network] = frozenset({"tcp"})
    follow_redirect: bool = False
    timeout: int = 0
    user_level: int = 0


InboundSettings = (
    SocksInboundSettings | HttpInboundSettings | VMessInboundSettings | DokodemoSettings
)


# --------------------------------------------------------------------------- streamSettings
# (parsed by config/stream.py; docs/transports.md 1)

StreamNetwork = Literal["tcp", "ws", "http"]
CertUsage = Literal["encipherment", "verify", "issue"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCertificate:
    """One ``tlsSettings.certificates`` entry: PEM text (from a file or inline lines)."""

    certificate: bytes
    key: bytes | None
    usage: CertUsage
    where: str  # "file:line: path", for errors found when the context is built


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    server_name: str = ""
    alpn: tuple[str, ...] = ()
    allow_insecure: bool = False
    disable_system_root: bool = False
    session_resumption: bool = False
    certificates: tuple[TlsCertificate, ...] = ()
    where: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestHeader:
    """``tcpSettings.header.request`` (V2Ray's defaults when a field is absent: ``None``)."""

    version: str = "1.1"
    method: str = "GET"
    paths: tuple[str, ...] = ("/",)
    headers: dict[str, tuple[str, ...]] | None = None  # None: V2Ray's default headers


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponseHeader:
    version: str = "1.1"
    status: str = "200"
    reason: str = "OK"
    headers: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSettings:
    header: Literal["none", "http"] = "none"
    request: HttpRequestHeader = field(default_factory=HttpRequestHeader)
    response: HttpResponseHeader = field(default_factory=HttpResponseHeader)
    accept_proxy_protocol: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WsSettings:
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    accept_proxy_protocol: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    hosts: tuple[str, ...] = ()  # empty: V2Ray's "www.example.com", on both sides
    path: str = "/"


TProxyMode = Literal["off", "redirect", "tproxy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SockOpt:
    mark: int = 0
    tcp_fast_open: bool | None = None
    accept_proxy_protocol: bool = False  # counts for h2 only, as in V2Ray (docs/transports.md 6)
    #: ``"redirect"`` or ``"tproxy"``: IP_TRANSPARENT on the socket (as V2Ray sets it for
    #: both); for dokodemo-door's ``followRedirect``, how the destination is found
    #: (``"off"`` there means ``"redirect"``; transport/redirect.py).
    tproxy: TProxyMode = "off"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    network: StreamNetwork = "tcp"
    tls: TlsSettings | None = None
    tcp: TcpSettings = field(default_factory=TcpSettings)
    ws: WsSettings = field(default_factory=WsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sockopt: SockOpt = field(default_factory=SockOpt)

    @property
    def plain(self) -> bool:
        """Bare TCP: nothing between the socket and the proxy protocol."""
        return (
            self.network == "tcp"
            and self.tls is None
            and self.tcp.header == "none"
            and not self.tcp.accept_proxy_protocol
        )

    def describe(self) -> str:
        """``tcp``, ``tls``, ``ws``, ``ws+tls``, ``h2``, ``tcp+http``... for status pages."""
        base = {"tcp": "tcp", "ws": "ws", "http": "h2"}[self.network]
        if self.network == "tcp" and self.tcp.header == "http":
            base = "tcp+http"
        if self.tls is None:
            return base
        return "tls" if base == "tcp" else f"{base}+tls"


PLAIN = StreamSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportDefaults:
    """The top-level ``transport`` section: the tcp/ws/http settings of every
    ``streamSettings`` of the same file that does not set its own (V2Ray's
    ``applyTransportConfig``)."""

    tcp: TcpSettings | None = None
    ws: WsSettings | None = None
    http: HttpSettings | None = None

    def stream(self) -> StreamSettings:
        """What an inbound or outbound without ``streamSettings`` gets."""
        return StreamSettings(
            tcp=self.tcp or TcpSettings(),
            ws=self.ws or WsSettings(),
            http=self.http or HttpSettings(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateConfig:
    """``allocate`` with ``strategy`` ``"random"`` (V2Ray's dynamic ports,
    ``app/proxyman/inbound/dynamic.go``): listen on ``concurrency`` ports picked at random
    from the inbound's range, picked again every ``refresh`` minutes (the old ones close
    two periods later). ``"always"`` (every port) is no ``AllocateConfig`` at all."""

    concurrency: int = 3
    refresh: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig(Located):
    """One inbound. ``ports`` is the expanded port list (``"1000-1002"`` -> three ports);
    the inbound listens on every one of them at ``listen`` (an IP address or
    ``localhost``). ``index`` is the position in the merged inbound list; ``path`` names the
    JSON location (``inbounds[0]``, ``inbound``, ``inboundDetour[2]``)."""

    protocol: str
    tag: str = ""
    listen: str = "0.0.0.0"
    ports: list[int] = field(default_factory=list)
    section: ClassVar[str] = "inbounds"

    settings: InboundSettings
    stream: StreamSettings = PLAIN
    sniffing_enabled: bool = False
    sniffing_dest_override: frozenset[str] = frozenset()
    allocate: AllocateConfig | None = None


# --------------------------------------------------------------------------- outbound settings


@dataclass(frozen=True, slots=True, kw_only=True)
class FreedomSettings:
    """``freedom`` settings. ``redirect``: ``(host, port)`` replacing the destination:
    ``host`` ``None`` keeps the requested address (V2Ray also keeps it for ``0.0.0.0``,
    which we map to ``None``); ``port`` 0 keeps the requested port (docs/protocols.md 4.4).
    ``timeout``: deprecated idle seconds (0 = unset)."""

    domain_strategy: FreedomDomainStrategy = "AsIs"
    redirect: tuple[str | None, int] | None = None
    user_level: int = 0
    timeout: int = 0
    #: raybridge only (V2Ray ignores the key): refuse private, loopback and link-local
    #: destinations (after resolving), as Xray's freedom does by default on a public portal.
    block_private: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackholeSettings:
    """``blackhole``: ``"none"`` closes at once; ``"http"`` writes a 403 first (4.4)."""

    response: Literal["none", "http"] = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class VMessServerConfig:
    """One ``vnext`` entry: a server and the users to pick from (at random)."""

    address: str
    port: int
    users: list[VMessUserConfig]
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VMessOutboundSettings:
    """``vmess`` outbound: servers used round-robin (docs/protocols.md 4.4)."""

    servers: list[VMessServerConfig]
    packet_encoding: PacketEncoding = "none"


OutboundSettings = FreedomSettings | BlackholeSettings | VMessOutboundSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxConfig:
    """Mux.Cool (docs/protocols.md 2.4). ``concurrency``: max active sessions per connection,
    1..1024 (JSON 0 -> 8; a negative value disables mux entirely -> ``enabled`` False)."""

    enabled: bool = False
    concurrency: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig(Located):
    """One outbound. The first outbound of the merged list is the default one.
    ``send_through``: local IP to bind; ``proxy_tag``: dial through that outbound."""

    section: ClassVar[str] = "outbounds"

    protocol: str
    tag: str = ""
    settings: OutboundSettings
    send_through: str | None = None
    mux: MuxConfig = field(default_factory=MuxConfig)
    proxy_tag: str | None = None
    stream: StreamSettings = PLAIN


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleConfig(Located):
    """One ``"type": "field"`` routing rule (docs/protocols.md 4.5), kept close to the JSON.

    Condition fields are ``None`` when absent; all present ones must match (AND), any value
    within one may match (OR). The string lists are exactly as written (the router compiles
    and validates domains, CIDRs, geoip: etc. and reports problems with ``file``/``line``):
    ``domains`` holds ``domain`` + ``domains``; ``ips``/``sources`` hold CIDRs, bare IPs,
    ``geoip:``/``ext:`` entries. An empty JSON list means "no condition" (``None``), as in
    V2Ray. ``ports``/``source_ports`` are inclusive ranges; an *empty* list is still a
    condition and matches nothing (V2Ray does the same for ``"port": ""``).
    ``networks`` lists only known networks; unknown names (``" udp"`` in ``"tcp, udp"``)
    are dropped with a warning, so a rule may carry an empty set that matches nothing.
    Exactly one of ``outbound_tag`` / ``balancer_tag`` is set (``outboundTag`` wins).
    ``attrs`` is V2Ray's Starlark expression over sniffed attributes.
    """

    section: ClassVar[str] = "routing.rules"

    outbound_tag: str | None = None
    balancer_tag: str | None = None
    inbound_tags: list[str] | None = None
    domains: list[str] | None = None
    ips: list[str] | None = None
    ports: list[tuple[int, int]] | None = None
    source_ports: list[tuple[int, int]] | None = None
    networks: frozenset[Network] | None = None
    sources: list[str] | None = None
    users: list[str] | None = None
    protocols: list[str] | None = None
    attrs: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalancerConfig:
    """A balancer: candidates are outbound tags starting with any ``selector`` string."""

    tag: str
    selector: list[str]
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig(Section):
    """``routing``. ``domain_strategy`` (router): ``AsIs`` | ``IPIfNonMatch`` |
    ``IPOnDemand`` (V2Ray's ``AlwaysIP`` behaves as ``AsIs`` in 4.34 and is mapped to it)."""

    domain_strategy: RouterDomainStrategy = "AsIs"
    rules: list[RuleConfig] = field(default_factory=list)
    balancers: list[BalancerConfig] = field(default_factory=list)


# --------------------------------------------------------------------------- dns

#: How a ``hosts`` key or a server's ``domains`` entry matches a name: ``full`` the exact
#: name, ``domain`` the name or a subdomain, ``keyword`` a substring, ``regexp`` a search;
#: ``geosite`` a list of V2Ray's geosite.dat (``value`` is ``list`` or ``file:list``).
DnsMatch = Literal["full", "domain", "keyword", "regexp", "geosite"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsPattern:
    """A ``hosts`` key or a ``domains`` entry, as V2Ray 4.34 reads it (``dotless:`` is
    written as the regexp 4.34 makes of it). ``file`` is the .dat file of ``geosite``
    (``geosite.dat``, or the one named by ``ext:``)."""

    kind: DnsMatch
    value: str
    text: str  # as written
    file: str = "geosite.dat"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostMapping(Located):
    """One ``dns.hosts`` entry: its key and either IPs (canonical strings) or an alias."""

    section: ClassVar[str] = "dns.hosts"

    pattern: DnsPattern
    ips: tuple[str, ...] = ()
    alias: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsServerConfig(Located):
    """One ``dns.servers`` entry: plain UDP DNS to ``address`` (a canonical IP or a domain)
    and ``port``, or the system resolver (``address`` ``"localhost"``, ``system`` True).
    ``expect_ips`` are kept as written (CIDRs, IPs, ``geoip:``), as a rule's ``ip`` is."""

    section: ClassVar[str] = "dns.servers"

    address: str
    port: int = 53
    system: bool = False
    domains: tuple[DnsPattern, ...] = ()
    expect_ips: tuple[str, ...] = ()
    client_ip: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig(Section):
    """The ``dns`` section (docs/protocols.md 4.12). ``tag``: the inbound tag of the
    queries it sends through routing (4.34 makes one up when empty)."""

    servers: list[DnsServerConfig] = field(default_factory=list)
    hosts: list[HostMapping] = field(default_factory=list)
    client_ip: str | None = None
    tag: str = ""


# --------------------------------------------------------------------------- reverse


@dataclass(frozen=True, slots=True, kw_only=True)
class ReverseEndpoint:
    """A bridge or portal: ``tag`` (bridge: an inbound tag for routing; portal: an
    outbound tag) and the tunnel ``domain`` shared by both ends (docs/protocols.md 4.6)."""

    tag: str
    domain: str
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReverseConfig(Section):
    bridges: list[ReverseEndpoint] = field(default_factory=list)
    portals: list[ReverseEndpoint] = field(default_factory=list)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelPolicy:
    """Per-level policy; defaults are 4.34's ``SessionDefault`` (docs/protocols.md section 6).

    Timeouts in seconds. ``buffer_size`` in bytes per connection (JSON gives KiB);
    ``-1`` = unlimited, ``0`` = no buffering.

    ``uplink_only``/``downlink_only`` are ``None`` unless the config sets them: V2Ray 4.34
    defaults both to 1 s because it does not propagate half-close and needs them to end
    every relay; raybridge propagates half-close, so it applies them only when asked to.
    """

    handshake: int = 60
    conn_idle: int = 300
    uplink_only: int | None = None
    downlink_only: int | None = None
    buffer_size: int = 512 * 1024
    stats_user_uplink: bool = False
    stats_user_downlink: bool = False


DEFAULT_LEVEL_POLICY = LevelPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemPolicy:
    """``policy.system``: which per-tag traffic counters exist (``app/policy/config.proto``
    ``SystemPolicy.Stats``); they count only when the config also has a ``stats`` object."""

    stats_inbound_uplink: bool = False
    stats_inbound_downlink: bool = False
    stats_outbound_uplink: bool = False
    stats_outbound_downlink: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig(Section):
    """``policy.levels`` (a level's unset fields take the defaults) and ``policy.system``."""

    levels: dict[int, LevelPolicy] = field(default_factory=dict)
    system: SystemPolicy = field(default_factory=SystemPolicy)

    def level(self, n: int) -> LevelPolicy:
        """The policy for user level ``n`` (the defaults for levels not configured)."""
        return self.levels.get(n, DEFAULT_LEVEL_POLICY)


# --------------------------------------------------------------------------- api

#: The ``api.services`` raybridge serves (V2Ray 4.34's names; matched case-insensitively).
API_SERVICES = ("HandlerService", "StatsService", "LoggerService")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig(Section):
    """``api``: the gRPC services (``app/commander``) reached through the outbound tag
    ``tag``: a routing rule sends an inbound (a dokodemo-door) there."""

    tag: str
    services: tuple[str, ...] = ()


# --------------------------------------------------------------------------- top level


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole (merged) configuration.

    ``outbounds[0]`` is the default outbound. ``sections`` holds raybridge's own top-level
    sections (see :func:`raybridge.config.build.register_section`) by registered name.
    ``files`` are the files merged, in order; ``warnings`` the non-fatal findings.
    """

    log: LogConfig = field(default_factory=LogConfig)
    inbounds: list[InboundConfig] = field(default_factory=list)
    outbounds: list[OutboundConfig] = field(default_factory=list)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    reverse: ReverseConfig = field(default_factory=ReverseConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: ``stats`` present: the traffic counters that ``policy`` enables exist.
    stats: bool = False
    api: ApiConfig | None = None
    #: ``None``: no ``dns`` section (names are resolved by the system, as V2Ray does).
    dns: DnsConfig | None = None
    sections: dict[str, object] = field(default_factory=dict)
    warnings: list[ConfigWarning] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class RaybridgeOptions(Section):
    """The top-level ``"raybridge"`` section: settings V2Ray has no key for (V2Ray ignores
    unknown top-level keys, so a config that has it still runs on V2Ray).

    ``mux_max_sessions``: open Mux.Cool sessions one peer may hold on one connection where
    this node is the mux server (a reverse bridge, or ``v1.mux.cool``); a New frame beyond
    it is refused with End+Error. V2Ray has no limit.

    ``status``: where the status server listens (see :mod:`raybridge.status`);
    ``status_token`` and ``status_hosts``: its bearer token and the extra names its
    ``Host`` allow-list takes (``"status": {"listen": ..., "token": ..., "hosts": [...]}``).
    """

    mux_max_sessions: int = 1024
    #: ``"host:port"`` of the status server (``/metrics``, ``/api/status``, ``/``); off when
    #: unset. A bare port listens on 127.0.0.1.
    status: str | None = None
    #: ``Authorization: Bearer <token>`` required by the status server when set.
    status_token: str | None = field(default=None, repr=False)
    #: Host names (besides its own addresses) that requests to the status server may name.
    status_hosts: tuple[str, ...] = ()
    #: ``"stateDir"``: where state that outlives the process goes (the VMess replay filter,
    #: :mod:`raybridge.replay`). ``None`` (unset): ``$STATE_DIRECTORY`` if set (systemd's
    #: ``StateDirectory=``), else nothing is kept; ``""``: nothing is kept.
    state_dir: str | None = None
    #: ``"drainTimeout"``: seconds live connections may go on after SIGTERM (or after their
    #: inbound or outbound was removed by a reload or the API) before they are closed.
    drain_timeout: int = 30
