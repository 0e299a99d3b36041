"""The router's Prometheus metrics, in one registry per app (nothing at import).

Names live in :mod:`voicefleet_api.metric_names`. ``voicefleet_router_pending_requests``
is a contract: the autoscaler scales a voice from zero when it is above 0, and reads the
``voice`` label as ``namespace/name``.

Label values: ``voice`` ``namespace/name``; ``code`` an HTTP status; ``pod`` a pod name
(series removed when the pod goes); ``outcome`` of an upstream attempt: ``ok``,
``full`` (429), ``draining`` (503), ``connect_error``, ``error`` (failed before answering);
``reason`` of a retry: the same failed outcomes; ``outcome`` of a hold: ``routed``,
``timed_out``, ``rejected`` (hold queue full), ``cancelled`` (client left).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from voicefleet_api import metric_names as names

__all__ = ["UPSTREAM_OUTCOMES", "RouterMetrics", "create_metrics"]

UPSTREAM_OUTCOMES: Final = ("ok", "full", "draining", "connect_error", "error")

_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300,
)  # fmt: skip
_HOLD_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    registry: CollectorRegistry
    pending_requests: Gauge
    request_duration_seconds: Histogram
    time_to_first_byte_seconds: Histogram
    upstream_requests_total: Counter
    retries_total: Counter
    held_requests_total: Counter
    hold_seconds: Histogram
    scrape_errors_total: Counter
    load_reports_total: Counter
    ready_pods: Gauge

    def forget_pod(self, voice: str, pod: str) -> None:
        """Drop a gone pod's series, so pod churn does not grow the exposition forever."""
        for outcome in UPSTREAM_OUTCOMES:
            with contextlib.suppress(KeyError):
                self.upstream_requests_total.remove(voice, pod, outcome)


def create_metrics() -> RouterMetrics:
    registry = CollectorRegistry()
    voice = names.VOICE_LABEL_NAME
    return RouterMetrics(
        registry=registry,
        pending_requests=Gauge(
            names.ROUTER_PENDING_REQUESTS,
            "Requests held because the voice has no ready pod (scale from zero, restarts).",
            [voice],
            registry=registry,
        ),
        request_duration_seconds=Histogram(
            names.ROUTER_REQUEST_DURATION_SECONDS,
            "Speech requests through the router, arrival to last byte (holding included).",
            [voice, "code"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
        time_to_first_byte_seconds=Histogram(
            names.ROUTER_TIME_TO_FIRST_BYTE_SECONDS,
            "Arrival at the router to the first response byte from a pod.",
            [voice],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
        upstream_requests_total=Counter(
            names.ROUTER_UPSTREAM_REQUESTS,
            "Requests sent to each pod, by what the attempt came to.",
            [voice, "pod", "outcome"],
            registry=registry,
        ),
        retries_total=Counter(
            names.ROUTER_RETRIES,
            "Requests sent again to another pod (nothing had reached the client).",
            [voice, "reason"],
            registry=registry,
        ),
        held_requests_total=Counter(
            names.ROUTER_HELD_REQUESTS,
            "Requests that had to wait for a ready pod, by how the wait ended.",
            [voice, "outcome"],
            registry=registry,
        ),
        hold_seconds=Histogram(
            names.ROUTER_HOLD_SECONDS,
            "How long held requests waited for a pod.",
            [voice],
            buckets=_HOLD_BUCKETS,
            registry=registry,
        ),
        scrape_errors_total=Counter(
            names.ROUTER_SCRAPE_ERRORS,
            "Polls of a pod's load that failed (its view ages out; then it is silent).",
            registry=registry,
        ),
        load_reports_total=Counter(
            names.ROUTER_LOAD_REPORTS,
            "Pod load reports taken in, by source: header (on an answer) or poll.",
            ["source"],
            registry=registry,
        ),
        ready_pods=Gauge(
            names.ROUTER_READY_PODS,
            "Pods of each voice the router can send to.",
            [voice],
            registry=registry,
        ),
    )
