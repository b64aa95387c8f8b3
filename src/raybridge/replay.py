"""The VMess AEAD replay filter across restarts (beyond V2Ray; docs/RELIABILITY.md).

A VMess AEAD header is accepted for 120 s either side of the time it carries, and the
server refuses a replayed one only because it remembers the AuthIDs it has seen
(:class:`~raybridge.protocols.vmess.validator.UserValidator`). That memory dies with the
process: a header captured just before a restart could be replayed just after it. So a
VMess inbound saves the filter's live entries when it closes and loads them when it starts,
in the state directory (``"raybridge": {"stateDir": ...}``, else ``$STATE_DIRECTORY``, set
by systemd's ``StateDirectory=``; with neither nothing is kept, as in V2Ray).

Chosen over the stateless alternative (refuse every header older than the process start
during its first 120 s): that one would also refuse honest clients whose clocks lag the
server's, after every restart, and gives nothing after a crash either.

File layout (``vmess-replay-<tag>-<port>.bin``, mode 0600, replaced atomically)::

    MAGIC(10) = b"RBREPLAY1\\n"  COUNT(4, big endian)
    COUNT x ( AUTH_ID(16)  TS(8, big endian, signed: the time the AuthID carries) )
    CRC32(4, big endian) of everything before it

Entries the time check refuses anyway (``ts + 120 < now``) are dropped on load. A missing
file is normal; a corrupt one is logged and ignored (the node starts without it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable, Mapping

from raybridge.protocols.vmess import UserValidator

logger = logging.getLogger("raybridge.replay")

MAGIC = b"RBREPLAY1\n"
_COUNT = struct.Struct(">I")
_RECORD = struct.Struct(">16sq")
_CRC = struct.Struct(">I")


class ReplayFileError(ValueError):
    """The replay file is not one this module wrote (truncated, corrupt, another format)."""


def state_dir(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The state directory: ``configured`` when set (``""`` turns persistence off), else the
    first entry of ``$STATE_DIRECTORY`` (systemd may list several, separated by ``:``)."""
    if configured is not None:
        return configured or None
    env = os.environ if environ is None else environ
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return first or None


def file_for(directory: str, tag: str, port: int) -> str:
    """Where the inbound ``tag`` on ``port`` keeps its filter (the tag made file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", tag)[:64] or "vmess"
    return os.path.join(directory, f"vmess-replay-{safe}-{port}.bin")


def encode(entries: Iterable[tuple[bytes, int]]) -> bytes:
    body = b"".join(_RECORD.pack(auth_id, ts) for auth_id, ts in entries)
    data = MAGIC + _COUNT.pack(len(body) // _RECORD.size) + body
    return data + _CRC.pack(zlib.crc32(data))


def decode(data: bytes) -> list[tuple[bytes, int]]:
    head = len(MAGIC) + _COUNT.size
    if len(data) < head + _CRC.size or not data.startswith(MAGIC):
        raise ReplayFileError("not a raybridge replay file")
    (count,) = _COUNT.unpack_from(data, len(MAGIC))
    if len(data) != head + count * _RECORD.size + _CRC.size:
        raise ReplayFileError("truncated or overlong replay file")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise ReplayFileError("replay file checksum mismatch")
    return [(a, t) for a, t in _RECORD.iter_unpack(data[head : -_CRC.size])]


def save(path: str, validator: UserValidator) -> int:
    """Write the filter's live entries to ``path`` atomically (a temporary file in the same
    directory, mode 0600, renamed over it). Returns how many."""
    entries = list(validator.export_replay())
    data = encode(entries)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".vmess-replay-", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(entries)


def load(path: str, validator: UserValidator) -> int:
    """Load ``path`` into ``validator`` (see the module docstring); returns how many
    entries were kept. Never raises for a missing, unreadable or corrupt file: it logs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        logger.warning("cannot read the VMess replay filter %s: %s; starting without", path, exc)
        return 0
    try:
        entries = decode(data)
    except ReplayFileError as exc:
        logger.warning("ignored the VMess replay filter %s: %s", path, exc)
        return 0
    return validator.import_replay(entries)


def restore(directory: str | None, tag: str, port: int, validator: UserValidator) -> str | None:
    """At start: load the inbound's filter, if there is a state directory. Returns the file
    (to :func:`persist` to at close), or ``None`` when nothing is kept."""
    if not directory:
        return None
    path = file_for(directory, tag, port)
    kept = load(path, validator)
    if kept:
        logger.info("loaded %d recent VMess AuthIDs from %s (replays stay refused)", kept, path)
    return path


def persist(path: str | None, validator: UserValidator) -> None:
    """At close: save the filter to ``path`` (from :func:`restore`); failures are logged."""
    if path is None:
        return
    try:
        count = save(path, validator)
    except OSError as exc:
        logger.warning("cannot save the VMess replay filter to %s: %s", path, exc)
        return
    logger.info("saved %d recent VMess AuthIDs to %s", count, path)
