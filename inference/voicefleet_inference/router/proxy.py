"""Send one request to the best pod, stream its answer back, retry while that is safe.

One request's life::

    arrival ─▶ decide() ─ Route ─▶ send to pod ─ 429/503/connect/send error ─▶ mark, decide()
                  │                    │ status + headers arrived (any other status)
                  │                    ▼
                  │               relay bytes as they come (never buffered whole) ─▶ done
                  ├─ Hold ─▶ wait for a pod change (≤ the voice's cold-start timeout) ─▶ decide()
                  └─ Reject ─▶ 429 (every ready pod full) / 503 (hold queue full)

Retrying is safe until the first byte reaches the client: synthesis has no side effects,
and the client has seen nothing. After that, a failure ends the stream early (the client
sees a truncated body, which is an error for every format) and is never retried.

A client that leaves cancels the upstream request at every stage: while held, while the
pod computes (before its headers), and while streaming. Closing the upstream connection
is what tells the pod to drop the request (its queue removes it, or stops computing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Histogram
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from voicefleet_api import load, podauth
from voicefleet_inference.router.choice import Hold, Reject, Route, decide
from voicefleet_inference.router.errors import (
    AllPodsFull,
    NoPodAvailable,
    RouterError,
    UpstreamFailed,
    VoiceNotFound,
)
from voicefleet_inference.router.fleet import Fleet, Flight, PodInfo, VoiceInfo
from voicefleet_inference.router.metrics import RouterMetrics
from voicefleet_inference.router.settings import Policy
from voicefleet_inference.router.upstream import (
    ConnectFailed,
    PodClient,
    PodResponse,
    UpstreamBroken,
)

__all__ = ["POD_HEADER", "ClientGone", "Proxy", "RelayResponse", "Upstream"]

log = logging.getLogger("voicefleet.router")

POD_HEADER: Final = "x-voicefleet-pod"
"""Response header naming the pod that answered (``namespace/pod``), for debugging."""

_HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "date",
        "server",
        load.LOAD_HEADER,  # the pod's load is for routers, not for clients
    )
)
_HOP_BY_HOP_RAW: Final = frozenset(name.encode() for name in _HOP_BY_HOP)
_HOLD_POLL_S: Final = 0.25
"""Held requests look again at least this often (marks on pods expire without events)."""
_FULL_MARK_MAX_S: Final = 1.0
_DRAINING_MARK_S: Final = 2.0
_DOWN_MARK_S: Final = 1.0
_HOLD_RETRY_AFTER_S: Final = 5.0


class ClientGone(Exception):
    """The client disconnected before its answer started; nobody reads a response."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """What to send to whichever pod is chosen."""

    path: str
    method: str
    query: str
    body: bytes
    headers: Mapping[str, str]
    cost_s: float


@dataclass(slots=True)
class _Failed:
    outcome: str
    retry_after_s: float | None = None


class _Disconnect:
    """Cancels the request's own task when its client disconnects.

    After the body has been read, the next ASGI message is ``http.disconnect``; one small
    watcher task waits for it. Cancelling the request's task (rather than racing every
    await against an event) interrupts whatever it is doing, holding, waiting for a pod's
    headers or relaying bytes, with no extra task per step.
    """

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.armed = True
        self._owner = asyncio.current_task()
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.armed and self._owner is not None:
                    self.gone = True
                    self._owner.cancel()
                return

    def absorb(self) -> bool:
        """In ``except CancelledError``: True (and the cancellation undone) if it was ours."""
        if self.gone and self._owner is not None:
            self._owner.uncancel()
            return True
        return False

    def close(self) -> None:
        """Stop watching (synchronously: nothing can cancel the task after this)."""
        self.armed = False
        self._task.cancel()


class RelayResponse(Response):
    """Streams a pod's open response to the client chunk by chunk, then closes it.

    Whatever ends the relay (last byte, client gone, pod gone), the upstream response is
    closed and ``on_done(completed)`` runs exactly once.
    """

    def __init__(
        self,
        upstream: PodResponse,
        headers: list[tuple[bytes, bytes]],
        disconnect: _Disconnect,
        on_first_byte: Callable[[], None],
        on_done: Callable[[bool], None],
    ) -> None:
        self.status_code = upstream.status
        self.background = None
        self.raw_headers = headers
        self._upstream = upstream
        self._disconnect = disconnect
        self._on_first_byte = on_first_byte
        self._on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            first = True
            while True:
                chunk, last = await self._upstream.next_chunk()
                if first and chunk:
                    self._on_first_byte()
                    first = False
                if last:
                    # The last bytes and the end in one message (a short answer arrives
                    # whole: one write to the client).
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._disconnect.close()  # before any other await: the answer is complete
            completed = True
        except asyncio.CancelledError:
            if not self._disconnect.absorb():
                raise
        except (OSError, TimeoutError) as exc:
            # The pod went away mid-stream: the client's body is cut short (an error for
            # every format), which is all we can do once bytes were sent.
            log.warning("stream from %s broke: %r", self._upstream.url, exc)
        finally:
            self._disconnect.close()
            if completed:
                self._upstream.release()  # read to its end: the connection is reused
            else:
                self._upstream.close()  # closing it is what tells the pod to stop
            self._on_done(completed)


class Proxy:
    """The request side of the router: decide, send, retry, hold, relay.

    Pods are asked through :class:`.upstream.PodClient` (HTTP/1.1 on kept-alive
    connections, parsed by llhttp in C): httpx's pure-Python HTTP/1.1 was 40 % of the
    router's CPU per request, and aiohttp's ``ClientSession`` still the largest share after
    it (docs/router.md, "Overhead"). Closed by :meth:`close`.
    """

    def __init__(
        self,
        fleet: Fleet,
        metrics: RouterMetrics,
        *,
        connect_timeout_s: float = 1.0,
        upstream_timeout_s: float = 300.0,
        policy: Policy = Policy.JSQ_WORK,
        max_attempts: int = 3,
        max_held_per_voice: int = 100,
        max_held_bytes_per_voice: int = 8 << 20,
        max_held_bytes: int = 64 << 20,
        sample_above: int = 8,
        rng: random.Random | None = None,
        pod_token_key: str | None = None,
    ) -> None:
        self.fleet = fleet
        self.metrics = metrics
        # Idle pod connections are dropped before the pods' own keep-alive timeout
        # (uvicorn: 5 s), so a request is never written onto one the pod is closing.
        self._pods = PodClient(
            connect_timeout_s=connect_timeout_s, read_timeout_s=upstream_timeout_s, keepalive_s=4.0
        )
        self.policy = policy
        self.max_attempts = max_attempts
        self.max_held_per_voice = max_held_per_voice
        self.max_held_bytes_per_voice = max_held_bytes_per_voice
        self.max_held_bytes = max_held_bytes
        self._held_bytes: dict[str, int] = {}
        self._held_bytes_total = 0
        self.sample_above = sample_above
        self.rng = rng or random.Random()
        self._turn = 0
        self._held: dict[str, int] = {}
        self._header_reports = metrics.load_reports_total.labels("header")
        self._pod_token_key = pod_token_key
        # Labelled series each request touches, looked up once (a labels() call hashes and
        # locks): by (voice, code), by voice, by (voice, pod) for "ok"; a gone pod's series
        # is dropped from the registry and from here.
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._first_bytes: dict[str, Histogram] = {}
        self._oks: dict[tuple[str, str], Counter] = {}
        fleet.on_pod_gone(self._forget_pod)

    def _forget_pod(self, pod: PodInfo) -> None:
        self._oks.pop((pod.voice.label, pod.name), None)

    def _duration(self, label: str, code: str) -> Histogram:
        series = self._durations.get((label, code))
        if series is None:
            series = self._durations[label, code] = self.metrics.request_duration_seconds.labels(
                label, code
            )
        return series

    def _first_byte(self, label: str) -> Histogram:
        series = self._first_bytes.get(label)
        if series is None:
            series = self._first_bytes[label] = self.metrics.time_to_first_byte_seconds.labels(
                label
            )
        return series

    def _ok(self, label: str, pod: str) -> Counter:
        series = self._oks.get((label, pod))
        if series is None:
            series = self._oks[label, pod] = self.metrics.upstream_requests_total.labels(
                label, pod, "ok"
            )
        return series

    def held(self, voice: str) -> int:
        return self._held.get(voice, 0)

    async def close(self) -> None:
        """Close the pods' connections (the router is stopping)."""
        await self._pods.close()

    async def forward(self, voice: VoiceInfo, upstream: Upstream, receive: Receive) -> Response:
        """The response for ``upstream`` sent to one of ``voice``'s pods (or a RouterError)."""
        arrived = time.monotonic()
        label = voice.key.label
        disconnect = _Disconnect(receive)
        try:
            try:
                response = await self._route(voice, upstream, disconnect, arrived)
            except asyncio.CancelledError:
                if not disconnect.absorb():
                    raise
                raise ClientGone from None
        except ClientGone:
            disconnect.close()
            self._duration(label, "499").observe(time.monotonic() - arrived)
            return Response(status_code=499)
        except RouterError as exc:
            disconnect.close()
            self._duration(label, str(exc.status)).observe(time.monotonic() - arrived)
            raise
        except BaseException:
            disconnect.close()
            raise
        return response

    async def _route(
        self, voice: VoiceInfo, upstream: Upstream, disconnect: _Disconnect, arrived: float
    ) -> Response:
        label = voice.key.label
        deadline = arrived + voice.cold_start_timeout_s
        tried: set[str] = set()
        attempts = 0
        holding: float | None = None
        last: _Failed | None = None
        hold_outcome = "routed"
        try:
            while True:
                if voice.key not in self.fleet.voices:
                    raise VoiceNotFound(f"voice {label} was deleted", param="model")
                held_others = self.held(label) - (1 if holding is not None else 0)
                self._turn += 1
                verdict = decide(
                    self.policy,
                    self.fleet.candidates(voice.key),
                    tried=tried,
                    held=held_others,
                    max_held=self.max_held_per_voice,
                    rng=self.rng,
                    turn=self._turn,
                    sample_above=self.sample_above,
                )
                if (
                    isinstance(verdict, Route)
                    and holding is not None
                    and not self._has_room(verdict.pod.key)
                ):
                    verdict = Hold()  # released only as fast as the pod can queue them
                if isinstance(verdict, Route):
                    if attempts >= self.max_attempts:
                        raise _exhausted(label, attempts, last)
                    attempts += 1
                    result = await self._attempt(
                        voice, verdict.pod.key, upstream, disconnect, arrived
                    )
                    if isinstance(result, Response):
                        return result
                    last = result
                    tried.add(verdict.pod.key)
                    self.metrics.retries_total.labels(label, result.outcome).inc()
                    continue
                if isinstance(verdict, Reject) and verdict.status == 429:
                    raise AllPodsFull(
                        f"every ready pod of voice {label} is full; retry later",
                        retry_after_s=(last.retry_after_s if last else None) or 1.0,
                    )
                if isinstance(verdict, Reject):
                    hold_outcome = "rejected"
                    if holding is None:
                        self.metrics.held_requests_total.labels(label, "rejected").inc()
                    raise NoPodAvailable(
                        f"voice {label} has no ready pod and {self.max_held_per_voice} "
                        "requests are already waiting for one",
                        code="hold_queue_full",
                        retry_after_s=_HOLD_RETRY_AFTER_S,
                    )
                assert isinstance(verdict, Hold)
                if holding is None:
                    self._admit_held_bytes(label, len(upstream.body))
                    holding = time.monotonic()
                    self._set_held(label, +1, len(upstream.body))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    hold_outcome = "timed_out"
                    raise NoPodAvailable(
                        f"voice {label} has no ready pod after {voice.cold_start_timeout_s:g} s "
                        "(its cold-start timeout); it may still be starting",
                        code="hold_timeout",
                        retry_after_s=_HOLD_RETRY_AFTER_S,
                    )
                hold_outcome = "cancelled"  # if the client leaves while we wait
                await self._wait(voice, min(remaining, _HOLD_POLL_S))
                hold_outcome = "routed"
                tried.clear()
                attempts = 0
        finally:
            if holding is not None:
                self._set_held(label, -1, -len(upstream.body))
                self.metrics.hold_seconds.labels(label).observe(time.monotonic() - holding)
                self.metrics.held_requests_total.labels(label, hold_outcome).inc()

    async def _wait(self, voice: VoiceInfo, within_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self.fleet.changed(voice.key).wait()

    def _has_room(self, pod_key: str) -> bool:
        """A held request goes to ``pod_key`` only while its reported queue has a free slot
        for it (a pod that just became ready is asked first): 100 held requests released
        at once into a queue of 64 used to get 429 after waiting."""
        state = self.fleet.pod(pod_key)
        if state is None:
            return False
        free = state.free_slots(self.fleet.clock(), self.fleet.stale_after_s)
        return free is None or free > 0

    def _admit_held_bytes(self, label: str, size: int) -> None:
        """Refuse to hold a body that would pass the voice's or the router's byte cap.

        Held requests keep their bodies in memory for up to the cold-start timeout; the
        count cap alone lets 100 bodies of 1 MiB per voice, times every voice, pile up.
        """
        if self._held_bytes.get(label, 0) + size > self.max_held_bytes_per_voice:
            self.metrics.held_requests_total.labels(label, "rejected").inc()
            raise NoPodAvailable(
                f"voice {label} has no ready pod and its waiting requests already hold "
                f"{self._held_bytes.get(label, 0)} bytes (at most "
                f"{self.max_held_bytes_per_voice} per voice)",
                code="hold_queue_full",
                retry_after_s=_HOLD_RETRY_AFTER_S,
            )
        if self._held_bytes_total + size > self.max_held_bytes:
            self.metrics.held_requests_total.labels(label, "rejected").inc()
            raise NoPodAvailable(
                f"voice {label} has no ready pod and the router's waiting requests already "
                f"hold {self._held_bytes_total} bytes (at most {self.max_held_bytes})",
                code="hold_queue_full",
                retry_after_s=_HOLD_RETRY_AFTER_S,
            )

    def _set_held(self, label: str, delta: int, size: int) -> None:
        count = self._held.get(label, 0) + delta
        held_bytes = self._held_bytes.get(label, 0) + size
        self._held_bytes_total += size
        if held_bytes:
            self._held_bytes[label] = held_bytes
        else:
            self._held_bytes.pop(label, None)
        if count:
            self._held[label] = count
        else:
            self._held.pop(label, None)
        self.metrics.pending_requests.labels(label).set(count)

    async def _attempt(
        self,
        voice: VoiceInfo,
        pod_key: str,
        upstream: Upstream,
        disconnect: _Disconnect,
        arrived: float,
    ) -> Response | _Failed:
        state = self.fleet.pod(pod_key)
        label = voice.key.label
        if state is None or state.info.base_url is None:
            return _Failed("error")
        pod_name = state.info.name
        target = f"{upstream.path}?{upstream.query}" if upstream.query else upstream.path
        headers = upstream.headers
        if "accept" not in headers or self._pod_token_key is not None:
            headers = dict(headers)
            headers.setdefault("accept", "*/*")
            if self._pod_token_key is not None:
                token = podauth.pod_token(self._pod_token_key, voice.key.namespace, voice.key.name)
                headers["authorization"] = f"{podauth.SCHEME} {token}"
        flight = self.fleet.begin(pod_key, upstream.cost_s)
        try:
            response = await self._pods.request(
                state.info.base_url, upstream.method, target, headers, upstream.body
            )
        except asyncio.CancelledError:
            self.fleet.end(flight)
            raise
        except ConnectFailed as exc:
            self.fleet.end(flight)
            self.fleet.mark(pod_key, down_s=_DOWN_MARK_S)
            log.info("pod %s unreachable (%s); trying another", pod_key, exc)
            return self._count(label, pod_name, _Failed("connect_error"))
        except TimeoutError as exc:
            self.fleet.end(flight)
            raise UpstreamFailed(f"pod {pod_key} did not answer in time: {exc!r}") from exc
        except (UpstreamBroken, OSError) as exc:
            self.fleet.end(flight)
            self.fleet.mark(pod_key, down_s=_DOWN_MARK_S)
            log.info("pod %s failed before answering (%r); trying another", pod_key, exc)
            return self._count(label, pod_name, _Failed("error"))
        self._take_load(pod_key, response)
        if response.status in (429, 503):
            value = response.retry_after
            retry_after = _retry_after(value.decode("latin-1") if value else None)
            try:
                await response.read()
                response.release()
            except (OSError, TimeoutError):
                response.close()
            self.fleet.end(flight)
            if response.status == 429:
                self.fleet.mark(pod_key, full_s=min(retry_after or 1.0, _FULL_MARK_MAX_S))
                return self._count(label, pod_name, _Failed("full", retry_after))
            self.fleet.mark(pod_key, draining_s=_DRAINING_MARK_S)
            return self._count(label, pod_name, _Failed("draining", retry_after))
        self._ok(label, pod_name).inc()
        return self._relay(label, pod_key, response, flight, disconnect, arrived)

    def _take_load(self, pod_key: str, response: PodResponse) -> None:
        """The pod's load from its answer's header: the signal that needs no poll."""
        value = response.load
        report = load.parse_load(value.decode("latin-1")) if value else None
        if report is not None:
            self._header_reports.inc()
            self.fleet.record_load(pod_key, self.fleet.clock(), report)

    def _count(self, label: str, pod: str, failed: _Failed) -> _Failed:
        self.metrics.upstream_requests_total.labels(label, pod, failed.outcome).inc()
        return failed

    def _relay(
        self,
        label: str,
        pod_key: str,
        response: PodResponse,
        flight: Flight,
        disconnect: _Disconnect,
        arrived: float,
    ) -> RelayResponse:
        headers = [(name, value) for name, value in response.headers if name not in _HOP_BY_HOP_RAW]
        headers.append((POD_HEADER.encode(), pod_key.encode()))

        def first_byte() -> None:
            self._first_byte(label).observe(time.monotonic() - arrived)

        def done(completed: bool) -> None:
            self.fleet.end(flight)
            code = str(response.status) if completed else "499"
            self._duration(label, code).observe(time.monotonic() - arrived)

        return RelayResponse(response, headers, disconnect, first_byte, done)


def _exhausted(label: str, attempts: int, last: _Failed | None) -> RouterError:
    """The error once ``max_attempts`` pods failed before answering."""
    if last is not None and last.outcome == "full":
        return AllPodsFull(
            f"every pod of voice {label} that was tried is full; retry later",
            retry_after_s=last.retry_after_s or 1.0,
        )
    return UpstreamFailed(
        f"{attempts} pod(s) of voice {label} failed before answering "
        f"(last: {last.outcome if last else 'unknown'})"
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
