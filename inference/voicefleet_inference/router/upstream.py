"""The router's HTTP/1.1 client to pods: one request per kept-alive connection, llhttp (C).

Why not aiohttp's ``ClientSession`` (which the poller still uses): on the proxy path it was
the largest share of the router's CPU per short request (docs/router.md, "Overhead
measured with wrk"): a request object, a header multidict, a payload writer, a response
object and a stream reader per request, and a timer per read. The proxy needs much less:
write one request head and body in one ``write``, parse the answer with ``httptools``
(llhttp, the parser uvicorn uses for the router's own edge), hand the body on as it
arrives, and keep the connection for the next request.

* **Connections** are kept per pod, most recently used first, for ``keepalive_s`` of
  idleness (below the pods' own 5 s, so a request is never written onto a connection the
  pod is closing); one the pod closes leaves the pool at once. A kept connection that
  fails before any byte of an answer (the pod closed it as the request went out) is
  replaced by a new connection once; a new connection that fails is the caller's to
  handle (:class:`UpstreamBroken`).
* **Timeouts**: connecting within ``connect_timeout_s`` (else :class:`ConnectFailed`); an
  answer's next bytes within ``read_timeout_s`` (else :class:`TimeoutError` and the
  connection is closed). One sweep per second checks every request in progress, instead
  of a timer per read. An infinite ``read_timeout_s`` leaves timing to the caller (the
  load watcher's held polls: one deadline each, no sweep over thousands of them).
* **Flow control**: a body the client reads more slowly than the pod sends is buffered up
  to ``_HIGH_WATER`` bytes, then the pod's connection stops being read until it drains.
* Closing an answer before its end (:meth:`PodResponse.close`) closes the connection: that
  is what tells the pod to drop or stop the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
from collections import deque
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from voicefleet_api.load import LOAD_HEADER

__all__ = ["ConnectFailed", "PodClient", "PodResponse", "UpstreamBroken"]

_HIGH_WATER: Final = 256 * 1024
"""Body bytes buffered for a slow client before the pod's connection is paused."""
_MAX_IDLE_PER_POD: Final = 256
"""Idle connections kept per pod (more are closed when released)."""
_LOAD: Final = LOAD_HEADER.encode()


class UpstreamBroken(ConnectionError):
    """The pod's connection failed: closed, reset, or an answer that is not HTTP/1.1."""


class ConnectFailed(UpstreamBroken):
    """No connection to the pod (refused, unreachable, or not within the connect timeout)."""


@functools.lru_cache(maxsize=4096)
def _target(base_url: str) -> tuple[str, int, str]:
    """``(host, port, Host header)`` of a pod's ``http://host:port``, parsed once."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"pods are reached over plain http://host:port, not {base_url!r}")
    port = parts.port or 80
    host = parts.hostname
    return host, port, parts.netloc


class PodResponse:
    """One answer from a pod: status and headers at once, the body as it arrives.

    The caller ends it with :meth:`release` (read to its end: the connection is kept) or
    :meth:`close` (anything else: the connection is closed).
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_waiter",
        "answered",
        "buffered",
        "complete",
        "head_done",
        "headers",
        "last_data",
        "load",
        "retry_after",
        "status",
        "url",
    )

    def __init__(self, conn: _PodConnection, url: str, now: float) -> None:
        self._conn = conn
        self.url = url
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        """Lower-case names, raw values, in the pod's order."""
        self.load: bytes | None = None
        """The ``x-voicefleet-load`` header's value."""
        self.retry_after: bytes | None = None
        self.head_done = False
        self.answered = False
        """Some byte of the answer arrived."""
        self.complete = False
        self.buffered = 0
        self.last_data = now
        self._chunks: deque[bytes] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- called by the connection ---------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    # -- called by the proxy --------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._conn.loop.create_future()
        await waiter
        if self._error is not None:
            raise self._error

    async def head(self) -> None:
        """Until the status line and headers have arrived."""
        while not self.head_done:
            await self._wait()

    async def next_chunk(self) -> tuple[bytes, bool]:
        """The body bytes that arrived since the last call, at least one unless the body is
        over; and whether it is over (then the answer is complete)."""
        while not self._chunks and not self.complete:
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self.buffered >= _HIGH_WATER:
            self._conn.resume()
        self.buffered = 0
        return data, self.complete

    async def read(self) -> bytes:
        """The whole body (small answers: errors)."""
        parts: list[bytes] = []
        while True:
            data, last = await self.next_chunk()
            parts.append(data)
            if last:
                return b"".join(parts)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def release(self) -> None:
        """Done with a complete answer: its connection serves the next request."""
        self._conn.finished(self, keep=self.complete)

    def close(self) -> None:
        """Done before the end (or after a failure): the connection is closed."""
        self._conn.finished(self, keep=False)


class _PodConnection(asyncio.Protocol):
    """One connection to a pod, at most one request at a time (no pipelining)."""

    def __init__(self, client: PodClient, base_url: str) -> None:
        self.client = client
        self.loop = client.loop
        self.base_url = base_url
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: PodResponse | None = None
        self.idle_since = 0.0
        self.closed = False
        self.used = False
        """It has carried a request before (a failure before any answer may be a close race)."""
        self.paused = False
        self.head_only = False
        self.keep_alive = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        response.last_data = self.loop.time()
        response.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamBroken(f"not an HTTP/1.1 answer from {response.url}: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        pool = self.client._pools.get(self.base_url)
        if pool is not None:
            with contextlib.suppress(ValueError):
                pool.remove(self)
        response = self.response
        if response is not None and not response.complete:
            response._fail(
                UpstreamBroken(f"{response.url}: connection closed ({exc or 'by the pod'})")
            )
        self.client._active.discard(self)

    def pause_writing(self) -> None:  # a request body is one write; nothing to pause
        pass

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        assert response is not None
        name = name.lower()
        response.headers.append((name, value))
        if name == _LOAD:
            response.load = value
        elif name == b"retry-after":
            response.retry_after = value

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self.parser.get_status_code()
        # Asked now: once the message is complete llhttp has reset what it depends on.
        self.keep_alive = self.parser.should_keep_alive()
        response.head_done = True
        if self.head_only:  # an answer to HEAD has no body, whatever its length says
            response.complete = True
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        if response.complete:
            return
        response._chunks.append(body)
        response.buffered += len(body)
        if response.buffered >= _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        response._wake()

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        response.complete = True
        response._wake()

    # -- the client's side ---------------------------------------------------------------

    def send(self, head: bytes, body: bytes, url: str, head_only: bool) -> PodResponse:
        assert self.transport is not None
        response = self.response = PodResponse(self, url, self.loop.time())
        self.head_only = head_only
        self.client._active.add(self)
        self.transport.write(head + body if body else head)
        return response

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def finished(self, response: PodResponse, *, keep: bool) -> None:
        if self.response is not response:
            return
        self.response = None
        self.client._active.discard(self)
        self.used = True
        if keep and not self.closed and not self.head_only and not self.paused and self.keep_alive:
            pool = self.client._pools.get(self.base_url)
            if pool is None:
                pool = self.client._pools[self.base_url] = deque()
            if len(pool) < _MAX_IDLE_PER_POD:
                self.idle_since = self.loop.time()
                pool.append(self)
                self.client._ensure_sweeper()
                return
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class PodClient:
    """Requests to pods over kept-alive connections (module docstring)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float = 4.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._pools: dict[str, deque[_PodConnection]] = {}
        self._active: set[_PodConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self,
        base_url: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> PodResponse:
        """Send the request; return once the answer's status and headers have arrived.

        Raises :class:`ConnectFailed` (no connection), :class:`UpstreamBroken` (the
        connection failed before the headers), :class:`TimeoutError` (no bytes within the
        read timeout). Cancelled, it closes the connection.
        """
        host, port, authority = _target(base_url)
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                continue  # cannot be written as one header line (never from a parsed request)
            lines.append(f"{name}: {value}\r\n")
        if body or method not in ("GET", "HEAD"):
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        url = base_url + target
        head_only = method == "HEAD"
        conn = self._idle(base_url)
        while True:
            if conn is None:
                conn = await self._connect(host, port, base_url)
            reused = conn.used
            response = conn.send(head, body, url, head_only)
            self._ensure_sweeper()
            try:
                await response.head()
            except UpstreamBroken:
                response.close()
                if reused and not response.answered:
                    # A kept connection the pod closed as the request went out (it never
                    # saw it): once more on a new connection.
                    conn = None
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response

    def _idle(self, base_url: str) -> _PodConnection | None:
        """The most recently used idle connection that is still good, if any."""
        pool = self._pools.get(base_url)
        if pool is None:
            return None
        now = self.loop.time()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int, base_url: str) -> _PodConnection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await self.loop.create_connection(
                    lambda: _PodConnection(self, base_url), host, port
                )
        except TimeoutError:
            raise ConnectFailed(
                f"no connection to {host}:{port} within {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        return protocol

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every(), self._sweep)

    def _sweep_every(self) -> float:
        return max(0.01, min(1.0, self.read_timeout_s / 10))

    def _sweep(self) -> None:
        """Fail requests whose pod has sent nothing for the read timeout; close connections
        idle for longer than the keep-alive time. Stops when there is nothing to watch."""
        self._sweeper = None
        now = self.loop.time()
        timed = math.isfinite(self.read_timeout_s)
        for conn in list(self._active) if timed else ():
            response = conn.response
            if (
                response is not None
                and not conn.paused  # a slow client, not a slow pod
                and now - response.last_data >= self.read_timeout_s
            ):
                response._fail(
                    TimeoutError(f"{response.url}: nothing for {self.read_timeout_s:g} s")
                )
                conn.close()
        idle = False
        for pool in self._pools.values():
            while pool and now - pool[0].idle_since >= self.keepalive_s:
                pool.popleft().close()
            idle = idle or bool(pool)
        for key in [k for k, pool in self._pools.items() if not pool]:
            del self._pools[key]
        if (self._active and timed) or idle:
            self._sweeper = self.loop.call_later(self._sweep_every(), self._sweep)

    async def close(self) -> None:
        """Close every connection (the router is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            for conn in list(pool):
                conn.close()
        for conn in list(self._active):
            conn.close()
        self._pools.clear()
