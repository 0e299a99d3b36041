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
DRAIN_GRACE_S: Final = "VOICEFLEET_DRAIN_GRACE_S"
MAX_INPUT_CHARS: Final = "VOICEFLEET_MAX_INPUT_CHARS"
LOG_LEVEL: Final = "VOICEFLEET_LOG_LEVEL"

POD_IP: Final = "POD_IP"
"""Set by the operator from the downward API; the server binds ``$(POD_IP)``."""

SIMULATED_ENGINE_PREFIX: Final = "SIMULATED_ENGINE_"
"""Prefix of the ``simulated`` engine's knobs (``SIMULATED_ENGINE_SPEED_FACTOR``, ...).
Deliberately outside ``VOICEFLEET_``: a load test sets them in a TTSVoice's ``spec.env``."""
