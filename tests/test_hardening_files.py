"""Files that hold secrets are 0600 (QR codes, configs, log files), and ``raybridge init``
never writes through a symlink in ``--out`` (issue 11, finding 10)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raybridge import log as logs
from raybridge.address import Destination, Network, parse_host
from raybridge.init import FILES, write_private, write_qr_png

CMD = [sys.executable, "-m", "raybridge"]
INIT = ["init", "--portal-address", "203.0.113.5", "--portal-port", "16823", "--no-qr"]


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain open() creates files 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def rb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- QR codes


def test_qr_png_is_written_0600(tmp_path: Path) -> None:
    path = tmp_path / "q.png"
    write_qr_png("vmess://abc", str(path), scale=1)
    assert mode(path) == 0o600
    # Replacing a file that others could read narrows it too.
    path.chmod(0o644)
    write_qr_png("vmess://abc", str(path), scale=1)
    assert mode(path) == 0o600
    # Through the command line.
    out = rb(*INIT, "--out", str(tmp_path / "out"), "--qr-png", str(tmp_path / "init.png"))
    assert out.returncode == 0, out.stderr
    assert mode(tmp_path / "init.png") == 0o600
    out = rb("link", "-c", str(tmp_path / "out" / "c.json"), "--no-qr", "--qr-png",
             str(tmp_path / "link.png"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert mode(tmp_path / "link.png") == 0o600


def test_qr_png_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "q.png").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        write_qr_png("vmess://abc", str(tmp_path / "q.png"), scale=1)
    assert victim.read_text() == "keep"


# --------------------------------------------------------------------------- init --out


def test_init_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    """Without --force, a.json as a dangling symlink was written through: its target was
    created with the bridge's UUID in it."""
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere" / "planted.json"
    target.parent.mkdir()
    (out / "a.json").symlink_to(target)
    result = rb(*INIT, "--out", str(out))
    assert result.returncode == 1
    assert "symlink" in result.stderr and "--force" in result.stderr
    assert not target.exists()
    assert not (out / "b.json").exists() and not (out / "c.json").exists()


def test_init_refuses_a_symlink_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (out / "b.json").symlink_to(victim)
    result = rb(*INIT, "--out", str(out))
    assert result.returncode == 1 and "is a symlink" in result.stderr
    assert victim.read_text() == "keep"


def test_init_force_replaces_the_link_never_its_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o644)
    dangling = tmp_path / "nowhere.json"
    (out / "a.json").symlink_to(victim)
    (out / "b.json").symlink_to(dangling)
    (out / "c.json").write_text("old")
    (out / "c.json").chmod(0o644)
    result = rb(*INIT, "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep" and mode(victim) == 0o644
    assert not dangling.exists()
    for name in FILES:
        path = out / name
        assert not path.is_symlink() and path.is_file(), name
        assert mode(path) == 0o600, name
        assert "Written by raybridge init" in path.read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary left


def test_write_private(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_private(path, "one")
    assert path.read_text() == "one" and mode(path) == 0o600
    with pytest.raises(FileExistsError):
        write_private(path, "two")
    (tmp_path / "link").symlink_to(tmp_path / "absent")
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "link", "two")
    assert not (tmp_path / "absent").exists()
    write_private(path, b"three", replace=True)
    assert path.read_text() == "three" and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "link"]


# --------------------------------------------------------------------------- log files


@pytest.fixture
def restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in (logs.ERROR_LOGGER, logs.ACCESS_LOGGER)]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        logs.setup(access=None, error=None)  # closes the file handlers
        for lg, (level, propagate, handlers) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate
            for handler in handlers:
                if handler not in lg.handlers:
                    lg.addHandler(handler)


@pytest.mark.usefixtures("restore_logging")
def test_log_files_are_created_0600(tmp_path: Path) -> None:
    error, access = tmp_path / "error.log", tmp_path / "access.log"
    kept = tmp_path / "kept.log"
    kept.write_text("")
    kept.chmod(0o640)  # an existing file keeps its mode, as with V2Ray
    logs.setup(access=str(access), error=str(error), level="info")
    logging.getLogger("raybridge.test").warning("a line")
    logs.accepted(None, Destination(Network.TCP, parse_host("example.com"), 443), "in", "out")
    assert mode(error) == 0o600 and mode(access) == 0o600
    assert "a line" in error.read_text() and "accepted" in access.read_text()
    logs.setup(access=None, error=str(kept), level="info")
    logging.getLogger("raybridge.test").warning("another line")
    assert mode(kept) == 0o640 and "another line" in kept.read_text()
