"""The status server: ``/metrics`` (Prometheus), ``/api/status`` (JSON) and ``/`` (a
dashboard page), opt-in and bound to 127.0.0.1 unless configured otherwise.

Enable it with ``"raybridge": {"status": "127.0.0.1:9090"}`` in a config (V2Ray ignores the
key) or ``raybridge run --status 127.0.0.1:9090``. Metrics are produced at scrape time by a
``prometheus_client`` collector reading the node's :class:`~raybridge.stats.Stats` and its
portals and bridges, so serving them costs nothing on the relay path.

The pages show the tunnel domain, bridge addresses and recent errors, so the server guards
them (the object form ``"status": {"listen": "0.0.0.0:9090", "token": "...", "hosts":
["status.example.com"]}``):

* ``Host`` allow-list: a request whose ``Host`` is not the listen address, the address the
  client connected to, a loopback name (when it came in over loopback) or one of ``hosts``
  gets 421 and nothing else. A browser page from elsewhere that re-points its own name at
  this address (DNS rebinding) sends its own name, so it reads nothing.
* ``token``: then every path but the static dashboard page (which holds no data) needs
  ``Authorization: Bearer <token>`` (401 otherwise; compared in constant time). The page
  reads the token from its URL fragment, ``http://host:9090/#token=...``, which browsers
  never send to the server, and sends it as that header.
* A complete request within :data:`READ_TIMEOUT` of connecting, the next one within
  :data:`IDLE_TIMEOUT` of a response (keep-alive), at most :data:`MAX_CONNECTIONS` open: a
  connection beyond the cap is closed at once, and that is logged at most once per
  :data:`REFUSED_LOG_INTERVAL` with a count.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
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
    from raybridge.stats import Stats

logger = logging.getLogger("raybridge.status")

MAX_REQUEST = 16 * 1024
#: Seconds a new connection has to send a complete request head.
READ_TIMEOUT = 5.0
#: Seconds after a response for it to drain and for the next request on the connection.
IDLE_TIMEOUT = 15.0
#: Open connections at most (a dashboard and a scraper need a few); more are closed at once.
MAX_CONNECTIONS = 64
#: At most one log line about refused connections per this many seconds.
REFUSED_LOG_INTERVAL = 10.0
#: A bearer token: RFC 6750's ``b64token``.
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/-]+=*")
#: Host names a request over loopback may use.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_PLAIN = "text/plain; charset=utf-8"
_MISDIRECTED = (
    b"misdirected request: this status server answers only to its own address, loopback "
    b'names over loopback, and the names in "hosts" of its config\n'
)


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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def host_name(value: str) -> str:
    """The host of a ``Host`` header or of a configured name, lower case, without port,
    brackets or trailing dot: ``"[::1]:9090"`` -> ``"::1"``; ``""`` if malformed (it
    matches nothing)."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return ""
        return inside
    if value.count(":") > 1:  # a bare IPv6 address (as configured; not valid in Host)
        return value
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return ""
    return name.removesuffix(".")


def status(node: Node) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON-able data."""
    stats = node.dispatcher.stats
    portals, bridges = _reverse(node)
    traffic = _traffic(stats)
    _add_transports(node, traffic)
    return {
        "version": __version__,
        "time": time.time(),
        "uptime": round(time.time() - stats.started, 1),
        "state": node.state,  # "running", or "draining" after SIGTERM
        "portals": portals,
        "bridges": bridges,
        "reloads": [r.as_dict() for r in node.reloads],  # the newest last
        "reload_totals": dict(node.reload_totals),
        **traffic,
        **_events(stats),
    }


def _add_transports(node: Node, traffic: dict[str, Any]) -> None:
    """Each inbound's and outbound's transport ("tcp", "ws+tls", "h2"...), also for those
    that have carried nothing yet."""
    for kind, configs in (("inbounds", node.config.inbounds), ("outbounds", node.config.outbounds)):
        entries = {e["tag"]: e for e in traffic[kind]}
        for cfg in configs:
            entry = entries.get(cfg.tag)
            if entry is None:
                entry = entries[cfg.tag] = {
                    "tag": cfg.tag,
                    "connections": 0,
                    "bytes_up": 0,
                    "bytes_down": 0,
                }
                if kind == "inbounds":
                    entry["open"] = 0
                traffic[kind].append(entry)
            entry["transport"] = cfg.stream.describe()


def _reverse(node: Node) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The portals and the bridges, with their tunnels (from their public snapshots)."""
    stats = node.dispatcher.stats
    portals = []
    for portal in node.portals:
        tunnels = [
            {
                "uptime": round(t.uptime, 1),
                "sessions": t.sessions,  # without the control one
                "sessions_total": t.sessions_total,
                "draining": t.draining,
                "bridge_draining": t.bridge_draining,  # the bridge said DRAIN: it stops
                "source": t.source,
                "silent": round(t.silent, 1),
                "keepalives": t.keepalives,
            }
            for t in portal.tunnel_status()
        ]
        portals.append(
            {
                "tag": portal.tag,
                "domain": portal.domain,
                "online": any(not t["draining"] for t in tunnels),
                "tunnels": tunnels,
                "draining_bridges": sum(1 for t in tunnels if t["bridge_draining"]),
                "waiting": portal.waiting,
            }
        )
    bridges = []
    for bridge in node.bridges:
        tunnels = [
            {
                "uptime": round(t.uptime, 1),
                "sessions": t.sessions,
                "state": t.state,
                "connected": t.connected,
            }
            for t in bridge.tunnel_status()
        ]
        bridges.append(
            {
                "tag": bridge.tag,
                "domain": bridge.domain,
                "online": any(t["connected"] and t["state"] == "active" for t in tunnels),
                "draining": bridge.draining,  # it said DRAIN (SIGTERM, or left the config)
                "tunnels": tunnels,
                "reconnects": stats.reconnects.get(bridge.tag, 0),
                "failures": bridge.failures,
            }
        )
    return portals, bridges


def _traffic(stats: Stats) -> dict[str, Any]:
    """Connections and bytes by inbound and by outbound, and the bytes of all inbounds."""
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
        "inbounds": inbounds,
        "outbounds": outbounds,
        "bytes_up": sum(v[0] for v in inbound_bytes.values()),
        "bytes_down": sum(v[1] for v in inbound_bytes.values()),
    }


def _events(stats: Stats) -> dict[str, Any]:
    """Refused handshakes and dropped tunnels by reason, and the last 20 errors."""
    return {
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
        yield from _reverse_metrics(data)
        yield from _traffic_metrics(data)
        yield from _event_metrics(data)
        yield from _reload_metrics(data)
        uptime = GaugeMetricFamily("raybridge_uptime_seconds", "Seconds since the node started")
        uptime.add_metric([], data["uptime"])
        yield uptime


def _reverse_metrics(data: dict[str, Any]) -> Iterator[Metric]:
    """Tunnels, their sessions and whether each portal and bridge is online."""
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
            sessions.add_metric([role, item["tag"]], sum(t["sessions"] for t in item["tunnels"]))
            online.add_metric([role, item["tag"]], 1 if item["online"] else 0)
    yield tunnels
    yield sessions
    yield online


def _traffic_metrics(data: dict[str, Any]) -> Iterator[Metric]:
    """Connections and bytes per inbound (and open connections), then per outbound."""
    conns, relayed = _relayed(
        data["inbounds"], "inbound", "raybridge_", "Connections accepted, per inbound"
    )
    open_ = GaugeMetricFamily(
        "raybridge_connections_open", "Connections open now, per inbound", labels=["inbound"]
    )
    for item in data["inbounds"]:
        open_.add_metric([item["tag"]], item["open"])
    yield conns
    yield open_
    yield relayed
    yield from _relayed(
        data["outbounds"], "outbound", "raybridge_outbound_", "Connections sent, per outbound"
    )


def _relayed(
    items: list[dict[str, Any]], label: str, prefix: str, connections: str
) -> tuple[CounterMetricFamily, CounterMetricFamily]:
    """``<prefix>connections`` and ``<prefix>bytes`` (by direction) per ``label``."""
    conns = CounterMetricFamily(f"{prefix}connections", connections, labels=[label])
    relayed = CounterMetricFamily(
        f"{prefix}bytes",
        f"Bytes relayed, per {label} and direction",
        labels=[label, "direction"],
    )
    for item in items:
        conns.add_metric([item["tag"]], item["connections"])
        relayed.add_metric([item["tag"], "up"], item["bytes_up"])
        relayed.add_metric([item["tag"], "down"], item["bytes_down"])
    return conns, relayed


def _event_metrics(data: dict[str, Any]) -> Iterator[Metric]:
    """Refused handshakes, bridges' reconnects and dropped tunnels."""
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


def _reload_metrics(data: dict[str, Any]) -> Iterator[Metric]:
    """Reloads by result, the last one's time and duration, draining node and bridges."""
    reloads = CounterMetricFamily(
        "raybridge_reloads", "Reloads (SIGHUP), by result", labels=["result"]
    )
    for result in ("ok", "failed"):
        reloads.add_metric([result], data["reload_totals"].get(result, 0))
    yield reloads
    if data["reloads"]:
        last = data["reloads"][-1]
        at = GaugeMetricFamily(
            "raybridge_last_reload_timestamp_seconds", "When the last reload was asked for"
        )
        at.add_metric([], last["at"])
        yield at
        took = GaugeMetricFamily(
            "raybridge_last_reload_seconds", "Signal to new config live, last reload"
        )
        took.add_metric([], last["seconds"])
        yield took
        ok = GaugeMetricFamily("raybridge_last_reload_ok", "1 if the last reload succeeded")
        ok.add_metric([], 1 if last["ok"] else 0)
        yield ok
    draining = GaugeMetricFamily(
        "raybridge_draining", "1 while the node drains (SIGTERM: no new clients)"
    )
    draining.add_metric([], 1 if data["state"] == "draining" else 0)
    yield draining
    bridges = GaugeMetricFamily(
        "raybridge_draining_bridges", "Bridges draining: a bridge of this node, or tunnels "
        "of a portal whose bridge said DRAIN", labels=["role", "tag"],
    )  # fmt: skip
    for item in data["bridges"]:
        bridges.add_metric(["bridge", item["tag"]], 1 if item["draining"] else 0)
    for item in data["portals"]:
        bridges.add_metric(["portal", item["tag"]], item["draining_bridges"])
    yield bridges


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, which it drops all of when ``/proc/stat`` (for
    the boot time) cannot be read, as under systemd's ``ProcSubset=pid``, where only
    ``/proc/self`` is left: the boot time then comes from ``CLOCK_BOOTTIME``."""

    def _boot_time(self) -> float:
        try:
            with open("/proc/stat", "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def dashboard_html() -> bytes:
    return resources.files("raybridge").joinpath("dashboard.html").read_bytes()


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: GET requests, keep-alive, one response each (h11 frames
    them). A deadline is always armed: the first request, then each response's drain and
    the next request; when it passes the connection is aborted. While the response does
    not drain, no further (pipelined) request is read."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self.transport: asyncio.Transport | None = None
        self.allowed: frozenset[str] = frozenset()
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.server.admit(self):
            self.abort()
            return
        sockname = transport.get_extra_info("sockname")
        self.allowed = self.server.allowed_hosts(sockname[0] if sockname else None)
        self._arm(self.server.read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.connections.discard(self)
        self.transport = None

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.abort()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except h11.ProtocolError:
            self.close()
            return
        self._process()

    def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """A malformed request (no Host, two of them, a header too big...): answer with
        h11's status hint (400, 431) when a response can still go out, then close."""
        try:
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                headers = [("Content-Length", "0"), ("Connection", "close")]
                out = self.conn.send(
                    h11.Response(status_code=exc.error_status_hint, headers=headers)
                )
                out = (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
                if self.transport is not None:
                    self.transport.write(out)
        except h11.ProtocolError:
            pass
        self.close()

    def _process(self) -> None:
        try:
            while self.transport is not None and not self.transport.is_closing():
                if self._writing_paused:
                    self.transport.pause_reading()
                    return
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if event is h11.PAUSED:
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
                        continue
                    return
                if isinstance(event, h11.Request):
                    self.respond(event)
                elif isinstance(event, h11.ConnectionClosed):
                    self.close()
                    return
        except h11.RemoteProtocolError as exc:
            self._refuse(exc)
        except h11.ProtocolError:
            self.close()

    def eof_received(self) -> bool:
        return False

    def respond(self, request: h11.Request) -> None:
        path = request.target.decode("ascii", "replace").split("?")[0]
        fields: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            fields.setdefault(name, []).append(value)
        status_code, content_type, body, extra = self.server.serve(
            request.method.decode("ascii", "replace"), path, fields, self.allowed
        )
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            *extra,
        ]
        if status_code != 200:
            headers.append(("Connection", "close"))
        out = self.conn.send(h11.Response(status_code=status_code, headers=headers))
        if request.method != b"HEAD":
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        out = (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        if self.transport is None:
            return
        self.transport.write(out)
        self._arm(self.server.idle_timeout)  # to drain, and for the next request
        if self.conn.our_state is h11.MUST_CLOSE:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class StatusServer:
    def __init__(
        self,
        node: Node,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        token: str | None = None,
        hosts: tuple[str, ...] | list[str] = (),
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        """``token``: required as ``Authorization: Bearer <token>`` when set; ``hosts``:
        names besides its own addresses that a request's ``Host`` may carry."""
        self.node = node
        self.host = host
        self.port = port
        self.token = token.encode() if token else None
        self.hosts = frozenset(h for h in (host_name(n) for n in hosts) if h)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[_HttpConnection] = set()
        #: Connections closed at once for the cap, since start.
        self.refused = 0
        self._unlogged = 0
        self._log_timer: asyncio.TimerHandle | None = None
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        _ProcessCollector(namespace="raybridge", registry=self.registry)
        self.server: asyncio.AbstractServer | None = None
        self._page = dashboard_html()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _HttpConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self.server.sockets[0].getsockname()[1])
        logger.warning("status and metrics on http://%s:%d/", self.host, self.port)
        if self.token is None and not is_loopback(self.host):
            logger.warning(
                "the status server listens beyond loopback (%s) without a token: anyone who "
                'reaches it sees the tunnel domain, bridge addresses and errors; set "token"',
                self.host,
            )

    async def close(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.connections):
            conn.abort()

    # -- connections ---------------------------------------------------------------------
    def admit(self, conn: _HttpConnection) -> bool:
        """Count ``conn`` in, or refuse it (False) when the cap is reached."""
        if len(self.connections) < self.max_connections:
            self.connections.add(conn)
            return True
        self.refused += 1
        if self._log_timer is None:
            logger.warning(
                "status server: %d connections open, the most it takes; closing new ones "
                "(counted, one line per %g s)",
                len(self.connections),
                REFUSED_LOG_INTERVAL,
            )
            self._schedule_log()
        else:
            self._unlogged += 1
        return False

    def _schedule_log(self) -> None:
        loop = asyncio.get_running_loop()
        self._log_timer = loop.call_later(REFUSED_LOG_INTERVAL, self._log_refused)

    def _log_refused(self) -> None:
        self._log_timer = None
        if self._unlogged:
            logger.warning(
                "status server: closed %d more connections over the cap of %d in %g s",
                self._unlogged,
                self.max_connections,
                REFUSED_LOG_INTERVAL,
            )
            self._unlogged = 0
            self._schedule_log()

    def allowed_hosts(self, local: str | None) -> frozenset[str]:
        """What ``Host`` may name on a connection that arrived at address ``local``: the
        listen address, ``local``, the loopback names if either is loopback, and the
        configured names."""
        names = set(self.hosts)
        for address in (self.host, local):
            if not address:
                continue
            address = address.lower().partition("%")[0]
            names.add(address)
            try:
                mapped = ipaddress.ip_address(address)
            except ValueError:
                mapped = None
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                names.add(str(mapped.ipv4_mapped))
                address = str(mapped.ipv4_mapped)
            if is_loopback(address):
                names |= LOOPBACK_NAMES
        return frozenset(names)

    # -- requests ------------------------------------------------------------------------
    def serve(
        self, method: str, path: str, fields: dict[bytes, list[bytes]], allowed: frozenset[str]
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        """A request's response: the ``Host`` check, the token, then :meth:`handle`."""
        hosts = fields.get(b"host", [])
        if len(hosts) != 1 or host_name(hosts[0].decode("latin-1")) not in allowed:
            return 421, _PLAIN, _MISDIRECTED, []
        page = method in ("GET", "HEAD") and path in ("/", "/index.html")
        if self.token is not None and not page and not self.authorized(fields):
            return (
                401,
                _PLAIN,
                b"unauthorized\n",
                [("WWW-Authenticate", 'Bearer realm="raybridge"')],
            )
        status_code, content_type, body = self.handle(method, path)
        return status_code, content_type, body, []

    def authorized(self, fields: dict[bytes, list[bytes]]) -> bool:
        assert self.token is not None
        values = fields.get(b"authorization", [])
        if len(values) != 1:
            return False
        scheme, _, given = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)

    def handle(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, _PLAIN, b"method not allowed\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == "/api/status":
            return 200, "application/json", json.dumps(status(self.node)).encode()
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self._page
        return 404, _PLAIN, b"not found\n"
