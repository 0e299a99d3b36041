"""The scheduler's pure decisions: what a free worker runs next, and Retry-After.

Kept apart from ``scheduler.py`` (threads, queue, drain) so they read and test without
a thread or a clock: :func:`plan_batch` is FIFO dynamic batching over a snapshot of the
queue; :func:`retry_after_seconds` turns queued work into a Retry-After.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["BatchPlan", "Waiting", "plan_batch", "retry_after_seconds"]

_MAX_RETRY_AFTER_S: Final = 120


@dataclass(frozen=True, slots=True)
class Waiting:
    """What :func:`plan_batch` needs to know of one queued request."""

    enqueued_at: float
    deadline: float
    cancelled: bool = False


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
    Cancelled requests are dropped, requests past their deadline expire, neither is run.
    """
    expired: list[int] = []
    dropped: list[int] = []
    live: list[int] = []
    for i, item in enumerate(queue):
        if item.cancelled:
            dropped.append(i)
        elif item.deadline <= now:
            expired.append(i)
        else:
            live.append(i)
    if not live:
        return BatchPlan(expired=tuple(expired), dropped=tuple(dropped))
    oldest = queue[live[0]].enqueued_at
    if max_batch <= 1 or len(live) >= max_batch or now >= oldest + window_s:
        return BatchPlan(
            take=tuple(live[:max_batch]), expired=tuple(expired), dropped=tuple(dropped)
        )
    return BatchPlan(expired=tuple(expired), dropped=tuple(dropped), wait_until=oldest + window_s)


def retry_after_seconds(queued_work_s: float, workers: int) -> int:
    """Seconds a client refused for a full queue should wait: the backlog per worker.

    At least 1 (HTTP's Retry-After is whole seconds), at most 120 (beyond that the
    estimate means little and a client is better off trying another replica).
    """
    if not math.isfinite(queued_work_s) or queued_work_s <= 0:
        return 1
    return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(queued_work_s / max(1, workers))))
