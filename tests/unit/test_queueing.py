"""The first-audio queueing model: Erlang C against known values, its monotony, and pods
of several workers against a simulated fleet behind the router."""

from __future__ import annotations

import math
import random

import pytest

from voicefleet_operator.queueing import (
    erlang_c,
    replicas_for_first_audio,
    share_within,
    wait_exceeds,
)


def test_erlang_c_matches_closed_forms() -> None:
    # M/M/1: P(wait) = utilisation; M/M/2 at a = 1 erlang: 1/3.
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0  # cannot be served: everyone waits
    assert erlang_c(4, 0.0) == 0.0
    assert 0.0 < erlang_c(2000, 1900.0) < 1.0  # large fleets stay finite


def test_the_wait_tail_is_exponential_and_variable_service_stretches_it() -> None:
    # M/M/1, rho 0.5, mean 1 s: P(W > t) = 0.5 exp(-0.5 t).
    assert wait_exceeds(1, 0.5, 1.0, 1.0, 2.0) == pytest.approx(0.5 * 2.718281828**-1.0)
    assert wait_exceeds(1, 0.5, 1.0, 4.0, 2.0) > wait_exceeds(1, 0.5, 1.0, 1.0, 2.0)
    assert wait_exceeds(1, 0.0, 1.0, 1.0, 2.0) == 0.0


def test_replicas_grow_with_rate_and_with_a_tighter_target() -> None:
    def n(rate: float, target: float = 1.0, percentile: float = 0.99) -> int:
        return replicas_for_first_audio(
            rate=rate,
            mean_service=1.2,
            scv=4.0,
            first_audio=0.3,
            target=target,
            percentile=percentile,
            max_replicas=100,
        )

    counts = [n(r) for r in (0.5, 1, 2, 5, 10, 20)]
    assert counts == sorted(counts)
    assert counts[-1] > 20 * 1.2  # more than the bare load (24 erlangs)
    assert n(5, target=0.5) >= n(5, target=2.0)
    assert n(5, percentile=0.999) >= n(5, percentile=0.9)
    assert n(0) == 0
    assert n(5, target=0.2) == 100  # below the first audio itself: as many as allowed


def test_a_pod_with_several_workers_is_that_many_servers() -> None:
    # One pod of 2 workers at 1 erlang (1 req/s of 1 s): M/M/2, P(wait) = 1/3 and the tail
    # decays at 2 - 1 per second; as one server per pod it could not be served at all.
    t = 0.5
    share = share_within(
        servers=1,
        rate=1.0,
        mean_service=1.0,
        scv=1.0,
        first_audio=0.0,
        target=t,
        servers_per_replica=2,
    )
    assert share == pytest.approx(1 - math.exp(-t) / 3)
    assert share_within(
        servers=1, rate=1.0, mean_service=1.0, scv=1.0, first_audio=0.0, target=t
    ) == pytest.approx(0.0)

    def n(workers: int) -> int:
        return replicas_for_first_audio(
            rate=10.0,
            mean_service=0.4,
            scv=0.3,
            first_audio=0.1,
            target=0.5,
            percentile=0.99,
            max_replicas=100,
            servers_per_replica=workers,
        )

    one = n(1)
    for workers in (2, 4, 8):
        pods = n(workers)
        # the fewest pods whose workers add up to what single-worker pods need
        assert (pods - 1) * workers < one <= pods * workers


def _late_share(pods: int, workers: int, rate: float, slack: float, seed: int) -> float:
    """Share of requests that wait longer than ``slack`` in a seeded discrete-event run of
    ``pods`` pods with ``workers`` workers each, FIFO within a pod, every request sent to
    the pod with the least queued work (the router's jsq-work), Poisson arrivals, service
    times log-normal with mean 0.4 s and sigma 0.5 (the reference the model is held to)."""
    rng = random.Random(seed)
    free = [[0.0] * workers for _ in range(pods)]
    now, late, counted = 0.0, 0, 0
    for i in range(15_000):
        now += rng.expovariate(rate)
        service = 0.4 * math.exp(rng.gauss(-0.125, 0.5))
        pod = min(free, key=lambda ws: sum(f - now for f in ws if f > now))
        worker = min(range(workers), key=pod.__getitem__)
        start = max(now, pod[worker])
        pod[worker] = start + service
        if i >= 1_500:  # past the empty start
            counted += 1
            late += start - now > slack
    return late / counted


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("rate", [4.0, 10.0, 20.0])
def test_pods_of_several_workers_match_a_jsq_fleet_within_one_pod(
    workers: int, rate: float
) -> None:
    # The model's pods for "start within 0.3 s for 99 %" against a simulated fleet behind
    # the router: one pod fewer misses it, one more meets it. Counting one server per pod
    # (the model before workers were counted) asks for about `workers` times as many.
    scv = math.exp(0.25) - 1  # log-normal, sigma 0.5

    def model(per: int) -> int:
        return replicas_for_first_audio(
            rate=rate,
            mean_service=0.4,
            scv=scv,
            first_audio=0.0,
            target=0.3,
            percentile=0.99,
            max_replicas=100,
            servers_per_replica=per,
        )

    pods = model(workers)
    assert _late_share(pods + 1, workers, rate, 0.3, seed=7) <= 0.01
    if pods > 1:
        assert _late_share(pods - 1, workers, rate, 0.3, seed=7) > 0.01
    if rate >= 10:
        assert model(1) >= 1.5 * pods
