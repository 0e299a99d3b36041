"""The router's own errors and the one place they become HTTP responses.

Errors a *pod* answers (400 bad voice, 413, 500, ...) are not translated: the pod's body
and status pass through unchanged. These are the ones only the router can see. Under
``/v1/`` they take OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
under ``/voices/.../tts`` GPT-SoVITS api_v2's ``{"message": ...}``.

::

    RouterError                      status  OpenAI type            code
    ├── BadRequest                    400    invalid_request_error  invalid_value
    ├── Unauthorized                  401    invalid_request_error  invalid_api_key
    ├── BodyTimeout                   408    invalid_request_error  request_timeout
    ├── PayloadTooLarge               413    invalid_request_error  payload_too_large
    ├── VoiceNotFound                 404    invalid_request_error  model_not_found
    ├── AllPodsFull                   429    rate_limit_error       all_pods_full      + Retry-After
    ├── NoPodAvailable                503    server_error           no_ready_pod       + Retry-After
    │                                                               (hold_timeout, hold_queue_full)
    └── UpstreamFailed                502    server_error           upstream_failed
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from voicefleet_inference.errors import ServiceError

__all__ = [
    "AllPodsFull",
    "BadRequest",
    "BodyTimeout",
    "NoPodAvailable",
    "PayloadTooLarge",
    "RouterError",
    "Unauthorized",
    "UpstreamFailed",
    "VoiceNotFound",
    "error_response",
    "install_error_handlers",
    "send_error",
]

log = logging.getLogger("voicefleet.router")


class RouterError(ServiceError):
    """A refusal only the router can see; the message/param/code fields are the core's."""

    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    close_connection: bool = False
    """Set on a refusal made before the body was read: the connection is closed after it."""

    def headers(self) -> dict[str, str]:
        out = {}
        if self.retry_after_s is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        if self.status == 401:
            out["WWW-Authenticate"] = "Bearer"
        return out


class BadRequest(RouterError):
    """400: the body is not what the route needs to pick a voice (no JSON, no model)."""

    status = 400
    openai_type = "invalid_request_error"
    default_code = "invalid_value"


class Unauthorized(RouterError):
    """401: a bearer token is configured and the request lacks it or has another."""

    status = 401
    openai_type = "invalid_request_error"
    default_code = "invalid_api_key"


class BodyTimeout(RouterError):
    """408: the client did not send its whole body in time (a slow sender holds memory)."""

    status = 408
    openai_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(RouterError):
    """413: the body is larger than any valid speech request."""

    status = 413
    openai_type = "invalid_request_error"
    default_code = "payload_too_large"


class VoiceNotFound(RouterError):
    """404: no TTSVoice by that name; the message lists the voices that exist."""

    status = 404
    openai_type = "invalid_request_error"
    default_code = "model_not_found"


class AllPodsFull(RouterError):
    """429: every ready pod of the voice refused with a full queue."""

    status = 429
    openai_type = "rate_limit_error"
    default_code = "all_pods_full"


class NoPodAvailable(RouterError):
    """503: no pod became ready within the voice's cold-start timeout, or too many wait."""

    status = 503
    default_code = "no_ready_pod"


class UpstreamFailed(RouterError):
    """502: every pod tried failed before answering (and nothing reached the client)."""

    status = 502
    default_code = "upstream_failed"


def error_response(path: str, exc: RouterError) -> JSONResponse:
    body: dict[str, Any]
    if path.startswith("/v1/"):
        body = {
            "error": {
                "message": exc.message,
                "type": exc.openai_type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    else:
        body = {"message": exc.message}
    headers = exc.headers()
    if exc.close_connection:
        headers["Connection"] = "close"  # the rest of an unread body is not worth draining
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def send_error(scope: Scope, receive: Receive, send: Send, exc: RouterError) -> None:
    """Answer ``exc`` on a bare ASGI route (the proxy's hot path) through the same mapping."""
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", scope["method"], scope["path"], exc.status, exc)
    await error_response(str(scope["path"]), exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the router through one of these."""

    async def on_router_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RouterError)
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
        return error_response(request.url.path, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request.url.path, BadRequest(f"invalid request: {exc.errors()}"))

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = RouterError(
            str(exc.detail),
            code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error"),
        )
        response = error_response(request.url.path, error)
        response.status_code = exc.status_code
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            request.url.path, RouterError(f"internal error: {type(exc).__name__}")
        )

    app.add_exception_handler(RouterError, on_router_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
