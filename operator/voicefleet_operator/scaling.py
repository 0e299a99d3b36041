"""The autoscaler's decision: desired replicas of one voice from what was just observed.

Pure: no clock, no I/O, no kopf or Kubernetes imports. The loop (``autoscaler.py``)
feeds one :class:`Observation` per tick together with the voice's :class:`ScalingState`
and gets back a :class:`Decision` plus the state to keep. The benchmark's simulator and
the unit tests drive the very same function over synthetic traces.

How it decides (docs/autoscaler.md has the long form):

- **Work, not requests.** ``work`` is the engine seconds queued and running at the
  pods (``voicefleet_queue_work_seconds``), plus the router's held requests valued at
  the mean work of a request seen at the pods. ``need = ceil(work / target)``.
- **Pods that cannot be scraped** are neither idle nor infinitely busy: a ready pod
  without a fresh sample is assumed to carry the mean of the pods that answered; when
  none answered there is nothing to decide on and the count is held.
- **Up at once, but not for one sample.** A scale-up needs ``need`` above the current
  replicas in ``up_samples`` consecutive ticks (2 by default: one noisy scrape never
  adds a pod, a real step is acted on within two ticks), and goes to the smallest of
  those needs.
- **Capacity on the way counts.** While ``starting`` pods are still coming up, backlog
  piles up at the ready pods that the new pods will take over once ready; a further
  scale-up then needs ``need > replicas + starting`` (no overshoot from that backlog).
- **Down slowly.** A scale-down goes to the largest ``need`` seen over the last
  ``scale_down_delay`` seconds, and only once that whole window was observed since the
  last scale (or since the operator started: a restart never shrinks at once).
- **Zero.** With ``min_replicas`` 0 the last replica goes after ``scale_to_zero_idle``
  seconds without any work or held request; a request held at zero scales to 1 (or
  more) at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

__all__ = [
    "DEFAULT_PENDING_REQUEST_WORK_SECONDS",
    "DEFAULT_UP_SAMPLES",
    "Decision",
    "Observation",
    "PodSample",
    "Policy",
    "ScalingState",
    "decide",
    "estimate_work",
]

DEFAULT_UP_SAMPLES: Final = 2
"""Consecutive ticks that must agree before a scale-up (one noisy scrape never scales)."""
DEFAULT_PENDING_REQUEST_WORK_SECONDS: Final = 1.0
"""Work assumed for one held request when no pod reports any (a sentence or two)."""


@dataclass(frozen=True, slots=True)
class PodSample:
    """One ready pod's fresh scrape; ``None`` fields mean the pod did not answer."""

    work_seconds: float | None
    queue_depth: int | None = None
    in_flight: int | None = None

    @property
    def answered(self) -> bool:
        return self.work_seconds is not None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the loop saw at one tick (``now`` is Unix seconds, comparable across restarts)."""

    now: float
    replicas: int
    """``spec.replicas`` as the voice holds it now."""
    ready: tuple[PodSample, ...]
    """One entry per ready, non-terminating pod (answered or not)."""
    starting: int = 0
    """Pods created but not ready yet (not terminating, younger than the cold-start timeout)."""
    pending_requests: int = 0
    """Requests the router holds for this voice (no replica could take them)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The voice's bounds and tuning (``spec.autoscaling``) in the units used here."""

    min_replicas: int = 1
    max_replicas: int = 3
    target_work_seconds: float = 10.0
    scale_down_delay: float = 300.0
    scale_to_zero_idle: float = 600.0
    up_samples: int = DEFAULT_UP_SAMPLES
    pending_request_work_seconds: float = DEFAULT_PENDING_REQUEST_WORK_SECONDS
    starting_weight: float = 1.0
    """How much of the pods on the way a further scale-up must exceed (see module doc)."""


@dataclass(frozen=True, slots=True)
class ScalingState:
    """What the decision remembers between ticks.

    ``last_scale_time`` and ``idle_since`` are kept in the voice's status, so a restarted
    operator resumes with them; ``history`` (recent needs) and ``observing_since`` live
    in memory and start empty, which only makes a restarted operator slower to shrink.
    """

    observing_since: float | None = None
    last_scale_time: float | None = None
    idle_since: float | None = None
    history: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one tick: ``desired`` replicas and why (``reason`` is CamelCase)."""

    desired: int
    reason: str
    message: str
    work_seconds: float
    queue_depth: int
    need: int
    state: ScalingState = field(repr=False)

    @property
    def scales(self) -> bool:
        return self.reason in ("ScaleUp", "ScaleDown", "ScaleToZero", "ScaleFromZero")


def estimate_work(
    samples: tuple[PodSample, ...], pending_requests: int, default_request_work: float
) -> tuple[float, int, bool]:
    """``(work_seconds, queue_depth, known)`` for a voice from its ready pods' samples.

    A pod that did not answer is counted at the mean of those that did; held requests
    count at the mean work per request seen at the pods (``default_request_work`` when
    the pods hold none). ``known`` is False when pods are ready but none answered.
    """
    answered = [s for s in samples if s.answered]
    if samples and not answered:
        return 0.0, 0, False
    work = sum(s.work_seconds or 0.0 for s in answered)
    depth = sum(s.queue_depth or 0 for s in answered)
    requests = depth + sum(s.in_flight or 0 for s in answered)
    if answered and len(answered) < len(samples):
        missing = len(samples) - len(answered)
        work += work / len(answered) * missing
        depth += round(depth / len(answered) * missing)
    per_request = work / requests if requests and work > 0 else default_request_work
    work += pending_requests * per_request
    return work, depth + pending_requests, True


def _clamp(value: int, policy: Policy) -> int:
    return max(policy.min_replicas, min(value, policy.max_replicas))


def decide(obs: Observation, state: ScalingState, policy: Policy) -> Decision:
    """Desired replicas for one voice; see the module docstring for the rules."""
    now = obs.now
    observing_since = state.observing_since if state.observing_since is not None else now
    work, depth, known = estimate_work(
        obs.ready, obs.pending_requests, policy.pending_request_work_seconds
    )
    busy = work > 0 or obs.pending_requests > 0
    if not known:
        busy = True  # unknown is not idle: never scale to zero on silence
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    need = math.ceil(work / policy.target_work_seconds - 1e-9) if work > 0 else 0
    if obs.pending_requests > 0:
        need = max(need, 1)

    window = max(policy.scale_down_delay, 0.0)
    history = deque(h for h in state.history if h[0] > now - window - 1e-9)
    if known:
        history.append((now, need))
    keep = ScalingState(
        observing_since=observing_since,
        last_scale_time=state.last_scale_time,
        idle_since=idle_since,
        history=tuple(history),
    )

    def result(desired: int, reason: str, message: str) -> Decision:
        new = keep
        if desired != obs.replicas:
            new = replace(keep, last_scale_time=now, history=((now, need),) if known else ())
        return Decision(desired, reason, message, work, depth, need, new)

    numbers = (
        f"work {work:.1f}s over {len(obs.ready)} ready + {obs.starting} starting pods, "
        f"{obs.pending_requests} held at the router, target {policy.target_work_seconds:g}s"
        f"/replica -> need {need}"
    )
    current = obs.replicas

    # Scale from zero: a held request cannot wait for a second sample.
    if current == 0 and obs.pending_requests > 0:
        return result(
            _clamp(max(need, 1), policy), "ScaleFromZero", f"{numbers}; request held at zero"
        )
    if not known:
        return result(current, "NoMetrics", f"none of {len(obs.ready)} ready pods answered")

    # Up: sustained (the last up_samples needs all above current), minus capacity on the way.
    recent = [n for _, n in list(history)[-policy.up_samples :]]
    if len(recent) >= policy.up_samples and min(recent) > current:
        target = _clamp(min(recent), policy)
        if target > current:
            on_the_way = math.floor(obs.starting * policy.starting_weight)
            if obs.starting and target <= current + on_the_way:
                return result(
                    current, "Hold", f"{numbers}; {obs.starting} pods on the way cover the excess"
                )
            return result(target, "ScaleUp", numbers)

    # Down: only after a whole scaleDownDelay observed since the last change.
    since = max(observing_since, state.last_scale_time or observing_since)
    floor = policy.min_replicas
    if policy.min_replicas == 0 and (
        idle_since is None or now - idle_since < policy.scale_to_zero_idle
    ):
        floor = 1
    if current > floor and now - since >= window and not obs.starting:
        peak = max((n for _, n in history), default=need)
        target = max(floor, min(peak, policy.max_replicas))
        if target < current:
            if target == 0:
                return result(0, "ScaleToZero", f"idle for {now - (idle_since or now):.0f}s")
            return result(target, "ScaleDown", f"{numbers}; peak need {peak} over {window:.0f}s")
    if current < policy.min_replicas or current > policy.max_replicas:
        return result(
            _clamp(current, policy),
            "Bounds",
            f"replicas {current} outside {policy.min_replicas}..{policy.max_replicas}",
        )
    return result(current, "Steady", numbers)
