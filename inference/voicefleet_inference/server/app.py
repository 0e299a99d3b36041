"""``create_app(settings, scheduler, metrics)``: the FastAPI app of one inference pod.

Routes only decode and delegate (see :mod:`.dataplane`); every handler here is
``async def`` and none of them computes audio, so ``/healthz``, ``/readyz`` and
``/metrics`` answer in milliseconds however busy the engine threads are. There are no
control endpoints: no remote exit, restart or model switching.

Every response carries the pod's load (``x-voicefleet-load``, :mod:`voicefleet_api.load`),
streamed ones at their start, and ``GET /load`` answers the same line: the router learns a
pod's load from the answers it gets anyway and asks only pods it has not heard from,
instead of reading every pod's Prometheus page several times a second. Asked with
``?wait=S&after=N``, ``/load`` is held until the load changes (:mod:`.loadwait`), so an
idle pod costs a router one exchange per ``S`` seconds.

``/openapi.json`` (rendered at ``/docs``) describes both synthesis routes as they really
decode (:mod:`.openapi`); ``HEAD`` is served wherever ``GET`` is, and a 405 lists every
method the path takes (:mod:`.guard`, ``errors.allowed_methods``).
"""

from __future__ import annotations

import time
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicefleet_api import load
from voicefleet_inference.connections import BodyDeadline, ConcurrencyLimit, WholeBodyForHttp10
from voicefleet_inference.metrics import CONTENT_TYPE, Metrics, render
from voicefleet_inference.scheduler import Scheduler
from voicefleet_inference.server import gptsovits_routes, openai_routes
from voicefleet_inference.server.errors import install_error_handlers
from voicefleet_inference.server.guard import BearerAuth, ErrorGuard, HeadAsGet
from voicefleet_inference.server.loadwait import MAX_WAIT_S, WAIT_HEADER, LoadChanges
from voicefleet_inference.server.openapi import build_openapi
from voicefleet_inference.settings import Settings

__all__ = ["SYNTHESIS_PATHS", "LoadHeader", "LoadReport", "RequestMetricsMiddleware", "create_app"]

SYNTHESIS_PATHS: Final = frozenset(("/v1/audio/speech", "/tts"))


class LoadReport:
    """The pod's load now, in the compact form, numbered so readers can order reports.

    Called on the event-loop thread only (the middleware and ``/load``), so the counter
    needs no lock.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.last_seq = 0
        """The ``seq`` of the last report written (0: none yet)."""

    def __call__(self) -> str:
        s = self._scheduler
        depth = s.queue_depth()
        self.last_seq += 1
        return load.format_load(
            load.PodLoad(
                s.work_seconds(),
                depth,
                s.in_flight(),
                self.last_seq,
                free=max(0, s.config.max_queue - depth),
            )
        )


class LoadHeader:
    """Adds ``x-voicefleet-load`` to every HTTP response, as its headers are sent.

    The load is read when the status line goes out: for a stream that is its start (the
    request itself is running and counted), for a whole answer its end.
    """

    def __init__(self, app: ASGIApp, report: LoadReport) -> None:
        self.app = app
        self.report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == load.LOAD_PATH:  # its body says it
            await self.app(scope, receive, send)
            return

        async def with_load(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((_LOAD_HEADER, self.report().encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_load)


_LOAD_HEADER: Final = load.LOAD_HEADER.encode("ascii")


class RequestMetricsMiddleware:
    """Counts ``voicefleet_requests_total{code}`` and times synthesis requests, end to end.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``) so a streamed body passes through
    untouched and the duration runs to the last byte. A response that started but never
    finished counts as 499 when the client left (Starlette stops streaming quietly) and
    as 500 when the app raised.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SYNTHESIS_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: int | None = None
        completed = False

        async def watch(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        code = "500"
        try:
            await self.app(scope, receive, watch)
            code = str(status) if completed and status is not None else "499"
        finally:
            self.metrics.requests_total.labels(code=code).inc()
            self.metrics.request_duration_seconds.observe(time.monotonic() - started)


def create_app(
    settings: Settings,
    scheduler: Scheduler,
    metrics: Metrics,
    *,
    load_changes: LoadChanges | None = None,
) -> FastAPI:
    """The app; it starts nothing (the caller starts and stops the scheduler).

    ``load_changes`` replaces the holder of ``/load`` long-polls (a test's smaller bound);
    by default one is made and told of the scheduler's load steps.
    """
    app = FastAPI(
        title="VoiceFleet inference server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    report = LoadReport(scheduler)
    changes = load_changes or LoadChanges(lambda: report.last_seq, lambda: scheduler.draining)
    scheduler.on_load_change(changes.changed)
    app.include_router(openai_routes.create_router(settings, scheduler))
    app.include_router(gptsovits_routes.create_router(settings, scheduler))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: every engine worker thread is alive (draining or not)."""
        if scheduler.is_live():
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            {"status": "unhealthy", "message": "an engine worker thread is not running"},
            status_code=503,
        )

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: every engine loaded and not draining."""
        if scheduler.is_ready():
            info = scheduler.info
            return JSONResponse({"status": "ready", "model": info.model_name if info else None})
        if scheduler.draining:
            state = "draining"
        elif scheduler.is_live():
            state = "loading"
        else:
            state = "unhealthy"
        return JSONResponse({"status": state}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(render(metrics), media_type=CONTENT_TYPE)

    @app.get(load.LOAD_PATH)
    async def load_endpoint(wait: float = 0.0, after: int = 0) -> Response:
        """The pod's load in a few dozen bytes (the header carries it too); with ``wait``,
        held until it differs from report ``after`` (:mod:`.loadwait`)."""
        headers = {"cache-control": "no-store"}
        if wait > 0 and await changes.wait(after, wait):  # NaN is not > 0
            headers[WAIT_HEADER] = f"{min(wait, MAX_WAIT_S):g}"
        return Response(report(), media_type="text/plain; charset=utf-8", headers=headers)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The schema of what this pod accepts (model and voices once the model loaded)."""
        return JSONResponse(build_openapi(settings.max_input_chars, scheduler.info))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title}: API")

    # add_middleware puts each one outside the previous: the guard's 500s are counted.
    app.add_middleware(ErrorGuard)
    if settings.auth_token is not None:  # inside the metrics: refusals are counted
        app.add_middleware(BearerAuth, token=settings.auth_token.get_secret_value())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(HeadAsGet)
    app.add_middleware(WholeBodyForHttp10)
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s)
    app.add_middleware(ConcurrencyLimit, max_requests=settings.max_concurrent_requests)
    app.add_middleware(LoadHeader, report=report)
    return app
