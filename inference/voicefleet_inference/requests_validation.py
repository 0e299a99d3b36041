"""Checks on client input that both HTTP edges make, so router and pod refuse alike.

Pure functions with no dependency on the server, the scheduler or the engines: the router
imports them too (it must refuse what the pod would, with the same 400, before holding a
request or sending it on). Why each rule:

* the body must be strict UTF-8 (``json.loads`` on bytes would accept an encoded surrogate
  such as ``ED A0 80``), and no string in it may hold a lone surrogate (``"\\ud800"``),
  which nothing downstream can encode (espeak, and the JSON of our own error body);
* a JSON parse that fails for any reason (an integer over Python's 4,300-digit limit,
  nesting deeper than the recursion limit) is a 400, not a 500;
* text to speak may not contain control characters other than tab, line feed and
  carriage return: espeak reads its input as a C string, so ``NUL`` ends the text and
  would silently drop the rest; the other controls have no spoken form either. A 400
  that points at the character is better than speaking part of the text;
* repeated or unknown query parameters are found in one linear pass and reported with a
  short list, so a URL with thousands of parameters costs milliseconds, not seconds, and
  the error does not echo the whole URL back;
* an error message quotes client input only as a short excerpt (:func:`excerpt`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from voicefleet_inference.errors import InvalidRequest

__all__ = [
    "ALLOWED_CONTROLS",
    "check_speakable_text",
    "decode_json_object",
    "excerpt",
    "find_unencodable",
    "short_list",
    "unique_query_params",
]

ALLOWED_CONTROLS: Final = frozenset("\t\n\r")
"""Control characters allowed in text: layout only, normalised to spaces before espeak."""
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""Unicode category Cc (C0, DEL, C1) less :data:`ALLOWED_CONTROLS`."""
_LISTED: Final = 5
"""Names an error message lists before it says "and N more"."""


def excerpt(value: str, limit: int = 40) -> str:
    """``value`` quoted, cut to ``limit`` characters: what an error may echo of input."""
    return repr(value) if len(value) <= limit else repr(value[:limit] + "...")


def short_list(names: Sequence[str], limit: int = _LISTED) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 13995 more``: bounded whatever the input."""
    shown = ", ".join(excerpt(n) for n in names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def _unencodable_at(text: str) -> int | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def find_unencodable(value: object) -> tuple[str, int] | None:
    """The path (``a.b.0``) and offset of the first string holding a lone surrogate.

    Iterative, so a deeply nested value cannot exhaust the stack here.
    """
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            at = _unencodable_at(item)
            if at is not None:
                return path or "body", at
        elif isinstance(item, dict):
            for key, child in item.items():
                at = _unencodable_at(key)
                if at is not None:
                    return f"{path}.(name)" if path else "(parameter name)", at
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", child) for i, child in enumerate(item))
    return None


def decode_json_object(body: bytes) -> dict[str, object]:
    """A JSON object from ``body``; InvalidRequest (400) for anything else, whatever it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})", code="invalid_json"
        ) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidRequest(
            "could not parse the JSON body: nested too deeply", code="invalid_json"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and int() past the digit limit
        raise InvalidRequest(f"could not parse the JSON body: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"the JSON body must be an object, not {type(value).__name__}", code="invalid_json"
        )
    bad = find_unencodable(value)
    if bad is not None:
        path, at = bad
        param = path.split(".")[0]
        raise InvalidRequest(
            f"{path}: a lone UTF-16 surrogate at character {at} is not text "
            "(it cannot be encoded as UTF-8)",
            param=param,
        )
    return value


def check_speakable_text(text: str, param: str) -> None:
    """Refuse characters that cannot be spoken or encoded: controls and lone surrogates."""
    at = _unencodable_at(text)
    if at is not None:
        raise InvalidRequest(
            f"{param}: a lone UTF-16 surrogate at character {at} is not text "
            "(it cannot be encoded as UTF-8)",
            param=param,
        )
    match = _CONTROL.search(text)
    if match is not None:
        ch = match.group()
        raise InvalidRequest(
            f"{param}: control character U+{ord(ch):04X} at character {match.start()} "
            "cannot be spoken; only tab, line feed and carriage return are allowed",
            param=param,
            code="invalid_characters",
        )


def unique_query_params(items: Iterable[tuple[str, str]], max_params: int) -> dict[str, object]:
    """Query items as a dict: at most ``max_params`` of them, none repeated (linear)."""
    pairs = list(items)
    if len(pairs) > max_params:
        raise InvalidRequest(
            f"{len(pairs)} query parameters given; this route takes at most {max_params}",
            code="too_many_parameters",
        )
    counts = Counter(k for k, _ in pairs)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise InvalidRequest(
            f"parameter(s) given more than once: {short_list(repeated)}", param=repeated[0]
        )
    return dict(pairs)
