"""TLS as a stream layer: the standard library's ``ssl`` (OpenSSL) over two memory buffers.

V2Ray 4.34's ``transport/internet/tls`` wraps the TCP connection in Go's ``crypto/tls``;
VMess bytes are plain TLS application data (docs/transports.md 2). Here an
``ssl.SSLObject`` is fed and drained through two ``ssl.MemoryBIO``: bytes from the socket go
into one, the records OpenSSL writes come out of the other, so TLS stacks under a WebSocket
or an HTTP header layer exactly like them and can be tested without a socket (two layers
wired to each other). Nothing here is hand-rolled: the handshake, records, certificate checks
and alerts are OpenSSL's; the contexts (versions, trust, certificates, ALPN, SNI callback)
are built by ``transport/tls.py`` from the config.

Behaviour at the edges:

* Data the layer above sends during the handshake waits and follows it.
* A peer's close_notify is :class:`~raybridge.protocols.stream.EndReceived`; so is a TCP EOF
  after the handshake without one (common on the web, and Go's peers do it too), while an
  EOF during the handshake is an error.
* ``send_eof`` sends close_notify; TLS 1.3 allows reading on afterwards, and the TCP
  half-close below carries on as usual.
* Any ``ssl.SSLError`` (a plaintext client on a TLS port, a certificate nothing vouches
  for, a bad record) is a :class:`TlsError`; OpenSSL's alert, if any, is in
  ``data_to_send`` for the adapter to send before it closes.
"""

from __future__ import annotations

import ssl
from typing import Any

from raybridge.protocols.stream import (
    EndReceived,
    Established,
    LayerError,
    LayerEvent,
    Received,
    StreamLayer,
)

__all__ = ["TlsError", "TlsLayer"]

#: OpenSSL hands out at most one record (16 KiB) per read; ask for more than that.
_READ = 256 * 1024


class TlsError(LayerError):
    """The TLS handshake or a record failed (the reason is OpenSSL's)."""


class TlsLayer(StreamLayer):
    """One TLS connection, client or server, over memory buffers."""

    name = "tls"

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._obj = context.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=server_side,
                server_hostname=server_hostname,
            )
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"cannot start TLS: {exc}") from None
        self.server_side = server_side
        self._established = False
        self._ended = False  # the peer's close_notify (or EOF) has come
        self._closed = False  # we sent close_notify
        self._held: list[bytes] = []  # sent before the handshake was done
        self._eof_held = False  # send_eof came before the handshake was done
        if not server_side:
            self._handshake()  # the ClientHello, now

    # -- state ---------------------------------------------------------------------------
    @property
    def established(self) -> bool:
        return self._established

    def info(self) -> dict[str, Any]:
        """What the handshake settled (for logs, statistics and the layers above)."""
        obj = self._obj
        cipher = obj.cipher()
        return {
            "alpn": obj.selected_alpn_protocol(),
            "tls_version": obj.version(),
            "cipher": cipher[0] if cipher else None,
            "server_name": getattr(obj, "sni_name", None) or obj.server_hostname,
        }

    # -- from below ----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[LayerEvent]:
        if self._ended:
            return []
        self._incoming.write(data)
        events: list[LayerEvent] = []
        if not self._established:
            if not self._handshake():
                return events
            events.append(Established(self.info()))
        self._read(events)
        return events

    def receive_eof(self) -> list[LayerEvent]:
        if not self._established:
            raise TlsError("connection closed during the TLS handshake")
        if self._ended:
            return []
        self._ended = True
        return [EndReceived()]

    def _handshake(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TlsError(_reason(exc)) from None
        self._established = True
        held, self._held = self._held, []
        for data in held:
            self._write(data)
        if self._eof_held:
            self._closed = False
            self.send_eof()
        return True

    def _read(self, events: list[LayerEvent]) -> None:
        read = self._obj.read
        parts: list[bytes] = []
        try:
            while True:
                chunk = read(_READ)
                if not chunk:  # ssl returns b"" for the peer's close_notify
                    self._ended = True
                    break
                parts.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._ended = True
        except ssl.SSLError as exc:
            raise TlsError(_reason(exc)) from None
        if parts:
            events.append(Received(parts[0] if len(parts) == 1 else b"".join(parts)))
        if self._ended:
            events.append(EndReceived())

    # -- from above ----------------------------------------------------------------------
    def send_data(self, data: bytes) -> None:
        if self._closed or not data:
            return
        if not self._established:
            self._held.append(bytes(data))
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(_reason(exc)) from None

    def send_eof(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._established:
            self._eof_held = True  # after the held data, once the handshake is done
            return
        try:
            self._obj.unwrap()  # writes close_notify; we do not wait for the peer's
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError:
            pass  # the connection is going anyway

    def data_to_send(self) -> bytes:
        return self._outgoing.read()


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, short: "CERTIFICATE_VERIFY_FAILED (unable to get local issuer
    certificate)", "WRONG_VERSION_NUMBER", "TLSV1_ALERT_UNKNOWN_CA"."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    verify = getattr(exc, "verify_message", None)
    return f"{reason} ({verify})" if verify else str(reason)
