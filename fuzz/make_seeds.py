"""Write the seed corpora, ``fuzz/corpus/NAME/seed-LABEL``, from each harness's ``seeds()``.

    python fuzz/make_seeds.py [--check]

Seeds are valid inputs made by the codecs themselves (requests, responses, frames, configs),
encoded in the harness's input layout; re-run this after changing how a harness reads its
input. ``--check`` only compares (``tests/test_fuzz_harnesses.py`` does the same).
Needs no atheris.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import CORPUS_DIR
from run import HARNESSES


def expected(name: str) -> dict[str, bytes]:
    module = importlib.import_module(f"fuzz_{name}")
    return {f"seed-{label}": data for label, data in module.seeds().items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for name in HARNESSES:
        directory = CORPUS_DIR / name
        wanted = expected(name)
        present = {p.name: p.read_bytes() for p in directory.glob("seed-*")}
        if present == wanted:
            continue
        stale.append(name)
        if check:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        for file_name in present.keys() - wanted.keys():
            (directory / file_name).unlink()
        for file_name, data in wanted.items():
            (directory / file_name).write_bytes(data)
        print(f"{name}: wrote {len(wanted)} seeds")
    if check and stale:
        print(f"stale seed corpora: {', '.join(stale)} (run python fuzz/make_seeds.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
