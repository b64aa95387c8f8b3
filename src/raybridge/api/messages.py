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

from raybridge.protocols.protobuf import (
    BOOL,
    BYTES,
    INT64,
    MAP,
    MESSAGE,
    STRING,
    UINT32,
    UINT64,
    Message,
    proto,
)

# --------------------------------------------------------------------------- common


class TypedMessage(Message, name="v2ray.core.common.serial.TypedMessage"):
    """A message and its full proto name (``common/serial/typed_message.proto``)."""

    type: str = proto(1, STRING)
    value: bytes = proto(2, BYTES)

    @classmethod
    def of(cls, message: Message) -> TypedMessage:
        return cls(type=message.TYPE, value=message.encode())


class IPOrDomain(Message, name="v2ray.core.common.net.IPOrDomain"):
    ip: bytes = proto(1, BYTES)
    domain: str = proto(2, STRING)


class PortRange(Message, name="v2ray.core.common.net.PortRange"):
    From: int = proto(1, UINT32)  # the proto's names
    To: int = proto(2, UINT32)


class User(Message, name="v2ray.core.common.protocol.User"):
    level: int = proto(1, UINT32)
    email: str = proto(2, STRING)
    account: TypedMessage | None = proto(3, MESSAGE, message=TypedMessage)


class SecurityConfig(Message, name="v2ray.core.common.protocol.SecurityConfig"):
    # SecurityType: 0 UNKNOWN, 1 LEGACY, 2 AUTO, 3 AES128_GCM, 4 CHACHA20, 5 NONE
    type: int = proto(1, UINT32)


class VMessAccount(Message, name="v2ray.core.proxy.vmess.Account"):
    id: str = proto(1, STRING)
    alter_id: int = proto(2, UINT32)
    security_settings: SecurityConfig | None = proto(3, MESSAGE, message=SecurityConfig)
    tests_enabled: str = proto(4, STRING)


class ServerEndpoint(Message, name="v2ray.core.common.protocol.ServerEndpoint"):
    address: IPOrDomain | None = proto(1, MESSAGE, message=IPOrDomain)
    port: int = proto(2, UINT32)
    user: list[User] = proto(3, MESSAGE, repeated=True, message=User)


# --------------------------------------------------------------------------- stats service


class GetStatsRequest(Message, name="v2ray.core.app.stats.command.GetStatsRequest"):
    name: str = proto(1, STRING)
    reset: bool = proto(2, BOOL)


class Stat(Message, name="v2ray.core.app.stats.command.Stat"):
    name: str = proto(1, STRING)
    value: int = proto(2, INT64)


class GetStatsResponse(Message, name="v2ray.core.app.stats.command.GetStatsResponse"):
    stat: Stat | None = proto(1, MESSAGE, message=Stat)


class QueryStatsRequest(Message, name="v2ray.core.app.stats.command.QueryStatsRequest"):
    pattern: str = proto(1, STRING)
    reset: bool = proto(2, BOOL)


class QueryStatsResponse(Message, name="v2ray.core.app.stats.command.QueryStatsResponse"):
    stat: list[Stat] = proto(1, MESSAGE, repeated=True, message=Stat)


class SysStatsRequest(Message, name="v2ray.core.app.stats.command.SysStatsRequest"):
    pass


class SysStatsResponse(Message, name="v2ray.core.app.stats.command.SysStatsResponse"):
    NumGoroutine: int = proto(1, UINT32)  # the proto's names
    NumGC: int = proto(2, UINT32)
    Alloc: int = proto(3, UINT64)
    TotalAlloc: int = proto(4, UINT64)
    Sys: int = proto(5, UINT64)
    Mallocs: int = proto(6, UINT64)
    Frees: int = proto(7, UINT64)
    LiveObjects: int = proto(8, UINT64)
    PauseTotalNs: int = proto(9, UINT64)
    Uptime: int = proto(10, UINT32)


# --------------------------------------------------------------------------- handlers


class SniffingConfig(Message, name="v2ray.core.app.proxyman.SniffingConfig"):
    enabled: bool = proto(1, BOOL)
    destination_override: list[str] = proto(2, STRING, repeated=True)


class ReceiverConfig(Message, name="v2ray.core.app.proxyman.ReceiverConfig"):
    """``app/proxyman/config.proto`` ``ReceiverConfig``: where an inbound listens. Field 3
    (allocation strategy) and 4 (stream settings) are kept as raw bytes: raybridge takes
    only their absence (always-allocate, plain TCP)."""

    port_range: PortRange | None = proto(1, MESSAGE, message=PortRange)
    listen: IPOrDomain | None = proto(2, MESSAGE, message=IPOrDomain)
    allocation_strategy: bytes = proto(3, BYTES)
    stream_settings: bytes = proto(4, BYTES)
    receive_original_destination: bool = proto(5, BOOL)
    domain_override: list[int] = proto(7, UINT32, repeated=True)
    sniffing_settings: SniffingConfig | None = proto(8, MESSAGE, message=SniffingConfig)


class MultiplexingConfig(Message, name="v2ray.core.app.proxyman.MultiplexingConfig"):
    enabled: bool = proto(1, BOOL)
    concurrency: int = proto(2, UINT32)


class ProxyConfig(Message, name="v2ray.core.transport.internet.ProxyConfig"):
    tag: str = proto(1, STRING)


class SenderConfig(Message, name="v2ray.core.app.proxyman.SenderConfig"):
    """``SenderConfig``: how an outbound dials (``stream_settings`` kept raw, as above)."""

    via: IPOrDomain | None = proto(1, MESSAGE, message=IPOrDomain)
    stream_settings: bytes = proto(2, BYTES)
    proxy_settings: ProxyConfig | None = proto(3, MESSAGE, message=ProxyConfig)
    multiplex_settings: MultiplexingConfig | None = proto(4, MESSAGE, message=MultiplexingConfig)


class InboundHandlerConfig(Message, name="v2ray.core.InboundHandlerConfig"):
    tag: str = proto(1, STRING)
    receiver_settings: TypedMessage | None = proto(2, MESSAGE, message=TypedMessage)
    proxy_settings: TypedMessage | None = proto(3, MESSAGE, message=TypedMessage)


class OutboundHandlerConfig(Message, name="v2ray.core.OutboundHandlerConfig"):
    tag: str = proto(1, STRING)
    sender_settings: TypedMessage | None = proto(2, MESSAGE, message=TypedMessage)
    proxy_settings: TypedMessage | None = proto(3, MESSAGE, message=TypedMessage)
    expire: int = proto(4, INT64)
    comment: str = proto(5, STRING)


class _Tagged(Message):
    """The fields of ``RemoveInboundRequest`` and ``RemoveOutboundRequest``."""

    tag: str = proto(1, STRING)


class _TaggedOperation(_Tagged):
    """The fields of ``AlterInboundRequest`` and ``AlterOutboundRequest``."""

    operation: TypedMessage | None = proto(2, MESSAGE, message=TypedMessage)


_COMMAND = "v2ray.core.app.proxyman.command."


class AddInboundRequest(Message, name=_COMMAND + "AddInboundRequest"):
    inbound: InboundHandlerConfig | None = proto(1, MESSAGE, message=InboundHandlerConfig)


class AddOutboundRequest(Message, name=_COMMAND + "AddOutboundRequest"):
    outbound: OutboundHandlerConfig | None = proto(1, MESSAGE, message=OutboundHandlerConfig)


class RemoveInboundRequest(_Tagged, name=_COMMAND + "RemoveInboundRequest"):
    pass


class RemoveOutboundRequest(_Tagged, name=_COMMAND + "RemoveOutboundRequest"):
    pass


class AlterInboundRequest(_TaggedOperation, name=_COMMAND + "AlterInboundRequest"):
    pass


class AlterOutboundRequest(_TaggedOperation, name=_COMMAND + "AlterOutboundRequest"):
    pass


class AddUserOperation(Message, name="v2ray.core.app.proxyman.command.AddUserOperation"):
    user: User | None = proto(1, MESSAGE, message=User)


class RemoveUserOperation(Message, name="v2ray.core.app.proxyman.command.RemoveUserOperation"):
    email: str = proto(1, STRING)


class Empty(Message):
    """The empty responses (``AddInboundResponse``, ``RemoveInboundResponse``, ...) and
    requests (``RestartLoggerRequest``)."""


# --------------------------------------------------------------------------- proxy settings


class SocksAccount(Message, name="v2ray.core.proxy.socks.Account"):
    username: str = proto(1, STRING)
    password: str = proto(2, STRING)


class SocksServerConfig(Message, name="v2ray.core.proxy.socks.ServerConfig"):
    auth_type: int = proto(1, UINT32)  # AuthType: 0 NO_AUTH, 1 PASSWORD
    accounts: dict[str, str] = proto(2, MAP)
    address: IPOrDomain | None = proto(3, MESSAGE, message=IPOrDomain)
    udp_enabled: bool = proto(4, BOOL)
    timeout: int = proto(5, UINT32)
    user_level: int = proto(6, UINT32)


class VMessDefaultConfig(Message, name="v2ray.core.proxy.vmess.inbound.DefaultConfig"):
    alter_id: int = proto(1, UINT32)
    level: int = proto(2, UINT32)


class VMessDetourConfig(Message, name="v2ray.core.proxy.vmess.inbound.DetourConfig"):
    to: str = proto(1, STRING)


class VMessInboundConfig(Message, name="v2ray.core.proxy.vmess.inbound.Config"):
    user: list[User] = proto(1, MESSAGE, repeated=True, message=User)
    default: VMessDefaultConfig | None = proto(2, MESSAGE, message=VMessDefaultConfig)
    detour: VMessDetourConfig | None = proto(3, MESSAGE, message=VMessDetourConfig)
    secure_encryption_only: bool = proto(4, BOOL)


class VMessOutboundConfig(Message, name="v2ray.core.proxy.vmess.outbound.Config"):
    Receiver: list[ServerEndpoint] = proto(1, MESSAGE, repeated=True, message=ServerEndpoint)


class NetworkList(Message, name="v2ray.core.common.net.NetworkList"):
    network: list[int] = proto(1, UINT32, repeated=True)


class DokodemoConfig(Message, name="v2ray.core.proxy.dokodemo.Config"):
    address: IPOrDomain | None = proto(1, MESSAGE, message=IPOrDomain)
    port: int = proto(2, UINT32)
    network_list: NetworkList | None = proto(3, MESSAGE, message=NetworkList)
    timeout: int = proto(4, UINT32)
    follow_redirect: bool = proto(5, BOOL)
    user_level: int = proto(6, UINT32)
    networks: list[int] = proto(7, UINT32, repeated=True)  # Network: 2 TCP, 3 UDP


class FreedomDestinationOverride(Message, name="v2ray.core.proxy.freedom.DestinationOverride"):
    server: ServerEndpoint | None = proto(1, MESSAGE, message=ServerEndpoint)


class FreedomConfig(Message, name="v2ray.core.proxy.freedom.Config"):
    domain_strategy: int = proto(1, UINT32)  # 0 AS_IS, 1 USE_IP, 2 USE_IP4, 3 USE_IP6
    timeout: int = proto(2, UINT32)
    destination_override: FreedomDestinationOverride | None = proto(
        3, MESSAGE, message=FreedomDestinationOverride
    )
    user_level: int = proto(4, UINT32)


class BlackholeConfig(Message, name="v2ray.core.proxy.blackhole.Config"):
    response: TypedMessage | None = proto(1, MESSAGE, message=TypedMessage)


#: Blackhole response types (``proxy/blackhole/config.proto``).
BLACKHOLE_NONE = "v2ray.core.proxy.blackhole.NoneResponse"
BLACKHOLE_HTTP = "v2ray.core.proxy.blackhole.HTTPResponse"
