"""The loop's pure parts: reading scrapes, status round-trip, flags."""

from __future__ import annotations

import asyncio
import time

import pytest

from voicefleet_api import metric_names
from voicefleet_operator.autoscaler import (
    STOP_CHECK_SECONDS,
    Autoscaler,
    AutoscalerConfig,
    _pod_sample,
    _router_pending,
    parse_gauges,
    parse_time,
    state_from_status,
    status_differs,
    status_patch,
)
from voicefleet_operator.scaling import Observation, PodSample, Policy, ScalingState, decide
from voicefleet_operator.settings import UsageError, parse_args

POD_METRICS = f"""# HELP {metric_names.QUEUE_DEPTH} Requests accepted and waiting to run.
# TYPE {metric_names.QUEUE_DEPTH} gauge
{metric_names.QUEUE_DEPTH}{{voice="en_US-joe-medium"}} 3.0
# TYPE {metric_names.REQUESTS_IN_FLIGHT} gauge
{metric_names.REQUESTS_IN_FLIGHT} 1.0
# TYPE {metric_names.QUEUE_WORK_SECONDS} gauge
{metric_names.QUEUE_WORK_SECONDS} 4.25
{metric_names.QUEUE_WORK_SECONDS}_bogus 99
voicefleet_request_duration_seconds_bucket{{le="0.5"}} 7.0
"""

ROUTER_METRICS = f"""# TYPE {metric_names.ROUTER_PENDING_REQUESTS} gauge
{metric_names.ROUTER_PENDING_REQUESTS}{{voice="tts/joe"}} 2.0
{metric_names.ROUTER_PENDING_REQUESTS}{{voice="tts/ann"}} 0.0
{metric_names.ROUTER_PENDING_REQUESTS}{{voice="other/joe"}} 5.0
"""


def test_a_pod_scrape_yields_work_depth_and_in_flight() -> None:
    assert _pod_sample(POD_METRICS) == PodSample(4.25, queue_depth=3, in_flight=1)
    assert not _pod_sample("# nothing here\n").answered
    found = parse_gauges(POD_METRICS, (metric_names.QUEUE_DEPTH,))
    assert found == {metric_names.QUEUE_DEPTH: [('voice="en_US-joe-medium"', 3.0)]}


def test_router_pending_is_per_namespace_and_name() -> None:
    assert _router_pending(ROUTER_METRICS) == {"tts/joe": 2, "tts/ann": 0, "other/joe": 5}
    assert _router_pending("") == {}


def test_status_round_trip_keeps_last_scale_and_idle_since_across_a_restart() -> None:
    policy = Policy(min_replicas=0, scale_to_zero_idle=60)
    obs = Observation(now=1_764_000_000.0, replicas=1, ready=(PodSample(0.0, 0, 0),))
    decision = decide(obs, ScalingState(), policy)
    patch = status_patch(decision, obs, scaled=True)
    assert patch["queueWorkSeconds"] == 0.0
    assert patch["autoscaling"]["idleSince"] == "2025-11-24T16:00:00Z"
    assert patch["lastScaleTime"] == "2025-11-24T16:00:00Z"
    restored = state_from_status(patch)
    assert restored.idle_since == obs.now
    assert restored.last_scale_time == obs.now
    assert parse_time("not a time") is None
    assert parse_time(None) is None


def test_autoscaler_flags() -> None:
    config = parse_args(
        [
            "-A",
            "--autoscale-interval",
            "0.5",
            "--router-metrics-url",
            "http://router.voicefleet-system.svc:8080/metrics",
            "--router-pod-selector",
            "app.kubernetes.io/name=voicefleet-router",
        ]
    )
    assert config.autoscale_interval == 0.5
    assert config.router_metrics_urls == ("http://router.voicefleet-system.svc:8080/metrics",)
    assert config.router_pod_selector == "app.kubernetes.io/name=voicefleet-router"
    assert parse_args(["-A"]).autoscale_interval == 1.0
    assert parse_args(["-A", "--autoscale-interval", "0"]).autoscale_interval == 0
    with pytest.raises(UsageError, match="autoscale-interval"):
        parse_args(["-A", "--autoscale-interval", "0.01"])
    with pytest.raises(UsageError, match="router-metrics-url"):
        parse_args(["-A", "--router-metrics-url", "router:8080"])
    with pytest.raises(UsageError, match="router-pod-selector"):
        parse_args(["-A", "--router-pod-selector", "justakey"])


def test_an_unchanged_voice_gets_no_status_write_only_the_observation_time_differs() -> None:
    policy = Policy(min_replicas=1)
    obs = Observation(now=1_764_000_000.0, replicas=1, ready=(PodSample(0.0, 0, 0),))
    decision = decide(obs, ScalingState(), policy)
    written = status_patch(decision, obs, scaled=False)
    later = Observation(now=obs.now + 30, replicas=1, ready=obs.ready)
    again = decide(later, decision.state, policy)
    assert not status_differs(written, status_patch(again, later, scaled=False))
    busy = Observation(now=obs.now + 31, replicas=1, ready=(PodSample(2.5, 1, 1),))
    assert status_differs(written, status_patch(decide(busy, again.state, policy), busy, False))
    assert status_differs({}, written)


def test_a_pausing_daemon_wakes_on_close_and_on_its_stop_flag() -> None:
    """The loop's sleep ends on ``close()`` at once, and on kopf's flag within a check."""

    async def scenario() -> tuple[float, float, float]:
        autoscaler = Autoscaler(AutoscalerConfig(), kube=None)  # type: ignore[arg-type]
        started = time.monotonic()
        await autoscaler.pause(0.2, lambda: False)
        slept = time.monotonic() - started

        stop_at = time.monotonic() + 0.1
        started = time.monotonic()
        await autoscaler.pause(30.0, lambda: time.monotonic() >= stop_at)
        flagged = time.monotonic() - started

        started = time.monotonic()
        waiter = asyncio.create_task(autoscaler.pause(30.0, lambda: False))
        await asyncio.sleep(0.05)
        await autoscaler.close()
        await asyncio.wait_for(waiter, timeout=5)
        closed = time.monotonic() - started
        assert autoscaler.closing
        return slept, flagged, closed

    slept, flagged, closed = asyncio.run(scenario())
    assert 0.2 <= slept < 2.0
    assert flagged <= STOP_CHECK_SECONDS + 1.0
    assert closed < 2.0
