"""``simulated``: a load-testing engine. It loads no model and speaks no words.

What it is for: benchmarks and tests of everything *around* an engine (router, autoscaler,
scheduler, drain) at a scale the hardware cannot run for real. On a 2-core machine real
CPU pods fight over the same cores, so a fourth replica adds no capacity; simulated pods
only sleep (the GIL is released), so twenty of them on two cores look, from outside, like
twenty GPU pods: the same HTTP API, the same metrics, a queue that builds and drains at the
rate of the real voice.

How it stays honest:

* Service time comes from the real voice's :class:`~voicefleet_inference.cost.CostModel`
  (overhead plus seconds per character, divided by the request's speed), optionally with
  log-normal noise so that the estimate the server exports is an estimate, not an oracle.
  :attr:`SimulatedSettings.speed_factor` divides it, to model a faster (or slower) device.
* The audio is real, well-formed audio of the length the real voice would produce for the
  text, at the voice's sample rate: a quiet tone, so a listener knows at once that it is
  not speech. It arrives sentence by sentence, so streaming and time to first audio behave.
* Word timestamps, when asked for, come from the same audio-length model: a word lasts
  ``audio_seconds_per_char`` per character of it (over the speed), the space after it is
  the pause between words. They describe the tone's timeline, not any real speech.
* Identity (model name, sample rate, speakers) is read from the voice's ``.onnx.json``;
  the ``.onnx`` file is never opened.

Never use it to serve users: every word comes back as a beep. See ``docs/engines.md``.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicefleet_api.env import SIMULATED_ENGINE_PREFIX
from voicefleet_inference.cost import REFERENCE_COST, CostModel
from voicefleet_inference.engines.base import (
    AudioChunk,
    EngineError,
    EngineInputError,
    Samples,
    SynthesisRequest,
    WordTiming,
)
from voicefleet_inference.phonemize import display_word

__all__ = [
    "SimulatedEngine",
    "SimulatedSettings",
    "split_sentences",
]

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")
_SPEAKABLE: Final = re.compile(r"\w")
_TOKEN: Final = re.compile(r"\S+")
_TONE_HZ: Final = 440.0
"""Nominal: the period is rounded to whole samples (441 Hz at 22.05 kHz)."""
_TONE_AMPLITUDE: Final = 0.05
"""About -26 dBFS: clearly audible as "not speech", never loud."""


class SimulatedSettings(BaseSettings):
    """The simulated engine's own knobs, from ``SIMULATED_ENGINE_*`` environment variables.

    Defaults describe ``en_US-joe-medium`` on one CPU thread as measured by its calibration
    (``docs/engines.md``); a TTSVoice sets these through ``spec.env`` like any other pod env.
    """

    model_config = SettingsConfigDict(env_prefix=SIMULATED_ENGINE_PREFIX, extra="ignore")

    overhead_s: float = Field(default=REFERENCE_COST.overhead_seconds, ge=0.0, le=60.0)
    """Fixed engine-seconds per request (the real voice's calibrated intercept)."""
    seconds_per_char: float = Field(default=REFERENCE_COST.seconds_per_char, ge=0.0, le=1.0)
    """Engine-seconds per character of text (the real voice's calibrated slope)."""
    speed_factor: float = Field(default=1.0, gt=0.0, le=10_000.0)
    """Divides every service time: 10 models a device ten times faster than one CPU thread.
    A very large value makes a near zero-time pod (for measuring a router's own cost)."""
    jitter: float = Field(default=0.0, ge=0.0, le=2.0)
    """Sigma of log-normal noise on each request's service time (0: exactly the estimate)."""
    audio_seconds_per_char: float = Field(default=0.057, gt=0.0, le=1.0)
    """Seconds of audio per character at speed 1 (joe-medium speaks about 17.5 chars/s)."""
    load_s: float = Field(default=0.0, ge=0.0, le=600.0)
    """Simulated model load time, to make cold starts as slow as a real voice's."""
    seed: int | None = None
    """Seed of the jitter's random generator (per engine instance); None: from the OS."""


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (after ``.``, ``!``, ``?`` and whitespace), blanks dropped."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


class SimulatedEngine:
    """A voice's identity and cost model without its weights; satisfies the Engine Protocol.

    One instance per worker thread, like every engine; the per-instance random generator
    is the only mutable state, touched only by the owning thread.
    """

    def __init__(
        self,
        *,
        model_name: str,
        sample_rate: int,
        speakers: Sequence[str] = (),
        device: str = "cpu",
        settings: SimulatedSettings | None = None,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._model_name = model_name
        self._sample_rate = sample_rate
        self._speakers = tuple(speakers)
        self._device = device
        self._settings = settings or SimulatedSettings()
        s = self._settings
        self._cost = CostModel(
            overhead_seconds=s.overhead_s / s.speed_factor,
            seconds_per_char=s.seconds_per_char / s.speed_factor,
        )
        self._rng = random.Random(s.seed)
        self._loaded = False
        # One period of the tone, tiled into each chunk: a copy, not a sin() per sample, so
        # a long paragraph costs the pod's CPU almost nothing (it is meant to look like a
        # GPU pod from outside, whose host CPU is idle while the device works).
        period = max(2, round(sample_rate / _TONE_HZ))
        angles = 2.0 * math.pi * np.arange(period, dtype=np.float64) / period
        self._cycle: Samples = (_TONE_AMPLITUDE * np.sin(angles)).astype(np.float32)

    @classmethod
    def from_piper_config(
        cls,
        config_path: Path,
        *,
        model_name: str,
        device: str = "cpu",
        settings: SimulatedSettings | None = None,
    ) -> SimulatedEngine:
        """Identity from a Piper ``.onnx.json`` (sample rate, speakers); nothing else read."""
        from voicefleet_inference.engines.piper_onnx import PiperVoiceConfig

        config = PiperVoiceConfig.from_json(config_path)
        speakers: tuple[str, ...] = ()
        if config.num_speakers > 1:
            ids = dict(config.speaker_id_map) or {str(i): i for i in range(config.num_speakers)}
            speakers = tuple(name for name, _ in sorted(ids.items(), key=lambda kv: kv[1]))
        return cls(
            model_name=model_name,
            sample_rate=config.sample_rate,
            speakers=speakers,
            device=device,
            settings=settings,
        )

    # -- Engine protocol -----------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def speakers(self) -> Sequence[str]:
        return self._speakers

    @property
    def device(self) -> str:
        return self._device

    @property
    def settings(self) -> SimulatedSettings:
        return self._settings

    def load(self) -> None:
        if self._settings.load_s > 0:
            time.sleep(self._settings.load_s)
        self._loaded = True

    def is_ready(self) -> bool:
        return self._loaded

    def cost_model(self) -> CostModel:
        """The real voice's cost model divided by the speed factor: the server's estimate."""
        return self._cost

    def service_seconds(self, text: str, speed: float = 1.0) -> float:
        """How long this engine will sleep for ``text``: the estimate times the noise."""
        base = self._cost.estimate(text, speed)
        jitter = self._settings.jitter
        if jitter <= 0:
            return base
        # Mean-preserving log-normal: E[exp(N(-s^2/2, s))] = 1.
        return base * math.exp(self._rng.gauss(-jitter * jitter / 2.0, jitter))

    def audio_samples(self, text: str, speed: float = 1.0) -> int:
        """Samples the real voice would produce for ``text`` at ``speed`` (at least 1)."""
        seconds = self._settings.audio_seconds_per_char * len(text) / speed
        return max(1, round(seconds * self._sample_rate))

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> Iterator[AudioChunk]:
        """Sentence *i* of every request in one step that lasts as long as its slowest item.

        That is ideal batching, roughly what a GPU gives; with ``max_batch_size`` 1 (the
        default on CPU) it is simply one request after another.
        """
        if not self._loaded:
            raise EngineError("engine not loaded")
        plans = [self._plan(r) for r in requests]
        steps = max(len(p) for p in plans) if plans else 0
        phase = [0] * len(requests)
        for step in range(steps):
            active = [i for i, p in enumerate(plans) if step < len(p)]
            time.sleep(max(plans[i][step][0] for i in active))
            for i in active:
                _seconds, samples, words = plans[i][step]
                chunk, phase[i] = self._tone(samples, phase[i])
                is_last = step == len(plans[i]) - 1
                yield AudioChunk(index=i, samples=chunk, is_last=is_last, words=words)

    def _words(
        self, sentence: str, first_index: int, speed: float
    ) -> tuple[tuple[WordTiming, ...], int]:
        """The sentence's word timings on its tone, and the next sentence's first index."""
        per_char = self._settings.audio_seconds_per_char / speed
        timings: list[WordTiming] = []
        tokens = list(_TOKEN.finditer(sentence))
        for offset, token in enumerate(tokens):
            word = display_word(token.group())
            if word:  # the word's own letters; punctuation around it is pause
                at = token.start() + token.group().index(word)
                timings.append(
                    WordTiming(
                        index=first_index + offset,
                        word=word,
                        start=round(at * per_char, 4),
                        end=round((at + len(word)) * per_char, 4),
                    )
                )
        return tuple(timings), first_index + len(tokens)

    def _plan(self, request: SynthesisRequest) -> list[tuple[float, int, tuple[WordTiming, ...]]]:
        """``(sleep seconds, samples, words)`` per sentence; the overhead goes to the first."""
        if not _SPEAKABLE.search(request.text):
            raise EngineInputError("text has nothing to speak (no words)")
        if request.speaker is not None and request.speaker not in self._speakers:
            raise EngineInputError(
                f"unknown speaker {request.speaker!r}; this voice has "
                f"{', '.join(self._speakers) or 'one speaker'}"
            )
        if not math.isfinite(request.speed) or request.speed <= 0:
            raise EngineInputError(f"speed must be a positive number, got {request.speed}")
        sentences = split_sentences(request.text) or [request.text]
        base = self._cost.estimate(request.text, request.speed)
        total = self.service_seconds(request.text, request.speed)
        overhead = self._cost.overhead_seconds * (total / base if base > 0 else 0.0)
        chars = sum(len(s) for s in sentences)
        out: list[tuple[float, int, tuple[WordTiming, ...]]] = []
        next_word = 0
        for i, sentence in enumerate(sentences):
            share = (total - overhead) * len(sentence) / chars
            words: tuple[WordTiming, ...] = ()
            if request.word_timestamps:
                words, next_word = self._words(sentence, next_word, request.speed)
            seconds = share + (overhead if i == 0 else 0.0)
            out.append((seconds, self.audio_samples(sentence, request.speed), words))
        return out

    def _tone(self, samples: int, phase: int) -> tuple[Samples, int]:
        """``samples`` of the quiet tone continuing from ``phase`` (no clicks between chunks)."""
        period = len(self._cycle)
        tone = np.resize(np.roll(self._cycle, -phase), samples).astype(np.float32, copy=False)
        return tone, (phase + samples) % period
