#!/usr/bin/env python3
"""Fuzz the config loader: ``load_config_text`` on V2Ray JSON, free-form and structured.

Every input is loaded twice: (1) the input bytes decoded as UTF-8 (``errors="replace"``), as
``raybridge run`` reads a file; (2) a JSON document built from the input's choices out of
V2Ray's vocabulary (keys, protocol names, addresses, ports), so the fuzzer reaches the
validation of every section rather than stopping at JSON syntax. A fixed environment
(``PORT=8080``) serves ``env:`` references.

Allowed: ConfigError. Anything else is a finding.

    python fuzz/fuzz_config.py [libFuzzer args]
"""

from __future__ import annotations

import json
import sys

from _harness import Chooser, FuzzedDataProvider, instrumented, seed_input

with instrumented(__name__):
    from raybridge.config import Config, ConfigError, load_config_text

NAME = "config"
ENVIRON = {"PORT": "8080"}
MAX_DEPTH = 8

KEYS = [
    "log", "loglevel", "access", "error", "inbounds", "outbounds", "inbound", "outbound",
    "inboundDetour", "outboundDetour", "port", "protocol", "listen", "settings", "tag",
    "clients", "id", "alterId", "level", "email", "vnext", "address", "users", "security",
    "network", "domain", "ip", "outboundTag", "balancerTag", "inboundTag", "type", "user",
    "policy", "levels", "0", "1", "handshake", "connIdle", "uplinkOnly", "downlinkOnly",
    "bufferSize", "system", "reverse", "bridges", "portals", "streamSettings", "tcpSettings",
    "header", "sockopt", "mux", "enabled", "concurrency", "auth", "accounts", "pass", "udp",
    "timeout", "userLevel", "allowTransparent", "redirect", "response", "domainStrategy",
    "sniffing", "destOverride", "routing", "rules", "balancers", "selector", "sourcePort",
    "source", "attrs", "protocolSettings", "allocate", "strategy", "refresh", "followRedirect",
    "proxySettings", "sendThrough", "transport", "dns", "servers", "api", "stats", "default",
    "disableInsecureEncryption", "detour", "features", "PORT", "Protocol", "Settings",
]  # fmt: skip
WORDS = [
    "socks", "http", "vmess", "dokodemo-door", "freedom", "blackhole", "shadowsocks", "field",
    "tcp", "udp", "tcp,udp", "b831381d-6324-4d53-ad4f-8cda48b30811", "127.0.0.1", "::1",
    "0.0.0.0", "localhost", "example.com", "private.cloud.com", "1000-1002", "env:PORT",
    "password", "noauth", "none", "auto", "aes-128-gcm", "chacha20-poly1305", "tls", "ws",
    "a:1", ":80", "", "x", "53,443", "full:a.com", "domain:a.com", "regexp:^a", "geosite:cn",
    "10.0.0.0/8", "geoip:private", "UseIP", "AsIs", "always", "random", "debug", "warning",
    "bridge", "portal", "tunnel", "direct", "http,tls", "80-90,443", "1.2.3.4:53", "v1.mux.cool",
]  # fmt: skip
NUMBERS = [0, 1, 2, -1, 4, 8, 53, 64, 80, 443, 1080, 10086, 65535, 65536, 0.5, 1e3, 2**31, 2**64]

_NULL, _FALSE, _TRUE, _NUMBER, _WORD, _LIST, _OBJECT = range(7)


def read_value(ch: Chooser, path: str = "v", depth: int = 0) -> object:
    """A JSON value from choices named after their place in the document."""
    kind = ch.int(path, 0, _OBJECT if depth < MAX_DEPTH else _WORD)
    if kind == _NULL:
        return None
    if kind in (_FALSE, _TRUE):
        return kind == _TRUE
    if kind == _NUMBER:
        return NUMBERS[ch.int(path + "#", 0, len(NUMBERS) - 1)]
    if kind == _WORD:
        return WORDS[ch.int(path + "#", 0, len(WORDS) - 1)]
    count = ch.int(path + "#", 0, 5)
    if kind == _LIST:
        return [read_value(ch, f"{path}.{i}", depth + 1) for i in range(count)]
    obj: dict[str, object] = {}
    for i in range(count):
        key = KEYS[ch.int(f"{path}.{i}k", 0, len(KEYS) - 1)]
        obj[key] = read_value(ch, f"{path}.{i}", depth + 1)
    return obj


def value_choices(value: object, path: str = "v") -> dict[str, int]:
    """The choices for which :func:`read_value` builds ``value`` (for seeds)."""
    if value is None:
        return {path: _NULL}
    if isinstance(value, bool):
        return {path: _TRUE if value else _FALSE}
    if isinstance(value, int | float):
        return {path: _NUMBER, path + "#": NUMBERS.index(value)}
    if isinstance(value, str):
        return {path: _WORD, path + "#": WORDS.index(value)}
    if isinstance(value, list):
        items = list(enumerate(value))
        out = {path: _LIST, path + "#": len(value)}
    else:
        assert isinstance(value, dict)
        items = list(enumerate(value.values()))
        out = {path: _OBJECT, path + "#": len(value)}
        out.update({f"{path}.{i}k": KEYS.index(key) for i, key in enumerate(value)})
    for i, item in items:
        out.update(value_choices(item, f"{path}.{i}"))
    return out


def _load(text: str) -> str:
    try:
        config = load_config_text(text, "fuzz.json", environ=ENVIRON)
    except ConfigError as exc:
        str(exc)  # the message names file, line and field: it must format
        return "error"
    if not isinstance(config, Config):
        raise TypeError(f"unexpected result {config!r}")
    return "config"


def run(data: bytes) -> list[str]:
    """Load the text and the structured document; return the two outcomes."""
    text = data.decode("utf-8", errors="replace")
    value = read_value(Chooser(FuzzedDataProvider(data)))
    return [_load(text), _load(json.dumps(value))]


def TestOneInput(data: bytes) -> None:
    run(data)


_BRIDGE = """// bridge A (V2Ray docs' reverse example, shortened)
{ "reverse": {"bridges": [{"tag": "bridge", "domain": "private.cloud.com"}]},
  "outbounds": [
    {"tag": "tunnel", "protocol": "vmess", "settings": {"vnext": [{"address": "127.0.0.1",
      "port": 16823, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "alterId": 4,
      "security": "aes-128-gcm"}]}]}},
    {"protocol": "freedom", "settings": {}, "tag": "direct"}],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["bridge"], "domain": ["full:private.cloud.com"],
     "outboundTag": "tunnel"},
    {"type": "field", "inboundTag": ["bridge"], "outboundTag": "direct"}]}}
"""
_PORTAL = """{ "log": {"loglevel": "debug", "access": ""},
  "reverse": {"portals": [{"tag": "portal", "domain": "private.cloud.com"}]},
  "inbounds": [
    {"tag": "external", "port": 80, "listen": "127.0.0.1", "protocol": "dokodemo-door",
     "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
    {"tag": "tunnel", "port": 16823, "protocol": "vmess", "settings": {"clients": [
      {"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "alterId": 0, "email": "a@b"}],
      "disableInsecureEncryption": true}}],
  "routing": {"rules": [
    {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
    {"type": "field", "inboundTag": ["tunnel"], "domain": ["full:private.cloud.com"],
     "outboundTag": "portal"}]},
  "outbounds": [{"protocol": "blackhole", "settings": {"response": {"type": "http"}}}]}
"""
_CLIENT = """{ "inbounds": [
    {"port": "env:PORT", "listen": "127.0.0.1", "protocol": "socks", "tag": "socks-in",
     "settings": {"auth": "password", "accounts": [{"user": "u", "pass": "p"}], "udp": true},
     "sniffing": {"enabled": true, "destOverride": ["http", "tls"]}},
    {"port": 8118, "protocol": "http", "settings": {"timeout": 30, "allowTransparent": false}}],
  "outbounds": [
    {"protocol": "vmess", "mux": {"enabled": true, "concurrency": 8}, "settings": {"vnext": [
      {"address": "example.com", "port": 443, "users": [
        {"id": "27848739-7e62-4138-9fd3-098a63964b6b", "security": "auto"}]}]},
     "streamSettings": {"network": "tcp"}},
    {"protocol": "freedom", "tag": "direct", "settings": {"domainStrategy": "UseIP"}}],
  "policy": {"levels": {"0": {"handshake": 4, "connIdle": 300, "bufferSize": 512}}},
  "routing": {"domainStrategy": "AsIs", "rules": [
    {"type": "field", "ip": ["10.0.0.0/8", "geoip:private"], "port": "53,443",
     "network": "tcp,udp", "outboundTag": "direct"}]}}
"""


def seeds() -> dict[str, bytes]:
    structured = {
        "inbounds": [{"protocol": "vmess", "port": 10086, "settings": {"clients": [
            {"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "alterId": 4}]}}],
        "outbounds": [{"protocol": "freedom", "tag": "direct"}],
        "routing": {"rules": [{"type": "field", "port": "1000-1002", "outboundTag": "direct"}]},
    }  # fmt: skip
    socks = {"inbound": {"protocol": "socks", "port": "env:PORT", "settings": {"udp": True}},
             "outbound": {"protocol": "blackhole"}}  # fmt: skip
    return {
        "bridge": _BRIDGE.encode(),
        "portal": _PORTAL.encode(),
        "client": _CLIENT.encode(),
        "structured-vmess": seed_input(read_value, value_choices(structured), b""),
        "structured-socks": seed_input(read_value, value_choices(socks), b""),
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
