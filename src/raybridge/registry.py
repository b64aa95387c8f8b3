"""What each configured protocol builds: one table per direction, keyed by protocol name.

Each protocol's module builds its own inbound or outbound from its settings dataclass
(``proxy/socks.py`` ``build_inbound``, ``proxy/freedom.py`` ``build_outbound``, ...). An
entry here pairs a protocol name with the settings type its builder takes; mypy checks
the two against each other below the tables, and :func:`build_inbounds` /
:func:`build_outbound` check a config's settings against them before calling. The node
has no switch on protocol names.

The config layer (``raybridge.config``) already refuses unknown protocols; a config made
some other way (by hand, in a test) gets the same :class:`~raybridge.errors.ConfigError`
here, naming the file, line and entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from raybridge.config.model import (
    BlackholeSettings,
    DokodemoSettings,
    FreedomSettings,
    HttpInboundSettings,
    InboundConfig,
    OutboundConfig,
    PolicyConfig,
    RaybridgeOptions,
    SocksInboundSettings,
    VMessInboundSettings,
    VMessOutboundSettings,
)
from raybridge.dispatcher import Dispatcher
from raybridge.link import Inbound, Outbound
from raybridge.proxy.base import InboundContext, StreamInbound
from raybridge.proxy.dynamic import DynamicPorts

if TYPE_CHECKING:
    from raybridge.proxy import blackhole, dokodemo, freedom, http, socks, vmess

C = TypeVar("C")  # what a builder gets besides its settings
R = TypeVar("R")  # what it builds


class Builder(Generic[C, R]):
    """One protocol's builder (``module``'s function ``function``), with the settings type
    it takes. The module is imported by the first config that uses the protocol, so a node
    loads only the protocols it runs (the HTTP inbound brings h11, for one)."""

    __slots__ = ("_build", "function", "module", "protocol", "settings")

    def __init__(self, protocol: str, settings: type, module: str, function: str) -> None:
        self.protocol = protocol
        self.settings = settings
        self.module = module
        self.function = function
        self._build: Callable[[C, Any], R] | None = None

    def __call__(self, context: C, settings: object) -> R | None:
        """What the builder makes of ``settings``; ``None`` if they are not its type."""
        if not isinstance(settings, self.settings):
            return None
        if self._build is None:
            module = importlib.import_module(f"raybridge.proxy.{self.module}")
            self._build = getattr(module, self.function)
        return self._build(context, settings)


def _table(*builders: Builder[C, R]) -> dict[str, Builder[C, R]]:
    return {b.protocol: b for b in builders}


INBOUNDS: dict[str, Builder[InboundContext, StreamInbound]] = _table(
    Builder("socks", SocksInboundSettings, "socks", "build_inbound"),
    Builder("http", HttpInboundSettings, "http", "build_inbound"),
    Builder("vmess", VMessInboundSettings, "vmess", "build_inbound"),
    Builder("dokodemo-door", DokodemoSettings, "dokodemo", "build_inbound"),
)

OUTBOUNDS: dict[str, Builder[OutboundConfig, Outbound]] = _table(
    Builder("freedom", FreedomSettings, "freedom", "build_outbound"),
    Builder("blackhole", BlackholeSettings, "blackhole", "build_outbound"),
    Builder("vmess", VMessOutboundSettings, "vmess", "build_outbound"),
)

if TYPE_CHECKING:
    # mypy checks each table entry's builder against the settings type it is paired with.
    _inbound_builders: tuple[
        Callable[[InboundContext, SocksInboundSettings], StreamInbound],
        Callable[[InboundContext, HttpInboundSettings], StreamInbound],
        Callable[[InboundContext, VMessInboundSettings], StreamInbound],
        Callable[[InboundContext, DokodemoSettings], StreamInbound],
    ] = (socks.build_inbound, http.build_inbound, vmess.build_inbound, dokodemo.build_inbound)
    _outbound_builders: tuple[
        Callable[[OutboundConfig, FreedomSettings], Outbound],
        Callable[[OutboundConfig, BlackholeSettings], Outbound],
        Callable[[OutboundConfig, VMessOutboundSettings], Outbound],
    ] = (freedom.build_outbound, blackhole.build_outbound, vmess.build_outbound)


def _build(
    table: dict[str, Builder[C, R]],
    config: InboundConfig | OutboundConfig,
    context: C,
) -> R:
    kind = "inbound" if isinstance(config, InboundConfig) else "outbound"
    builder = table.get(config.protocol)
    if builder is None:
        raise config.error(f"unknown {kind} protocol {config.protocol!r}")
    built = builder(context, config.settings)
    if built is None:
        settings = type(config.settings).__name__
        raise config.error(f"{kind} protocol {config.protocol!r} cannot take {settings}")
    return built


def build_outbound(config: OutboundConfig) -> Outbound:
    """The outbound ``config`` describes (a :class:`~raybridge.errors.ConfigError` if it
    cannot be built)."""
    return _build(OUTBOUNDS, config, config)


def build_inbounds(
    config: InboundConfig,
    *,
    dispatcher: Dispatcher,
    policies: PolicyConfig,
    options: RaybridgeOptions,
) -> list[Inbound]:
    """One inbound per port of ``config``, dispatching to ``dispatcher``; with
    ``allocate`` ``random``, one :class:`DynamicPorts` that makes them as it picks ports
    (the first port is built now, so that a config error shows before anything runs)."""

    def make(port: int) -> StreamInbound:
        context = InboundContext(
            config=config, port=port, dispatcher=dispatcher, policies=policies, options=options
        )
        return _build(INBOUNDS, config, context)

    if config.allocate is not None:
        if config.ports:
            make(config.ports[0])
        return [DynamicPorts(config.tag, config.ports, config.allocate, make)]
    return [make(port) for port in config.ports]
