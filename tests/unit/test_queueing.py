"""The first-audio queueing model: Erlang C against known values, and its monotony."""

from __future__ import annotations

import pytest

from voicefleet_operator.queueing import erlang_c, replicas_for_first_audio, wait_exceeds


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
