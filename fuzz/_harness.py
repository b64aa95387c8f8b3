"""What the atheris harnesses share (this module is not a harness itself).

**Input layout.** Every harness reads its choices (which codec, which options, where to cut
the stream) as integers with ``ConsumeIntInRange``, which libFuzzer's (and atheris')
FuzzedDataProvider takes from the *end* of the input, and then takes everything left as the
payload with ``ConsumeBytes`` (from the *front*)::

    input = payload ‖ choices, last choice first, each big-endian in ceil(bits(range)/8) bytes

Harness code asks for choices by name through a :class:`Chooser`; :class:`SeedChooser`
answers the same questions from a dict and records them, so a seed is built by running the
harness's own parsing code (no second copy of the layout to keep in step).

**Without atheris.** The harness modules import and run without atheris (the test suite
runs their ``TestOneInput`` on the seeds and on random bytes): ``FuzzedDataProvider`` falls
back to :class:`PurePythonProvider`, which consumes bytes exactly as atheris does for the two
methods used here (``tests/test_fuzz_harnesses.py`` compares them when atheris is installed),
and :func:`instrumented` only instruments when a harness runs as ``__main__``.

**Determinism.** Nothing here or in a harness reads the clock or ``os.urandom``: time is a
constant and randomness a :class:`DetRandom`, new for every input, so an input that crashes
once crashes again when run alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"

# A checkout that was not `pip install -e`'d: use its src/ (harmless when installed).
if importlib.util.find_spec("raybridge") is None:  # pragma: no cover - depends on the setup
    sys.path.insert(0, str(FUZZ_DIR.parent / "src"))

T = TypeVar("T")

#: Largest cut position a harness asks for; cuts are taken modulo the stream length + 1.
MAX_CUT = 0xFFFF


class Provider(Protocol):
    """The part of ``atheris.FuzzedDataProvider`` the harnesses use."""

    def ConsumeIntInRange(self, lo: int, hi: int, /) -> int: ...
    def ConsumeBytes(self, count: int, /) -> bytes: ...
    def remaining_bytes(self) -> int: ...


class PurePythonProvider:
    """``atheris.FuzzedDataProvider``'s ``ConsumeIntInRange``/``ConsumeBytes``, in Python.

    As libFuzzer: an integer takes as many bytes from the end as its range needs (fewer if
    the input runs out), most significant first, and is reduced modulo the range size.
    """

    __slots__ = ("_data", "_end", "_start")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._start = 0
        self._end = len(self._data)

    def ConsumeIntInRange(self, lo: int, hi: int, /) -> int:
        if lo > hi:
            raise ValueError("lo must be <= hi")
        span = hi - lo
        result = 0
        offset = 0
        while (span >> offset) > 0 and self._end > self._start:
            self._end -= 1
            result = (result << 8) | self._data[self._end]
            offset += 8
        return lo + result % (span + 1)

    def ConsumeBytes(self, count: int, /) -> bytes:
        count = max(0, min(count, self._end - self._start))
        out = self._data[self._start : self._start + count]
        self._start += count
        return out

    def remaining_bytes(self) -> int:
        return self._end - self._start


def _atheris() -> Any:
    try:
        import atheris
    except ImportError:
        return None
    return atheris


def FuzzedDataProvider(data: bytes) -> Provider:
    """``atheris.FuzzedDataProvider(data)`` if atheris is installed, else the fallback."""
    atheris = _atheris()
    if atheris is None:
        return PurePythonProvider(data)
    provider: Provider = atheris.FuzzedDataProvider(data)
    return provider


def instrumented(module_name: str) -> contextlib.AbstractContextManager[object]:
    """``atheris.instrument_imports()`` for the raybridge (and h11) imports of a harness that
    runs as a script; a no-op when the harness is merely imported (tests, make_seeds)."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    atheris = _atheris()
    if atheris is None:
        sys.exit("atheris is not installed: pip install -e '.[fuzz]'  (see fuzz/README.md)")
    manager: contextlib.AbstractContextManager[object] = atheris.instrument_imports(
        include=["raybridge", "h11"]
    )
    return manager


# --- choices ---------------------------------------------------------------------------------


class Chooser:
    """Named choices read from a provider (the names matter only to :class:`SeedChooser`)."""

    __slots__ = ("_fdp",)

    def __init__(self, fdp: Provider) -> None:
        self._fdp = fdp

    def int(self, name: str, lo: int, hi: int) -> int:
        return self._fdp.ConsumeIntInRange(lo, hi)

    def flag(self, name: str) -> bool:
        return bool(self.int(name, 0, 1))

    def rest(self) -> bytes:
        return self._fdp.ConsumeBytes(self._fdp.remaining_bytes())


class SeedChooser(Chooser):
    """Answers choices from ``values`` (``lo`` for a name not given) and records them, so
    :meth:`encode` can write the input that makes a real provider give the same answers."""

    __slots__ = ("_payload", "_record", "_values")

    def __init__(self, values: Mapping[str, int], payload: bytes) -> None:
        self._values = dict(values)
        self._payload = payload
        self._record: list[tuple[int, int, int]] = []

    def int(self, name: str, lo: int, hi: int) -> int:
        value = self._values.pop(name, lo)
        if not lo <= value <= hi:
            raise ValueError(f"seed choice {name}={value} is outside {lo}..{hi}")
        self._record.append((value, lo, hi))
        return value

    def rest(self) -> bytes:
        return self._payload

    def encode(self) -> bytes:
        if self._values:
            raise ValueError(f"seed choices the harness never asked for: {sorted(self._values)}")
        tail = bytearray()
        for value, lo, hi in self._record:
            size = ((hi - lo).bit_length() + 7) // 8
            tail += (value - lo).to_bytes(size, "big")
        return self._payload + bytes(reversed(tail))


def seed_input(
    parse: Callable[[Chooser], object], values: Mapping[str, int], payload: bytes
) -> bytes:
    """The input for which ``parse`` (a harness's choice reader) sees ``values``, ``payload``."""
    chooser = SeedChooser(values, payload)
    parse(chooser)
    return chooser.encode()


def read_cuts(ch: Chooser, max_cuts: int = 8) -> list[int]:
    count = ch.int("ncuts", 0, max_cuts)
    return [ch.int(f"cut{i}", 0, MAX_CUT) for i in range(count)]


def cut_values(*cuts: int) -> dict[str, int]:
    """Seed choices for :func:`read_cuts`."""
    values = {"ncuts": len(cuts)}
    values.update({f"cut{i}": c for i, c in enumerate(cuts)})
    return values


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (each taken modulo ``len(data) + 1``); at least one piece."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces: list[bytes] = []
    last = 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


# --- buffer types ----------------------------------------------------------------------------

#: How a harness hands a piece to a decoder: the codecs accept all three buffer types.
BUFFER_KINDS = ("bytes", "bytearray", "memoryview", "memoryview of a bytearray")


def read_buffer_kind(ch: Chooser) -> int:
    return ch.int("buffer", 0, len(BUFFER_KINDS) - 1)


def call_with(kind: int, piece: bytes, decode: Callable[[Any], T]) -> T:
    """``decode(piece)``, with ``piece`` as the buffer type ``BUFFER_KINDS[kind]``.

    A transport may reuse its receive buffer once the call returns, so a decoder must not
    keep (or return) a reference into a mutable one. After the call the bytearray is
    overwritten and emptied: if the decoder or its result still holds a view of it, emptying
    it fails and that is reported as a finding.
    """
    if kind == 0:
        return decode(piece)
    if kind == 2:
        return decode(memoryview(piece))
    buf = bytearray(piece)
    if kind == 1:
        result = decode(buf)
    else:
        view = memoryview(buf)
        try:
            result = decode(view)
        finally:
            view.release()
    buf[:] = b"\xa5" * len(buf)
    try:
        buf.clear()
    except BufferError:
        raise AssertionError(
            "the decoder kept a view of the caller's bytearray after returning"
        ) from None
    return result


# --- determinism -----------------------------------------------------------------------------


class DetRandom:
    """A deterministic ``urandom``: SHA-256 in counter mode over ``label``."""

    __slots__ = ("_buf", "_counter", "_label")

    def __init__(self, label: bytes = b"raybridge-fuzz") -> None:
        self._label = label
        self._counter = 0
        self._buf = bytearray()

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


# --- corpus files ----------------------------------------------------------------------------


def corpus_files(name: str) -> Iterator[Path]:
    """The committed seed files of harness ``name``, sorted."""
    directory = CORPUS_DIR / name
    if directory.is_dir():
        yield from sorted(p for p in directory.iterdir() if p.is_file())
