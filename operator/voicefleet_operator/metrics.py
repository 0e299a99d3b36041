"""Every Prometheus metric the operator exports, named once.

The metrics live in their own `CollectorRegistry` built by `OperatorMetrics.create`,
not in prometheus-client's global registry: two operators in one test process
(or a test and the operator) never collide, and importing this module registers
nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RECONCILES = "voicefleet_operator_reconciles_total"
RECONCILE_ERRORS = "voicefleet_operator_reconcile_errors_total"
RECONCILE_DURATION = "voicefleet_operator_reconcile_duration_seconds"
STATUS_WRITES = "voicefleet_operator_status_writes_total"
# Per voice (label `voice` = namespace/name, one series per voice, as kube-state-metrics
# does per object): what the chart's alerts and dashboard read.
VOICE_CONDITION = "voicefleet_operator_voice_condition"
VOICE_DESIRED_REPLICAS = "voicefleet_operator_voice_desired_replicas"
VOICE_READY_REPLICAS = "voicefleet_operator_voice_ready_replicas"
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


@dataclass(frozen=True)
class OperatorMetrics:
    """The operator's metrics, bound to one registry."""

    registry: CollectorRegistry
    reconciles: Counter
    reconcile_errors: Counter
    reconcile_duration: Histogram
    status_writes: Counter
    voice_condition: Gauge
    voice_desired_replicas: Gauge
    voice_ready_replicas: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> OperatorMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            reconciles=Counter(
                RECONCILES.removesuffix("_total"),
                "TTSVoice reconciles run, by what triggered them.",
                ["trigger"],
                registry=reg,
            ),
            reconcile_errors=Counter(
                RECONCILE_ERRORS.removesuffix("_total"),
                "Reconciles that ended in a retry or a permanent error: invalid_spec, problem "
                "(e.g. PVC missing), api, rejected (the API server refused an owned object).",
                ["reason"],
                registry=reg,
            ),
            reconcile_duration=Histogram(
                RECONCILE_DURATION,
                "Wall time of one reconcile (parse, apply, status), seconds.",
                ["trigger"],
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                registry=reg,
            ),
            status_writes=Counter(
                STATUS_WRITES.removesuffix("_total"),
                "TTSVoice status patches sent (only sent when the status changed).",
                registry=reg,
            ),
            voice_condition=Gauge(
                VOICE_CONDITION,
                "1 while the voice's condition (Ready, Progressing, Degraded) is True, else 0.",
                ["voice", "condition"],
                registry=reg,
            ),
            voice_desired_replicas=Gauge(
                VOICE_DESIRED_REPLICAS,
                "Replicas the voice asks for (spec.replicas).",
                ["voice"],
                registry=reg,
            ),
            voice_ready_replicas=Gauge(
                VOICE_READY_REPLICAS,
                "Ready replicas of the voice's Deployment.",
                ["voice"],
                registry=reg,
            ),
        )

    def observe_voice(self, voice: str, status: Mapping[str, Any]) -> None:
        """Publish one voice's derived status (`voice` is namespace/name)."""
        conditions = {
            str(c.get("type")): c.get("status") == "True"
            for c in status.get("conditions") or []
            if isinstance(c, Mapping)
        }
        for kind in CONDITION_TYPES:
            if kind in conditions:
                self.voice_condition.labels(voice=voice, condition=kind).set(
                    1 if conditions[kind] else 0
                )
        if "desiredReplicas" in status:
            self.voice_desired_replicas.labels(voice=voice).set(int(status["desiredReplicas"]))
        if "readyReplicas" in status:
            self.voice_ready_replicas.labels(voice=voice).set(int(status["readyReplicas"] or 0))

    def forget_voice(self, voice: str) -> None:
        """Drop a deleted voice's series."""
        for kind in CONDITION_TYPES:
            with contextlib.suppress(KeyError):
                self.voice_condition.remove(voice, kind)
        for gauge in (self.voice_desired_replicas, self.voice_ready_replicas):
            with contextlib.suppress(KeyError):
                gauge.remove(voice)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
