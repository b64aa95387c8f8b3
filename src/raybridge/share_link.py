"""v2rayN share links (``vmess://...``): the codec, and the link of a V2Ray client config.

The format is v2rayN's, version 2 (``github.com/2dust/v2rayN/wiki``, "分享链接格式说明(ver-2)"),
which v2rayNG and most other VMess clients import too::

    vmess://<base64 of a JSON object>

The object holds one server and one user. Every value is a string, numbers included::

    key   meaning                                             read from a client config
    v     the format version, "2"
    ps    the name a client shows for the server              --name, else the address
    add   the server's address                                vnext[0].address
    port  the server's port                                   vnext[0].port
    id    the user's UUID                                     vnext[0].users[0].id
    aid   the alterId ("0": VMess AEAD headers)               users[0].alterId
    scy   the body security (auto, aes-128-gcm, none, ...)    users[0].security
    net   the transport: tcp, ws or h2                        streamSettings.network
    type  the TCP header: none or http                        tcpSettings.header.type
    host  the WebSocket Host; the HTTP/2 hosts, or the TCP    wsSettings.headers.Host,
          header's Host values, joined with ","               httpSettings.host,
                                                              header.request.headers.Host
    path  the WebSocket or HTTP/2 path; the TCP header's      wsSettings / httpSettings,
          request paths joined with ","                       header.request.path
    tls   "tls", or "" without TLS                            streamSettings.security
    sni   the TLS server name                                 tlsSettings.serverName
    alpn  ALPN protocols joined with "," (only when set)      tlsSettings.alpn
    insecure  "1": no certificate check (only when set)       tlsSettings.allowInsecure

:func:`vmess_link` writes these keys in this order, as compact UTF-8 JSON in standard,
padded base64 (as v2rayN and v2rayNG emit it); ``alpn`` and ``insecure`` only when set
(v2rayN also writes ``fp``; readers default all three, and leaving them out keeps the QR
code smaller). :func:`decode_vmess_link` reads what the clients read: URL-safe base64 too,
missing padding, white space, a ``#name`` tail, and numbers where v2rayN writes them
(``"port": 443``, ``"aid": 0``, ``"v": 2``). The other ``vmess://uuid@host:port?...`` form is
refused with a message. :func:`outbound_from_link` turns the fields back into a V2Ray 4.34
VMess outbound the way v2rayN builds its own (``ServiceLib``'s ``GenBoundStreamSettings``): TLS
``serverName`` is ``sni``, else the first ``host``; ``host`` and ``path`` go where the table
says. A link cannot carry certificates: a server whose certificate only a private CA vouches
for needs that CA installed on the client (or ``insecure``). These functions are pure;
:func:`link_from_config` reads a config's text (JSON with comments) and raises
:class:`~raybridge.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, TypedDict

from raybridge.config.jsonc import JArray, JBool, JNumber, JObject, JString, JValue, parse
from raybridge.errors import ConfigError

__all__ = [
    "LINK_KEYS",
    "ShareLinkError",
    "decode_vmess_link",
    "link_from_config",
    "outbound_from_link",
    "vmess_link",
]

#: The keys of a v2rayN link, in v2rayN's order (see the table above).
LINK_KEYS = (
    "v",
    "ps",
    "add",
    "port",
    "id",
    "aid",
    "scy",
    "net",
    "type",
    "host",
    "path",
    "tls",
    "sni",
)

_SCHEME = "vmess://"


class ShareLinkError(ValueError):
    """A ``vmess://`` link that is not a v2rayN share link."""


class Transport(TypedDict):
    """The link fields that come from an outbound's ``streamSettings`` (keyword arguments
    of :func:`vmess_link`)."""

    net: str
    header_type: str
    host: str
    path: str
    tls: str
    sni: str
    alpn: str
    insecure: bool


def vmess_link(
    address: str,
    port: int,
    user_id: str,
    *,
    name: str = "",
    alter_id: int = 0,
    security: str = "auto",
    net: str = "tcp",
    header_type: str = "none",
    host: str = "",
    path: str = "",
    tls: str = "",
    sni: str = "",
    alpn: str = "",
    insecure: bool = False,
) -> str:
    """v2rayN's ``vmess://`` share link (version 2). Numbers are strings, as v2rayN and
    v2rayNG write them; the base64 is standard and padded, as both emit it."""
    fields = {
        "v": "2",
        "ps": name or address,
        "add": address,
        "port": str(port),
        "id": user_id,
        "aid": str(alter_id),
        "scy": security,
        "net": net,
        "type": header_type,
        "host": host,
        "path": path,
        "tls": tls,
        "sni": sni,
    }
    if alpn:
        fields["alpn"] = alpn
    if insecure:
        fields["insecure"] = "1"
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return _SCHEME + base64.b64encode(data).decode("ascii")


def decode_vmess_link(link: str) -> dict[str, object]:
    """The JSON object of a v2rayN link. Like the clients that read them, accepts URL-safe
    base64 and missing padding."""
    text = "".join(link.split())
    if text[: len(_SCHEME)].lower() != _SCHEME:
        raise ShareLinkError("not a vmess:// link")
    body = text[len(_SCHEME) :]
    if "@" in body or "?" in body:
        raise ShareLinkError(
            "this is a vmess://uuid@host:port?... link; only v2rayN's vmess://<base64> form "
            "is supported"
        )
    body = body.split("#", 1)[0].rstrip("=")
    try:
        # altchars maps "-_" onto "+/", so both alphabets (even mixed) decode.
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ShareLinkError("the text after vmess:// is not base64") from None
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ShareLinkError("the link's base64 does not hold JSON") from None
    if not isinstance(fields, dict):
        raise ShareLinkError("the link's JSON is not an object")
    for key in ("add", "port", "id"):
        if fields.get(key) in (None, ""):
            raise ShareLinkError(f'the link has no "{key}"')
    return fields


# --------------------------------------------------------------------------- client configs


def link_from_config(text: str, file: str, *, name: str | None = None) -> str:
    """The share link of the first VMess outbound's first server and user in a client
    config (V2Ray 4.x JSON, comments allowed)."""
    root = parse(text, file)
    if not isinstance(root, JObject):
        raise ConfigError("the config is not a JSON object", file=file, line=root.line)
    for i, outbound in enumerate(_outbounds(root)):
        if isinstance(outbound, JObject) and _string(outbound, "protocol").lower() == "vmess":
            return _outbound_link(outbound, f"outbounds[{i}]", file, name)
    raise ConfigError("no VMess outbound: this is not a VMess client config", file=file)


def _outbounds(root: JObject) -> list[JValue]:
    """``outbounds``, then the old ``outbound`` and ``outboundDetour`` (V2Ray 4.x still
    reads them), in the order V2Ray lists them."""
    found: list[JValue] = []
    node = root.get("outbounds")
    if isinstance(node, JArray):
        found += node.items
    for legacy in ("outbound", "outboundDetour"):
        node = root.get(legacy)
        if isinstance(node, JObject):
            found.append(node)
        elif isinstance(node, JArray):
            found += node.items
    return found


def _outbound_link(outbound: JObject, where: str, file: str, name: str | None) -> str:
    server, user = _first_user(outbound, where, file)
    address = _text(server.get("address"), f"{where}: the server address", file)
    port = _port(server.get("port"))
    if port is None:
        raise ConfigError(
            "the server port is missing or not a port number",
            file=file,
            line=server.line,
            path=f"{where}.settings.vnext[0].port",
        )
    alter = user.get("alterId")
    security = user.get("security")
    return vmess_link(
        address,
        port,
        _text(user.get("id"), f"{where}: the user id", file),
        name=name or address,
        alter_id=int(alter.value) if isinstance(alter, JNumber) else 0,
        security=security.value if isinstance(security, JString) else "auto",
        **_transport(outbound.get("streamSettings"), file, where),
    )


def _first_user(outbound: JObject, where: str, file: str) -> tuple[JObject, JObject]:
    """The first server of ``settings.vnext`` and its first user."""
    settings = outbound.get("settings")
    vnext = settings.get("vnext") if isinstance(settings, JObject) else None
    if not isinstance(vnext, JArray) or not vnext.items:
        raise ConfigError(
            "the VMess outbound has no server (settings.vnext)",
            file=file,
            line=outbound.line,
            path=where,
        )
    server = vnext.items[0]
    users = server.get("users") if isinstance(server, JObject) else None
    if not isinstance(server, JObject) or not isinstance(users, JArray) or not users.items:
        raise ConfigError(
            "the VMess server has no users",
            file=file,
            line=server.line,
            path=f"{where}.settings.vnext[0]",
        )
    user = users.items[0]
    if not isinstance(user, JObject):
        raise ConfigError("a user must be an object", file=file, line=user.line)
    return server, user


def _port(node: JValue | None) -> int | None:
    """A server port: an integer literal, or a string that holds one; 1-65535."""
    if isinstance(node, JNumber) and node.is_integer:
        text = node.raw
    elif isinstance(node, JString):
        text = node.value
    else:
        return None
    try:
        port = int(text.strip())
    except ValueError:
        return None
    return port if 1 <= port <= 65535 else None


def _text(node: JValue | None, what: str, file: str) -> str:
    if not isinstance(node, JString):
        raise ConfigError(f"{what} must be a string", file=file, line=getattr(node, "line", None))
    return node.value


def _string(obj: JValue | None, key: str) -> str:
    """``obj[key]`` if ``obj`` is an object and that a string, else ``""``."""
    node = obj.get(key) if isinstance(obj, JObject) else None
    return node.value if isinstance(node, JString) else ""


def _member(obj: JValue | None, key: str) -> JValue | None:
    return obj.get(key) if isinstance(obj, JObject) else None


def _strings(node: JValue | None) -> list[str]:
    """A V2Ray StringList: an array of strings, or one string (kept whole: it is joined
    with "," again for the link)."""
    if isinstance(node, JString):
        return [node.value]
    if isinstance(node, JArray):
        return [item.value for item in node.items if isinstance(item, JString)]
    return []


def _transport(stream: JValue | None, file: str, where: str) -> Transport:
    """The link fields for an outbound's ``streamSettings`` (TCP, WebSocket, HTTP/2, TLS)."""
    fields = Transport(
        net="tcp", header_type="none", host="", path="", tls="", sni="", alpn="", insecure=False
    )
    if not isinstance(stream, JObject):
        return fields
    network = (_string(stream, "network") or "tcp").lower()
    security = _string(stream, "security").lower()
    if security not in ("", "none", "tls"):
        raise ConfigError(
            f'streamSettings.security "{security}" cannot be put in a v2rayN link',
            file=file,
            line=stream.line,
            path=where,
        )
    if security == "tls":
        tls = stream.get("tlsSettings")
        fields["tls"] = "tls"
        fields["sni"] = _string(tls, "serverName")
        fields["alpn"] = ",".join(_strings(_member(tls, "alpn")))
        insecure = _member(tls, "allowInsecure")
        fields["insecure"] = isinstance(insecure, JBool) and insecure.value
    if network == "tcp":
        header = _member(stream.get("tcpSettings"), "header")
        fields["header_type"] = (_string(header, "type") or "none").lower()
        if fields["header_type"] == "http":
            request = _member(header, "request")
            fields["path"] = ",".join(_strings(_member(request, "path")))
            fields["host"] = ",".join(_strings(_member(_member(request, "headers"), "Host")))
    elif network in ("ws", "websocket"):
        ws = stream.get("wsSettings")
        fields["net"] = "ws"
        fields["path"] = _string(ws, "path")
        fields["host"] = _string(_member(ws, "headers"), "Host")
    elif network in ("http", "h2"):
        h2 = stream.get("httpSettings")
        fields["net"] = "h2"
        fields["path"] = _string(h2, "path")
        fields["host"] = ",".join(_strings(_member(h2, "host")))
    else:
        raise ConfigError(
            f'streamSettings.network "{network}": only tcp, ws and h2 links are supported',
            file=file,
            line=stream.line,
            path=where,
        )
    return fields


# --------------------------------------------------------------------------- links to configs


def _field(fields: Mapping[str, object], key: str) -> str:
    """A link field as text: v2rayN writes some as numbers; absent or null is ``""``."""
    value = fields.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ShareLinkError(f'the link\'s "{key}" is neither a string nor a number')
    return str(value).strip()


def _list(text: str) -> list[str]:
    """A ``,``-joined link field as a list, as v2rayN splits it (empty parts dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def outbound_from_link(fields: Mapping[str, object], *, tag: str = "proxy") -> dict[str, Any]:
    """A V2Ray 4.34 VMess outbound for the fields of a decoded link, built the way v2rayN
    builds one (see the module docstring). Raises :class:`ShareLinkError` for what
    raybridge cannot speak (kcp, quic, grpc, REALITY, ...)."""
    port_text = _field(fields, "port")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ShareLinkError(f'the link\'s "port" is not a port number: {port_text!r}')
    aid_text = _field(fields, "aid") or "0"
    try:
        alter_id = int(aid_text)
    except ValueError:
        raise ShareLinkError(f'the link\'s "aid" is not a number: {aid_text!r}') from None
    user = {
        "id": _field(fields, "id"),
        "alterId": alter_id,
        "security": _field(fields, "scy") or "auto",
    }
    server = {"address": _field(fields, "add"), "port": port, "users": [user]}
    outbound: dict[str, Any] = {"tag": tag, "protocol": "vmess", "settings": {"vnext": [server]}}
    stream = _stream_from_link(fields)
    if stream is not None:
        outbound["streamSettings"] = stream
    return outbound


def _stream_from_link(fields: Mapping[str, object]) -> dict[str, Any] | None:
    """``streamSettings`` for a link's transport fields; None for bare TCP."""
    net = (_field(fields, "net") or "tcp").lower()
    header_type = (_field(fields, "type") or "none").lower()
    host, path = _field(fields, "host"), _field(fields, "path")
    security = _field(fields, "tls").lower()
    if security not in ("", "none", "tls"):
        raise ShareLinkError(f'"tls": "{security}" is not supported (only "tls" or none)')
    stream: dict[str, Any]
    if net == "tcp":
        stream = {"network": "tcp"}
        if header_type == "http":
            request: dict[str, Any] = {}
            if path:
                request["path"] = _list(path)
            if host:
                request["headers"] = {"Host": _list(host)}
            header: dict[str, Any] = {"type": "http"}
            if request:
                header["request"] = request
            stream["tcpSettings"] = {"header": header}
        elif header_type != "none":
            raise ShareLinkError(f'"type": "{header_type}": a TCP header is "none" or "http"')
    elif net == "ws":
        stream = {"network": "ws"}
        ws: dict[str, Any] = {}
        if path:
            ws["path"] = path
        if host:
            ws["headers"] = {"Host": host}
        if ws:
            stream["wsSettings"] = ws
    elif net in ("h2", "http"):
        stream = {"network": "http"}
        h2: dict[str, Any] = {}
        if host:
            h2["host"] = _list(host)
        if path:
            h2["path"] = path
        if h2:
            stream["httpSettings"] = h2
    else:
        raise ShareLinkError(f'"net": "{net}": raybridge speaks tcp, ws and h2 only')
    if security == "tls":
        tls: dict[str, Any] = {}
        server_name = _field(fields, "sni") or next(iter(_list(host)), "")
        if server_name:
            tls["serverName"] = server_name
        alpn = _list(_field(fields, "alpn"))
        if alpn:
            tls["alpn"] = alpn
        if fields.get("insecure") in ("1", 1, True):
            tls["allowInsecure"] = True
        stream["security"] = "tls"
        stream["tlsSettings"] = tls
    return None if stream == {"network": "tcp"} else stream
