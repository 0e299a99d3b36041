"""Two thin ASGI wrappers at the edge of the app: the last-resort guard and HEAD.

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
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicefleet_inference.errors import ClientDisconnected, ServiceError
from voicefleet_inference.server.errors import error_body, http_status

__all__ = ["ErrorGuard", "HeadAsGet"]

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
