"""Hear a pod's load when it changes, at a cost that does not grow with pods x rate.

Every answer a pod sends carries its load (``x-voicefleet-load``; the proxy records it),
so while a pod answers this router's requests it is not asked at all. Otherwise one task
per serving pod keeps a **long-poll** of its compact ``/load`` open
(``/load?wait=W&after=N``, :mod:`voicefleet_api.load`): the pod answers as soon as its load
differs from report ``N``, else after ``W`` seconds (``load_wait_s``). So:

* an idle pod costs one small exchange per ``W`` seconds on a kept-alive connection (the
  proxy's own llhttp client, :mod:`.upstream`), instead of a poll every half second; the
  router's idle CPU no longer grows with pods x poll rate (docs/router.md, "Load signal
  cost");
* a pod whose load changes for a reason this router cannot see (work from another router
  replica, a direct caller) is heard at once, not at the next poll;
* under churn a pod is asked again no sooner than ``_GAP_S`` after the last ask: at most
  ~20 answers a second per pod;
* while the pod holds the poll, its last report stays trusted (:meth:`.Fleet.watch`) until
  the answer is due plus ``stale_after_s``. A pod that stops answering (hung, stopped,
  partitioned) is then silent: never taken for idle, the others preferred. A failed ask
  ends that trust at once, and the pod is asked plainly every ``poll_interval_s``.

Answers without ``x-voicefleet-load-wait`` (a pod that cannot hold now, or one older than
the long-poll) are plain polls: that pod is asked every ``poll_after_s`` it is not heard
from, as before. A pod whose server predates ``/load`` (404 during a rolling upgrade) is
read from its ``/metrics`` page instead, through the same contract reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from typing import Final

from voicefleet_api import load
from voicefleet_inference.router.fleet import Fleet, PodInfo, PodState
from voicefleet_inference.router.metrics import RouterMetrics
from voicefleet_inference.router.upstream import ConnectFailed, PodClient, UpstreamBroken

__all__ = ["LoadPoller"]

log = logging.getLogger("voicefleet.router.poll")

_DOWN_MARK_S: Final = 1.0
_GAP_S: Final = 0.05
"""Least time between two asks of one pod (the answer rate under churn)."""
_MAX_RETRY_S: Final = 2.0
"""Longest wait between failed asks of one pod (the wait doubles from ``interval_s``)."""
_NO_HEADERS: Final[dict[str, str]] = {}
_WAIT: Final = load.LOAD_WAIT_HEADER.encode()


def _serving(state: PodState) -> bool:
    info = state.info
    return bool(info.base_url) and info.ready and not info.deleting


class LoadPoller:
    """The load watch of every serving pod (module docstring): a task per pod while
    :meth:`run` runs, started and stopped as the fleet's pods come, change and go."""

    def __init__(
        self,
        fleet: Fleet,
        metrics: RouterMetrics,
        *,
        interval_s: float,
        after_s: float,
        timeout_s: float,
        wait_s: float = 0.0,
        connect_timeout_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._poll_reports = metrics.load_reports_total.labels("poll")  # looked up once
        self._retry_s = interval_s
        self._after_s = after_s
        self._timeout_s = timeout_s
        self._wait_s = wait_s
        self._rng = rng or random.Random()
        self._client = PodClient(
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=math.inf,  # each ask has its own deadline
            keepalive_s=4.0,  # below the pods' own 5 s
        )
        self._metrics_only: set[str] = set()
        self._primed: dict[str, tuple[int, bool]] = {}
        """What :meth:`poll_once` learnt of each pod, for its watch to start from."""
        self._watches: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._ended: set[asyncio.Task[None]] = set()
        """Watches cancelled and not yet seen to the end (:meth:`close` waits for them)."""
        self._running = False
        fleet.on_pod(self._pod_changed)
        fleet.on_pod_gone(self._pod_gone)

    @property
    def watched(self) -> int:
        """Pods with a watch task now."""
        return len(self._watches)

    async def close(self) -> None:
        self._stop_all()
        if self._ended:
            await asyncio.gather(*self._ended, return_exceptions=True)
        await self._client.close()

    async def run(self) -> None:
        """Watch every serving pod until cancelled."""
        self._running = True
        try:
            for state in list(self._fleet.pods.values()):
                self._pod_changed(state)
            await asyncio.Event().wait()
        finally:
            self._running = False
            self._stop_all()

    async def poll_once(self) -> None:
        """Ask every serving pod once, concurrently (at start, before the first request)."""
        targets = [
            (key, state.info.base_url)
            for key, state in self._fleet.pods.items()
            if _serving(state) and state.info.base_url
        ]
        if targets:
            outcomes = await asyncio.gather(*(self._ask(key, url, 0, None) for key, url in targets))
            for (key, _), outcome in zip(targets, outcomes, strict=True):
                if outcome is not None:
                    self._primed[key] = outcome

    # -- the fleet's side -------------------------------------------------------------------

    def _pod_changed(self, state: PodState) -> None:
        if not self._running:
            return
        key = state.info.key
        url = state.info.base_url
        current = self._watches.get(key)
        if _serving(state) and url:
            if current is not None and current[0] == url:
                return
            if current is not None:
                self._end(current[1])
            task = asyncio.get_running_loop().create_task(self._watch(key, url), name=key)
            self._watches[key] = (url, task)
        elif current is not None:
            self._end(current[1])
            del self._watches[key]

    def _pod_gone(self, info: PodInfo) -> None:
        key = info.key
        self._metrics_only.discard(key)
        current = self._watches.pop(key, None)
        if current is not None:
            self._end(current[1])

    def _end(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._ended.add(task)
        task.add_done_callback(self._ended.discard)

    def _stop_all(self) -> None:
        for _, task in self._watches.values():
            self._end(task)
        self._watches.clear()

    # -- one pod ---------------------------------------------------------------------------

    async def _watch(self, key: str, base_url: str) -> None:
        """Ask ``key`` for its load for as long as it serves (cancelled by the fleet's side)."""
        fleet = self._fleet
        # The pod holds our asks (the next one waits for a change), and the seq of the last
        # report an ask of ours returned; from the ask at start, if there was one.
        after, held = self._primed.pop(key, (0, False))
        asked_at = -math.inf
        failures = 0
        # The first hold is cut at random, so that pods found together (a router's start,
        # a relist) are not all answered in the same instant every wait_s after.
        spread = self._rng.uniform(0.1, 1.0)
        while True:
            state = fleet.pod(key)
            if state is None:
                return
            now = fleet.clock()
            # While the pod answers this router's requests their headers carry its load;
            # a held ask would only be answered at each of their steps.
            due = state.answered_at + self._after_s
            if held:
                due = max(due, asked_at + _GAP_S)
            else:  # a plain poll, as often as the pod goes unheard (or after failures)
                retry_s = min(_MAX_RETRY_S, self._retry_s * 2 ** min(failures, 8))
                due = max(due, state.reported_at + self._after_s, asked_at + retry_s)
            if due > now:
                await asyncio.sleep(due - now)
                continue
            asked_at = now
            wait_s = self._wait_s * spread if held else None
            if held:
                spread = 1.0
            try:
                outcome = await self._ask(key, base_url, after, wait_s)
            except Exception:  # a bug must not end the watch: the pod would go silent
                log.exception("load ask of %s", key)
                outcome = None
            held = outcome is not None and outcome[1]
            after = outcome[0] if outcome is not None else 0
            # Failures back off (doubling, spread at random): a router slowed down by a
            # burst must not turn its own timeouts into a storm of new connections.
            failures = 0 if outcome is not None else failures + 1
            if failures:
                asked_at += self._rng.uniform(0.0, self._retry_s)

    async def _ask(
        self, key: str, base_url: str, after: int, wait_s: float | None
    ) -> tuple[int, bool] | None:
        """One ask; ``(seq of the report, whether the pod holds asks)``, or None on failure.

        ``wait_s`` None: a plain ask (answered at once; still says whether the pod can
        hold). Else the pod held our last ask, so this one waits up to ``wait_s`` for a
        change after report ``after``, and the last report stays trusted while it does.
        """
        fleet = self._fleet
        legacy = key in self._metrics_only
        held = wait_s is not None and not legacy
        if legacy:
            path = "/metrics"
        elif self._wait_s > 0:
            path = load.wait_path(wait_s or self._wait_s, after if held else 0)
        else:
            path = load.LOAD_PATH
        sent_at = fleet.clock()
        deadline_s = self._timeout_s
        if held and wait_s is not None:
            deadline_s = wait_s + fleet.stale_after_s
            fleet.watch(key, sent_at + deadline_s)
        try:
            async with asyncio.timeout(deadline_s):
                response = await self._client.request(base_url, "GET", path, _NO_HEADERS, b"")
                try:
                    body = await response.read()
                except BaseException:
                    response.close()
                    raise
                response.release()
        except ConnectFailed as exc:
            self._failed(key, down=True)
            log.debug("load ask of %s: cannot connect (%r)", key, exc)
            return None
        except (UpstreamBroken, TimeoutError) as exc:
            self._failed(key, down=False)
            log.debug("load ask of %s failed: %r", key, exc)
            return None
        except asyncio.CancelledError:  # no longer watched: nothing vouches any more
            fleet.watch(key, fleet.clock())
            raise
        arrived = fleet.clock()
        status = response.status
        if status == 404 and not legacy:
            self._metrics_only.add(key)  # an older server: read its /metrics from now on
            fleet.watch(key, arrived)
            return None
        report: load.PodLoad | None = None
        if status == 200:
            with contextlib.suppress(UnicodeDecodeError):
                text = body.decode()
                report = load.parse_metrics(text) if legacy else load.parse_load(text)
        if report is None:
            self._failed(key, down=False)
            return None
        self._poll_reports.inc()
        # A held answer was written when it was sent back; a plain one may be as old as
        # the ask (its pod may not yet count what this router sent meanwhile).
        fleet.record_load(key, arrived if held else sent_at, report, on_answer=False)
        fleet.watch(key, arrived)  # until the next ask is held, the report's own age counts
        holds = not legacy and response.header(_WAIT) is not None
        return report.seq, holds

    def _failed(self, key: str, *, down: bool) -> None:
        self._metrics.scrape_errors_total.inc()
        fleet = self._fleet
        fleet.watch(key, fleet.clock())  # nothing vouches for its last report any more
        if down:
            fleet.mark(key, down_s=_DOWN_MARK_S)
