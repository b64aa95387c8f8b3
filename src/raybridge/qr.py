"""QR codes of share links: in a terminal, and as a PNG file.

The matrix comes from the ``qrcode`` package (imported on first use, so that loading this
module costs nothing); the terminal rendering and the PNG encoder (8-bit greyscale, one
IDAT chunk, zlib only) are ours. A PNG holds the client's id, as the link does, so it is
written 0600 and never through a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from typing import TextIO

__all__ = ["png_bytes", "print_link", "qr_matrix", "qr_text", "write_qr_png"]

#: Half blocks for (top light, bottom light): two module rows per line of text.
_GLYPHS = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584"}


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
    for r in range(0, len(matrix), 2):
        top = matrix[r]
        bottom = matrix[r + 1] if r + 1 < len(matrix) else None
        line = "".join(
            _GLYPHS.get((not top[c], bottom is not None and not bottom[c]), " ")
            for c in range(len(top))
        )
        if color:
            line = f"\x1b[38;5;255m\x1b[48;5;232m{line}\x1b[0m"
        lines.append(line)
    return "\n".join(lines) + "\n"


def print_link(link: str, out: TextIO, *, qr: bool = True) -> None:
    """``link``, then (with ``qr``) its QR code: half blocks if ``out`` can encode them, in
    forced colours on a terminal that allows them (not ``TERM=dumb`` nor ``NO_COLOR``)."""
    print(link, file=out)
    if not qr:
        return
    encoding = getattr(out, "encoding", None) or "ascii"
    try:
        "".join(_GLYPHS.values()).encode(encoding)
        unicode = True
    except (UnicodeEncodeError, LookupError):
        unicode = False
    tty = out.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
    print(file=out)
    out.write(qr_text(link, unicode=unicode, color=tty))
    out.flush()


def png_bytes(matrix: list[list[bool]], scale: int = 8) -> bytes:
    """A square PNG of ``matrix``: 8-bit grey, ``scale`` pixels a module, dark is black."""
    size = len(matrix) * scale
    rows = bytearray()
    for row in matrix:
        line = b"\x00" + b"".join((b"\x00" if dark else b"\xff") * scale for dark in row)
        rows += line * scale  # each line starts with filter type 0 (none)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def write_qr_png(data: str, path: str, *, scale: int = 8) -> None:
    """The QR code as a PNG (8-bit grey, 4-module quiet zone), written with zlib alone:
    0600 (the link holds the client's id), and never through a symlink."""
    png = png_bytes(qr_matrix(data, border=4), scale)
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
