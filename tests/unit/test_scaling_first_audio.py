"""The first-audio target in the pure decision, over request-level traces (issue 22 item 2).

``simulate`` is a small fleet of our own (a fake by design): Poisson arrivals, requests of
0.3 s or 3 s of engine time (log-normal spread), each sent to the ready pod that frees up
first, one request at a time per pod, pods ready ``cold_start`` seconds after being
asked for. A request's first audio comes ``min(service, 0.3)`` after it starts. Each
second the loop's inputs are built from what the fleet did (as the operator builds them
from the pods' counters) and the real ``decide`` is called. The same traces run with the
work-seconds rule, so a test that passes only with the target fails without it.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from voicefleet_operator.autoscaler_status import voice_view
from voicefleet_operator.queueing import replicas_for_first_audio
from voicefleet_operator.scaling import (
    POLICY_FIRST_AUDIO,
    POLICY_WORK_SECONDS,
    Observation,
    PodSample,
    Policy,
    ScalingState,
    ServiceMeasure,
    decide,
    first_audio_need,
)

TARGET_S = 1.0
WORK = Policy(min_replicas=1, max_replicas=40, target_work_seconds=10, scale_down_delay=60)
"""The work-seconds rule at the CRD's default target (10 work-seconds per replica)."""
TARGETED = Policy(
    min_replicas=1,
    max_replicas=40,
    target_work_seconds=10,
    scale_down_delay=60,
    first_audio_target=TARGET_S,
    first_audio_percentile=0.99,
)


@dataclass
class Outcome:
    replicas: list[int]
    reasons: list[str]
    policies: list[str]
    firsts: list[tuple[float, float]] = field(default_factory=list)
    """``(arrival, seconds to first audio)`` per request that started."""
    replica_seconds: float = 0.0

    def met(self, since: float = 0.0) -> float:
        mine = [f for at, f in self.firsts if at >= since]
        return sum(1 for f in mine if f <= TARGET_S) / len(mine)

    @property
    def changes(self) -> int:
        return sum(1 for a, b in zip(self.replicas, self.replicas[1:], strict=False) if a != b)


def simulate(
    rate: Callable[[float], float],
    seconds: int,
    policy: Policy,
    *,
    seed: int = 1,
    replicas: int = 2,
    cold_start: int = 5,
    long_share: float = 0.15,
) -> Outcome:
    rng = random.Random(seed)
    arrivals: list[tuple[float, float]] = []  # (time, service seconds)
    t, peak = 0.0, 20.0
    while True:  # thinning: Poisson with a time-varying rate
        t += rng.expovariate(peak)
        if t >= seconds:
            break
        if rng.random() * peak <= rate(t):
            base = 3.0 if rng.random() < long_share else 0.3
            arrivals.append((t, base * rng.lognormvariate(0, 0.3)))
    times = [at for at, _ in arrivals]
    pods: list[list[float]] = [[0.0, 0.0] for _ in range(replicas)]  # [ready at, free at]
    # (start, service, first audio after start) of the requests started in the last 120 s,
    # in the order they started: a start is never earlier than the second it is made in, so
    # a dropped one never returns to the window (kept short: a 15-minute trace stays linear)
    recent: list[tuple[float, float, float]] = []
    out = Outcome([], [], [])
    state = ScalingState()
    i = 0
    for now in range(seconds):
        while i < len(arrivals) and arrivals[i][0] < now:
            at, service = arrivals[i]
            i += 1
            ready = [p for p in pods if p[0] <= at] or [min(pods, key=lambda p: p[0])]
            pod = min(ready, key=lambda p: max(p[1], p[0]))
            start = max(at, pod[1], pod[0])
            pod[1] = start + service
            first = min(service, 0.3)
            recent.append((start, service, first))
            out.firsts.append((at, start - at + first))
        ready = [p for p in pods if p[0] <= now]
        recent = [s for s in recent if now - 120 <= s[0]]
        window = [s for s in recent if s[0] < now]
        services = [s for _, s, _ in window]
        firsts = sorted(f for _, _, f in window)
        measure = None
        if services:
            mean = sum(services) / len(services)
            var = sum((s - mean) ** 2 for s in services) / len(services)
            measure = ServiceMeasure(
                arrival_rate=(i - bisect.bisect_left(times, now - 10, 0, i)) / 10,
                mean_service=mean,
                scv=var / mean**2,
                start_to_first_audio=firsts[int(0.99 * (len(firsts) - 1))],
                served=len(window),
                recent_arrival_rate=(i - bisect.bisect_left(times, now - 3, 0, i)) / 3,
            )
        obs = Observation(
            now=float(now),
            replicas=len(pods),
            ready=tuple(PodSample(max(0.0, p[1] - now)) for p in ready),
            starting=len(pods) - len(ready),
            service=measure,
        )
        d = decide(obs, state, policy)
        state = d.state
        if d.desired > len(pods):
            pods += [[now + cold_start, now + cold_start] for _ in range(d.desired - len(pods))]
        elif d.desired < len(pods):
            pods.sort(key=lambda p: (p[0] <= now, p[1]))  # not-ready, then least loaded go
            pods = pods[len(pods) - d.desired :]
        out.replicas.append(len(pods))
        out.reasons.append(d.reason)
        out.policies.append(d.policy_name)
        out.replica_seconds += len(pods)
    return out


def step(t: float) -> float:
    return 8.0 if 100 <= t < 400 else 1.0


def test_a_step_meets_the_target_with_it_and_misses_it_without() -> None:
    # 1 -> 8 requests/s at t=100 (about 5.6 busy servers), back at 400. After the step's
    # transient (cold start 5 s) the target holds; the work-seconds rule at its default
    # lets each pod carry 10 s of work, so first audio waits seconds on the same trace.
    targeted = simulate(step, 600, TARGETED)
    work = simulate(step, 600, WORK)
    assert targeted.met(since=130) >= 0.99
    assert work.met(since=130) < 0.9
    assert max(targeted.replicas) <= 14  # sized, not maxed out (40)
    first_up = next(t for t in range(100, 600) if targeted.replicas[t] > targeted.replicas[99])
    assert first_up <= 104  # acted on within a few seconds of the step
    assert targeted.replicas[-1] < max(targeted.replicas)  # and shrank after it
    assert POLICY_FIRST_AUDIO in targeted.policies
    assert set(work.policies) == {POLICY_WORK_SECONDS}


def test_noisy_flat_load_meets_the_target_and_changes_rarely() -> None:
    # 5 requests/s of mixed phrases and paragraphs for 15 minutes, three seeds.
    for seed in (1, 2, 3):
        targeted = simulate(lambda t: 5.0, 900, TARGETED, seed=seed, replicas=6)
        work = simulate(lambda t: 5.0, 900, WORK, seed=seed, replicas=6)
        assert targeted.met(since=60) >= 0.99, seed
        assert work.met(since=60) < 0.95, seed
        assert targeted.changes <= 15, (seed, targeted.replicas)  # 5-12 measured


def test_a_tighter_percentile_costs_more_replicas() -> None:
    p90 = replace(TARGETED, first_audio_percentile=0.9)
    loose = simulate(lambda t: 5.0, 600, p90, replicas=6)
    tight = simulate(lambda t: 5.0, 600, TARGETED, replicas=6)
    assert loose.replica_seconds < tight.replica_seconds
    assert loose.met(since=60) >= 0.9


MEASURE = ServiceMeasure(
    arrival_rate=8.0, mean_service=0.7, scv=2.0, start_to_first_audio=0.3, served=500
)


def obs(replicas: int, work: float, measure: ServiceMeasure | None, now: float) -> Observation:
    return Observation(
        now=now,
        replicas=replicas,
        ready=tuple(PodSample(work / replicas) for _ in range(replicas)),
        service=measure,
    )


def test_the_need_is_the_model_or_the_backlog_whichever_is_larger() -> None:
    model = replicas_for_first_audio(
        rate=8.0,
        mean_service=0.7,
        scv=2.0,
        first_audio=0.3,
        target=TARGET_S,
        percentile=0.99,
        max_replicas=40,
    )
    assert first_audio_need(2.0, MEASURE, TARGETED) == (model, 1)
    # 200 s of backlog: the request queued last must start within 0.7 s after the 10 s
    # horizon, so ceil(200 / 10.7) = 19 replicas, more than the model's.
    assert first_audio_need(200.0, MEASURE, TARGETED) == (model, 19)
    d = decide(obs(2, 200.0, MEASURE, 10.0), ScalingState(), TARGETED)
    assert d.need == 19
    assert d.model_replicas == model


def test_a_pod_of_several_workers_counts_as_that_many_servers() -> None:
    # 8 req/s of 0.7 s need some 8 single-worker pods; pods of 4 workers: the fewest whose
    # workers add up to as many, and the prediction for the desired pods says so too.
    single = first_audio_need(2.0, MEASURE, TARGETED)
    four = first_audio_need(2.0, MEASURE, replace(TARGETED, servers_per_pod=4))
    assert single is not None
    assert four is not None
    assert (four[0] - 1) * 4 < single[0] <= four[0] * 4
    # 200 s of backlog drain through 4 workers a pod: ceil(200 / (4 x 10.7)) = 5, not 19.
    backlog = first_audio_need(200.0, MEASURE, replace(TARGETED, servers_per_pod=4))
    assert backlog is not None
    assert backlog[1] == 5
    policy = replace(TARGETED, servers_per_pod=4)
    d = decide(obs(four[0], 2.0, MEASURE, 10.0), ScalingState(), policy)
    assert d.model_replicas == four[0]
    assert d.predicted_within is not None
    assert d.predicted_within >= 0.99
    fewer = decide(obs(four[0] - 1, 2.0, MEASURE, 10.0), ScalingState(), policy)
    assert fewer.predicted_within is not None
    assert 0.5 < fewer.predicted_within < 0.99  # 4 workers a pod: near, not met


def test_without_a_target_or_enough_requests_the_work_rule_decides() -> None:
    assert first_audio_need(2.0, MEASURE, WORK) is None
    few = ServiceMeasure(8.0, 0.7, 2.0, 0.3, served=TARGETED.min_served - 1)
    assert first_audio_need(2.0, few, TARGETED) is None
    d = decide(obs(2, 30.0, few, 10.0), ScalingState(), TARGETED)
    assert (d.policy_name, d.need, d.model_replicas) == (POLICY_WORK_SECONDS, 3, None)


def test_the_decision_reports_what_the_model_predicts_for_its_replicas() -> None:
    state = ScalingState()
    for now in (10.0, 11.0):  # two ticks agree: scale up
        d = decide(obs(2, 2.0, MEASURE, now), state, TARGETED)
        state = d.state
    assert d.reason == "ScaleUp"
    assert d.desired == d.model_replicas
    assert d.policy_name == POLICY_FIRST_AUDIO
    assert d.predicted_within is not None
    assert d.predicted_within >= 0.99
    assert "first audio <= 1s" in d.message


def test_while_the_backlog_grows_the_recent_rate_sizes_the_model() -> None:
    # The 10 s count still says 2 requests/s, the last 3 s say 8, and the backlog grew over
    # the last two intervals on 2 pods: the model is sized for 8.
    calm = ServiceMeasure(2.0, 0.7, 2.0, 0.3, served=500, recent_arrival_rate=8.0)
    state = ScalingState()
    for now, work in ((10.0, 1.0), (11.0, 6.0), (12.0, 12.0)):
        d = decide(obs(2, work, calm, now), state, TARGETED)
        state = d.state
    fitted = first_audio_need(12.0, replace(calm, arrival_rate=8.0), TARGETED)
    assert fitted is not None
    assert d.model_replicas == fitted[0]
    assert d.model_replicas > (first_audio_need(12.0, calm, TARGETED) or (0, 0))[0]
    # Without growth the recent count is noise: the 10 s rate stands.
    flat = decide(obs(2, 1.0, calm, 10.0), ScalingState(), TARGETED)
    assert flat.model_replicas == (first_audio_need(1.0, calm, TARGETED) or (0, 0))[0]


def test_one_noisy_tick_never_scales_up() -> None:
    d = decide(obs(2, 2.0, MEASURE, 10.0), ScalingState(), TARGETED)
    assert d.reason != "ScaleUp"
    assert d.desired == 2


def test_a_target_below_the_engines_own_first_audio_runs_at_max() -> None:
    slow = ServiceMeasure(1.0, 2.0, 1.0, start_to_first_audio=1.5, served=100)
    assert first_audio_need(0.0, slow, TARGETED) == (TARGETED.max_replicas, 0)
    assert math.isclose(
        decide(obs(40, 0.0, slow, 10.0), ScalingState(), TARGETED).predicted_within or 0.0, 0.0
    )


def test_a_voice_s_workers_are_its_pods_servers() -> None:
    # The operator reads spec.server.workers (one per GPU at least, as the Deployment
    # builder sets the pods' workers) into the policy the model sizes with.
    def view(server: dict[str, object], gpus: int = 0) -> int:
        raw = {
            "apiVersion": "voicefleet.io/v1alpha1",
            "kind": "TTSVoice",
            "metadata": {"namespace": "ns", "name": "v", "uid": "u", "generation": 1},
            "spec": {
                "model": {"bundled": "en_US-joe-medium"},
                "server": server,
                "resources": {"gpus": gpus},
                "autoscaling": {"target": {"timeToFirstAudioSeconds": 0.5}},
            },
        }
        policy = voice_view(raw).policy
        assert policy is not None
        return policy.servers_per_pod

    assert view({}) == 1
    assert view({"workers": 3}) == 3
    assert view({"workers": 1}, gpus=2) == 2
