"""Every Prometheus metric of the inference server, named once, in one registry per app.

The names are a contract (DESIGN.md) kept in :mod:`voicefleet_api.metric_names`: the
autoscaler and the router read them by the same constants. Each app gets its own
:class:`~prometheus_client.CollectorRegistry` from :func:`create_metrics`, so tests can run
several servers in one process and nothing is registered at import time.

Labels are bounded: ``code`` is an HTTP status, ``reason`` one of :data:`REJECT_REASONS`.
Never request text, never client addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from voicefleet_api import metric_names as names
from voicefleet_api.priority import PRIORITIES

__all__ = [
    "CONTENT_TYPE",
    "OUTCOMES",
    "OUTCOME_ACCEPTED",
    "OUTCOME_EVICTED",
    "OUTCOME_REFUSED",
    "REJECT_CLIENT_GONE",
    "REJECT_DRAINING",
    "REJECT_EVICTED",
    "REJECT_NOT_READY",
    "REJECT_QUEUE_FULL",
    "REJECT_REASONS",
    "REJECT_SHED",
    "REJECT_SHUTDOWN",
    "REJECT_TIMEOUT",
    "Metrics",
    "create_metrics",
    "render",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

REJECT_QUEUE_FULL: Final = "queue_full"
"""Admission refused: the queue was at ``max_queue`` (429)."""
REJECT_DRAINING: Final = "draining"
"""Admission refused: the server is draining for shutdown (503)."""
REJECT_NOT_READY: Final = "not_ready"
"""Admission refused: no engine loaded yet, or every worker died (503)."""
REJECT_TIMEOUT: Final = "timeout"
"""Accepted, but queue wait plus synthesis exceeded the request timeout (504)."""
REJECT_CLIENT_GONE: Final = "client_gone"
"""Accepted, then dropped before it ran because the client disconnected (not computed)."""
REJECT_SHUTDOWN: Final = "shutdown"
"""Accepted, then abandoned because the drain grace ran out."""
REJECT_SHED: Final = "shed"
"""Refused because the queue's estimated wait passed the target for its priority."""
REJECT_EVICTED: Final = "evicted"
"""Queued, then pushed out of a full queue by more important work (429)."""
OUTCOME_ACCEPTED: Final = "accepted"
OUTCOME_REFUSED: Final = "refused"
OUTCOME_EVICTED: Final = "evicted"
OUTCOMES: Final = (OUTCOME_ACCEPTED, OUTCOME_REFUSED, OUTCOME_EVICTED)
REJECT_REASONS: Final = (
    REJECT_QUEUE_FULL,
    REJECT_DRAINING,
    REJECT_NOT_READY,
    REJECT_TIMEOUT,
    REJECT_CLIENT_GONE,
    REJECT_SHUTDOWN,
    REJECT_SHED,
    REJECT_EVICTED,
)

_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_TTFA_BUCKETS: Final = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 4, 8, 15, 30, 60)
_BATCH_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The server's metrics; the scheduler and the HTTP layer update them (thread-safe)."""

    registry: CollectorRegistry
    queue_depth: Gauge
    requests_in_flight: Gauge
    queue_work_seconds: Gauge
    request_duration_seconds: Histogram
    time_to_first_audio_seconds: Histogram
    service_seconds: Histogram
    service_seconds_squared_total: Counter
    start_to_first_audio_seconds: Histogram
    batch_size: Histogram
    audio_seconds_total: Counter
    requests_total: Counter
    rejected_total: Counter
    priority_requests_total: Counter


def create_metrics() -> Metrics:
    """A fresh registry with every metric, rejection reasons pre-set to 0."""
    registry = CollectorRegistry(auto_describe=True)
    metrics = Metrics(
        registry=registry,
        queue_depth=Gauge(
            names.QUEUE_DEPTH,
            "Requests accepted and waiting to run.",
            registry=registry,
        ),
        requests_in_flight=Gauge(
            names.REQUESTS_IN_FLIGHT,
            "Requests running in an engine.",
            registry=registry,
        ),
        queue_work_seconds=Gauge(
            names.QUEUE_WORK_SECONDS,
            "Estimated engine-seconds of work waiting plus still to do for running requests.",
            registry=registry,
        ),
        request_duration_seconds=Histogram(
            names.REQUEST_DURATION_SECONDS,
            "Synthesis requests (/v1/audio/speech, /tts), arrival to last byte sent.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
        time_to_first_audio_seconds=Histogram(
            names.TIME_TO_FIRST_AUDIO_SECONDS,
            "Admission to the first synthesized chunk of a request.",
            buckets=_TTFA_BUCKETS,
            registry=registry,
        ),
        service_seconds=Histogram(
            names.SERVICE_SECONDS,
            "Engine seconds of a request, from its start in a worker to its last chunk.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
        service_seconds_squared_total=Counter(
            names.SERVICE_SECONDS_SQUARED,
            "Sum of squared service seconds (their variability, for the autoscaler's model).",
            registry=registry,
        ),
        start_to_first_audio_seconds=Histogram(
            names.START_TO_FIRST_AUDIO_SECONDS,
            "Seconds from a request's start in a worker to its first chunk (no queueing).",
            buckets=_TTFA_BUCKETS,
            registry=registry,
        ),
        batch_size=Histogram(
            names.BATCH_SIZE,
            "Requests per engine call (dynamic batching).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        ),
        audio_seconds_total=Counter(
            names.AUDIO_SECONDS,
            "Seconds of audio synthesized.",
            registry=registry,
        ),
        requests_total=Counter(
            names.REQUESTS,
            "Synthesis requests answered, by HTTP status (499: client went away).",
            labelnames=("code",),
            registry=registry,
        ),
        rejected_total=Counter(
            names.REJECTED,
            "Requests refused at admission or dropped before completion, by reason.",
            labelnames=("reason",),
            registry=registry,
        ),
        priority_requests_total=Counter(
            names.PRIORITY_REQUESTS,
            "Admission decisions by request priority: accepted, refused (429 at once) or "
            "evicted (queued, then pushed out by more important work).",
            labelnames=("priority", "outcome"),
            registry=registry,
        ),
    )
    for reason in REJECT_REASONS:
        metrics.rejected_total.labels(reason=reason)
    for priority in PRIORITIES:
        for outcome in OUTCOMES:
            metrics.priority_requests_total.labels(priority=priority, outcome=outcome)
    return metrics


def render(metrics: Metrics) -> bytes:
    """The Prometheus text exposition of ``metrics`` (content type :data:`CONTENT_TYPE`)."""
    return generate_latest(metrics.registry)
