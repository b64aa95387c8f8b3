"""The comment-tolerant, position-keeping JSON reader (raybridge.config.jsonc)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raybridge.config.jsonc import (
    MAX_DEPTH,
    ConfigSyntaxError,
    JArray,
    JBool,
    JNull,
    JNumber,
    JObject,
    JString,
    parse,
    parse_document,
    strip_comments,
)
from raybridge.errors import ConfigError


def syntax_error(text: str) -> ConfigSyntaxError:
    with pytest.raises(ConfigSyntaxError) as info:
        parse(text, "x.json")
    return info.value


# --------------------------------------------------------------------------- comments


def test_line_comments_both_styles() -> None:
    text = '{\n  "a": 1, // one\n  # a hash comment\n  "b": 2 # two\n}'
    node = parse(text)
    assert isinstance(node, JObject)
    assert node.to_python() == {"a": 1, "b": 2}


def test_block_comment_spanning_lines_keeps_line_numbers() -> None:
    text = '{\n/* line 2\n line 3\n line 4 */ "a":\n  true}'
    node = parse(text)
    assert isinstance(node, JObject)
    key, value = node.items[0]
    assert (key.line, key.col) == (4, 12)
    assert (value.line, value.col) == (5, 3)


def test_comment_markers_inside_strings_are_kept() -> None:
    text = '{"url": "http://x/#frag", "c": "/* not */", "h": "# no"}'
    assert parse(text).to_python() == {"url": "http://x/#frag", "c": "/* not */", "h": "# no"}


def test_escaped_quote_does_not_end_string_for_the_filter() -> None:
    text = r'{"a": "say \"// hi\" # x"}'
    assert parse(text).to_python() == {"a": 'say "// hi" # x'}


def test_strip_comments_preserves_length_and_newlines() -> None:
    text = 'a // x\nb # y\r\nc /* p\nq */ d "/*s*/"'
    out = strip_comments(text)
    assert len(out) == len(text)
    assert [i for i, c in enumerate(out) if c == "\n"] == [
        i for i, c in enumerate(text) if c == "\n"
    ]
    assert out.split() == ["a", "b", "c", "d", '"/*s*/"']


def test_block_comment_edge_cases() -> None:
    assert parse("/**/1").to_python() == 1
    assert parse("/***/ 2").to_python() == 2
    # "/*/" does not close the comment
    assert parse("/*/ 3 */ 4").to_python() == 4
    # an unclosed block comment swallows the rest
    err = syntax_error("[1, /* 2 ]")
    assert "unexpected end of JSON input" in err.reason


def test_go_filter_quirks_at_eof() -> None:
    # V2Ray's filter drops a trailing lone "/" or "\"; so do we.
    assert parse('{"a": 1}/').to_python() == {"a": 1}
    assert parse('{"a": 1}\\').to_python() == {"a": 1}


def test_single_quotes_are_rejected_but_protect_comment_markers() -> None:
    err = syntax_error("{'a': 1}")
    assert err.reason == "invalid character '\\'' looking for beginning of object key string"
    assert (err.line, err.column) == (1, 2)


# --------------------------------------------------------------------------- values, positions


def test_all_value_kinds_with_positions() -> None:
    text = (
        '{\n "s": "x",\n "n": -1.5e3,\n "i": 42,\n "t": true,\n "f": false,\n "z": null,\n "a": []}'
    )
    node = parse(text)
    assert isinstance(node, JObject)
    kinds = {k.value: type(v) for k, v in node.items}
    assert kinds == {
        "s": JString,
        "n": JNumber,
        "i": JNumber,
        "t": JBool,
        "f": JBool,
        "z": JNull,
        "a": JArray,
    }
    lines = {k.value: v.line for k, v in node.items}
    assert lines == {"s": 2, "n": 3, "i": 4, "t": 5, "f": 6, "z": 7, "a": 8}
    n = node.get("n")
    i = node.get("i")
    assert isinstance(n, JNumber) and not n.is_integer and n.value == -1500.0
    assert isinstance(i, JNumber) and i.is_integer and i.value == 42
    assert (node.line, node.col) == (1, 1)


def test_string_escapes_and_surrogates() -> None:
    text = r'["\"\\\/\b\f\n\r\t", "\u00e9\ud83d\ude00", "\ud800x", "\uDC00"]'
    assert parse(text).to_python() == ['"\\/\b\f\n\r\t', "é😀", "\ufffdx", "\ufffd"]


def test_huge_integer_is_clamped_not_an_exception() -> None:
    node = parse("1" * 5000)
    assert isinstance(node, JNumber) and node.value == 10**40
    assert parse("1e999").to_python() == float("inf")


def test_case_insensitive_get_and_last_duplicate_wins() -> None:
    node = parse('{"Port": 1, "PROTOCOL": "x", "port": 2, "Tag": "a"}')
    assert isinstance(node, JObject)
    assert node.get("port").to_python() == 2  # type: ignore[union-attr]
    assert node.get("protocol").to_python() == "x"  # type: ignore[union-attr]
    assert node.get("missing") is None
    assert [k.value for k in node.duplicate_keys()] == ["Port"]
    assert node.get_exact("Port").to_python() == 1  # type: ignore[union-attr]


def test_go_unicode_folding_of_keys() -> None:
    # Go folds the Kelvin sign onto "k" and the long s onto "s".
    node = parse('{"\u212aey": 1, "\u017fettings": 2}')
    assert isinstance(node, JObject)
    assert node.get("key").to_python() == 1  # type: ignore[union-attr]
    assert node.get("settings").to_python() == 2  # type: ignore[union-attr]


def test_trailing_text_is_reported_not_fatal() -> None:
    doc = parse_document('{"a": 1}\n  garbage ]]')
    assert doc.value.to_python() == {"a": 1}
    assert doc.trailing == (2, 3)
    assert parse_document('{"a": 1} // done\n').trailing is None


def test_bom_is_skipped() -> None:
    assert parse('\ufeff{"a": 1}').to_python() == {"a": 1}


# --------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "line", "col", "reason"),
    [
        ('{"a": 1,}', 1, 9, "invalid character '}' looking for beginning of object key string"),
        ("[1, 2,]", 1, 7, "invalid character ']' looking for beginning of value"),
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "invalid character '\"' after object key:value pair"),
        ('{"a" 1}', 1, 6, "invalid character '1' after object key"),
        ("[1 2]", 1, 4, "invalid character '2' after array element"),
        ('{"a": tru}', 1, 10, "invalid character '}' in literal true (expecting 'e')"),
        ('{"a": nul', 1, 10, "unexpected end of JSON input"),
        ('{"a": -x}', 1, 8, "invalid character 'x' in numeric literal"),
        ('{"a": 1.}', 1, 9, "invalid character '}' after decimal point in numeric literal"),
        ('{"a": 1e+}', 1, 10, "invalid character '}' in exponent of numeric literal"),
        ('{"a": 01}', 1, 8, "invalid character '1' after object key:value pair"),
        ('{"a": "x\ny"}', 1, 9, "invalid character '\\n' in string literal"),
        ('{"a": "\\x"}', 1, 9, "invalid character 'x' in string escape code"),
        ('{"a": "\\u12g4"}', 1, 12, "invalid character 'g' in \\u hexadecimal character escape"),
        ('{"a": "abc', 1, 11, "unexpected end of JSON input"),
        ("", 1, 1, "unexpected end of JSON input (the file is empty)"),
        ("  // only a comment\n", 2, 1, "unexpected end of JSON input (the file is empty)"),
        ('{\n  "a": 1 / 2\n}', 2, 10, "invalid character '/' after object key:value pair"),
    ],
)
def test_syntax_errors(text: str, line: int, col: int, reason: str) -> None:
    err = syntax_error(text)
    assert (err.line, err.column, err.reason) == (line, col, reason)
    assert err.file == "x.json"
    assert (
        str(err) == f"x.json:{line}: failed to read config file at line {line} char {col}: {reason}"
    )
    assert isinstance(err, ConfigError)


def test_column_matches_v2ray_char_for_trailing_comma() -> None:
    # v2ray 4.34 says "failed to read config file at line 1 char 37" for this input.
    err = syntax_error('{"outbounds":[{"protocol":"freedom",}]}')
    assert (err.line, err.column) == (1, 37)


def test_columns_are_not_shifted_by_comments() -> None:
    err = syntax_error('{ /* comment */ "a": 1,, }')
    assert err.column == 24


def test_depth_limit() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert isinstance(parse(ok), JArray)
    err = syntax_error("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert "exceeded max depth" in err.reason
    deep_objects = '{"a":' * 5000 + "1" + "}" * 5000
    assert "exceeded max depth" in syntax_error(deep_objects).reason


# --------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.sampled_from([None, 0, 2]))
@settings(max_examples=200, deadline=None)
def test_round_trip_against_stdlib(value: object, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert parse(text).to_python() == json.loads(text)


@given(json_values)
@settings(max_examples=100, deadline=None)
def test_round_trip_with_comments_between_tokens(value: object) -> None:
    text = json.dumps(value, indent=1)
    commented = "\n".join(
        line + " // c" if i % 2 else "# h\n" + line for i, line in enumerate(text.split("\n"))
    )
    assert parse("/* start */" + commented).to_python() == json.loads(text)


@given(st.text(alphabet=st.sampled_from("{}[]\":,/*#\\'\n tfnrue0123456789.-+eE ax"), max_size=60))
@settings(max_examples=500, deadline=None)
def test_json_like_text_gives_value_or_syntax_error(text: str) -> None:
    try:
        parse(text, "f.json")
    except ConfigSyntaxError as e:
        assert e.line is not None and e.line >= 1 and e.column >= 1


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text_gives_value_or_syntax_error(text: str) -> None:
    with contextlib.suppress(ConfigSyntaxError):
        parse_document(text, "f.json")
