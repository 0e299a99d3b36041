"""Domain errors of the inference server and the one place they become HTTP responses.

The scheduler and the request decoders raise these; they know nothing of HTTP shapes.
:func:`install_error_handlers` maps every one of them (and FastAPI's own 404/405/validation
errors, and anything unexpected) to a response in the shape of the route that failed:
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1/``, GPT-SoVITS
api_v2's ``{"message": ...}`` everywhere else.

::

    ServiceError                  status  OpenAI type            code
    ├── InvalidRequest             400    invalid_request_error  invalid_value (or given)
    ├── PayloadTooLarge            413    invalid_request_error  payload_too_large
    ├── QueueFull                  429    rate_limit_error       queue_full      + Retry-After
    ├── Unavailable                503    server_error           (abstract)      + Retry-After
    │   ├── NotReady               503                           not_ready
    │   ├── Draining               503                           draining
    │   └── ShuttingDown           503                           shutdown
    ├── RequestTimeout             504    server_error           timeout
    ├── SynthesisFailed            500    server_error           synthesis_failed
    └── ClientDisconnected         499    (never seen: the client is gone; counted only)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = [
    "ClientDisconnected",
    "Draining",
    "InvalidRequest",
    "NotReady",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "ServiceError",
    "ShuttingDown",
    "SynthesisFailed",
    "Unavailable",
    "allowed_methods",
    "error_body",
    "install_error_handlers",
]

log = logging.getLogger("voicefleet.server")


class ServiceError(Exception):
    """Base of every error the server answers deliberately; subclasses fix the status."""

    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """``Retry-After`` (whole seconds, at least 1) where the error carries one."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class InvalidRequest(ServiceError):
    """400: a parameter is missing, mistyped, out of range or unsupported; names it."""

    status = 400
    openai_type = "invalid_request_error"
    default_code = "invalid_value"


class PayloadTooLarge(ServiceError):
    """413: the request body is larger than any valid request could be."""

    status = 413
    openai_type = "invalid_request_error"
    default_code = "payload_too_large"


class QueueFull(ServiceError):
    """429: the bounded queue is full; Retry-After is the queued work divided by workers."""

    status = 429
    openai_type = "rate_limit_error"
    default_code = "queue_full"


class Unavailable(ServiceError):
    """503: this replica cannot take requests now; another replica (or a retry) can."""

    status = 503
    default_code = "unavailable"


class NotReady(Unavailable):
    """503: the model is still loading, or every engine worker died."""

    default_code = "not_ready"


class Draining(Unavailable):
    """503: the server got SIGTERM and is finishing accepted work before it exits."""

    default_code = "draining"


class ShuttingDown(Unavailable):
    """503: the request was accepted but the drain grace ran out before it ran."""

    default_code = "shutdown"


class RequestTimeout(ServiceError):
    """504: queue wait plus synthesis took longer than the request timeout."""

    status = 504
    default_code = "timeout"


class SynthesisFailed(ServiceError):
    """500: the engine failed. Never turned into a 200 with silence."""

    status = 500
    default_code = "synthesis_failed"


class ClientDisconnected(ServiceError):
    """499 (nginx's convention): the client went away before its answer was ready.

    Nobody reads the response; the status exists so ``voicefleet_requests_total`` counts it.
    """

    status = 499
    openai_type = "invalid_request_error"
    default_code = "client_disconnected"


def _is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(
    path: str, message: str, *, openai_type: str, param: str | None, code: str
) -> dict[str, Any]:
    """The JSON error body for a route: OpenAI's shape under ``/v1/``, else api_v2's."""
    if _is_openai(path):
        return {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return {"message": message}


def _response(request: Request, exc: ServiceError) -> JSONResponse:
    body = error_body(
        request.url.path,
        exc.message,
        openai_type=exc.openai_type,
        param=exc.param,
        code=exc.code,
    )
    return JSONResponse(body, status_code=exc.status, headers=exc.headers())


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
    param = ".".join(loc) or None
    return f"{param or 'request'}: {first.get('msg', 'invalid')}", param


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Routes with an endpoint, inside included routers too (none of ours has a prefix)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", route), "routes", None)
        if inner is not None:
            yield from _leaf_routes(inner)
        else:
            yield route


def allowed_methods(request: Request) -> str:
    """``Allow`` for a 405: every method of every route on the path (Starlette names only
    the first route's), plus HEAD wherever GET is (``server/guard.py`` serves it)."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods.update(route_methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping: every error leaves the server through one of these handlers."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if exc.status >= 500 and not isinstance(exc, Unavailable):
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
        return _response(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return _response(request, InvalidRequest(message, param=param))

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        body = error_body(
            request.url.path,
            str(exc.detail),
            openai_type="invalid_request_error" if exc.status_code < 500 else "server_error",
            param=None,
            code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error"),
        )
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _response(request, SynthesisFailed(f"internal error: {type(exc).__name__}"))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
