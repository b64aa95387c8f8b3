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
    return {
        "log": {"loglevel": "warning"},
        "inbounds": inbounds,
        "outbounds": [
            {
                "tag": "vmess-out",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": server_address,
                            "port": server_port,
                            "users": [{"id": user_id, "alterId": alter_id, "security": security}],
                        }
                    ]
                },
            }
        ],
    }


def server_config(port: int, user_id: str, *, alter_id: int = 0) -> dict[str, Any]:
    """Node B: VMess in, freedom out."""
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "vmess-in",
                "protocol": "vmess",
                "listen": LOCAL,
                "port": port,
                "settings": {"clients": [{"id": user_id, "alterId": alter_id}]},
            }
        ],
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
    return {
        "log": {"loglevel": "warning"},
        "reverse": {"bridges": [{"tag": "bridge", "domain": domain}]},
        "outbounds": [
            {
                "tag": "tunnel",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": portal_address,
                            "port": portal_port,
                            "users": [{"id": user_id, "alterId": alter_id}],
                        }
                    ]
                },
            },
            {"protocol": "freedom", "settings": {}, "tag": "out"},
        ],
        "routing": {
            "rules": [
                {
                    "type": "field",
                    "inboundTag": ["bridge"],
                    "domain": [f"full:{domain}"],
                    "outboundTag": "tunnel",
                },
                {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"},
            ]
        },
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
    if single_inbound:
        inbounds = [
            {
                "tag": "interconn",
                "port": tunnel_port,
                "listen": listen,
                "protocol": "vmess",
                "settings": {
                    "clients": [
                        {"id": bridge_id, "alterId": alter_id, "email": "bridge@a"},
                        {"id": client_id, "alterId": alter_id, "email": "client@c"},
                    ]
                },
            }
        ]
        rules = [
            {
                "type": "field",
                "inboundTag": ["interconn"],
                "domain": [f"full:{domain}"],
                "outboundTag": "portal",
            },
            {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
        ]
    else:
        inbounds = [
            {
                "tag": "external",
                "port": client_port,
                "listen": listen,
                "protocol": "vmess",
                "settings": {"clients": [{"id": client_id, "alterId": alter_id}]},
            },
            {
                "tag": "interconn",
                "port": tunnel_port,
                "listen": listen,
                "protocol": "vmess",
                "settings": {"clients": [{"id": bridge_id, "alterId": alter_id}]},
            },
        ]
        rules = [
            {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
            {
                "type": "field",
                "inboundTag": ["interconn"],
                "domain": [f"full:{domain}"],
                "outboundTag": "portal",
            },
        ]
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


def random_domain(urandom: Callable[[int], bytes]) -> str:
    """A tunnel domain unlikely to collide with another install's (it never reaches DNS)."""
    return f"tunnel-{urandom(4).hex()}.internal"


_LOG_COMMENT = (
    'Logs: "" is the console (stderr), or give a file path, or "none".\n'
    "loglevel: debug, info, warning, error or none."
)


def _log() -> dict[str, Any]:
    return {"loglevel": "warning", "access": "", "error": ""}


def safe_bridge_config(s: Setup) -> Commented:
    """Node A, the bridge, inside the private network: it dials B and serves its tunnels."""
    config: dict[str, Any] = {
        "log": _log(),
        "reverse": {"bridges": [{"tag": "bridge", "domain": s.domain}]},
        "outbounds": [
            {
                "tag": "tunnel",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": s.portal_address,
                            "port": s.portal_port,
                            "users": [{"id": s.bridge_id, "alterId": 0, "security": "auto"}],
                        }
                    ]
                },
            },
            {"tag": "direct", "protocol": "freedom", "settings": {}},
        ],
        "routing": {
            "rules": [
                {
                    "type": "field",
                    "inboundTag": ["bridge"],
                    "domain": [f"full:{s.domain}"],
                    "outboundTag": "tunnel",
                },
                {"type": "field", "inboundTag": ["bridge"], "outboundTag": "direct"},
            ]
        },
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
    header = (
        "Node A, the BRIDGE: runs inside the private network. It dials out to the portal B\n"
        f"at {s.portal_address}:{s.portal_port} and keeps tunnels open; it needs no open port.\n"
        "Clients of B reach, through it, whatever this machine can reach.\n"
        "Run: raybridge run -c a.json   (or V2Ray 4.34: v2ray -config a.json)\n"
        "Written by raybridge init. The id below is a secret: keep this file private."
    )
    return Commented(config, comments, header)


def safe_portal_config(s: Setup) -> Commented:
    """Node B, the public portal: bridges on their own inbound and user (docs/RELIABILITY.md,
    "Who may be a bridge"), clients on another; a client asking for the tunnel domain is
    refused instead of becoming a bridge."""
    config: dict[str, Any] = {
        "log": _log(),
        "reverse": {"portals": [{"tag": "portal", "domain": s.domain}]},
        "inbounds": [
            {
                "tag": "bridges",
                "protocol": "vmess",
                "listen": s.listen,
                "port": s.portal_port,
                "settings": {
                    "clients": [{"id": s.bridge_id, "alterId": 0, "email": "bridge-a"}],
                    "aeadForced": True,
                },
            },
            {
                "tag": "clients",
                "protocol": "vmess",
                "listen": s.listen,
                "port": s.client_port,
                "settings": {
                    "clients": [{"id": s.client_id, "alterId": 0, "email": "client-c"}],
                    "aeadForced": True,
                },
            },
        ],
        "outbounds": [{"tag": "refuse", "protocol": "blackhole", "settings": {}}],
        "routing": {
            "rules": [
                {
                    "type": "field",
                    "inboundTag": ["bridges"],
                    "domain": [f"full:{s.domain}"],
                    "outboundTag": "portal",
                },
                {
                    "type": "field",
                    "inboundTag": ["clients"],
                    "domain": [f"full:{s.domain}"],
                    "outboundTag": "refuse",
                },
                {"type": "field", "inboundTag": ["clients"], "outboundTag": "portal"},
            ]
        },
    }
    comments: dict[Path, str] = {
        ("log",): _LOG_COMMENT,
        ("reverse",): (
            'The portal: an outbound tagged "portal" that sends each connection routed to it\n'
            "through a bridge's tunnel. A connection for its domain IS a bridge's tunnel, so\n"
            "the routing below lets only the bridge's own inbound ask for that domain."
        ),
        ("inbounds", 0): (
            f"Bridges (node A) connect here: port {s.portal_port}, open it in the firewall.\n"
            "One user, the bridge's, and no other. aeadForced (raybridge; V2Ray ignores it)\n"
            "refuses the old MD5-based VMess headers."
        ),
        ("inbounds", 1): (
            f"Clients (node C, or a phone with the share link) connect here: port "
            f"{s.client_port}.\nAdd a user per client (raybridge uuid gives a fresh id)."
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
    header = (
        "Node B, the PORTAL: the public node, at "
        f"{s.portal_address}. Listens on {s.listen}:{s.portal_port}\n"
        f"(bridges) and {s.listen}:{s.client_port} (clients); both ports must be reachable.\n"
        "Run: raybridge run -c b.json   (or V2Ray 4.34: v2ray -config b.json)\n"
        "Written by raybridge init. The ids below are secrets: keep this file private."
    )
    return Commented(config, comments, header)


def safe_client_config(s: Setup) -> Commented:
    """Node C, the client: local SOCKS5 (with UDP) and HTTP proxies, VMess to B."""
    inbounds: list[dict[str, Any]] = [
        {
            "tag": "socks-in",
            "protocol": "socks",
            "listen": LOCAL,
            "port": s.socks_port,
            "settings": {"auth": "noauth", "udp": True},
        }
    ]
    if s.http_port:
        inbounds.append(
            {"tag": "http-in", "protocol": "http", "listen": LOCAL, "port": s.http_port}
        )
    config: dict[str, Any] = {
        "log": _log(),
        "inbounds": inbounds,
        "outbounds": [
            {
                "tag": "proxy",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": s.portal_address,
                            "port": s.client_port,
                            "users": [{"id": s.client_id, "alterId": 0, "security": "auto"}],
                        }
                    ]
                },
            }
        ],
    }
    comments: dict[Path, str] = {
        ("log",): _LOG_COMMENT,
        ("inbounds", 0): (
            f"SOCKS5 proxy for this machine's programs, TCP and UDP: 127.0.0.1:{s.socks_port}\n"
            f"(curl --socks5-hostname 127.0.0.1:{s.socks_port} http://a-host-inside/)."
        ),
        ("outbounds", 0): (
            f"Everything goes to the portal B at {s.portal_address}:{s.client_port} and "
            "leaves\nthrough the bridge A, inside its network. No routing section: private "
            "addresses\ntoo go through the tunnel (they are the point)."
        ),
    }
    if s.http_port:
        comments["inbounds", 1] = f"HTTP proxy: 127.0.0.1:{s.http_port}."
    header = (
        "Node C, the CLIENT: local proxies on 127.0.0.1; everything goes through the portal\n"
        f"B ({s.portal_address}) and the bridge A. Phones and desktop clients (v2rayN,\n"
        "v2rayNG, ...) can import the share link instead: raybridge link -c c.json\n"
        "Run: raybridge run -c c.json   (or V2Ray 4.34: v2ray -config c.json)\n"
        "Written by raybridge init. The id below is a secret: keep this file private."
    )
    return Commented(config, comments, header)
