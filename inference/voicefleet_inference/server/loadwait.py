"""``GET /load?wait=S&after=N``: the pod's load, answered when it changes (a long-poll).

Why: a router that polls every idle pod's ``/load`` a few times a second spends CPU that
grows with pods x rate (about 0.5 millicores per idle pod, docs/router.md). Held instead,
an idle pod costs a router one small exchange per ``wait`` seconds, and a change (work sent
by another router replica or a direct caller) is heard at once.

The contract (``after`` is the ``seq`` of the last report the caller has, from a ``/load``
answer or an ``x-voicefleet-load`` header of this pod):

* answered at once when the load has changed since report ``after`` was written, when
  ``after`` is 0, or when ``after`` is higher than any ``seq`` this process wrote (it was
  another process: the pod restarted);
* else held until the load changes or ``wait`` seconds pass (at most :data:`MAX_WAIT_S`),
  then answered with the load as it is then;
* an answer that honoured ``wait`` carries :data:`WAIT_HEADER`; one that did not (the pod
  is draining, or already holds :data:`MAX_HELD` requests) lacks it, and the caller falls
  back to polling. ``/load`` without ``wait`` is the plain answer it always was.

A "change" is a step: a request admitted, started, finished, failed or cancelled (the
scheduler's :meth:`~voicefleet_inference.scheduler.Scheduler.on_load_change`); work that
merely progresses is not one, readers extrapolate it. Steps happen in engine threads, so
:meth:`LoadChanges.changed` only notes, under a lock, the last ``seq`` written before it
and, when a request is held, wakes the event loop with ``call_soon_threadsafe`` (once per
burst, not per step).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Final

from voicefleet_api.load import LOAD_WAIT_HEADER

__all__ = ["MAX_HELD", "MAX_WAIT_S", "WAIT_HEADER", "LoadChanges"]

MAX_HELD: Final = 64
"""Long-polls held at once; more are answered at once (without :data:`WAIT_HEADER`). A pod
is watched by each router replica and the autoscaler: a handful."""
MAX_WAIT_S: Final = 30.0
"""Longest hold; a larger ``wait`` is cut to it."""
WAIT_HEADER: Final = LOAD_WAIT_HEADER
"""On a ``/load`` answer that honoured ``wait``: the seconds it could have been held."""


class LoadChanges:
    """Held ``/load`` requests and the steps that release them (module docstring).

    ``last_seq`` reads the ``seq`` of the last report the pod wrote; ``draining`` says
    whether the pod is draining (then nothing is held: shutdown must not wait for polls).
    Everything but :meth:`changed` runs on the event-loop thread.
    """

    def __init__(
        self,
        last_seq: Callable[[], int],
        draining: Callable[[], bool],
        *,
        max_held: int = MAX_HELD,
    ) -> None:
        self._last_seq = last_seq
        self._draining = draining
        self.max_held = max_held
        self._lock = threading.Lock()
        self._scheduled = False
        """A wake-up of the loop is on its way."""
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_change = 0
        """The last ``seq`` written when the latest step was told: reports up to it may
        predate that step, later ones were written after it (a report takes its number,
        then reads the scheduler; a step changes the scheduler, then is told)."""

    @property
    def held(self) -> int:
        """Requests held now."""
        return len(self._waiters)

    def changed(self) -> None:
        """A step in the pod's load (any thread; after the step is visible)."""
        seq = self._last_seq()  # an int written by the loop thread: read whole
        with self._lock:
            self.last_change = max(self.last_change, seq)
            if self._scheduled or not self._waiters or self._loop is None:
                return
            self._scheduled = True
            loop = self._loop
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is held
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        """On the loop: answer everyone held."""
        with self._lock:
            self._scheduled = False
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, after: int, wait_s: float) -> bool:
        """Return when the load differs from report ``after`` or ``wait_s`` passed; False
        (at once) when nothing may be held now: draining, or :attr:`max_held` held."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._draining():
            return False
        waiter = self._loop.create_future()
        with self._lock:
            if after <= self.last_change or after > self._last_seq():
                return True  # it has changed since (or `after` is another process's)
            if len(self._waiters) >= self.max_held:
                return False
            # Added under the lock that `changed` takes: a step from now on wakes it.
            self._waiters.add(waiter)
        try:
            await asyncio.wait((waiter,), timeout=min(wait_s, MAX_WAIT_S))
        finally:
            with self._lock:
                self._waiters.discard(waiter)
            waiter.cancel()
        return True
