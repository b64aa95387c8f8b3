"""Every field the config model parses reaches code that uses it (issue 14).

``sniffing`` was parsed into ``InboundConfig`` and never read; ``proxySettings`` and
``followRedirect`` likewise. This test walks every dataclass of the config model (those of
``raybridge.config.model`` and any reachable from :class:`Config` through its fields' types)
and fails for a field that no code outside the config *parsers* reads: the runtime (node,
proxies, transports, router, CLI) and the model's own methods count; the modules that build
the model from JSON, merge it or check it on paper (``raybridge test``) do not, since a field
read only there still changes nothing a node does.

A read is an attribute access ``x.name`` (load context) or the string ``"name"`` (tables
such as the router's ``_CONDITIONS`` read fields with ``getattr``). This is by name, not by
type: a field whose name some other attribute also has passes by coincidence. It does
catch what this issue is about: a new, specifically named field that nothing uses
(``test_a_field_nobody_reads_is_caught`` shows it).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path

import raybridge
import raybridge.config.model as model

SRC = Path(raybridge.__file__).resolve().parent

#: Modules that parse, merge or check the config: reads there do not count.
PARSERS = frozenset(
    {
        "config/build.py",
        "config/settings.py",
        "config/stream.py",
        "config/rules.py",
        "config/fields.py",
        "config/jsonc.py",
        "config/loader.py",
        "config/checks.py",
        "config/simulate.py",
    }
)

#: Fields parsed today that no runtime code reads, each with why it may stay so for now.
#: test_allow_list_is_not_stale fails once an entry is reached.
ALLOWED = {
    # Reported, not acted on: the loader's warnings are printed by `raybridge test` and
    # `raybridge run` through config/checks.py (which merges them with its findings).
    "Config.warnings": "printed through config/checks.py findings()",
}


def model_classes() -> list[type]:
    """The model's dataclasses: those defined in config/model.py, and every dataclass
    reachable from ``Config`` through field types (wherever it is defined)."""
    found: dict[str, type] = {}
    for _, cls in inspect.getmembers(model, inspect.isclass):
        if dataclasses.is_dataclass(cls) and cls.__module__ == model.__name__:
            found[cls.__qualname__] = cls
    todo = [model.Config]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__qualname__, cls)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            for inner in _classes_in(hints.get(field.name)):
                if dataclasses.is_dataclass(inner) and inner.__qualname__ not in found:
                    found[inner.__qualname__] = inner
                    todo.append(inner)
    return list(found.values())


def _classes_in(hint: object) -> Iterator[type]:
    if isinstance(hint, type):
        yield hint
    origin = typing.get_origin(hint)
    if origin is not None or isinstance(hint, types.UnionType):
        for arg in typing.get_args(hint):
            yield from _classes_in(arg)


def runtime_reads(root: Path = SRC, skip: Iterable[str] = PARSERS) -> set[str]:
    """Attribute names read (and identifier-like strings written) in runtime code."""
    skipped = set(skip)
    names: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in skipped:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.isidentifier()
            ):
                names.add(node.value)
    return names


def unreached(classes: Iterable[type], reads: set[str]) -> list[str]:
    """``Class.field`` for every dataclass field whose name is never read."""
    return sorted(
        f"{cls.__qualname__}.{field.name}"
        for cls in classes
        for field in dataclasses.fields(cls)
        if field.name not in reads
    )


def test_every_parsed_field_reaches_code() -> None:
    missing = [name for name in unreached(model_classes(), runtime_reads()) if name not in ALLOWED]
    assert not missing, (
        "parsed into the config model but read by no runtime code (a setting accepted and "
        f"then ignored): {missing}. Use it, refuse it in the parser, or (another branch "
        "wires it) add it to ALLOWED with the reason."
    )


def test_allow_list_is_not_stale() -> None:
    classes = model_classes()
    known = {f"{c.__qualname__}.{f.name}" for c in classes for f in dataclasses.fields(c)}
    still_unreached = set(unreached(classes, runtime_reads()))
    stale = sorted(name for name in ALLOWED if name in known and name not in still_unreached)
    assert not stale, f"reached now, remove from ALLOWED: {stale}"


def test_the_walk_finds_the_nested_settings() -> None:
    names = {cls.__qualname__ for cls in model_classes()}
    expected = {"Config", "InboundConfig", "DokodemoSettings", "SockOpt", "RaybridgeOptions"}
    assert expected <= names


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _NewSettings:
    follow_redirect: bool = False  # read by proxy/dokodemo.py
    knob_that_nobody_reads_yet: int = 0


def test_a_field_nobody_reads_is_caught(tmp_path: Path) -> None:
    """The check fails for a field that is parsed and never used, and passes once code
    reads it."""
    assert unreached([_NewSettings], runtime_reads()) == ["_NewSettings.knob_that_nobody_reads_yet"]
    (tmp_path / "use.py").write_text("def f(s):\n    return s.knob_that_nobody_reads_yet\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "build.py").write_text("x = s.follow_redirect\n")  # parser: no
    assert unreached([_NewSettings], runtime_reads(tmp_path)) == ["_NewSettings.follow_redirect"]
