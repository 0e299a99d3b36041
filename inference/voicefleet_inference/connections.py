"""Connection discipline for both HTTP edges (router and inference server), under uvicorn.

An unauthenticated client must not be able to take a process's descriptors, memory or
event loop with connections that do nothing. Uvicorn bounds a request head's size
(``h11_max_incomplete_event_size``) and the idle time between requests
(``timeout_keep_alive``), but not the time a client takes to send a head, nor the number
of open connections, and its ``limit_concurrency`` counts idle connections too (20,000
idle sockets would turn every real request into a 503). So:

* :func:`guarded_http` makes uvicorn's h11 (or httptools) protocol class with two more rules:

  - a request head must arrive within ``header_timeout_s`` of the connection opening or
    of its first byte after a keep-alive pause (slow-loris connections are closed);
  - at most ``max_connections`` are open: a new one beyond it closes the connection that
    has waited longest for a request head (idle or trickling), so a flood of idle sockets
    cannot lock out the kubelet's probe; if every connection is busy, the new one is
    closed at once. The default stays below half the descriptor limit, so the process
    refuses connections long before ``accept`` fails for lack of descriptors.

* :class:`ConcurrencyLimit` answers 503 + Retry-After beyond ``max_requests`` requests in
  progress (probes and metrics exempt), instead of queueing without bound.
* :class:`BodyDeadline` gives a client ``timeout_s`` to send its whole body, then answers
  408 and lets the connection close (a slow body holds memory and a request slot).
* :class:`WholeBodyForHttp10` answers an HTTP/1.0 client a whole body with its
  Content-Length: it cannot read chunked encoding, so a stream would end in a plain close
  that looks the same whether the audio was complete or its pod died halfway. A stream
  that fails before its end becomes an error status instead of a short 200.
* :func:`limit_repeated_logs` lets each distinct message of the event loop's and
  uvicorn's loggers through at most once per interval, with a count of what it dropped:
  descriptor exhaustion must not turn into a log flood (119 MB in 15 s once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "BodyDeadline",
    "ConcurrencyLimit",
    "ConnectionLimits",
    "WholeBodyForHttp10",
    "descriptor_budget",
    "guarded_http",
    "limit_repeated_logs",
    "uvicorn_options",
]

log = logging.getLogger("voicefleet.connections")

EXEMPT_PATHS: Final = frozenset(("/healthz", "/readyz", "/metrics", "/load"))
"""Never counted against :class:`ConcurrencyLimit`: probes must answer under load."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    """Open connections at most (0: half the descriptor limit, see :func:`descriptor_budget`)."""
    header_timeout_s: float
    """Time a client has to send a whole request head."""
    keep_alive_s: float
    """Idle time allowed between two requests on one connection."""


def descriptor_budget(requested: int) -> int:
    """Connections this process may hold: ``requested``, at most half its descriptors.

    Raises the soft descriptor limit to the hard one first (as most servers do); the other
    half is left for upstream connections, files and the API-server watch.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    budget = max(16, soft // 2) if soft != resource.RLIM_INFINITY else 1 << 20
    return min(requested, budget) if requested > 0 else budget


class _HeadGuard(asyncio.Protocol):
    """The two rules (module docstring), for a protocol class of uvicorn's.

    Mixed in before :class:`H11Protocol` or :class:`HttpToolsProtocol`: the transport
    events and a response's end are guarded here for both, around the parser protocol's own
    method (next in the MRO); each subclass calls :meth:`_guard_head_seen` from its
    parser's "head complete" hook. The protocol's ``cycle`` is the request in progress: a
    new one means a request head arrived.
    """

    waiting: ClassVar[OrderedDict[_HeadGuard, None]]
    """Connections waiting for a request head, oldest first (eviction order)."""
    refused: ClassVar[int]
    max_connections: ClassVar[int]
    header_timeout_s: ClassVar[float]

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    connections: set[Any]
    _head_timer: asyncio.TimerHandle | None = None
    _awaiting: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard_made(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._guard_data()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # the parser protocol's
        self._guard_response_complete()

    def _guard_made(self, transport: asyncio.Transport) -> None:
        if len(self.connections) > self.max_connections and not self._evict_one():
            type(self).refused += 1
            transport.close()
            return
        self._await_head(start_timer=True)

    def _guard_data(self) -> None:
        if self._awaiting is self.cycle and self._head_timer is None:
            self._start_timer()  # first bytes after a keep-alive pause

    def _guard_head_seen(self) -> None:
        if self.cycle is not self._awaiting:
            self._stop_waiting()  # a request head arrived

    def _guard_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head(start_timer=False)  # keep-alive's own timer runs now

    def _await_head(self, *, start_timer: bool) -> None:
        self._awaiting = self.cycle
        self.waiting[self] = None
        self.waiting.move_to_end(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if start_timer:
            self._start_timer()

    def _start_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        self._awaiting = _NOT_WAITING
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting is self.cycle and not self.transport.is_closing():
            self._stop_waiting()
            self.transport.close()

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a head; False if none."""
        for other in self.waiting:
            if other is not self:
                other._stop_waiting()
                other.transport.close()
                return True
        return False


class _GuardedH11(_HeadGuard, H11Protocol):
    def handle_events(self) -> None:
        H11Protocol.handle_events(self)
        self._guard_head_seen()


class HeadTooLarge(Exception):
    """A request head over the limit: httptools turns it into a 400 and uvicorn closes."""


def _httptools_protocol() -> type[HttpToolsProtocol]:
    """The guarded httptools protocol, defined on first use: importing uvicorn's httptools
    module needs ``httptools``, which only the router's extra installs."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class _GuardedHttpTools(_HeadGuard, HttpToolsProtocol):
        """The same rules on uvicorn's httptools protocol (its parser, llhttp, is in C).

        llhttp has no bound on a head's size; the URL and headers are counted here and a head
        over ``max_head_bytes`` fails the parse (400, connection closed), as h11's
        ``max_incomplete_event_size`` does on the other protocol.
        """

        max_head_bytes: ClassVar[int]
        _head_bytes: int = 0

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            HttpToolsProtocol.on_message_begin(self)

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            HttpToolsProtocol.on_url(self, url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)
            HttpToolsProtocol.on_header(self, name, value)

        def on_headers_complete(self) -> None:
            HttpToolsProtocol.on_headers_complete(self)
            self._guard_head_seen()

        def _count_head(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > self.max_head_bytes:
                raise HeadTooLarge(f"request head over {self.max_head_bytes} bytes")

    return _GuardedHttpTools


def guarded_http(
    limits: ConnectionLimits, parser: str = "h11"
) -> type[H11Protocol] | type[HttpToolsProtocol]:
    """Uvicorn's protocol with a head timeout and a connection cap (module docstring).

    ``parser``: ``h11`` (pure Python) or ``httptools`` (llhttp, in C: the router's hot
    path). A class per server: its bookkeeping of connections waiting for a head is shared
    by that server's connections only.
    """
    attributes = {
        "waiting": OrderedDict(),
        "refused": 0,
        "max_connections": descriptor_budget(limits.max_connections),
        "header_timeout_s": limits.header_timeout_s,
        "max_head_bytes": MAX_HEAD_BYTES,
    }
    if parser == "httptools":
        return type("GuardedHttpToolsProtocol", (_httptools_protocol(),), attributes)
    if parser == "h11":
        return type("GuardedH11Protocol", (_GuardedH11,), attributes)
    raise ValueError(f"unknown HTTP parser {parser!r} (h11 or httptools)")


_NOT_WAITING: Final = object()
MAX_HEAD_BYTES: Final = 16 * 1024
"""Largest request head either protocol takes (URL and headers)."""


def uvicorn_options(limits: ConnectionLimits, parser: str = "h11") -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits`` (``parser``: see
    :func:`guarded_http`)."""
    return {
        "http": guarded_http(limits, parser),
        "timeout_keep_alive": limits.keep_alive_s,
        "limit_concurrency": None,  # it counts idle connections; ConcurrencyLimit does not
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }


class ConcurrencyLimit:
    """503 + Retry-After beyond ``max_requests`` HTTP requests in progress (0: no limit)."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_requests <= 0 or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await _error(
                send,
                str(scope["path"]),
                503,
                f"more than {self.max_requests} requests in progress; retry shortly",
                "server_error",
                "too_many_requests_in_progress",
                {"retry-after": "1"},
            )
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class BodyDeadline:
    """408 when a client has not sent its whole body within ``timeout_s``.

    The app then reads a disconnect (as if the client had left: it stops), its own answer
    is dropped, and the server closes the connection (the body was never finished).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        body_done = False
        cut = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done, cut, started
            if cut:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # disconnect watchers wait here: no deadline
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                cut = True
                if not started:
                    started = True
                    await _error(
                        send,
                        str(scope["path"]),
                        408,
                        f"the request body did not arrive within {self.timeout_s:g} s",
                        "invalid_request_error",
                        "request_timeout",
                        {"connection": "close"},
                    )
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)


class WholeBodyForHttp10:
    """Buffers a response without Content-Length for an HTTP/1.0 client (module docstring).

    At most ``max_bytes`` are held (a WAV of a 4,096-character input is a few MB); a longer
    body, or one whose stream fails, is answered with an error status instead.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = 64 << 20) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version") != "1.0":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []
        size = 0
        passing = False
        finished = False
        too_long = False

        async def buffered(message: Message) -> None:
            nonlocal start, size, passing, finished, too_long
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if any(k.lower() == b"content-length" for k, _ in headers):
                    passing = True  # already a whole body
                    await send(message)
                else:
                    start = message
                return
            if message["type"] != "http.response.body" or too_long:
                return
            body = bytes(message.get("body", b""))
            size += len(body)
            if size > self.max_bytes:
                too_long = True
                parts.clear()
                return
            parts.append(body)
            if not message.get("more_body", False):
                finished = True

        try:
            await self.app(scope, receive, buffered)
        except Exception:
            if passing or start is None:
                raise
            log.warning("a stream for an HTTP/1.0 client failed before its end", exc_info=True)
        if passing:
            return
        path = str(scope.get("path", ""))
        if start is None:
            return
        if too_long:
            await _error(
                send,
                path,
                502,
                f"the answer is over {self.max_bytes} bytes: ask with HTTP/1.1 to stream it",
                "server_error",
                "response_too_large",
                {},
            )
            return
        if not finished:
            await _error(
                send,
                path,
                502,
                "the audio stream failed before its end (an HTTP/1.0 client gets whole files only)",
                "server_error",
                "stream_failed",
                {},
            )
            return
        data = b"".join(parts)
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"transfer-encoding"]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})


async def _error(
    send: Send,
    path: str,
    status: int,
    message: str,
    kind: str,
    code: str,
    headers: dict[str, str],
) -> None:
    """An error in the route's shape: OpenAI's under ``/v1/``, GPT-SoVITS's elsewhere."""
    body: dict[str, object]
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    else:
        body = {"message": message}
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw.extend((k.encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class _Repeats(logging.Filter):
    """Each distinct message at most once per ``interval_s``; says how many it dropped."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} ({seen[1]} more like it in the last {self.interval_s:g} s)"
        if len(self._last) > 1024:
            self._last.clear()  # bounded whatever the messages are
        self._last[key] = (now, 0)
        return True


def limit_repeated_logs(
    names: Iterable[str] = ("asyncio", "uvicorn.error"), interval_s: float = 10.0
) -> None:
    """Attach the repeat limiter to the loggers that speak for accept and socket errors."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Repeats) for f in logger.filters):
            logger.addFilter(_Repeats(interval_s))
