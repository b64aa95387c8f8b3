"""``raybridge init`` and ``raybridge link``: set up a reverse proxy, and share the client.

``raybridge init --portal-address HOST --portal-port N --out DIR`` writes a matched set of
configs, ``DIR/a.json`` (the bridge, inside), ``DIR/b.json`` (the portal, public) and
``DIR/c.json`` (a client), built by :mod:`raybridge.templates` (``safe_*``): fresh UUIDs,
VMess AEAD, the portal locked down as docs/RELIABILITY.md ("Who may be a bridge") says. In a
terminal, it asks for what the flags leave out. It then prints how to run each node, and
C's share link with its QR code.

``--transport tcp|tls|ws|wss|h2`` (default tcp) chooses how A and C reach B, for both links:
``tls`` TCP+TLS, ``wss`` WebSocket+TLS, ``h2`` HTTP/2 over TLS, ``ws`` WebSocket behind
nginx, which ends TLS (init also writes ``nginx.conf``; B listens on 127.0.0.1 and A and C
speak WebSocket+TLS to nginx). TLS needs ``--cert FILE --key FILE`` (a certificate for the
portal's name: B's config refers to the files by absolute path, so a renewal is picked up,
and A and C check it against the system roots) or ``--self-signed``: a private CA and a
certificate for the portal address (``ca.pem``, ``portal.pem``, ``portal-key.pem``, 0600);
B's config holds the certificate and key inline and A's and C's the CA (``usage: verify``,
system roots off), so every file is self-contained and nobody needs ``allowInsecure``. The
CA's key is not kept: nothing else can ever be signed with it. WebSocket and HTTP/2 paths are
random (16 URL-safe characters) per link unless ``--path`` (C's link) or ``--bridge-path``
(A's) is given.

``raybridge link -c c.json`` prints the share link (and QR code) of any V2Ray client
config's first VMess server; ``raybridge link --decode vmess://...`` shows what a link holds.

This module is the command: its options, the questions, the files it writes. The link
itself is :mod:`raybridge.share_link` (imported when a command runs: it reads configs
with :mod:`raybridge.config`), its QR code :mod:`raybridge.qr`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from raybridge.errors import ConfigError
from raybridge.qr import print_link, write_qr_png
from raybridge.templates import (
    HTTP_PORT,
    LOCAL,
    NGINX_PORT,
    SOCKS_PORT,
    TLS_TRANSPORTS,
    TRANSPORT_NAMES,
    TRANSPORTS,
    PortalCert,
    Setup,
    nginx_config,
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
#: What ``--self-signed`` writes next to them: the private CA (A and C trust it; phones need
#: it installed), B's certificate and its key. Inline in the configs too.
CERT_FILES = ("ca.pem", "portal.pem", "portal-key.pem")
NGINX_FILE = "nginx.conf"
#: The answer to the wizard's certificate question that makes a self-signed set.
SELF_SIGNED = "self-signed"

#: Exit status for a refused or failed ``init`` / ``link`` (argparse uses 2 for usage errors).
EXIT_FAILED = 1


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


_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")


def parse_path(text: str) -> str:
    """A WebSocket or HTTP/2 path: a leading ``/`` is added (as V2Ray does); only characters
    that need no escaping in a URL, a JSON string or an nginx ``location``."""
    value = text.strip()
    if not value.startswith("/"):
        value = "/" + value
    if not _PATH.fullmatch(value):
        raise ValueError(
            f"{text.strip()!r} is not a usable path: letters, digits and . _ ~ - / only "
            "(no query, no spaces, at most 200 characters)"
        )
    return value


def random_path(urandom: Callable[[int], bytes]) -> str:
    """An unguessable path: ``/`` and 16 URL-safe characters (96 random bits)."""
    return "/" + base64.urlsafe_b64encode(urandom(12)).decode("ascii")


def parse_transport(text: str) -> str:
    value = text.strip().lower()
    if value not in TRANSPORTS:
        raise ValueError(f"unknown transport {text.strip()!r}: choose {', '.join(TRANSPORTS)}")
    return value


def parse_readable_file(text: str) -> str:
    """A file that can be read now (the wizard asks again if not)."""
    path = os.path.expanduser(text.strip())
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


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


# --------------------------------------------------------------------------- commands


def parse_http_port(text: str) -> int:
    """C's HTTP proxy port, or 0 for none."""
    return 0 if text.strip() == "0" else parse_port(text)


#: The options of ``raybridge init`` that take a value, in the order ``--help`` shows them:
#: flag, metavar, how the value is read (None: as given), default, help.
_INIT_VALUES: tuple[tuple[str, str, Callable[[str], object] | None, object, str], ...] = (
    ("--portal-address", "HOST", parse_portal_address, None,
     "B's public IP address or host name (A and C dial it)"),
    ("--portal-port", "N", parse_port, None, f"B's port for bridges (suggested: {PORTAL_PORT})"),
    ("--client-port", "N", parse_port, None,
     "B's port for clients (default: the portal port + 1)"),
    ("--out", "DIR", None, None, "where to write a.json, b.json and c.json"),
    ("--domain", "D", parse_domain, None,
     "the tunnel domain (default: a random tunnel-<hex>.internal)"),
    ("--socks-port", "N", parse_port, SOCKS_PORT,
     f"C's SOCKS5 port on 127.0.0.1 (default {SOCKS_PORT})"),
    ("--http-port", "N", parse_http_port, HTTP_PORT,
     f"C's HTTP proxy port on 127.0.0.1 (default {HTTP_PORT}; 0: none)"),
    ("--listen", "IP", parse_listen, None,
     "the address B's inbounds listen on (default 0.0.0.0: all; 127.0.0.1 with "
     "--transport ws, behind nginx)"),
    ("--transport", "T", parse_transport, None,
     "how A and C reach B: tcp (default), tls (TCP+TLS), ws (WebSocket behind nginx, "
     "which ends TLS; also writes nginx.conf), wss (WebSocket+TLS), h2 (HTTP/2 over TLS)"),
    ("--cert", "FILE", None, None,
     "B's TLS certificate (PEM, for the portal address; A and C check it against the "
     "system roots); B's config refers to it by absolute path"),
    ("--key", "FILE", None, None, "the private key of --cert (PEM, unencrypted)"),
    ("--path", "PATH", parse_path, None,
     "the WebSocket or HTTP/2 path of C's link (default: random)"),
    ("--bridge-path", "PATH", parse_path, None,
     "the WebSocket or HTTP/2 path of A's link (default: random)"),
    ("--nginx-port", "N", parse_port, None,
     f"with --transport ws: nginx's TLS port, which A and C dial (default {NGINX_PORT})"),
)  # fmt: skip


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
    for flag, metavar, parse, default, text in _INIT_VALUES:
        kind = None if parse is None else _argtype(parse)
        init.add_argument(flag, metavar=metavar, type=kind, default=default, help=text)
    init.add_argument(
        "--self-signed",
        action="store_true",
        help="make a private CA and a certificate for the portal address (ca.pem, portal.pem, "
        "portal-key.pem in DIR); A and C trust that CA only",
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
    link.add_argument(
        "--outbound",
        action="store_true",
        help="with --decode: print a V2Ray 4.34 VMess outbound for the link instead",
    )
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
    if args.transport is None:
        args.transport = ask(
            "Transport: tcp, tls, ws (behind nginx), wss or h2",
            parse_transport,
            "tcp",
            inp=inp,
            out=out,
        )
    if args.transport != "tcp" and not (args.cert or args.key or args.self_signed):
        _ask_certificate(args, inp, out)
    if args.out is None:
        args.out = ask("Write the configs to", str, OUT_DIR, inp=inp, out=out)


def _ask_certificate(args: argparse.Namespace, inp: TextIO, out: TextIO) -> None:
    """B's (or, for ws, nginx's) certificate: a file and its key, or a self-signed set."""
    ws = args.transport == "ws"

    def answer(text: str) -> str:
        value = text.strip()
        if value.lower() == SELF_SIGNED or (ws and value.lower() == "none"):
            return value.lower()
        return parse_readable_file(value)

    question = (
        "nginx's TLS certificate file (PEM), self-signed, or none (fill in nginx.conf later)"
        if ws
        else "B's TLS certificate file (PEM), or self-signed"
    )
    choice = ask(question, answer, SELF_SIGNED, inp=inp, out=out)
    if choice == SELF_SIGNED:
        args.self_signed = True
    elif choice != "none":
        args.cert = choice
        args.key = ask("Its private key file", parse_readable_file, None, inp=inp, out=out)


class _Refused(Exception):
    """A reason ``init`` writes nothing (exit status 1)."""


def cmd_init(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    prompts: TextIO | None = None,
) -> int:
    """Streams default to the process's; questions go to ``prompts`` (stderr), so that
    stdout can be redirected and the questions still show."""
    from raybridge.share_link import link_from_config

    parser: argparse.ArgumentParser = args.subparser
    out = stdout or sys.stdout
    cancelled = _ask_missing(args, parser, stdin or sys.stdin, prompts or sys.stderr)
    if cancelled is not None:
        return cancelled
    client_port, http_port = _ports(args, parser)
    transport: str = args.transport or "tcp"
    _check_transport_options(args, parser, transport, client_port)
    directory = Path(args.out)
    names = list(FILES)
    if args.self_signed:
        names += CERT_FILES
    if transport == "ws":
        names.append(NGINX_FILE)
    paths = {name: directory / name for name in names}
    refusal = _refusal(directory, list(paths.values()), force=args.force)
    if refusal:
        return _fail("init", refusal)
    try:
        cert = _portal_cert(args)
    except _Refused as exc:
        return _fail("init", str(exc))
    setup = _setup(args, transport, client_port, http_port, cert)
    files = _render(setup, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_private(paths[name], data, replace=args.force)
    except OSError as exc:
        return _fail("init", f"cannot write the configs: {exc}")

    link = link_from_config(str(files["c.json"]), str(paths["c.json"]), name=args.name or None)
    _summary(setup, paths, out)
    _link_note(setup, paths, out)
    return _show_link("init", link, args, out)


def _setup(
    args: argparse.Namespace,
    transport: str,
    client_port: int,
    http_port: int | None,
    cert: PortalCert | None,
) -> Setup:
    """What the answers and options decide, with fresh ids (and domain, if none given)."""
    bridge_path, client_path = _paths(args, transport)
    return Setup(
        portal_address=args.portal_address,
        portal_port=args.portal_port,
        client_port=client_port,
        bridge_id=str(uuid.uuid4()),
        client_id=str(uuid.uuid4()),
        domain=args.domain or random_domain(os.urandom),
        socks_port=args.socks_port,
        http_port=http_port,
        listen=args.listen or (LOCAL if transport == "ws" else "0.0.0.0"),
        transport=transport,
        cert=cert,
        bridge_path=bridge_path,
        client_path=client_path,
        nginx_port=args.nginx_port or NGINX_PORT,
    )


def _link_note(setup: Setup, paths: dict[str, Path], out: TextIO) -> None:
    """What to know about C's share link, before it is shown."""
    print(
        "\nC's share link (v2rayN, v2rayNG and most VMess clients import it; it holds the", file=out
    )
    print(
        "client's id: share it privately). Print it again: raybridge link -c "
        f"{shlex.quote(str(paths['c.json']))}",
        file=out,
    )
    if setup.cert is not None and setup.cert.ca_pem:
        print(
            "A link cannot carry the private CA: a phone or desktop client that imports it "
            f"must\ntrust {shlex.quote(str(paths['ca.pem']))} (install it as a CA "
            "certificate), or set allowInsecure, which turns the\ncertificate check off "
            "(not done here).",
            file=out,
        )


def _check_transport_options(
    args: argparse.Namespace, parser: argparse.ArgumentParser, transport: str, client_port: int
) -> None:
    """Usage errors in ``--transport`` and the options that go with it."""
    if transport == "tcp":
        given = [
            flag
            for flag, value in (
                ("--cert", args.cert),
                ("--key", args.key),
                ("--self-signed", args.self_signed),
                ("--path", args.path),
                ("--bridge-path", args.bridge_path),
                ("--nginx-port", args.nginx_port),
            )
            if value
        ]
        if given:
            parser.error(
                f"{', '.join(given)}: not with --transport tcp (bare TCP has no TLS and no "
                "path); choose --transport tls, ws, wss or h2"
            )
        return
    if (args.cert is None) != (args.key is None):
        parser.error(
            "--cert and --key go together: give the certificate and its private key "
            f"(only {'--cert' if args.cert is not None else '--key'} was given)"
        )
    if args.cert is not None and args.self_signed:
        parser.error("give either --cert/--key or --self-signed, not both")
    if transport in TLS_TRANSPORTS and args.cert is None and not args.self_signed:
        parser.error(
            f"--transport {transport} needs TLS: give --cert FILE --key FILE (a certificate "
            f"for {args.portal_address}) or --self-signed (a private CA that A and C trust)"
        )
    if transport == "tls" and (args.path or args.bridge_path):
        parser.error("--path and --bridge-path are for ws, wss and h2 (TCP+TLS has no path)")
    if transport != "ws":
        if args.nginx_port is not None:
            parser.error("--nginx-port goes with --transport ws (nginx in front of B)")
        return
    nginx_port = args.nginx_port or NGINX_PORT
    if nginx_port in (args.portal_port, client_port):
        parser.error(
            f"nginx and B would both listen on port {nginx_port}: choose another "
            "--portal-port, --client-port or --nginx-port"
        )
    if args.path is not None and args.path == args.bridge_path:
        parser.error(
            f"--path and --bridge-path are both {args.path}: behind one nginx the two links "
            "need different paths"
        )


def _paths(args: argparse.Namespace, transport: str) -> tuple[str, str]:
    """The A-B and C-B paths: as given, else random (and different)."""
    if transport in ("tcp", "tls"):
        return "/", "/"
    bridge: str = args.bridge_path or random_path(os.urandom)
    client: str = args.path or random_path(os.urandom)
    while client == bridge:  # only when one was given and the other drawn: never, in practice
        client = random_path(os.urandom)
    return bridge, client


def _portal_cert(args: argparse.Namespace) -> PortalCert | None:
    """B's certificate: ``--cert/--key`` checked, or a fresh self-signed set, or none."""
    if args.self_signed:
        from raybridge.certs import make_ca, make_leaf

        ca = make_ca(f"raybridge private CA for {args.portal_address}")
        leaf = make_leaf(ca, [args.portal_address])
        # The CA's key goes no further than this function: nothing else can be signed with it.
        return PortalCert(
            cert_pem=leaf.cert.decode("ascii"),
            key_pem=leaf.key.decode("ascii"),
            ca_pem=ca.cert.decode("ascii"),
        )
    if args.cert is None:
        return None
    _check_pair(args.cert, args.key, args.portal_address)
    # Absolute, symlinks kept: certbot's live/ names are links that move on each renewal.
    return PortalCert(cert_file=os.path.abspath(args.cert), key_file=os.path.abspath(args.key))


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _Refused(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def _check_pair(cert_path: str, key_path: str, address: str) -> None:
    """The certificate and key can be read, are PEM and belong together; a certificate
    that does not name ``address`` is only warned about (A and C would refuse it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_data, key_data = _read("--cert", cert_path), _read("--key", key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise _Refused(f"--cert {cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError):
        raise _Refused(
            f"--key {key_path} is not an unencrypted PEM private key (V2Ray and raybridge "
            "read it without a passphrase)"
        ) from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise _Refused(f"--key {key_path} is not the private key of --cert {cert_path}")
    if not _names_address(cert, address):
        print(
            f"raybridge init: warning: {cert_path} does not name {address}: A and C check "
            "B's certificate for that name and will refuse it",
            file=sys.stderr,
        )


def _names_address(cert: Any, address: str) -> bool:
    """Whether ``cert`` (an ``x509.Certificate``) is valid for ``address`` (its subject
    alternative names; one-label wildcards, as TLS clients match them)."""
    from cryptography import x509

    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        name = address.lower().rstrip(".")
        for pattern in alt.get_values_for_type(x509.DNSName):
            pattern = pattern.lower().rstrip(".")
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
                return True
        return False
    return ip in alt.get_values_for_type(x509.IPAddress)


def _render(s: Setup, directory: Path) -> dict[str, str]:
    """The text of each file ``init`` writes, by name."""
    files = {
        "a.json": safe_bridge_config(s).render(),
        "b.json": safe_portal_config(s).render(),
        "c.json": safe_client_config(s).render(),
    }
    if s.cert is not None and s.cert.ca_pem:
        files["ca.pem"] = s.cert.ca_pem
        files["portal.pem"] = s.cert.cert_pem
        files["portal-key.pem"] = s.cert.key_pem
    if s.behind_nginx:
        if s.cert is None:
            live = f"/etc/letsencrypt/live/{s.portal_address}"
            cert_file, key_file = f"{live}/fullchain.pem", f"{live}/privkey.pem"
        elif s.cert.cert_file:
            cert_file, key_file = s.cert.cert_file, s.cert.key_file
        else:
            folder = os.path.abspath(directory)
            cert_file = os.path.join(folder, "portal.pem")
            key_file = os.path.join(folder, "portal-key.pem")
        files[NGINX_FILE] = nginx_config(s, cert_file, key_file, placeholder=s.cert is None)
    return files


def _ask_missing(
    args: argparse.Namespace, parser: argparse.ArgumentParser, inp: TextIO, prompts: TextIO
) -> int | None:
    """Ask for the options ``init`` needs that the command line left out (a usage error
    when ``inp`` is not a terminal). Returns the exit status when the user gives up."""
    missing = [
        flag
        for flag, value in (
            ("--portal-address", args.portal_address),
            ("--portal-port", args.portal_port),
            ("--out", args.out),
        )
        if value is None
    ]
    if not missing:
        return None
    if not inp.isatty():
        parser.error(f"missing {', '.join(missing)} (or run it in a terminal to be asked for them)")
    try:
        _interactive(args, inp, prompts)
    except EOFError:
        return _fail("init", "cancelled (input ended)")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return None


def _ports(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[int, int | None]:
    """B's port for clients (by default the one after the portal port) and C's HTTP port
    (None: no HTTP proxy); two services on one port are a usage error."""
    client_port: int | None = args.client_port
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
    return client_port, http_port


def _refusal(directory: Path, paths: Sequence[Path], *, force: bool) -> str | None:
    """Why ``init`` does not write ``paths`` into ``directory``, if it does not."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} exists and is not a directory"
    # A symlink counts as existing, dangling or not: init never writes through one.
    links = [str(p) for p in paths if p.is_symlink()]
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if not existing or force:
        return None
    return (
        f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
        "not overwriting (use --force to replace)"
        + (
            f"; {', '.join(links)} {'is a symlink' if len(links) == 1 else 'are symlinks'}: "
            "not following, --force replaces the link itself, never its target"
            if links
            else ""
        )
    )


def _show_link(command: str, link: str, args: argparse.Namespace, out: TextIO) -> int:
    """Print ``link`` with its QR code (unless ``--no-qr``) and write ``--qr-png``."""
    print_link(link, out, qr=not args.no_qr)
    if args.qr_png:
        try:
            write_qr_png(link, args.qr_png)
        except OSError as exc:
            return _fail(command, f"cannot write {args.qr_png}: {exc}")
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


def _summary(s: Setup, paths: dict[str, Path], out: TextIO) -> None:
    q = {name: shlex.quote(str(path)) for name, path in paths.items()}
    a, b, c = q["a.json"], q["b.json"], q["c.json"]
    folder = paths["a.json"].parent
    runs = [(f"on B ({s.portal_address}):", b), ("on A (inside):", a), ("on C (a client):", c)]
    width = max(len(where) for where, _ in runs)
    lines = [
        f"raybridge init: wrote {len(paths)} files to {folder}/ (tunnel domain {s.domain})",
        f"  {a}  A, the bridge: inside the private network; dials B at "
        f"{s.host_header}:{s.bridge_dial_port}",
        f"  {b}  B, the portal: the public machine {s.portal_address}; listens on "
        f"{s.listen}:{s.portal_port} (bridges) and {s.listen}:{s.client_port} (clients)",
        f"  {c}  C, the client: SOCKS5 127.0.0.1:{s.socks_port} (TCP and UDP)"
        + (f", HTTP proxy 127.0.0.1:{s.http_port}" if s.http_port else ""),
    ]
    if "ca.pem" in q:
        lines += [
            f"  {q['ca.pem']}  the private CA that A and C trust (inline in their configs; its "
            "key was not kept)",
            f"  {q['portal.pem']} {q['portal-key.pem']}  B's certificate for "
            f"{s.portal_address} and its key"
            + (" (for nginx)" if s.behind_nginx else " (inline in b.json)"),
        ]
    if NGINX_FILE in q:
        lines.append(
            f"  {q[NGINX_FILE]}  nginx in front of B: TLS on port {s.nginx_port}, the two "
            "WebSocket paths to B"
        )
    lines += _transport_lines(s, q)
    ports = " and ".join(str(p) for p in s.open_ports)
    lines.append(
        "The files hold the UUIDs (secrets) and are readable only by you. Open TCP "
        f"port{'s' if len(s.open_ports) > 1 else ''} {ports} to B in its firewall"
        + (
            "; ports below 1024 need root on B."
            if not s.behind_nginx and min(s.open_ports) < 1024
            else "."
        )
        + (
            f" Ports {s.portal_port} and {s.client_port} stay closed: nginx reaches them."
            if s.behind_nginx
            else ""
        )
    )
    lines += [
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


def _transport_lines(s: Setup, q: dict[str, str]) -> list[str]:
    """What the summary says about the transport, the certificate and nginx."""
    if s.transport == "tcp":
        return [
            "Transport: bare TCP (VMess AEAD) for both links; --transport tls, wss, h2 or ws "
            "(behind nginx) adds TLS."
        ]
    paths = f"paths {s.bridge_path} (A) and {s.client_path} (C)"
    if s.behind_nginx:
        backend = LOCAL if s.listen in ("0.0.0.0", "::") else s.listen
        lines = [
            f"Transport: WebSocket+TLS from A and C to nginx on {s.host_header}:"
            f"{s.nginx_port}; nginx passes",
            f"  {s.bridge_path} (A) to {backend}:{s.portal_port} and {s.client_path} (C) to "
            f"{backend}:{s.client_port}, as plain WebSocket.",
            f"On B, put {q[NGINX_FILE]} inside nginx's http {{}} (e.g. as "
            "/etc/nginx/conf.d/raybridge.conf),",
            "  then: nginx -t && systemctl reload nginx",
        ]
    else:
        detail = "" if s.transport == "tls" else f", {paths}"
        lines = [f"Transport: {TRANSPORT_NAMES[s.transport]} for both links{detail}."]
    cert = s.cert
    if cert is None:
        lines.append(
            f"nginx.conf's certificate lines are placeholders: point them at a certificate for "
            f"{s.portal_address}"
        )
        lines.append("(e.g. from certbot); A and C check it against the system's roots.")
    elif cert.ca_pem:
        lines.append(
            f"A and C trust only the private CA, and check B's certificate for the name "
            f"{s.portal_address}: no allowInsecure."
        )
        if s.behind_nginx:
            lines.append(
                "nginx.conf refers to portal.pem and portal-key.pem by absolute path: copy them "
                "to B, and fix the paths if they differ there."
            )
    else:
        target = "nginx.conf refers" if s.behind_nginx else "b.json refers"
        lines.append(
            f"{target} to {shlex.quote(cert.cert_file)} and {shlex.quote(cert.key_file)} by "
            "absolute path: they must be there on B."
        )
        lines.append(
            f"A and C check B's certificate for the name {s.portal_address} against the "
            "system's roots."
        )
    return lines


def cmd_link(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    from raybridge.share_link import (
        ShareLinkError,
        decode_vmess_link,
        link_from_config,
        outbound_from_link,
    )

    parser: argparse.ArgumentParser = args.subparser
    out = stdout or sys.stdout
    if args.decode is not None:
        if args.config:
            parser.error("give either -c FILE or --decode LINK, not both")
        try:
            fields = decode_vmess_link(args.decode)
            shown = outbound_from_link(fields) if args.outbound else fields
        except ShareLinkError as exc:
            return _fail("link", f"bad link: {exc}")
        print(json.dumps(shown, indent=2, ensure_ascii=False), file=out)
        return 0
    if args.outbound:
        parser.error("--outbound goes with --decode LINK")
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
    return _show_link("link", link, args, out)
