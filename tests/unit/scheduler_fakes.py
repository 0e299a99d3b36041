"""``FakeEngine``: a deterministic stand-in for a TTS engine, at the scheduler's own seam.

It satisfies the ``Engine`` Protocol, makes one chunk per ``.``-terminated sentence (a
quiet sine, so encoders have real samples), and lets a test hold synthesis on a gate,
slow it per sentence, make it fail, and see exactly which requests reached it, in which
batches and on which threads.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from voicefleet_inference.cost import CostModel
from voicefleet_inference.engines.base import (
    AudioChunk,
    EngineError,
    EngineInputError,
    SynthesisRequest,
)

SAMPLE_RATE = 16000
SENTENCE_SAMPLES = 1600  # 0.1 s of audio per sentence


class Fatal(BaseException):
    """Raised by the fake to simulate a bug that kills a worker thread."""


@dataclass
class FakeBehaviour:
    """Shared by every engine a :class:`FakeFactory` creates (one per worker thread)."""

    sentence_delay_s: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)
    """Synthesis waits on this before each batch; tests set it (it starts set)."""
    fail_load: bool = False
    model_name: str = "fake-voice"
    speakers: tuple[str, ...] = ()
    batches: list[list[str]] = field(default_factory=list)
    """Texts of every batch the engines were asked to run, in order."""
    chunks_yielded: int = 0
    closed_early: int = 0
    created_in: list[int] = field(default_factory=list)
    load_nice: list[int] = field(default_factory=list)
    """The nice value of each loading thread (engine threads yield to the event loop)."""
    misuse: list[str] = field(default_factory=list)
    """Any engine used from a thread other than the one that created it."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def texts(self) -> list[str]:
        with self.lock:
            return [t for batch in self.batches for t in batch]


class FakeEngine:
    """Engine Protocol implementation for tests; see the module docstring."""

    def __init__(self, behaviour: FakeBehaviour) -> None:
        self._b = behaviour
        self._owner = threading.get_ident()
        self._loaded = False

    @property
    def model_name(self) -> str:
        return self._b.model_name

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def speakers(self) -> Sequence[str]:
        return self._b.speakers

    @property
    def device(self) -> str:
        return "cpu"

    def load(self) -> None:
        self._check_thread("load")
        with self._b.lock:
            self._b.load_nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if self._b.fail_load:
            raise EngineError("fake engine refuses to load")
        self._loaded = True

    def is_ready(self) -> bool:
        return self._loaded

    def cost_model(self) -> CostModel:
        return CostModel(overhead_seconds=0.01, seconds_per_char=0.01)

    def _check_thread(self, what: str) -> None:
        if threading.get_ident() != self._owner:
            with self._b.lock:
                self._b.misuse.append(what)

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> Iterator[AudioChunk]:
        self._check_thread("synthesize_batch")
        with self._b.lock:
            self._b.batches.append([r.text for r in requests])
        for r in requests:
            if r.text.strip(" .") == "":
                raise EngineInputError("text has nothing to speak (no words)")
            if self._b.speakers and r.speaker not in (None, *self._b.speakers):
                raise EngineInputError(f"unknown speaker {r.speaker!r}")
        self._b.gate.wait()
        plans = [[s for s in r.text.split(".") if s.strip()] for r in requests]
        finished = False
        try:
            for i in range(max(len(p) for p in plans)):
                for k, plan in enumerate(plans):
                    if i >= len(plan):
                        continue
                    if "FATAL" in plan[i]:
                        raise Fatal("simulated worker-killing bug")
                    if "FAIL" in plan[i]:
                        raise EngineError("simulated engine failure")
                    if self._b.sentence_delay_s:
                        time.sleep(self._b.sentence_delay_s)
                    t = np.arange(SENTENCE_SAMPLES, dtype=np.float32) / SAMPLE_RATE
                    samples = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
                    with self._b.lock:
                        self._b.chunks_yielded += 1
                    yield AudioChunk(index=k, samples=samples, is_last=i == len(plan) - 1)
            finished = True
        finally:
            if not finished:
                with self._b.lock:
                    self._b.closed_early += 1


class FakeFactory:
    """An engine factory as the scheduler wants one; records the creating threads."""

    def __init__(self, behaviour: FakeBehaviour | None = None) -> None:
        self.behaviour = behaviour or FakeBehaviour()

    def __call__(self) -> FakeEngine:
        with self.behaviour.lock:
            self.behaviour.created_in.append(threading.get_ident())
        return FakeEngine(self.behaviour)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait in the test's event loop until ``predicate()`` holds (the scheduler's workers
    run on threads: a request reaches a state a few loop turns after it was sent)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
