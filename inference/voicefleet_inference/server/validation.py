"""Edge validation: what the core cannot handle is refused here, as a 400 naming the field.

Pure functions the routes call before anything else, so that no client input reaches the
phonemizer, the engine or an error message in a form they cannot take. The checks the
router makes too (strict UTF-8 and no lone surrogates in the body, a JSON parse that
fails for any reason being a 400, no control characters in text to speak, repeated or
unknown query parameters found in one linear pass) live, with the reason for each, in
:mod:`voicefleet_inference.requests_validation` (one layer for both edges) and are
re-exported here for the routes. Here besides: a request's priority header names one of
the known classes (a typo is a 400 listing them, never silently "standard").
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
