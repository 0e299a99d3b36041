"""Thin ASGI wrappers at the edge of the app: the last-resort guard, HEAD, the bearer check.

:class:`ErrorGuard` sits just outside the routes' own error handling: every domain error
has been mapped by then (``server/errors.py``), so what reaches it is a bug. It answers
500 in the route's error shape with the exception's type and nothing else (no traceback
leaves the process; the log gets one, once), and treats Starlette's ``ClientDisconnect``
as what it is, a client that left (499, no traceback). A response that already started
cannot change its status: the exception goes on, and the connection is aborted, which
is what a client must see for a cut-off stream.

:class:`HeadAsGet` serves ``HEAD`` wherever ``GET`` is (RFC 9110 says a server should):
the route sees ``GET``, and uvicorn, which still knows the request was ``HEAD``, sends
the headers without the body.

:class:`BearerAuth` refuses a request to a guarded route (``/v1/…``, ``/tts``) without the
pod's token before anything reads its body: 401 with the cause, mapped where every domain
error is (``server/errors.py``). Probes, ``/metrics`` and ``/load`` stay open (the kubelet,
the autoscaler and the router's load poll carry no token).
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicefleet_api import podauth
from voicefleet_inference.errors import ClientDisconnected, ServiceError, Unauthorized
from voicefleet_inference.server.errors import error_body, error_response, http_status

__all__ = ["BearerAuth", "ErrorGuard", "HeadAsGet", "requires_token"]

log = logging.getLogger("voicefleet.server")


class ErrorGuard:
    """Any exception escaping a route becomes a 500 without a traceback in the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            path = str(scope.get("path", ""))
            if isinstance(exc, ClientDisconnect):
                error: ServiceError = ClientDisconnected("client disconnected")
            else:
                log.exception("unexpected error on %s %s", scope.get("method"), path)
                error = ServiceError(f"internal error: {type(exc).__name__}")
            status, openai_type = http_status(error)
            body = error_body(
                path, error.message, openai_type=openai_type, param=None, code=error.code
            )
            await JSONResponse(body, status_code=status)(scope, receive, send)


class HeadAsGet:
    """``HEAD`` runs the ``GET`` route; the server drops the body (it knows the method)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def requires_token(path: str) -> bool:
    """Whether ``path`` is guarded by the pod's token: the OpenAI routes and ``/tts``."""
    return path.startswith("/v1/") or path == "/tts"


class BearerAuth:
    """``Authorization: Bearer <token>`` on guarded routes, compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"{podauth.SCHEME.lower()} {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not requires_token(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        scheme, _, credentials = given.partition(b" ")
        presented = scheme.lower() + b" " + credentials.strip()
        if hmac.compare_digest(presented, self.expected):
            await self.app(scope, receive, send)
            return
        cause = "no bearer token" if not given else "a wrong bearer token"
        error = Unauthorized(
            f"this voice pod requires its bearer token (Authorization: Bearer <token>); the "
            f"request carried {cause}. Call the voice through the VoiceFleet router."
        )
        await error_response(str(scope["path"]), error)(scope, receive, send)
