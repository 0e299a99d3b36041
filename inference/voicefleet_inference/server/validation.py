"""Edge validation: what the core cannot handle is refused here, as a 400 naming the field.

Pure functions the routes call before anything else, so that no client input reaches the
phonemizer, the engine or an error message in a form they cannot take. The checks the
router makes too live in :mod:`voicefleet_inference.requests_validation` (one layer for
both edges) and are re-exported here for the routes:

* the body must be strict UTF-8 (``json.loads`` on bytes would accept an encoded surrogate
  such as ``ED A0 80``), and no string in it may hold a lone surrogate (``"\\ud800"``),
  which nothing downstream can encode (espeak, and the JSON of our own error body);
* a JSON parse that fails for any reason (an integer over Python's 4,300-digit limit,
  nesting deeper than the recursion limit) is a 400, not a 500;
* text to speak may not contain control characters other than tab, line feed and
  carriage return: espeak reads its input as a C string, so ``NUL`` ends the text and
  would silently drop the rest; the other controls have no spoken form either. A 400
  that points at the character is better than speaking part of the text;
* a request's priority header names one of the known classes (a typo is a 400 listing
  them, never silently "standard");
* repeated or unknown query parameters are found in one linear pass and reported with a
  short list, so a URL with thousands of parameters costs milliseconds, not seconds, and
  the error does not echo the whole URL back.
"""

from __future__ import annotations

from voicefleet_api.priority import PRIORITIES, PRIORITY_HEADER
from voicefleet_inference.errors import InvalidRequest
from voicefleet_inference.requests_validation import (
    ALLOWED_CONTROLS,
    check_speakable_text,
    decode_json_object,
    find_unencodable,
    short_list,
    unique_query_params,
)

__all__ = [
    "ALLOWED_CONTROLS",
    "check_speakable_text",
    "decode_json_object",
    "find_unencodable",
    "parse_priority",
    "short_list",
    "unique_query_params",
]


def parse_priority(value: str | None, default: str) -> str:
    """The request's priority from its ``x-voicefleet-priority`` header (``default`` when
    absent); anything but a known class is a 400 that lists them."""
    if value is None:
        return default
    priority = value.strip().lower()
    if priority not in PRIORITIES:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidRequest(
            f"header {PRIORITY_HEADER}: {shown!r} is not a priority; accepted: "
            f"{', '.join(PRIORITIES)}",
            param=PRIORITY_HEADER,
            code="invalid_priority",
        )
    return priority
