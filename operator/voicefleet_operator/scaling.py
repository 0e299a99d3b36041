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
- **Arrival rate of work.** From successive ticks: ``arrived = work_now - work_before
  + served``, where the ready pods serve at most one engine-second per second each (and
  no more than they held). ``rate`` is that over the last ``rate_window`` seconds.
- **Up at once, but not for one sample.** A scale-up needs ``need`` above the current
  replicas, and evidence that it is not one noisy scrape: either ``need`` was above the
  replicas in ``up_samples`` consecutive ticks, or the work arrived faster than the
  ready pods serve it in each of the last ``up_samples`` intervals (a step: the backlog
  grows tick after tick). A one-tick jump that falls back never adds a pod.
- **Sized on what the fleet will drain, pods on the way counted fully.** The backlog is
  a transient: ``replicas`` pods (the starting ones included) will serve ``replicas``
  engine-seconds per second while ``rate`` keeps arriving. A scale-up goes to the
  smallest ``n`` whose backlog share after ``horizon`` seconds (about a pod's cold
  start: sooner, added pods could not help) is within the target:
  ``work + (rate - n) * horizon <= n * target``, i.e. ``n = ceil((work + rate *
  horizon) / (horizon + target))``, never above ``need``; when the replicas already
  reach that ``n`` the excess is left to them (``Hold``), so backlog that piles up
  during a cold start does not snowball into an overshoot. Right after a step the
  window still holds the rate from before it, so a scale-up on growth with no pod
  starting takes the larger of that and the rate over the growing intervals.
- **Down slowly.** A scale-down goes to the largest need seen over the last
  ``scale_down_delay`` seconds with ``down_headroom`` more work (so the next burst does
  not undo it), and only once that whole window was observed since the last scale (or
  since the operator started: a restart never shrinks at once).
- **A first-audio target instead** (``Policy.first_audio_target``, from
  ``spec.autoscaling.target``). Once the pods have served ``min_served`` requests in the
  measuring window (:class:`ServiceMeasure`), ``need`` is the larger of the queueing
  model's replicas (:func:`queueing.replicas_for_first_audio` on the measured arrival
  rate, service-time mean and variability and start-to-first-audio time, each pod
  ``servers_per_pod`` servers: its workers) and those a
  backlog needs so the request held last starts within the target plus ``horizon``:
  ``ceil(work / ((target - first audio + horizon) x servers_per_pod))`` (the model is
  stationary; a backlog
  is not). It replaces ``work / target_work_seconds``; the evidence rule for a scale-up,
  the down window and zero stay the same; a scale-up goes straight to ``need`` (the
  model sizes it; no drain formula). While the backlog grows (a step) the rate is the
  pods' count over the last seconds (``ServiceMeasure.recent_arrival_rate``): the longer
  count still holds the rate before the step. A scale-down keeps the window's peak of
  the need for ``down_headroom`` more arrivals and backlog (without it the need followed
  the rate's noise and flapped; figures in docs/autoscaler.md). Before enough requests
  were served the work rule sizes the voice (``policy_name`` says which one decided).
- **Zero.** With ``min_replicas`` 0 the replicas go once the voice has had no work and
  no held request for ``scale_to_zero_idle`` seconds: idle time alone decides, not
  ``scale_down_delay`` (a voice idle 5 s with a 300 s delay used to wait the 300 s),
  unless a pod is still starting. A request held at zero scales to 1 (or more) at once.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

from voicefleet_api.load import PodCounters
from voicefleet_operator.queueing import replicas_for_first_audio, share_within

__all__ = [
    "DEFAULT_HORIZON_SECONDS",
    "DEFAULT_PENDING_REQUEST_WORK_SECONDS",
    "DEFAULT_RATE_WINDOW_SECONDS",
    "DEFAULT_UP_SAMPLES",
    "POLICY_FIRST_AUDIO",
    "POLICY_WORK_SECONDS",
    "Decision",
    "Observation",
    "PodSample",
    "Policy",
    "ScalingState",
    "ServiceMeasure",
    "decide",
    "estimate_work",
    "first_audio_need",
]

DEFAULT_UP_SAMPLES: Final = 2
"""Consecutive ticks that must agree before a scale-up (one noisy scrape never scales)."""
DEFAULT_PENDING_REQUEST_WORK_SECONDS: Final = 1.0
"""Work assumed for one held request when no pod reports any (a sentence or two)."""
DEFAULT_HORIZON_SECONDS: Final = 10.0
"""How far ahead a scale-up is sized: about the time a new pod takes to serve."""
DEFAULT_RATE_WINDOW_SECONDS: Final = 10.0
"""Seconds of ticks the arrival rate of work is measured over."""
DEFAULT_DOWN_HEADROOM: Final = 0.5
"""Share of the window's peak work a scale-down keeps room for.

On steady but noisy load the next window's peak beats the last one about half the time,
so shrinking to the bare peak was undone by a scale-up within seconds (flapping). The
figures behind the value are in docs/autoscaler.md (policies benchmark, "reversals").
"""


DEFAULT_MIN_SERVED: Final = 20
"""Requests served in the measuring window before a first-audio target sizes the voice
(fewer give a mean and variability too noisy to trust; the work rule decides until then)."""
POLICY_WORK_SECONDS: Final = "WorkSeconds"
POLICY_FIRST_AUDIO: Final = "FirstAudioTarget"
"""``status.autoscaling.policy`` values (contract with the CRD's enum)."""


@dataclass(frozen=True, slots=True)
class ServiceMeasure:
    """What a voice's pods measured recently: the first-audio model's inputs and outcome.

    Built by the loop from the pods' counters (``autoscaler_service``) and by the policy
    simulation from its fleet; the decision only reads it.
    """

    arrival_rate: float
    """Requests per second offered to the pods (accepted or refused)."""
    mean_service: float
    """Mean engine seconds per request, start to last chunk."""
    scv: float
    """Squared coefficient of variation of the engine seconds."""
    start_to_first_audio: float
    """Engine seconds from a request's start to its first audio, at the target percentile."""
    served: int
    """Requests the service figures come from."""
    observed_within: float | None = None
    """Share (0..1) of requests whose first audio met the target; None: none measured."""
    observed_seconds: float | None = None
    """Observed time to first audio at the target percentile; None: none measured."""
    recent_arrival_rate: float = 0.0
    """Requests per second over the last few seconds only (used while the backlog grows)."""


@dataclass(frozen=True, slots=True)
class PodSample:
    """One ready pod's fresh scrape; ``None`` fields mean the pod did not answer."""

    work_seconds: float | None
    queue_depth: int | None = None
    in_flight: int | None = None
    counters: PodCounters | None = None
    """Cumulative service counters, read only for voices with a first-audio target."""

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
    service: ServiceMeasure | None = None
    """Measured arrivals and service times (read only for voices with a first-audio target)."""


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
    horizon: float = DEFAULT_HORIZON_SECONDS
    """Seconds ahead a scale-up is sized for (see module doc); 0 sizes on the backlog alone."""
    rate_window: float = DEFAULT_RATE_WINDOW_SECONDS
    pod_work_rate: float = 1.0
    """Engine-seconds one pod serves per second (the work rule's drain and arrivals)."""
    servers_per_pod: int = 1
    """Requests one pod serves at once (its workers): the first-audio model's servers per
    replica. The measured service time already carries what concurrency costs each request."""
    down_headroom: float = DEFAULT_DOWN_HEADROOM
    """A scale-down keeps this share above the window's peak need (see the constant)."""
    first_audio_target: float | None = None
    """Seconds to first audio (``spec.autoscaling.target``); None: the work-seconds rule."""
    first_audio_percentile: float = 0.99
    """Share of requests (0..1) that should meet ``first_audio_target``."""
    min_served: int = DEFAULT_MIN_SERVED


@dataclass(frozen=True, slots=True)
class ScalingState:
    """What the decision remembers between ticks.

    ``last_scale_time`` and ``idle_since`` are kept in the voice's status, so a restarted
    operator resumes with them; ``history`` (recent needs), ``recent`` (recent
    ``(time, work, work per ready pod)``) and ``observing_since`` live in memory and start empty,
    which only makes a restarted operator slower to shrink and, for a few ticks, to
    measure the arrival rate.
    """

    observing_since: float | None = None
    last_scale_time: float | None = None
    idle_since: float | None = None
    history: tuple[tuple[float, int, int], ...] = ()
    """``(time, need, need with headroom)`` per tick over the last ``scaleDownDelay``."""
    recent: tuple[tuple[float, float, tuple[float, ...]], ...] = ()


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
    arrival_rate: float = 0.0
    """Engine-seconds of work arriving per second, as measured over ``rate_window``."""
    policy_name: str = POLICY_WORK_SECONDS
    """Which rule sized ``need``: :data:`POLICY_WORK_SECONDS` or :data:`POLICY_FIRST_AUDIO`."""
    model_replicas: int | None = None
    """The queueing model's replicas (first-audio policy only), before backlog and rules."""
    predicted_within: float | None = None
    """Share (0..1) the model predicts meets the target with ``desired`` replicas."""

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


def arrivals(
    recent: tuple[tuple[float, float, tuple[float, ...]], ...], pod_work_rate: float
) -> list[tuple[float, float, float]]:
    """``(seconds, work arrived, work the ready pods could serve)`` per interval.

    ``recent`` holds ``(time, work, work per ready pod)`` per tick. Between two ticks each
    pod served at most ``pod_work_rate`` engine-seconds per second, and no more than it
    held; what the backlog grew by on top of that arrived. Work that arrived and
    finished within one interval is not seen (an underestimate that only matters on
    light load, where it cannot cause a scale-up).
    """
    out = []
    for (t0, w0, pods), (t1, w1, _) in itertools.pairwise(recent):
        dt = t1 - t0
        if dt <= 0:
            continue
        step = pod_work_rate * dt
        served = sum(min(w, step) for w in pods)
        out.append((dt, max(0.0, w1 - w0 + served), len(pods) * step))
    return out


def _per_pod(samples: tuple[PodSample, ...]) -> tuple[float, ...]:
    """Work of each ready pod, one that did not answer at the mean of those that did."""
    answered = [s.work_seconds for s in samples if s.work_seconds is not None]
    mean = sum(answered) / len(answered) if answered else 0.0
    return tuple(mean if s.work_seconds is None else s.work_seconds for s in samples)


def drain_size(work: float, rate: float, policy: Policy) -> int:
    """Smallest ``n`` with ``work + (rate - n) * horizon <= n * target`` (module doc)."""
    h = max(policy.horizon, 0.0)
    return math.ceil(
        (work + rate * h) / (h * policy.pod_work_rate + policy.target_work_seconds) - 1e-9
    )


def first_audio_need(
    work: float, measure: ServiceMeasure, policy: Policy
) -> tuple[int, int] | None:
    """``(model replicas, backlog replicas)`` for the first-audio target, or None.

    None when the policy has no target or too few requests were measured to fit the
    model. The backlog term: the request queued last starts within ``target - first
    audio`` after the ``horizon`` new pods need, each pod's workers draining it side by
    side (module doc).
    """
    target = policy.first_audio_target
    if target is None or measure.served < policy.min_served:
        return None
    model = replicas_for_first_audio(
        rate=measure.arrival_rate,
        mean_service=measure.mean_service,
        scv=measure.scv,
        first_audio=measure.start_to_first_audio,
        target=target,
        percentile=policy.first_audio_percentile,
        max_replicas=policy.max_replicas,
        servers_per_replica=policy.servers_per_pod,
    )
    slack = max(target - measure.start_to_first_audio, 0.1)
    drained = (slack + max(policy.horizon, 0.0)) * max(1, policy.servers_per_pod)
    backlog = math.ceil(work / drained - 1e-9) if work > 0 else 0
    return model, backlog


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
    recent = [r for r in state.recent if now - policy.rate_window - 1e-9 <= r[0] < now]
    if known:
        recent.append((now, work, _per_pod(obs.ready)))
    intervals = arrivals(tuple(recent), policy.pod_work_rate)
    seconds = sum(dt for dt, _, _ in intervals)
    rate = sum(a for _, a, _ in intervals) / seconds if seconds > 0 else 0.0
    last = intervals[-policy.up_samples :]
    growing = len(last) >= policy.up_samples and all(a > c for _, a, c in last)

    service = obs.service
    if service is not None and growing and service.recent_arrival_rate > service.arrival_rate:
        # A step: the count over rate_window still holds the rate before it; the count over
        # the last seconds does not (noisier, so only while the backlog grows).
        service = replace(service, arrival_rate=service.recent_arrival_rate)
    fitted = first_audio_need(work, service, policy) if service and known else None
    if fitted is not None:
        need = max(fitted)
    else:
        need = math.ceil(work / policy.target_work_seconds - 1e-9) if work > 0 else 0
    if obs.pending_requests > 0:
        need = max(need, 1)
    if fitted is not None and service is not None:
        # Room for down_headroom more arrivals and backlog, as the work rule keeps room
        # for more work: on stationary noise the next window's peak beats the last one.
        more = 1 + policy.down_headroom
        busier = replace(service, arrival_rate=service.arrival_rate * more)
        roomy = max(need, *(first_audio_need(work * more, busier, policy) or (0,)))
    else:
        roomy = max(
            need, math.ceil(work * (1 + policy.down_headroom) / policy.target_work_seconds - 1e-9)
        )

    window = max(policy.scale_down_delay, 0.0)
    history = deque(h for h in state.history if h[0] > now - window - 1e-9)
    if known:
        history.append((now, need, roomy))
    keep = ScalingState(
        observing_since=observing_since,
        last_scale_time=state.last_scale_time,
        idle_since=idle_since,
        history=tuple(history),
        recent=tuple(recent),
    )

    def result(desired: int, reason: str, message: str) -> Decision:
        new = keep
        if desired != obs.replicas:
            new = replace(keep, last_scale_time=now, history=((now, need, roomy),) if known else ())
        if fitted is None or service is None or policy.first_audio_target is None:
            return Decision(desired, reason, message, work, depth, need, new, rate)
        m = service
        predicted = share_within(
            servers=desired,
            rate=m.arrival_rate,
            mean_service=m.mean_service,
            scv=m.scv,
            first_audio=m.start_to_first_audio,
            target=policy.first_audio_target,
            servers_per_replica=policy.servers_per_pod,
        )
        return Decision(
            desired,
            reason,
            message,
            work,
            depth,
            need,
            new,
            rate,
            policy_name=POLICY_FIRST_AUDIO,
            model_replicas=fitted[0],
            predicted_within=predicted,
        )

    pods = (
        f"{len(obs.ready)} ready + {obs.starting} starting pods, "
        f"{obs.pending_requests} held at the router"
    )
    if fitted is not None and service is not None:
        m = service
        numbers = (
            f"first audio <= {policy.first_audio_target:g}s for "
            f"{policy.first_audio_percentile:.4g} of requests: {m.arrival_rate:.2f} req/s, "
            f"service {m.mean_service:.2f}s (scv {m.scv:.2f}), first audio after start "
            f"{m.start_to_first_audio:.2f}s -> model {fitted[0]}, backlog {work:.1f}s over "
            f"{pods} -> {fitted[1]}; need {need}"
        )
    else:
        numbers = (
            f"work {work:.1f}s over {pods}, target {policy.target_work_seconds:g}s"
            f"/replica -> need {need}; arriving {rate:.1f}s/s"
        )
    current = obs.replicas

    # Scale from zero: a held request cannot wait for a second sample.
    if current == 0 and obs.pending_requests > 0:
        return result(
            _clamp(max(need, 1), policy), "ScaleFromZero", f"{numbers}; request held at zero"
        )
    if not known:
        return result(current, "NoMetrics", f"none of {len(obs.ready)} ready pods answered")

    # Up: an excess now, sustained over ticks or growing over intervals, sized on what the
    # replicas (those on the way included) drain within the horizon.
    needs = [n for _, n, _ in list(history)[-policy.up_samples :]]
    sustained = len(needs) >= policy.up_samples and min(needs) > current
    if need > current and (sustained or growing):
        ceiling = min(needs) if sustained else need
        if fitted is not None:  # the model sized it, the backlog term included
            if _clamp(ceiling, policy) > current:
                return result(_clamp(ceiling, policy), "ScaleUp", numbers)
        else:
            if growing and not obs.starting:  # a step: the window still holds the earlier rate
                rate = max(rate, sum(a for _, a, _ in last) / sum(dt for dt, _, _ in last))
            size = drain_size(work, rate, policy)
            target = _clamp(min(ceiling, size), policy)
            if target > current:
                return result(
                    target, "ScaleUp", f"{numbers}, drained by {size} within {policy.horizon:g}s"
                )
            if size <= current and current < policy.max_replicas:
                return result(
                    current,
                    "Hold",
                    f"{numbers}; {current} replicas ({obs.starting} on the way) drain it within "
                    f"{policy.horizon:g}s",
                )

    # Zero: idle time alone decides, whatever scaleDownDelay says (the idle clock lives in
    # status, so it also survives a restart); only a pod on its way holds it back.
    if (
        policy.min_replicas == 0
        and current > 0
        and idle_since is not None
        and now - idle_since >= policy.scale_to_zero_idle
        and not obs.starting
    ):
        return result(
            0,
            "ScaleToZero",
            f"idle for {now - idle_since:.0f}s "
            f"(scaleToZeroIdleSeconds {policy.scale_to_zero_idle:g})",
        )

    # Down: only after a whole scaleDownDelay observed since the last change.
    since = max(observing_since, state.last_scale_time or observing_since)
    floor = max(policy.min_replicas, 1)
    if current > floor and now - since >= window and not obs.starting:
        peak = max((n for _, _, n in history), default=roomy)
        target = max(floor, min(peak, policy.max_replicas))
        if target < current:
            return result(
                target,
                "ScaleDown",
                f"{numbers}; peak need {peak} over {window:.0f}s"
                + ("" if fitted is not None else f" (+{policy.down_headroom:.0%} work kept)"),
            )
    if current < policy.min_replicas or current > policy.max_replicas:
        return result(
            _clamp(current, policy),
            "Bounds",
            f"replicas {current} outside {policy.min_replicas}..{policy.max_replicas}",
        )
    return result(current, "Steady", numbers)
