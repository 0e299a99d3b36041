"""The pure cost model: estimates and calibration fits."""

from __future__ import annotations

import pytest

from voicefleet_inference.cost import CostModel


def test_estimate_grows_with_text_and_shrinks_with_speed() -> None:
    model = CostModel(overhead_seconds=0.02, seconds_per_char=0.004)
    assert model.estimate("a" * 100) == pytest.approx(0.42)
    assert model.estimate("a" * 100, speed=2.0) == pytest.approx(0.22)
    assert model.estimate("a" * 200) > model.estimate("a" * 100)


def test_fit_recovers_a_line() -> None:
    model = CostModel.fit([(10, 0.06), (50, 0.22), (100, 0.42)])
    assert model.overhead_seconds == pytest.approx(0.02)
    assert model.seconds_per_char == pytest.approx(0.004)


def test_fit_never_gives_a_negative_overhead() -> None:
    model = CostModel.fit([(10, 0.01), (100, 0.5)])
    assert model.overhead_seconds == 0.0
    assert model.seconds_per_char > 0


def test_fit_with_one_length_is_a_pure_rate() -> None:
    model = CostModel.fit([(50, 0.2), (50, 0.3)])
    assert model.overhead_seconds == 0.0
    assert model.seconds_per_char == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("overhead", "rate"),
    [(-0.1, 0.01), (0.1, -0.01)],
)
def test_negative_coefficients_are_rejected(overhead: float, rate: float) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        CostModel(overhead_seconds=overhead, seconds_per_char=rate)


def test_fit_needs_measurements_and_estimate_needs_positive_speed() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CostModel.fit([])
    with pytest.raises(ValueError, match="positive"):
        CostModel(0.0, 0.01).estimate("text", speed=0.0)
