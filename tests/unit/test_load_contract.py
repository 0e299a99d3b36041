"""The one reader of the pod load contract (``voicefleet_api.load``): every form, one answer.

Before it, the router's ``scrape.parse_gauges`` returned ``None`` for a page whose gauges
carried labels, while the operator's reader summed them: the same pod was idle to one
plane and busy to the other.
"""

from __future__ import annotations

import pytest

from voicefleet_api import load
from voicefleet_api.load import PodLoad

UNLABELLED = """# HELP voicefleet_queue_depth Requests accepted and waiting to run.
# TYPE voicefleet_queue_depth gauge
voicefleet_queue_depth 3.0
voicefleet_requests_in_flight 1.0
voicefleet_request_duration_seconds_bucket{le="0.05"} 0.0
voicefleet_queue_work_seconds 2.75
"""

LABELLED = """# TYPE voicefleet_queue_depth gauge
voicefleet_queue_depth{voice="en_US-joe-medium"} 2.0
voicefleet_queue_depth{voice="en_US-joe-medium",worker="1"} 1.0
voicefleet_requests_in_flight{voice="en_US-joe-medium"} 1.0
voicefleet_queue_work_seconds{voice="en_US-joe-medium"} 2.0
voicefleet_queue_work_seconds{voice="en_US-joe-medium",worker="1"} 0.75
voicefleet_queue_work_seconds_created{voice="en_US-joe-medium"} 1.7e9
"""


def test_labelled_and_unlabelled_pages_read_the_same() -> None:
    assert load.parse_metrics(UNLABELLED) == PodLoad(2.75, 3, 1)
    assert load.parse_metrics(LABELLED) == PodLoad(2.75, 3, 1)


@pytest.mark.parametrize(
    "page",
    [
        "voicefleet_queue_depth 1.0\n",  # two gauges missing
        UNLABELLED.replace("2.75", "x"),  # work unreadable: missing, not zero
        UNLABELLED.replace("2.75", "NaN"),
    ],
)
def test_a_page_without_all_three_gauges_is_no_reading(page: str) -> None:
    assert load.parse_metrics(page) is None


def test_compact_form_round_trips_and_is_what_the_header_carries() -> None:
    value = PodLoad(1.25, 3, 1, seq=42)
    text = load.format_load(value)
    assert text == "work_s=1.250,depth=3,in_flight=1,seq=42"
    assert load.parse_load(text) == value
    assert load.parse_load(" work_s=0.5 , depth=0,in_flight=2,extra=x") == PodLoad(0.5, 0, 2, 0)
    with_free = PodLoad(0.5, 2, 1, seq=3, free=62)
    assert load.format_load(with_free).endswith(",free=62")
    assert load.parse_load(load.format_load(with_free)) == with_free


@pytest.mark.parametrize(
    "text",
    [
        "",
        "work_s=1,depth=2",
        "work_s=inf,depth=0,in_flight=0",
        "work_s=1,depth=-1,in_flight=0",
        "work_s=1,depth=1.5,in_flight=0",
        "work_s=1,depth=1,in_flight=0,free=-2",
        "work_s=1,depth=0,in_flight=0,seq=" + "9" * 300,
    ],
)
def test_malformed_compact_text_is_no_reading(text: str) -> None:
    assert load.parse_load(text) is None


def test_router_pending_sums_per_voice() -> None:
    page = (
        'voicefleet_router_pending_requests{voice="a/joe"} 2.0\n'
        'voicefleet_router_pending_requests{voice="b/amy"} 1.0\n'
        "voicefleet_router_pending_requests 5.0\n"
    )
    assert load.router_pending(page) == {"a/joe": 2, "b/amy": 1}
