"""Every "docs/protocols.md 4.3" or "docs/transports.md 3.2" in the code names a section
that exists, so a reader who follows a reference lands where it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("src", "tests", "fuzz", "bench")
NUM = r"[1-9](?:\.\d{1,2}){0,2}"
LIST = NUM + r"(?:\s*(?:,|and|to|-|\u2013)\s*" + NUM + r")*"
HEADING = re.compile(r"^#{2,4} (" + NUM + r")\.? ", re.M)


def headings(doc: str) -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / doc).read_text()))


def references(doc: str) -> dict[str, list[str]]:
    """Section numbers named right after ``docs/<doc>``, with where they are."""
    pattern = re.compile(
        re.escape(f"docs/{doc}") + r"`{0,2}[ ,]*(?:§\s*)?(?:sections?\s+)?(" + LIST + r")"
    )
    found: dict[str, list[str]] = {}
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            text = path.read_text()
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                for number in re.findall(NUM, match.group(1)):
                    found.setdefault(number, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


@pytest.mark.parametrize("doc", ["protocols.md", "transports.md"])
def test_section_references_resolve(doc: str) -> None:
    sections = headings(doc)
    assert {"1", "2", "3"} <= sections  # the headings are read at all
    refs = references(doc)
    assert refs  # the code does refer to it
    missing = {n: where for n, where in refs.items() if n not in sections}
    assert not missing, f"sections not in docs/{doc}: {missing}"
