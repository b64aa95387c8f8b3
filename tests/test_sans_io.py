"""The codecs under raybridge.protocols are sans-IO: no sockets, no event loop, no clock and
no randomness of their own (they get time and urandom injected)."""

from __future__ import annotations

import ast
from pathlib import Path

import raybridge.protocols

FORBIDDEN = {"asyncio", "socket", "time", "os", "random", "secrets", "threading", "selectors"}


def test_protocols_import_no_io_modules() -> None:
    root = Path(raybridge.protocols.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 5
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(root)}: import {name}")
    assert offenders == []
