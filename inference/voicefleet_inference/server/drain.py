"""Graceful drain: SIGTERM/SIGINT turn into "finish accepted work, then exit 0".

uvicorn's own handler stops listening at once, so a request that arrives after SIGTERM
(the endpoints controller removes a terminating pod with some delay) is refused at the
TCP level and a client cannot tell why. :class:`DrainingServer` takes the signals over:

1. readiness turns false and new synthesis requests get 503 + Retry-After in the route's
   error shape, while the listener stays open and ``/healthz`` stays 200 (so the kubelet
   does not kill a pod that is doing what it was told);
2. queued and running requests finish, bounded by the drain grace (what is left then is
   failed with 503);
3. uvicorn is told to exit; it waits for responses still being sent (a few seconds at
   most), then the process exits 0.

A second signal skips the waiting (for a human pressing Ctrl-C twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator

import uvicorn

from voicefleet_inference.scheduler import DrainReport, Scheduler

__all__ = ["DrainingServer"]

log = logging.getLogger("voicefleet.server")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SEND_GRACE_S = 5.0
"""After the engine work is done, how long uvicorn may take to send the last responses."""


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT drains the scheduler before exiting."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace_s: float) -> None:
        super().__init__(config)
        self._scheduler = scheduler
        self._grace_s = grace_s
        self._drain_task: asyncio.Task[None] | None = None
        self.drain_report: DrainReport | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Replace uvicorn's handlers for the duration of ``serve()`` (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.begin_drain, sig)
        try:
            yield
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)

    def begin_drain(self, sig: int | None = None) -> None:
        """Start draining (first call) or stop waiting (any later call)."""
        name = signal.Signals(sig).name if sig is not None else "request"
        if self._drain_task is not None:
            log.warning("%s again: exiting without waiting for accepted requests", name)
            self.should_exit = True
            self.force_exit = True
            return
        log.info(
            "%s: draining; readiness is false, new requests get 503, %d accepted request(s) "
            "get up to %gs to finish",
            name,
            self._scheduler.pending(),
            self._grace_s,
        )
        self._scheduler.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        report = await self._scheduler.drain(self._grace_s)
        self.drain_report = report
        if report.complete:
            log.info(
                "drained %d request(s) in %.2fs; exiting", report.pending_at_start, report.elapsed_s
            )
        else:
            log.warning(
                "drain grace ran out: %d request(s) abandoned with 503; exiting", report.abandoned
            )
        self.config.timeout_graceful_shutdown = int(_SEND_GRACE_S)
        self.should_exit = True
