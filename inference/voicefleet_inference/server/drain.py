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

SIGTERM is idempotent: ``make`` forwards a process-group SIGTERM to its child, systemd
and ``tini -g`` signal the whole group, so a server often gets it twice, and a second
one must not cut the drain short. Only a person asks for that: a second SIGINT (Ctrl-C
twice), or SIGQUIT at any time. A forced exit still answers what it cuts off: every
queued or running request gets 503 ``shutdown`` in its route's shape, uvicorn gets
:data:`_FORCED_SEND_GRACE_S` to send those, then the process exits (a stream that
already started is aborted).
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

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_FORCED_SEND_GRACE_S = 1
"""After a forced exit, how long uvicorn may take to send the 503s of abandoned requests."""
_SEND_GRACE_S = 5.0
"""After the engine work is done, how long uvicorn may take to send the last responses."""


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT drains the scheduler before exiting."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace_s: float) -> None:
        super().__init__(config)
        self._scheduler = scheduler
        self._grace_s = grace_s
        self._drain_task: asyncio.Task[None] | None = None
        self._forced = False
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
        """Start draining (first call); a second SIGINT or any SIGQUIT forces the exit."""
        name = signal.Signals(sig).name if sig is not None else "request"
        forcing = sig == signal.SIGQUIT or (sig == signal.SIGINT and self._drain_task is not None)
        if forcing:
            self._force(name)
            return
        if self._drain_task is not None:
            log.info("%s again: already draining (send SIGINT again or SIGQUIT to force)", name)
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

    def _force(self, name: str) -> None:
        if self._forced:
            log.warning("%s: exiting now", name)
            self.force_exit = True
            self.should_exit = True
            return
        self._forced = True
        log.warning(
            "%s: forced exit; %d accepted request(s) get 503", name, self._scheduler.pending()
        )
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._scheduler.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._abandon())

    async def _abandon(self) -> None:
        """Fail everything accepted at once (503), give uvicorn a moment to send it, exit."""
        self.drain_report = await self._scheduler.drain(0.0)
        self.config.timeout_graceful_shutdown = _FORCED_SEND_GRACE_S
        await asyncio.sleep(0.05)  # the failed handlers answer on this loop first
        self.should_exit = True

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
