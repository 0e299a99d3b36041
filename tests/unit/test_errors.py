"""Every bad input and refusal becomes the right 4xx/5xx in the route's own error shape.

The real app, routes and scheduler, in-process over ASGI, with ``FakeEngine`` behind them:
OpenAI's ``{"error": {...}}`` under ``/v1/``, GPT-SoVITS's ``{"message": ...}`` on
``/tts``; never a 200 with silence, never a 5xx for a client's mistake.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from scheduler_fakes import FakeBehaviour, FakeFactory, eventually

from voicefleet_inference.errors import Draining, QueueFull, ServiceError
from voicefleet_inference.server.errors import error_body, http_status, response_headers
from voicefleet_inference.server.runner import Service, build_service
from voicefleet_inference.settings import Settings

SPEECH = "/v1/audio/speech"
MAX_CHARS = 100


def ok_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "tts-1",
        "input": "Hello.",
        "voice": "alloy",
        "response_format": "wav",
    }
    body.update(overrides)
    return body


@dataclass
class App:
    service: Service
    client: httpx.AsyncClient
    behaviour: FakeBehaviour

    def counter(self, name: str, labels: dict[str, str]) -> float:
        return self.service.metrics.registry.get_sample_value(name, labels) or 0.0


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    apps: list[App] = []

    async def make(behaviour: FakeBehaviour | None = None, **settings: Any) -> App:
        behaviour = behaviour or FakeBehaviour(model_name="en_US-fake-medium")
        config = {"cores": 2, "threads_per_worker": 1, "max_input_chars": MAX_CHARS, **settings}
        service = build_service(Settings(**config), FakeFactory(behaviour))
        service.scheduler.start()
        if not behaviour.fail_load:
            await asyncio.wait_for(service.scheduler.wait_loaded(), 5)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://test"
        )
        app = App(service, client, behaviour)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.behaviour.gate.set()
        await app.client.aclose()
        app.service.scheduler.stop()


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


def assert_message_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"message"}
    assert body["message"]
    return str(body["message"])


# -- pure mapping ----------------------------------------------------------------------------


def test_error_body_shape_follows_the_route() -> None:
    openai = error_body("/v1/audio/speech", "m", openai_type="t", param="p", code="c")
    assert openai == {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
    assert error_body("/tts", "m", openai_type="t", param="p", code="c") == {"message": "m"}


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert response_headers(QueueFull("x", retry_after_s=2.1)) == {"Retry-After": "3"}
    assert response_headers(Draining("x", retry_after_s=0.2)) == {"Retry-After": "1"}
    assert response_headers(ServiceError("x")) == {}


def test_each_domain_error_has_its_status_and_openai_type() -> None:
    assert http_status(QueueFull("x")) == (429, "rate_limit_error")
    assert http_status(Draining("x")) == (503, "server_error")
    assert http_status(ServiceError("x")) == (500, "server_error")


# -- OpenAI route ----------------------------------------------------------------------------

BAD_OPENAI: list[tuple[str, Any, str | None, str]] = [
    ("malformed json", b'{"model": "tts-1", ', None, "could not parse the JSON body"),
    ("not an object", b"[1, 2]", None, "must be an object"),
    ("missing fields", {}, "model", "missing required parameter"),
    ("missing voice", {"model": "tts-1", "input": "Hi."}, "voice", "missing required"),
    ("input not a string", ok_body(input=5), "input", "invalid value for 'input'"),
    ("speed not a number", ok_body(speed="fast"), "speed", "invalid value for 'speed'"),
    ("unknown field", ok_body(foo=1, bar=2), "bar", "bar, foo"),
    ("unknown voice", ok_body(voice="bob"), "voice", "accepted: default, en_US-fake-medium"),
    ("unknown model", ok_body(model="gpt-5"), "model", "accepted: en_US-fake-medium, tts-1"),
    ("empty input", ok_body(input=""), "input", "not only whitespace"),
    ("whitespace input", ok_body(input=" \n\t "), "input", "not only whitespace"),
    ("too long", ok_body(input="a" * (MAX_CHARS + 1)), "input", f"at most {MAX_CHARS}"),
    ("too fast", ok_body(speed=4.5), "speed", "between 0.25 and 4.0"),
    ("too slow", ok_body(speed=0.1), "speed", "between 0.25 and 4.0"),
    ("control character", ok_body(input="Hello\x00world."), "input", "U+0000 at character 5"),
    ("lone surrogate", ok_body(input="a\ud800"), "input", "lone UTF-16 surrogate"),
    ("unknown format", ok_body(response_format="ogg"), "response_format", "unknown"),
    (
        "flac cannot stream",
        ok_body(response_format="flac", stream_format="audio"),
        "stream_format",
        "cannot be streamed",
    ),
    ("bad stream_format", ok_body(stream_format="chunks"), "stream_format", "audio, sse"),
    ("instructions", ok_body(instructions="Whisper."), "instructions", "not supported"),
    ("unspeakable", ok_body(input="..."), "input", "nothing to speak"),
]


@pytest.mark.parametrize(
    ("case", "body", "param", "fragment"), BAD_OPENAI, ids=[c[0] for c in BAD_OPENAI]
)
async def test_openai_bad_input_is_a_400_in_openai_shape(
    make_app: AppFactory, case: str, body: Any, param: str | None, fragment: str
) -> None:
    app = await make_app()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await app.client.post(SPEECH, content=content)
    error = assert_openai_error(resp, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]


async def test_oversized_body_is_a_413(make_app: AppFactory) -> None:
    app = await make_app()
    resp = await app.client.post(SPEECH, content=b"x" * 1_000_000)
    assert_openai_error(resp, 413)


async def test_engine_failure_is_a_500_never_a_200(make_app: AppFactory) -> None:
    app = await make_app()
    resp = await app.client.post(SPEECH, json=ok_body(input="FAIL."))
    error = assert_openai_error(resp, 500)
    assert error["type"] == "server_error"
    assert "simulated engine failure" in error["message"]
    assert app.counter("voicefleet_requests_total", {"code": "500"}) == 1


async def test_unknown_paths_and_methods_keep_the_route_shape(make_app: AppFactory) -> None:
    app = await make_app()
    assert_openai_error(await app.client.get("/v1/models/whatever"), 404)
    assert_openai_error(await app.client.get(SPEECH), 405)
    assert_message_error(await app.client.get("/nope"), 404)


@pytest.mark.parametrize(
    "path", ["/control", "/set_model", "/set_gpt_weights", "/set_sovits_weights"]
)
async def test_there_are_no_control_endpoints(make_app: AppFactory, path: str) -> None:
    app = await make_app()
    assert (await app.client.get(path, params={"command": "exit"})).status_code == 404
    assert (await app.client.post(path, json={"command": "exit"})).status_code in (404, 405)


# -- /tts ------------------------------------------------------------------------------------

BAD_TTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown params", {"text": "Hi.", "foo": "1", "bar": "2"}, "parameter(s): 'bar', 'foo'"),
    ("missing text", {"text_lang": "en"}, "text is required"),
    ("blank text", {"text": "   "}, "text is required"),
    ("too long", {"text": "a" * (MAX_CHARS + 1)}, f"at most {MAX_CHARS}"),
    ("missing text_lang", {"text": "Hi."}, "text_lang is required"),
    ("blank text_lang", {"text": "Hi.", "text_lang": " "}, "text_lang is required"),
    ("nul in text", {"text": "Hi\x00there.", "text_lang": "en"}, "U+0000 at character 2"),
    ("reference audio", {"text": "Hi.", "ref_audio_path": "/etc/passwd"}, "cannot clone"),
    ("prompt lang", {"text": "Hi.", "prompt_lang": "en"}, "prompt_lang"),
    ("mp4", {"text": "Hi.", "text_lang": "en", "media_type": "mp4"}, "is unknown"),
    ("other language", {"text": "Hi.", "text_lang": "zh"}, "use en or auto"),
    ("sampling knob", {"text": "Hi.", "top_k": "5"}, "top_k=5 is not supported"),
    ("streaming mode", {"text": "Hi.", "streaming_mode": "5"}, "must be 0, 1, 2, 3"),
    ("streaming mode yes", {"text": "Hi.", "streaming_mode": "yes"}, "must be 0, 1, 2, 3"),
    ("streaming mode on", {"text": "Hi.", "streaming_mode": "on"}, "must be 0, 1, 2, 3"),
    ("bool t", {"text": "Hi.", "split_bucket": "t"}, "must be true or false"),
    ("speed", {"text": "Hi.", "text_lang": "en", "speed_factor": "9"}, "between 0.25 and 4.0"),
    ("split method", {"text": "Hi.", "text_lang": "en", "text_split_method": "cut0"}, "cut4 or"),
    ("wrong type", {"text": "Hi.", "batch_size": "many"}, "invalid value for 'batch_size'"),
    ("batch size", {"text": "Hi.", "batch_size": "0"}, "batch_size must be >= 1"),
    ("huge int", {"text": "Hi.", "batch_size": "9" * 5000}, "invalid value for 'batch_size'"),
    ("unspeakable", {"text": "...", "text_lang": "en"}, "nothing to speak"),
]


@pytest.mark.parametrize(("case", "params", "fragment"), BAD_TTS, ids=[c[0] for c in BAD_TTS])
async def test_tts_get_bad_input_is_a_400_message(
    make_app: AppFactory, case: str, params: dict[str, Any], fragment: str
) -> None:
    app = await make_app()
    message = assert_message_error(await app.client.get("/tts", params=params), 400)
    assert fragment in message


@pytest.mark.parametrize(("case", "params", "fragment"), BAD_TTS, ids=[c[0] for c in BAD_TTS])
async def test_tts_post_bad_input_is_a_400_message(
    make_app: AppFactory, case: str, params: dict[str, Any], fragment: str
) -> None:
    app = await make_app()
    message = assert_message_error(await app.client.post("/tts", json=as_json(params)), 400)
    assert fragment in message


def as_json(params: dict[str, Any]) -> dict[str, Any]:
    """Query strings as the JSON values a POST body carries (``"5"`` → 5)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        try:
            out[name] = json.loads(value) if len(value) < 100 else value
        except ValueError:
            out[name] = value
    return out


async def test_tts_malformed_json_and_repeated_params(make_app: AppFactory) -> None:
    app = await make_app()
    message = assert_message_error(await app.client.post("/tts", content=b"{oops"), 400)
    assert "could not parse the JSON body" in message
    resp = await app.client.get("/tts?text=a.&text=b.")
    assert "more than once: 'text'" in assert_message_error(resp, 400)


async def test_tts_accepts_api_v2_defaults_echoed_back(make_app: AppFactory) -> None:
    app = await make_app()
    defaults = {
        "text": "Hello.",
        "text_lang": "en",
        "ref_audio_path": "",
        "prompt_text": "",
        "prompt_lang": "",
        "aux_ref_audio_paths": [],
        "top_k": 15,
        "top_p": 1,
        "temperature": 1,
        "text_split_method": "cut5",
        "batch_size": 4,
        "batch_threshold": 0.75,
        "split_bucket": True,
        "speed_factor": 1.0,
        "fragment_interval": 0.3,
        "seed": -1,
        "media_type": "wav",
        "streaming_mode": False,
        "parallel_infer": True,
        "repetition_penalty": 1.35,
        "sample_steps": 32,
        "super_sampling": False,
        "overlap_length": 2,
        "min_chunk_length": 16,
    }
    resp = await app.client.post("/tts", json=defaults)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"


# -- refusals: queue, drain, readiness, timeout ------------------------------------------------


async def test_full_queue_is_a_429_with_retry_after_in_both_shapes(make_app: AppFactory) -> None:
    behaviour = FakeBehaviour(model_name="en_US-fake-medium")
    behaviour.gate.clear()
    app = await make_app(behaviour, max_queue=1)
    running = asyncio.ensure_future(app.client.post(SPEECH, json=ok_body()))
    await eventually(lambda: app.service.scheduler.in_flight() == 1)
    queued = asyncio.ensure_future(app.client.post(SPEECH, json=ok_body()))
    await eventually(lambda: app.service.scheduler.queue_depth() == 1)
    resp = await app.client.post(SPEECH, json=ok_body())
    error = assert_openai_error(resp, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "queue_full"
    assert int(resp.headers["retry-after"]) >= 1
    resp = await app.client.get("/tts", params={"text": "Hi.", "text_lang": "en"})
    assert "queue is full" in assert_message_error(resp, 429)
    assert "retry-after" in resp.headers
    behaviour.gate.set()
    assert (await running).status_code == 200
    assert (await queued).status_code == 200
    assert app.counter("voicefleet_rejected_total", {"reason": "queue_full"}) == 2
    assert app.counter("voicefleet_requests_total", {"code": "429"}) == 2


async def test_draining_refuses_with_503_and_retry_after_but_stays_live(
    make_app: AppFactory,
) -> None:
    app = await make_app()
    app.service.scheduler.begin_drain()
    resp = await app.client.post(SPEECH, json=ok_body())
    assert assert_openai_error(resp, 503)["code"] == "draining"
    assert resp.headers["retry-after"] == "1"
    resp = await app.client.get("/tts", params={"text": "Hi.", "text_lang": "en"})
    assert "shutting down" in assert_message_error(resp, 503)
    assert (await app.client.get("/healthz")).status_code == 200
    ready = await app.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"


async def test_dead_engine_is_unhealthy_and_refuses_with_503(make_app: AppFactory) -> None:
    app = await make_app(FakeBehaviour(fail_load=True))
    await eventually(lambda: not app.service.scheduler.is_live())
    assert (await app.client.get("/healthz")).status_code == 503
    assert (await app.client.get("/readyz")).status_code == 503
    assert_openai_error(await app.client.post(SPEECH, json=ok_body()), 503)


async def test_request_timeout_is_a_504(make_app: AppFactory) -> None:
    behaviour = FakeBehaviour(model_name="en_US-fake-medium")
    behaviour.gate.clear()
    app = await make_app(behaviour, request_timeout_s=0.2)
    error = assert_openai_error(await app.client.post(SPEECH, json=ok_body()), 504)
    assert error["code"] == "timeout"
    message = assert_message_error(
        await app.client.get("/tts", params={"text": "Hi.", "text_lang": "en"}), 504
    )
    assert "longer than 0.2s" in message
