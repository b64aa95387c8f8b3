"""Access and error logs in V2Ray's style (docs/protocols.md 4.9 and 6).

Error log: ``2026/11/24 20:52:26 [Warning] proxy/vmess: message``, levels debug, info,
warning, error, none. Access log: ``2026/11/24 20:52:26 from 127.0.0.1:5555 accepted
tcp:example.com:443 [socks-in -> vmess-out]``. Each goes to the console (stderr: stdout is
left to commands' own output), to a file, or nowhere. ``json`` format writes one JSON object
per line instead, for log shippers.

No input can forge a line or reach a terminal as an escape sequence: the text format writes
control characters (C0, DEL, C1, U+2028/2029) as ``\\xNN``/``\\uNNNN`` escapes, and the lines of
a multi-line entry (a traceback) after the first are indented, so every line that begins at
column 0 begins with a timestamp. JSON escapes them by itself (``ensure_ascii``). Users are
named by email, else by :func:`user_label` (a short hash): no UUID is ever logged.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, TextIO

from raybridge.address import Destination
from raybridge.config.model import LogConfig
from raybridge.errors import ConfigError

ERROR_LOGGER = "raybridge"
ACCESS_LOGGER = "raybridge.access"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_LEVEL_NAMES = {
    logging.DEBUG: "Debug",
    logging.INFO: "Info",
    logging.WARNING: "Warning",
    logging.ERROR: "Error",
    logging.CRITICAL: "Error",
}

access_log = logging.getLogger(ACCESS_LOGGER)

#: Control characters as escapes: C0 (with CR, LF, ESC), DEL, C1, and the two Unicode line
#: separators some viewers break lines at.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (one line, no ESC)."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return text.translate(_ESCAPES)


@functools.lru_cache(maxsize=1024)  # called per connection, even at info level
def user_label(email: str, user_id: uuid.UUID | str) -> str:
    """How logs name a VMess user: its email, else ``user#`` and the first 8 hex digits of
    SHA-256 over the UUID's canonical text (lower case, with dashes; ``printf %s <uuid> |
    sha256sum`` gives the same). Stable across restarts, and not the UUID, which is the
    user's secret."""
    if email:
        return email
    text = str(user_id).lower()
    return "user#" + hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:8]


class TextFormatter(logging.Formatter):
    def __init__(self, access: bool) -> None:
        super().__init__()
        self.access = access

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        # The whole message is escaped: its arguments may come from the wire.
        message = escape(record.getMessage())
        if record.exc_info and record.levelno >= logging.ERROR:
            trace = self.formatException(record.exc_info)
            message += "".join("\n    " + escape(line) for line in trace.splitlines())
        if self.access:
            return f"{stamp} {message}"
        component = record.name.removeprefix("raybridge").lstrip(".").replace(".", "/")
        component = component or "core"
        return f"{stamp} [{_LEVEL_NAMES.get(record.levelno, 'Info')}] {component}: {message}"


class JsonFormatter(logging.Formatter):
    def __init__(self, access: bool) -> None:
        super().__init__()
        self.access = access

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "type": "access" if self.access else "error",
            "level": _LEVEL_NAMES.get(record.levelno, "Info").lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        return json.dumps(entry, separators=(",", ":"))


_handlers: list[logging.Handler] = []


def file_problem(path: str) -> str | None:
    """Why a log file at ``path`` cannot be opened for appending, or ``None`` if it can.

    V2Ray 4.34 opens the file once while it builds the config (``CreateFileLogWriter`` in
    ``common/log/logger.go``), so ``v2ray -test`` reports it. This checks without creating
    the file: an existing one is opened for appending (neither created nor truncated); for
    a new one the directory must exist and be writable."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.exists(parent):
            return f"the directory {parent} does not exist"
        if not os.path.isdir(parent):
            return f"{parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"no permission to create a file in {parent}"
        return None
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            return "it is a directory"
        if exc.errno == errno.ENOTDIR:
            return "a part of the path is not a directory"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "no permission to write it"
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def check_files(config: LogConfig) -> None:
    """A :class:`~raybridge.errors.ConfigError` naming file, line and ``log.access`` /
    ``log.error`` (both, if both fail) for log files of the merged config that cannot be
    opened."""
    problems = []
    for name, target, line in (
        ("access", config.access, config.access_line),
        ("error", config.error, config.error_line),
    ):
        problem = file_problem(target) if target else None
        if problem is not None:
            message = f"cannot open the log file {json.dumps(target)}: {problem}"
            problems.append(
                ConfigError(message, file=config.file, line=line or config.line, path=f"log.{name}")
            )
    if problems:
        problems[0].also.extend(problems[1:])
        raise problems[0]


class _PrivateFileHandler(logging.FileHandler):
    """Appends to a log file it creates 0600, as V2Ray does (the logs name users, clients'
    addresses and where they go); an existing file keeps its mode."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def _handler(target: str | None, access: bool, fmt: str, stream: TextIO) -> logging.Handler:
    handler: logging.Handler
    if target:
        handler = _PrivateFileHandler(target, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(access) if fmt == "json" else TextFormatter(access))
    return handler


def setup(
    *,
    access: str | None = None,
    error: str | None = "",
    level: str = "warning",
    fmt: str = "text",
    stream: TextIO | None = None,
) -> None:
    """Configure both logs.

    ``access``/``error``: ``None`` or ``"none"`` = off, ``""`` = console, else a file path.
    ``level``: debug/info/warning/error/none (``none`` turns both logs off).
    """
    stream = stream or sys.stderr
    for handler in _handlers:
        for name in (ERROR_LOGGER, ACCESS_LOGGER):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    _handlers.clear()

    error_logger = logging.getLogger(ERROR_LOGGER)
    error_logger.propagate = False
    access_logger = logging.getLogger(ACCESS_LOGGER)
    access_logger.propagate = False

    level = (level or "warning").lower()
    if level == "none":
        access = error = None
    if error is not None and error.lower() != "none":
        handler = _handler(error, False, fmt, stream)
        error_logger.addHandler(handler)
        _handlers.append(handler)
        error_logger.setLevel(LEVELS.get(level, logging.WARNING))
    else:
        error_logger.setLevel(logging.CRITICAL + 1)
    if access is not None and access.lower() != "none":
        handler = _handler(access, True, fmt, stream)
        access_logger.addHandler(handler)
        _handlers.append(handler)
        access_logger.setLevel(logging.INFO)
    else:
        access_logger.setLevel(logging.CRITICAL + 1)


def format_source(source: Destination | None) -> str:
    if source is None:
        return ""
    host = str(source.host)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{source.port}"


def accepted(
    source: Destination | None,
    dest: Destination,
    inbound_tag: str,
    outbound_tag: str,
    user: str | None = None,
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    message = f"from {format_source(source)} accepted {dest} [{inbound_tag} -> {outbound_tag}]"
    if user:
        message += f" email: {user}"
    access_log.info(
        message,
        extra={
            "fields": {
                "status": "accepted",
                "source": format_source(source),
                "destination": str(dest),
                "inbound": inbound_tag,
                "outbound": outbound_tag,
                "user": user or "",
            }
        },
    )


def rejected(source: Destination | None, reason: str, inbound_tag: str = "") -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
        f"from {format_source(source)} rejected {reason}",
        extra={
            "fields": {
                "status": "rejected",
                "source": format_source(source),
                "inbound": inbound_tag,
                "reason": reason,
            }
        },
    )


def reopen() -> None:
    """Close the log files; each is opened again (created if a rotation moved it) by its
    next line. What V2Ray's ``LoggerService.RestartLogger`` is for."""
    for handler in _handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()
