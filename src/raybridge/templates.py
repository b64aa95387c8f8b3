"""Config builders for the usual node roles, as V2Ray 4.x JSON (Python dicts).

Used by ``raybridge demo``, the tests and the benchmarks. Every config here also runs on
V2Ray 4.34 unchanged.
"""

from __future__ import annotations

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
