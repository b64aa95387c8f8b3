"""v2rayN share links: what vmess_link writes, what decode_vmess_link accepts (as the
clients that import links do) and refuses, and the link of a client config."""

from __future__ import annotations

import base64
import json

import pytest

from raybridge.errors import ConfigError
from raybridge.share_link import (
    LINK_KEYS,
    ShareLinkError,
    decode_vmess_link,
    link_from_config,
    outbound_from_link,
    vmess_link,
)

UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def test_link_is_padded_base64_of_string_values() -> None:
    link = vmess_link("h.example", 443, UUID, name="ü", alter_id=4, net="ws", path="/p")
    body = link.removeprefix("vmess://")
    assert len(body) % 4 == 0
    fields = json.loads(base64.b64decode(body, validate=True))
    assert list(fields) == list(LINK_KEYS)
    assert fields["ps"] == "ü" and fields["port"] == "443" and fields["aid"] == "4"
    assert all(isinstance(v, str) for v in fields.values())
    assert decode_vmess_link(link) == fields
    # The name defaults to the address.
    assert decode_vmess_link(vmess_link("h.example", 1, UUID))["ps"] == "h.example"


def test_decode_accepts_what_clients_accept() -> None:
    fields = {"add": "h", "port": "1", "id": UUID, "ps": "n?>"}
    raw = json.dumps(fields).encode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe
    for link in (
        "vmess://" + base64.b64encode(raw).decode(),
        "VMESS://" + urlsafe,  # URL-safe alphabet, no padding, any case of the scheme
        "vmess://" + urlsafe + "#a-name",
        "  vmess://" + urlsafe[:10] + "\n" + urlsafe[10:] + "\n",
    ):
        assert decode_vmess_link(link) == fields, link


@pytest.mark.parametrize(
    ("link", "why"),
    [
        ("vmess://!!!", "not base64"),
        ("vless://abc", "not a vmess:// link"),
        ("vmess://" + base64.b64encode(b"\xff\xfe").decode(), "does not hold JSON"),
        ("vmess://" + base64.b64encode(b"[1]").decode(), "not an object"),
        ("vmess://" + base64.b64encode(b'{"add": "a", "port": "1"}').decode(), '"id"'),
        ("vmess://" + base64.b64encode(b'{"add": "", "port": 1, "id": "x"}').decode(), '"add"'),
        (f"vmess://{UUID}@h:1?security=auto", "only v2rayN's"),
    ],
)
def test_decode_refuses(link: str, why: str) -> None:
    with pytest.raises(ShareLinkError, match=why):
        decode_vmess_link(link)


def test_link_from_other_client_configs() -> None:
    text = """// comments and V2Ray's case-insensitive keys
    {"Outbounds": [
      {"protocol": "freedom"},
      {"protocol": "VMess", "settings": {"vnext": [{"address": "h.example", "port": "8443",
        "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "alterId": 4,
                   "security": "chacha20-poly1305"}]}]},
       "streamSettings": {"network": "ws", "security": "tls",
         "tlsSettings": {"serverName": "sni.example"},
         "wsSettings": {"path": "/ray", "headers": {"Host": "cdn.example"}}}}
    ]}"""
    fields = decode_vmess_link(link_from_config(text, "x.json", name="mine"))
    assert fields["ps"] == "mine" and fields["add"] == "h.example" and fields["port"] == "8443"
    assert (fields["aid"], fields["scy"]) == ("4", "chacha20-poly1305")
    assert (fields["net"], fields["path"], fields["host"]) == ("ws", "/ray", "cdn.example")
    assert (fields["tls"], fields["sni"]) == ("tls", "sni.example")
    # The old single "outbound" key, and the server address as the default name.
    old = '{"outbound": {"protocol": "vmess", "settings": {"vnext": [{"address": "1.2.3.4", ' \
        '"port": 10086, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]}}}'  # fmt: skip
    fields = decode_vmess_link(link_from_config(old, "old.json"))
    assert (fields["ps"], fields["add"], fields["port"], fields["aid"]) == (
        "1.2.3.4", "1.2.3.4", "10086", "0",
    )  # fmt: skip


def test_link_from_config_transports() -> None:
    def link(stream: dict[str, object], port: object = 443) -> dict[str, object]:
        config = {"outbounds": [{"protocol": "vmess", "streamSettings": stream, "settings": {
            "vnext": [{"address": "a", "port": port, "users": [{"id": UUID}]}]}}]}  # fmt: skip
        return decode_vmess_link(link_from_config(json.dumps(config), "c.json"))

    fields = link({"network": "h2", "httpSettings": {"path": "/q", "host": ["a", "b"]}})
    assert (fields["net"], fields["path"], fields["host"]) == ("h2", "/q", "a,b")
    fields = link({"tcpSettings": {"header": {"type": "http"}}}, port=" 80 ")
    assert (fields["net"], fields["type"], fields["port"]) == ("tcp", "http", "80")
    with pytest.raises(ConfigError, match='security "xtls"'):
        link({"security": "xtls"})
    with pytest.raises(ConfigError, match="not a port number"):
        link({}, port=65536)
    with pytest.raises(ConfigError, match="not a port number"):
        link({}, port=80.0)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ('{"outbounds": [{"protocol": "vmess", "settings": {"vnext": []}}]}', "no server"),
        ('{"outbounds": [{"protocol": "vmess", "settings": {"vnext": [{"address": "a"}]}}]}',
         "no users"),
        ('{"outbounds": [{"protocol": "vmess", "settings": {"vnext": [{"address": "a", '
         '"users": [1]}]}}]}', "a user must be an object"),
        ('{"outbounds": [{"protocol": "vmess", "settings": {"vnext": [{"address": 1, '
         '"port": 1, "users": [{"id": "x"}]}]}}]}', "the server address must be a string"),
        ('{"outboundDetour": [{"protocol": "freedom"}]}', "no VMess outbound"),
        ("[]", "not a JSON object"),
    ],
)  # fmt: skip
def test_link_from_config_refuses(config: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        link_from_config(config, "c.json")


def _outbound(stream: dict[str, object] | None) -> dict[str, object]:
    server = {"address": "h.example", "port": 443, "users": [
        {"id": UUID, "alterId": 0, "security": "auto"}]}  # fmt: skip
    outbound: dict[str, object] = {
        "tag": "proxy",
        "protocol": "vmess",
        "settings": {"vnext": [server]},
    }
    if stream is not None:
        outbound["streamSettings"] = stream
    return outbound


_TLS = {"serverName": "sni.example"}

#: streamSettings as V2Ray 4.34 (and raybridge) take them, and the link fields each gives:
#: (net, type, host, path, tls, sni).
ROUND_TRIPS: dict[str, tuple[dict[str, object] | None, tuple[str, ...]]] = {
    "tcp": (None, ("tcp", "none", "", "", "", "")),
    "tcp+http": (
        {
            "network": "tcp",
            "tcpSettings": {
                "header": {
                    "type": "http",
                    "request": {
                        "path": ["/", "/index.html"],
                        "headers": {"Host": ["a.example", "b.example"]},
                    },
                }
            },
        },
        ("tcp", "http", "a.example,b.example", "/,/index.html", "", ""),
    ),
    "tls": (
        {"network": "tcp", "security": "tls", "tlsSettings": _TLS},
        ("tcp", "none", "", "", "tls", "sni.example"),
    ),
    "ws": (
        {"network": "ws", "wsSettings": {"path": "/ray", "headers": {"Host": "cdn.example"}}},
        ("ws", "none", "cdn.example", "/ray", "", ""),
    ),
    "wss": (
        {
            "network": "ws",
            "security": "tls",
            "tlsSettings": _TLS,
            "wsSettings": {"path": "/ray", "headers": {"Host": "cdn.example"}},
        },
        ("ws", "none", "cdn.example", "/ray", "tls", "sni.example"),
    ),
    "h2": (
        {
            "network": "http",
            "security": "tls",
            "tlsSettings": _TLS,
            "httpSettings": {"host": ["a.example", "b.example"], "path": "/h2"},
        },
        ("h2", "none", "a.example,b.example", "/h2", "tls", "sni.example"),
    ),
}


@pytest.mark.parametrize("kind", list(ROUND_TRIPS))
def test_transport_round_trip(kind: str) -> None:
    """A config's streamSettings -> the link's fields -> the same streamSettings."""
    stream, expected = ROUND_TRIPS[kind]
    link = link_from_config(json.dumps({"outbounds": [_outbound(stream)]}), "c.json")
    fields = decode_vmess_link(link)
    assert tuple(fields[k] for k in ("net", "type", "host", "path", "tls", "sni")) == expected
    assert list(fields) == list(LINK_KEYS)  # no alpn, no insecure unless set
    assert outbound_from_link(fields) == _outbound(stream)


def test_alpn_and_insecure_only_when_set() -> None:
    stream = {"network": "ws", "security": "tls", "tlsSettings": {
        "serverName": "s.example", "alpn": ["h2", "http/1.1"], "allowInsecure": True},
        "wsSettings": {"path": "/p"}}  # fmt: skip
    fields = decode_vmess_link(
        link_from_config(json.dumps({"outbounds": [_outbound(stream)]}), "c")
    )
    assert (fields["alpn"], fields["insecure"]) == ("h2,http/1.1", "1")
    assert list(fields) == [*LINK_KEYS, "alpn", "insecure"]
    assert outbound_from_link(fields) == _outbound(stream)


def test_outbound_from_what_v2rayn_writes() -> None:
    """v2rayN serializes v, port and aid as numbers, may leave sni empty (the first host is
    then the TLS name) and writes "0" for insecure."""
    fields = {
        "v": 2,
        "ps": "x",
        "add": "h.example",
        "port": 8443,
        "id": UUID,
        "aid": 0,
        "scy": "",
        "net": "h2",
        "type": "none",
        "host": "a.example, b.example",
        "path": "/h2",
        "tls": "tls",
        "sni": "",
        "alpn": "",
        "fp": "",
        "insecure": "0",
    }
    outbound = outbound_from_link(fields)
    assert outbound["settings"]["vnext"][0]["port"] == 8443
    assert outbound["settings"]["vnext"][0]["users"][0] == {
        "id": UUID, "alterId": 0, "security": "auto"}  # fmt: skip
    assert outbound["streamSettings"] == {
        "network": "http",
        "httpSettings": {"host": ["a.example", "b.example"], "path": "/h2"},
        "security": "tls",
        "tlsSettings": {"serverName": "a.example"},
    }
    # Older links: no net, type or tls at all.
    bare = outbound_from_link({"add": "h", "port": "1", "id": UUID})
    assert "streamSettings" not in bare


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"net": "kcp"}, '"net": "kcp"'),
        ({"net": "grpc"}, "tcp, ws and h2 only"),
        ({"tls": "reality"}, '"tls": "reality"'),
        ({"type": "srtp"}, "a TCP header"),
        ({"port": "0"}, "not a port number"),
        ({"port": "x"}, "not a port number"),
        ({"aid": "a"}, '"aid" is not a number'),
        ({"port": [1]}, "neither a string nor a number"),
    ],
)
def test_outbound_from_link_refuses(fields: dict[str, object], why: str) -> None:
    with pytest.raises(ShareLinkError, match=why):
        outbound_from_link({"add": "h", "port": "1", "id": UUID, **fields})
