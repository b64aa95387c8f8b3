"""V2Ray 4.34's API messages, field for field (``raybridge.protocols.protobuf``).

Sources (numbers and types only): ``app/stats/command/command.proto``,
``app/proxyman/command/command.proto``, ``config.proto`` (``InboundHandlerConfig``,
``OutboundHandlerConfig``), ``common/serial/typed_message.proto``,
``app/proxyman/config.proto`` (``ReceiverConfig``, ``SenderConfig``),
``common/net/{address,port}.proto``, ``common/protocol/{user,server_spec}.proto``,
``proxy/vmess/account.proto``, ``proxy/vmess/{inbound,outbound}/config.proto``,
``proxy/socks/config.proto``, ``proxy/dokodemo/config.proto``,
``proxy/freedom/config.proto``, ``proxy/blackhole/config.proto``.

Fields raybridge does not act on are still declared where a client may send them, so that
the service can refuse them by name instead of ignoring them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raybridge.protocols.protobuf import (
    BOOL,
    BYTES,
    INT64,
    MAP,
    MESSAGE,
    STRING,
    UINT32,
    UINT64,
    Field,
    Message,
)

# --------------------------------------------------------------------------- common


@dataclass
class TypedMessage(Message):
    """A message and its full proto name (``common/serial/typed_message.proto``)."""

    TYPE = "v2ray.core.common.serial.TypedMessage"
    FIELDS = (Field(1, "type", STRING), Field(2, "value", BYTES))
    type: str = ""
    value: bytes = b""

    @classmethod
    def of(cls, message: Message) -> TypedMessage:
        return cls(type=message.TYPE, value=message.encode())


@dataclass
class IPOrDomain(Message):
    TYPE = "v2ray.core.common.net.IPOrDomain"
    FIELDS = (Field(1, "ip", BYTES), Field(2, "domain", STRING))
    ip: bytes = b""
    domain: str = ""


@dataclass
class PortRange(Message):
    TYPE = "v2ray.core.common.net.PortRange"
    FIELDS = (Field(1, "From", UINT32), Field(2, "To", UINT32))
    From: int = 0  # the proto's names
    To: int = 0


@dataclass
class User(Message):
    TYPE = "v2ray.core.common.protocol.User"
    FIELDS = (
        Field(1, "level", UINT32),
        Field(2, "email", STRING),
        Field(3, "account", MESSAGE, message=TypedMessage),
    )
    level: int = 0
    email: str = ""
    account: TypedMessage | None = None


@dataclass
class SecurityConfig(Message):
    TYPE = "v2ray.core.common.protocol.SecurityConfig"
    FIELDS = (Field(1, "type", UINT32),)
    type: int = 0  # SecurityType: 0 UNKNOWN, 1 LEGACY, 2 AUTO, 3 AES128_GCM, 4 CHACHA20, 5 NONE


@dataclass
class VMessAccount(Message):
    TYPE = "v2ray.core.proxy.vmess.Account"
    FIELDS = (
        Field(1, "id", STRING),
        Field(2, "alter_id", UINT32),
        Field(3, "security_settings", MESSAGE, message=SecurityConfig),
        Field(4, "tests_enabled", STRING),
    )
    id: str = ""
    alter_id: int = 0
    security_settings: SecurityConfig | None = None
    tests_enabled: str = ""


@dataclass
class ServerEndpoint(Message):
    TYPE = "v2ray.core.common.protocol.ServerEndpoint"
    FIELDS = (
        Field(1, "address", MESSAGE, message=IPOrDomain),
        Field(2, "port", UINT32),
        Field(3, "user", MESSAGE, repeated=True, message=User),
    )
    address: IPOrDomain | None = None
    port: int = 0
    user: list[User] = field(default_factory=list)


# --------------------------------------------------------------------------- stats service


@dataclass
class GetStatsRequest(Message):
    TYPE = "v2ray.core.app.stats.command.GetStatsRequest"
    FIELDS = (Field(1, "name", STRING), Field(2, "reset", BOOL))
    name: str = ""
    reset: bool = False


@dataclass
class Stat(Message):
    TYPE = "v2ray.core.app.stats.command.Stat"
    FIELDS = (Field(1, "name", STRING), Field(2, "value", INT64))
    name: str = ""
    value: int = 0


@dataclass
class GetStatsResponse(Message):
    TYPE = "v2ray.core.app.stats.command.GetStatsResponse"
    FIELDS = (Field(1, "stat", MESSAGE, message=Stat),)
    stat: Stat | None = None


@dataclass
class QueryStatsRequest(Message):
    TYPE = "v2ray.core.app.stats.command.QueryStatsRequest"
    FIELDS = (Field(1, "pattern", STRING), Field(2, "reset", BOOL))
    pattern: str = ""
    reset: bool = False


@dataclass
class QueryStatsResponse(Message):
    TYPE = "v2ray.core.app.stats.command.QueryStatsResponse"
    FIELDS = (Field(1, "stat", MESSAGE, repeated=True, message=Stat),)
    stat: list[Stat] = field(default_factory=list)


@dataclass
class SysStatsRequest(Message):
    TYPE = "v2ray.core.app.stats.command.SysStatsRequest"


@dataclass
class SysStatsResponse(Message):
    TYPE = "v2ray.core.app.stats.command.SysStatsResponse"
    FIELDS = (
        Field(1, "NumGoroutine", UINT32),
        Field(2, "NumGC", UINT32),
        Field(3, "Alloc", UINT64),
        Field(4, "TotalAlloc", UINT64),
        Field(5, "Sys", UINT64),
        Field(6, "Mallocs", UINT64),
        Field(7, "Frees", UINT64),
        Field(8, "LiveObjects", UINT64),
        Field(9, "PauseTotalNs", UINT64),
        Field(10, "Uptime", UINT32),
    )
    NumGoroutine: int = 0  # the proto's names
    NumGC: int = 0
    Alloc: int = 0
    TotalAlloc: int = 0
    Sys: int = 0
    Mallocs: int = 0
    Frees: int = 0
    LiveObjects: int = 0
    PauseTotalNs: int = 0
    Uptime: int = 0


# --------------------------------------------------------------------------- handlers


@dataclass
class SniffingConfig(Message):
    TYPE = "v2ray.core.app.proxyman.SniffingConfig"
    FIELDS = (Field(1, "enabled", BOOL), Field(2, "destination_override", STRING, repeated=True))
    enabled: bool = False
    destination_override: list[str] = field(default_factory=list)


@dataclass
class ReceiverConfig(Message):
    """``app/proxyman/config.proto`` ``ReceiverConfig``: where an inbound listens. Field 3
    (allocation strategy) and 4 (stream settings) are kept as raw bytes: raybridge takes
    only their absence (always-allocate, plain TCP)."""

    TYPE = "v2ray.core.app.proxyman.ReceiverConfig"
    FIELDS = (
        Field(1, "port_range", MESSAGE, message=PortRange),
        Field(2, "listen", MESSAGE, message=IPOrDomain),
        Field(3, "allocation_strategy", BYTES),
        Field(4, "stream_settings", BYTES),
        Field(5, "receive_original_destination", BOOL),
        Field(7, "domain_override", UINT32, repeated=True),
        Field(8, "sniffing_settings", MESSAGE, message=SniffingConfig),
    )
    port_range: PortRange | None = None
    listen: IPOrDomain | None = None
    allocation_strategy: bytes = b""
    stream_settings: bytes = b""
    receive_original_destination: bool = False
    domain_override: list[int] = field(default_factory=list)
    sniffing_settings: SniffingConfig | None = None


@dataclass
class MultiplexingConfig(Message):
    TYPE = "v2ray.core.app.proxyman.MultiplexingConfig"
    FIELDS = (Field(1, "enabled", BOOL), Field(2, "concurrency", UINT32))
    enabled: bool = False
    concurrency: int = 0


@dataclass
class ProxyConfig(Message):
    TYPE = "v2ray.core.transport.internet.ProxyConfig"
    FIELDS = (Field(1, "tag", STRING),)
    tag: str = ""


@dataclass
class SenderConfig(Message):
    """``SenderConfig``: how an outbound dials (``stream_settings`` kept raw, as above)."""

    TYPE = "v2ray.core.app.proxyman.SenderConfig"
    FIELDS = (
        Field(1, "via", MESSAGE, message=IPOrDomain),
        Field(2, "stream_settings", BYTES),
        Field(3, "proxy_settings", MESSAGE, message=ProxyConfig),
        Field(4, "multiplex_settings", MESSAGE, message=MultiplexingConfig),
    )
    via: IPOrDomain | None = None
    stream_settings: bytes = b""
    proxy_settings: ProxyConfig | None = None
    multiplex_settings: MultiplexingConfig | None = None


@dataclass
class InboundHandlerConfig(Message):
    TYPE = "v2ray.core.InboundHandlerConfig"
    FIELDS = (
        Field(1, "tag", STRING),
        Field(2, "receiver_settings", MESSAGE, message=TypedMessage),
        Field(3, "proxy_settings", MESSAGE, message=TypedMessage),
    )
    tag: str = ""
    receiver_settings: TypedMessage | None = None
    proxy_settings: TypedMessage | None = None


@dataclass
class OutboundHandlerConfig(Message):
    TYPE = "v2ray.core.OutboundHandlerConfig"
    FIELDS = (
        Field(1, "tag", STRING),
        Field(2, "sender_settings", MESSAGE, message=TypedMessage),
        Field(3, "proxy_settings", MESSAGE, message=TypedMessage),
        Field(4, "expire", INT64),
        Field(5, "comment", STRING),
    )
    tag: str = ""
    sender_settings: TypedMessage | None = None
    proxy_settings: TypedMessage | None = None
    expire: int = 0
    comment: str = ""


@dataclass
class AddInboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.AddInboundRequest"
    FIELDS = (Field(1, "inbound", MESSAGE, message=InboundHandlerConfig),)
    inbound: InboundHandlerConfig | None = None


@dataclass
class RemoveInboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.RemoveInboundRequest"
    FIELDS = (Field(1, "tag", STRING),)
    tag: str = ""


@dataclass
class AlterInboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.AlterInboundRequest"
    FIELDS = (Field(1, "tag", STRING), Field(2, "operation", MESSAGE, message=TypedMessage))
    tag: str = ""
    operation: TypedMessage | None = None


@dataclass
class AddOutboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.AddOutboundRequest"
    FIELDS = (Field(1, "outbound", MESSAGE, message=OutboundHandlerConfig),)
    outbound: OutboundHandlerConfig | None = None


@dataclass
class RemoveOutboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.RemoveOutboundRequest"
    FIELDS = (Field(1, "tag", STRING),)
    tag: str = ""


@dataclass
class AlterOutboundRequest(Message):
    TYPE = "v2ray.core.app.proxyman.command.AlterOutboundRequest"
    FIELDS = (Field(1, "tag", STRING), Field(2, "operation", MESSAGE, message=TypedMessage))
    tag: str = ""
    operation: TypedMessage | None = None


@dataclass
class AddUserOperation(Message):
    TYPE = "v2ray.core.app.proxyman.command.AddUserOperation"
    FIELDS = (Field(1, "user", MESSAGE, message=User),)
    user: User | None = None


@dataclass
class RemoveUserOperation(Message):
    TYPE = "v2ray.core.app.proxyman.command.RemoveUserOperation"
    FIELDS = (Field(1, "email", STRING),)
    email: str = ""


@dataclass
class Empty(Message):
    """The empty responses (``AddInboundResponse``, ``RemoveInboundResponse``, ...) and
    requests (``RestartLoggerRequest``)."""


# --------------------------------------------------------------------------- proxy settings


@dataclass
class SocksAccount(Message):
    TYPE = "v2ray.core.proxy.socks.Account"
    FIELDS = (Field(1, "username", STRING), Field(2, "password", STRING))
    username: str = ""
    password: str = ""


@dataclass
class SocksServerConfig(Message):
    TYPE = "v2ray.core.proxy.socks.ServerConfig"
    FIELDS = (
        Field(1, "auth_type", UINT32),  # AuthType: 0 NO_AUTH, 1 PASSWORD
        Field(2, "accounts", MAP),
        Field(3, "address", MESSAGE, message=IPOrDomain),
        Field(4, "udp_enabled", BOOL),
        Field(5, "timeout", UINT32),
        Field(6, "user_level", UINT32),
    )
    auth_type: int = 0
    accounts: dict[str, str] = field(default_factory=dict)
    address: IPOrDomain | None = None
    udp_enabled: bool = False
    timeout: int = 0
    user_level: int = 0


@dataclass
class VMessDefaultConfig(Message):
    TYPE = "v2ray.core.proxy.vmess.inbound.DefaultConfig"
    FIELDS = (Field(1, "alter_id", UINT32), Field(2, "level", UINT32))
    alter_id: int = 0
    level: int = 0


@dataclass
class VMessDetourConfig(Message):
    TYPE = "v2ray.core.proxy.vmess.inbound.DetourConfig"
    FIELDS = (Field(1, "to", STRING),)
    to: str = ""


@dataclass
class VMessInboundConfig(Message):
    TYPE = "v2ray.core.proxy.vmess.inbound.Config"
    FIELDS = (
        Field(1, "user", MESSAGE, repeated=True, message=User),
        Field(2, "default", MESSAGE, message=VMessDefaultConfig),
        Field(3, "detour", MESSAGE, message=VMessDetourConfig),
        Field(4, "secure_encryption_only", BOOL),
    )
    user: list[User] = field(default_factory=list)
    default: VMessDefaultConfig | None = None
    detour: VMessDetourConfig | None = None
    secure_encryption_only: bool = False


@dataclass
class VMessOutboundConfig(Message):
    TYPE = "v2ray.core.proxy.vmess.outbound.Config"
    FIELDS = (Field(1, "Receiver", MESSAGE, repeated=True, message=ServerEndpoint),)
    Receiver: list[ServerEndpoint] = field(default_factory=list)


@dataclass
class NetworkList(Message):
    TYPE = "v2ray.core.common.net.NetworkList"
    FIELDS = (Field(1, "network", UINT32, repeated=True),)
    network: list[int] = field(default_factory=list)


@dataclass
class DokodemoConfig(Message):
    TYPE = "v2ray.core.proxy.dokodemo.Config"
    FIELDS = (
        Field(1, "address", MESSAGE, message=IPOrDomain),
        Field(2, "port", UINT32),
        Field(3, "network_list", MESSAGE, message=NetworkList),
        Field(4, "timeout", UINT32),
        Field(5, "follow_redirect", BOOL),
        Field(6, "user_level", UINT32),
        Field(7, "networks", UINT32, repeated=True),  # Network: 2 TCP, 3 UDP
    )
    address: IPOrDomain | None = None
    port: int = 0
    network_list: NetworkList | None = None
    timeout: int = 0
    follow_redirect: bool = False
    user_level: int = 0
    networks: list[int] = field(default_factory=list)


@dataclass
class FreedomDestinationOverride(Message):
    TYPE = "v2ray.core.proxy.freedom.DestinationOverride"
    FIELDS = (Field(1, "server", MESSAGE, message=ServerEndpoint),)
    server: ServerEndpoint | None = None


@dataclass
class FreedomConfig(Message):
    TYPE = "v2ray.core.proxy.freedom.Config"
    FIELDS = (
        Field(1, "domain_strategy", UINT32),  # 0 AS_IS, 1 USE_IP, 2 USE_IP4, 3 USE_IP6
        Field(2, "timeout", UINT32),
        Field(3, "destination_override", MESSAGE, message=FreedomDestinationOverride),
        Field(4, "user_level", UINT32),
    )
    domain_strategy: int = 0
    timeout: int = 0
    destination_override: FreedomDestinationOverride | None = None
    user_level: int = 0


@dataclass
class BlackholeConfig(Message):
    TYPE = "v2ray.core.proxy.blackhole.Config"
    FIELDS = (Field(1, "response", MESSAGE, message=TypedMessage),)
    response: TypedMessage | None = None


#: Blackhole response types (``proxy/blackhole/config.proto``).
BLACKHOLE_NONE = "v2ray.core.proxy.blackhole.NoneResponse"
BLACKHOLE_HTTP = "v2ray.core.proxy.blackhole.HTTPResponse"
