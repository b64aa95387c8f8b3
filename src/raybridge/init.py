"""``raybridge init`` and ``raybridge link``: set up a reverse proxy, and share the client.

``raybridge init --portal-address HOST --portal-port N --out DIR`` writes a matched set of
configs, ``DIR/a.json`` (the bridge, inside), ``DIR/b.json`` (the portal, public) and
``DIR/c.json`` (a client), built by :mod:`raybridge.templates` (``safe_*``): fresh UUIDs,
VMess AEAD, the portal locked down as docs/RELIABILITY.md ("Who may be a bridge") says. In a
terminal, it asks for what the flags leave out. It then prints how to run each node, and
C's share link with its QR code.

``raybridge link -c c.json`` prints the share link (and QR code) of any V2Ray client
config's first VMess server; ``raybridge link --decode vmess://...`` shows what a link holds.

The share link is v2rayN's (``github.com/2dust/v2rayN/wiki``, "分享链接格式说明(ver-2)"),
which v2rayNG and most other clients import too: ``vmess://`` followed by the standard,
padded base64 of a JSON object whose values are all strings.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import ipaddress
import json
import os
import re
import secrets
import shlex
import stat
import struct
import sys
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from raybridge.errors import ConfigError
from raybridge.templates import (
    HTTP_PORT,
    SOCKS_PORT,
    Setup,
    random_domain,
    safe_bridge_config,
    safe_client_config,
    safe_portal_config,
)

T = TypeVar("T")

#: Defaults offered by ``raybridge init`` (the bridge port is the seed document's).
PORTAL_PORT = 16823
OUT_DIR = "raybridge-config"
FILES = ("a.json", "b.json", "c.json")

#: Exit status for a refused or failed ``init`` / ``link`` (argparse uses 2 for usage errors).
EXIT_FAILED = 1


class ShareLinkError(ValueError):
    """A ``vmess://`` link that is not a v2rayN share link."""


# --------------------------------------------------------------------------- input values


_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def parse_port(text: str) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise ValueError(f"not a port number: {text.strip()!r} (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def parse_portal_address(text: str) -> str:
    """B's address as clients and the bridge will dial it: an IP address or a host name."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if not value:
        raise ValueError("the portal address is empty: give B's public IP address or host name")
    if "://" in value:
        raise ValueError(f"{value!r}: give a host name or an IP address, not a URL")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.count(":") == 1 and _HOSTNAME.fullmatch(value.split(":")[0]):
        raise ValueError(f"{value!r}: give the port separately (--portal-port)")
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


def parse_domain(text: str) -> str:
    """The tunnel domain: any host name (it is only a label both ends agree on)."""
    value = text.strip().rstrip(".")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        raise ValueError(f"the tunnel domain must be a name, not an IP address: {value!r}")
    if not value or len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid domain name")
    return value


def parse_listen(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"--listen takes an IP address, not {text.strip()!r}") from None


def _argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` that shows our message instead of argparse's generic one."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def ask(
    question: str,
    parse: Callable[[str], T],
    default: str | None,
    *,
    inp: TextIO,
    out: TextIO,
) -> T:
    """Ask until the answer parses; an empty answer takes ``default`` (shown in brackets).

    Raises :class:`EOFError` when the input ends.
    """
    shown = f" [{default}]" if default is not None else ""
    while True:
        out.write(f"{question}{shown}: ")
        out.flush()
        line = inp.readline()
        if not line:
            raise EOFError
        answer = line.strip()
        if not answer:
            if default is None:
                out.write("  an answer is required\n")
                continue
            answer = default
        try:
            return parse(answer)
        except ValueError as exc:
            out.write(f"  {exc}\n")


# --------------------------------------------------------------------------- share link

#: The keys of a v2rayN link, in v2rayN's order; every value is a string. (v2rayN also writes
#: "alpn" and "fp", empty unless TLS is tuned; readers default them, and leaving them out
#: keeps the QR code smaller.)
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
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return "vmess://" + base64.b64encode(data).decode("ascii")


def decode_vmess_link(link: str) -> dict[str, Any]:
    """The JSON object of a v2rayN link. Like the clients that read them, accepts URL-safe
    base64 and missing padding."""
    text = "".join(link.split())
    if text[:8].lower() != "vmess://":
        raise ShareLinkError("not a vmess:// link")
    body = text[8:]
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


def _text(node: Any, what: str, file: str) -> str:
    from raybridge.config.jsonc import JString

    if not isinstance(node, JString):
        raise ConfigError(f"{what} must be a string", file=file, line=getattr(node, "line", None))
    return node.value


def link_from_config(text: str, file: str, *, name: str | None = None) -> str:
    """The share link of the first VMess outbound's first server and user in a client
    config (V2Ray 4.x JSON, comments allowed)."""
    from raybridge.config.jsonc import JArray, JNumber, JObject, JString, parse

    root = parse(text, file)
    if not isinstance(root, JObject):
        raise ConfigError("the config is not a JSON object", file=file, line=root.line)
    outbounds: list[Any] = []
    node = root.get("outbounds")
    if isinstance(node, JArray):
        outbounds += node.items
    for legacy in ("outbound", "outboundDetour"):  # V2Ray 4.x still reads the old names
        node = root.get(legacy)
        if isinstance(node, JObject):
            outbounds.append(node)
        elif isinstance(node, JArray):
            outbounds += node.items
    for i, outbound in enumerate(outbounds):
        if not isinstance(outbound, JObject):
            continue
        protocol = outbound.get("protocol")
        if not (isinstance(protocol, JString) and protocol.value.lower() == "vmess"):
            continue
        where = f"outbounds[{i}]"
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
        address = _text(server.get("address"), f"{where}: the server address", file)
        port_node = server.get("port")
        raw_port = ""
        if isinstance(port_node, JNumber) and port_node.is_integer:
            raw_port = port_node.raw
        elif isinstance(port_node, JString):
            raw_port = port_node.value
        try:
            port = parse_port(raw_port)
        except ValueError:
            raise ConfigError(
                "the server port is missing or not a port number",
                file=file,
                line=server.line,
                path=f"{where}.settings.vnext[0].port",
            ) from None
        user_id = _text(user.get("id"), f"{where}: the user id", file)
        alter = user.get("alterId")
        alter_id = int(alter.value) if isinstance(alter, JNumber) else 0
        security = user.get("security")
        stream = _stream_fields(outbound.get("streamSettings"), file, where)
        return vmess_link(
            address,
            port,
            user_id,
            name=name or address,
            alter_id=alter_id,
            security=security.value if isinstance(security, JString) else "auto",
            **stream,
        )
    raise ConfigError("no VMess outbound: this is not a VMess client config", file=file)


def _stream_fields(stream: Any, file: str, where: str) -> dict[str, str]:
    """The link fields for an outbound's ``streamSettings`` (TCP, WebSocket, HTTP/2, TLS)."""
    from raybridge.config.jsonc import JArray, JObject, JString

    fields = {"net": "tcp", "header_type": "none", "host": "", "path": "", "tls": "", "sni": ""}
    if not isinstance(stream, JObject):
        return fields

    def string(obj: Any, key: str) -> str:
        node = obj.get(key) if isinstance(obj, JObject) else None
        return node.value if isinstance(node, JString) else ""

    network = (string(stream, "network") or "tcp").lower()
    security = string(stream, "security").lower()
    if security not in ("", "none", "tls"):
        raise ConfigError(
            f'streamSettings.security "{security}" cannot be put in a v2rayN link',
            file=file,
            line=stream.line,
            path=where,
        )
    if security == "tls":
        fields["tls"] = "tls"
        fields["sni"] = string(stream.get("tlsSettings"), "serverName")
    if network == "tcp":
        header = stream.get("tcpSettings")
        header = header.get("header") if isinstance(header, JObject) else None
        fields["header_type"] = string(header, "type") or "none"
    elif network == "ws":
        ws = stream.get("wsSettings")
        fields["net"] = "ws"
        fields["path"] = string(ws, "path")
        headers = ws.get("headers") if isinstance(ws, JObject) else None
        fields["host"] = string(headers, "Host")
    elif network in ("http", "h2"):
        h2 = stream.get("httpSettings")
        fields["net"] = "h2"
        fields["path"] = string(h2, "path")
        hosts = h2.get("host") if isinstance(h2, JObject) else None
        if isinstance(hosts, JArray):
            fields["host"] = ",".join(h.value for h in hosts.items if isinstance(h, JString))
    else:
        raise ConfigError(
            f'streamSettings.network "{network}": only tcp, ws and h2 links are supported',
            file=file,
            line=stream.line,
            path=where,
        )
    return fields


# --------------------------------------------------------------------------- QR code


def qr_matrix(data: str, border: int = 2) -> list[list[bool]]:
    """The QR code of ``data`` (True: a dark module), with a light border."""
    import qrcode  # type: ignore[import-untyped]  # no type information shipped

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=border)
    qr.add_data(data.encode("utf-8"))
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def qr_text(data: str, *, unicode: bool = True, color: bool = False) -> str:
    """The QR code for a terminal. With ``unicode``, two module rows per text line in
    half-block characters (light modules drawn, for dark terminals; ``color`` forces white on
    black so it scans on light themes too); else two ``#`` per light module."""
    matrix = qr_matrix(data)
    lines: list[str] = []
    if not unicode:
        for row in matrix:
            lines.append("".join("  " if dark else "##" for dark in row))
        return "\n".join(lines) + "\n"
    glyphs = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584"}
    for r in range(0, len(matrix), 2):
        top = matrix[r]
        bottom = matrix[r + 1] if r + 1 < len(matrix) else None
        line = "".join(
            glyphs.get((not top[c], bottom is not None and not bottom[c]), " ")
            for c in range(len(top))
        )
        if color:
            line = f"\x1b[38;5;255m\x1b[48;5;232m{line}\x1b[0m"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_qr_png(data: str, path: str, *, scale: int = 8) -> None:
    """The QR code as a PNG (8-bit grey, 4-module quiet zone), written with zlib alone."""
    matrix = qr_matrix(data, border=4)
    size = len(matrix) * scale
    rows = bytearray()
    for row in matrix:
        line = b"\x00" + b"".join((b"\x00" if dark else b"\xff") * scale for dark in row)
        rows += line * scale

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )
    # 0600 (the link holds the client's id), and never through a symlink.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symlink: not following it", path) from None
        raise
    with os.fdopen(fd, "wb") as f:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)  # also when it replaces a file that others could read
        f.write(png)


def print_link(link: str, out: TextIO, *, qr: bool = True) -> None:
    print(link, file=out)
    if not qr:
        return
    encoding = getattr(out, "encoding", None) or "ascii"
    try:
        "\u2588\u2580\u2584".encode(encoding)
        unicode = True
    except (UnicodeEncodeError, LookupError):
        unicode = False
    tty = out.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
    print(file=out)
    out.write(qr_text(link, unicode=unicode, color=tty))
    out.flush()


# --------------------------------------------------------------------------- commands


def add_parsers(sub: Any) -> None:
    """Register ``init`` and ``link`` on the ``raybridge`` command's subparsers."""
    init = sub.add_parser(
        "init",
        help="write matched configs for a bridge, a portal and a client",
        description=(
            "Write DIR/a.json (the bridge, inside the private network), DIR/b.json (the "
            "portal, public) and DIR/c.json (a client), with fresh UUIDs. In a terminal, asks "
            "for what the options leave out."
        ),
    )
    init.add_argument(
        "--portal-address",
        metavar="HOST",
        type=_argtype(parse_portal_address),
        help="B's public IP address or host name (A and C dial it)",
    )
    init.add_argument(
        "--portal-port",
        metavar="N",
        type=_argtype(parse_port),
        help=f"B's port for bridges (suggested: {PORTAL_PORT})",
    )
    init.add_argument(
        "--client-port",
        metavar="N",
        type=_argtype(parse_port),
        help="B's port for clients (default: the portal port + 1)",
    )
    init.add_argument("--out", metavar="DIR", help="where to write a.json, b.json and c.json")
    init.add_argument(
        "--domain",
        metavar="D",
        type=_argtype(parse_domain),
        help="the tunnel domain (default: a random tunnel-<hex>.internal)",
    )
    init.add_argument(
        "--socks-port",
        metavar="N",
        type=_argtype(parse_port),
        default=SOCKS_PORT,
        help=f"C's SOCKS5 port on 127.0.0.1 (default {SOCKS_PORT})",
    )
    init.add_argument(
        "--http-port",
        metavar="N",
        type=_argtype(lambda text: 0 if text.strip() == "0" else parse_port(text)),
        default=HTTP_PORT,
        help=f"C's HTTP proxy port on 127.0.0.1 (default {HTTP_PORT}; 0: none)",
    )
    init.add_argument(
        "--listen",
        metavar="IP",
        type=_argtype(parse_listen),
        default="0.0.0.0",
        help="the address B's inbounds listen on (default 0.0.0.0: all)",
    )
    init.add_argument("--name", help="the share link's name (default: the portal address)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.add_argument("--no-qr", action="store_true", help="print the share link without QR")
    init.add_argument("--qr-png", metavar="FILE", help="also write the QR code as a PNG")
    init.set_defaults(subparser=init)

    link = sub.add_parser(
        "link",
        help="print a client config's vmess:// share link and QR code",
        description=(
            "Print the v2rayN share link (vmess://...) and its QR code for the first VMess "
            "server of a client config, or decode a link."
        ),
    )
    link.add_argument(
        "-c",
        "--config",
        "-config",
        dest="config",
        metavar="FILE",
        help="a V2Ray client config with a VMess outbound (e.g. c.json)",
    )
    link.add_argument("--decode", metavar="LINK", help="print the JSON inside a vmess:// link")
    link.add_argument("--name", help="the link's name (default: the server address)")
    link.add_argument("--no-qr", action="store_true", help="print the link only")
    link.add_argument("--qr-png", metavar="FILE", help="also write the QR code as a PNG")
    link.set_defaults(subparser=link)


def _fail(command: str, message: str) -> int:
    print(f"raybridge {command}: {message}", file=sys.stderr)
    return EXIT_FAILED


def _interactive(args: argparse.Namespace, inp: TextIO, out: TextIO) -> None:
    """Fill in what the options left out by asking (``args`` is updated)."""
    out.write("raybridge init: a bridge A (inside), a portal B (public), a client C.\n")
    if args.portal_address is None:
        args.portal_address = ask(
            "Portal address (B's public IP or host name)",
            parse_portal_address,
            None,
            inp=inp,
            out=out,
        )
    if args.portal_port is None:
        args.portal_port = ask(
            "Port on B for the bridge", parse_port, str(PORTAL_PORT), inp=inp, out=out
        )
    if args.client_port is None and args.portal_port < 65535:
        args.client_port = ask(
            "Port on B for clients", parse_port, str(args.portal_port + 1), inp=inp, out=out
        )
    if args.out is None:
        args.out = ask("Write the configs to", str, OUT_DIR, inp=inp, out=out)


def cmd_init(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    prompts: TextIO | None = None,
) -> int:
    """Streams default to the process's; questions go to ``prompts`` (stderr), so that
    stdout can be redirected and the questions still show."""
    parser: argparse.ArgumentParser = args.subparser
    inp = stdin or sys.stdin
    out = stdout or sys.stdout
    missing = [
        flag
        for flag, value in (
            ("--portal-address", args.portal_address),
            ("--portal-port", args.portal_port),
            ("--out", args.out),
        )
        if value is None
    ]
    if missing:
        if not inp.isatty():
            parser.error(
                f"missing {', '.join(missing)} (or run it in a terminal to be asked for them)"
            )
        try:
            _interactive(args, inp, prompts or sys.stderr)
        except EOFError:
            return _fail("init", "cancelled (input ended)")
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
    client_port = args.client_port
    if client_port is None:
        if args.portal_port == 65535:
            parser.error(
                "--portal-port 65535 leaves no room for the default client port: give --client-port"
            )
        client_port = args.portal_port + 1
    if client_port == args.portal_port:
        parser.error(f"the portal and client ports are both {client_port}: B needs two ports")
    http_port = args.http_port or None
    if http_port == args.socks_port:
        parser.error(f"C's SOCKS and HTTP ports are both {http_port}")

    directory = Path(args.out)
    paths = [directory / name for name in FILES]
    if directory.exists() and not directory.is_dir():
        return _fail("init", f"{directory} exists and is not a directory")
    # A symlink counts as existing, dangling or not: init never writes through one.
    links = [str(p) for p in paths if p.is_symlink()]
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not args.force:
        return _fail(
            "init",
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
            "not overwriting (use --force to replace)"
            + (
                f"; {', '.join(links)} {'is a symlink' if len(links) == 1 else 'are symlinks'}: "
                "not following, --force replaces the link itself, never its target"
                if links
                else ""
            ),
        )

    setup = Setup(
        portal_address=args.portal_address,
        portal_port=args.portal_port,
        client_port=client_port,
        bridge_id=str(uuid.uuid4()),
        client_id=str(uuid.uuid4()),
        domain=args.domain or random_domain(os.urandom),
        socks_port=args.socks_port,
        http_port=http_port,
        listen=args.listen,
    )
    texts = [
        safe_bridge_config(setup).render(),
        safe_portal_config(setup).render(),
        safe_client_config(setup).render(),
    ]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in zip(paths, texts, strict=True):
            write_private(path, text, replace=args.force)
    except OSError as exc:
        return _fail("init", f"cannot write the configs: {exc}")

    link = vmess_link(
        setup.portal_address, setup.client_port, setup.client_id, name=args.name or ""
    )
    _summary(setup, paths, out)
    print(
        "\nC's share link (v2rayN, v2rayNG and most VMess clients import it; it holds the", file=out
    )
    print(
        "client's id: share it privately). Print it again: raybridge link -c "
        f"{shlex.quote(str(paths[2]))}",
        file=out,
    )
    print_link(link, out, qr=not args.no_qr)
    if args.qr_png:
        try:
            write_qr_png(link, args.qr_png)
        except OSError as exc:
            return _fail("init", f"cannot write {args.qr_png}: {exc}")
        print(f"QR code written to {args.qr_png}", file=out)
    return 0


def write_private(path: Path, data: str | bytes, *, replace: bool = False) -> None:
    """Write ``data`` readable by its owner only (0600: the configs hold the users' UUIDs),
    never through a symlink. Without ``replace`` nothing may exist at ``path``
    (``FileExistsError``, for a symlink too, dangling or not); with it, a new file is
    written next to ``path`` and renamed over it, so an existing file or symlink there is
    replaced itself and a symlink's target is never touched."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    target = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp") if replace else path
    fd = os.open(target, flags, 0o600)  # O_EXCL: fails on any existing name, links too
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # exactly 0600, whatever the umask
            f.write(raw)
        if replace:
            os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


def _summary(s: Setup, paths: Sequence[Path], out: TextIO) -> None:
    a, b, c = (shlex.quote(str(p)) for p in paths)
    folder = paths[0].parent
    runs = [(f"on B ({s.portal_address}):", b), ("on A (inside):", a), ("on C (a client):", c)]
    width = max(len(where) for where, _ in runs)
    lines = [
        f"raybridge init: wrote three configs to {folder}/ (tunnel domain {s.domain})",
        f"  {a}  A, the bridge: inside the private network; dials B at "
        f"{s.portal_address}:{s.portal_port}",
        f"  {b}  B, the portal: the public machine {s.portal_address}; listens on "
        f"{s.listen}:{s.portal_port} (bridges) and {s.listen}:{s.client_port} (clients)",
        f"  {c}  C, the client: SOCKS5 127.0.0.1:{s.socks_port} (TCP and UDP)"
        + (f", HTTP proxy 127.0.0.1:{s.http_port}" if s.http_port else ""),
        "The files hold the UUIDs (secrets) and are readable only by you. Open ports "
        f"{s.portal_port} and {s.client_port} to B in its firewall"
        + (
            "; ports below 1024 need root on B."
            if min(s.portal_port, s.client_port) < 1024
            else "."
        ),
        "",
        "Copy each file to its machine and run it there (raybridge or V2Ray 4.34, any mix):",
        *(
            f"  {where.ljust(width)}  raybridge run -c {path}    or: v2ray -config {path}"
            for where, path in runs
        ),
        f"Then on C: curl --socks5-hostname 127.0.0.1:{s.socks_port} "
        "http://<a host inside A's network>/",
    ]
    print("\n".join(lines), file=out)


def cmd_link(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    parser: argparse.ArgumentParser = args.subparser
    out = stdout or sys.stdout
    if args.decode is not None:
        if args.config:
            parser.error("give either -c FILE or --decode LINK, not both")
        try:
            fields = decode_vmess_link(args.decode)
        except ShareLinkError as exc:
            return _fail("link", f"bad link: {exc}")
        print(json.dumps(fields, indent=2, ensure_ascii=False), file=out)
        return 0
    if not args.config:
        parser.error("give -c FILE (a client config such as c.json) or --decode LINK")
    try:
        with open(args.config, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        link = link_from_config(text, args.config, name=args.name)
    except OSError as exc:
        return _fail("link", f"cannot read {args.config}: {exc.strerror or exc}")
    except ConfigError as exc:
        return _fail("link", str(exc))
    print_link(link, out, qr=not args.no_qr)
    if args.qr_png:
        try:
            write_qr_png(link, args.qr_png)
        except OSError as exc:
            return _fail("link", f"cannot write {args.qr_png}: {exc}")
        print(f"QR code written to {args.qr_png}", file=out)
    return 0
