"""``vits-torch``: Piper VITS voices run by our own PyTorch implementation (:mod:`.model`).

Same voices, same text front end and same chunk contract as ``piper-onnx``
(:mod:`voicefleet_inference.engines.piper_text`); what torch adds:

- **Batching with exact lengths.** Sentence *i* of every request in the batch runs in
  padded passes with masks. The predicted durations are known here, so each item's audio
  is cut at exactly ``frames * hop`` samples (no guessing where padding starts), and
  requests of different speeds share a pass (the length scale is per item). Items are
  bucketed by phoneme count (sorted, at most ``max_batch`` per pass, a new bucket once
  the longest would exceed twice the shortest) so short sentences do not pay for long ones.
- **Streaming inside a sentence.** With ``stream_windows`` the decoder runs over windows
  of the latent (``first_window`` frames, then doubling), each widened on both sides by
  the decoder's receptive field, so the first audio leaves after the encoder, duration
  predictor, flows and one small window, and the joined windows equal the whole output.
- **Devices.** ``cpu`` (float32), ``cuda`` / ``cuda:N``; ``precision`` ``float16`` or
  ``bfloat16`` runs the decoder (most of the work) under autocast; encoder, durations
  and flows stay float32, so durations are those of float32.

``torch.set_num_threads`` is process-wide: every CPU worker of a pod sets the same
``threads`` value, so they agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import numpy as np

from voicefleet_inference.engines.base import (
    AudioChunk,
    EngineError,
    Samples,
    SynthesisRequest,
    WordTiming,
)
from voicefleet_inference.engines.piper_text import (
    PiperVoiceEngineBase,
    PiperVoiceOptions,
    PlannedUnit,
    TextPlan,
)

__all__ = ["PRECISIONS", "VitsTorchEngine", "plan_buckets", "plan_windows"]

PRECISIONS = ("float32", "float16", "bfloat16")


def plan_buckets(lengths: Sequence[int], max_batch: int, max_ratio: float = 2.0) -> list[list[int]]:
    """Indices grouped for padded passes: by length, ``<= max_batch`` each, bounded padding."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    buckets: list[list[int]] = []
    for k in order:
        if (
            buckets
            and len(buckets[-1]) < max_batch
            and lengths[k] <= max_ratio * lengths[buckets[-1][0]]
        ):
            buckets[-1].append(k)
        else:
            buckets.append([k])
    return buckets


def plan_windows(frames: int, first: int) -> list[tuple[int, int]]:
    """``[start, stop)`` latent-frame windows covering ``frames``: ``first``, then doubling."""
    if first < 1:
        raise ValueError("first window must be >= 1 frame")
    windows: list[tuple[int, int]] = []
    start, size = 0, first
    while start < frames:
        stop = min(frames, start + size)
        windows.append((start, stop))
        start, size = stop, size * 2
    return windows


@dataclass(slots=True)
class _Item:
    """One request's sentence in this round."""

    request: int
    ids: list[int]
    length_scale: float
    is_last: bool
    plan: TextPlan
    unit: PlannedUnit
    speaker: int = 0
    """Speaker id (row of ``emb_g``); ignored by a one-speaker voice."""


class VitsTorchEngine(PiperVoiceEngineBase):
    """A Piper voice on one torch device; satisfies the ``Engine`` protocol.

    Construction validates the configuration and reads only the JSON config; :meth:`load`
    imports torch, builds the model from the ``.onnx`` weights, warms up and calibrates.
    """

    def __init__(
        self,
        model_path: Path,
        config_path: Path,
        *,
        stream_windows: bool = True,
        first_window: int = 16,
        max_batch: int = 64,
        precision: str = "float32",
        **options: Unpack[PiperVoiceOptions],
    ) -> None:
        super().__init__(model_path, config_path, **options)
        if first_window < 1 or max_batch < 1:
            raise ValueError("first_window and max_batch must be >= 1")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if self._device_kind == "cpu" and precision != "float32":
            raise ValueError("precision on cpu is float32 only")
        self.stream_windows = stream_windows
        """Decode in windows (first audio early) or a whole sentence per pass; settable."""
        self.first_window = first_window
        """Latent frames of the first decoder window (later windows double)."""
        self._max_batch = max_batch
        self._precision = precision
        self._model: object | None = None
        self._overlap = 0
        self.noise_scale = self._config.noise_scale
        """Prior noise (the voice's ``noise_scale``); tests set 0 for deterministic output."""
        self.noise_w = self._config.noise_w
        """Duration noise (the voice's ``noise_w``)."""

    @property
    def overlap_frames(self) -> int:
        """Latent frames added on each side of a decoder window (its receptive field)."""
        return self._overlap

    # -- lifecycle -----------------------------------------------------------------------

    def load(self) -> None:
        import torch  # deferred: heavy, and only this engine needs it

        from voicefleet_inference.engines.vits_torch.loader import build_model

        started = time.perf_counter()
        self._front.load()
        if self._device_kind == "cuda":
            if not torch.cuda.is_available():
                raise EngineError(
                    f"device {self._device!r} requested but torch sees no CUDA device "
                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
                )
            if self._device_id >= torch.cuda.device_count():
                raise EngineError(
                    f"device {self._device!r}: only {torch.cuda.device_count()} CUDA device(s)"
                )
        else:
            torch.set_num_threads(self._threads)
        model = build_model(self._model_path)
        speakers = max(1, self._config.num_speakers)
        if model.spec.n_speakers != speakers:
            raise EngineError(
                f"{self._model_path}: the config says {speakers} speaker(s), the model has "
                f"{model.spec.n_speakers}"
            )
        self._torch_device = torch.device(
            f"cuda:{self._device_id}" if self._device_kind == "cuda" else "cpu"
        )
        self._model = model.to(self._torch_device)
        self._overlap = model.spec.decoder.receptive_frames()
        self._cost = self._calibrate("vits-torch", f"torch {torch.__version__}", self._run_text)
        self.load_seconds = time.perf_counter() - started

    def is_ready(self) -> bool:
        return self._model is not None and self._cost is not None

    # -- synthesis -----------------------------------------------------------------------

    def _run_text(self, text: str) -> Samples:
        parts = [c.samples for c in self.synthesize_batch([SynthesisRequest(text=text)])]
        return np.concatenate(parts)

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> Iterator[AudioChunk]:
        """Round *i* runs sentence *i* of every request that still has one, bucketed.

        Everything is phonemized and validated before the first pass, so a bad request
        fails the call before any audio of the others was produced.
        """
        plans: list[TextPlan] = []
        scales: list[float] = []
        speakers: list[int] = []
        for request in requests:
            plans.append(self.plan(request))
            speakers.append(self._front.speaker_id(request.speaker))
            scales.append(self._front.length_scale(request.speed))
        rounds = max((len(p.units) for p in plans), default=0)
        for i in range(rounds):
            items = [
                _Item(
                    k, p.units[i].ids, scales[k], i == len(p.units) - 1, p, p.units[i], speakers[k]
                )
                for k, p in enumerate(plans)
                if i < len(p.units)
            ]
            for bucket in plan_buckets([len(it.ids) for it in items], self._max_batch):
                yield from self._run_bucket([items[j] for j in bucket])

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        import torch

        if self._device_kind != "cuda" or self._precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self._precision == "float16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _run_bucket(self, items: list[_Item]) -> Iterator[AudioChunk]:
        import torch

        from voicefleet_inference.engines.vits_torch.model import VitsModel

        model = self._model
        if not isinstance(model, VitsModel):
            raise EngineError("engine not loaded")
        dev = self._torch_device
        lengths = [len(it.ids) for it in items]
        ids = torch.full((len(items), max(lengths)), self._front.pad_id, dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, : len(it.ids)] = torch.tensor(it.ids, dtype=torch.long)
        with torch.inference_mode():
            latent = model.latent(
                ids.to(dev),
                torch.tensor(lengths, device=dev),
                torch.tensor([it.length_scale for it in items], device=dev),
                self.noise_scale,
                self.noise_w,
                torch.tensor([it.speaker for it in items], device=dev)
                if model.spec.gin_channels
                else None,
            )
            frames = latent.frames.tolist()
            hop = model.hop
            durations = latent.durations.tolist()
            per_frame = hop / self.sample_rate
            words = [
                it.plan.timings(it.unit, durations[row], per_frame) for row, it in enumerate(items)
            ]
            if not self.stream_windows:
                varied = len(set(frames)) > 1
                with self._autocast():
                    audio = model.dec(latent.z, latent.frames if varied else None, latent.g)
                audio = audio.float().cpu()
                for row, it in enumerate(items):
                    samples = audio[row, : frames[row] * hop].numpy()
                    yield self._chunk(it, samples, final_window=True, words=words[row])
                return
            for start, stop in plan_windows(max(frames), self.first_window):
                rows = [r for r in range(len(items)) if frames[r] > start]
                spans = []
                for r in rows:
                    lo = max(0, start - self._overlap)
                    hi = min(frames[r], stop + self._overlap)
                    spans.append((lo, hi, min(stop, frames[r])))
                width = max(hi - lo for lo, hi, _ in spans)
                z = latent.z.new_zeros(len(rows), latent.z.shape[1], width)
                for j, (r, (lo, hi, _)) in enumerate(zip(rows, spans, strict=True)):
                    z[j, :, : hi - lo] = latent.z[r, :, lo:hi]
                valid = torch.tensor([hi - lo for lo, hi, _ in spans], device=dev)
                varied = len(set(valid.tolist())) > 1
                g = None if latent.g is None else latent.g[rows]
                with self._autocast():
                    audio = model.dec(z, valid if varied else None, g)
                audio = audio.float().cpu()
                for j, (r, (lo, _, keep_stop)) in enumerate(zip(rows, spans, strict=True)):
                    samples = audio[j, (start - lo) * hop : (keep_stop - lo) * hop].numpy()
                    yield self._chunk(
                        items[r],
                        samples,
                        final_window=keep_stop == frames[r],
                        words=words[r] if start == 0 else (),
                    )

    def _chunk(
        self,
        item: _Item,
        samples: Samples,
        *,
        final_window: bool,
        words: tuple[WordTiming, ...],
    ) -> AudioChunk:
        """A window (or whole sentence) of ``item``; the pause follows a sentence's last window.

        A whole sentence that came out silent is an error; a single window may be a pause.
        The sentence's word timings come with its first window (see ``WordTiming``).
        """
        if not np.isfinite(samples).all():
            raise EngineError("model produced non-finite samples")
        is_last = item.is_last and final_window
        samples = self._front.finish_chunk(
            np.ascontiguousarray(samples, dtype=np.float32),
            is_last=is_last or not final_window,
            check_silence=not self.stream_windows,
        )
        return AudioChunk(index=item.request, samples=samples, is_last=is_last, words=words)
