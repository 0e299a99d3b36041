"""Which pod gets the next request, and what to do when none can: pure functions.

Why work-seconds and not request counts: a paragraph costs twenty one-word requests, so a
pod with two queued paragraphs is far busier than one with three queued greetings. Each
candidate carries the router's estimate of the engine-seconds queued and running there
(reported by the pod, plus what this router sent since; see :mod:`.fleet`). The policy
joins the shortest queue of that work (JSQ); with many pods it compares two at random
(power of two choices: nearly as good, O(1), and two routers with the same stale view do
not all pile onto the same "best" pod).

The other policies exist so that the benchmark compares them through the very same
router; nothing else should use them.

:func:`decide` adds the rules around the choice:

* a pod that is draining, unreachable, full (answered 429 a moment ago) or already tried
  for this request gets nothing;
* a *silent* pod (no load report within the staleness bound: its load is unknown) gets a
  request only when every eligible pod is silent, so a pod that stopped answering is never
  taken for an idle one;
* some pod eligible → :class:`Route` to the chosen one;
* none eligible, but ready pods exist and at least one is full → :class:`Reject` 429: the
  voice is saturated, holding would only hide it;
* otherwise (no ready pod: scale from zero, every pod restarting or draining) →
  :class:`Hold` if the voice's hold queue has room, else :class:`Reject` 503.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from voicefleet_inference.router.settings import Policy

__all__ = ["Candidate", "Hold", "Reject", "Route", "choose", "decide"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One pod of the voice, as the choice sees it."""

    key: str
    """Stable identity (``namespace/pod``); round-robin orders by it."""
    work_s: float
    """Estimated engine-seconds queued and running there."""
    in_flight: int
    """Requests this router has open there (least-request counts these plus reported)."""
    ready: bool = True
    draining: bool = False
    full: bool = False
    unreachable: bool = False
    silent: bool = False
    """No load report within the staleness bound: its ``work_s`` is only our own count."""


@dataclass(frozen=True, slots=True)
class Route:
    pod: Candidate


@dataclass(frozen=True, slots=True)
class Hold:
    """Wait for a pod (bounded by the voice's cold-start timeout)."""


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str


def _eligible(c: Candidate) -> bool:
    return c.ready and not (c.draining or c.full or c.unreachable)


def choose(
    policy: Policy,
    candidates: Sequence[Candidate],
    *,
    rng: random.Random,
    turn: int = 0,
    sample_above: int = 8,
) -> Candidate | None:
    """The pod for the next request among ``candidates`` (ineligible ones never), or None.

    ``turn`` is the round-robin counter (the caller increments it); ``rng`` breaks ties and
    samples. With more than ``sample_above`` eligible pods, ``jsq-work`` and
    ``least-request`` compare two pods drawn at random.
    """
    pods = [c for c in candidates if _eligible(c)]
    if not pods:
        return None
    heard = [c for c in pods if not c.silent]
    if heard:
        pods = heard
    if policy is Policy.RANDOM:
        return rng.choice(pods)
    if policy is Policy.ROUND_ROBIN:
        ordered = sorted(pods, key=lambda c: c.key)
        return ordered[turn % len(ordered)]
    if len(pods) > sample_above:
        pods = rng.sample(pods, 2)
    if policy is Policy.LEAST_REQUEST:
        best_count = min(c.in_flight for c in pods)
        return rng.choice([c for c in pods if c.in_flight == best_count])
    # JSQ on work-seconds; near-equal work (idle pods) breaks ties on count, then at random.
    best = min(c.work_s for c in pods)
    close = [c for c in pods if c.work_s <= best + 1e-3]
    fewest = min(c.in_flight for c in close)
    return rng.choice([c for c in close if c.in_flight == fewest])


def decide(
    policy: Policy,
    candidates: Sequence[Candidate],
    *,
    tried: frozenset[str] | set[str] = frozenset(),
    held: int = 0,
    max_held: int = 100,
    rng: random.Random,
    turn: int = 0,
    sample_above: int = 8,
) -> Route | Hold | Reject:
    """What to do with a request now; see the module docstring for the rules."""
    fresh = [c for c in candidates if c.key not in tried]
    pod = choose(policy, fresh, rng=rng, turn=turn, sample_above=sample_above)
    if pod is not None:
        return Route(pod)
    ready = [c for c in candidates if c.ready and not c.draining and not c.unreachable]
    if ready and any(c.full for c in ready):
        return Reject(429, "every ready pod of the voice is full")
    if held >= max_held:
        return Reject(503, "the voice has no ready pod and its hold queue is full")
    return Hold()
