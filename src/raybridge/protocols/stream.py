"""Stream transport layers, sans-IO: what sits between a socket and the VMess codec.

V2Ray 4.34 stacks its stream transports (``transport/internet/{tls,websocket,http,headers}``)
between the TCP socket and the proxy protocol, outermost first::

    tcp   TCP | TLS? | HTTP header? | VMess
    ws    TCP | PROXY? | TLS? | HTTP/1.1 Upgrade + WebSocket frames | VMess
    h2    TCP | TLS (h2c on a server) | HTTP/2 stream | VMess

Each layer here is a :class:`StreamLayer`: a pure object fed the bytes that arrive from the
layer below (:meth:`~StreamLayer.receive_data`), returning what it has for the layer above as
events, and given bytes from the layer above (:meth:`~StreamLayer.send_data`) that it turns
into bytes for the layer below (:meth:`~StreamLayer.data_to_send`), the way h11, h2 and
wsproto work. Its own handshake traffic (a TLS ClientHello, a WebSocket upgrade request and
its 101, a 404 for a wrong path) goes out through the same ``data_to_send``. It reads no
clock and no socket; randomness (a WebSocket key, a header choice) is injected.

``transport/stack.py`` runs a list of layers, bottom first, under an asyncio protocol, so
that the VMess end above sees one ordinary transport; adding a transport (mKCP, QUIC) is a
new layer, not a change to the ends. HTTP/2, which carries many VMess connections on one
connection, is a layer too, but a multiplexing one (``protocols/h2stream.py``).

Events::

    Received(data)      bytes for the layer above
    EndReceived()       the peer finished sending, cleanly (TLS close_notify, WS close)
    Established(info)   the layer's handshake is done (info: ALPN, the path, a source
                        address the layer learnt, e.g. from a PROXY header)
    Refused(reason)     (server) the peer's request is refused; the answer, if the
                        protocol has one (HTTP 404), is queued in data_to_send; the adapter
                        sends it, closes the connection and logs ``reason``

Anything malformed from the peer raises the layer's subclass of :class:`LayerError`: the
connection is then dead (the adapter sends what ``data_to_send`` still holds, e.g. a
WebSocket close frame or a TLS alert, and closes).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

from raybridge.errors import RemoteProtocolError

__all__ = [
    "EndReceived",
    "Established",
    "LayerError",
    "LayerEvent",
    "QueuedLayer",
    "Received",
    "Refused",
    "Role",
    "StreamLayer",
]


class Role(Enum):
    """Which end of a connection a codec plays: CLIENT dials (and opens Mux.Cool sessions or
    HTTP/2 streams), SERVER accepts. Shared by the layers, the mux and the HTTP/2 codec."""

    CLIENT = "client"
    SERVER = "server"


class LayerError(RemoteProtocolError):
    """The peer broke a transport layer's protocol; that connection is over."""


@dataclass(frozen=True, slots=True)
class Received:
    """Bytes for the layer above."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndReceived:
    """The peer has finished sending (cleanly)."""


@dataclass(frozen=True, slots=True)
class Established:
    """The layer's handshake is done. ``info`` holds what it learnt, by name: ``alpn``,
    ``path``, ``host``, ``source`` (a ``(host, port)`` the peer's real address, from a
    PROXY header or X-Forwarded-For), ``early_data`` handled, ..."""

    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """(Server side) the peer's request is refused; any answer is in ``data_to_send``."""

    reason: str


LayerEvent: TypeAlias = Received | EndReceived | Established | Refused


class StreamLayer(abc.ABC):
    """One layer of a stream transport (see the module docstring).

    ``send_data`` before the handshake is done is allowed: the layer holds the bytes and
    sends them once it can (a WebSocket client sends nothing before its 101).
    """

    #: Short name for logs and statistics ("tls", "ws", "http-header", "proxy").
    name: str = "?"

    @abc.abstractmethod
    def receive_data(self, data: bytes) -> list[LayerEvent]:
        """Bytes from the layer below."""

    @abc.abstractmethod
    def receive_eof(self) -> list[LayerEvent]:
        """The layer below has ended (TCP FIN). Raise :class:`LayerError` if that is not a
        clean end for this protocol."""

    @abc.abstractmethod
    def send_data(self, data: bytes) -> None:
        """Bytes from the layer above."""

    @abc.abstractmethod
    def send_eof(self) -> None:
        """The layer above has finished sending: end our direction, as the protocol does
        (TLS close_notify, a WebSocket close frame), or do nothing and let the layer below
        carry it (a TCP half-close)."""

    @abc.abstractmethod
    def data_to_send(self) -> bytes:
        """Bytes for the layer below, everything queued so far (``b""`` if none)."""

    @property
    def can_half_close(self) -> bool:
        """After :meth:`send_eof`, may the layer below still end its own direction (TCP
        FIN) while we keep reading? True unless the protocol's end is final both ways."""
        return True


class QueuedLayer(StreamLayer):
    """A layer that queues its output as pieces in ``_out``, joined when it is asked for."""

    _out: list[bytes]

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out
