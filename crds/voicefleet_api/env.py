"""Environment variables the inference server reads (the operator writes them in pods).

One name per setting; the server's settings model and the operator's Deployment builder
both use these constants, so the two can never disagree on a spelling.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "VOICEFLEET_"
"""User env in a TTSVoice may not use this prefix: ``spec.server`` is the one place."""

HOST: Final = "VOICEFLEET_HOST"
PORT: Final = "VOICEFLEET_PORT"
ENGINE: Final = "VOICEFLEET_ENGINE"
MODEL: Final = "VOICEFLEET_MODEL"
DEVICE: Final = "VOICEFLEET_DEVICE"
WORKERS: Final = "VOICEFLEET_WORKERS"
THREADS_PER_WORKER: Final = "VOICEFLEET_THREADS_PER_WORKER"
MAX_QUEUE: Final = "VOICEFLEET_MAX_QUEUE"
MAX_BATCH_SIZE: Final = "VOICEFLEET_MAX_BATCH_SIZE"
BATCH_WINDOW_MS: Final = "VOICEFLEET_BATCH_WINDOW_MS"
REQUEST_TIMEOUT_S: Final = "VOICEFLEET_REQUEST_TIMEOUT_S"
DEFAULT_PRIORITY: Final = "VOICEFLEET_DEFAULT_PRIORITY"
"""Priority of requests without ``x-voicefleet-priority`` (a voice's ``spec.priority``)."""
PRIORITY_WAIT_TARGET_S: Final = "VOICEFLEET_PRIORITY_WAIT_TARGET_S"
"""Queue wait past which sheddable work is refused, standard past twice it (0: off)."""
PRIORITY_RESERVED_WORKERS: Final = "VOICEFLEET_PRIORITY_RESERVED_WORKERS"
"""Engine workers kept free of sheddable work for critical and standard requests."""
DRAIN_GRACE_S: Final = "VOICEFLEET_DRAIN_GRACE_S"
MAX_INPUT_CHARS: Final = "VOICEFLEET_MAX_INPUT_CHARS"
LOG_LEVEL: Final = "VOICEFLEET_LOG_LEVEL"
TERMINATION_MESSAGE_PATH: Final = "VOICEFLEET_TERMINATION_MESSAGE_PATH"
"""Where the server writes its last words before exiting non-zero (unset: nowhere);
see :mod:`voicefleet_api.termination`."""
MAX_CONNECTIONS: Final = "VOICEFLEET_MAX_CONNECTIONS"
HEADER_TIMEOUT_S: Final = "VOICEFLEET_HEADER_TIMEOUT_S"
KEEP_ALIVE_TIMEOUT_S: Final = "VOICEFLEET_KEEP_ALIVE_TIMEOUT_S"
BODY_TIMEOUT_S: Final = "VOICEFLEET_BODY_TIMEOUT_S"
MAX_CONCURRENT_REQUESTS: Final = "VOICEFLEET_MAX_CONCURRENT_REQUESTS"
"""Connection discipline of the server's HTTP edge (``voicefleet_inference.connections``)."""
CALIBRATION_CACHE: Final = "VOICEFLEET_CALIBRATION_CACHE"
"""Directory where the server keeps its load-time cost calibration for the next start of
the same model on the same machine (unset: calibrate at every start)."""
AUTH_TOKEN: Final = "VOICEFLEET_AUTH_TOKEN"
"""Bearer token the server requires on its synthesis and ``/v1/`` routes (unset: none);
the operator writes the voice's derived token (:mod:`voicefleet_api.podauth`)."""

FETCH_PREFIX: Final = "VOICEFLEET_FETCH_"
"""The model fetcher's variables (``voicefleet-fetch``, the init container of a url model)."""
FETCH_URL: Final = "VOICEFLEET_FETCH_URL"
FETCH_SHA256: Final = "VOICEFLEET_FETCH_SHA256"
FETCH_CONFIG_URL: Final = "VOICEFLEET_FETCH_CONFIG_URL"
FETCH_CONFIG_SHA256: Final = "VOICEFLEET_FETCH_CONFIG_SHA256"
FETCH_DEST: Final = "VOICEFLEET_FETCH_DEST"
"""Where the ``.onnx`` lands (its config beside it as ``<dest>.json``)."""
FETCH_CA_FILE: Final = "VOICEFLEET_FETCH_CA_FILE"
FETCH_CA_PEM: Final = "VOICEFLEET_FETCH_CA_PEM"
"""PEM CA certificate(s) to trust instead of the system's (from the voice's caConfigMap)."""
FETCH_S3_ENDPOINT: Final = "VOICEFLEET_FETCH_S3_ENDPOINT"
FETCH_S3_REGION: Final = "VOICEFLEET_FETCH_S3_REGION"
FETCH_ACCESS_KEY_ID: Final = "VOICEFLEET_FETCH_ACCESS_KEY_ID"
FETCH_SECRET_ACCESS_KEY: Final = "VOICEFLEET_FETCH_SECRET_ACCESS_KEY"
FETCH_SESSION_TOKEN: Final = "VOICEFLEET_FETCH_SESSION_TOKEN"
FETCH_TOKEN: Final = "VOICEFLEET_FETCH_TOKEN"
"""HTTPS bearer token. The four credentials come from the voice's Secret, never its spec."""

POD_IP: Final = "POD_IP"
"""Set by the operator from the downward API; the server binds ``$(POD_IP)``."""

SIMULATED_ENGINE_PREFIX: Final = "SIMULATED_ENGINE_"
"""Prefix of the ``simulated`` engine's knobs (``SIMULATED_ENGINE_SPEED_FACTOR``, ...).
Deliberately outside ``VOICEFLEET_``: a load test sets them in a TTSVoice's ``spec.env``."""
