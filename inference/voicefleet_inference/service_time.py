"""What one request's time in an engine tells the metrics, and how much of it is left.

The autoscaler's queueing model reads three things off every pod: how long a request
waits before its first audio (admission to first chunk, the first-audio target's
measure), how long an engine spends on it once started (the service time, with its
square for the variability), and how much engine work is still queued or running
(``voicefleet_queue_work_seconds``). The scheduler moves requests between threads; this
module says what each chunk of a request means for those figures, so the scheduler only
calls it at the right moments and holds its lock around the bookkeeping it shares.

Times are ``time.monotonic()`` seconds, passed in: nothing here reads a clock.
"""

from __future__ import annotations

from typing import Final, Protocol

from voicefleet_inference.metrics import Metrics

__all__ = ["RUNNING_WORK_FLOOR", "ServiceTimes", "Timed", "outstanding_s", "remaining_after"]

RUNNING_WORK_FLOOR: Final = 0.05
"""A running request never counts for less than this fraction of its estimate: it is not
done, however optimistic the cost model was."""


class Timed(Protocol):
    """A request as its timing sees it: when it was admitted, started in a worker, and
    when its first chunk came (``None`` until then; set by :meth:`ServiceTimes.chunk`)."""

    enqueued_at: float
    started_at: float | None
    first_chunk_at: float | None


def remaining_after(remaining_s: float, spent_s: float) -> float:
    """The estimate of engine-seconds left once ``spent_s`` more were spent (never < 0)."""
    return max(0.0, remaining_s - spent_s)


def outstanding_s(cost_s: float, remaining_s: float) -> float:
    """Engine-seconds a running request still counts for: what is left of its estimate,
    at least :data:`RUNNING_WORK_FLOOR` of the whole."""
    return max(remaining_s, RUNNING_WORK_FLOOR * cost_s)


class ServiceTimes:
    """Observes a request's first audio, its audio seconds and its service time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def chunk(self, request: Timed, samples: int, sample_rate: int, now: float) -> None:
        """A chunk of ``samples`` was delivered at ``now``; the first one of a request
        also times its first audio, from admission and from its start in a worker."""
        if request.first_chunk_at is None:
            request.first_chunk_at = now
            self._metrics.time_to_first_audio_seconds.observe(now - request.enqueued_at)
            self._metrics.start_to_first_audio_seconds.observe(now - _started(request, now))
        self._metrics.audio_seconds_total.inc(samples / sample_rate)

    def finished(self, request: Timed, now: float) -> None:
        """The request's last chunk came at ``now``: its service time, from its start."""
        service = now - _started(request, now)
        self._metrics.service_seconds.observe(service)
        self._metrics.service_seconds_squared_total.inc(service * service)


def _started(request: Timed, now: float) -> float:
    return now if request.started_at is None else request.started_at
