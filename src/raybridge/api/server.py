"""V2Ray's gRPC API (``app/commander``): StatsService, HandlerService, LoggerService.

As in V2Ray 4.34, the API has no listener of its own: ``"api": {"tag": "api", ...}`` makes
an outbound with that tag, and a routing rule sends an inbound there (a dokodemo-door on
127.0.0.1, typically). Each connection routed to it is one HTTP/2 connection to the gRPC
server. Here that server is grpclib's, on a Unix socket in a private temporary directory
(mode 0700) that :class:`ApiOutbound` connects each such link to; only the node's routing
reaches it.

Messages are V2Ray's (:mod:`raybridge.api.messages`), so the real ``v2ctl api`` and panels
built on V2Ray's ``.proto`` files work. Every call either completes or ends with a gRPC
error naming the reason (undecodable request: ``INVALID_ARGUMENT``; a failed operation:
``UNKNOWN``, as grpc-go reports V2Ray's errors; a method not served: ``UNIMPLEMENTED``);
bad bytes on the connection close that connection only.

``GetSysStats`` fills Go runtime fields with the closest Python figures (see
:func:`sys_stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from raybridge import log as logs
from raybridge.address import Destination
from raybridge.api import messages as pb
from raybridge.api.convert import ApiError, inbound_json, outbound_json, unpack, vmess_client
from raybridge.config.model import ApiConfig
from raybridge.errors import ConfigError
from raybridge.link import End, Outbound, Session, join
from raybridge.protocols.protobuf import Message, ProtobufError
from raybridge.transport.tcp import StreamEnd

if TYPE_CHECKING:
    from raybridge.node import Node

logger = logging.getLogger("raybridge.api")

STATS = "v2ray.core.app.stats.command.StatsService"
HANDLER = "v2ray.core.app.proxyman.command.HandlerService"
LOGGER = "v2ray.core.app.log.command.LoggerService"


class MessageCodec(CodecBase):
    """grpclib's codec hook: our declared messages in place of generated protobuf ones."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        data: bytes = message.encode()
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return message_type.decode(data)
        except ProtobufError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"undecodable message: {exc}") from None


Method = Callable[[Any], Awaitable[Message]]


class Service:
    """One gRPC service: ``methods`` maps a method name to (handler, request type)."""

    name = ""

    def methods(self) -> dict[str, tuple[Method, type[Message]]]:
        raise NotImplementedError

    def __mapping__(self) -> dict[str, Handler]:
        mapping = {}
        for method, (call, request) in self.methods().items():
            mapping[f"/{self.name}/{method}"] = Handler(
                _unary(call), Cardinality.UNARY_UNARY, request, Message
            )
        return mapping


def _unary(call: Method) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
    async def handle(stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        try:
            reply = await call(request)
        except (ApiError, ConfigError, OSError, ValueError) as exc:
            logger.info("API %s: %s", call.__name__, exc)
            raise GRPCError(Status.UNKNOWN, str(exc)) from None
        await stream.send_message(reply)

    return handle


# --------------------------------------------------------------------------- StatsService


class StatsService(Service):
    """``app/stats/command``: the node's named counters (:mod:`raybridge.stats`)."""

    name = STATS

    def __init__(self, node: Node) -> None:
        self.node = node

    def methods(self) -> dict[str, tuple[Method, type[Message]]]:
        return {
            "GetStats": (self.get_stats, pb.GetStatsRequest),
            "QueryStats": (self.query_stats, pb.QueryStatsRequest),
            "GetSysStats": (self.get_sys_stats, pb.SysStatsRequest),
        }

    async def get_stats(self, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
        counters = self.node.counters
        counter = counters.get(request.name) if counters is not None else None
        if counter is None:
            raise ApiError(f"{request.name} not found.")
        value = counter.reset() if request.reset else counter.get()
        return pb.GetStatsResponse(stat=pb.Stat(name=request.name, value=value))

    async def query_stats(self, request: pb.QueryStatsRequest) -> pb.QueryStatsResponse:
        counters = self.node.counters
        if counters is None:
            raise ApiError('no counters: the config has no "stats" object')
        return pb.QueryStatsResponse(
            stat=[
                pb.Stat(name=c.name, value=c.reset() if request.reset else c.get())
                for c in counters.query(request.pattern)
            ]
        )

    async def get_sys_stats(self, request: pb.SysStatsRequest) -> pb.SysStatsResponse:
        return sys_stats(self.node.dispatcher.stats.started)


class GcClock:
    """Time spent in the cycle collector (``gc.callbacks``), for ``PauseTotalNs``."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._since = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._since = time.perf_counter_ns()
        elif self._since:
            self.total_ns += time.perf_counter_ns() - self._since
            self._since = 0


GC_CLOCK = GcClock()


def sys_stats(started: float) -> pb.SysStatsResponse:
    """Go runtime figures, the nearest Python has (V2Ray's fields, our meaning):

    - ``NumGoroutine``: asyncio tasks of the running loop plus Python threads;
    - ``NumGC``: collections of the cycle collector, all generations;
    - ``Alloc``: resident set size; ``Sys``: virtual memory size (``/proc/self/statm``);
    - ``TotalAlloc``: peak resident set size (Python keeps no cumulative allocation count);
    - ``LiveObjects``: memory blocks allocated now (``sys.getallocatedblocks``);
    - ``Frees``: objects freed by the cycle collector (reference counting frees are not
      counted anywhere); ``Mallocs``: ``LiveObjects + Frees``;
    - ``PauseTotalNs``: time spent in the cycle collector since the API started;
    - ``Uptime``: seconds since the node started.
    """
    resident = virtual = 0
    try:
        with open("/proc/self/statm") as f:
            size, rss = (int(v) for v in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        resident, virtual = rss * page, size * page
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    generations = gc.get_stats()
    live = sys.getallocatedblocks()
    freed = sum(g["collected"] for g in generations)
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    return pb.SysStatsResponse(
        NumGoroutine=tasks + threading.active_count(),
        NumGC=sum(g["collections"] for g in generations) & 0xFFFFFFFF,
        Alloc=resident,
        TotalAlloc=max(peak, resident),
        Sys=virtual or resident,
        Mallocs=live + freed,
        Frees=freed,
        LiveObjects=live,
        PauseTotalNs=GC_CLOCK.total_ns,
        Uptime=max(0, int(time.time() - started)),
    )


# --------------------------------------------------------------------------- HandlerService


class HandlerService(Service):
    """``app/proxyman/command``: add and remove inbounds and outbounds, and VMess users,
    on the running node (for new connections; live ones go on). Not written to any file:
    a reload (SIGHUP) builds the node from the files again, as V2Ray's restart does."""

    name = HANDLER

    def __init__(self, node: Node) -> None:
        self.node = node

    def methods(self) -> dict[str, tuple[Method, type[Message]]]:
        return {
            "AddInbound": (self.add_inbound, pb.AddInboundRequest),
            "RemoveInbound": (self.remove_inbound, pb.RemoveInboundRequest),
            "AlterInbound": (self.alter_inbound, pb.AlterInboundRequest),
            "AddOutbound": (self.add_outbound, pb.AddOutboundRequest),
            "RemoveOutbound": (self.remove_outbound, pb.RemoveOutboundRequest),
            "AlterOutbound": (self.alter_outbound, pb.AlterOutboundRequest),
        }

    async def add_inbound(self, request: pb.AddInboundRequest) -> pb.Empty:
        settings = inbound_json(request.inbound)
        await self.node.add_inbound(settings)
        logger.info("API: added inbound %s", settings.get("tag", "(untagged)"))
        return pb.Empty()

    async def remove_inbound(self, request: pb.RemoveInboundRequest) -> pb.Empty:
        try:
            self.node.remove_inbound(request.tag)
        except KeyError:
            raise ApiError(f"handler not found: {request.tag}") from None
        logger.info("API: removed inbound %s", request.tag)
        return pb.Empty()

    async def alter_inbound(self, request: pb.AlterInboundRequest) -> pb.Empty:
        operation = request.operation
        kind = operation.type if operation is not None else ""
        try:
            if kind == pb.AddUserOperation.TYPE:
                add: pb.AddUserOperation = unpack(operation, pb.AddUserOperation, "operation")
                self.node.alter_inbound_users(request.tag, add=[vmess_client(add.user)])
            elif kind == pb.RemoveUserOperation.TYPE:
                remove: pb.RemoveUserOperation = unpack(
                    operation, pb.RemoveUserOperation, "operation"
                )
                self.node.alter_inbound_users(request.tag, remove=[remove.email])
            else:
                raise ApiError(f"unknown operation {kind or '(none)'}")
        except KeyError:
            raise ApiError(f"failed to get handler: {request.tag}") from None
        logger.info("API: altered the users of inbound %s", request.tag)
        return pb.Empty()

    async def add_outbound(self, request: pb.AddOutboundRequest) -> pb.Empty:
        settings = outbound_json(request.outbound)
        await self.node.add_outbound(settings)
        logger.info("API: added outbound %s", settings.get("tag", "(untagged)"))
        return pb.Empty()

    async def remove_outbound(self, request: pb.RemoveOutboundRequest) -> pb.Empty:
        if not request.tag:
            raise ApiError("no outbound tag given")
        try:
            self.node.remove_outbound(request.tag)
        except KeyError:
            # V2Ray's outbound manager removes an absent tag without complaint; so do we.
            logger.info("API: RemoveOutbound %s: there is no such outbound", request.tag)
            return pb.Empty()
        logger.info("API: removed outbound %s", request.tag)
        return pb.Empty()

    async def alter_outbound(self, request: pb.AlterOutboundRequest) -> pb.Empty:
        # V2Ray 4.34 defines no outbound operation either.
        kind = request.operation.type if request.operation is not None else "(none)"
        raise ApiError(f"unknown operation {kind}: there are no outbound operations")


# --------------------------------------------------------------------------- LoggerService


class LoggerService(Service):
    """``app/log/command``: ``RestartLogger`` reopens the log files (after a rotation)."""

    name = LOGGER

    def methods(self) -> dict[str, tuple[Method, type[Message]]]:
        return {"RestartLogger": (self.restart_logger, pb.Empty)}

    async def restart_logger(self, request: pb.Empty) -> pb.Empty:
        logs.reopen()
        return pb.Empty()


class _Methods(dict[str, Handler]):
    """The server's method table; an unknown path gets :func:`_unimplemented`."""

    def get(self, key: str, default: Any = None) -> Any:
        found = super().get(key)
        if found is None:

            async def unimplemented(stream: Stream[Any, Any]) -> None:
                raise GRPCError(Status.UNIMPLEMENTED, f"unknown method {key}")

            return Handler(unimplemented, Cardinality.UNARY_UNARY, pb.Empty, pb.Empty)
        return found


# --------------------------------------------------------------------------- the outbound


class _ApiLink(StreamEnd):
    """A link's end at the gRPC server; its outbound keeps it while it is open."""

    def __init__(self, session: Session, links: set[_ApiLink]) -> None:
        super().__init__(session)
        self._links = links
        links.add(self)

    def on_closed(self, exc: Exception | None) -> None:
        self._links.discard(self)


class ApiOutbound(Outbound):
    """The ``api`` tag: each link routed here is a connection to the gRPC server."""

    def __init__(self, tag: str, server: ApiServer) -> None:
        self.tag = tag
        self.server = server
        self.links: set[_ApiLink] = set()

    def close_links(self) -> None:
        """End every API connection now (a draining node: a panel's channel stays open
        for as long as the panel runs, and must not hold the node's exit)."""
        for end in list(self.links):
            peer = end.peer
            end.abort()
            if peer is not None:
                peer.abort(ConnectionAbortedError("the node is stopping"))
        self.links.clear()

    def connect(self, session: Session, dest: Destination, peer: End) -> End:
        end = _ApiLink(session, self.links)
        join(peer, end)
        path = self.server.path

        async def dial(e: StreamEnd) -> None:
            if path is None:
                raise ConnectionRefusedError("the API is not running")
            await asyncio.get_running_loop().create_unix_connection(lambda: e, path)

        end.start_connect(dial)
        return end


class ApiServer:
    """The gRPC server of a node's ``api`` section."""

    def __init__(self, node: Node, config: ApiConfig) -> None:
        self.config = config
        services: list[Service] = []
        for name in config.services:
            if name == "StatsService":
                services.append(StatsService(node))
            elif name == "HandlerService":
                services.append(HandlerService(node))
            elif name == "LoggerService":
                services.append(LoggerService())
        self.services = services
        self.server: Server | None = None
        self.outbound = ApiOutbound(config.tag, self)
        self.path: str | None = None
        self._dir: str | None = None

    async def start(self) -> None:
        self.server = server = Server(self.services, codec=MessageCodec())  # in the loop
        # grpclib answers a method it does not know with a trailers-only response that
        # lacks the content-type the gRPC spec requires there (strict clients then read
        # UNKNOWN, not UNIMPLEMENTED): such calls get a handler of ours that says so.
        mapping = getattr(server, "_mapping", None)
        if isinstance(mapping, dict):
            server._mapping = _Methods(mapping)
        self._dir = tempfile.mkdtemp(prefix="raybridge-api-")  # mode 0700
        path = os.path.join(self._dir, "grpc.sock")
        await server.start(path=path)
        self.path = path
        if GC_CLOCK not in gc.callbacks:
            gc.callbacks.append(GC_CLOCK)
        logger.info("API %r: %s", self.config.tag, ", ".join(self.config.services) or "none")

    async def close(self) -> None:
        self.path = None
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(RuntimeError):  # it never got to listen
                server.close()
                await server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
