"""The router in front of real ``voicefleet-server`` processes on loopback, over real HTTP.

Most pods here run the ``simulated`` engine, on purpose: these tests are about load and
choice, and real CPU pods on this 2-core machine would all slow each other down, so "the
least loaded pod" would be blurred by CPU contention rather than decided by queues. The
simulated pods sleep for the real voice's cost-model time, so their queues behave like a
GPU fleet's. One test sends a real-voice request end to end.

The router runs in the test's event loop (``routerprocs.running_router``), built exactly as
``voicefleet-router`` builds it, with static upstreams instead of a Kubernetes watch; the
hold tests add and remove pods through the fleet, which is what the watch would do.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from routerprocs import metric_value, router_metrics, running_router
from serverprocs import ServerProc, launch, metric, stop, wait_ready

from voicefleet_bench.router_common import PARAGRAPH
from voicefleet_inference.router.fleet import PodInfo, VoiceKey
from voicefleet_inference.router.settings import Policy, RouterSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SPEECH = "/v1/audio/speech"
SHORT = "The quick brown fox jumps over the lazy dog near the river bank."
VOICE = VoiceKey("default", "joe")


@dataclass
class Pods:
    sims: list[ServerProc]
    """Three simulated pods: the joe voice's cost model, four times as fast."""
    tiny: ServerProc
    """A simulated pod at real speed with room for one queued request (to fill it)."""
    real: ServerProc
    """The real voice (piper-onnx)."""


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    logs = tmp_path_factory.mktemp("pods")
    sim_env = {"SIMULATED_ENGINE_SPEED_FACTOR": "4"}
    started = [launch(logs / f"sim{i}.log", "--engine", "simulated", env=sim_env) for i in range(3)]
    started.append(
        launch(
            logs / "tiny.log",
            "--engine",
            "simulated",
            "--max-queue",
            "1",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "1"},
        )
    )
    started.append(launch(logs / "real.log"))
    try:
        for server in started:
            wait_ready(server)
        yield Pods(started[:3], started[3], started[4])
    finally:
        for server in started:
            if server.proc.poll() is None:
                stop(server)


def static(*servers: ServerProc, **extra: object) -> RouterSettings:
    entries = [f"joe={s.base_url}#en_US-joe-medium" for s in servers]
    values: dict[str, object] = {"poll_interval_s": 0.1, **extra}
    return RouterSettings(static_upstreams=entries, **values)  # type: ignore[arg-type]


def body(text: str, model: str = "joe", **extra: object) -> dict[str, object]:
    return {"model": model, "input": text, "voice": "default", "response_format": "wav", **extra}


def pod_of(response: httpx.Response) -> str:
    return response.headers["x-voicefleet-pod"]


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


# -- choice under uneven load --------------------------------------------------------------


async def _preload_and_route(pods: Pods, policy: Policy) -> Counter[str]:
    """Pod 0 gets four paragraphs and pod 1 one paragraph from a *direct* caller (not the
    router); then six short requests go through the router one after another."""
    async with (
        running_router(static(*pods.sims, policy=policy)) as (_, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        direct = [
            asyncio.ensure_future(
                client.post(pods.sims[0].base_url + SPEECH, json=body(PARAGRAPH, "tts-1"))
            )
            for _ in range(4)
        ]
        direct.append(
            asyncio.ensure_future(
                client.post(pods.sims[1].base_url + SPEECH, json=body(PARAGRAPH, "tts-1"))
            )
        )
        await asyncio.sleep(0.35)  # a few scrapes
        chosen: Counter[str] = Counter()
        for _ in range(6):
            response = await client.post(url + SPEECH, json=body(SHORT))
            assert response.status_code == 200, response.text
            chosen[pod_of(response).rsplit("-", 1)[1]] += 1
        await asyncio.gather(*direct)
    return chosen


async def test_jsq_sends_nothing_to_the_pod_busy_with_other_callers_work(pods: Pods) -> None:
    chosen = await _preload_and_route(pods, Policy.JSQ_WORK)
    assert chosen["0"] == 0, chosen  # ~1.8 s of paragraphs queued there by a direct caller
    # The idle pod takes at least its share (pod 1's smaller load may drain meanwhile).
    assert chosen["2"] >= 3, chosen
    # The same traffic through round-robin does hit the busy pod: the test can fail.
    blind = await _preload_and_route(pods, Policy.ROUND_ROBIN)
    assert blind["0"] == 2, blind


async def test_concurrent_requests_spread_over_idle_pods_between_load_reports(pods: Pods) -> None:
    """Twelve requests at once land before any load report can tell: the router's own count of
    what it sent must spread them, four per pod."""
    async with (
        running_router(static(*pods.sims, poll_interval_s=5.0)) as (_, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        responses = await asyncio.gather(
            *(client.post(url + SPEECH, json=body(SHORT)) for _ in range(12))
        )
    assert all(r.status_code == 200 for r in responses)
    assert sorted(Counter(pod_of(r) for r in responses).values()) == [4, 4, 4]


# -- the real voice, end to end ------------------------------------------------------------


async def test_real_voice_by_name_models_list_and_tts_pass_through(pods: Pods) -> None:
    async with (
        running_router(static(pods.real)) as (_, url),
        httpx.AsyncClient(timeout=60) as client,
    ):
        models = (await client.get(url + "/v1/models")).json()
        speech = await client.post(url + SPEECH, json=body("Hello from the router.", "default/joe"))
        tts = await client.get(
            url + "/voices/default/joe/tts", params={"text": "Hello again.", "text_lang": "en"}
        )
        unknown = await client.post(url + SPEECH, json=body("x", "nobody"))
        bad_voice = await client.post(url + SPEECH, json=body("x", voice="no-such-speaker"))
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["default/joe"]
    assert models["data"][0]["voicefleet"]["ready_replicas"] == 1
    assert speech.status_code == 200, speech.text
    with wave.open(io.BytesIO(speech.content)) as w:
        assert w.getframerate() == 22050
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
    assert len(samples) / 22050 > 0.8
    assert float(np.sqrt(np.mean(samples**2))) > 0.01  # speech, not silence
    assert tts.status_code == 200
    assert tts.headers["content-type"] == "audio/wav"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "default/joe" in unknown.json()["error"]["message"]
    # The pod's own errors pass through untouched (its 400 lists the accepted voices).
    assert bad_voice.status_code == 400
    assert "alloy" in bad_voice.json()["error"]["message"]


# -- failures ------------------------------------------------------------------------------


async def test_a_pod_killed_mid_load_costs_the_clients_nothing(pods: Pods, tmp_path: Path) -> None:
    """SIGKILL one of three pods while 24 requests are spread over them. Every request the
    victim had not answered yet (queued or running: no byte had reached its client) is
    sent again to another pod; each client gets a complete WAV."""
    victim = wait_ready(
        launch(
            tmp_path / "victim.log",
            "--engine",
            "simulated",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "2"},
        )
    )
    try:
        async with (
            running_router(static(pods.sims[0], pods.sims[1], victim)) as (_, url),
            httpx.AsyncClient(timeout=60) as client,
        ):
            jobs = [
                asyncio.ensure_future(client.post(url + SPEECH, json=body(SHORT)))
                for _ in range(24)
            ]
            await asyncio.sleep(0.4)
            victim.proc.send_signal(signal.SIGKILL)
            responses = await asyncio.gather(*jobs)
            text = await router_metrics(url)
    finally:
        victim.proc.wait(timeout=10)
    assert [r.status_code for r in responses] == [200] * 24
    for response in responses:
        assert wav_seconds(response.content) == pytest.approx(0.057 * len(SHORT), rel=0.05)
    served = Counter(pod_of(r).rsplit("-", 1)[1] for r in responses)
    retried = metric_value(
        text, 'voicefleet_router_retries_total{reason="error",voice="default/joe"}'
    )
    retried += metric_value(
        text, 'voicefleet_router_retries_total{reason="connect_error",voice="default/joe"}'
    )
    assert retried >= 1, text  # the kill really hit requests in flight
    assert served["2"] < 8, served  # the victim did not get to answer its share


async def test_all_pods_full_is_429_with_retry_after(pods: Pods) -> None:
    async def until(name: str, value: float) -> None:
        """Wait until the tiny pod's gauge shows ``value`` (the pod's own view, not timing)."""
        deadline = time.monotonic() + 10
        while metric((await client.get(pods.tiny.base_url + "/metrics")).text, name) != value:
            assert time.monotonic() < deadline, f"{name} never reached {value}"
            await asyncio.sleep(0.02)

    async with (
        running_router(static(pods.tiny)) as (_, url),
        httpx.AsyncClient(timeout=60) as client,
    ):
        # Fill the pod step by step: one request running, then one queued (its max).
        running = asyncio.create_task(client.post(url + SPEECH, json=body(PARAGRAPH)))
        await until("voicefleet_requests_in_flight", 1)
        queued = asyncio.create_task(client.post(url + SPEECH, json=body(PARAGRAPH)))
        await until("voicefleet_queue_depth", 1)
        refused = await asyncio.gather(
            *(client.post(url + SPEECH, json=body(PARAGRAPH)) for _ in range(2))
        )
        responses = [await running, await queued, *refused]
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 429, 429], codes
    full = refused[0]
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "all_pods_full"


async def test_a_client_that_leaves_cancels_the_request_at_the_pod(pods: Pods) -> None:
    async with (
        running_router(static(pods.tiny)) as (_, url),
        httpx.AsyncClient(timeout=60) as client,
    ):
        async with client.stream(
            "POST", url + SPEECH, json=body(PARAGRAPH, stream_format="audio")
        ) as response:
            assert response.status_code == 200
            async for _chunk in response.aiter_raw():
                break  # first audio arrived: hang up
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            text = (await client.get(pods.tiny.base_url + "/metrics")).text
            if metric(text, "voicefleet_queue_work_seconds") == 0:
                break
            await asyncio.sleep(0.05)
        stopped_after = time.monotonic() - started
    # The paragraph takes ~1.8 s; the pod stopped at the next sentence boundary instead.
    assert stopped_after < 1.0, stopped_after


# -- holding -------------------------------------------------------------------------------


async def test_a_held_request_is_answered_when_a_pod_appears(pods: Pods) -> None:
    async with (
        running_router(static(pods.sims[0])) as (service, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        service.fleet.remove_pod("default/joe-static-0")  # scaled to zero
        job = asyncio.ensure_future(client.post(url + SPEECH, json=body(SHORT)))
        await asyncio.sleep(0.5)
        during = await router_metrics(url)
        assert not job.done()
        appeared = time.monotonic()
        service.fleet.upsert_pod(
            PodInfo("default", "joe-new", VOICE, pods.sims[1].base_url, ready=True)
        )
        response = await job
        waited = time.monotonic() - appeared
        after = await router_metrics(url)
    pending = 'voicefleet_router_pending_requests{voice="default/joe"}'
    assert metric_value(during, pending) == 1
    assert response.status_code == 200
    assert pod_of(response) == "default/joe-new"
    assert waited < 0.5  # woken by the change, not by a poll
    assert metric_value(after, pending) == 0
    assert (
        metric_value(
            after, 'voicefleet_router_held_requests_total{outcome="routed",voice="default/joe"}'
        )
        == 1
    )


async def test_a_held_request_times_out_with_503_after_the_cold_start_timeout(
    pods: Pods,
) -> None:
    async with (
        running_router(static(pods.sims[0], cold_start_timeout_s=1.0)) as (service, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        service.fleet.remove_pod("default/joe-static-0")
        started = time.monotonic()
        response = await client.post(url + SPEECH, json=body(SHORT))
        waited = time.monotonic() - started
        after = await router_metrics(url)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "hold_timeout"
    assert int(response.headers["retry-after"]) >= 1
    assert 0.95 <= waited < 2.0
    assert metric_value(after, 'voicefleet_router_pending_requests{voice="default/joe"}') == 0
    assert (
        metric_value(
            after, 'voicefleet_router_held_requests_total{outcome="timed_out",voice="default/joe"}'
        )
        == 1
    )


async def test_a_full_hold_queue_answers_503_at_once(pods: Pods) -> None:
    async with (
        running_router(static(pods.sims[0], max_held_per_voice=1, cold_start_timeout_s=2.0)) as (
            service,
            url,
        ),
        httpx.AsyncClient(timeout=30) as client,
    ):
        service.fleet.remove_pod("default/joe-static-0")
        first = asyncio.ensure_future(client.post(url + SPEECH, json=body(SHORT)))
        await asyncio.sleep(0.2)
        second = await client.post(url + SPEECH, json=body(SHORT))
        assert not first.done()
        first.cancel()
        text = await router_metrics(url)
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "hold_queue_full"
    rejected = 'voicefleet_router_held_requests_total{outcome="rejected",voice="default/joe"}'
    assert metric_value(text, rejected) == 1


# -- auth ----------------------------------------------------------------------------------


async def test_a_configured_token_guards_the_api_but_not_probes(pods: Pods) -> None:
    async with (
        running_router(static(pods.sims[0]), token="s3cret") as (_, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        anonymous = await client.post(url + SPEECH, json=body(SHORT))
        wrong = await client.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
        right = await client.post(
            url + SPEECH, json=body(SHORT), headers={"Authorization": "Bearer s3cret"}
        )
        probes = [(await client.get(url + p)).status_code for p in ("/healthz", "/readyz", "/")]
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert probes == [200, 200, 200]
