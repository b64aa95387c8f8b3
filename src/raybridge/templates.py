"""Config builders for the usual node roles, as V2Ray 4.x JSON (Python dicts).

Used by ``raybridge demo``, the tests and the benchmarks. Every config here also runs on
V2Ray 4.34 unchanged. The ``safe_*`` builders at the end are ``raybridge init``'s: the same
roles with the portal locked down (docs/RELIABILITY.md, "Who may be a bridge") and ``//``
comments that explain each part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOCAL = "127.0.0.1"
#: The tunnel domain of the seed document (any name works; it never reaches DNS).
DOMAIN = "private.cloud.com"


def _local_proxies(socks_port: int, http_port: int | None) -> list[dict[str, Any]]:
    """C's inbounds on 127.0.0.1: SOCKS5 with UDP, and an HTTP proxy if ``http_port``."""
    inbounds: list[dict[str, Any]] = [
        {
            "tag": "socks-in",
            "protocol": "socks",
            "listen": LOCAL,
            "port": socks_port,
            "settings": {"auth": "noauth", "udp": True},
        }
    ]
    if http_port:
        inbounds.append({"tag": "http-in", "protocol": "http", "listen": LOCAL, "port": http_port})
    return inbounds


def _vmess_out(tag: str, address: str, port: int, user: dict[str, Any]) -> dict[str, Any]:
    """A VMess outbound to one server with one user."""
    server = {"address": address, "port": port, "users": [user]}
    return {"tag": tag, "protocol": "vmess", "settings": {"vnext": [server]}}


def _vmess_in(
    tag: str, listen: str, port: int, clients: list[dict[str, Any]], **settings: Any
) -> dict[str, Any]:
    """A VMess inbound for ``clients`` (``settings``: more of its settings)."""
    return {
        "tag": tag,
        "protocol": "vmess",
        "listen": listen,
        "port": port,
        "settings": {"clients": clients, **settings},
    }


def _rule(inbound: str, outbound: str, domain: str | None = None) -> dict[str, Any]:
    """A routing rule for what arrives on ``inbound`` (requests for ``domain`` only, if
    given): to ``outbound``."""
    rule: dict[str, Any] = {"type": "field", "inboundTag": [inbound]}
    if domain is not None:
        rule["domain"] = [f"full:{domain}"]
    rule["outboundTag"] = outbound
    return rule


def client_config(
    socks_port: int,
    server_port: int,
    user_id: str,
    *,
    alter_id: int = 0,
    security: str = "auto",
    http_port: int | None = None,
    server_address: str = LOCAL,
) -> dict[str, Any]:
    """Node C: SOCKS (with UDP) on 127.0.0.1, VMess out to ``server_address``."""
    user = {"id": user_id, "alterId": alter_id, "security": security}
    return {
        "log": {"loglevel": "warning"},
        "inbounds": _local_proxies(socks_port, http_port),
        "outbounds": [_vmess_out("vmess-out", server_address, server_port, user)],
    }


def server_config(port: int, user_id: str, *, alter_id: int = 0) -> dict[str, Any]:
    """Node B: VMess in, freedom out."""
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [_vmess_in("vmess-in", LOCAL, port, [{"id": user_id, "alterId": alter_id}])],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }


def bridge_config(
    portal_port: int,
    user_id: str,
    *,
    alter_id: int = 0,
    portal_address: str = LOCAL,
    domain: str = DOMAIN,
) -> dict[str, Any]:
    """Node A: the seed's bridge config (its routing unchanged), pointed at B."""
    user = {"id": user_id, "alterId": alter_id}
    return {
        "log": {"loglevel": "warning"},
        "reverse": {"bridges": [{"tag": "bridge", "domain": domain}]},
        "outbounds": [
            _vmess_out("tunnel", portal_address, portal_port, user),
            {"protocol": "freedom", "settings": {}, "tag": "out"},
        ],
        "routing": {"rules": [_rule("bridge", "tunnel", domain), _rule("bridge", "out")]},
    }


def portal_config(
    tunnel_port: int,
    client_port: int,
    bridge_id: str,
    client_id: str,
    *,
    alter_id: int = 0,
    single_inbound: bool = False,
    listen: str = LOCAL,
    domain: str = DOMAIN,
) -> dict[str, Any]:
    """Node B: the seed's portal config with the errata of NOTES.md fixed. With
    ``single_inbound`` one VMess inbound takes both A and C (the seed's tip)."""

    def inbound(tag: str, port: int, clients: list[dict[str, Any]]) -> dict[str, Any]:
        # In the seed's key order.
        return {
            "tag": tag,
            "port": port,
            "listen": listen,
            "protocol": "vmess",
            "settings": {"clients": clients},
        }

    bridge = {"id": bridge_id, "alterId": alter_id}
    client = {"id": client_id, "alterId": alter_id}
    if single_inbound:
        both = [{**bridge, "email": "bridge@a"}, {**client, "email": "client@c"}]
        inbounds = [inbound("interconn", tunnel_port, both)]
        rules = [_rule("interconn", "portal", domain), _rule("interconn", "portal")]
    else:
        inbounds = [
            inbound("external", client_port, [client]),
            inbound("interconn", tunnel_port, [bridge]),
        ]
        rules = [_rule("external", "portal"), _rule("interconn", "portal", domain)]
    return {
        "log": {"loglevel": "warning"},
        "reverse": {"portals": [{"tag": "portal", "domain": domain}]},
        "inbounds": inbounds,
        "outbounds": [{"protocol": "freedom", "tag": "direct"}],
        "routing": {"rules": rules},
    }


# --------------------------------------------------------------------------- raybridge init

#: A path into a config: keys and list indexes, e.g. ``("routing", "rules", 1)``.
Path = tuple[str | int, ...]

#: The ports of C's local proxies that V2Ray clients (v2rayN, Qv2ray) also use by default.
SOCKS_PORT = 10808
HTTP_PORT = 10809


@dataclass(frozen=True, slots=True)
class Commented:
    """A config and the ``//`` comments that explain it, by the path they stand before.

    V2Ray 4.34 strips ``//`` comments outside strings before it parses a file
    (``infra/conf/json/reader.go``), and so does raybridge, so the rendered text loads on
    both.
    """

    config: dict[str, Any]
    comments: dict[Path, str] = field(default_factory=dict)
    header: str = ""

    def render(self) -> str:
        lines = [f"// {line}".rstrip() for line in self.header.splitlines()]
        lines += _render(self.config, (), 0, self.comments)
        return "\n".join(lines) + "\n"


def _comment_lines(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}// {line}".rstrip() for line in text.splitlines()]


def _inline(value: Any, path: Path, indent: int, comments: dict[Path, str]) -> str | None:
    """``value`` on one line if it is short and nothing inside it carries a comment."""
    if any(p[: len(path)] == path and len(p) > len(path) for p in comments):
        return None
    text = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return text if indent + len(text) <= 72 else None


def _render(value: Any, path: Path, indent: int, comments: dict[Path, str]) -> list[str]:
    """``value`` as indented JSON lines (no trailing comma), comments before their paths."""
    if not isinstance(value, dict | list) or not value:
        return [json.dumps(value, ensure_ascii=False)]
    short = _inline(value, path, indent, comments) if path else None
    if short is not None:
        return [short]
    pad = " " * (indent + 2)
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    lines = [opening]
    for i, (key, item) in enumerate(items):
        sub = (*path, key)
        if sub in comments:
            lines += _comment_lines(comments[sub], indent + 2)
        body = _render(item, sub, indent + 2, comments)
        prefix = f"{json.dumps(key)}: " if isinstance(value, dict) else ""
        body[0] = pad + prefix + body[0]
        if i < len(items) - 1:
            body[-1] += ","
        lines += body
    lines.append(" " * indent + closing)
    return lines


#: ``raybridge init --transport``: how A and C reach B (docs/transports.md). ``tcp`` is bare
#: VMess; ``tls`` TCP+TLS; ``ws`` WebSocket behind nginx, which ends TLS (A and C speak
#: WebSocket+TLS to nginx); ``wss`` WebSocket+TLS; ``h2`` HTTP/2 over TLS.
TRANSPORTS = ("tcp", "tls", "ws", "wss", "h2")
#: The transports whose TLS B's own inbounds end.
TLS_TRANSPORTS = ("tls", "wss", "h2")
#: streamSettings.network of each transport.
_NETWORK = {"tls": "tcp", "ws": "ws", "wss": "ws", "h2": "http"}
#: How the summaries and comments name each transport.
TRANSPORT_NAMES = {
    "tcp": "bare TCP",
    "tls": "TCP+TLS",
    "ws": "WebSocket behind nginx (TLS ends at nginx)",
    "wss": "WebSocket+TLS",
    "h2": "HTTP/2 over TLS",
}
#: nginx's port in front of B with ``--transport ws`` (what A and C dial).
NGINX_PORT = 443


@dataclass(frozen=True, slots=True)
class PortalCert:
    """B's TLS certificate, and what A and C check it with.

    Either the files given to ``raybridge init --cert/--key`` (``cert_file``, ``key_file``:
    absolute paths that B's config refers to, so that a certificate renewed in place, as
    certbot does, is picked up; A and C check it against the system roots), or a self-signed
    set (``--self-signed``): the leaf and its key (``cert_pem``, ``key_pem``) inlined in B's
    config and the private CA (``ca_pem``) inlined in A's and C's, so that each file works
    wherever it is deployed, whatever the working directory (V2Ray resolves relative paths
    from there).
    """

    cert_file: str = ""
    key_file: str = ""
    cert_pem: str = ""
    key_pem: str = ""
    ca_pem: str = ""


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything ``raybridge init`` decides, shared by the three configs it writes."""

    portal_address: str
    portal_port: int
    client_port: int
    bridge_id: str
    client_id: str
    domain: str
    socks_port: int = SOCKS_PORT
    http_port: int | None = HTTP_PORT
    #: Where B's inbounds listen. B is the public node, so every interface by default.
    listen: str = "0.0.0.0"
    #: One of :data:`TRANSPORTS`, for the A-B and the C-B link alike.
    transport: str = "tcp"
    #: B's certificate: required by :data:`TLS_TRANSPORTS`; for ``ws`` it is nginx's, and
    #: only a self-signed one changes the configs (A and C trust its CA).
    cert: PortalCert | None = None
    #: The WebSocket or HTTP/2 path of the A-B link and of the C-B link.
    bridge_path: str = "/"
    client_path: str = "/"
    nginx_port: int = NGINX_PORT

    @property
    def behind_nginx(self) -> bool:
        return self.transport == "ws"

    @property
    def bridge_dial_port(self) -> int:
        """The port A dials: B's, or nginx's in front of it."""
        return self.nginx_port if self.behind_nginx else self.portal_port

    @property
    def client_dial_port(self) -> int:
        return self.nginx_port if self.behind_nginx else self.client_port

    @property
    def open_ports(self) -> tuple[int, ...]:
        """The ports to open in B's firewall."""
        return (self.nginx_port,) if self.behind_nginx else (self.portal_port, self.client_port)

    @property
    def client_transport(self) -> str:
        """What A and C speak: behind nginx, WebSocket over nginx's TLS."""
        return "wss" if self.behind_nginx else self.transport

    @property
    def host_header(self) -> str:
        """The portal address as an HTTP Host (an IPv6 literal in brackets)."""
        return f"[{self.portal_address}]" if ":" in self.portal_address else self.portal_address


def random_domain(urandom: Callable[[int], bytes]) -> str:
    """A tunnel domain unlikely to collide with another install's (it never reaches DNS)."""
    return f"tunnel-{urandom(4).hex()}.internal"


_LOG_COMMENT = (
    'Logs: "" is the console (stderr), or give a file path, or "none".\n'
    "loglevel: debug, info, warning, error or none."
)


def _log() -> dict[str, Any]:
    return {"loglevel": "warning", "access": "", "error": ""}


def _pem_lines(pem: str) -> list[str]:
    """A PEM blob as V2Ray's inline form: one string per line."""
    return [line for line in pem.strip().splitlines() if line.strip()]


def _served_certificate(cert: PortalCert) -> dict[str, Any]:
    """B's certificate entry: the files given, or the self-signed leaf inline."""
    if cert.cert_file:
        return {
            "certificateFile": cert.cert_file,
            "keyFile": cert.key_file,
            "usage": "encipherment",
        }
    return {
        "usage": "encipherment",
        "certificate": _pem_lines(cert.cert_pem),
        "key": _pem_lines(cert.key_pem),
    }


def _server_stream(s: Setup, path: str) -> dict[str, Any] | None:
    """streamSettings of one of B's inbounds (None: bare TCP)."""
    if s.transport == "tcp":
        return None
    stream: dict[str, Any] = {"network": _NETWORK[s.transport]}
    if s.transport in TLS_TRANSPORTS:
        if s.cert is None:
            raise ValueError(f"--transport {s.transport} needs a certificate")
        tls: dict[str, Any] = {}
        if s.transport == "wss":
            # A V2Ray 4.34 server would also advertise h2, which a WebSocket client offering
            # it cannot speak (docs/transports.md 2.3).
            tls["alpn"] = ["http/1.1"]
        tls["certificates"] = [_served_certificate(s.cert)]
        stream["security"] = "tls"
        stream["tlsSettings"] = tls
    if stream["network"] == "ws":
        stream["wsSettings"] = {"path": path}
    else:
        stream.update(_http_settings(s, path))
    return stream


def _http_settings(s: Setup, path: str) -> dict[str, Any]:
    return {"httpSettings": {"host": [s.host_header], "path": path}} if s.transport == "h2" else {}


def _client_stream(s: Setup, path: str) -> dict[str, Any] | None:
    """streamSettings of A's tunnel and C's VMess outbound (None: bare TCP)."""
    transport = s.client_transport
    if transport == "tcp":
        return None
    tls: dict[str, Any] = {"serverName": s.portal_address}
    if s.cert is not None and s.cert.ca_pem:
        # Only the private CA vouches for B: the system roots are left out.
        tls["disableSystemRoot"] = True
        tls["certificates"] = [{"usage": "verify", "certificate": _pem_lines(s.cert.ca_pem)}]
    stream: dict[str, Any] = {"network": _NETWORK[transport], "security": "tls", "tlsSettings": tls}
    if stream["network"] == "ws":
        stream["wsSettings"] = {"path": path, "headers": {"Host": s.host_header}}
    else:
        stream.update(_http_settings(s, path))
    return stream


def _server_stream_comment(s: Setup, path: str) -> str:
    if s.behind_nginx:
        return (
            f"WebSocket on path {path}, without TLS: nginx (nginx.conf) ends TLS on port "
            f"{s.nginx_port}\nand passes this path here. Keep the path to yourself."
        )
    assert s.cert is not None
    what = {
        "tls": "TCP+TLS",
        "wss": "WebSocket+TLS on the path below (another path gets a 404)",
        "h2": "HTTP/2 over TLS, for the host and path below (others get a 404)",
    }[s.transport]
    if s.cert.cert_file:
        where = (
            "B's certificate: the files given to raybridge init (a renewed one is\n"
            "read at the next start). A and C check it against the system's roots"
        )
    else:
        where = (
            "B's certificate: the self-signed one (portal.pem\nand its key, a secret), inline. "
            "A and C check it against the private CA in their configs"
        )
    return f"{what}. {where},\nfor the name {s.portal_address}."


def _client_stream_comment(s: Setup) -> str:
    name = TRANSPORT_NAMES[s.client_transport]
    via = f" to nginx on port {s.nginx_port}, in front of B" if s.behind_nginx else ""
    if s.cert is not None and s.cert.ca_pem:
        trust = (
            "Only the private CA below (ca.pem, made by raybridge init)\n"
            f"vouches for B's certificate, for the name {s.portal_address}: no allowInsecure "
            "needed."
        )
    else:
        trust = (
            f"B's certificate is checked against the system's roots,\nfor the name "
            f"{s.portal_address}."
        )
    return f"{name}{via}. {trust}"


def _outbound_to_portal(s: Setup, tag: str, user_id: str, port: int, path: str) -> dict[str, Any]:
    """A's tunnel or C's proxy: VMess to B with its own user, over the client transport."""
    user = {"id": user_id, "alterId": 0, "security": "auto"}
    outbound = _vmess_out(tag, s.portal_address, port, user)
    stream = _client_stream(s, path)
    if stream is not None:
        outbound["streamSettings"] = stream
    return outbound


def safe_bridge_config(s: Setup) -> Commented:
    """Node A, the bridge, inside the private network: it dials B and serves its tunnels."""
    tunnel = _outbound_to_portal(s, "tunnel", s.bridge_id, s.bridge_dial_port, s.bridge_path)
    config: dict[str, Any] = {
        "log": _log(),
        "reverse": {"bridges": [{"tag": "bridge", "domain": s.domain}]},
        "outbounds": [tunnel, {"tag": "direct", "protocol": "freedom", "settings": {}}],
        "routing": {"rules": [_rule("bridge", "tunnel", s.domain), _rule("bridge", "direct")]},
    }
    comments: dict[Path, str] = {
        ("log",): _LOG_COMMENT,
        ("reverse",): (
            'The bridge. It opens tunnels by asking for its domain from the inbound tag "bridge";\n'
            "the domain must be the one in B's portal. It is only a label: it never reaches DNS."
        ),
        ("outbounds", 0): (
            "To the portal B, with the bridge's own user (B gives bridges an inbound and a\n"
            "user of their own). alterId 0: VMess AEAD headers."
        ),
        ("outbounds", 1): (
            "Where C's connections leave, from this machine: C reaches what A reaches."
        ),
        ("routing", "rules", 0): "The bridge's tunnels (its domain) go to B.",
        ("routing", "rules", 1): (
            "Everything else the bridge receives through its tunnels is C's traffic: out to\n"
            "the private network."
        ),
    }
    if "streamSettings" in tunnel:
        comments["outbounds", 0, "streamSettings"] = _client_stream_comment(s)
    header = (
        "Node A, the BRIDGE: runs inside the private network. It dials out to the portal B\n"
        f"at {s.portal_address}:{s.bridge_dial_port} and keeps tunnels open; it needs no open "
        "port.\n"
        "Clients of B reach, through it, whatever this machine can reach.\n"
        "Run: raybridge run -c a.json   (or V2Ray 4.34: v2ray -config a.json)\n"
        "Written by raybridge init. The id below is a secret: keep this file private."
    )
    return Commented(config, comments, header)


def safe_portal_config(s: Setup) -> Commented:
    """Node B, the public portal: bridges on their own inbound and user (docs/RELIABILITY.md,
    "Who may be a bridge"), clients on another; a client asking for the tunnel domain is
    refused instead of becoming a bridge."""
    bridges = [{"id": s.bridge_id, "alterId": 0, "email": "bridge-a"}]
    clients = [{"id": s.client_id, "alterId": 0, "email": "client-c"}]
    inbounds = [
        _vmess_in("bridges", s.listen, s.portal_port, bridges, aeadForced=True),
        _vmess_in("clients", s.listen, s.client_port, clients, aeadForced=True),
    ]
    for inbound, path in zip(inbounds, (s.bridge_path, s.client_path), strict=True):
        stream = _server_stream(s, path)
        if stream is not None:
            inbound["streamSettings"] = stream
    config: dict[str, Any] = {
        "log": _log(),
        "reverse": {"portals": [{"tag": "portal", "domain": s.domain}]},
        "inbounds": inbounds,
        "outbounds": [{"tag": "refuse", "protocol": "blackhole", "settings": {}}],
        "routing": {
            "rules": [
                _rule("bridges", "portal", s.domain),
                _rule("clients", "refuse", s.domain),
                _rule("clients", "portal"),
            ]
        },
    }
    return Commented(config, _portal_comments(s), _portal_header(s))


def _portal_comments(s: Setup) -> dict[Path, str]:
    """What b.json's comments say, by the path of what they sit above."""
    if s.behind_nginx:
        reach = f"through nginx on port {s.nginx_port}; keep port {{}} closed"
    else:
        reach = "port {}, open it in the firewall"
    comments: dict[Path, str] = {
        ("log",): _LOG_COMMENT,
        ("reverse",): (
            'The portal: an outbound tagged "portal" that sends each connection routed to it\n'
            "through a bridge's tunnel. A connection for its domain IS a bridge's tunnel, so\n"
            "the routing below lets only the bridge's own inbound ask for that domain."
        ),
        ("inbounds", 0): (
            f"Bridges (node A) connect here: {reach.format(s.portal_port)}.\n"
            "One user, the bridge's, and no other. aeadForced (raybridge; V2Ray ignores it)\n"
            "refuses the old MD5-based VMess headers."
        ),
        ("inbounds", 1): (
            f"Clients (node C, or a phone with the share link) connect here: "
            f"{reach.format(s.client_port)}.\nAdd a user per client (raybridge uuid gives a "
            "fresh id)."
        ),
        ("outbounds", 0): (
            "The first outbound takes whatever no rule matches: nothing, here. B sends no\n"
            "traffic of its own anywhere; all client traffic leaves through A."
        ),
        ("routing", "rules", 0): "The bridge's tunnels, from its own inbound only.",
        ("routing", "rules", 1): (
            "A client asking for the tunnel domain would register as a bridge and receive\n"
            "other clients' traffic: refused."
        ),
        ("routing", "rules", 2): "Everything else from clients goes through the bridge.",
    }
    if s.transport != "tcp":
        comments["inbounds", 0, "streamSettings"] = _server_stream_comment(s, s.bridge_path)
        comments["inbounds", 1, "streamSettings"] = _server_stream_comment(s, s.client_path)
    return comments


def _portal_header(s: Setup) -> str:
    """b.json's opening comment: what node B is, where it listens, what is secret."""
    if s.behind_nginx:
        reachable = (
            f"(clients), on loopback only: nginx (nginx.conf) ends TLS on port {s.nginx_port}\n"
            "and passes the two WebSocket paths here; only that port must be reachable."
        )
    else:
        reachable = "(clients); both ports must be reachable."
    secrets_note = (
        "The ids and the certificate's\nkey below are secrets"
        if s.cert is not None and s.cert.key_pem and s.transport in TLS_TRANSPORTS
        else "The ids below are secrets"
    )
    return (
        "Node B, the PORTAL: the public node, at "
        f"{s.portal_address}. Listens on {s.listen}:{s.portal_port}\n"
        f"(bridges) and {s.listen}:{s.client_port} {reachable}\n"
        + (f"Transport: {TRANSPORT_NAMES[s.transport]}.\n" if s.transport in TLS_TRANSPORTS else "")
        + "Run: raybridge run -c b.json   (or V2Ray 4.34: v2ray -config b.json)\n"
        f"Written by raybridge init. {secrets_note}: keep this file private."
    )


def safe_client_config(s: Setup) -> Commented:
    """Node C, the client: local SOCKS5 (with UDP) and HTTP proxies, VMess to B."""
    proxy = _outbound_to_portal(s, "proxy", s.client_id, s.client_dial_port, s.client_path)
    config: dict[str, Any] = {
        "log": _log(),
        "inbounds": _local_proxies(s.socks_port, s.http_port),
        "outbounds": [proxy],
    }
    comments: dict[Path, str] = {
        ("log",): _LOG_COMMENT,
        ("inbounds", 0): (
            f"SOCKS5 proxy for this machine's programs, TCP and UDP: 127.0.0.1:{s.socks_port}\n"
            f"(curl --socks5-hostname 127.0.0.1:{s.socks_port} http://a-host-inside/)."
        ),
        ("outbounds", 0): (
            f"Everything goes to the portal B at {s.portal_address}:{s.client_dial_port} and "
            "leaves\nthrough the bridge A, inside its network. No routing section: private "
            "addresses\ntoo go through the tunnel (they are the point)."
        ),
    }
    if s.http_port:
        comments["inbounds", 1] = f"HTTP proxy: 127.0.0.1:{s.http_port}."
    if "streamSettings" in proxy:
        comments["outbounds", 0, "streamSettings"] = _client_stream_comment(s)
    header = (
        "Node C, the CLIENT: local proxies on 127.0.0.1; everything goes through the portal\n"
        f"B ({s.portal_address}) and the bridge A. Phones and desktop clients (v2rayN,\n"
        "v2rayNG, ...) can import the share link instead: raybridge link -c c.json\n"
        "Run: raybridge run -c c.json   (or V2Ray 4.34: v2ray -config c.json)\n"
        "Written by raybridge init. The id below is a secret: keep this file private."
    )
    return Commented(config, comments, header)


# --------------------------------------------------------------------------- nginx


def _nginx_backend(listen: str) -> str:
    """Where nginx reaches B's inbounds: loopback when they listen everywhere."""
    if listen in ("0.0.0.0", "::"):
        return LOCAL
    return f"[{listen}]" if ":" in listen else listen


def _nginx_location(backend: str, what: str, path: str, port: int) -> str:
    """One WebSocket path of nginx's server block, passed to B's inbound on ``port``."""
    return (
        f"    # {what}: to B's inbound on {backend}:{port}.\n"
        f"    location = {path} {{\n"
        f"        proxy_pass http://{backend}:{port};\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_set_header Upgrade $http_upgrade;\n"
        '        proxy_set_header Connection "upgrade";\n'
        "        proxy_set_header Host $host;\n"
        "        # B logs the client's address from this header.\n"
        "        proxy_set_header X-Forwarded-For $remote_addr;\n"
        "        # Tunnels live long and may be quiet; stream, do not buffer.\n"
        "        proxy_read_timeout 24h;\n"
        "        proxy_send_timeout 24h;\n"
        "        proxy_buffering off;\n"
        "    }\n"
    )


def nginx_config(s: Setup, cert_file: str, key_file: str, *, placeholder: bool = False) -> str:
    """A ``server`` block for nginx in front of B (``--transport ws``): TLS on
    ``s.nginx_port``, each of the two WebSocket paths passed to its inbound on loopback,
    404 for anything else. It goes inside nginx's ``http {}`` (e.g. /etc/nginx/conf.d/).

    The backend side is HTTP/1.1, as the WebSocket upgrade needs; the client side stays
    HTTP/1.1 too (no ``http2`` on the listen line: a WebSocket client that negotiated h2
    with nginx could not upgrade)."""
    backend = _nginx_backend(s.listen)
    name = "_" if ":" in s.portal_address else s.portal_address
    # On IPv6 too when A and C dial an IPv6 address; else offered, commented out.
    ipv6, ipv6_note = ("", "") if ":" in s.portal_address else ("# ", "   # IPv6 as well")
    cert_note = (
        f"    # Placeholders: a certificate for {s.portal_address} and its key, e.g. from\n"
        f"    # certbot certonly --nginx -d {s.portal_address}\n"
        if placeholder
        else ""
    )

    return (
        "# nginx in front of raybridge's portal B, written by raybridge init --transport ws.\n"
        f"# It ends TLS on port {s.nginx_port} and passes two WebSocket paths to B's "
        "inbounds, which\n"
        f"# listen on {backend} only. Put this file inside nginx's http {{}} block, e.g. as\n"
        "# /etc/nginx/conf.d/raybridge.conf, then: nginx -t && systemctl reload nginx\n"
        "# The paths are in b.json, a.json and c.json too: change them everywhere or nowhere.\n"
        "server {\n"
        f"    listen {s.nginx_port} ssl;\n"
        f"    {ipv6}listen [::]:{s.nginx_port} ssl;{ipv6_note}\n"
        f"    server_name {name};\n"
        f"{cert_note}"
        f"    ssl_certificate {cert_file};\n"
        f"    ssl_certificate_key {key_file};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "\n"
        f"{_nginx_location(backend, 'The bridge A', s.bridge_path, s.portal_port)}"
        "\n"
        f"{_nginx_location(backend, 'Clients C', s.client_path, s.client_port)}"
        "\n"
        "    # Anything else: nothing here.\n"
        "    location / {\n"
        "        return 404;\n"
        "    }\n"
        "}\n"
    )
