"""V2Ray's JSON dialect, parsed into a tree that remembers where every value came from.

V2Ray 4.34 (``infra/conf/json/reader.go``) runs the file through a comment filter and then
hands it to Go's ``encoding/json`` (docs/protocols.md section 4.1). We do the same in two steps:

1. :func:`strip_comments` mirrors the Go filter's state machine: ``// ...`` and ``# ...``
   to the end of the line and ``/* ... */`` are removed outside double- and single-quoted
   strings. Unlike the Go filter (which deletes them), we overwrite comment characters
   with spaces and keep newlines, so the line *and* column of everything after a comment
   stay those of the original file.
2. :func:`parse` is a strict recursive-descent JSON parser (no trailing commas, no single
   quotes, Go's string and number grammar) that builds :class:`JValue` nodes carrying a
   1-based line and column. The standard library's ``json`` cannot report positions.

Go quirks kept on purpose: text after the first top-level value is ignored (``json.Decoder``
reads one value; we record it in :attr:`Document.trailing`); a lone ``/`` or ``\\`` at the very
end of the file vanishes in the filter. Object keys are matched case-insensitively, like
Go's struct decoding; for duplicate keys the last one wins (:meth:`JObject.get`).

Only :class:`~raybridge.errors.ConfigError` (here :class:`ConfigSyntaxError`) leaves this
module, whatever the input.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from raybridge.errors import ConfigError

_T = TypeVar("_T")

__all__ = [
    "MAX_DEPTH",
    "ConfigSyntaxError",
    "Document",
    "JArray",
    "JBool",
    "JNull",
    "JNumber",
    "JObject",
    "JString",
    "JValue",
    "fold_key",
    "parse",
    "parse_document",
    "strip_comments",
]

#: Deepest nesting of arrays/objects we accept. Real configs nest about 8 deep; the limit
#: keeps hostile input from exhausting the Python stack (Go's decoder stops at 10000).
MAX_DEPTH = 200


class ConfigSyntaxError(ConfigError):
    """The file is not valid V2Ray JSON. ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, *, file: str | None, line: int, column: int) -> None:
        super().__init__(
            f"failed to read config file at line {line} char {column}: {message}",
            file=file,
            line=line,
        )
        self.column = column
        self.reason = message


# --------------------------------------------------------------------------- nodes


class JValue:
    """A parsed JSON value with the 1-based line and column where it starts."""

    __slots__ = ("col", "line")

    kind = "value"

    def __init__(self, line: int, col: int) -> None:
        self.line = line
        self.col = col

    def to_python(self) -> object:
        """The plain Python value (dicts keep the last of duplicate keys)."""
        raise NotImplementedError


class JNull(JValue):
    __slots__ = ()
    kind = "null"

    def to_python(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"JNull@{self.line}:{self.col}"


class _JScalar(JValue, Generic[_T]):
    """A value held as one Python scalar: :class:`JBool`, :class:`JNumber`, :class:`JString`."""

    __slots__ = ("value",)

    def __init__(self, value: _T, line: int, col: int) -> None:
        super().__init__(line, col)
        self.value = value

    def to_python(self) -> _T:
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})@{self.line}:{self.col}"


class JBool(_JScalar[bool]):
    __slots__ = ()
    kind = "boolean"


class JNumber(_JScalar[int | float]):
    """A number; ``raw`` is its text. ``is_integer`` is True only for integer *literals*
    (no fraction, no exponent): Go refuses ``80.0`` or ``8e1`` for an integer field."""

    __slots__ = ("is_integer", "raw")
    kind = "number"

    def __init__(self, raw: str, line: int, col: int) -> None:
        is_integer = not any(c in raw for c in ".eE")
        super().__init__(_number(raw, is_integer), line, col)
        self.raw = raw
        self.is_integer = is_integer

    def __repr__(self) -> str:
        return f"JNumber({self.raw})@{self.line}:{self.col}"


def _number(raw: str, is_integer: bool) -> int | float:
    if not is_integer:
        return float(raw)  # "1e999" -> inf; never raises for the JSON grammar
    # Python refuses to convert very long digit strings (int_max_str_digits); no config
    # field takes anything near 10**40, so clamp instead of converting.
    if len(raw.lstrip("-")) > 40:
        return -(10**40) if raw.startswith("-") else 10**40
    return int(raw)


class JString(_JScalar[str]):
    __slots__ = ()
    kind = "string"


class JArray(JValue):
    __slots__ = ("items",)
    kind = "array"

    def __init__(self, items: list[JValue], line: int, col: int) -> None:
        super().__init__(line, col)
        self.items = items

    def __iter__(self) -> Iterator[JValue]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def to_python(self) -> list[object]:
        return [item.to_python() for item in self.items]

    def __repr__(self) -> str:
        return f"JArray(len={len(self.items)})@{self.line}:{self.col}"


def fold_key(key: str) -> str:
    """Case folding for key matching as Go's ``encoding/json`` does it for struct fields.

    Go folds ASCII letters and, in its simple Unicode folding, the Kelvin sign (U+212A, which
    ``str.lower`` already maps to ``k``) and the long s (U+017F) onto ASCII letters.
    """
    return key.lower().replace("\u017f", "s")


class JObject(JValue):
    """An object. ``items`` keeps every ``(key, value)`` pair in file order, duplicates too."""

    __slots__ = ("_index", "items")
    kind = "object"

    def __init__(self, items: list[tuple[JString, JValue]], line: int, col: int) -> None:
        super().__init__(line, col)
        self.items = items
        index: dict[str, tuple[JString, JValue]] = {}
        for key, value in items:
            index[fold_key(key.value)] = (key, value)  # last wins, like Go
        self._index = index

    def entry(self, name: str) -> tuple[JString, JValue] | None:
        """The last ``(key, value)`` whose key equals ``name`` case-insensitively."""
        return self._index.get(fold_key(name))

    def get(self, name: str) -> JValue | None:
        """The value of key ``name`` matched case-insensitively (last duplicate wins)."""
        found = self._index.get(fold_key(name))
        return None if found is None else found[1]

    def get_exact(self, name: str) -> JValue | None:
        """The value of key ``name`` matched exactly (for Go maps, which do not fold)."""
        result: JValue | None = None
        for key, value in self.items:
            if key.value == name:
                result = value
        return result

    def duplicate_keys(self) -> list[JString]:
        """Keys that are shadowed by a later key folding to the same name."""
        return [key for key, _ in self.items if self._index[fold_key(key.value)][0] is not key]

    def __len__(self) -> int:
        return len(self.items)

    def to_python(self) -> dict[str, object]:
        return {key.value: value.to_python() for key, value in self.items}

    def __repr__(self) -> str:
        return f"JObject(keys={[k.value for k, _ in self.items]})@{self.line}:{self.col}"


# --------------------------------------------------------------------------- comments

_PLAIN = re.compile(r"[^\"'\\#/]*")
_NOT_NEWLINE = re.compile(r"[^\n]")


def _blank(text: str) -> str:
    return _NOT_NEWLINE.sub(" ", text)


def _quoted_end(text: str, start: int, quote: str) -> int:
    """Index just past the string that opens at ``start`` (Go filter rules: backslash
    escapes the next character; a string may span lines; EOF ends it)."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == quote:
            return i + 1
        else:
            i += 1
    return n


def strip_comments(text: str) -> str:
    """Blank out V2Ray comments (``//``, ``#``, ``/* */``) outside quoted strings.

    The result has the same length and the same newlines as ``text``.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        m = _PLAIN.match(text, i)
        assert m is not None  # the pattern matches the empty string
        if m.end() > i:
            out.append(m.group())
            i = m.end()
            if i >= n:
                break
        c = text[i]
        if c in "\"'":
            end = _quoted_end(text, i, c)
            out.append(text[i:end])
            i = end
        elif c == "\\":
            # Outside strings the filter copies a backslash and the next character as is;
            # a backslash at the very end of the input is dropped.
            if i + 1 < n:
                out.append(text[i : i + 2])
            else:
                out.append(" ")
            i += 2
        elif c == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(_blank(text[i:end]))
            i = end
        else:  # "/"
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt == "/":
                end = text.find("\n", i)
                end = n if end < 0 else end
                out.append(_blank(text[i:end]))
                i = end
            elif nxt == "*":
                close = text.find("*/", i + 2)
                end = n if close < 0 else close + 2
                out.append(_blank(text[i:end]))
                i = end
            elif nxt == "":
                out.append(" ")  # a lone "/" at EOF vanishes in the Go filter
                i += 1
            else:
                # "/x": both copied, and x is not interpreted (even a quote); the JSON
                # parser then stops at the "/" anyway.
                out.append(text[i : i + 2])
                i += 2
    return "".join(out)


# --------------------------------------------------------------------------- parser

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STR_CHUNK = re.compile(r'[^"\\\x00-\x1f]*')
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _quote_char(c: str) -> str:
    """Go's ``quoteChar``: how encoding/json names a bad character in its messages."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    r = repr(c)
    return "'" + r[1:-1] + "'"


@dataclass(slots=True)
class Document:
    """A parsed file: the top-level value and any text Go would ignore after it."""

    value: JValue
    trailing: tuple[int, int] | None  # (line, col) of ignored trailing text, if any


class _Parser:
    __slots__ = ("file", "line_starts", "n", "text")

    def __init__(self, text: str, file: str | None) -> None:
        self.text = text
        self.n = len(text)
        self.file = file
        starts = [0]
        find = text.find
        pos = find("\n")
        while pos >= 0:
            starts.append(pos + 1)
            pos = find("\n", pos + 1)
        self.line_starts = starts

    def where(self, pos: int) -> tuple[int, int]:
        idx = bisect.bisect_right(self.line_starts, pos) - 1
        return idx + 1, pos - self.line_starts[idx] + 1

    def fail(self, pos: int, message: str) -> ConfigSyntaxError:
        line, col = self.where(pos)
        return ConfigSyntaxError(message, file=self.file, line=line, column=col)

    def bad_char(self, pos: int, context: str) -> ConfigSyntaxError:
        if pos >= self.n:
            return self.fail(pos, "unexpected end of JSON input")
        return self.fail(pos, f"invalid character {_quote_char(self.text[pos])} {context}")

    def skip_ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        assert m is not None
        return m.end()

    def value(self, pos: int, depth: int) -> tuple[JValue, int]:
        """Parse one value at ``pos`` (whitespace already skipped)."""
        text = self.text
        if pos >= self.n:
            raise self.fail(pos, "unexpected end of JSON input")
        c = text[pos]
        if c == "{":
            return self.obj(pos, depth + 1)
        if c == "[":
            return self.arr(pos, depth + 1)
        if c == '"':
            s, end = self.string(pos)
            line, col = self.where(pos)
            return JString(s, line, col), end
        if c == "-" or "0" <= c <= "9":
            return self.number(pos)
        for word, node_value in (("true", True), ("false", False), ("null", None)):
            if c == word[0]:
                for k in range(1, len(word)):
                    p = pos + k
                    if p >= self.n or text[p] != word[k]:
                        raise self.bad_char(p, f"in literal {word} (expecting '{word[k]}')")
                line, col = self.where(pos)
                node: JValue = (
                    JNull(line, col) if node_value is None else JBool(node_value, line, col)
                )
                return node, pos + len(word)
        raise self.bad_char(pos, "looking for beginning of value")

    def number(self, pos: int) -> tuple[JValue, int]:
        text = self.text
        m = _NUMBER.match(text, pos)
        if m is None:
            # Only "-" followed by a non-digit fails to match at all.
            raise self.bad_char(pos + 1, "in numeric literal")
        end = m.end()
        if end < self.n:
            c = text[end]
            raw = m.group()
            if c == "." and "." not in raw and "e" not in raw.lower():
                raise self.bad_char(end + 1, "after decimal point in numeric literal")
            if c in "eE" and "e" not in raw.lower():
                p = end + 1
                if p < self.n and text[p] in "+-":
                    p += 1
                raise self.bad_char(p, "in exponent of numeric literal")
        line, col = self.where(pos)
        return JNumber(m.group(), line, col), end

    def string(self, pos: int) -> tuple[str, int]:
        """Parse the string opening at ``pos``; return its value and the index after it."""
        text = self.text
        parts: list[str] = []
        i = pos + 1
        while True:
            m = _STR_CHUNK.match(text, i)
            assert m is not None
            parts.append(m.group())
            i = m.end()
            if i >= self.n:
                raise self.fail(i, "unexpected end of JSON input")
            c = text[i]
            if c == '"':
                s = "".join(parts)
                if _SURROGATE.search(s):
                    s = self._fix_surrogates(s)
                return s, i + 1
            if c == "\\":
                if i + 1 >= self.n:
                    raise self.fail(i + 1, "unexpected end of JSON input")
                e = text[i + 1]
                if e in _ESCAPES:
                    parts.append(_ESCAPES[e])
                    i += 2
                elif e == "u":
                    h = _HEX4.match(text, i + 2)
                    if h is None:
                        p = i + 2
                        while p < i + 6 and p < self.n and text[p] in "0123456789abcdefABCDEF":
                            p += 1
                        raise self.bad_char(p, "in \\u hexadecimal character escape")
                    parts.append(chr(int(h.group(), 16)))
                    i += 6
                else:
                    raise self.bad_char(i + 1, "in string escape code")
            else:
                raise self.bad_char(i, "in string literal")

    @staticmethod
    def _fix_surrogates(s: str) -> str:
        # \uD83D\uDE00 pairs become one character; lone surrogates become U+FFFD (Go).
        out: list[str] = []
        i = 0
        n = len(s)
        while i < n:
            c = s[i]
            if "\ud800" <= c <= "\udbff" and i + 1 < n and "\udc00" <= s[i + 1] <= "\udfff":
                out.append(chr(0x10000 + ((ord(c) - 0xD800) << 10) + (ord(s[i + 1]) - 0xDC00)))
                i += 2
                continue
            out.append("\ufffd" if "\ud800" <= c <= "\udfff" else c)
            i += 1
        return "".join(out)

    def _check_depth(self, pos: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(pos, f"exceeded max depth ({MAX_DEPTH} nested arrays/objects)")

    def obj(self, pos: int, depth: int) -> tuple[JValue, int]:
        items: list[tuple[JString, JValue]] = []

        def member(i: int) -> int:
            if i >= self.n or self.text[i] != '"':
                raise self.bad_char(i, "looking for beginning of object key string")
            key_value, after = self.string(i)
            kline, kcol = self.where(i)
            i = self.skip_ws(after)
            if i >= self.n or self.text[i] != ":":
                raise self.bad_char(i, "after object key")
            value, end = self.value(self.skip_ws(i + 1), depth)
            items.append((JString(key_value, kline, kcol), value))
            return end

        end = self._sequence(pos, depth, "}", member, "after object key:value pair")
        line, col = self.where(pos)
        return JObject(items, line, col), end

    def arr(self, pos: int, depth: int) -> tuple[JValue, int]:
        items: list[JValue] = []

        def element(i: int) -> int:
            value, end = self.value(i, depth)
            items.append(value)
            return end

        end = self._sequence(pos, depth, "]", element, "after array element")
        line, col = self.where(pos)
        return JArray(items, line, col), end

    def _sequence(
        self, pos: int, depth: int, close: str, item: Callable[[int], int], after: str
    ) -> int:
        """The comma-separated items of the object or array whose bracket is at ``pos``,
        each read by ``item`` (from its first character to just after it); returns where
        the text after ``close`` starts. ``after``: what a bad separator is reported as."""
        self._check_depth(pos, depth)
        text = self.text
        i = self.skip_ws(pos + 1)
        if i < self.n and text[i] == close:
            return i + 1
        while True:
            i = self.skip_ws(item(i))
            if i < self.n and text[i] == ",":
                i = self.skip_ws(i + 1)
                continue
            if i < self.n and text[i] == close:
                return i + 1
            raise self.bad_char(i, after)


def parse_document(text: str, file: str | None = None) -> Document:
    """Strip comments and parse ``text``; report text after the top-level value.

    A leading UTF-8 byte-order mark is skipped (Go would reject it; editors on Windows
    write it).
    """
    if text.startswith("\ufeff"):
        text = " " + text[1:]
    parser = _Parser(strip_comments(text), file)
    start = parser.skip_ws(0)
    if start >= parser.n:
        # Go: "failed to read config file > EOF"
        raise parser.fail(start, "unexpected end of JSON input (the file is empty)")
    value, end = parser.value(start, 0)
    rest = parser.skip_ws(end)
    trailing = parser.where(rest) if rest < parser.n else None
    return Document(value, trailing)


def parse(text: str, file: str | None = None) -> JValue:
    """Parse V2Ray JSON ``text`` (comments allowed) into position-carrying nodes."""
    return parse_document(text, file).value
