"""The load signal between real pods and the router: headers on answers, polls for the quiet.

Real ``voicefleet-server`` processes (simulated engine, so queues, not CPU contention,
decide) behind a router built as ``voicefleet-router`` builds it. The pods run with the
access log on, so a test counts exactly which requests the router made of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from routerprocs import metric_value, router_metrics, running_router
from serverprocs import ServerProc, launch, stop, wait_ready

from voicefleet_api import load
from voicefleet_inference.router.settings import RouterSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SPEECH = "/v1/audio/speech"
SHORT = "The quick brown fox jumps over the lazy dog."
PARAGRAPH = (
    "When the storm finally passed, the villagers walked down to the harbour. "
    "They counted the boats and mended the torn nets before the light went. "
    "They shared whatever bread and soup they had managed to keep dry."
)


@pytest.fixture(scope="module")
def two_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProc]]:
    """Two pods for the module (each test counts what it caused: hits before and after)."""
    directory = tmp_path_factory.mktemp("pods")
    started = [
        launch(
            directory / f"pod{i}.log",
            "--engine",
            "simulated",
            "--log-level",
            "debug",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "4"},
        )
        for i in range(2)
    ]
    try:
        for server in started:
            wait_ready(server)
        yield started
    finally:
        for server in started:
            if server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGCONT)
                stop(server)


def static(*servers: ServerProc, **extra: object) -> RouterSettings:
    entries = [f"joe={s.base_url}#en_US-joe-medium" for s in servers]
    return RouterSettings(static_upstreams=entries, **extra)  # type: ignore[arg-type]


def hits(server: ServerProc, path: str) -> int:
    """Requests for ``path`` in the pod's access log."""
    return server.log().count(f'"GET {path} HTTP/1.1"')


def speech(text: str = SHORT, **extra: object) -> dict[str, object]:
    return {"model": "joe", "input": text, "voice": "default", **extra}


async def test_the_pod_answers_its_load_on_every_response_and_on_load(
    two_pods: list[ServerProc],
) -> None:
    pod = two_pods[0]
    async with httpx.AsyncClient(timeout=30) as client:
        polled = await client.get(pod.base_url + load.LOAD_PATH)
        whole = await client.post(pod.base_url + SPEECH, json=speech(model="tts-1"))
        async with client.stream(
            "POST",
            pod.base_url + SPEECH,
            json=speech(PARAGRAPH, model="tts-1", stream_format="audio"),
        ) as streamed:
            at_start = streamed.headers.get(load.LOAD_HEADER)
            await streamed.aread()
        refused = await client.post(pod.base_url + SPEECH, content=b"{")
    first = load.parse_load(polled.text)
    assert polled.status_code == 200
    assert polled.headers["content-type"].startswith("text/plain")
    assert first is not None
    assert len(polled.content) < 80
    after_whole = load.parse_load(whole.headers[load.LOAD_HEADER])
    assert after_whole is not None
    assert after_whole.seq > first.seq
    # A stream says its load as it starts: its own request is running then.
    assert at_start is not None
    during = load.parse_load(at_start)
    assert during is not None
    assert during.in_flight == 1
    assert during.work_s > 0
    assert refused.status_code == 400
    assert load.LOAD_HEADER in refused.headers


async def test_a_pod_the_router_talks_to_is_never_polled_or_scraped(
    two_pods: list[ServerProc],
) -> None:
    """Steady traffic through the router: every pod's load reaches it on the answers."""
    # A generous bound: this shared machine stalls for a second at times.
    settings = static(*two_pods, poll_interval_s=0.05, poll_after_s=3.0, stale_after_s=6.0)

    async def two_at_once() -> None:
        answers = await asyncio.gather(*(client.post(url + SPEECH, json=speech()) for _ in (1, 2)))
        assert [a.status_code for a in answers] == [200, 200]
        assert all(load.LOAD_HEADER not in a.headers for a in answers)  # not for clients

    async with (
        running_router(settings) as (service, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        await two_at_once()  # connections open; each pod has answered once
        await asyncio.sleep(0.1)  # the access log is written after the answer
        before = {pod.port: hits(pod, load.LOAD_PATH) for pod in two_pods}
        assert all(count >= 1 for count in before.values())  # asked at start
        deadline = time.monotonic() + 6.0  # twice the poll bound
        sent = 2
        while time.monotonic() < deadline:
            await two_at_once()  # each pod answers every ~0.4 s
            sent += 2
        text = await router_metrics(url)
        views = {key: state.reported_seq for key, state in service.fleet.pods.items()}
    await asyncio.sleep(0.2)  # the access log is written after the answer
    for pod in two_pods:
        assert hits(pod, load.LOAD_PATH) == before[pod.port], pod.log()[-2000:]
        assert hits(pod, "/metrics") == 0
    assert metric_value(text, 'voicefleet_router_load_reports_total{source="header"}') == sent
    assert all(seq > 1 for seq in views.values()), views


async def test_a_silent_pod_is_polled_and_never_taken_for_idle(
    two_pods: list[ServerProc],
) -> None:
    """A pod that stops answering (SIGSTOP: its socket still accepts) gets no request once
    it is silent; the idle one that answers polls takes them all; back, it is used again."""
    frozen, alive = two_pods
    settings = static(*two_pods, poll_interval_s=0.05, poll_after_s=0.2, stale_after_s=0.5)
    try:  # the pods serve the whole module: never leave one stopped
        async with (
            running_router(settings) as (service, url),
            httpx.AsyncClient(timeout=10) as client,
        ):
            idle_polls = hits(alive, load.LOAD_PATH)
            os.kill(frozen.proc.pid, signal.SIGSTOP)
            frozen_key = next(
                k for k, s in service.fleet.pods.items() if str(frozen.port) in str(s.info.base_url)
            )
            deadline = time.monotonic() + 10
            while not service.fleet.pods[frozen_key].silent(service.fleet.clock(), 0.5):
                assert time.monotonic() < deadline, "the stopped pod never went silent"
                await asyncio.sleep(0.05)
            assert hits(alive, load.LOAD_PATH) > idle_polls  # no traffic: it is asked instead
            served = []
            for _ in range(6):
                answer = await client.post(url + SPEECH, json=speech())
                assert answer.status_code == 200, answer.text
                served.append(answer.headers["x-voicefleet-pod"])
            assert set(served) == {next(k for k in service.fleet.pods if k != frozen_key)}
            os.kill(frozen.proc.pid, signal.SIGCONT)
            while service.fleet.pods[frozen_key].silent(service.fleet.clock(), 0.5):
                assert time.monotonic() < deadline, "the resumed pod was never heard from again"
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(
                *(client.post(url + SPEECH, json=speech()) for _ in range(6))
            )
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen_key in {a.headers["x-voicefleet-pod"] for a in answers}


async def _http10(base_url: str, payload: dict[str, object]) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request over a raw socket: status, headers, the body read to EOF."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = json.dumps(payload).encode()
    writer.write(
        b"POST /v1/audio/speech HTTP/1.0\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_an_http10_client_of_a_stream_gets_a_whole_file_or_an_error(
    two_pods: list[ServerProc], tmp_path: Path
) -> None:
    """HTTP/1.0 has no chunked encoding: a stream would end in a close that looks the same
    complete or cut. Router and pod answer the whole file with Content-Length, and a pod
    dying mid-stream is an error status, not a short 200."""
    streamed = speech(PARAGRAPH, stream_format="audio", response_format="wav")
    slow = wait_ready(
        launch(
            tmp_path / "slow.log",
            "--engine",
            "simulated",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "1"},
        )
    )
    try:
        async with running_router(static(two_pods[0])) as (_, url):
            status, headers, body = await _http10(url, streamed)
            direct = await _http10(two_pods[0].base_url, {**streamed, "model": "tts-1"})
        assert status == 200
        assert int(headers["content-length"]) == len(body)
        assert body.startswith(b"RIFF")
        assert len(body) > 100_000
        assert direct[0] == 200
        assert int(direct[1]["content-length"]) == len(direct[2])

        async with running_router(static(slow)) as (service, url):
            asking = asyncio.create_task(_http10(url, streamed))
            deadline = time.monotonic() + 30
            while not service.metrics.registry.get_sample_value(  # the stream has started
                "voicefleet_router_time_to_first_byte_seconds_count", {"voice": "default/joe"}
            ):
                assert time.monotonic() < deadline, "the stream never started"
                await asyncio.sleep(0.02)
            slow.proc.send_signal(signal.SIGKILL)
            cut_status, _, cut_body = await asking
    finally:
        if slow.proc.poll() is None:
            stop(slow)
        slow.proc.wait(timeout=10)
    assert cut_status == 502, (cut_status, cut_body[:300])
    assert b"stream_failed" in cut_body


async def test_held_requests_go_to_a_new_pod_no_faster_than_it_can_queue(
    tmp_path: Path,
) -> None:
    """Twelve requests wait for a voice at zero replicas; its pod, when it comes, queues
    two. They are released as its reported free slots allow, so none gets 429 (a hundred
    released at once into a queue of 64 got 429 after waiting 14 s)."""
    tiny = wait_ready(
        launch(
            tmp_path / "tiny.log",
            "--engine",
            "simulated",
            "--max-queue",
            "2",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "4"},
        )
    )
    try:
        async with (
            running_router(static(tiny)) as (service, url),
            httpx.AsyncClient(timeout=60) as client,
        ):
            (key,) = service.fleet.pods
            info = service.fleet.pods[key].info
            service.fleet.remove_pod(key)  # zero replicas, as the watch would say
            jobs = [
                asyncio.ensure_future(client.post(url + SPEECH, json=speech())) for _ in range(12)
            ]
            deadline = time.monotonic() + 10
            while service.proxy.held("default/joe") < 12:
                assert time.monotonic() < deadline, service.proxy.held("default/joe")
                await asyncio.sleep(0.02)
            service.fleet.upsert_pod(info)  # the pod is ready
            answers = await asyncio.gather(*jobs)
    finally:
        stop(tiny)
    assert [a.status_code for a in answers] == [200] * 12, [a.text for a in answers]
