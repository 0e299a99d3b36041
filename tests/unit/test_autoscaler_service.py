"""The first-audio model's inputs: from a pod's real metrics page to a voice's measure.

The pages are rendered by the inference server's own metrics (``create_metrics``), fed the
way its scheduler feeds them; the reader is ``voicefleet_api.load.parse_counters`` and the
windows are ``autoscaler_service.ServiceWindows``. ``HttpLoadSource`` reads one such page
from a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from aiohttp import web

from voicefleet_api import load
from voicefleet_inference.metrics import Metrics, create_metrics, render
from voicefleet_localcluster.procs import free_port
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig
from voicefleet_operator.autoscaler_service import ServiceWindows, quantile, share_at_most
from voicefleet_operator.pods import PodInfo

BUCKETS = ((0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 50.0))


def test_quantile_and_share_interpolate_within_a_bucket_as_prometheus_does() -> None:
    assert quantile(BUCKETS, 0.1) == pytest.approx(0.05)  # 5 of 10 in 0..0.1
    assert quantile(BUCKETS, 0.4) == pytest.approx(0.3)  # rank 20: half of 0.1..0.5
    assert quantile(BUCKETS, 0.99) == 1.0  # in +Inf: the last finite bound
    assert share_at_most(BUCKETS, 0.3) == pytest.approx(20 / 50)
    assert share_at_most(BUCKETS, 1.0) == pytest.approx(40 / 50)
    assert share_at_most(BUCKETS, 5.0) == pytest.approx(40 / 50)  # a lower bound
    assert quantile((), 0.5) is None
    assert share_at_most(((1.0, 0.0), (math.inf, 0.0)), 0.5) is None


def serve(
    m: Metrics, service: float, first: float, wait: float, priority: str = "standard"
) -> None:
    """What the scheduler records for one request (its seam: the metrics object)."""
    m.priority_requests_total.labels(priority=priority, outcome="accepted").inc()
    m.service_seconds.observe(service)
    m.service_seconds_squared_total.inc(service * service)
    m.start_to_first_audio_seconds.observe(first)
    m.time_to_first_audio_seconds.observe(wait + first)


def page(m: Metrics) -> load.PodCounters:
    found = load.parse_counters(render(m).decode())
    assert found is not None
    return found


def test_a_pod_page_becomes_rates_means_variability_and_observed_first_audio() -> None:
    m = create_metrics()
    for _ in range(5):  # before the operator looked: a baseline, not counted
        serve(m, 9.0, 0.3, 5.0)
    windows = ServiceWindows(rate_window=10, service_window=120)
    windows.add("a", 0.0, page(m))
    assert windows.measure(["a"], 0.0, 1.0, 0.99) is None  # one reading: nothing measured
    for t in range(1, 21):  # 20 s: 3 requests/s, 0.2 s and 1.0 s alternating
        for k in range(3):
            serve(m, 0.2 if k % 2 else 1.0, 0.1, 0.0, priority="critical" if k else "sheddable")
        windows.add("a", float(t), page(m))
    measured = windows.measure(["a"], 20.0, 1.0, 0.99)
    assert measured is not None
    assert measured.arrival_rate == pytest.approx(3.0)
    assert measured.served == 60
    services = [1.0, 0.2, 1.0] * 20
    mean = sum(services) / 60
    assert measured.mean_service == pytest.approx(mean)
    var = sum((s - mean) ** 2 for s in services) / 60
    assert measured.scv == pytest.approx(var / mean**2)
    assert 0.05 < measured.start_to_first_audio <= 0.1
    assert measured.observed_within == pytest.approx(1.0)  # the baseline's 5 s waits excluded
    assert measured.observed_seconds is not None
    assert measured.observed_seconds <= 0.1


def test_a_restarted_pod_starts_afresh_and_a_gone_one_is_forgotten() -> None:
    m = create_metrics()
    windows = ServiceWindows()
    for t in range(3):
        serve(m, 1.0, 0.1, 0.0)
        windows.add("a", float(t), page(m))
    fresh = create_metrics()  # the process restarted: its counters went back to zero
    serve(fresh, 1.0, 0.1, 0.0)
    windows.add("a", 3.0, page(fresh))
    assert windows.measure(["a"], 3.0, 1.0, 0.99) is None  # only a baseline again
    serve(fresh, 1.0, 0.1, 0.0)
    windows.add("a", 4.0, page(fresh))
    again = windows.measure(["a"], 4.0, 1.0, 0.99)
    assert again is not None
    assert again.served == 1
    windows.retain([])
    assert windows.measure(["a"], 4.0, 1.0, 0.99) is None


def test_the_rate_follows_a_step_within_its_short_window() -> None:
    m = create_metrics()
    windows = ServiceWindows(rate_window=10, service_window=120)
    for t in range(60):
        for _ in range(1 if t < 40 else 8):
            serve(m, 0.5, 0.1, 0.0)
        windows.add("a", float(t), page(m))
    measured = windows.measure(["a"], 59.0, 1.0, 0.99)
    assert measured is not None
    assert measured.arrival_rate == pytest.approx(8.0)  # not the 59 s average
    assert measured.served == 39 + 8 * 20  # after the t=0 baseline: the whole window


def test_an_older_server_without_service_times_gives_no_counters() -> None:
    old = "voicefleet_queue_depth 0\nvoicefleet_requests_in_flight 0\n"
    assert load.parse_counters(old + "voicefleet_queue_work_seconds 0\n") is None


def test_the_load_source_reads_target_pods_from_metrics_with_their_counters() -> None:
    m = create_metrics()
    m.queue_work_seconds.set(3.5)
    m.queue_depth.set(2)
    m.requests_in_flight.set(1)
    serve(m, 0.5, 0.1, 0.4)
    port = free_port()
    hits: list[str] = []

    async def metrics(_: web.Request) -> web.Response:
        hits.append("/metrics")
        return web.Response(body=render(m), content_type="text/plain")

    async def compact(_: web.Request) -> web.Response:
        hits.append("/load")
        return web.Response(text=load.format_load(load.PodLoad(3.5, 2, 1, seq=1)))

    async def scenario() -> list[list[load.PodCounters | None]]:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get(load.LOAD_PATH, compact)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        source = HttpLoadSource(LoadConfig(timeout=1.0, pod_port=port))
        pod = PodInfo("ns", "p", "v", "uid-p", "127.0.0.1", "Running", True, None, "", None)
        plain = await source.pod_samples([pod], 0.0)
        detailed = await source.pod_samples([pod], 1.0, {"uid-p"})
        await source.close()
        await runner.cleanup()
        assert plain[0].work_seconds == detailed[0].work_seconds == 3.5
        return [[s.counters for s in plain], [s.counters for s in detailed]]

    plain, detailed = asyncio.run(scenario())
    assert plain == [None]
    assert detailed == [page(m)]
    assert hits == ["/load", "/metrics"]
