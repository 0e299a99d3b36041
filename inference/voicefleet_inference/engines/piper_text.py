"""The Piper text front end and the engines' shared base, used by ``piper-onnx`` and ``vits-torch``.

Both engines run the same Piper voices, so they must turn text into exactly the same
phoneme ids (otherwise the torch engine could not be checked against onnxruntime), pause
the same between sentences and calibrate their cost models the same way (the texts and
the optional cache: :mod:`.calibration`). Everything
here is model-runtime agnostic: the voice's JSON config, the sentence split through
espeak-ng, Piper's id layout, speaker and speed validation, the inter-sentence silence.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeVar

import numpy as np

from voicefleet_inference.cost import CostModel
from voicefleet_inference.engines.base import (
    EngineError,
    EngineInputError,
    Samples,
    SynthesisRequest,
    WordTiming,
)
from voicefleet_inference.engines.calibration import calibration_key, load_or_calibrate
from voicefleet_inference.engines.word_timing import word_timings
from voicefleet_inference.phoneme_budget import NO_WORD, over_request_budget
from voicefleet_inference.phonemize import (
    AlignedText,
    Phonemizer,
    PhonemizerError,
    SpokenUnit,
    normalize_text,
)

__all__ = [
    "PiperTextFrontEnd",
    "PiperVoiceConfig",
    "PiperVoiceEngineBase",
    "PiperVoiceOptions",
    "PlannedUnit",
    "TextPlan",
    "parse_device",
]

PAD = "_"
BOS = "^"
EOS = "$"
_T = TypeVar("_T")
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True, slots=True)
class PiperVoiceConfig:
    """The parts of a Piper ``.onnx.json`` the engines use."""

    sample_rate: int
    espeak_voice: str
    phoneme_id_map: Mapping[str, Sequence[int]]
    noise_scale: float
    length_scale: float
    noise_w: float
    num_speakers: int
    speaker_id_map: Mapping[str, int]

    @classmethod
    def from_json(cls, path: Path) -> PiperVoiceConfig:
        """Parse ``path``; a malformed or non-espeak config is a ValueError naming the field."""
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read Piper voice config {path}: {exc}") from exc
        try:
            phoneme_type = raw.get("phoneme_type", "espeak")
            if phoneme_type != "espeak":
                raise ValueError(f"phoneme_type {phoneme_type!r} is not supported (only espeak)")
            inference = raw.get("inference", {})
            id_map = {str(k): [int(i) for i in v] for k, v in raw["phoneme_id_map"].items()}
            for symbol in (PAD, BOS, EOS):
                if symbol not in id_map:
                    raise ValueError(f"phoneme_id_map lacks the special symbol {symbol!r}")
            return cls(
                sample_rate=int(raw["audio"]["sample_rate"]),
                espeak_voice=str(raw["espeak"]["voice"]),
                phoneme_id_map=id_map,
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                num_speakers=int(raw.get("num_speakers", 1)),
                speaker_id_map={str(k): int(v) for k, v in raw.get("speaker_id_map", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Piper voice config {path} lacks or mistypes {exc}") from exc


def parse_device(device: str) -> tuple[str, int]:
    """``cpu`` → (``cpu``, 0); ``cuda`` → (``cuda``, 0); ``cuda:N`` → (``cuda``, N)."""
    match = _DEVICE.match(device.strip().lower())
    if match is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    kind = match.group(1)
    if kind == "cpu" and match.group(2) is not None:
        raise ValueError(f"device 'cpu' takes no index, got {device!r}")
    return kind, int(match.group(2) or 0)


class PiperTextFrontEnd:
    """Text -> sentences -> Piper phoneme ids for one voice, plus speaker/speed checks.

    Construction reads nothing but the parsed config; :meth:`load` binds espeak-ng (in
    the engine's owning thread, with the rest of the slow work).
    """

    def __init__(
        self, config: PiperVoiceConfig, *, model_name: str, sentence_silence: float
    ) -> None:
        if sentence_silence < 0:
            raise ValueError("sentence_silence must be >= 0")
        self.config = config
        self._model_name = model_name
        self._sentence_silence = sentence_silence
        self._phonemizer: Phonemizer | None = None
        self._speaker_ids = dict(config.speaker_id_map)
        if config.num_speakers > 1 and not self._speaker_ids:
            # Some multi-speaker exports carry no names: their speakers are "0", "1", ...
            self._speaker_ids = {str(i): i for i in range(config.num_speakers)}
        ordered = sorted(self._speaker_ids.items(), key=lambda kv: kv[1])
        self.speakers: tuple[str, ...] = (
            tuple(name for name, _ in ordered) if config.num_speakers > 1 else ()
        )

    def load(self) -> None:
        try:
            self._phonemizer = Phonemizer(self.config.espeak_voice)
        except PhonemizerError as exc:
            raise EngineError(str(exc)) from exc

    def sentences(self, text: str) -> list[str]:
        """The phoneme strings of ``text``, one per sentence."""
        return self._checked(text, lambda p, t: p.sentences(t), lambda u: u)

    def aligned(self, text: str) -> AlignedText:
        """:meth:`sentences` with each phoneme traced to its input word (for timestamps)."""
        return self._checked(
            text, lambda p, t: p.aligned(t), lambda a: [u.phonemes for u in a.units]
        )

    def _checked(
        self,
        text: str,
        run: Callable[[Phonemizer, str], _T],
        units_of: Callable[[_T], list[str]],
    ) -> _T:
        if self._phonemizer is None:
            raise EngineError("engine not loaded")
        normalized = normalize_text(text)
        if not normalized:
            raise EngineInputError("text is empty")
        try:
            result = run(self._phonemizer, normalized)
        except PhonemizerError as exc:
            raise EngineError(str(exc)) from exc
        units = units_of(result)
        if not units:
            raise EngineInputError("text has nothing to speak (no words)")
        too_long = over_request_budget(units, len(text))
        if too_long is not None:  # both engines: the cost model must stay truthful
            raise EngineInputError(too_long)
        return result

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Piper's id sequence: BOS, pad, then each phoneme's ids each followed by pad, EOS.

        Phonemes the voice has no id for are dropped (as Piper does), never guessed.
        """
        ids, _ = self.tagged_ids(SpokenUnit(phonemes, (NO_WORD,) * len(phonemes)))
        return ids

    def tagged_ids(self, unit: SpokenUnit) -> tuple[list[int], list[int]]:
        """:meth:`phoneme_ids` of ``unit`` and, per id, the word it speaks.

        A phoneme's ids and the pad after it are that phoneme's word; BOS, EOS and their
        pads speak no word.
        """
        id_map = self.config.phoneme_id_map
        pad = id_map[PAD]
        ids: list[int] = [*id_map[BOS], *pad]
        tags: list[int] = [NO_WORD] * len(ids)
        for phoneme, word in zip(unit.phonemes, unit.word_of, strict=True):
            mapped = id_map.get(phoneme)
            if mapped is None:
                continue
            ids.extend(mapped)
            ids.extend(pad)
            tags.extend([word] * (len(mapped) + len(pad)))
        ids.extend(id_map[EOS])
        tags.extend([NO_WORD] * len(id_map[EOS]))
        return ids, tags

    @property
    def pad_id(self) -> int:
        return self.config.phoneme_id_map[PAD][0]

    def speaker_id(self, speaker: str | None) -> int:
        if speaker is None:
            return 0
        if not self.speakers:
            raise EngineInputError(f"model {self._model_name} has one speaker; got {speaker!r}")
        sid = self._speaker_ids.get(speaker)
        if sid is None and speaker.isdecimal() and int(speaker) < self.config.num_speakers:
            sid = int(speaker)  # a speaker by number, as Piper's own tools accept
        if sid is None:
            raise EngineInputError(
                f"unknown speaker {speaker!r}; this model has {', '.join(self.speakers)}"
            )
        return sid

    def length_scale(self, speed: float) -> float:
        """The voice's length scale at ``speed``; a bad speed is the client's error."""
        if not math.isfinite(speed) or speed <= 0:
            raise EngineInputError(f"speed must be a positive number, got {speed!r}")
        return self.config.length_scale / speed

    def finish_chunk(
        self, samples: Samples, *, is_last: bool, check_silence: bool = True
    ) -> Samples:
        """Clip to [-1, 1] and append the inter-sentence pause unless ``is_last``.

        Silent output for a non-empty sentence is an engine failure, never returned.
        """
        if check_silence:
            peak = float(np.max(np.abs(samples))) if samples.size else 0.0
            if peak < 1e-4:
                raise EngineError("model produced silence for a non-empty sentence")
        samples = np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)
        if not is_last and self._sentence_silence > 0:
            gap = np.zeros(round(self._sentence_silence * self.config.sample_rate), np.float32)
            samples = np.concatenate([samples, gap])
        return samples


class PiperVoiceOptions(TypedDict):
    """The construction arguments every Piper engine takes (the base's keywords), so an
    engine that adds its own forwards these as ``**options`` instead of repeating them."""

    model_name: str
    device: NotRequired[str]
    threads: NotRequired[int]
    sentence_silence: NotRequired[float]
    calibration_cache: NotRequired[Path | None]


class PiperVoiceEngineBase:
    """What every engine of a Piper voice shares: config, front end, device and identity.

    Both Piper engines (onnxruntime and our torch port) read the same ``.onnx.json``,
    speak through the same front end and answer the ``Engine`` protocol's identity
    properties the same way; only loading and running the network differ.
    """

    def __init__(
        self,
        model_path: Path,
        config_path: Path,
        *,
        model_name: str,
        device: str = "cpu",
        threads: int = 1,
        sentence_silence: float = 0.05,
        calibration_cache: Path | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._device_kind, self._device_id = parse_device(device)
        self._device = device.strip().lower()
        self._model_path = model_path
        self._config = PiperVoiceConfig.from_json(config_path)
        self._model_name = model_name
        self._threads = threads
        self._front = PiperTextFrontEnd(
            self._config, model_name=model_name, sentence_silence=sentence_silence
        )
        self._cost: CostModel | None = None
        self._calibration_cache = calibration_cache
        self.load_seconds: float | None = None
        """Wall time of ``load`` (model, warm-up and calibration), for logs."""

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def sample_rate(self) -> int:
        return self._config.sample_rate

    @property
    def speakers(self) -> Sequence[str]:
        return self._front.speakers

    @property
    def device(self) -> str:
        return self._device

    @property
    def threads(self) -> int:
        """Intra-op threads of this instance."""
        return self._threads

    def _calibrate(self, engine: str, runtime: str, run_text: Callable[[str], object]) -> CostModel:
        """The load's cost model: timed now, or kept from an earlier load with the same model,
        runtime, device, threads and processor (:mod:`.calibration`)."""
        return load_or_calibrate(
            run_text,
            self._calibration_cache,
            lambda: calibration_key(
                engine=engine,
                runtime=runtime,
                model_path=self._model_path,
                device=self._device,
                threads=self._threads,
            ),
        )

    def cost_model(self) -> CostModel:
        """The cost model ``load`` calibrated on real syntheses of this voice."""
        if self._cost is None:
            raise EngineError("cost model not calibrated: load() has not completed")
        return self._cost

    def sentences(self, text: str) -> list[str]:
        """The phoneme strings of ``text``, one per sentence (public for tests and tools)."""
        return self._front.sentences(text)

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Piper's id sequence (see :meth:`PiperTextFrontEnd.phoneme_ids`)."""
        return self._front.phoneme_ids(phonemes)

    def plan(self, request: SynthesisRequest) -> TextPlan:
        """``request``'s units as ids, traced to words when it asked for timestamps."""
        if not request.word_timestamps:
            return TextPlan(
                (), [PlannedUnit(self.phoneme_ids(p)) for p in self.sentences(request.text)]
            )
        aligned = self._front.aligned(request.text)
        units = [PlannedUnit(*self._front.tagged_ids(u)) for u in aligned.units]
        return TextPlan(aligned.words, units)


@dataclass(frozen=True, slots=True)
class PlannedUnit:
    """One synthesis unit's ids and, when timestamps were asked for, each id's word."""

    ids: list[int]
    id_words: list[int] | None = None


@dataclass(frozen=True, slots=True)
class TextPlan:
    """A request's units, and the words ``id_words`` index (empty without timestamps)."""

    words: tuple[str, ...]
    units: list[PlannedUnit]

    def timings(
        self, unit: PlannedUnit, durations: Sequence[float], seconds_per_frame: float
    ) -> tuple[WordTiming, ...]:
        """The unit's word timings from the model's per-id ``durations`` (frames)."""
        if unit.id_words is None:
            return ()
        return word_timings(
            self.words, unit.id_words, durations[: len(unit.ids)], seconds_per_frame
        )
