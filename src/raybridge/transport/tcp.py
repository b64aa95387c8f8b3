"""TCP connections as link ends, and dialing with retries.

:class:`StreamEnd` is an ``asyncio.Protocol`` and an :class:`~raybridge.link.End` at once:
the event loop calls its protocol methods, the peer calls its end methods, and the two are
short-circuited (``data_received`` -> ``peer.write`` -> ``transport.write``). Subclasses that
speak a protocol on the socket (SOCKS, VMess, ...) override ``data_received`` and ``write``.

Half-close is propagated: EOF from the socket becomes ``peer.write_eof()``, and the peer's
``write_eof()`` becomes a TCP FIN (``transport.write_eof()``). The socket is closed once
both directions are done. (V2Ray 4.34 does not propagate half-close; see docs/protocols.md 6.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from raybridge.config.model import SockOpt
from raybridge.link import HIGH_WATER, LOW_WATER, Backlog, End, Session
from raybridge.transport.redirect import IP_TRANSPARENT

log = logging.getLogger("raybridge.transport")


class StreamEnd(asyncio.Protocol, End):
    """A stream connection as one end of a link."""

    #: An inbound-side end counts the link's payload into ``session.bytes_up`` (what it
    #: reads and hands its peer) and ``bytes_down`` (what its peer hands it); an
    #: outbound-side end leaves them alone, so each byte is counted once (raybridge.stats).
    inbound_side = False
    #: V2Ray's inbound/outbound traffic counters (``raybridge.stats.StatCounter``) for
    #: what this end reads from (``rx``) and writes to (``tx``) its medium, bound when the
    #: end is made; ``None`` when off.
    rx: Any = None
    tx: Any = None

    def __init__(self, session: Session | None = None) -> None:
        self.peer: End | None = None
        self.session = session
        self.transport: asyncio.Transport | None = None
        self._backlog = Backlog()  # wire bytes (and EOF) queued before the transport exists
        self._reading_paused = False  # the peer paused us
        self._writing_paused = False  # our transport paused us (its buffer is full)
        self._read_eof = False  # medium -> peer finished
        self._write_eof = False  # peer -> medium finished
        self._aborted = False
        self._lost = False
        self._connect_task: asyncio.Task[None] | None = None
        self._notified = False

    # -- state -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._aborted or self._lost

    @property
    def done(self) -> bool:
        """Both directions finished cleanly."""
        return self._read_eof and self._write_eof

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # (An annotation, not cast(): that is a function call, per connection.)
        transport: asyncio.Transport = base  # type: ignore[assignment]
        self.transport = transport
        if self._aborted:
            transport.abort()
            return
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        if self._reading_paused:
            transport.pause_reading()
        # What was queued goes first; only then may the peer send more (in this order, or
        # the peer's next bytes would overtake the queued ones).
        backlog = self._backlog
        if backlog.parts:
            transport.writelines(backlog.take())
        # If the transport is now above its high-water mark it has paused the peer itself
        # (pause_writing) and will resume it when it drains.
        backlog.release(None if self._writing_paused else self.peer)
        if backlog.eof:
            backlog.eof = False
            self._finish_write()

    def data_received(self, data: bytes) -> None:
        rx = self.rx
        if rx is not None:
            rx.value += len(data)
        session = self.session
        if session is not None:
            session.active = True
            if self.inbound_side:
                session.bytes_up += len(data)
        peer = self.peer
        if peer is not None:
            peer.write(data)

    def eof_received(self) -> bool:
        self._read_eof = True
        if self.peer is not None:
            self.peer.write_eof()
        # Keep the transport open for writing unless both directions are done.
        return not self._write_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.transport = None
        if not self._aborted and not (self._read_eof and self._write_eof) and self.peer is not None:
            self.peer.abort(exc or ConnectionResetError("connection closed"))
        self._notify_closed(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.peer is not None:
            self.peer.resume_reading()

    # -- hooks -------------------------------------------------------------------------
    def _notify_closed(self, exc: Exception | None) -> None:
        if not self._notified:
            self._notified = True
            self.on_closed(exc)

    def on_closed(self, exc: Exception | None) -> None:
        """Called once when the connection is gone (subclasses log or clean up here)."""

    # -- End ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        session = self.session
        if session is not None and self.inbound_side:
            session.bytes_down += len(data)
        self.send_wire(data)

    def write_many(self, parts: list[bytes]) -> None:
        if type(self).write is not StreamEnd.write:
            for data in parts:  # a subclass transforms what it writes: let it see each part
                self.write(data)
            return
        session = self.session
        if session is not None and self.inbound_side:
            session.bytes_down += sum(map(len, parts))
        self.send_wire_many(parts)

    def send_wire_many(self, parts: list[bytes] | list[bytes | bytearray]) -> None:
        """Send several buffers with one system call where the transport can (uvloop's
        ``writelines`` is a single ``writev``)."""
        if len(parts) == 1:
            self.send_wire(parts[0])
            return
        if self.closed or not parts:
            return
        transport = self.transport
        if transport is None:
            for data in parts:
                self.send_wire(data)
            return
        self._count(sum(map(len, parts)))
        transport.writelines(parts)

    def send_wire(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes exactly as given (already encoded by a subclass)."""
        if self._aborted or self._lost or not data:  # (not .closed: a property call)
            return
        self._count(len(data))
        transport = self.transport
        if transport is not None:
            if type(data) is memoryview and len(data) < 4096 and transport.get_write_buffer_size():
                # It would wait in the transport's buffer: a small view must not pin its
                # (larger) source buffer meanwhile.
                data = bytes(data)
            transport.write(data)
            return
        self._backlog.add(data, self.peer)

    def _count(self, n: int) -> None:
        """*n* bytes go on the wire: the session is active, the tx counter grows."""
        session = self.session
        if session is not None:
            session.active = True
        tx = self.tx
        if tx is not None:
            tx.value += n

    def write_eof(self) -> None:
        if self._write_eof or self._aborted or self._lost:  # (not .closed: a property call)
            return
        self._write_eof = True
        if self.transport is None:
            self._backlog.eof = True
            return
        self._finish_write()

    def _finish_write(self) -> None:
        """Send whatever ends this direction on the wire (a subclass may add an EOS first)."""
        transport = self.transport
        if transport is None:
            return
        if self._read_eof:
            transport.close()  # flushes, then closes: both directions are done
        elif transport.can_write_eof():
            transport.write_eof()

    def abort(self, exc: BaseException | None = None) -> None:
        if self._aborted or self._lost:
            return
        self._aborted = True
        self._backlog.clear()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if self.transport is not None:
            self.transport.abort()
        else:
            self._notify_closed(None)

    def close(self) -> None:
        """Close gracefully (flush what is buffered), without telling the peer."""
        if self.closed:
            return
        if self.transport is not None:
            self._aborted = True
            self.transport.close()
        else:
            self.abort()

    def pause_reading(self) -> None:
        if self._reading_paused:
            return
        self._reading_paused = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- outgoing connections ----------------------------------------------------------
    def start_connect(self, connector: Callable[[StreamEnd], Awaitable[None]]) -> None:
        """Run ``connector(self)`` (a coroutine that dials with ``self`` as the protocol)
        in the background; a failure aborts the peer."""
        # create_task, not ensure_future: the same task without ensure_future's type checks.
        self._connect_task = asyncio.get_running_loop().create_task(self._run_connect(connector))

    async def _run_connect(self, connector: Callable[[StreamEnd], Awaitable[None]]) -> None:
        try:
            await connector(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.connect_failed(exc)

    def connect_failed(self, exc: BaseException) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._backlog.clear()
        if self.peer is not None:
            self.peer.abort(exc)
        self._notify_closed(exc if isinstance(exc, Exception) else None)


#: Linux socket options (``socket`` has TCP_FASTOPEN; SO_MARK and the client side of TFO are
#: numbers from <linux/socket.h> and <linux/tcp.h>).
SO_MARK = getattr(socket, "SO_MARK", 36)
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)


def connect_tcp(
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
    family: int = 0,
    sockopt: SockOpt | None = None,
) -> Awaitable[object]:
    """One TCP connection with ``protocol``, to be awaited; ``sockopt`` ``mark`` and
    ``tcpFastOpen`` are set on the socket before it connects (they need a socket of our
    own). Without those it is the loop's ``create_connection`` itself (no coroutine of
    ours around it: one less per dial)."""
    loop = asyncio.get_running_loop()
    if sockopt is None or (
        not sockopt.mark and sockopt.tcp_fast_open is None and sockopt.tproxy == "off"
    ):
        return loop.create_connection(
            lambda: protocol, host, port, local_addr=local_addr, family=family
        )
    return _connect_own_socket(loop, protocol, host, port, local_addr, family, sockopt)


async def _connect_own_socket(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    local_addr: tuple[str, int] | None,
    family: int,
    sockopt: SockOpt,
) -> None:
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for fam, kind, proto, _, address in infos:
        sock = socket.socket(fam, kind, proto)
        try:
            apply_sockopt(sock, sockopt, listening=False)
            sock.setblocking(False)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        await loop.create_connection(lambda: protocol, sock=sock)
        return
    raise last or OSError(f"cannot resolve {host}")


def apply_sockopt(sock: socket.socket, sockopt: SockOpt, *, listening: bool) -> None:
    """``sockopt.mark`` (SO_MARK, needs CAP_NET_ADMIN), ``tcpFastOpen`` and ``tproxy``
    (IP_TRANSPARENT for either mode, as V2Ray 4.34 sets it; CAP_NET_ADMIN) on a socket."""
    if sockopt.mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, sockopt.mark)
    if sockopt.tproxy != "off":
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    if sockopt.tcp_fast_open is not None:
        if listening:
            queue = 4096 if sockopt.tcp_fast_open else 0
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, queue)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, int(sockopt.tcp_fast_open))


def open_tcp(
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    *,
    attempts: int = 1,
    delays: Sequence[float] = (),
    local_addr: tuple[str, int] | None = None,
    family: int = 0,
    sockopt: SockOpt | None = None,
) -> Awaitable[object]:
    """Dial ``host:port`` with ``protocol`` (await it), retrying like V2Ray's
    ``retry.ExponentialBackoff``.

    ``delays[i]`` is the wait before attempt ``i + 1`` (V2Ray's VMess outbound: 5 attempts,
    0, 200, 400, 600, 800 ms, docs/protocols.md 3.1).
    """
    if attempts <= 1:  # no retry loop to run: the connection attempt itself
        return connect_tcp(
            protocol, host, port, local_addr=local_addr, family=family, sockopt=sockopt
        )
    return _open_tcp_retrying(protocol, host, port, attempts, delays, local_addr, family, sockopt)


async def _open_tcp_retrying(
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    attempts: int,
    delays: Sequence[float],
    local_addr: tuple[str, int] | None,
    family: int,
    sockopt: SockOpt | None,
) -> None:
    last: Exception | None = None
    for attempt in range(max(1, attempts)):
        if attempt and attempt - 1 < len(delays) and delays[attempt - 1] > 0:
            await asyncio.sleep(delays[attempt - 1])
        try:
            await connect_tcp(
                protocol, host, port, local_addr=local_addr, family=family, sockopt=sockopt
            )
            return
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


def describe_peer(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


def sockname(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    name = transport.get_extra_info("sockname")
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return None


async def start_tcp_server(
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    sockopt: SockOpt | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, host, port, reuse_address=True, backlog=4096, family=_family(host)
    )
    if sockopt is not None:
        try:
            for sock in server.sockets:
                apply_sockopt(sock, sockopt, listening=True)
        except OSError:
            server.close()
            raise
    return server


def _family(host: str) -> int:
    if ":" in host:
        return socket.AF_INET6
    return socket.AF_INET if host and host[0].isdigit() else 0
