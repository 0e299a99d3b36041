"""Hear each serving pod's load when it changes: one held ``/load?wait=`` ask per pod.

Why: asking every pod's ``/load`` once a tick grows with pods x ticks. At 3,000 pods that
was 3,000 requests a second, 0.89 operator cores, ticks of ~2 s instead of 1 and most
pods unread in time, so no scale decision within 20 s of a load step (docs/fleet.md).
The pods hold a long-poll instead (:func:`voicefleet_api.load.wait_path`, the router's
own load signal): answered as soon as the load differs from the report the asker has,
else after ``wait`` seconds. An idle pod then costs one small exchange per ``wait``, and
a load step reaches the operator when it happens, not at its next read.

Per pod, one task from the tick that first asks about it until it stops serving:

* a first plain ask (``wait_path(wait, 0)``): answered at once, and its
  ``LOAD_WAIT_HEADER`` says whether the pod holds asks;
* a pod that holds is asked again at once with ``after`` = the ``seq`` of its last
  report: no sooner than :data:`GAP_S` after its last ask for :data:`BURST` asks, then
  (a token bucket) one ask per ``poll_interval``. A pod whose load keeps changing costs
  at most what a poll per interval did, and a step's first changes arrive at once;
* a pod that does not hold (an older server; one draining or already holding its
  ``MAX_HELD``) is asked every ``poll_interval``; one without ``/load`` (404) is read
  from ``/metrics`` every ``poll_interval``, through the same contract reader.

Trust (:meth:`PodWatch.sample`): a report counts while its pod holds our ask (until the
answer is due plus ``grace``) and for ``stale_after`` after a plain answer. A failed ask
(refused, reset, no answer by its deadline, an answer that is not a load) ends the trust
at once: the pod is **silent**, which the decision counts as unknown, never as idle
(``scaling.estimate_work``). Failed asks are retried after one to two ``poll_interval``,
doubling up to :data:`MAX_RETRY_S` (spread at random), so a slow operator does not turn
its own timeouts into a storm.

**Steps**: an answer that turns a pod from idle (no work, nothing queued or running) to
busy sets :attr:`PodWatches.stepped`; the loop waits on it to tick early
(``autoscaler.Autoscaler.run``).

HTTP goes through one callable (:data:`Fetch`), the seam a unit test fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from voicefleet_api import load

__all__ = [
    "BURST",
    "GAP_S",
    "MAX_RETRY_S",
    "Answer",
    "Fetch",
    "PodWatch",
    "PodWatches",
    "WatchConfig",
]

log = logging.getLogger("voicefleet_operator.autoscaler")

GAP_S: Final = 0.05
"""Least time between two asks of one pod (its answer rate while its load churns)."""
BURST: Final = 5
"""Held asks of one pod answered GAP_S apart before its asks are spaced by the interval:
a step's first quarter second is heard whole, a busy pod costs one answer per interval."""
MAX_RETRY_S: Final = 2.0
"""Longest wait between failed asks of one pod."""


class Answer(NamedTuple):
    """A pod's answer to one ask."""

    status: int
    text: str
    holds: bool
    """It carried ``LOAD_WAIT_HEADER``: the pod holds asks."""


Fetch = Callable[[str, float, bool], Awaitable[Answer | None]]
"""``fetch(url, deadline_s, held)``: the answer, or None when the pod did not answer within
``deadline_s``; ``held``: the pod may hold this ask that long."""


@dataclass(frozen=True)
class WatchConfig:
    """How the watches ask (``autoscaler_load.LoadConfig`` holds the defaults)."""

    port: int
    wait: float
    """Seconds a pod may hold an ask (0: never ask it to hold; poll every ``poll_interval``)."""
    grace: float
    """A held answer is due by ``wait``; later than ``wait + grace`` the pod is silent."""
    poll_interval: float
    """Asks of a pod that does not hold (and the first retry after a failure)."""
    timeout: float
    """Deadline of a plain ask."""
    stale_after: float
    """How long a plain answer is trusted."""


@dataclass
class PodWatch:
    """One pod's last report and how long it is trusted (see the module docstring)."""

    ip: str
    report: load.PodLoad | None = None
    until: float = -math.inf
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first ask ended (answered or failed)."""
    holds: bool = False
    metrics_only: bool = False
    task: asyncio.Task[None] | None = None

    def sample(self, now: float) -> load.PodLoad | None:
        """The report, while trusted at ``now``; None: the pod is silent."""
        return self.report if now <= self.until else None


def _idle(report: load.PodLoad | None) -> bool:
    return report is None or (report.work_s <= 0 and report.depth == 0 and report.in_flight == 0)


class PodWatches:
    """The held asks of every serving pod the loop reads (module docstring)."""

    def __init__(
        self,
        fetch: Fetch,
        config: WatchConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._pods: dict[str, PodWatch] = {}
        self.stepped = asyncio.Event()
        """Set when a pod turned from idle to busy; the loop clears it."""

    def __len__(self) -> int:
        return len(self._pods)

    def get(self, uid: str) -> PodWatch | None:
        return self._pods.get(uid)

    def watch(self, uid: str, ip: str) -> PodWatch:
        """The watch of pod ``uid`` at ``ip``, started now if new (or if its IP changed)."""
        current = self._pods.get(uid)
        if current is not None and current.ip == ip:
            return current
        if current is not None and current.task is not None:
            current.task.cancel()
        watch = PodWatch(ip)
        watch.task = asyncio.get_running_loop().create_task(self._run(watch), name=f"load {uid}")
        self._pods[uid] = watch
        return watch

    def retain(self, uids: Iterable[str]) -> None:
        """End the watch of every pod not in ``uids``."""
        keep = set(uids)
        for uid in [u for u in self._pods if u not in keep]:
            task = self._pods.pop(uid).task
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        tasks = [w.task for w in self._pods.values() if w.task is not None]
        self._pods.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _url(self, watch: PodWatch, after: int, wait: float | None) -> str:
        base = f"http://{watch.ip}:{self.config.port}"
        if watch.metrics_only:
            return base + "/metrics"
        if self.config.wait <= 0:
            return base + load.LOAD_PATH
        # wait None: a plain ask, answered at once (after=0), that still says if it holds
        return base + load.wait_path(self.config.wait if wait is None else wait, after)

    async def _run(self, watch: PodWatch) -> None:
        cfg = self.config
        after = 0
        asked = -math.inf
        failures = 0
        # The first hold is cut at random, so that pods found together (the operator's
        # start) are not all answered in the same instant every `wait` after.
        spread = self._rng.uniform(0.1, 1.0)
        tokens, refilled = float(BURST), self._clock()
        try:
            while True:
                if watch.holds:
                    # A held ask is answered at each change: a busy pod's answers are
                    # spaced by GAP_S while its burst lasts, then one per poll_interval.
                    now = self._clock()
                    tokens = min(BURST, tokens + (now - refilled) / cfg.poll_interval)
                    refilled = now
                    due = max(asked + GAP_S, now + (1.0 - tokens) * cfg.poll_interval)
                elif failures:  # backs off, doubling, spread at random
                    retry = min(MAX_RETRY_S, cfg.poll_interval * 2 ** min(failures - 1, 8))
                    due = asked + retry * self._rng.uniform(1.0, 2.0)
                else:
                    due = asked + cfg.poll_interval
                now = self._clock()
                if due > now:
                    await asyncio.sleep(due - now)
                asked = self._clock()
                held = watch.holds and not watch.metrics_only and cfg.wait > 0
                if held:
                    tokens = max(0.0, tokens + (asked - refilled) / cfg.poll_interval - 1.0)
                    refilled = asked
                wait = cfg.wait * spread if held else None
                if held:
                    spread = 1.0
                    deadline = wait + cfg.grace if wait is not None else cfg.timeout
                    watch.until = max(watch.until, asked + deadline)
                else:
                    deadline = cfg.timeout
                try:
                    answer = await self._fetch(self._url(watch, after, wait), deadline, held)
                except Exception:  # a bug must not end the watch: the pod would go silent
                    log.exception("autoscaler: load ask of %s", watch.ip)
                    answer = None
                if answer is not None and answer.status == 404 and not watch.metrics_only:
                    watch.metrics_only = True  # an older server: its /metrics from now on
                    watch.holds = False
                    asked = -math.inf
                    continue
                report = self._take(watch, answer)
                if report is None:
                    failures += 1
                    after = 0
                    watch.holds = False
                else:
                    failures = 0
                    after = report.seq
                watch.heard.set()
        except asyncio.CancelledError:
            watch.until = -math.inf  # no longer watched: nothing vouches for it
            raise

    def _take(self, watch: PodWatch, answer: Answer | None) -> load.PodLoad | None:
        """Record ``answer`` (None: the ask failed) and return its report."""
        arrived = self._clock()
        report: load.PodLoad | None = None
        if answer is not None and answer.status == 200:
            text = answer.text
            report = load.parse_metrics(text) if watch.metrics_only else load.parse_load(text)
        if report is None:
            watch.until = arrived  # silent from now on, until a pod answers again
            watch.holds = False
            return None
        was_idle = _idle(watch.sample(arrived))
        watch.report = report
        watch.holds = answer is not None and answer.holds and not watch.metrics_only
        # A held answer is followed at once by the next held ask, which extends the trust.
        watch.until = arrived + self.config.stale_after
        if was_idle and not _idle(report):
            self.stepped.set()
        return report

    async def first_answers(self, watches: Iterable[PodWatch], within_s: float) -> None:
        """Wait (at most ``within_s``) until each watch has had its first ask answered."""
        waiting = [asyncio.ensure_future(w.heard.wait()) for w in watches if not w.heard.is_set()]
        if not waiting:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(waiting, timeout=within_s)
        for future in waiting:
            future.cancel()
