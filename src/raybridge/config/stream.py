"""``streamSettings``: the transport under an inbound or outbound (V2Ray 4.34's
``infra/conf/transport_internet.go``; docs/transports.md 1).

Parsed into :class:`StreamSettings`, with V2Ray 4.34's defaults and key rules (keys in any
case; ``StringList`` fields take an array or a comma-separated string, split without
trimming; a header object's ``"type"`` lower-cased), with these differences on purpose:

* an unknown ``security`` is an error (V2Ray silently means none: a typo would send VMess
  in the clear);
* ``network`` kcp/mkcp, quic, domainsocket (and grpc, which 4.34 does not know) are refused
  clearly, as raybridge does not have them;
* every problem of one ``streamSettings`` is reported, not only the first.

Certificate and key files are read here (a missing file names the field that points to
it); whether a key matches its certificate is checked when the TLS contexts are built
(``transport/tls.py``), also before anything listens.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from raybridge.config.fields import INT32_MAX, INT32_MIN, Obj, describe
from raybridge.config.model import (
    PLAIN,
    CertUsage,
    HttpRequestHeader,
    HttpResponseHeader,
    HttpSettings,
    SockOpt,
    StreamNetwork,
    StreamSettings,
    TcpSettings,
    TlsCertificate,
    TlsSettings,
    TProxyMode,
    TransportDefaults,
    WsSettings,
)
from raybridge.errors import ConfigError

_NETWORKS: dict[str, StreamNetwork | None] = {
    "tcp": "tcp",
    "ws": "ws",
    "websocket": "ws",
    "h2": "http",
    "http": "http",
    # Known to V2Ray, not to raybridge:
    "kcp": None,
    "mkcp": None,
    "quic": None,
    "ds": None,
    "domainsocket": None,
}
_UNSUPPORTED = {
    "kcp": "mKCP",
    "mkcp": "mKCP",
    "quic": "QUIC",
    "ds": "domain sockets",
    "domainsocket": "domain sockets",
    "grpc": "gRPC (not in V2Ray 4.34 either)",
}


class _Problems:
    """Collects the ConfigErrors of one streamSettings, to report them all at once."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def run(self, step: Callable[[], object]) -> None:
        try:
            step()
        except ConfigError as exc:
            self.errors.append(exc)

    def raise_all(self) -> None:
        if not self.errors:
            return
        first, *rest = self.errors
        if rest:
            first.also = rest
        raise first


def stream_for(obj: Obj) -> StreamSettings:
    """An inbound's or outbound's transport: its ``streamSettings``, with the file's
    ``transport`` section filling what it leaves out."""
    sub = obj.object("streamSettings")
    defaults = obj.ctx.transport
    if sub is None:
        return defaults.stream() if defaults is not None else PLAIN
    return parse_stream_settings(sub, defaults)


def parse_transport(obj: Obj) -> TransportDefaults:
    """The top-level ``transport`` section (V2Ray's ``TransportConfig``)."""
    problems = _Problems()
    out: dict[str, object] = {}
    _network_settings(obj, out, problems)
    _warn_other_networks(obj)
    problems.run(obj.finish)
    problems.raise_all()
    return TransportDefaults(**out)  # type: ignore[arg-type]


def parse_stream_settings(
    obj: Obj, defaults: TransportDefaults | None = None, base_dir: Path | None = None
) -> StreamSettings:
    """``streamSettings`` of an inbound or outbound; ``defaults``: the file's ``transport``
    section; ``base_dir`` resolves relative certificate paths (V2Ray resolves them from its
    working directory, so the default is the working directory)."""
    problems = _Problems()
    out: dict[str, object] = {}
    if defaults is not None:
        out.update(
            {
                k: v
                for k, v in (("tcp", defaults.tcp), ("ws", defaults.ws), ("http", defaults.http))
                if v is not None
            }
        )
    problems.run(lambda: _network(obj, out))
    problems.run(lambda: _security(obj, out, base_dir))
    _network_settings(obj, out, problems)
    problems.run(lambda: out.__setitem__("sockopt", _sockopt(obj.object("sockopt"))))
    _warn_other_networks(obj)
    if "tls" not in out:
        obj.ignore("tlsSettings")  # V2Ray reads it only with security "tls"
    problems.run(obj.finish)
    problems.raise_all()
    return StreamSettings(**out)  # type: ignore[arg-type]


def _network_settings(obj: Obj, out: dict[str, object], problems: _Problems) -> None:
    """The settings of each network raybridge has, whichever ``network`` is chosen."""
    for key, name, parse in (
        ("tcp", "tcpSettings", _tcp),
        ("ws", "wsSettings", _ws),
        ("http", "httpSettings", _http),
    ):
        sub = obj.object(name)
        if sub is not None:
            problems.run(_setter(out, key, parse, sub))


def _warn_other_networks(obj: Obj) -> None:
    """V2Ray's other networks' settings are accepted, and ignored with a warning."""
    for name in ("kcpSettings", "quicSettings", "dsSettings"):
        if obj.get(name) is not None:
            obj.ctx.warn(obj.get(name), obj.sub(name), "ignored: raybridge has no such network")


def _network(obj: Obj, out: dict[str, object]) -> None:
    """``network``: one raybridge has, or a clear refusal."""
    node = obj.get("network")
    if node is None:
        return
    raw = obj.ctx.expect_string(node, obj.sub("network")).lower()
    if raw in _UNSUPPORTED:
        raise obj.ctx.error(
            node,
            obj.sub("network"),
            f"{_UNSUPPORTED[raw]} ({describe(node)}) is not supported by raybridge",
        )
    value = _NETWORKS.get(raw)
    if value is None:
        raise obj.ctx.error(node, obj.sub("network"), f"unknown network {describe(node)}")
    out["network"] = value


def _security(obj: Obj, out: dict[str, object], base_dir: Path | None) -> None:
    """``security``: "tls" (with its ``tlsSettings``) or none; anything else is refused."""
    node = obj.get("security")
    if node is None:
        return
    raw = obj.ctx.expect_string(node, obj.sub("security")).lower()
    if raw == "tls":
        sub = obj.object("tlsSettings")
        out["tls"] = (
            _tls(sub, base_dir)
            if sub is not None
            else TlsSettings(where=_where(obj, "tlsSettings"))
        )
    elif raw not in ("", "none"):
        raise obj.ctx.error(
            node,
            obj.sub("security"),
            f'unknown security {describe(node)} ("tls" or "none"; V2Ray would send it '
            "in the clear)",
        )


def _setter(
    out: dict[str, object], key: str, parse: Callable[[Obj], object], sub: Obj
) -> Callable[[], None]:
    def run() -> None:
        out[key] = parse(sub)

    return run


def _where(obj: Obj, name: str = "") -> str:
    path = obj.sub(name) if name else obj.path
    return f"{obj.ctx.file}:{obj.line}: {path}"


def _normalize_path(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _tls(obj: Obj, base_dir: Path | None) -> TlsSettings:
    server_name = obj.string("serverName")
    if server_name.startswith("experiment:"):  # V2Ray's parseServerName
        server_name = server_name.partition(":")[2]
    certificates = tuple(_certificate(c, base_dir) for c in obj.objects("certificates"))
    settings = TlsSettings(
        server_name=server_name,
        alpn=tuple(obj.string_list("alpn") or ()),
        allow_insecure=obj.boolean("allowInsecure"),
        disable_system_root=obj.boolean("disableSystemRoot"),
        session_resumption=obj.boolean("enableSessionResumption"),
        certificates=certificates,
        where=_where(obj),
    )
    obj.ignore("allowInsecureCiphers")  # V2Ray 4.34 has it, and ignores it too
    obj.finish()
    return settings


def _certificate(obj: Obj, base_dir: Path | None) -> TlsCertificate:
    usage_raw = obj.string("usage", "encipherment").lower()
    usage: CertUsage = "encipherment"
    if usage_raw in ("verify", "issue"):
        usage = usage_raw  # type: ignore[assignment]
    elif usage_raw != "encipherment":
        obj.ctx.warn(
            obj.get("usage"),
            obj.sub("usage"),
            f"unknown usage {usage_raw!r} means encipherment (as in V2Ray)",
        )
    cert = _pem(obj, "certificateFile", "certificate", base_dir)
    if cert is None:
        raise obj.error('a certificate needs "certificateFile" or "certificate"')
    key = _pem(obj, "keyFile", "key", base_dir)  # none: only a trust anchor (V2Ray too)
    obj.finish()
    return TlsCertificate(certificate=cert, key=key, usage=usage, where=_where(obj))


def _pem(obj: Obj, file_key: str, inline_key: str, base_dir: Path | None) -> bytes | None:
    """A file beats inline lines, as in V2Ray."""
    path = obj.opt_string(file_key)
    if path:
        full = Path(path)
        if not full.is_absolute() and base_dir is not None:
            full = base_dir / full
        try:
            return full.read_bytes()
        except OSError as exc:
            raise obj.ctx.error(
                obj.get(file_key), obj.sub(file_key), f"cannot read {path}: {exc.strerror}"
            ) from None
    lines = obj.string_list(inline_key)
    if lines:
        return ("\n".join(lines) + "\n").encode()
    return None


def _tcp(obj: Obj) -> TcpSettings:
    kind: Literal["none", "http"] = "none"
    request, response = HttpRequestHeader(), HttpResponseHeader()
    header = obj.object("header")
    if header is not None:
        node = header.get("type")
        raw = header.ctx.expect_string(node, header.sub("type")).lower() if node else "none"
        if raw == "http":
            kind = "http"
            req, resp = header.object("request"), header.object("response")
            request = _request(req) if req is not None else request
            response = _response(resp) if resp is not None else response
        elif raw == "none":
            header.ignore("request", "response")
        else:
            assert node is not None
            raise header.ctx.error(node, header.sub("type"), f"unknown header {describe(node)}")
        header.finish()
    settings = TcpSettings(
        header=kind,
        request=request,
        response=response,
        accept_proxy_protocol=obj.boolean("acceptProxyProtocol"),
    )
    obj.finish()
    return settings


def _header_map(obj: Obj | None) -> dict[str, tuple[str, ...]] | None:
    if obj is None:
        return None
    headers: dict[str, tuple[str, ...]] = {}
    for key, value in obj.node.items:
        values = obj.ctx.string_list(value, obj.sub(key.value))
        if not values:
            raise obj.ctx.error(value, obj.sub(key.value), "a header needs a value")
        headers[key.value] = tuple(values)  # names as typed (V2Ray keeps them)
    return headers


def _request(obj: Obj) -> HttpRequestHeader:
    paths = obj.string_list("path")
    out = HttpRequestHeader(
        version=obj.string("version", "1.1") or "1.1",
        method=obj.string("method", "GET") or "GET",
        paths=tuple(paths) if paths else ("/",),
        headers=_header_map(obj.object("headers")),
    )
    obj.finish()
    return out


def _response(obj: Obj) -> HttpResponseHeader:
    out = HttpResponseHeader(
        version=obj.string("version", "1.1") or "1.1",
        status=obj.string("status", "200") or "200",
        reason=obj.string("reason", "OK") or "OK",
        headers=_header_map(obj.object("headers")),
    )
    obj.finish()
    return out


def _ws(obj: Obj) -> WsSettings:
    path = obj.string("path") or obj.string("Path") or "/"
    headers: dict[str, str] = {}
    sub = obj.object("headers")
    if sub is not None:
        for key, value in sub.node.items:
            headers[key.value] = sub.ctx.expect_string(value, sub.sub(key.value))
    settings = WsSettings(
        path=_normalize_path(path),
        headers=headers,
        accept_proxy_protocol=obj.boolean("acceptProxyProtocol"),
    )
    obj.finish()
    return settings


def _http(obj: Obj) -> HttpSettings:
    settings = HttpSettings(
        hosts=tuple(obj.string_list("host") or ()),
        path=_normalize_path(obj.string("path") or "/"),
    )
    obj.finish()
    return settings


def _sockopt(obj: Obj | None) -> SockOpt:
    if obj is None:
        return SockOpt()
    mark = obj.integer("mark", INT32_MIN, INT32_MAX)
    tfo_node = obj.get("tcpFastOpen")
    tfo = obj.ctx.expect_bool(tfo_node, obj.sub("tcpFastOpen")) if tfo_node is not None else None
    tproxy: TProxyMode = "off"
    node = obj.get("tproxy")
    if node is not None:
        mode = obj.ctx.expect_string(node, obj.sub("tproxy")).lower()
        if mode in ("redirect", "tproxy"):
            tproxy = "redirect" if mode == "redirect" else "tproxy"
            if not sys.platform.startswith("linux"):
                message = f'"tproxy": "{mode}" needs Linux (IP_TRANSPARENT)'
                raise obj.ctx.error(node, obj.sub("tproxy"), message)
        elif mode != "off":
            # V2Ray 4.34 takes anything else as "off" without a word.
            obj.ctx.warn(node, obj.sub("tproxy"), f'unknown mode {describe(node)}: "off"')
    settings = SockOpt(
        mark=mark,
        tcp_fast_open=tfo,
        accept_proxy_protocol=obj.boolean("acceptProxyProtocol"),
        tproxy=tproxy,
    )
    obj.finish()
    return settings
