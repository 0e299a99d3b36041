"""One accepted request as the scheduler's two sides hold it: the job and its handle.

A :class:`Job` is the worker threads' record of a request (where it stands, its deadline,
its estimate and what is left of it), guarded by the scheduler's lock. Its
:class:`RequestHandle` is the event loop's side: the HTTP layer awaits chunks from it or
cancels it. The two meet only through ``loop.call_soon_threadsafe`` (:meth:`RequestHandle.post`),
so a worker never blocks on a slow client. Kept apart from ``scheduler.py`` (threads,
batching, drain) because it is what the HTTP layer sees of the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from voicefleet_api.priority import rank
from voicefleet_inference.batching import Waiting
from voicefleet_inference.engines.base import AudioChunk, Samples, SynthesisRequest
from voicefleet_inference.errors import RequestTimeout, ServiceError

__all__ = ["END", "Canceller", "Job", "RequestHandle"]

_SHEDDABLE_RANK: Final = rank("sheddable")


class _End:
    """Marker: the request's last chunk has been delivered."""


END: Final = _End()

Canceller = Callable[["Job", bool], None]
"""The scheduler's cancel: ``(job, timed_out)``; called on the loop thread."""


@dataclass(eq=False)
class Job:
    """One accepted request; its mutable fields are guarded by the scheduler's lock."""

    request: SynthesisRequest
    cost_s: float
    enqueued_at: float
    deadline: float
    handle: RequestHandle
    rank: int = 1
    """Priority rank: 0 critical, 1 standard, 2 sheddable."""
    state: str = "queued"  # queued -> running -> done
    cancelled: bool = False
    remaining_s: float = 0.0
    started_at: float | None = None
    first_chunk_at: float | None = None

    def view(self, hold_sheddable: bool = False) -> Waiting:
        held = hold_sheddable and self.rank >= _SHEDDABLE_RANK
        return Waiting(self.enqueued_at, self.deadline, self.cancelled, held)


class RequestHandle:
    """The event loop's side of one accepted request: await its chunks, or cancel it.

    Only the loop thread calls these methods; a worker thread reaches the handle only
    through :meth:`post`.
    """

    def __init__(
        self,
        cancel: Canceller,
        loop: asyncio.AbstractEventLoop,
        cost_s: float,
        timeout_s: float,
    ) -> None:
        self._cancel = cancel
        self._loop = loop
        self._timeout_s = timeout_s
        self._items: asyncio.Queue[AudioChunk | _End | ServiceError] = asyncio.Queue()
        self._finished = False
        self.job: Job | None = None
        """Set by the scheduler once the request is admitted."""
        self.cost_s = cost_s
        """The cost model's estimate for this request, in engine-seconds."""

    @property
    def finished(self) -> bool:
        """True once the last chunk or an error was taken, or the request was cancelled."""
        return self._finished

    async def next_chunk(self) -> Samples | None:
        """The next chunk of audio, ``None`` after the last; raises the request's error."""
        piece = await self.next_piece()
        return None if piece is None else piece.samples

    async def next_piece(self) -> AudioChunk | None:
        """The next chunk with its word timings, ``None`` after the last; raises the
        request's error.

        Enforces the request deadline (queue wait plus synthesis): past it the request is
        cancelled and :class:`RequestTimeout` raised.
        """
        if self._finished:
            return None
        job = self.job
        assert job is not None
        remaining = job.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                item = await self._items.get()
        except TimeoutError:
            self._cancel(job, True)
            self._finished = True
            raise RequestTimeout(
                f"request took longer than {self._timeout_s:g}s (queue wait plus synthesis)"
            ) from None
        if isinstance(item, _End):
            self._finished = True
            return None
        if isinstance(item, ServiceError):
            self._finished = True
            raise item
        return item

    async def chunks(self) -> AsyncIterator[Samples]:
        """Every chunk in order; raises the request's error, if any, where it happens."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def pieces(self) -> AsyncIterator[AudioChunk]:
        """:meth:`chunks` with each chunk's word timings."""
        while (piece := await self.next_piece()) is not None:
            yield piece

    def cancel(self) -> None:
        """The client is gone: drop the request if queued, stop its synthesis if running.

        Idempotent, and a no-op once the request finished.
        """
        if self._finished:
            return
        self._finished = True
        if self.job is not None:
            self._cancel(self.job, False)

    def post(self, item: AudioChunk | _End | ServiceError) -> None:
        """From a worker thread: hand the loop a chunk, the end, or the request's error."""
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
