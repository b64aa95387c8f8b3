"""TLS contexts from ``tlsSettings`` (docs/transports.md 2), built once per inbound or
outbound before anything listens or dials, so a bad certificate is a config error.

Secure by default, where V2Ray 4.34 is looser:

* TLS 1.2 or newer, both sides (4.34 serves 1.0 and 1.1 too);
* a client verifies the server's certificate against the system roots plus every
  configured certificate (any ``usage``, as V2Ray does: a listed leaf pins it), or only the
  configured ones with ``disableSystemRoot``; ``allowInsecure`` turns that off and is
  logged at start (``raybridge test`` flags it as well);
* a TLS port speaks nothing but TLS: a plaintext client gets no answer (OpenSSL's error is
  logged and the connection closed).

Server certificates: each ``encipherment`` entry with a key; the first is the default, and
the client's SNI picks another whose names match (case-insensitive, wildcards), as Go
does. An ``issue`` entry (a CA with its key) mints a leaf for each SNI name on first use
and keeps it. ``ssl`` loads certificates from files only, so inline PEM is written to a
private temporary file, loaded and removed.

ALPN defaults follow V2Ray's per transport (tcp+tls offers ``h2,http/1.1``; a WebSocket
client offers ``http/1.1``; h2 needs ``h2``), except that a WebSocket server advertises only
``http/1.1``: V2Ray's advertises ``h2`` too, which breaks WebSocket clients that offer it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from raybridge.config.model import TlsCertificate, TlsSettings
from raybridge.errors import ConfigError

logger = logging.getLogger("raybridge.transport")

#: ALPN by transport and role when ``alpn`` is not set (docs/transports.md 2.2, 2.3).
CLIENT_ALPN = {"tcp": ("h2", "http/1.1"), "ws": ("http/1.1",), "http": ("h2",)}
SERVER_ALPN = {"tcp": ("h2", "http/1.1"), "ws": ("http/1.1",), "http": ("h2", "http/1.1")}


def _error(where: str, message: str) -> ConfigError:
    """A ConfigError at ``where`` ("file:line: path")."""
    file, _, rest = where.partition(":")
    line, _, path = rest.partition(": ")
    return ConfigError(
        message, file=file or None, line=int(line) if line.isdigit() else None, path=path or None
    )


@contextlib.contextmanager
def _pem_files(*blobs: bytes) -> Iterator[list[str]]:
    """PEM blobs as private temporary files, removed afterwards."""
    paths: list[str] = []
    try:
        for blob in blobs:
            fd, path = tempfile.mkstemp(prefix="raybridge-", suffix=".pem")
            paths.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
        yield paths
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _base_context(server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- client ---------------------------------------------------------------------------------


def client_context(tls: TlsSettings, network: str) -> ssl.SSLContext:
    ctx = _base_context(server=False)
    if tls.allow_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        logger.warning(
            "%s: allowInsecure: the server's certificate is not checked (anyone on the path "
            "can read and change this traffic)",
            tls.where,
        )
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if not tls.disable_system_root:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        for cert in tls.certificates:
            try:
                ctx.load_verify_locations(cadata=cert.certificate.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise _error(cert.where, f"not a PEM certificate: {exc}") from None
    ctx.set_alpn_protocols(list(tls.alpn or CLIENT_ALPN[network]))
    if not tls.session_resumption:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_server_name(tls: TlsSettings, address: str) -> str:
    """What the client checks (and sends as SNI, unless it is an IP): ``serverName``, else
    the destination's address (docs/transports.md 2.2)."""
    return tls.server_name or address


# -- server ---------------------------------------------------------------------------------


@dataclass
class _Served:
    context: ssl.SSLContext
    names: list[str]


@dataclass
class ServerTls:
    """The contexts of one TLS listener: the default one (``context``), one per further
    certificate (chosen by SNI), and leaves minted by an ``issue`` CA."""

    context: ssl.SSLContext
    served: list[_Served] = field(default_factory=list)
    issuer: tuple[bytes, bytes] | None = None  # (CA cert PEM, CA key PEM)
    minted: dict[str, ssl.SSLContext] = field(default_factory=dict)
    alpn: tuple[str, ...] = ()
    session_resumption: bool = False

    def pick(self, obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """``sni_callback``: switch to the certificate whose names match the SNI."""
        if not server_name:
            return
        name = server_name.lower()
        for served in self.served:
            if any(_matches(pattern, name) for pattern in served.names):
                obj.context = served.context
                return
        if self.issuer is not None:
            minted = self.minted.get(name)
            if minted is None:
                minted = self.minted[name] = self._mint(server_name)
            obj.context = minted

    def _mint(self, server_name: str) -> ssl.SSLContext:
        assert self.issuer is not None
        cert, key = mint_leaf(self.issuer, server_name)
        ctx = self._context()
        with _pem_files(cert, key) as (cert_path, key_path):
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    def _context(self) -> ssl.SSLContext:
        ctx = _base_context(server=True)
        ctx.set_alpn_protocols(list(self.alpn))
        if not self.session_resumption:
            ctx.options |= ssl.OP_NO_TICKET
        return ctx


def server_tls(tls: TlsSettings, network: str) -> ServerTls:
    """Build a listener's contexts; every problem is a ConfigError naming the entry."""
    alpn = tls.alpn or SERVER_ALPN[network]
    serving = [c for c in tls.certificates if c.usage == "encipherment" and c.key is not None]
    issuers = [c for c in tls.certificates if c.usage == "issue"]
    holder = ServerTls(
        context=_base_context(server=True), alpn=alpn, session_resumption=tls.session_resumption
    )
    for cert in issuers:
        if cert.key is None:
            raise _error(cert.where, 'an "issue" certificate needs its key')
        _load(holder._context(), cert)  # checks that the pair matches
        holder.issuer = (cert.certificate, cert.key)
    if not serving and holder.issuer is None:
        raise _error(tls.where, "a TLS server needs a certificate with its key")
    contexts = []
    for cert in serving:
        ctx = holder._context()
        _load(ctx, cert)
        contexts.append(_Served(ctx, _names(cert)))
    if contexts:
        holder.context = contexts[0].context
        holder.served = contexts
    else:  # only an issuer: mint for the SNI, and for clients that send none
        holder.context = holder._mint("")
    for served in [holder.context, *(s.context for s in contexts)]:
        served.sni_callback = holder.pick
    return holder


def _load(ctx: ssl.SSLContext, cert: TlsCertificate) -> None:
    assert cert.key is not None
    with _pem_files(cert.certificate, cert.key) as (cert_path, key_path):
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            if "KEY_VALUES_MISMATCH" in str(reason):
                raise _error(cert.where, "the key does not match the certificate") from None
            raise _error(cert.where, f"cannot load the certificate and key: {reason}") from None


def _names(cert: TlsCertificate) -> list[str]:
    """DNS names and IPs the certificate is for (SAN, else CN), lower case."""
    from cryptography import x509

    try:
        parsed = x509.load_pem_x509_certificate(cert.certificate)
    except ValueError:
        return []
    names: list[str] = []
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        for attr in parsed.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            names.append(str(attr.value).lower())
    return names


def _matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def mint_leaf(issuer: tuple[bytes, bytes], server_name: str) -> tuple[bytes, bytes]:
    """A leaf certificate for ``server_name`` signed by the CA (PEM cert, PEM key)."""
    from raybridge.certs import Pem, make_leaf

    leaf = make_leaf(Pem(*issuer), [server_name] if server_name else [], days=90)
    return leaf.cert, leaf.key
