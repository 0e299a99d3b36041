"""The one place domain errors (``voicefleet_inference.errors``) become HTTP responses.

:func:`install_error_handlers` maps every domain error (and FastAPI's own 404/405/validation
errors, and anything unexpected) to a response in the shape of the route that failed:
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1/``, GPT-SoVITS
api_v2's ``{"message": ...}`` everywhere else. Statuses: 400 invalid request, 401 no or
wrong bearer token (with ``WWW-Authenticate``), 413 too large, 429 queue full and 503
unavailable (both with Retry-After), 504 timeout, 500 synthesis failed, 499 client gone
(never seen by the client; counted only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from voicefleet_api import podauth
from voicefleet_inference.errors import (
    ClientDisconnected,
    InvalidRequest,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    ServiceError,
    SynthesisFailed,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "allowed_methods",
    "error_body",
    "error_response",
    "http_status",
    "install_error_handlers",
    "response_headers",
]

log = logging.getLogger("voicefleet.server")


_HTTP: Final[dict[type[ServiceError], tuple[int, str]]] = {
    InvalidRequest: (400, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    PayloadTooLarge: (413, "invalid_request_error"),
    QueueFull: (429, "rate_limit_error"),
    Unavailable: (503, "server_error"),
    RequestTimeout: (504, "server_error"),
    SynthesisFailed: (500, "server_error"),
    ClientDisconnected: (499, "invalid_request_error"),
    ServiceError: (500, "server_error"),
}
"""Status and OpenAI error type per domain error; a subclass takes its nearest base's."""


def http_status(exc: ServiceError) -> tuple[int, str]:
    """``(HTTP status, OpenAI error type)`` of a domain error."""
    for cls in type(exc).__mro__:
        if cls in _HTTP:
            return _HTTP[cls]
    return _HTTP[ServiceError]


def response_headers(exc: ServiceError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) where the error carries one;
    ``WWW-Authenticate`` on a 401 (RFC 9110 requires it)."""
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": f'{podauth.SCHEME} realm="voicefleet"'}
    if exc.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}


def _is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(
    path: str, message: str, *, openai_type: str, param: str | None, code: str
) -> dict[str, Any]:
    """The JSON error body for a route: OpenAI's shape under ``/v1/``, else api_v2's."""
    if _is_openai(path):
        return {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return {"message": message}


def error_response(path: str, exc: ServiceError) -> JSONResponse:
    """The response for a domain error on ``path``: status, body and headers as mapped here
    (also for the ASGI edge, where no route ran: the bearer check, ``server/guard.py``)."""
    status, openai_type = http_status(exc)
    body = error_body(path, exc.message, openai_type=openai_type, param=exc.param, code=exc.code)
    return JSONResponse(body, status_code=status, headers=response_headers(exc))


def _response(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(request.url.path, exc)


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
        status, _ = http_status(exc)
        if status >= 500 and not isinstance(exc, Unavailable):
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
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
