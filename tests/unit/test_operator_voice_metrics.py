"""The per-voice gauges the chart's alerts and dashboard read (operator metrics)."""

from __future__ import annotations

from prometheus_client import generate_latest

from voicefleet_operator.metrics import OperatorMetrics


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_observe_voice_publishes_conditions_and_replicas() -> None:
    metrics = OperatorMetrics.create()
    status = {
        "desiredReplicas": 3,
        "readyReplicas": 1,
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "Progressing", "status": "True"},
            {"type": "Degraded", "status": "False"},
        ],
    }
    metrics.observe_voice("prod/joe", status)
    cond = "voicefleet_operator_voice_condition"
    assert sample(metrics, cond, voice="prod/joe", condition="Ready") == 1
    assert sample(metrics, cond, voice="prod/joe", condition="Degraded") == 0
    assert sample(metrics, "voicefleet_operator_voice_desired_replicas", voice="prod/joe") == 3
    assert sample(metrics, "voicefleet_operator_voice_ready_replicas", voice="prod/joe") == 1
    # a later status flips the condition in place (one series per voice and condition)
    metrics.observe_voice("prod/joe", {"conditions": [{"type": "Degraded", "status": "True"}]})
    assert sample(metrics, cond, voice="prod/joe", condition="Degraded") == 1


def test_forget_voice_drops_its_series() -> None:
    metrics = OperatorMetrics.create()
    metrics.observe_voice(
        "prod/joe",
        {
            "desiredReplicas": 1,
            "readyReplicas": 0,
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    )
    metrics.forget_voice("prod/joe")
    metrics.forget_voice("prod/never-seen")  # no error for a voice without series
    assert b"prod/joe" not in generate_latest(metrics.registry)
