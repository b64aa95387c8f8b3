"""The atheris harnesses under fuzz/, exercised without atheris.

Each harness's ``TestOneInput`` runs on its committed seed corpus, on mutated seeds and on
random byte strings from a seeded ``random.Random``; any exception other than the codec's
own error (which the harness catches) fails the test, as it would crash the fuzzer. Also
checked: the seed files are what the harnesses generate (``python fuzz/make_seeds.py``),
valid seeds get past the handshake, outcomes do not depend on earlier inputs, the
pure-Python FuzzedDataProvider consumes bytes as atheris' does, and ``fuzz/run.py``
reads libFuzzer's output correctly.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))
try:
    import _harness
    import make_seeds
    import run as fuzz_run
finally:
    sys.path.remove(str(FUZZ_DIR))

NAMES = fuzz_run.HARNESSES
RANDOM_INPUTS = 200
MUTATED_INPUTS = 200


def harness(name: str) -> ModuleType:
    sys.path.insert(0, str(FUZZ_DIR))
    try:
        return importlib.import_module(f"fuzz_{name}")
    finally:
        sys.path.remove(str(FUZZ_DIR))


def seed_files(name: str) -> list[Path]:
    return list(_harness.corpus_files(name))


def test_every_harness_file_is_listed() -> None:
    files = {p.stem.removeprefix("fuzz_") for p in FUZZ_DIR.glob("fuzz_*.py")}
    assert files == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_seed_corpus_is_what_the_harness_generates(name: str) -> None:
    present = {p.name: p.read_bytes() for p in seed_files(name)}
    assert present == make_seeds.expected(name), "stale seeds: run python fuzz/make_seeds.py"


def test_seed_corpus_is_small() -> None:
    total = sum(p.stat().st_size for name in NAMES for p in seed_files(name))
    assert 0 < total < 200_000


@pytest.mark.parametrize("name", NAMES)
def test_valid_seeds_get_through(name: str) -> None:
    module = harness(name)
    for path in seed_files(name):
        outcome = module.run(path.read_bytes())
        label = path.name.removeprefix("seed-")
        if name == "config":
            assert outcome[1 if label.startswith("structured") else 0] == "config", label
        elif label != "junk":
            assert outcome and "error" not in outcome, (label, outcome)
            if name.startswith("vmess"):
                assert outcome[0] in ("RequestReceived", "ResponseReceived"), (label, outcome)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(out) + 1)
        if choice < 0.5 and out:
            out[position % len(out)] = rng.randrange(256)
        elif choice < 0.75:
            out[position:position] = rng.randbytes(rng.randint(1, 8))
        else:
            del out[position : position + rng.randint(1, 8)]
    return bytes(out)


@pytest.mark.parametrize("name", NAMES)
def test_test_one_input_on_seeds_mutations_and_random_bytes(name: str) -> None:
    module = harness(name)
    rng = random.Random(f"raybridge-fuzz-{name}")
    seeds = [p.read_bytes() for p in seed_files(name)]
    inputs = list(seeds)
    inputs += [_mutate(rng, rng.choice(seeds)) for _ in range(MUTATED_INPUTS)]
    inputs += [rng.randbytes(rng.randrange(400)) for _ in range(RANDOM_INPUTS)]
    inputs += [b"", b"\x00", b"\xff" * 64]
    for data in inputs:
        module.TestOneInput(data)


@pytest.mark.parametrize("name", ["vmess_server", "vmess_client_response", "mux", "socks"])
def test_outcome_does_not_depend_on_earlier_inputs(name: str) -> None:
    module = harness(name)
    seeds = [p.read_bytes() for p in seed_files(name)]
    first = [module.run(data) for data in seeds]
    again = [module.run(data) for data in reversed(seeds)][::-1]
    assert again == first


def test_pure_python_provider_matches_atheris() -> None:
    atheris = pytest.importorskip("atheris")
    rng = random.Random(7)
    spans = [0, 1, 2, 5, 255, 256, 65535, 65536, 2**24, 2**32 - 1, 2**40, 2**63]
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(12))
        real = atheris.FuzzedDataProvider(data)
        ours = _harness.PurePythonProvider(data)
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.7:
                lo = rng.choice([0, 1, -5, 1000])
                hi = lo + rng.choice(spans)
                assert ours.ConsumeIntInRange(lo, hi) == real.ConsumeIntInRange(lo, hi), data
            else:
                count = rng.randrange(8)
                assert ours.ConsumeBytes(count) == real.ConsumeBytes(count), data
            assert ours.remaining_bytes() == real.remaining_bytes()


def test_seed_chooser_encodes_what_a_provider_reads() -> None:
    def parse(ch: _harness.Chooser) -> list[object]:
        return [ch.int("a", 0, 1), ch.int("b", -3, 300), ch.int("c", 5, 5), ch.rest()]

    values = {"a": 1, "b": 299}
    data = _harness.seed_input(parse, values, b"payload")
    assert parse(_harness.Chooser(_harness.PurePythonProvider(data))) == [1, 299, 5, b"payload"]
    with pytest.raises(ValueError):
        _harness.seed_input(parse, {"b": 301}, b"")
    with pytest.raises(ValueError):
        _harness.seed_input(parse, {"unknown": 1}, b"")


def test_harness_helpers_work_without_atheris(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "atheris", None)  # makes `import atheris` fail
    assert isinstance(_harness.FuzzedDataProvider(b"x"), _harness.PurePythonProvider)
    assert isinstance(_harness.instrumented("fuzz_mux"), contextlib.nullcontext)
    with pytest.raises(SystemExit):
        _harness.instrumented("__main__")
    harness("control").TestOneInput(b"\x08\x01")


def test_split_and_det_random() -> None:
    assert _harness.split(b"abcdef", []) == [b"abcdef"]
    assert _harness.split(b"abcdef", [2, 11, 2]) == [b"ab", b"cd", b"ef"]
    assert _harness.split(b"", [5]) == [b"", b""]  # empty pieces are fed too
    assert _harness.DetRandom(b"x")(40) == _harness.DetRandom(b"x")(40)
    stream = _harness.DetRandom(b"x")
    assert stream(10) + stream(30) == _harness.DetRandom(b"x")(40)


def test_call_with_catches_a_decoder_that_keeps_the_callers_buffer() -> None:
    for kind in range(len(_harness.BUFFER_KINDS)):
        assert _harness.call_with(kind, b"abc", bytes) == b"abc"
    kept: list[memoryview] = []
    for kind in (1, 3):  # the mutable ones
        with pytest.raises(AssertionError, match="kept a view"):
            _harness.call_with(kind, b"abc", lambda buf: kept.append(memoryview(buf)))
        with pytest.raises(AssertionError, match="kept a view"):
            _harness.call_with(kind, b"abc", memoryview)


_DONE_LOG = """INFO: Seed: 1
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 56Mb
#4096\tpulse  cov: 493 ft: 968 corp: 88/7853b lim: 395 exec/s: 372 rss: 57Mb
Done 7555 runs in 21 second(s)
stat::number_of_executed_units: 7555
"""
_CRASH_LOG = """#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 56Mb
#1234\tNEW    cov: 30 ft: 40 corp: 5/20b lim: 4 exec/s: 0 rss: 56Mb
=== Uncaught Python exception: ===
IndexError: index out of range
Traceback (most recent call last):
==1== ERROR: libFuzzer: deadly signal
MS: 1 ChangeBit-; base unit: 0
artifact_prefix='fuzz/artifacts/mux-'; Test unit written to fuzz/artifacts/mux-crash-abc
"""


def test_run_py_reads_libfuzzer_output() -> None:
    done = fuzz_run._summarise("mux", 0, _DONE_LOG, 21.0)
    assert (done.ok, done.executions) == (True, 7555)
    assert "7555 execs" in done.line() and done.line().endswith("ok")
    crash = fuzz_run._summarise("mux", 1, _CRASH_LOG, 3.0)
    assert (crash.ok, crash.executions) == (False, 1234)
    assert (
        "IndexError: index out of range" in crash.detail
        and "fuzz/artifacts/mux-crash-abc" in crash.detail
    )
    timeout = fuzz_run._summarise(
        "mux", 1, "==7== ERROR: libFuzzer: timeout after 31 seconds\n", 40
    )
    assert "timeout after 31 seconds" in timeout.detail
    forked = fuzz_run._summarise("mux", 0, "#94409: cov: 309 ft: 295 corp: 94 exec/s 4964\n", 9)
    assert (forked.ok, forked.executions) == (True, 94409)
    killed = fuzz_run._summarise("mux", None, _CRASH_LOG, 200.0)
    assert not killed.ok and "did not finish" in killed.detail
