"""The calibration cache (``--calibration-cache``): a fit is reused only under its own key.

The engine's ``run_text`` is the seam: a fake that records the texts it was asked to
speak, so each test sees whether a load timed the calibration texts or only warmed up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from voicefleet_inference.cost import CostModel
from voicefleet_inference.engines.calibration import (
    CALIBRATION_TEXTS,
    calibration_key,
    load_or_calibrate,
)

WARM_UP_ONLY = [CALIBRATION_TEXTS[0]]
CALIBRATED = [CALIBRATION_TEXTS[0], *CALIBRATION_TEXTS]


class FakeRun:
    """Stands in for an engine's ``run_text`` (our seam): records what it was asked."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, text: str) -> None:
        self.texts.append(text)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "voice.onnx"
    path.write_bytes(b"weights v1")
    return path


def load(cache: Path | None, model: Path, threads: int = 1) -> tuple[CostModel, list[str]]:
    run = FakeRun()
    cost = load_or_calibrate(
        run,
        cache,
        lambda: calibration_key(
            engine="piper-onnx",
            runtime="onnxruntime 1.0",
            model_path=model,
            device="cpu",
            threads=threads,
        ),
    )
    return cost, run.texts


def test_without_a_directory_every_load_calibrates(model: Path) -> None:
    assert load(None, model)[1] == CALIBRATED
    assert load(None, model)[1] == CALIBRATED


def test_a_second_load_with_the_same_key_reuses_the_fit_after_one_warm_up(
    tmp_path: Path, model: Path
) -> None:
    cache = tmp_path / "cache"
    first, texts = load(cache, model)
    assert texts == CALIBRATED
    assert len(list(cache.glob("cost-*.json"))) == 1
    second, texts = load(cache, model)
    assert texts == WARM_UP_ONLY
    assert second == first


def test_another_model_or_thread_count_is_calibrated_anew(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "cache"
    load(cache, model)
    assert load(cache, model, threads=2)[1] == CALIBRATED
    model.write_bytes(b"weights v2")  # same path, new digest
    assert load(cache, model)[1] == CALIBRATED
    assert len(list(cache.glob("cost-*.json"))) == 3


def test_a_damaged_file_is_calibrated_over(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "cache"
    load(cache, model)
    (path,) = cache.glob("cost-*.json")
    path.write_text("{not json")
    assert load(cache, model)[1] == CALIBRATED
    assert load(cache, model)[1] == WARM_UP_ONLY  # rewritten


def test_a_directory_that_cannot_be_written_still_loads(tmp_path: Path, model: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cost, texts = load(blocked / "cache", model)
    assert texts == CALIBRATED
    assert cost.seconds_per_char >= 0
