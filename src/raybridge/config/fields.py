"""Typed access to parsed JSON with V2Ray's (Go ``encoding/json``) decoding rules.

Rules shared by every section (docs/protocols.md 4.1):

* keys match case-insensitively; for duplicate keys the last wins (with a warning);
* ``null`` means "absent" (Go leaves the field at its zero value);
* integer fields take integer literals only (``80.0``, ``8e1`` and ``"80"`` are refused, as
  Go refuses them), within the Go type's range;
* keys nobody asked for produce a :class:`ConfigWarning` (V2Ray ignores them silently).

Errors are :class:`ConfigError` with the file, the line of the offending value (or of the
object that lacks a key) and a JSON path such as ``inbounds[1].port``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from raybridge.address import normalize_ip as normalize_ip  # re-exported: build.py uses it
from raybridge.config.jsonc import JArray, JBool, JNumber, JObject, JString, JValue, fold_key
from raybridge.config.model import ConfigWarning, TransportDefaults
from raybridge.errors import ConfigError

UINT16 = 0xFFFF
UINT32 = 0xFFFFFFFF
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def describe(node: JValue) -> str:
    """A short rendering of a value for messages: ``"abc"``, ``80.5``, ``an object``."""
    if isinstance(node, JString):
        text = json.dumps(node.value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(node, JNumber):
        return node.raw if len(node.raw) <= 40 else node.raw[:37] + "..."
    if isinstance(node, JBool):
        return "true" if node.value else "false"
    if isinstance(node, JObject):
        return "an object"
    if isinstance(node, JArray):
        return "an array"
    return "null"


def describe_typed(node: JValue) -> str:
    """Like :func:`describe`, naming the JSON type: ``the number 5``, ``the string "a"``."""
    if isinstance(node, JString):
        return "the string " + describe(node)
    if isinstance(node, JNumber):
        return "the number " + describe(node)
    return describe(node)


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """An entry (an inbound, an outbound, a rule, a section...) that lenient loading left
    out because building it raised ``error``. ``tag`` is its ``"tag"`` as written (``""``
    if none could be read); ``node`` is the raw JSON, for checks that want to guess what
    was meant."""

    error: ConfigError
    kind: str
    path: str
    file: str
    line: int | None
    tag: str
    node: JValue | None


@dataclass(slots=True)
class Ctx:
    """Per-file state: the file name for messages, collected warnings, the environment
    (for ``"env:VAR"`` ports).

    ``skipped`` is ``None`` for normal, strict loading: the first :class:`ConfigError`
    propagates. ``raybridge test`` reloads a failing config with a list there (lenient
    loading): an entry whose build fails is left out and recorded, so that the checks can
    still run on the rest.
    """

    file: str
    environ: Mapping[str, str]
    warnings: list[ConfigWarning] = field(default_factory=list)
    skipped: list[Skipped] | None = None
    #: This file's top-level ``transport`` section (defaults for its streamSettings).
    transport: TransportDefaults | None = None

    def attempt(
        self, kind: str, path: str, node: JValue | None, build: Callable[[], T]
    ) -> T | None:
        """``build()``; when lenient, a :class:`ConfigError` is recorded and gives ``None``."""
        if self.skipped is None:
            return build()
        try:
            return build()
        except ConfigError as exc:
            tag = node.get("tag") if isinstance(node, JObject) else None
            self.skipped.append(
                Skipped(
                    error=exc,
                    kind=kind,
                    path=path,
                    file=self.file,
                    line=None if node is None else node.line,
                    tag=tag.value if isinstance(tag, JString) else "",
                    node=node,
                )
            )
            return None

    def error(self, node: JValue | None, path: str, message: str) -> ConfigError:
        return ConfigError(
            message, file=self.file, line=None if node is None else node.line, path=path
        )

    def warn(self, node: JValue | None, path: str, message: str) -> None:
        self.warnings.append(
            ConfigWarning(
                file=self.file, line=None if node is None else node.line, path=path, message=message
            )
        )

    # ---- value-level conversions (for array items and nested values)

    def expect_object(self, node: JValue, path: str, what: str = "an object") -> Obj:
        if not isinstance(node, JObject):
            raise self.error(node, path, f"expected {what}, got {describe_typed(node)}")
        return Obj(self, node, path)

    def expect_string(self, node: JValue, path: str) -> str:
        if not isinstance(node, JString):
            raise self.error(node, path, f"expected a string, got {describe_typed(node)}")
        return node.value

    def expect_bool(self, node: JValue, path: str) -> bool:
        if not isinstance(node, JBool):
            raise self.error(node, path, f"expected true or false, got {describe_typed(node)}")
        return node.value

    def expect_int(self, node: JValue, path: str, lo: int, hi: int) -> int:
        if not isinstance(node, JNumber) or not node.is_integer or not lo <= int(node.value) <= hi:
            raise self.error(
                node, path, f"expected an integer in {lo}..{hi}, got {describe_typed(node)}"
            )
        return int(node.value)

    def expect_array(self, node: JValue, path: str) -> JArray:
        if not isinstance(node, JArray):
            raise self.error(node, path, f"expected an array, got {describe_typed(node)}")
        return node

    def string_list(self, node: JValue, path: str) -> list[str]:
        """V2Ray's ``StringList``: an array of strings, or one string split at commas
        (without trimming)."""
        if isinstance(node, JString):
            return node.value.split(",")
        if isinstance(node, JArray):
            out: list[str] = []
            for i, item in enumerate(node.items):
                if not isinstance(item, JString):
                    raise self.error(
                        item, join(path, i), f"expected a string, got {describe_typed(item)}"
                    )
                out.append(item.value)
            return out
        raise self.error(
            node, path, f"expected a string or an array of strings, got {describe_typed(node)}"
        )


class Obj:
    """A JSON object being read field by field; remembers which keys were used so that
    :meth:`finish` can warn about the rest."""

    __slots__ = ("_used", "ctx", "node", "path")

    def __init__(self, ctx: Ctx, node: JObject, path: str) -> None:
        self.ctx = ctx
        self.node = node
        self.path = path
        self._used: set[str] = set()

    @property
    def line(self) -> int:
        return self.node.line

    def sub(self, name: str | int) -> str:
        return join(self.path, name)

    def error(self, message: str) -> ConfigError:
        """An error about this object as a whole (e.g. a missing key)."""
        return self.ctx.error(self.node, self.path, message)

    def missing(self, name: str) -> ConfigError:
        return self.error(f'"{name}" is missing')

    def ignore(self, *names: str) -> None:
        """Mark keys as known without reading them."""
        self._used.update(fold_key(n) for n in names)

    def get(self, name: str) -> JValue | None:
        """The value of ``name`` (case-insensitive, last duplicate wins); ``None`` if
        absent or ``null``."""
        self._used.add(fold_key(name))
        value = self.node.get(name)
        if value is None or value.kind == "null":
            return None
        return value

    def has(self, name: str) -> bool:
        value = self.node.get(name)
        return value is not None and value.kind != "null"

    def key_node(self, name: str) -> JString | None:
        entry = self.node.entry(name)
        return None if entry is None else entry[0]

    # ---- typed fields

    def string(self, name: str, default: str = "") -> str:
        value = self.get(name)
        return default if value is None else self.ctx.expect_string(value, self.sub(name))

    def opt_string(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is None else self.ctx.expect_string(value, self.sub(name))

    def required_string(self, name: str, *, non_empty: bool = True) -> str:
        value = self.get(name)
        if value is None:
            raise self.missing(name)
        text = self.ctx.expect_string(value, self.sub(name))
        if non_empty and not text:
            raise self.ctx.error(value, self.sub(name), f'"{name}" must not be empty')
        return text

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        return default if value is None else self.ctx.expect_bool(value, self.sub(name))

    def integer(self, name: str, lo: int, hi: int, default: int = 0) -> int:
        value = self.get(name)
        return default if value is None else self.ctx.expect_int(value, self.sub(name), lo, hi)

    def opt_integer(self, name: str, lo: int, hi: int) -> int | None:
        value = self.get(name)
        return None if value is None else self.ctx.expect_int(value, self.sub(name), lo, hi)

    def object(self, name: str) -> Obj | None:
        value = self.get(name)
        return None if value is None else self.ctx.expect_object(value, self.sub(name))

    def array(self, name: str) -> list[tuple[str, JValue]] | None:
        """The items of array ``name`` with their paths; ``None`` if absent."""
        value = self.get(name)
        if value is None:
            return None
        path = self.sub(name)
        arr = self.ctx.expect_array(value, path)
        return [(join(path, i), item) for i, item in enumerate(arr.items)]

    def objects(self, name: str) -> Iterator[Obj]:
        """Each item of array ``name`` as an :class:`Obj` (nothing if absent)."""
        for path, item in self.array(name) or ():
            yield self.ctx.expect_object(item, path)

    def string_list(self, name: str) -> list[str] | None:
        value = self.get(name)
        return None if value is None else self.ctx.string_list(value, self.sub(name))

    # ---- end

    def finish(self) -> None:
        """Warn about keys that were never read and about duplicate keys."""
        for key in self.node.duplicate_keys():
            self.ctx.warn(key, self.path, f'duplicate key "{key.value}": the last one wins')
        seen: set[str] = set()
        for key, _ in self.node.items:
            folded = fold_key(key.value)
            if folded in self._used or folded in seen:
                continue
            seen.add(folded)
            where = self.path or "top level"
            self.ctx.warn(key, where, f'unknown key "{key.value}" is ignored')


# --------------------------------------------------------------------------- addresses


def parse_address(text: str) -> str:
    """V2Ray's ``ParseAddress``: a canonical IP, or the domain as written (trimmed)."""
    ip = normalize_ip(text)
    if ip is not None:
        return ip
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    return text.strip()


# --------------------------------------------------------------------------- ports


def _port_number(text: str) -> int | None:
    """Go's ``PortFromString``: decimal digits only (leading zeros allowed), 0..65535."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value <= UINT16 else None


def string_port_range(ctx: Ctx, node: JValue, path: str, text: str) -> tuple[int, int]:
    """Go's ``parseStringPort``: ``"N"``, ``"A-B"``, ``"env:VAR"`` (the variable holding
    either form). The caller checks A <= B where V2Ray does."""
    shown = json.dumps(text, ensure_ascii=False)
    if text.startswith("env:"):
        var = text[4:]
        value = ctx.environ.get(var)
        if value is None:
            raise ctx.error(node, path, f"{shown}: environment variable {var} is not set")
        shown = f"{shown} (= {json.dumps(value, ensure_ascii=False)})"
        text = value
    first, sep, second = text.partition("-")
    lo = _port_number(first)
    hi = _port_number(second) if sep else lo
    if lo is None or hi is None:
        noun = "port range" if sep else "port"
        raise ctx.error(node, path, f"{shown} is not a {noun}")
    return lo, hi


def inbound_ports(ctx: Ctx, node: JValue, path: str) -> list[int]:
    """An inbound's ``port``: ``N``, ``"N"``, ``"A-B"`` or ``"env:VAR"``, expanded."""
    if isinstance(node, JNumber):
        if not node.is_integer or not 0 <= int(node.value) <= UINT16:
            raise ctx.error(node, path, f"{describe(node)} is not a port")
        return [int(node.value)]
    if not isinstance(node, JString):
        raise ctx.error(node, path, f"{describe(node)} is not a port")
    lo, hi = string_port_range(ctx, node, path, node.value)
    if lo > hi:
        raise ctx.error(node, path, f"{describe(node)} is not a valid port range ({lo} > {hi})")
    return list(range(lo, hi + 1))


def port_list(ctx: Ctx, node: JValue, path: str) -> list[tuple[int, int]]:
    """A routing rule's ``port`` / ``sourcePort`` (Go's ``PortList``): a number, or a string
    of comma-separated ports and ranges, each trimmed: ``"53,443,1000-2000"``."""
    if isinstance(node, JNumber):
        if not node.is_integer or not 0 <= int(node.value) <= UINT32:
            raise ctx.error(node, path, f"{describe(node)} is not a port")
        value = int(node.value)
        if value == 0:
            # V2Ray drops a numeric 0: the rule gets an empty port list (matches nothing).
            ctx.warn(node, path, "port 0 never matches")
            return []
        if value > UINT16:
            ctx.warn(node, path, f"port {value} is above 65535 and never matches")
        return [(value, value)]
    if not isinstance(node, JString):
        raise ctx.error(node, path, f"{describe(node)} is not a port or a list of ports")
    ranges: list[tuple[int, int]] = []
    for piece in node.value.split(","):
        item = piece.strip()
        if not item:
            continue
        if "-" in item:
            lo, hi = string_port_range(ctx, node, path, item)
            if lo > hi:
                ctx.warn(node, path, f'port range "{item}" is empty and never matches')
        else:
            # V2Ray decodes each item as a JSON number, so "053" is refused.
            if item != "0" and item.startswith("0"):
                raise ctx.error(node, path, f'"{item}" is not a port')
            port = _port_number(item)
            if port is None:
                raise ctx.error(node, path, f'"{item}" is not a port')
            lo = hi = port
        ranges.append((lo, hi))
    if not ranges:
        ctx.warn(node, path, "empty port list never matches")
    return ranges
