"""The contract between the scheduler and a TTS engine.

An engine instance is owned by exactly one worker thread for its whole life: the
scheduler calls an engine *factory* inside each worker thread, so no model object,
session or scratch buffer is ever shared between threads. That is the design answer
to GPT-SoVITS's shared, unlocked pipeline whose concurrent requests bleed into each
other. Engines therefore need no locks of their own.

Synthesis is sentence by sentence so that streaming responses can start as soon as
the first sentence is ready, and batch-shaped so that a worker may run the i-th
sentence of several requests in one forward pass (dynamic batching). An engine that
gains nothing from batching may simply loop over the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from voicefleet_inference.cost import CostModel

Samples = npt.NDArray[np.float32]
"""Mono PCM in [-1.0, 1.0] at the engine's sample rate."""


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    """One request as the engine sees it: already validated by the HTTP layer.

    ``speaker`` is ``None`` for the model's default speaker; otherwise a name from
    :attr:`Engine.speakers`. ``speed`` is a rate multiplier (2.0 = twice as fast),
    already checked to lie within the server's bounds.
    """

    text: str
    speaker: str | None = None
    speed: float = 1.0
    word_timestamps: bool = False
    """Ask for :attr:`AudioChunk.words`; engines skip the (small) work when not asked."""


@dataclass(frozen=True, slots=True)
class WordTiming:
    """When one input word is spoken, in seconds from the start of *its chunk*.

    Chunk-relative, because only the caller knows where a chunk lands in the whole
    response (after earlier sentences and pauses). ``end`` may lie beyond the chunk when
    an engine streams one sentence as several windows: the timings of the sentence all
    come with its first window, since the durations are known before any is decoded.
    ``index`` is the word's position among the input's whitespace-separated words.
    """

    index: int
    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of one request's audio: normally one sentence.

    ``index`` is the position of the request in the batch passed to
    :meth:`Engine.synthesize_batch`; ``is_last`` marks the request's final chunk
    (after it, no more chunks for that index are yielded).
    """

    index: int
    samples: Samples
    is_last: bool
    words: tuple[WordTiming, ...] = ()
    """Words spoken from this chunk on (only when the request asked for them)."""


class EngineError(Exception):
    """The engine failed to synthesize; the request gets a 5xx, never silence."""


class EngineInputError(EngineError):
    """The request itself cannot be spoken: no speakable text (e.g. only punctuation),
    or a speaker the model does not have. The client's fault, so a 4xx, not a 5xx.

    A subclass of :class:`EngineError` so that code catching only ``EngineError`` still
    never turns a failure into silence.
    """


@runtime_checkable
class Engine(Protocol):
    """A loaded TTS model bound to one device, used by one thread at a time."""

    @property
    def model_name(self) -> str:
        """The voice model's name, e.g. ``en_US-joe-medium`` (what clients pass as ``model``)."""
        ...

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz."""
        ...

    @property
    def speakers(self) -> Sequence[str]:
        """Speaker names of a multi-speaker model; empty for a one-speaker model."""
        ...

    @property
    def device(self) -> str:
        """The device this instance runs on: ``cpu``, ``cuda`` or ``cuda:N``."""
        ...

    def load(self) -> None:
        """Load weights and warm up; blocks. Called once, in the owning worker thread."""
        ...

    def is_ready(self) -> bool:
        """True once :meth:`load` completed successfully."""
        ...

    def cost_model(self) -> CostModel:
        """Immutable, thread-safe estimator of engine-seconds per request.

        Calibrated during :meth:`load`; the scheduler calls it from the event-loop
        thread at admission time, so it must be pure and cheap (no model calls).
        """
        ...

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> Iterator[AudioChunk]:
        """Synthesize ``requests`` together, yielding chunks as they are ready.

        Chunks of one request arrive in order. Every request yields at least one
        chunk and exactly one with ``is_last=True``. The caller may stop iterating
        early (all clients gone) and the engine must not mind. Failures raise
        :class:`EngineError`.
        """
        ...
