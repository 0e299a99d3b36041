"""service_time: what a request's chunks tell the metrics, and the running work estimate."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from voicefleet_inference.metrics import Metrics, create_metrics
from voicefleet_inference.service_time import (
    RUNNING_WORK_FLOOR,
    ServiceTimes,
    outstanding_s,
    remaining_after,
)


@dataclass
class Request:
    enqueued_at: float
    started_at: float | None
    first_chunk_at: float | None = None


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_the_first_chunk_times_first_audio_from_admission_and_from_the_start() -> None:
    metrics = create_metrics()
    times = ServiceTimes(metrics)
    request = Request(enqueued_at=10.0, started_at=10.5)
    times.chunk(request, samples=22050, sample_rate=22050, now=11.25)
    times.chunk(request, samples=11025, sample_rate=22050, now=12.0)
    assert request.first_chunk_at == 11.25
    assert sample(metrics, "voicefleet_time_to_first_audio_seconds_count") == 1
    assert sample(metrics, "voicefleet_time_to_first_audio_seconds_sum") == pytest.approx(1.25)
    assert sample(metrics, "voicefleet_start_to_first_audio_seconds_sum") == pytest.approx(0.75)
    assert sample(metrics, "voicefleet_audio_seconds_total") == pytest.approx(1.5)
    assert sample(metrics, "voicefleet_service_seconds_count") == 0


def test_the_last_chunk_observes_the_service_time_and_its_square() -> None:
    metrics = create_metrics()
    times = ServiceTimes(metrics)
    times.finished(Request(enqueued_at=0.0, started_at=1.0), now=3.0)
    times.finished(Request(enqueued_at=0.0, started_at=5.0), now=6.0)
    assert sample(metrics, "voicefleet_service_seconds_count") == 2
    assert sample(metrics, "voicefleet_service_seconds_sum") == pytest.approx(3.0)
    assert sample(metrics, "voicefleet_service_seconds_squared_total") == pytest.approx(5.0)


def test_a_request_never_started_counts_no_service_time() -> None:
    metrics = create_metrics()
    ServiceTimes(metrics).finished(Request(enqueued_at=0.0, started_at=None), now=4.0)
    assert sample(metrics, "voicefleet_service_seconds_sum") == 0.0


def test_the_estimate_left_shrinks_with_time_spent_and_keeps_a_floor_while_running() -> None:
    assert remaining_after(2.0, 0.5) == 1.5
    assert remaining_after(0.2, 0.5) == 0.0
    assert outstanding_s(cost_s=4.0, remaining_s=1.0) == 1.0
    assert outstanding_s(cost_s=4.0, remaining_s=0.0) == pytest.approx(RUNNING_WORK_FLOOR * 4.0)
