"""The status server: ``/metrics`` (Prometheus), ``/api/status`` (JSON) and ``/`` (a
dashboard page), opt-in and bound to 127.0.0.1 unless configured otherwise.

Enable it with ``"raybridge": {"status": "127.0.0.1:9090"}`` in a config (V2Ray ignores the
key) or ``raybridge run --status 127.0.0.1:9090``. Metrics are produced at scrape time by a
``prometheus_client`` collector reading the node's :class:`~raybridge.stats.Stats` and its
portals and bridges, so serving them costs nothing on the relay path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import h11
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from raybridge import __version__

if TYPE_CHECKING:
    from raybridge.node import Node

logger = logging.getLogger("raybridge.status")

MAX_REQUEST = 16 * 1024


def parse_address(text: str) -> tuple[str, int]:
    """``"9090"``, ``":9090"``, ``"127.0.0.1:9090"``, ``"[::1]:9090"`` -> (host, port);
    the host defaults to 127.0.0.1 (never all interfaces unless asked)."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not an address:port: {text!r}")
    return host, int(port)


def status(node: Node) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON-able data."""
    stats = node.dispatcher.stats
    now = time.monotonic()
    loop_now = asyncio.get_running_loop().time()
    portals = []
    for portal in node.portals:
        tunnels = []
        for tunnel in portal.tunnels:
            worker = tunnel.worker
            carrier = worker.peer
            source = getattr(getattr(carrier, "session", None), "source", None)
            tunnels.append(
                {
                    "uptime": round(now - tunnel.opened, 1),
                    "sessions": max(0, worker.session_count - 1),  # without the control one
                    "sessions_total": max(0, worker.codec.allocated_total - 1),
                    "draining": tunnel.draining,
                    "source": str(source.host) + f":{source.port}" if source else "",
                    "silent": round(max(0.0, loop_now - worker.last_received), 1),
                    "keepalives": tunnel.keepalives,
                }
            )
        portals.append(
            {
                "tag": portal.tag,
                "domain": portal.domain,
                "online": any(not t["draining"] for t in tunnels),
                "tunnels": tunnels,
                "waiting": len(portal._waiting),
            }
        )
    bridges = []
    for bridge in node.bridges:
        tunnels = [
            {
                "uptime": round(now - t.opened, 1),
                "sessions": max(0, t.worker.session_count - 1),
                "state": t.state.name.lower(),
                "connected": t.heard,
            }
            for t in [*bridge.tunnels, *bridge.retired]
            if not t.worker.closed
        ]
        bridges.append(
            {
                "tag": bridge.tag,
                "domain": bridge.domain,
                "online": any(t["connected"] and t["state"] == "active" for t in tunnels),
                "tunnels": tunnels,
                "reconnects": stats.reconnects.get(bridge.tag, 0),
                "failures": bridge.failures,
            }
        )
    open_by_inbound = stats.open_connections()
    inbound_bytes = stats.bytes_by("inbound_tag")
    outbound_bytes = stats.bytes_by("outbound_tag")
    inbounds = [
        {
            "tag": tag,
            "connections": totals.connections,
            "open": open_by_inbound.get(tag, 0),
            "bytes_up": inbound_bytes.get(tag, (0, 0))[0],
            "bytes_down": inbound_bytes.get(tag, (0, 0))[1],
        }
        for tag, totals in sorted(stats.inbound.items())
    ]
    outbounds = [
        {
            "tag": tag,
            "connections": totals.connections,
            "bytes_up": outbound_bytes.get(tag, (0, 0))[0],
            "bytes_down": outbound_bytes.get(tag, (0, 0))[1],
        }
        for tag, totals in sorted(stats.outbound.items())
    ]
    return {
        "version": __version__,
        "time": time.time(),
        "uptime": round(time.time() - stats.started, 1),
        "portals": portals,
        "bridges": bridges,
        "inbounds": inbounds,
        "outbounds": outbounds,
        "bytes_up": sum(v[0] for v in inbound_bytes.values()),
        "bytes_down": sum(v[1] for v in inbound_bytes.values()),
        "handshake_failures": [
            {"inbound": inbound, "reason": reason, "count": count}
            for (inbound, reason), count in sorted(stats.handshake_failures.items())
        ],
        "tunnel_drops": [
            {"role": role, "tag": tag, "reason": reason, "count": count}
            for (role, tag, reason), count in sorted(stats.tunnel_drops.items())
        ],
        "recent_errors": [
            {"time": e.time, "level": e.level, "message": e.message}
            for e in list(stats.recent.events)[-20:]
        ],
    }


class NodeCollector:
    """A ``prometheus_client`` collector: metrics computed from the node when scraped."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        data = status(self.node)
        tunnels = GaugeMetricFamily(
            "raybridge_tunnels", "Tunnels up, per portal or bridge", labels=["role", "tag"]
        )
        sessions = GaugeMetricFamily(
            "raybridge_tunnel_sessions",
            "Open sessions on the tunnels of a portal or bridge",
            labels=["role", "tag"],
        )
        online = GaugeMetricFamily(
            "raybridge_online", "1 if a portal has a bridge or a bridge has a portal",
            labels=["role", "tag"],
        )  # fmt: skip
        for role, items in (("portal", data["portals"]), ("bridge", data["bridges"])):
            for item in items:
                tunnels.add_metric([role, item["tag"]], len(item["tunnels"]))
                sessions.add_metric(
                    [role, item["tag"]], sum(t["sessions"] for t in item["tunnels"])
                )
                online.add_metric([role, item["tag"]], 1 if item["online"] else 0)
        yield tunnels
        yield sessions
        yield online

        conns = CounterMetricFamily(
            "raybridge_connections", "Connections accepted, per inbound", labels=["inbound"]
        )
        open_ = GaugeMetricFamily(
            "raybridge_connections_open", "Connections open now, per inbound", labels=["inbound"]
        )
        data_bytes = CounterMetricFamily(
            "raybridge_bytes", "Bytes relayed, per inbound and direction",
            labels=["inbound", "direction"],
        )  # fmt: skip
        for item in data["inbounds"]:
            conns.add_metric([item["tag"]], item["connections"])
            open_.add_metric([item["tag"]], item["open"])
            data_bytes.add_metric([item["tag"], "up"], item["bytes_up"])
            data_bytes.add_metric([item["tag"], "down"], item["bytes_down"])
        yield conns
        yield open_
        yield data_bytes

        out_conns = CounterMetricFamily(
            "raybridge_outbound_connections", "Connections sent, per outbound",
            labels=["outbound"],
        )  # fmt: skip
        out_bytes = CounterMetricFamily(
            "raybridge_outbound_bytes", "Bytes relayed, per outbound and direction",
            labels=["outbound", "direction"],
        )  # fmt: skip
        for item in data["outbounds"]:
            out_conns.add_metric([item["tag"]], item["connections"])
            out_bytes.add_metric([item["tag"], "up"], item["bytes_up"])
            out_bytes.add_metric([item["tag"], "down"], item["bytes_down"])
        yield out_conns
        yield out_bytes

        failures = CounterMetricFamily(
            "raybridge_handshake_failures", "Connections refused during their handshake",
            labels=["inbound", "reason"],
        )  # fmt: skip
        for item in data["handshake_failures"]:
            failures.add_metric([item["inbound"], item["reason"]], item["count"])
        yield failures

        reconnects = CounterMetricFamily(
            "raybridge_reconnects", "Tunnels a bridge dialled after its first", labels=["bridge"]
        )
        for item in data["bridges"]:
            reconnects.add_metric([item["tag"]], item["reconnects"])
        yield reconnects

        drops = CounterMetricFamily(
            "raybridge_tunnel_drops", "Tunnels dropped for missing heartbeats or silence",
            labels=["role", "tag", "reason"],
        )  # fmt: skip
        for item in data["tunnel_drops"]:
            drops.add_metric([item["role"], item["tag"], item["reason"]], item["count"])
        yield drops

        uptime = GaugeMetricFamily("raybridge_uptime_seconds", "Seconds since the node started")
        uptime.add_metric([], data["uptime"])
        yield uptime


def dashboard_html() -> bytes:
    return resources.files("raybridge").joinpath("dashboard.html").read_bytes()


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: GET requests only, one response each (h11 frames them)."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    self.respond(event)
                elif isinstance(event, h11.ConnectionClosed):
                    self.close()
                    return
        except h11.ProtocolError:
            self.close()

    def eof_received(self) -> bool:
        return False

    def respond(self, request: h11.Request) -> None:
        path = request.target.decode("ascii", "replace").split("?")[0]
        status_code, content_type, body = self.server.handle(request.method.decode(), path)
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
        out = self.conn.send(h11.Response(status_code=status_code, headers=headers))
        if request.method != b"HEAD":
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        if self.transport is not None:
            self.transport.write(out)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class StatusServer:
    def __init__(self, node: Node, host: str = "127.0.0.1", port: int = 9090) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))  # type: ignore[arg-type]
        ProcessCollector(namespace="raybridge", registry=self.registry)
        self.server: asyncio.AbstractServer | None = None
        self._page = dashboard_html()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _HttpConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self.server.sockets[0].getsockname()[1])
        logger.warning("status and metrics on http://%s:%d/", self.host, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def handle(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == "/api/status":
            return 200, "application/json", json.dumps(status(self.node)).encode()
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self._page
        return 404, "text/plain; charset=utf-8", b"not found\n"
