"""Edge validation (server/validation.py): pure, no server."""

from __future__ import annotations

import json
import time

import pytest

from voicefleet_inference.errors import InvalidRequest
from voicefleet_inference.server.errors import http_status
from voicefleet_inference.server.validation import (
    check_speakable_text,
    decode_json_object,
    find_unencodable,
    short_list,
    unique_query_params,
)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"input": "\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded lone surrogate
        (b'{"input": "\xff"}', "not valid UTF-8"),
        (b'{"input": "\\ud800"}', "input: a lone UTF-16 surrogate at character 0"),
        (b'{"a": {"b": ["ok", "x\\udfff"]}}', "a.b.1: a lone UTF-16 surrogate at character 1"),
        (b'{"\\ud800": 1}', "(parameter name)"),
        (b'{"speed": ' + b"9" * 5000 + b"}", "could not parse the JSON body"),
        (b'{"a": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nested too deeply"),
        (b"[1]", "must be an object"),
        (b"{oops", "could not parse"),
    ],
)
def test_bodies_the_core_cannot_take_are_400(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_json_object(body)
    assert fragment in info.value.message
    assert http_status(info.value)[0] == 400


def test_valid_body_and_surrogate_pairs_pass() -> None:
    assert decode_json_object(b'{"input": "caf\\u00e9 \\ud83d\\ude00"}') == {"input": "café 😀"}


def test_deep_values_are_walked_without_recursion() -> None:
    deep: object = "ok"
    for _ in range(50_000):
        deep = [deep]
    assert find_unencodable({"a": deep}) is None


@pytest.mark.parametrize("text", ["Hello\x00world.", "a\x07b", "a\x1bb", "a\x7fb", "a\x85b"])
def test_control_characters_are_refused_naming_the_code_point(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_speakable_text(text, "input")
    assert f"U+{ord(text[1 if text[0] == 'a' else 5]):04X}" in info.value.message
    assert info.value.param == "input"


def test_layout_whitespace_and_ordinary_unicode_are_speakable() -> None:
    check_speakable_text("Line one.\n\tLine two.\r\n Café, naïve, 東京.", "text")


def test_query_check_is_linear_and_its_error_short() -> None:
    items = [("text", "a")] * 14_000
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as info:
        unique_query_params(items, max_params=30_000)
    assert time.perf_counter() - started < 0.5
    assert info.value.message == "parameter(s) given more than once: 'text'"
    many = [(f"p{i}", "1") for i in range(14_000)]
    with pytest.raises(InvalidRequest, match="14000 query parameters given; this route takes at"):
        unique_query_params(many, max_params=26)
    assert unique_query_params([("a", "1"), ("b", "2")], 26) == {"a": "1", "b": "2"}


def test_short_list_is_bounded() -> None:
    names = [f"n{i}" for i in range(10_000)]
    assert short_list(names) == "'n0', 'n1', 'n2', 'n3', 'n4' and 9995 more"
    assert len(short_list(["x" * 10_000])) < 60
    assert json.dumps(short_list(["a", "b"])) == "\"'a', 'b'\""
