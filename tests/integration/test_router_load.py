"""The load signal between real pods and the router: headers on answers, held ``/load``
asks (a long-poll answered when the load changes) for the quiet.

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
from voicefleet_inference.router.service import RouterService
from voicefleet_inference.router.settings import RouterSettings
from voicefleet_inference.server.loadwait import MAX_HELD

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


def load_asks(server: ServerProc) -> int:
    """Asks of the pod's ``/load``, plain or held (``?wait=``), answered so far."""
    return server.log().count(f'"GET {load.LOAD_PATH}')


def pod_key(service: RouterService, server: ServerProc) -> str:
    return next(k for k, s in service.fleet.pods.items() if str(s.info.base_url) == server.base_url)


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
        # Connections open; each pod has answered twice. Until its first answer is back, a
        # pod's held ask is answered at each step of the first requests (a few asks).
        await two_at_once()
        await two_at_once()
        await asyncio.sleep(0.1)  # the access log is written after the answer
        before = {pod.port: load_asks(pod) for pod in two_pods}
        assert all(count >= 1 for count in before.values())  # asked at start
        deadline = time.monotonic() + 6.0  # twice the poll bound
        sent = 4
        while time.monotonic() < deadline:
            await two_at_once()  # each pod answers every ~0.4 s
            sent += 2
        text = await router_metrics(url)
        views = {key: state.reported_seq for key, state in service.fleet.pods.items()}
    await asyncio.sleep(0.2)  # the access log is written after the answer
    for pod in two_pods:
        assert load_asks(pod) == before[pod.port], pod.log()[-2000:]
        assert hits(pod, "/metrics") == 0
    assert metric_value(text, 'voicefleet_router_load_reports_total{source="header"}') == sent
    assert all(seq > 1 for seq in views.values()), views


async def test_a_silent_pod_is_polled_and_never_taken_for_idle(
    two_pods: list[ServerProc],
) -> None:
    """A pod that stops answering (SIGSTOP: its socket still accepts) goes silent once its
    held ask is overdue (wait + stale_after_s) and gets no request; the idle one, holding
    the router's asks, stays trusted although it says nothing for longer than
    stale_after_s, and takes them all; back, the stopped one is used again."""
    frozen, alive = two_pods
    settings = static(
        *two_pods, poll_interval_s=0.05, poll_after_s=0.2, stale_after_s=0.5, load_wait_s=1.0
    )
    try:  # the pods serve the whole module: never leave one stopped
        async with (
            running_router(settings) as (service, url),
            httpx.AsyncClient(timeout=10) as client,
        ):
            os.kill(frozen.proc.pid, signal.SIGSTOP)
            frozen_key = pod_key(service, frozen)
            alive_state = service.fleet.pods[pod_key(service, alive)]
            deadline = time.monotonic() + 10
            while not service.fleet.pods[frozen_key].silent(service.fleet.clock(), 0.5):
                assert time.monotonic() < deadline, "the stopped pod never went silent"
                assert not alive_state.silent(service.fleet.clock(), 0.5)
                await asyncio.sleep(0.05)
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 1.5:  # idle, asked, never silent
                assert not alive_state.silent(service.fleet.clock(), 0.5)
                await asyncio.sleep(0.05)
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


async def _ask_load(
    client: httpx.AsyncClient, pod: ServerProc, wait_s: float, after: int
) -> tuple[httpx.Response, load.PodLoad, float]:
    """One ``/load?wait=&after=`` ask: the answer, its report, and how long it took."""
    started = time.monotonic()
    answer = await client.get(pod.base_url + load.wait_path(wait_s, after))
    report = load.parse_load(answer.text)
    assert answer.status_code == 200, answer.text
    assert report is not None, answer.text
    return answer, report, time.monotonic() - started


async def test_a_held_load_ask_is_answered_on_a_change_and_on_timeout(
    two_pods: list[ServerProc],
) -> None:
    """The long-poll on a real pod: held while nothing changes (then answered after
    ``wait``), answered at once by a step of its load (a request another client sent),
    at once for ``after=0`` or another process's ``seq``; ``/load`` alone is as before."""
    pod = two_pods[1]
    async with httpx.AsyncClient(timeout=30) as client:
        plain = await client.get(pod.base_url + load.LOAD_PATH)
        assert load.LOAD_WAIT_HEADER not in plain.headers
        seen = load.parse_load(plain.text)
        assert seen is not None
        answer, report, took = await _ask_load(client, pod, 0.6, seen.seq)
        assert took >= 0.55, "an idle pod answered before wait"
        assert answer.headers[load.LOAD_WAIT_HEADER] == "0.6"
        assert report.seq > seen.seq
        assert (report.depth, report.in_flight) == (0, 0)
        for after in (0, report.seq + 1000):  # nothing to compare with: at once
            answer, _, took = await _ask_load(client, pod, 10.0, after)
            assert took < 2.0
            assert load.LOAD_WAIT_HEADER in answer.headers

        held = asyncio.ensure_future(_ask_load(client, pod, 20.0, report.seq))
        await asyncio.sleep(0.5)
        assert not held.done()
        work = asyncio.ensure_future(
            client.post(pod.base_url + SPEECH, json=speech(PARAGRAPH, model="tts-1"))
        )
        answer, busy, took = await asyncio.wait_for(held, 10.0)
        assert took < 5.0, "the held ask waited out its 20 s despite a new request"
        assert busy.depth + busy.in_flight == 1
        assert busy.work_s > 0
        assert (await work).status_code == 200


async def test_the_router_hears_another_clients_work_at_once_without_polling(
    two_pods: list[ServerProc],
) -> None:
    """The router holds an ask at the idle pod; a request that reaches the pod from
    elsewhere (another router replica, a direct caller) is in the router's view within a
    moment, through that ask, not at the next of a 10 s wait; and the pod was asked at
    most twice meanwhile (the held ask, and the next one)."""
    pod = two_pods[1]
    settings = static(pod, poll_after_s=0.5, stale_after_s=1.0, load_wait_s=10.0)
    async with (
        running_router(settings) as (service, _),
        httpx.AsyncClient(timeout=30) as client,
    ):
        state = service.fleet.pods[pod_key(service, pod)]
        deadline = time.monotonic() + 10
        while not (state.watched_until > service.fleet.clock() + 2.0):  # a held ask
            assert time.monotonic() < deadline, "the router never held an ask at the pod"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        asks_before = load_asks(pod)
        assert state.reported_work_s == 0.0
        sent = time.monotonic()
        work = asyncio.ensure_future(
            client.post(pod.base_url + SPEECH, json=speech(PARAGRAPH, model="tts-1"))
        )
        while not state.reported_work_s:
            assert time.monotonic() - sent < 3.0, "the pod's new work never reached the router"
            await asyncio.sleep(0.01)
        heard_after = time.monotonic() - sent
        assert (await work).status_code == 200
        assert state.answered_at < 0  # nothing of it came on an answer to the router
        await asyncio.sleep(0.2)  # the access log is written after the answer
        asks = load_asks(pod) - asks_before
    assert heard_after < 3.0
    assert asks <= 3, pod.log()[-2000:]  # the held one and the steps' few, not a poll cycle


async def test_a_pod_holds_a_bounded_number_of_asks(tmp_path: Path) -> None:
    """Past MAX_HELD held asks a pod answers at once and without the wait header (the
    asker falls back to polling); a step of its load answers every held one."""
    pod = wait_ready(
        launch(
            tmp_path / "pod.log",
            "--engine",
            "simulated",
            env={"SIMULATED_ENGINE_SPEED_FACTOR": "4"},
        )
    )
    limits = httpx.Limits(max_connections=MAX_HELD + 10, max_keepalive_connections=MAX_HELD + 10)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            seen = load.parse_load((await client.get(pod.base_url + load.LOAD_PATH)).text)
            assert seen is not None
            held = [
                asyncio.ensure_future(_ask_load(client, pod, 20.0, seen.seq))
                for _ in range(MAX_HELD)
            ]
            await asyncio.sleep(1.0)
            assert not any(h.done() for h in held)
            answer, _, took = await _ask_load(client, pod, 20.0, seen.seq)
            assert took < 2.0
            assert load.LOAD_WAIT_HEADER not in answer.headers
            work = await client.post(pod.base_url + SPEECH, json=speech(model="tts-1"))
            assert work.status_code == 200
            answers = await asyncio.wait_for(asyncio.gather(*held), 10.0)
    finally:
        stop(pod)
    assert all(load.LOAD_WAIT_HEADER in a.headers for a, _, _ in answers)
    assert all(took < 10.0 for _, _, took in answers)
