"""Priority admission: who gets into the queue, where, and whom a newcomer pushes out.

Three classes of work (``critical``, ``standard``, ``sheddable``) share one bounded queue
kept in priority order, FIFO within a class, so a free worker takes the most important
work first. Under saturation the least important work is refused first: past the wait
target sheddable work, then standard; critical work is refused only by a full queue with
nothing less important in it to push out (the pushed-out request gets the 429).

Kept apart from ``scheduler.py`` (threads, batching, drain) because admission is a policy
of its own: :func:`admit` is the pure decision, readable and testable without a thread or
a clock; :class:`PriorityQueue` applies it to the scheduler's queue and says what it did
(the 429 and its code, the metrics), so the scheduler only holds its lock around it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from voicefleet_api.priority import PRIORITIES
from voicefleet_inference.errors import QueueFull
from voicefleet_inference.metrics import (
    OUTCOME_ACCEPTED,
    OUTCOME_EVICTED,
    OUTCOME_REFUSED,
    REJECT_EVICTED,
    REJECT_QUEUE_FULL,
    REJECT_SHED,
    Metrics,
)

__all__ = [
    "Admission",
    "Admitted",
    "PriorityQueue",
    "Queued",
    "admit",
    "insert_at",
    "retry_after_seconds",
]

_MAX_RETRY_AFTER_S: Final = 120
_STANDARD_TARGET_FACTOR: Final = 2.0
"""Standard work is refused for waiting only past twice the target: sheddable goes first."""


@dataclass(frozen=True, slots=True)
class Queued:
    """What :func:`admit` needs to know of one queued request: its priority rank (0 is
    critical) and its estimated engine-seconds."""

    rank: int
    cost_s: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request: ``accept`` it (at queue index ``position``, pushing out
    queue index ``evict`` first when that is set), or refuse it for ``reason``.

    ``wait_s`` is the estimated wait before it would start: the work ahead of it in
    priority order over the workers; a refusal's Retry-After comes from it.
    """

    accept: bool
    position: int
    wait_s: float
    evict: int | None = None
    reason: str = ""


def insert_at(queue: Sequence[Queued], rank: int) -> int:
    """Where a request of ``rank`` joins: after every request of its rank or higher."""
    position = len(queue)
    while position > 0 and queue[position - 1].rank > rank:
        position -= 1
    return position


def admit(
    queue: Sequence[Queued],
    rank: int,
    running_work_s: float,
    workers: int,
    max_queue: int,
    wait_target_s: float,
) -> Admission:
    """Admission under saturation, least important refused first.

    ``queue`` is in priority order. A request waits for the running work and for what is
    queued ahead of it (its own class and higher). With a ``wait_target_s`` (0: none),
    sheddable work (rank 2) is refused once that wait passes the target, standard
    (rank 1) past twice the target, critical never for waiting. A full queue refuses
    anyone, except that a request pushes out the newest queued request of a lower
    class (that one gets the 429 instead), so critical work waits while sheddable work
    is what gets refused.
    """
    position = insert_at(queue, rank)
    ahead = sum(q.cost_s for q in queue[:position])
    wait = (max(0.0, running_work_s) + ahead) / max(1, workers)
    if wait_target_s > 0 and rank > 0:
        limit = wait_target_s * (1.0 if rank >= 2 else _STANDARD_TARGET_FACTOR)
        if wait > limit:
            return Admission(
                False, position, wait, reason=f"estimated wait {wait:.2f}s > target {limit:g}s"
            )
    if len(queue) < max_queue:
        return Admission(True, position, wait)
    if queue and queue[-1].rank > rank:
        return Admission(True, position, wait, evict=len(queue) - 1)
    return Admission(False, position, wait, reason=f"queue is full ({max_queue} waiting)")


def retry_after_seconds(queued_work_s: float, workers: int) -> int:
    """Seconds a client refused for a full queue should wait: the backlog per worker.

    At least 1 (HTTP's Retry-After is whole seconds), at most 120 (beyond that the
    estimate means little and a client is better off trying another replica).
    """
    if not math.isfinite(queued_work_s) or queued_work_s <= 0:
        return 1
    return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(queued_work_s / max(1, workers))))


class Ranked(Protocol):
    """A queued request as the queue sees it: its priority rank and engine-seconds."""

    @property
    def rank(self) -> int: ...

    @property
    def cost_s(self) -> float: ...


J = TypeVar("J", bound=Ranked)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[J]):
    """An accepted request's side effect: the request it pushed out of a full queue, if
    any, and the 429 to hand that one (outside the scheduler's lock)."""

    evicted: J | None = None
    notice: QueueFull | None = None


class PriorityQueue(Generic[J]):
    """The scheduler's queue of waiting requests, in priority order, FIFO within a class.

    Not thread-safe on purpose: the scheduler's lock guards it together with the workers'
    state, since admission weighs the running work too.
    """

    def __init__(self, metrics: Metrics, workers: int, max_queue: int, wait_target_s: float):
        self._metrics = metrics
        self._workers = workers
        self._max_queue = max_queue
        self._wait_target_s = wait_target_s
        self._items: list[J] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[J]:
        return iter(self._items)

    def __getitem__(self, index: int) -> J:
        return self._items[index]

    def work_s(self) -> float:
        """Estimated engine-seconds waiting."""
        return sum(j.cost_s for j in self._items)

    def admit(self, item: J, running_work_s: float) -> Admitted[J]:
        """Queue ``item`` where its priority puts it, or raise :class:`QueueFull`.

        Counts the outcome per priority; a refusal's code tells a router "full for
        everyone" (``None``: ``queue_full``) from "full for this class" (``priority_shed``).
        """
        priority = PRIORITIES[item.rank]
        verdict = admit(
            [Queued(j.rank, j.cost_s) for j in self._items],
            item.rank,
            running_work_s,
            self._workers,
            self._max_queue,
            self._wait_target_s,
        )
        retry_after_s = retry_after_seconds(verdict.wait_s, 1)
        if not verdict.accept:
            full = verdict.reason.startswith("queue is full")
            self._metrics.rejected_total.labels(
                reason=REJECT_QUEUE_FULL if full else REJECT_SHED
            ).inc()
            self._count(priority, OUTCOME_REFUSED)
            raise QueueFull(
                f"{priority} request refused: {verdict.reason}, about "
                f"{self.work_s():.1f} engine-seconds queued; retry later",
                retry_after_s=retry_after_s,
                code=None if full else "priority_shed",
            )
        evicted = None if verdict.evict is None else self._items.pop(verdict.evict)
        self._items.insert(verdict.position, item)
        self._count(priority, OUTCOME_ACCEPTED)
        if evicted is None:
            return Admitted()
        evicted_priority = PRIORITIES[evicted.rank]
        self._metrics.rejected_total.labels(reason=REJECT_EVICTED).inc()
        self._count(evicted_priority, OUTCOME_EVICTED)
        notice = QueueFull(
            f"{evicted_priority} request pushed out of the full queue by {priority} work; "
            "retry later",
            retry_after_s=retry_after_s,
            code="priority_evicted",
        )
        return Admitted(evicted, notice)

    def remove(self, item: J) -> None:
        """Forget ``item`` (cancelled while queued); no-op if a worker already took it."""
        with contextlib.suppress(ValueError):
            self._items.remove(item)

    def drop(self, indices: set[int]) -> None:
        """Forget the requests at ``indices`` (taken, expired or cancelled)."""
        if indices:
            self._items = [j for i, j in enumerate(self._items) if i not in indices]

    def clear(self) -> list[J]:
        """Empty the queue; return what was in it (to fail at stop or drain)."""
        items, self._items = self._items, []
        return items

    def _count(self, priority: str, outcome: str) -> None:
        self._metrics.priority_requests_total.labels(priority=priority, outcome=outcome).inc()
