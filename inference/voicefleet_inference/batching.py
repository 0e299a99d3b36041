"""The scheduler's pure decisions: who gets in, what a free worker runs next, Retry-After.

Kept apart from ``scheduler.py`` (threads, queue, drain) so they read and test without
a thread or a clock: :func:`admit` decides admission by priority; :func:`plan_batch` is
dynamic batching over a snapshot of the queue (kept in priority order, FIFO within a
class); :func:`retry_after_seconds` turns queued work into a Retry-After.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Admission",
    "BatchPlan",
    "Queued",
    "Waiting",
    "admit",
    "holds_sheddable",
    "insert_at",
    "plan_batch",
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


@dataclass(frozen=True, slots=True)
class Waiting:
    """What :func:`plan_batch` needs to know of one queued request."""

    enqueued_at: float
    deadline: float
    cancelled: bool = False
    held: bool = False
    """Not to be started now (sheddable work while only reserved workers are idle)."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Indices into the queue: run ``take`` now, fail ``expired``, forget ``dropped``.

    When nothing is taken, ``wait_until`` says when to look again (``None``: when
    something new arrives).
    """

    take: tuple[int, ...] = ()
    expired: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    wait_until: float | None = None


def plan_batch(queue: Sequence[Waiting], now: float, max_batch: int, window_s: float) -> BatchPlan:
    """Decide what a free worker runs next (FIFO, dynamic batching).

    A batch starts as soon as ``max_batch`` live requests wait, or once the oldest live
    request has waited ``window_s`` (so a worker that was busy takes its backlog at once
    and a lone request waits at most the window). With ``max_batch == 1`` nothing waits.
    Cancelled requests are dropped, requests past their deadline expire, neither is run;
    held requests stay queued.
    """
    expired: list[int] = []
    dropped: list[int] = []
    live: list[int] = []
    for i, item in enumerate(queue):
        if item.cancelled:
            dropped.append(i)
        elif item.deadline <= now:
            expired.append(i)
        elif not item.held:
            live.append(i)
    if not live:
        return BatchPlan(expired=tuple(expired), dropped=tuple(dropped))
    oldest = queue[live[0]].enqueued_at
    if max_batch <= 1 or len(live) >= max_batch or now >= oldest + window_s:
        return BatchPlan(
            take=tuple(live[:max_batch]), expired=tuple(expired), dropped=tuple(dropped)
        )
    return BatchPlan(expired=tuple(expired), dropped=tuple(dropped), wait_until=oldest + window_s)


def holds_sheddable(idle_workers: int, reserved_workers: int) -> bool:
    """Whether a free worker must leave sheddable work queued: it is one of the last
    ``reserved_workers`` idle ones, kept so that more important work never waits for a
    long sheddable request to finish (work is never interrupted once started)."""
    return reserved_workers > 0 and idle_workers <= reserved_workers


def retry_after_seconds(queued_work_s: float, workers: int) -> int:
    """Seconds a client refused for a full queue should wait: the backlog per worker.

    At least 1 (HTTP's Retry-After is whole seconds), at most 120 (beyond that the
    estimate means little and a client is better off trying another replica).
    """
    if not math.isfinite(queued_work_s) or queued_work_s <= 0:
        return 1
    return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(queued_work_s / max(1, workers))))
