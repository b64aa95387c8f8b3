"""A stack of sans-IO stream layers under one socket, as one asyncio transport.

``LayerStack`` is the ``asyncio.Protocol`` of the socket; the protocol above it (a VMess
end, an HTTP/2 connection) gets a :class:`StackTransport`, an ordinary ``asyncio.Transport``,
so the ends never know what is below them (trio's ``SSLStream(transport_stream)`` idea)::

    socket <-> LayerStack: [layer 0 (TLS)] <-> [layer 1 (WebSocket)] <-> upper protocol

Bytes from the socket go up through every layer's ``receive_data``; what the upper protocol
writes goes down through every layer's ``send_data``; after each step, what every layer has
queued (handshake replies, pongs, alerts) flows down to the socket, top layer first.

Server side, the upper protocol is connected once every layer is established (so it knows
the client's real address, from a PROXY header or X-Forwarded-For), and only the stack's
own deadline bounds the handshakes until then; a refused request (a wrong WebSocket path:
404) or a broken layer closes that one connection, logged and counted. Client side, the
upper protocol is connected at once and the layers hold its first bytes until their
handshakes are done.

Backpressure passes straight through: the socket's ``pause_writing`` reaches the upper
protocol, and the upper protocol's ``pause_reading`` pauses the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from raybridge.protocols.stream import (
    EndReceived,
    Established,
    LayerError,
    Received,
    Refused,
    StreamLayer,
)

logger = logging.getLogger("raybridge.transport")


class _LayerFailed(Exception):
    """A layer raised: which one, and why (caught by the stack, never leaves it)."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(reason)
        self.layer = layer
        self.reason = reason


#: (layer name, reason): a layer refused the peer or broke (for statistics and logs).
FailureHandler = Callable[[str, str], None]


class StackTransport(asyncio.Transport):
    """What the upper protocol writes to: the top of the stack."""

    def __init__(self, stack: LayerStack) -> None:
        super().__init__()
        self._stack = stack

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._stack.send_down(bytes(data) if type(data) is memoryview else cast(bytes, data))

    def writelines(self, list_of_data: Any) -> None:
        self._stack.send_down(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._stack.send_eof_down()

    def can_write_eof(self) -> bool:
        return self._stack.lower is not None and self._stack.lower.can_write_eof()

    def get_write_buffer_size(self) -> int:
        lower = self._stack.lower
        return lower.get_write_buffer_size() if lower is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        lower = self._stack.lower
        return lower.get_write_buffer_limits() if lower is not None else (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        lower = self._stack.lower
        if lower is not None:
            lower.set_write_buffer_limits(high, low)

    # reading
    def pause_reading(self) -> None:
        lower = self._stack.lower
        if lower is not None and not lower.is_closing():
            lower.pause_reading()

    def resume_reading(self) -> None:
        lower = self._stack.lower
        if lower is not None and not lower.is_closing():
            lower.resume_reading()

    def is_reading(self) -> bool:
        lower = self._stack.lower
        return lower is not None and lower.is_reading()

    # closing
    def close(self) -> None:
        self._stack.close()

    def abort(self) -> None:
        self._stack.abort()

    def is_closing(self) -> bool:
        lower = self._stack.lower
        return lower is None or lower.is_closing() or self._stack.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._stack.extra(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._stack.upper = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._stack.upper


class LayerStack(asyncio.Protocol):
    """The socket's protocol for a stack of layers (see the module docstring)."""

    def __init__(
        self,
        layers: list[StreamLayer],
        upper: asyncio.Protocol,
        *,
        server_side: bool,
        handshake_timeout: float = 0.0,
        on_failure: FailureHandler | None = None,
        describe: str = "",
    ) -> None:
        self.layers = layers
        self.upper = upper
        self.server_side = server_side
        self.lower: asyncio.Transport | None = None
        self.closing = False
        self.info: dict[str, Any] = {}
        self._transport = StackTransport(self)
        self._established = [False] * len(layers)
        self._connected = False  # upper.connection_made called
        self._upper_lost = False
        self._handshake_timeout = handshake_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._on_failure = on_failure
        self._describe = describe
        self._eof_pending = False

    # -- the socket ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.lower = cast(asyncio.Transport, transport)
        if self.server_side:
            if self._handshake_timeout > 0:
                loop = asyncio.get_running_loop()
                self._deadline = loop.call_later(self._handshake_timeout, self._expired)
            if not self.layers:
                self._connect_upper()
        else:
            self._connect_upper()
        self._flush()  # a client's hellos

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self._up(0, data)
        except _LayerFailed as exc:
            self._broken(exc)
            return
        self._flush()

    def eof_received(self) -> bool | None:
        if self.closing:
            return False
        try:
            self._eof_up(0)
        except _LayerFailed as exc:
            self._broken(exc)
            return False
        self._flush()
        return True  # the upper protocol decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lower = None
        self.closing = True
        self._cancel_deadline()
        if self._connected and not self._upper_lost:
            self._upper_lost = True
            self.upper.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._connected:
            self.upper.pause_writing()

    def resume_writing(self) -> None:
        if self._connected:
            self.upper.resume_writing()

    # -- up through the layers -----------------------------------------------------------
    def _up(self, index: int, data: bytes) -> None:
        if index == len(self.layers):
            if self._connected:
                self.upper.data_received(data)
            return
        layer = self.layers[index]
        try:
            events = layer.receive_data(data)
        except LayerError as exc:
            raise _LayerFailed(layer.name, str(exc)) from None
        for event in events:
            self._event(index, event)

    def _eof_up(self, index: int) -> None:
        if index == len(self.layers):
            if self._connected and not self._upper_lost and not self.upper.eof_received():
                self.close()
            return
        layer = self.layers[index]
        try:
            events = layer.receive_eof()
        except LayerError as exc:
            raise _LayerFailed(layer.name, str(exc)) from None
        for event in events:
            self._event(index, event)

    def _event(self, index: int, event: object) -> None:
        if type(event) is Received:
            self._up(index + 1, event.data)
        elif type(event) is EndReceived:
            self._eof_up(index + 1)
        elif type(event) is Established:
            self.info.update(event.info)
            self._established[index] = True
            if all(self._established):
                if self.server_side and not self._connected:
                    self._cancel_deadline()
                    self._connect_upper()
                if self._eof_pending:
                    self._eof_pending = False
                    asyncio.get_running_loop().call_soon(self._lower_eof)
        elif type(event) is Refused:
            self._refused(self.layers[index].name, event.reason)

    def _connect_upper(self) -> None:
        self._connected = True
        self.upper.connection_made(self._transport)

    # -- down through the layers ---------------------------------------------------------
    def send_down(self, data: bytes) -> None:
        if self.closing or not data:
            return
        if not self.layers:
            if self.lower is not None:
                self.lower.write(data)
            return
        try:
            self.layers[-1].send_data(data)
        except LayerError as exc:
            self._broken(_LayerFailed(self.layers[-1].name, str(exc)))
            return
        self._flush()

    def send_eof_down(self) -> None:
        if self.closing:
            return
        for layer in reversed(self.layers):
            layer.send_eof()
            if not layer.can_half_close:
                self._flush()
                return
        self._flush()
        if all(self._established):
            self._lower_eof()
        else:
            self._eof_pending = True  # the FIN follows the layers' held bytes

    def _lower_eof(self) -> None:
        self._flush()
        if self.lower is not None and not self.closing and self.lower.can_write_eof():
            self.lower.write_eof()

    def _flush(self) -> None:
        """Move what every layer queued down to the socket, top layer first."""
        layers = self.layers
        for i in range(len(layers) - 1, 0, -1):
            out = layers[i].data_to_send()
            if out:
                try:
                    layers[i - 1].send_data(out)
                except LayerError as exc:
                    self._broken(_LayerFailed(layers[i - 1].name, str(exc)))
                    return
        if layers:
            out = layers[0].data_to_send()
            if out and self.lower is not None:
                self.lower.write(out)

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        """Close gracefully: each layer's goodbye (close_notify, a close frame), then the
        socket once its buffer is flushed."""
        if self.closing:
            return
        for layer in reversed(self.layers):
            layer.send_eof()
        self._flush()
        self._close_lower()

    def abort(self) -> None:
        self._close_lower(abort=True)

    def _close_lower(self, *, abort: bool = False) -> None:
        """Nothing more goes through; the socket closes once its buffer is flushed (at once
        with ``abort``)."""
        self.closing = True
        lower = self.lower
        if lower is not None:
            if abort:
                lower.abort()
            else:
                lower.close()

    def _refused(self, layer: str, reason: str) -> None:
        self._fail(layer, reason, logging.INFO)
        self._flush()  # the answer (a 404)
        self._close_lower()

    def _broken(self, exc: _LayerFailed) -> None:
        if self.closing:
            return
        self._fail(exc.layer, exc.reason, logging.INFO)
        self._flush()  # an alert or a close frame, if the layer queued one
        self._close_lower()

    def _expired(self) -> None:
        self._deadline = None
        if not self._connected:
            self._fail("handshake", "timed out", logging.INFO)
            self.abort()

    def _fail(self, layer: str, reason: str, level: int) -> None:
        peer = self.extra("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        logger.log(level, "%s%s: %s from %s", self._describe, layer, reason, where)
        if self._on_failure is not None:
            self._on_failure(layer, reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- extra info ----------------------------------------------------------------------
    def extra(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            source = self.info.get("source")
            if source is not None:
                return source
        if name in self.info:
            return self.info[name]
        if self.lower is not None:
            return self.lower.get_extra_info(name, default)
        return default
