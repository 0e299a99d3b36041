"""Bounded request queue, engine worker threads, dynamic batching, drain.

Why threads and not ``async def`` routes calling the model (GPT-SoVITS api_v2's design):
the model blocks for hundreds of milliseconds per sentence, and an event loop that runs it
cannot answer ``/healthz`` or start a stream meanwhile. Here the event loop only admits
requests and moves bytes; synthesis runs in ``workers`` threads, each of which *creates its
own engine* (the factory is called inside the thread) and is the only thread that ever
touches it. onnxruntime and numpy release the GIL while they compute, so the loop stays
responsive.

Flow of one request::

    loop thread: submit() ──▶ queue (bounded, by priority) ──▶ worker thread: plan_batch()
                    ▲                                        │ engine.synthesize_batch()
                    └── RequestHandle ◀── call_soon_threadsafe(chunk) ◀┘

* Admission (:meth:`Scheduler.submit`) happens on the loop thread: draining → Draining,
  not loaded → NotReady, queue at ``max_queue`` → QueueFull with a Retry-After derived
  from the queued work-seconds. The engine's cost model estimates each request's
  engine-seconds there; the sum over waiting and running requests is
  ``voicefleet_queue_work_seconds``.
* Priority (``critical``, ``standard``, ``sheddable``): the queue is a
  :class:`~voicefleet_inference.admission.PriorityQueue`, kept in priority order, FIFO
  within a class; that module decides who gets in and whom a newcomer pushes out.
* Batching is decided by the pure ``batching.plan_batch``: take up to
  ``max_batch_size`` requests, waiting at most ``batch_window_s`` after the oldest one
  arrived.
* Chunks travel to the loop through ``loop.call_soon_threadsafe`` into a per-request
  queue. It is unbounded but naturally bounded: one entry per sentence of one request whose
  text is at most ``max_input_chars`` long. A worker never blocks on a slow client, which
  would stall every other request in its batch.
* Cancellation (client gone, timeout): a queued request is removed at once and never
  computed; a running one is flagged, and once every request of a batch is flagged the
  worker stops iterating the engine.
* Drain: stop admitting, wait for queued and running work up to the grace period, fail
  what is left with 503.

A request's job and the handle the HTTP layer awaits live in ``jobs.py``; what its chunks
mean for the service-time metrics and the running work estimate, in ``service_time.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from voicefleet_api.priority import DEFAULT_PRIORITY, rank
from voicefleet_inference.admission import PriorityQueue
from voicefleet_inference.batching import holds_sheddable, plan_batch
from voicefleet_inference.cost import CostModel
from voicefleet_inference.engines.base import (
    Engine,
    EngineError,
    EngineInputError,
    SynthesisRequest,
)
from voicefleet_inference.errors import (
    Draining,
    InvalidRequest,
    NotReady,
    RequestTimeout,
    ServiceError,
    ShuttingDown,
    SynthesisFailed,
)
from voicefleet_inference.jobs import END, Job, RequestHandle
from voicefleet_inference.metrics import (
    REJECT_CLIENT_GONE,
    REJECT_DRAINING,
    REJECT_NOT_READY,
    REJECT_SHUTDOWN,
    REJECT_TIMEOUT,
    Metrics,
)
from voicefleet_inference.service_time import ServiceTimes, outstanding_s, remaining_after

__all__ = [
    "DrainReport",
    "EngineFactory",
    "EngineInfo",
    "Scheduler",
    "SchedulerConfig",
]

log = logging.getLogger("voicefleet.scheduler")

EngineFactory = Callable[[], Engine]
"""Creates a new, unloaded engine; called once inside each worker thread."""


# -- configuration and reports -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The scheduler's share of :class:`~voicefleet_inference.settings.Settings`."""

    workers: int = 1
    max_queue: int = 64
    max_batch_size: int = 1
    batch_window_s: float = 0.005
    request_timeout_s: float = 120.0
    engine_nice: int = 5
    """How much nicer engine threads are than the loop (see :func:`_lower_thread_priority`)."""
    wait_target_s: float = 0.0
    """Estimated queue wait past which sheddable work is refused (standard past twice
    it); 0: only a full queue refuses (see :func:`~voicefleet_inference.batching.admit`)."""
    reserved_workers: int = 0
    """Workers that never start sheddable work while they are the last idle ones, so
    critical and standard work finds a free engine instead of waiting behind it."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the HTTP layer needs to validate requests, read from the first loaded engine."""

    model_name: str
    sample_rate: int
    speakers: tuple[str, ...]
    device: str


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a drain achieved: ``abandoned`` requests were failed with 503 at the deadline."""

    pending_at_start: int
    abandoned: int
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.abandoned == 0


# -- the scheduler -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    index: int
    thread: threading.Thread | None = None
    loaded: bool = False
    error: BaseException | None = None
    running: list[Job] = field(default_factory=list)
    last_progress_at: float = 0.0


class Scheduler:
    """Admission, bounded priority queue, ``workers`` engine threads, dynamic batching, drain.

    Lifecycle: ``start()`` spawns the workers (each creates and loads its engine);
    :meth:`is_ready` turns true when all are loaded; ``submit()`` from the event loop;
    on shutdown ``begin_drain()``, ``await drain(grace)``, ``stop()``.
    """

    def __init__(
        self, engine_factory: EngineFactory, config: SchedulerConfig, metrics: Metrics
    ) -> None:
        self._factory = engine_factory
        self.config = config
        self._metrics = metrics
        self._times = ServiceTimes(metrics)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: PriorityQueue[Job] = PriorityQueue(
            metrics, config.workers, config.max_queue, config.wait_target_s
        )
        self._workers = [_Worker(i) for i in range(config.workers)]
        self._info: EngineInfo | None = None
        self._cost: CostModel | None = None
        self._draining = False
        self._stopping = False
        self._started = False
        self._load_listeners: list[Callable[[], None]] = []
        metrics.queue_depth.set_function(self.queue_depth)
        metrics.requests_in_flight.set_function(self.in_flight)
        metrics.queue_work_seconds.set_function(self.work_seconds)

    def on_load_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the load changes by a step: a request admitted,
        started, finished, failed or cancelled, and at drain and stop (not as running work
        merely progresses). It is called from the loop thread and from engine threads,
        sometimes under the scheduler's lock: it must be quick, thread-safe and must not
        call back into the scheduler (the pod's ``/load`` long-poll, :mod:`.server.loadwait`).
        """
        self._load_listeners.append(listener)

    def _load_changed(self) -> None:
        for listener in self._load_listeners:
            listener()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the worker threads; returns at once (loading happens in the threads)."""
        if self._started:
            raise RuntimeError("scheduler already started")
        self._started = True
        for worker in self._workers:
            worker.thread = threading.Thread(
                target=self._worker_main,
                args=(worker,),
                name=f"voicefleet-engine-{worker.index}",
                daemon=True,  # a hung engine call must not keep the process alive at exit
            )
            worker.thread.start()

    def stop(self, join_timeout_s: float = 5.0) -> None:
        """Tell workers to exit once their current batch is done; fail anything queued."""
        with self._wakeup:
            self._stopping = True
            leftover = self._queue.clear()
            self._wakeup.notify_all()
        for job in leftover:
            self._fail(job, ShuttingDown("server is shutting down"), REJECT_SHUTDOWN)
        self._load_changed()
        deadline = time.monotonic() + join_timeout_s
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    def begin_drain(self) -> None:
        """Stop admitting: from now on :meth:`submit` raises Draining, readiness is false."""
        with self._lock:
            self._draining = True
        self._load_changed()

    async def drain(self, grace_s: float, poll_s: float = 0.02) -> DrainReport:
        """Wait until no request is queued or running, at most ``grace_s``.

        What is left at the deadline is failed with 503 (queued) or cancelled (running),
        and counted in the report as abandoned.
        """
        self.begin_drain()
        started = time.monotonic()
        pending_at_start = self.pending()
        # Polling a counter that worker threads change: simplest correct wait at shutdown.
        while self.pending() and time.monotonic() - started < grace_s:  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        abandoned = 0
        with self._wakeup:
            leftover = self._queue.clear()
            running = [job for w in self._workers for job in w.running if job.state != "done"]
        for job in leftover:
            abandoned += 1
            self._fail(
                job, ShuttingDown("drain grace ran out before this request ran"), REJECT_SHUTDOWN
            )
        for job in running:
            abandoned += 1
            with self._lock:
                job.cancelled = True
            job.handle.post(ShuttingDown("drain grace ran out while this request ran"))
            self._metrics.rejected_total.labels(reason=REJECT_SHUTDOWN).inc()
        self._load_changed()
        return DrainReport(pending_at_start, abandoned, time.monotonic() - started)

    async def wait_loaded(self, poll_s: float = 0.05) -> EngineInfo:
        """Return once every worker loaded its engine; raise the first load error."""
        while True:
            for worker in self._workers:
                if worker.error is not None:
                    raise RuntimeError(
                        f"engine worker {worker.index} failed to load: {worker.error}"
                    ) from worker.error
            if self._info is not None and all(w.loaded for w in self._workers):
                return self._info
            await asyncio.sleep(poll_s)

    # -- state -----------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo | None:
        """The model's identity once an engine loaded, else ``None``."""
        return self._info

    @property
    def draining(self) -> bool:
        return self._draining

    def is_live(self) -> bool:
        """Liveness: every worker thread that was started is still running."""
        return self._started and all(
            w.thread is not None and w.thread.is_alive() for w in self._workers
        )

    def is_ready(self) -> bool:
        """Readiness: every worker loaded its engine and is alive, and not draining."""
        return (
            not self._draining
            and self.is_live()
            and all(w.loaded for w in self._workers)
            and self._info is not None
        )

    def queue_depth(self) -> int:
        return len(self._queue)

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers for j in w.running if j.state == "running")

    def pending(self) -> int:
        """Requests accepted and not finished: queued plus running."""
        return self.queue_depth() + self.in_flight()

    def work_seconds(self) -> float:
        """Estimated engine-seconds waiting plus still to do for running requests."""
        with self._lock:
            queued = self._queue.work_s()
            running = self._running_work_locked()
        return queued + running

    def _running_work_locked(self) -> float:
        """Engine-seconds still to do for running requests (caller holds the lock)."""
        return sum(
            outstanding_s(j.cost_s, j.remaining_s)
            for w in self._workers
            for j in w.running
            if j.state == "running"
        )

    # -- admission (event-loop thread) ---------------------------------------------------

    def submit(self, request: SynthesisRequest, priority: str = DEFAULT_PRIORITY) -> RequestHandle:
        """Admit ``request`` or raise Draining / NotReady / QueueFull; never blocks.

        ``priority`` is one of :data:`voicefleet_api.priority.PRIORITIES` (the HTTP layer
        validated it). Must be called from the event loop that will await the handle.
        """
        job_rank = rank(priority)
        loop = asyncio.get_running_loop()
        if self._draining:
            self._metrics.rejected_total.labels(reason=REJECT_DRAINING).inc()
            raise Draining(
                "server is shutting down; retry on another replica",
                retry_after_s=1,
            )
        cost = self._cost
        if cost is None or not self.is_ready():
            self._metrics.rejected_total.labels(reason=REJECT_NOT_READY).inc()
            alive = any(w.thread is not None and w.thread.is_alive() for w in self._workers)
            raise NotReady(
                "model is loading; retry shortly" if alive else "no engine worker is running",
                retry_after_s=2,
            )
        estimate = cost.estimate(request.text, request.speed)
        handle = RequestHandle(self._cancel, loop, estimate, self.config.request_timeout_s)
        now = time.monotonic()
        job = Job(
            request=request,
            cost_s=estimate,
            enqueued_at=now,
            deadline=now + self.config.request_timeout_s,
            handle=handle,
            remaining_s=estimate,
            rank=job_rank,
        )
        handle.job = job
        with self._wakeup:  # raises QueueFull, counted, when refused
            admitted = self._queue.admit(job, self._running_work_locked())
            if admitted.evicted is not None:
                admitted.evicted.state = "done"
                admitted.evicted.cancelled = True
            self._wakeup.notify()
        self._load_changed()
        if admitted.evicted is not None and admitted.notice is not None:
            admitted.evicted.handle.post(admitted.notice)
        return handle

    def _cancel(self, job: Job, timed_out: bool) -> None:
        """Called on the loop thread by the handle; see :meth:`RequestHandle.cancel`."""
        reason = REJECT_TIMEOUT if timed_out else REJECT_CLIENT_GONE
        with self._wakeup:
            if job.state == "done" or job.cancelled:
                return
            job.cancelled = True
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "done"
                self._wakeup.notify_all()  # a worker waiting on the batch window re-plans
        self._load_changed()
        self._metrics.rejected_total.labels(reason=reason).inc()

    # -- worker threads --------------------------------------------------------------------

    def _worker_main(self, worker: _Worker) -> None:
        _lower_thread_priority(self.config.engine_nice)
        try:
            engine = self._factory()
            engine.load()
            if not engine.is_ready():
                raise EngineError("engine.load() returned but the engine is not ready")
            with self._lock:
                if self._info is None:
                    self._info = EngineInfo(
                        model_name=engine.model_name,
                        sample_rate=engine.sample_rate,
                        speakers=tuple(engine.speakers),
                        device=engine.device,
                    )
                    self._cost = engine.cost_model()
                worker.loaded = True
            log.info(
                "engine worker %d loaded %s on %s", worker.index, engine.model_name, engine.device
            )
        except BaseException as exc:
            worker.error = exc
            log.error("engine worker %d failed to load: %s", worker.index, exc)
            self._after_worker_exit()
            return
        try:
            while (batch := self._take_batch(worker)) is not None:
                self._run_batch(worker, engine, batch)
        except BaseException as exc:  # logged, not re-raised: liveness reports the death
            worker.error = exc
            log.exception("engine worker %d died", worker.index)
        finally:
            self._after_worker_exit(worker)

    def _after_worker_exit(self, worker: _Worker | None = None) -> None:
        """If no worker is left alive, nobody will ever run the queue: fail it now."""
        current = threading.current_thread()
        with self._wakeup:
            if worker is not None:
                for job in worker.running:
                    if job.state != "done" and not job.cancelled:
                        job.state = "done"
                        job.handle.post(SynthesisFailed("engine worker died"))
                worker.running = []
            others_alive = any(
                w.thread is not None and w.thread is not current and w.thread.is_alive()
                for w in self._workers
            )
            if others_alive or self._stopping:
                return
            leftover = self._queue.clear()
        for job in leftover:
            self._fail(job, NotReady("no engine worker is running"), REJECT_NOT_READY)

    def _take_batch(self, worker: _Worker) -> list[Job] | None:
        """Block until :func:`plan_batch` yields work (``None`` when stopping)."""
        with self._wakeup:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                idle = sum(1 for w in self._workers if w.loaded and not w.running)
                # At least one worker always takes sheddable work, or it would never run.
                reserved = min(self.config.reserved_workers, len(self._workers) - 1)
                hold = holds_sheddable(idle, reserved)
                plan = plan_batch(
                    [j.view(hold) for j in self._queue],
                    now,
                    self.config.max_batch_size,
                    self.config.batch_window_s,
                )
                expired = [self._queue[i] for i in plan.expired]
                taken = [self._queue[i] for i in plan.take]
                self._queue.drop(set(plan.take) | set(plan.expired) | set(plan.dropped))
                for job in expired:
                    job.state = "done"
                    job.handle.post(
                        RequestTimeout(
                            f"request waited longer than {self.config.request_timeout_s:g}s"
                        )
                    )
                    self._metrics.rejected_total.labels(reason=REJECT_TIMEOUT).inc()
                if taken:
                    for job in taken:
                        job.state = "running"
                        job.started_at = now
                    worker.running = taken
                    worker.last_progress_at = now
                    self._load_changed()
                    return taken
                if expired:
                    self._load_changed()
                timeout = None if plan.wait_until is None else max(0.0, plan.wait_until - now)
                self._wakeup.wait(timeout)

    def _run_batch(self, worker: _Worker, engine: Engine, batch: list[Job]) -> None:
        """Run ``batch``; one bad request in a failed batch does not fail the others."""
        self._metrics.batch_size.observe(len(batch))
        try:
            self._synthesize(worker, engine, batch)
        except EngineError as exc:
            unstarted = [j for j in batch if j.state == "running" and j.first_chunk_at is None]
            if len(batch) > 1 and len(unstarted) == len(batch):
                # Nothing was produced: the engine validates the whole batch first, so
                # rerun each request alone and let only the bad one fail.
                for job in batch:
                    if not job.cancelled:
                        self._run_one(worker, engine, job)
            else:
                self._fail_running(batch, exc)
        except Exception as exc:  # an engine bug must not kill the worker
            log.exception("engine raised an unexpected error")
            self._fail_running(batch, exc)
        except BaseException as exc:  # the worker dies: its requests must not hang
            self._fail_running(batch, SynthesisFailed(f"engine worker died: {exc!r}"))
            raise
        finally:
            with self._lock:
                unfinished = any(job.state != "done" for job in batch)
                for job in batch:
                    job.state = "done"
                worker.running = []
            if unfinished:  # each finished one was a step already
                self._load_changed()

    def _run_one(self, worker: _Worker, engine: Engine, job: Job) -> None:
        try:
            self._synthesize(worker, engine, [job])
        except Exception as exc:
            self._fail_running([job], exc)

    def _synthesize(self, worker: _Worker, engine: Engine, batch: list[Job]) -> None:
        open_jobs = {i for i, j in enumerate(batch) if not j.cancelled}
        if not open_jobs:
            return
        chunks = engine.synthesize_batch([j.request for j in batch])
        try:
            for chunk in chunks:
                job = batch[chunk.index]
                now = time.monotonic()
                with self._lock:
                    job.remaining_s = remaining_after(
                        job.remaining_s, now - worker.last_progress_at
                    )
                    worker.last_progress_at = now
                    cancelled = job.cancelled
                if not cancelled:
                    self._times.chunk(job, len(chunk.samples), engine.sample_rate, now)
                    job.handle.post(chunk)
                if chunk.is_last:
                    if not cancelled:  # observed before anyone can see the request done
                        self._times.finished(job, now)
                    with self._lock:
                        job.state = "done"
                    self._load_changed()
                    if not cancelled:
                        job.handle.post(END)
                    open_jobs.discard(chunk.index)
                if not open_jobs or all(batch[i].cancelled for i in open_jobs):
                    break  # everyone left is gone: stop computing for nobody
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
        if any(not batch[i].cancelled for i in open_jobs):
            raise EngineError("engine stopped before the last chunk of every request")

    def _fail_running(self, batch: Sequence[Job], exc: BaseException) -> None:
        error = _to_service_error(exc)
        with self._lock:
            victims = [j for j in batch if j.state != "done" and not j.cancelled]
            for job in victims:
                job.state = "done"
        for job in victims:
            job.handle.post(error)

    def _fail(self, job: Job, error: ServiceError, reason: str) -> None:
        job.state = "done"
        job.cancelled = True
        job.handle.post(error)
        self._metrics.rejected_total.labels(reason=reason).inc()


def _lower_thread_priority(nice: int) -> None:
    """Make the calling thread (and threads it creates) yield the CPU to the event loop.

    On Linux the nice value is per thread and inherited by new threads, so setting it here,
    before the engine exists, also covers the intra-op thread pool onnxruntime creates while
    loading. When engine threads keep every core busy, the loop thread then still runs the
    moment it wakes, which keeps ``/healthz`` and stream writes fast under saturation. It
    costs the engine nothing when the loop is idle. Best effort: ignored where unsupported.
    """
    if nice <= 0:
        return
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def _to_service_error(exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, EngineInputError):
        return InvalidRequest(str(exc), param="input", code="unspeakable_input")
    if isinstance(exc, EngineError):
        return SynthesisFailed(f"synthesis failed: {exc}")
    return SynthesisFailed(f"synthesis failed: internal error ({type(exc).__name__})")
