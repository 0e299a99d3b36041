"""Every Prometheus metric name the planes export or read (contract names).

The server and router register their metrics under these names; the autoscaler and the
router parse scrapes by them; dashboards and alert rules in the chart use them too.
Counters are named without ``_total``: prometheus-client appends it on exposition.
"""

from __future__ import annotations

from typing import Final

# The inference pod (``GET /metrics`` on every server).
QUEUE_DEPTH: Final = "voicefleet_queue_depth"
REQUESTS_IN_FLIGHT: Final = "voicefleet_requests_in_flight"
QUEUE_WORK_SECONDS: Final = "voicefleet_queue_work_seconds"
REQUEST_DURATION_SECONDS: Final = "voicefleet_request_duration_seconds"
TIME_TO_FIRST_AUDIO_SECONDS: Final = "voicefleet_time_to_first_audio_seconds"
SERVICE_SECONDS: Final = "voicefleet_service_seconds"
"""Histogram: engine seconds of a request, from its start in a worker to its last chunk
(no queueing): the service time of the autoscaler's first-audio model."""
SERVICE_SECONDS_SQUARED: Final = "voicefleet_service_seconds_squared"
"""Counter (``_total``): the sum of squared service seconds, so a reader gets their
variability exactly from two scrapes (a histogram's buckets only bound it)."""
START_TO_FIRST_AUDIO_SECONDS: Final = "voicefleet_start_to_first_audio_seconds"
"""Histogram: seconds from a request's start in a worker to its first chunk (no queueing)."""
BATCH_SIZE: Final = "voicefleet_batch_size"
AUDIO_SECONDS: Final = "voicefleet_audio_seconds"
REQUESTS: Final = "voicefleet_requests"
REJECTED: Final = "voicefleet_rejected"
PRIORITY_REQUESTS: Final = "voicefleet_priority_requests"
"""``_total{priority, outcome}``: admissions by priority (accepted, refused, evicted)."""

# The router.
ROUTER_PENDING_REQUESTS: Final = "voicefleet_router_pending_requests"
"""Gauge labelled ``voice`` (``namespace/name``): requests held while no replica can take
them (scale from zero, every pod restarting). The autoscaler scales from zero on it."""

VOICE_LABEL_NAME: Final = "voice"
"""The label that names a voice on router metrics: ``namespace/name``."""


# The router's own series (besides the contract gauge above); labels: ``voice`` as above,
# ``code`` an HTTP status, ``pod`` a pod name (series removed when the pod goes), ``outcome``
# and ``reason`` small fixed sets documented in docs/router.md.
ROUTER_REQUEST_DURATION_SECONDS: Final = "voicefleet_router_request_duration_seconds"
ROUTER_TIME_TO_FIRST_BYTE_SECONDS: Final = "voicefleet_router_time_to_first_byte_seconds"
ROUTER_UPSTREAM_REQUESTS: Final = "voicefleet_router_upstream_requests"
ROUTER_RETRIES: Final = "voicefleet_router_retries"
ROUTER_HELD_REQUESTS: Final = "voicefleet_router_held_requests"
ROUTER_HOLD_SECONDS: Final = "voicefleet_router_hold_seconds"
ROUTER_SCRAPE_ERRORS: Final = "voicefleet_router_scrape_errors"
ROUTER_LOAD_REPORTS: Final = "voicefleet_router_load_reports"
ROUTER_READY_PODS: Final = "voicefleet_router_ready_pods"
