"""The ``simulated`` load-testing engine, alone: identity, cost, audio, timing, errors.

It sleeps instead of computing, so timings here are real but short (speed factors make
a paragraph take tens of milliseconds).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from voicefleet_api.engines import SIMULATED
from voicefleet_inference.engines.base import Engine, EngineInputError, SynthesisRequest
from voicefleet_inference.engines.registry import (
    BUNDLED_VOICE,
    ENGINES,
    EngineConfigError,
    create_engine,
)
from voicefleet_inference.engines.simulated import (
    SimulatedEngine,
    SimulatedSettings,
    split_sentences,
)

PARAGRAPH = (
    "The first sentence is short. The second one carries on a little longer than that! "
    "Is the third a question? The fourth ends it."
)


def engine(**settings: object) -> SimulatedEngine:
    e = SimulatedEngine(
        model_name="voice-a",
        sample_rate=16000,
        speakers=("alice", "bob"),
        settings=SimulatedSettings.model_validate(settings),
    )
    e.load()
    return e


def test_bundled_voice_identity_comes_from_its_config_and_it_is_an_engine() -> None:
    e = create_engine(SIMULATED, BUNDLED_VOICE, "cpu", 1)
    assert isinstance(e, Engine)
    assert SIMULATED in ENGINES
    assert (e.model_name, e.sample_rate, tuple(e.speakers)) == (BUNDLED_VOICE, 22050, ())
    assert not e.is_ready()
    e.load()
    assert e.is_ready()


def test_settings_come_from_the_environment_and_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMULATED_ENGINE_SPEED_FACTOR", "4")
    monkeypatch.setenv("SIMULATED_ENGINE_OVERHEAD_S", "0.2")
    e = create_engine(SIMULATED, BUNDLED_VOICE, "cpu", 1)
    assert e.cost_model().overhead_seconds == pytest.approx(0.05)
    monkeypatch.setenv("SIMULATED_ENGINE_SPEED_FACTOR", "0")
    with pytest.raises(EngineConfigError, match="SIMULATED_ENGINE_SPEED_FACTOR"):
        create_engine(SIMULATED, BUNDLED_VOICE, "cpu", 1)


def test_an_unknown_model_is_refused_like_the_real_engine() -> None:
    with pytest.raises(EngineConfigError, match="unknown model"):
        create_engine(SIMULATED, "no-such-voice", "cpu", 1)


def test_cost_model_is_the_real_voices_divided_by_the_speed_factor() -> None:
    e = engine(overhead_s=0.02, seconds_per_char=0.0045, speed_factor=10)
    cost = e.cost_model()
    assert cost.overhead_seconds == pytest.approx(0.002)
    assert cost.seconds_per_char == pytest.approx(0.00045)
    assert e.service_seconds("x" * 100) == pytest.approx(cost.estimate("x" * 100))


def test_audio_is_a_quiet_tone_of_the_real_voices_length_one_chunk_per_sentence() -> None:
    e = engine(speed_factor=1000, audio_seconds_per_char=0.05)
    chunks = list(e.synthesize_batch([SynthesisRequest(PARAGRAPH)]))
    assert len(chunks) == len(split_sentences(PARAGRAPH)) == 4
    assert [c.is_last for c in chunks] == [False, False, False, True]
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.dtype == np.float32
    expected = 0.05 * sum(len(s) for s in split_sentences(PARAGRAPH)) * 16000
    assert abs(len(audio) - expected) <= 4
    peak = float(np.max(np.abs(audio)))
    assert 0.01 < peak <= 0.06  # audible, quiet, never clipped
    # continuous phase: no jump larger than one sample step of the tone at chunk joins
    assert float(np.max(np.abs(np.diff(audio)))) < 0.01


def test_speed_shortens_audio_and_service_time() -> None:
    e = engine(speed_factor=100)
    slow = sum(len(c.samples) for c in e.synthesize_batch([SynthesisRequest(PARAGRAPH)]))
    fast = sum(len(c.samples) for c in e.synthesize_batch([SynthesisRequest(PARAGRAPH, speed=2.0)]))
    assert fast == pytest.approx(slow / 2, abs=4)
    assert e.service_seconds(PARAGRAPH, 2.0) < e.service_seconds(PARAGRAPH)


def test_synthesis_sleeps_for_the_estimate_and_streams_sentence_by_sentence() -> None:
    e = engine(overhead_s=0.0, seconds_per_char=0.002)  # ~0.25 s for the paragraph
    expected = e.service_seconds(PARAGRAPH)
    started = time.perf_counter()
    arrivals = []
    for _chunk in e.synthesize_batch([SynthesisRequest(PARAGRAPH)]):
        arrivals.append(time.perf_counter() - started)
    assert arrivals[0] < expected * 0.6  # the first sentence does not wait for the last
    assert expected * 0.95 <= arrivals[-1] <= expected + 0.15


def test_a_batch_lasts_as_long_as_its_slowest_item() -> None:
    e = engine(overhead_s=0.0, seconds_per_char=0.002)
    short, long = SynthesisRequest("Hi there."), SynthesisRequest(PARAGRAPH)
    started = time.perf_counter()
    chunks = list(e.synthesize_batch([short, long]))
    elapsed = time.perf_counter() - started
    assert {c.index for c in chunks if c.is_last} == {0, 1}
    assert elapsed < e.service_seconds(PARAGRAPH) + e.service_seconds("Hi there.") * 0.5 + 0.15


def test_jitter_is_mean_preserving_noise_and_seeded() -> None:
    a = engine(jitter=0.3, seed=7)
    b = engine(jitter=0.3, seed=7)
    draws = [a.service_seconds(PARAGRAPH) for _ in range(4000)]
    assert draws[:5] == [b.service_seconds(PARAGRAPH) for _ in range(5)]
    assert statistics.fmean(draws) == pytest.approx(a.cost_model().estimate(PARAGRAPH), rel=0.03)
    assert statistics.pstdev(draws) > 0.2 * statistics.fmean(draws)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (SynthesisRequest("... !?"), "nothing to speak"),
        (SynthesisRequest("Hello.", speaker="carol"), "unknown speaker 'carol'"),
    ],
)
def test_input_errors_are_4xx_errors_like_the_real_engine(
    request_: SynthesisRequest, match: str
) -> None:
    with pytest.raises(EngineInputError, match=match):
        list(engine().synthesize_batch([request_]))


def test_the_caller_may_stop_early_without_waiting_for_the_rest() -> None:
    e = engine(overhead_s=0.0, seconds_per_char=0.004)
    started = time.perf_counter()
    stream = e.synthesize_batch([SynthesisRequest(PARAGRAPH)])
    next(stream)
    stream.close()
    assert time.perf_counter() - started < e.service_seconds(PARAGRAPH) * 0.6


def test_load_time_is_simulated_for_cold_starts() -> None:
    e = SimulatedEngine(model_name="v", sample_rate=8000, settings=SimulatedSettings(load_s=0.1))
    started = time.perf_counter()
    e.load()
    assert time.perf_counter() - started >= 0.1
    assert e.is_ready()
