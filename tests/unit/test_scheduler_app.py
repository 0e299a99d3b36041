"""The app over its scheduler, in-process with ``FakeEngine``: formats, streaming, SSE, voices,
``/tts``, health, metrics, and a client that disconnects while its request is queued."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from scheduler_fakes import (
    SAMPLE_RATE,
    SENTENCE_SAMPLES,
    FakeBehaviour,
    FakeFactory,
    eventually,
)

from voicefleet_inference.server.runner import Service, build_service
from voicefleet_inference.settings import Settings

SPEECH = "/v1/audio/speech"


@pytest.fixture
async def behaviour() -> FakeBehaviour:
    return FakeBehaviour(model_name="en_US-fake-medium")


@pytest.fixture
async def service(behaviour: FakeBehaviour) -> AsyncIterator[Service]:
    svc = build_service(Settings(cores=2, threads_per_worker=1), FakeFactory(behaviour))
    svc.scheduler.start()
    await asyncio.wait_for(svc.scheduler.wait_loaded(), 5)
    yield svc
    behaviour.gate.set()
    svc.scheduler.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.app), base_url="http://test"
    ) as c:
        yield c


def body(**overrides: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": "en_US-fake-medium", "input": "One. Two.", "voice": "default"}
    b.update(overrides)
    return b


def wav_frames(data: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnframes()


async def test_whole_wav_has_real_sizes_and_every_sentence(client: httpx.AsyncClient) -> None:
    resp = await client.post(SPEECH, json=body(response_format="wav"))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/wav"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert wav_frames(resp.content) == (SAMPLE_RATE, 2 * SENTENCE_SAMPLES)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("pcm", "audio/pcm"),
        ("flac", "audio/flac"),
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg; codecs=opus"),
    ],
)
async def test_every_supported_format_is_encoded(
    client: httpx.AsyncClient, fmt: str, content_type: str
) -> None:
    resp = await client.post(SPEECH, json=body(response_format=fmt))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == content_type
    if fmt == "pcm":
        assert len(resp.content) == 2 * 2 * SENTENCE_SAMPLES
    else:
        assert len(resp.content) > 200


async def test_default_format_is_mp3_like_openai(client: httpx.AsyncClient) -> None:
    resp = await client.post(SPEECH, json=body())
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/mpeg"


async def test_streamed_wav_is_chunked_and_complete(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", SPEECH, json=body(input="A. B. C.", response_format="wav", stream_format="audio")
    ) as resp:
        assert resp.status_code == 200
        assert "content-length" not in resp.headers
        data = await resp.aread()
    assert data[:4] == b"RIFF"
    assert len(data) - 44 == 2 * 3 * SENTENCE_SAMPLES


async def test_sse_sends_base64_deltas_then_done(client: httpx.AsyncClient) -> None:
    resp = await client.post(SPEECH, json=body(response_format="pcm", stream_format="sse"))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in resp.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1] == {"type": "speech.audio.done"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert len(audio) == 2 * 2 * SENTENCE_SAMPLES


@pytest.mark.parametrize("voice", ["default", "en_US-fake-medium", "alloy", "verse"])
async def test_one_speaker_model_accepts_stock_voices(
    client: httpx.AsyncClient, behaviour: FakeBehaviour, voice: str
) -> None:
    resp = await client.post(SPEECH, json=body(voice=voice, response_format="pcm"))
    assert resp.status_code == 200


async def test_multi_speaker_model_takes_speaker_names() -> None:
    behaviour = FakeBehaviour(model_name="en_US-fake-medium", speakers=("amy", "bob"))
    svc = build_service(Settings(cores=2, threads_per_worker=1), FakeFactory(behaviour))
    svc.scheduler.start()
    try:
        await asyncio.wait_for(svc.scheduler.wait_loaded(), 5)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=svc.app), base_url="http://test"
        ) as c:
            for voice in ("bob", "default"):
                resp = await c.post(SPEECH, json=body(voice=voice, response_format="pcm"))
                assert resp.status_code == 200
            resp = await c.post(SPEECH, json=body(voice="alloy"))
            assert resp.status_code == 400
            assert "accepted: default, amy, bob" in resp.json()["error"]["message"]
    finally:
        svc.scheduler.stop()


async def test_tts_get_and_post_answer_audio(client: httpx.AsyncClient) -> None:
    resp = await client.get("/tts", params={"text": "One. Two.", "text_lang": "en"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/wav"
    assert wav_frames(resp.content) == (SAMPLE_RATE, 2 * SENTENCE_SAMPLES)
    resp = await client.post("/tts", json={"text": "One.", "text_lang": "en", "media_type": "raw"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/pcm"
    assert len(resp.content) == 2 * SENTENCE_SAMPLES
    resp = await client.get(
        "/tts",
        params={
            "text": "One. Two.",
            "text_lang": "en",
            "media_type": "ogg",
            "streaming_mode": "true",
        },
    )
    assert resp.status_code == 200
    assert resp.content[:4] == b"OggS"
    resp = await client.get("/tts", params={"text": "One.", "text_lang": "en", "speed_factor": "2"})
    assert resp.status_code == 200


async def test_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready", "model": "en_US-fake-medium"}
    await client.post(SPEECH, json=body(response_format="wav"))
    await client.post(SPEECH, json=body(voice="nobody"))
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in (
        "voicefleet_queue_depth 0.0",
        "voicefleet_requests_in_flight 0.0",
        "voicefleet_queue_work_seconds 0.0",
        'voicefleet_requests_total{code="200"} 1.0',
        'voicefleet_requests_total{code="400"} 1.0',
        "voicefleet_request_duration_seconds_count 2.0",
        "voicefleet_time_to_first_audio_seconds_count 1.0",
        "voicefleet_batch_size_count 1.0",
        "voicefleet_audio_seconds_total 0.2",
        'voicefleet_rejected_total{reason="queue_full"} 0.0',
    ):
        assert name in text, name


async def test_disconnected_client_is_dropped_before_it_runs(
    service: Service, behaviour: FakeBehaviour, client: httpx.AsyncClient
) -> None:
    """A raw ASGI call whose client leaves while its request waits in the queue."""
    behaviour.gate.clear()
    blocker = asyncio.ensure_future(client.post(SPEECH, json=body(input="Blocker.")))
    await eventually(lambda: service.scheduler.in_flight() == 1)

    payload = json.dumps(body(input="Gone before it ran.", response_format="wav")).encode()
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": SPEECH,
        "raw_path": SPEECH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    call = asyncio.ensure_future(service.app(scope, receive, send))
    await eventually(lambda: service.scheduler.queue_depth() == 1)
    gone.set()
    await asyncio.wait_for(call, 5)
    assert service.scheduler.queue_depth() == 0
    behaviour.gate.set()
    assert (await blocker).status_code == 200
    assert behaviour.texts() == ["Blocker."]
    registry = service.metrics.registry
    assert registry.get_sample_value("voicefleet_rejected_total", {"reason": "client_gone"}) == 1
    assert registry.get_sample_value("voicefleet_requests_total", {"code": "499"}) == 1
