"""``piper-onnx``: Piper VITS voices (``.onnx`` + ``.onnx.json``) run by onnxruntime.

One :class:`PiperOnnxEngine` owns one onnxruntime session for its whole life and is used
by one worker thread (see :mod:`voicefleet_inference.engines.base`); the session is never
shared. The text front end is :mod:`voicefleet_inference.engines.piper_text` (shared
with ``vits-torch``). Text becomes IPA phonemes through espeak-ng
(:mod:`voicefleet_inference.phonemize`),
phonemes become ids the way Piper voices were trained (``^``, each phoneme followed by the
pad ``_``, ``$``), and each sentence is one forward pass and one :class:`AudioChunk`, which
is what lets a streaming response start after the first sentence.

Batching: the graph takes a padded ``[batch, phonemes]`` tensor with real
``input_lengths``, so sentence *i* of several requests can run in one pass. Each item's
audio is cut where the decoded padding begins (see :func:`trim_batch_padding`).

Durations: Piper's exported graph outputs only audio, but it computes every id's
duration inside (the ``Ceil`` of the duration predictor's output times the length
scale, which the graph then expands the prior by). :func:`expose_durations` adds that
tensor as a second graph output at load, so word timestamps come from the very
durations that shaped the audio of the same pass, not from a second run or a guess.

``scales`` is one tensor for the whole batch, so requests with different speeds run in
separate passes. On a 2-core CPU batching gains
nothing (measured; see ``docs/engines.md``), which is why the scheduler keeps it off there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from voicefleet_inference.engines.base import (
    AudioChunk,
    EngineError,
    Samples,
    SynthesisRequest,
    WordTiming,
)
from voicefleet_inference.engines.piper_text import (
    PiperVoiceConfig,
    PiperVoiceEngineBase,
    PlannedUnit,
    TextPlan,
    parse_device,
)

__all__ = ["PiperOnnxEngine", "PiperVoiceConfig", "expose_durations", "parse_device"]

_HOP = 256
"""Output samples per latent frame of Piper's VITS decoder (every Piper voice quality)."""
_REPEAT_RUN = 4
"""Identical consecutive hops that prove we are in decoded padding, not speech."""
_REPEAT_TOLERANCE = 1e-6
DURATIONS_OUTPUT = "durations"
"""The graph output :func:`expose_durations` adds: ``[batch, 1, ids]`` frames per id."""


def expose_durations(model_path: Path) -> bytes:
    """The model, serialized, with its per-id durations as a second output.

    A VITS graph has exactly one ``Ceil``: ``ceil(exp(logw) * mask * length_scale)``, the
    frames each id lasts, which the graph sums into the output's length. It is renamed
    to an output here; a graph without exactly one ``Ceil`` is not a Piper VITS export
    we know, and loading fails naming that.
    """
    import onnx  # deferred: only loading needs it

    try:
        raw = model_path.read_bytes()
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # OSError, and onnx's untyped DecodeError and friends
        raise EngineError(f"cannot read {model_path}: {exc}") from exc
    ceils = [n for n in model.graph.node if n.op_type == "Ceil"]
    if len(ceils) != 1:
        raise EngineError(
            f"{model_path}: expected one Ceil node (the VITS durations), found {len(ceils)}"
        )
    durations_name = ceils[0].output[0]
    # The parsed copy holds the weights a second time: gone before the bytes grow.
    del model, ceils
    durations = onnx.helper.make_tensor_value_info(durations_name, onnx.TensorProto.FLOAT, None)
    # Protobuf merges concatenated messages (repeated fields append), so a tiny model
    # holding only the extra output, appended to the file's bytes, adds it without
    # re-serializing the weights (a 60 MB copy).
    extra = onnx.ModelProto(graph=onnx.GraphProto(output=[durations]))
    return raw + bytes(extra.SerializeToString())


class PiperOnnxEngine(PiperVoiceEngineBase):
    """A Piper voice on one device; satisfies :class:`~voicefleet_inference.engines.base.Engine`.

    Construction only reads the small JSON config (so configuration errors surface in the
    factory); :meth:`load` does the slow part in the owning worker thread.
    """

    # Construction is the base's (one signature for both Piper engines); until ``load``
    # there is no session, and these class defaults say so.
    _session: ort.InferenceSession | None = None
    _has_sid: bool = False
    _durations_name: str = ""

    # -- lifecycle -----------------------------------------------------------------------

    def load(self) -> None:
        """Create the session, warm it up and calibrate the cost model on real syntheses (or
        take it from the calibration cache)."""
        started = time.perf_counter()
        self._front.load()
        self._session = self._create_session()
        self._has_sid = any(i.name == "sid" for i in self._session.get_inputs())
        self._cost = self._calibrate("piper-onnx", f"onnxruntime {ort.__version__}", self._run_text)
        self.load_seconds = time.perf_counter() - started

    def _create_session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Busy-waiting pool threads burn the cores other workers of this pod need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No arena: a large request's buffers go back to the allocator when it ends, instead
        # of staying reserved for the process's life (measured in docs/server.md, Memory).
        options.enable_cpu_mem_arena = False
        providers: list[str | tuple[str, dict[str, Any]]]
        if self._device_kind == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise EngineError(
                    f"device {self._device!r} requested but this onnxruntime has no "
                    f"CUDAExecutionProvider (available: {', '.join(available)}); install "
                    "onnxruntime-gpu or use device 'cpu'"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self._device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        graph = expose_durations(self._model_path)
        try:
            session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"cannot load {self._model_path}: {exc}") from exc
        del graph
        # onnxruntime's Python wrapper keeps the bytes a session was made from for its whole
        # life (only to rebuild it on a provider fallback we never enable): 60 MB per worker
        # that a session made from a path does not hold. The native session has its own copy.
        if getattr(session, "_model_bytes", None) is not None:
            session._model_bytes = None
        self._durations_name = session.get_outputs()[-1].name
        return session

    def is_ready(self) -> bool:
        return self._session is not None and self._cost is not None

    # -- synthesis -----------------------------------------------------------------------

    def _speaker_id(self, speaker: str | None) -> int:
        return self._front.speaker_id(speaker)

    def _scales(self, speed: float) -> npt.NDArray[np.float32]:
        cfg = self._config
        length_scale = self._front.length_scale(speed)
        return np.array([cfg.noise_scale, length_scale, cfg.noise_w], dtype=np.float32)

    def _forward(
        self, id_rows: Sequence[Sequence[int]], speaker_ids: Sequence[int], speed: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One forward pass over padded rows: ``[batch, samples]`` audio, ``[batch, ids]``
        durations in frames (zero on padding)."""
        if self._session is None:
            raise EngineError("engine not loaded")
        lengths = np.array([len(r) for r in id_rows], dtype=np.int64)
        pad_id = self._front.pad_id
        ids = np.full((len(id_rows), int(lengths.max())), pad_id, dtype=np.int64)
        for row, seq in enumerate(id_rows):
            ids[row, : len(seq)] = seq
        feeds: dict[str, npt.NDArray[Any]] = {
            "input": ids,
            "input_lengths": lengths,
            "scales": self._scales(speed),
        }
        if self._has_sid:
            feeds["sid"] = np.array(speaker_ids, dtype=np.int64)
        try:
            output, durations = self._session.run(["output", self._durations_name], feeds)
        except Exception as exc:  # onnxruntime errors are untyped
            raise EngineError(f"onnxruntime failed: {exc}") from exc
        audio = np.asarray(output, dtype=np.float32).reshape(len(id_rows), -1)
        if not np.isfinite(audio).all():
            raise EngineError("model produced non-finite samples")
        frames = np.asarray(durations, dtype=np.float32).reshape(len(id_rows), -1)
        return audio, frames

    def _run_text(self, text: str) -> Samples:
        """Whole text, unbatched, concatenated: used for warm-up and calibration."""
        parts = [c.samples for c in self.synthesize_batch([SynthesisRequest(text=text)])]
        return np.concatenate(parts)

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> Iterator[AudioChunk]:
        """Round *i* runs sentence *i* of every request that still has one.

        The whole batch is phonemized and validated before the first pass, so a bad
        request fails the call before any audio of the others was produced.
        """
        plans: list[TextPlan] = []
        speaker_ids: list[int] = []
        for request in requests:
            plans.append(self.plan(request))
            speaker_ids.append(self._speaker_id(request.speaker))
            self._scales(request.speed)
        rounds = max((len(p.units) for p in plans), default=0)
        seconds_per_frame = _HOP / self.sample_rate
        for i in range(rounds):
            active = [k for k, plan in enumerate(plans) if i < len(plan.units)]
            # scales is one tensor per pass, so only equal speeds share a pass.
            by_speed: dict[float, list[int]] = {}
            for k in active:
                by_speed.setdefault(requests[k].speed, []).append(k)
            for speed, members in by_speed.items():
                units: list[PlannedUnit] = [plans[k].units[i] for k in members]
                audio, durations = self._forward(
                    [u.ids for u in units], [speaker_ids[k] for k in members], speed
                )
                for row, k in enumerate(members):
                    samples = audio[row]
                    if len(members) > 1:
                        samples = trim_batch_padding(samples)
                    words = plans[k].timings(units[row], durations[row].tolist(), seconds_per_frame)
                    is_last = i == len(plans[k].units) - 1
                    yield self._chunk(k, samples, is_last=is_last, words=words)

    def _chunk(
        self, index: int, samples: Samples, *, is_last: bool, words: tuple[WordTiming, ...]
    ) -> AudioChunk:
        samples = self._front.finish_chunk(samples, is_last=is_last)
        return AudioChunk(index=index, samples=samples, is_last=is_last, words=words)


def trim_batch_padding(samples: Samples, hop: int = _HOP) -> Samples:
    """Cut what a batched pass decoded from the padding after a shorter item's speech.

    VITS zeroes the latent frames beyond an item's predicted length; the decoder, being
    convolutional with a ``hop``-sample stride, turns a run of zero frames into a signal
    that repeats *exactly* every ``hop`` samples (its biases, about -54 dBFS here). Real
    speech never repeats bit-for-bit, so the first run of :data:`_REPEAT_RUN` identical
    consecutive hops marks the end of the item (plus the decoder's ~0.1 s decay, which is
    kept). An item as long as the batch's longest has no such run and is returned whole.
    This needs no access to the durations, which Piper's exported graph does not output.
    """
    frames = samples.size // hop
    if frames <= _REPEAT_RUN:
        return samples
    framed = samples[: frames * hop].reshape(frames, hop)
    same = np.max(np.abs(np.diff(framed, axis=0)), axis=1) <= _REPEAT_TOLERANCE
    runs = np.convolve(same.astype(np.int64), np.ones(_REPEAT_RUN, dtype=np.int64), "valid")
    starts = np.nonzero(runs == _REPEAT_RUN)[0]
    if starts.size == 0:
        return samples
    return samples[: (int(starts[0]) + 1) * hop]
