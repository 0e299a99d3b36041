"""Every Prometheus metric the operator exports, named once.

The metrics live in their own `CollectorRegistry` built by `OperatorMetrics.create`,
not in prometheus-client's global registry: two operators in one test process
(or a test and the operator) never collide, and importing this module registers
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

RECONCILES = "voicefleet_operator_reconciles_total"
RECONCILE_ERRORS = "voicefleet_operator_reconcile_errors_total"
RECONCILE_DURATION = "voicefleet_operator_reconcile_duration_seconds"
STATUS_WRITES = "voicefleet_operator_status_writes_total"


@dataclass(frozen=True)
class OperatorMetrics:
    """The operator's metrics, bound to one registry."""

    registry: CollectorRegistry
    reconciles: Counter
    reconcile_errors: Counter
    reconcile_duration: Histogram
    status_writes: Counter

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
                "Reconciles that ended in a retry: invalid_spec, problem (e.g. PVC missing), api.",
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
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
