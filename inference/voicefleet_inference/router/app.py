"""``create_app(...)``: the router's HTTP surface. Routes decode and delegate to the Proxy.

* ``POST /v1/audio/speech``: ``model`` names the TTSVoice (``name`` in the router's
  namespace or ``namespace/name``); the body goes to one of its pods with ``model``
  rewritten to the voice's model name; ``voice`` and everything else pass on unchanged.
* ``GET /v1/models``: every voice, in OpenAI's list shape (id ``namespace/name``).
* ``GET|POST /voices/{namespace}/{name}/tts``: the pod's GPT-SoVITS-style ``/tts``.
* ``/healthz``, ``/readyz`` (discovery has listed everything once), ``/metrics``.
* ``/``: the playground page (``static/playground.html``).

``POST /v1/audio/speech`` is the hot path and a bare ASGI route: no FastAPI request object,
dependency solving or response model per request, the same body rules, validation
(:mod:`voicefleet_inference.requests_validation`) and error mapping (:mod:`.errors`) as
every other route. Everything else goes to a FastAPI app.

A configured bearer token guards ``/v1/`` and ``/voices/``; a second one, ``metrics_token``,
guards ``/metrics`` (held requests per voice are what the operator scales from zero on, and
the series name every voice: only the operator and Prometheus read them). Probes and the
static page stay open (the page asks for the token if the API needs one).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from voicefleet_api.priority import PRIORITY_HEADER
from voicefleet_inference.cost import REFERENCE_COST
from voicefleet_inference.errors import InvalidRequest
from voicefleet_inference.requests_validation import (
    check_speakable_text,
    decode_json_object,
    excerpt,
    short_list,
)
from voicefleet_inference.router.errors import (
    BadRequest,
    BodyTimeout,
    NoPodAvailable,
    PayloadTooLarge,
    RouterError,
    Unauthorized,
    VoiceNotFound,
    install_error_handlers,
    send_error,
)
from voicefleet_inference.router.fleet import Fleet, UnknownVoice, VoiceInfo, VoiceKey
from voicefleet_inference.router.metrics import RouterMetrics
from voicefleet_inference.router.proxy import ClientGone, Proxy, Upstream

log = logging.getLogger("voicefleet.router")

__all__ = ["MAX_BODY_BYTES", "RouterApp", "create_app", "estimate_cost", "playground_html"]

MAX_BODY_BYTES: Final = 1 << 20
"""Far above any valid request (the pods cap input at a few thousand characters)."""
_FORWARDED: Final = ("content-type", "accept", "x-request-id", PRIORITY_HEADER)
"""Request headers passed on to the pod; the priority decides who a saturated pod refuses."""
_SPEECH_PATH: Final = "/v1/audio/speech"
_WANTED: Final = frozenset(
    name.encode() for name in (*_FORWARDED, "authorization", "content-length")
)
"""Request headers the speech route reads (names as ASGI servers give them: lower case)."""


def playground_html() -> str:
    """The playground page, read from the package (no external CDN, no build step)."""
    return (
        resources.files("voicefleet_inference.router")
        .joinpath("static/playground.html")
        .read_text(encoding="utf-8")
    )


def estimate_cost(text: object, speed: object) -> float:
    """Engine-seconds a request will cost, by the server's cost model (reference voice)."""
    chars = text if isinstance(text, str) else ""
    rate = float(speed) if isinstance(speed, int | float) and not isinstance(speed, bool) else 1.0
    if not math.isfinite(rate) or rate <= 0:
        rate = 1.0
    return REFERENCE_COST.estimate(chars, rate)


def _voice_not_found(model: str, known: list[str]) -> VoiceNotFound:
    """404 quoting the name as an excerpt and listing a few of the voices this router serves
    (the watched namespaces only; an error must not echo 1 MB back or list a fleet)."""
    listed = short_list(known) if known else "none (no TTSVoice is being watched)"
    return VoiceNotFound(f"no voice named {excerpt(model)}; voices: {listed}", param="model")


class BodyBudget:
    """Bytes of request bodies the router has in memory at once, over all requests.

    A body is counted from its first byte (its Content-Length reserved up front) until its
    route returns (sent on, or refused). One client per request cannot pass the body cap,
    but a thousand concurrent 1 MB bodies are a gigabyte, and parsing them all costs the
    event loop a minute: past the budget a request is refused before it is read.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise NoPodAvailable(
                f"the router is holding {self.used} bytes of request bodies (at most "
                f"{self.limit}); retry shortly",
                code="body_budget_full",
                retry_after_s=1.0,
            )
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


def _json_object(raw: bytes) -> dict[str, Any]:
    """The body as the pods decode it: the same checks, the same 400s (never a 500)."""
    try:
        payload = decode_json_object(raw)
        text = payload.get("input")
        if isinstance(text, str):
            check_speakable_text(text, "input")
    except InvalidRequest as exc:
        raise BadRequest(exc.message, param=exc.param, code=exc.code) from None
    return payload


def _require_bearer(request: Request, token: str | None) -> None:
    """Nothing when ``token`` is None; else the request must carry it (compared in constant
    time), or :class:`Unauthorized` (401)."""
    _check_bearer(request.headers.get("authorization", ""), token)


def _check_bearer(given: str, token: str | None) -> None:
    """:func:`_require_bearer` on the ``Authorization`` header's value."""
    if token is None:
        return
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")


def _headers_of(scope: Scope) -> dict[str, str]:
    """The request headers the speech route reads (first of repeated ones, as Starlette)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


class RouterApp:
    """The router's ASGI app: the speech route bare, every other route through FastAPI."""

    def __init__(
        self,
        api: FastAPI,
        speech: Callable[[Scope, Receive, Send], Any],
    ) -> None:
        self.api = api
        self._speech = speech

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == _SPEECH_PATH and scope["method"] == "POST":
            await self._speech(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    fleet: Fleet,
    proxy: Proxy,
    metrics: RouterMetrics,
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    discovery_error: Callable[[], str | None] = lambda: None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = 15.0,
    max_buffered_body_bytes: int = 64 << 20,
) -> RouterApp:
    """The app; it starts nothing (the caller runs discovery and the scraper)."""
    app = FastAPI(title="VoiceFleet router", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    page = playground_html()

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it; no traceback for a leaver

    app.add_exception_handler(ClientGone, on_client_gone)

    def authorize(request: Request) -> None:
        _require_bearer(request, token)

    budget = BodyBudget(max_buffered_body_bytes)

    async def body_of(declared: str | None, receive: Receive, taken: list[int]) -> bytes:
        try:
            return await _read_body(declared, receive, taken)
        except BodyTimeout as exc:
            # A slow sender is closed on. A large one is not: closing with its bytes
            # unread would reset the connection and could lose the 413 on the way; the
            # server discards what still comes (no memory) until the request ends.
            exc.close_connection = True
            raise

    async def _read_body(declared: str | None, receive: Receive, taken: list[int]) -> bytes:
        """The body, counted as it streams in: refused as soon as it passes the cap (a
        chunked body has no Content-Length to check first), takes too long to arrive, or
        would pass the router's budget; ``taken[0]`` is what it holds of the budget.
        ``declared`` is the request's Content-Length header."""
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLarge(f"request body over {max_body_bytes} bytes")
        if declared and declared.isdigit():
            budget.take(int(declared))
            taken[0] += int(declared)
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    part: bytes = message.get("body", b"")
                    if part:
                        size += len(part)
                        if size > max_body_bytes:
                            raise PayloadTooLarge(f"request body over {max_body_bytes} bytes")
                        if size > taken[0]:
                            budget.take(size - taken[0])
                            taken[0] = size
                        parts.append(part)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {body_timeout_s:g} s"
            ) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def headers_of(request: Request) -> dict[str, str]:
        return {k: request.headers[k] for k in _FORWARDED if k in request.headers}

    async def speech(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/audio/speech``, bare: errors through :func:`.errors.send_error`."""
        taken = [0]
        try:
            try:
                headers = _headers_of(scope)
                _check_bearer(headers.pop("authorization", ""), token)
                response = await _speech(headers, receive, taken)
            finally:
                budget.give_back(taken[0])
        except RouterError as exc:
            await send_error(scope, receive, send, exc)
            return
        except ClientGone:
            await Response(status_code=499)(scope, receive, send)  # nobody reads it
            return
        except Exception as exc:
            log.exception("unexpected error on POST %s", _SPEECH_PATH)
            await send_error(
                scope, receive, send, RouterError(f"internal error: {type(exc).__name__}")
            )
            return
        await response(scope, receive, send)

    async def _speech(headers: dict[str, str], receive: Receive, taken: list[int]) -> Response:
        raw = await body_of(headers.pop("content-length", None), receive, taken)
        payload = _json_object(raw)
        model = payload.get("model")
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(
                "model is required: the TTSVoice's name (or namespace/name)", param="model"
            )
        try:
            voice = fleet.resolve(model.strip())
        except UnknownVoice as exc:
            raise _voice_not_found(model, exc.known) from exc
        payload["model"] = voice.model_name
        del raw  # a held request keeps only the body it forwards
        body = json.dumps(payload).encode()
        headers["content-type"] = "application/json"
        upstream = Upstream(
            _SPEECH_PATH,
            "POST",
            "",
            body,
            headers,
            estimate_cost(payload.get("input"), payload.get("speed", 1.0)),
        )
        return await proxy.forward(voice, upstream, receive)

    @app.post(_SPEECH_PATH)
    async def speech_in_api(request: Request) -> Response:
        """Never reached (:class:`RouterApp` takes every POST to the path first); declared so
        that other methods get FastAPI's 405 with ``Allow: POST``, as before."""
        raise RuntimeError(f"POST {_SPEECH_PATH} is served by RouterApp")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        data = [
            _model_entry(voice, len(fleet.ready_pods(key)))
            for key, voice in sorted(fleet.voices.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.api_route("/voices/{namespace}/{name}/tts", methods=["GET", "POST"])
    async def tts(namespace: str, name: str, request: Request) -> Response:
        authorize(request)
        taken = [0]
        try:
            return await _tts(namespace, name, request, taken)
        finally:
            budget.give_back(taken[0])

    async def _tts(namespace: str, name: str, request: Request, taken: list[int]) -> Response:
        voice = fleet.voices.get(VoiceKey(namespace, name))
        if voice is None:
            raise _voice_not_found(f"{namespace}/{name}", sorted(str(k) for k in fleet.voices))
        raw = (
            await body_of(request.headers.get("content-length"), request.receive, taken)
            if request.method == "POST"
            else b""
        )
        params: dict[str, Any] = dict(request.query_params)
        if raw:
            params.update(_json_object(raw))
        speed: object = params.get("speed_factor", 1.0)
        if isinstance(speed, str):
            try:
                speed = float(speed)
            except ValueError:
                speed = 1.0
        upstream = Upstream(
            "/tts",
            request.method,
            request.url.query,
            raw,
            headers_of(request),
            estimate_cost(params.get("text"), speed),
        )
        return await proxy.forward(voice, upstream, request.receive)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if fleet.synced:
            return JSONResponse({"status": "ready", "voices": len(fleet.voices)})
        body: dict[str, Any] = {"status": "syncing"}
        error = discovery_error()
        if error:
            body["message"] = error
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        _require_bearer(request, metrics_token)
        metrics.ready_pods.clear()  # voices that went away leave no series behind
        for key in fleet.voices:
            metrics.ready_pods.labels(str(key)).set(len(fleet.ready_pods(key)))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    return RouterApp(app, speech)


def _model_entry(voice: VoiceInfo, ready: int) -> dict[str, Any]:
    return {
        "id": str(voice.key),
        "object": "model",
        "created": voice.created,
        "owned_by": "voicefleet",
        "voicefleet": {
            "namespace": voice.key.namespace,
            "name": voice.key.name,
            "model": voice.model_name,
            "ready_replicas": ready,
            "cold_start_timeout_seconds": voice.cold_start_timeout_s,
        },
    }
