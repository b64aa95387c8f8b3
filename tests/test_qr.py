"""QR codes of share links: the terminal text is the matrix, the PNG is a valid image, and
the PNG file is private (0600) and never written through a symlink."""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path

import pytest

from raybridge.qr import png_bytes, qr_matrix, qr_text, write_qr_png
from raybridge.share_link import vmess_link


def test_qr_text_is_the_matrix() -> None:
    """Each text line holds two module rows; a drawn half is a light module."""
    link = vmess_link("vps.example.com", 443, "b831381d-6324-4d53-ad4f-8cda48b30811", name="ü")
    matrix = qr_matrix(link)
    rows: list[list[bool]] = []
    for line in qr_text(link).splitlines():
        rows.append([ch not in "\u2580\u2588" for ch in line])  # dark where the top is not drawn
        rows.append([ch not in "\u2584\u2588" for ch in line])
    assert rows[: len(matrix)] == matrix
    ascii_rows = qr_text(link, unicode=False).splitlines()
    assert [[line[i : i + 2] == "  " for i in range(0, len(line), 2)] for line in ascii_rows] == (
        matrix
    )


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    path = tmp_path / "q.png"
    write_qr_png("vmess://abc", str(path), scale=2)
    data = path.read_bytes()
    width, height = int.from_bytes(data[16:20]), int.from_bytes(data[20:24])
    assert width == height == len(qr_matrix("vmess://abc", border=4)) * 2
    idat_len = int.from_bytes(data[33:37])
    assert data[37:41] == b"IDAT"
    pixels = zlib.decompress(data[41 : 41 + idat_len])
    assert len(pixels) == height * (1 + width)


def test_png_bytes_is_the_matrix() -> None:
    """Each module is scale x scale pixels, black for dark, after a filter byte per row."""
    matrix = [[True, False], [False, True]]
    data = png_bytes(matrix, scale=3)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    idat_len = int.from_bytes(data[33:37])
    pixels = zlib.decompress(data[41 : 41 + idat_len])
    rows = [pixels[i : i + 7] for i in range(0, len(pixels), 7)]
    assert (
        rows
        == [b"\x00" + b"\x00" * 3 + b"\xff" * 3] * 3 + [b"\x00" + b"\xff" * 3 + b"\x00" * 3] * 3
    )


def test_png_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "q.png"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_qr_png("vmess://abc", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"\x89PNG")
    link = tmp_path / "link.png"
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    os.symlink(target, link)
    with pytest.raises(OSError, match="symlink"):
        write_qr_png("vmess://abc", str(link))
    assert target.read_bytes() == b"keep"
