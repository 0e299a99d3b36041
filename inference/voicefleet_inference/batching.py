"""The scheduler's pure batching decision: what a free worker runs next.

Kept apart from ``scheduler.py`` (threads, queue, drain) so it reads and tests without
a thread or a clock: :func:`plan_batch` is dynamic batching over a snapshot of the queue
(kept in priority order, FIFO within a class, by :mod:`voicefleet_inference.admission`);
:func:`holds_sheddable` keeps the last idle workers free for more important work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BatchPlan", "Waiting", "holds_sheddable", "plan_batch"]


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
