"""Scheduler: batching decisions (pure), admission, backpressure, cancellation, timeouts,
drain and worker death, with ``FakeEngine`` at the engine seam."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from scheduler_fakes import SENTENCE_SAMPLES, FakeBehaviour, FakeFactory, eventually

from voicefleet_inference.admission import retry_after_seconds
from voicefleet_inference.batching import Waiting, plan_batch
from voicefleet_inference.engines.base import SynthesisRequest
from voicefleet_inference.errors import (
    Draining,
    InvalidRequest,
    NotReady,
    QueueFull,
    RequestTimeout,
    ShuttingDown,
    SynthesisFailed,
)
from voicefleet_inference.jobs import RequestHandle
from voicefleet_inference.metrics import Metrics, create_metrics
from voicefleet_inference.scheduler import Scheduler, SchedulerConfig
from voicefleet_inference.server.errors import http_status

# -- plan_batch (pure) ---------------------------------------------------------------------


def w(t: float, *, deadline: float = 1e9, cancelled: bool = False) -> Waiting:
    return Waiting(enqueued_at=t, deadline=deadline, cancelled=cancelled)


def test_plan_empty_queue_waits_for_arrivals() -> None:
    plan = plan_batch([], now=10.0, max_batch=8, window_s=0.005)
    assert plan.take == ()
    assert plan.wait_until is None


def test_plan_without_batching_takes_the_oldest_at_once() -> None:
    plan = plan_batch([w(10.0), w(10.0)], now=10.0, max_batch=1, window_s=0.5)
    assert plan.take == (0,)


def test_plan_waits_for_the_window_after_the_first_arrival() -> None:
    plan = plan_batch([w(10.0), w(10.001)], now=10.002, max_batch=4, window_s=0.005)
    assert plan.take == ()
    assert plan.wait_until == pytest.approx(10.005)


def test_plan_takes_everything_waiting_once_the_window_passed() -> None:
    plan = plan_batch([w(10.0), w(10.001), w(10.004)], now=10.005, max_batch=4, window_s=0.005)
    assert plan.take == (0, 1, 2)


def test_plan_takes_a_full_batch_without_waiting_and_respects_the_maximum() -> None:
    queue = [w(10.0 + i * 1e-4) for i in range(5)]
    plan = plan_batch(queue, now=10.0005, max_batch=3, window_s=1.0)
    assert plan.take == (0, 1, 2)


def test_plan_takes_a_backlog_at_once() -> None:
    """A worker that was busy does not wait a window for requests that already waited."""
    plan = plan_batch([w(1.0), w(9.0)], now=10.0, max_batch=8, window_s=0.005)
    assert plan.take == (0, 1)


def test_plan_drops_cancelled_and_expires_overdue_requests() -> None:
    queue = [w(1.0, cancelled=True), w(1.0, deadline=5.0), w(2.0), w(3.0)]
    plan = plan_batch(queue, now=10.0, max_batch=8, window_s=0.005)
    assert plan.dropped == (0,)
    assert plan.expired == (1,)
    assert plan.take == (2, 3)


def test_retry_after_is_backlog_per_worker_in_whole_seconds_within_bounds() -> None:
    assert retry_after_seconds(0.0, 1) == 1
    assert retry_after_seconds(10.2, 1) == 11
    assert retry_after_seconds(10.2, 2) == 6
    assert retry_after_seconds(1e6, 1) == 120
    assert retry_after_seconds(float("nan"), 1) == 1


# -- the scheduler with FakeEngine -------------------------------------------------------------


class Rig:
    def __init__(self, config: SchedulerConfig, behaviour: FakeBehaviour | None = None) -> None:
        self.factory = FakeFactory(behaviour)
        self.b = self.factory.behaviour
        self.metrics: Metrics = create_metrics()
        self.scheduler = Scheduler(self.factory, config, self.metrics)

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "voicefleet_rejected_total", {"reason": reason}
        )
        return value or 0.0

    def sample(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    def sample_labels(self, name: str) -> dict[tuple[str, str], float]:
        """``{(priority, outcome): value}`` of a by-priority counter."""
        out: dict[tuple[str, str], float] = {}
        for family in self.metrics.registry.collect():
            for s in family.samples:
                if s.name == name:
                    out[(s.labels["priority"], s.labels["outcome"])] = s.value
        return out


async def collect(handle: RequestHandle) -> list[np.ndarray]:
    return [c async for c in handle.chunks()]


@pytest.fixture
async def rig_factory() -> AsyncIterator[object]:
    rigs: list[Rig] = []

    async def make(
        config: SchedulerConfig, behaviour: FakeBehaviour | None = None, *, held: bool = False
    ) -> Rig:
        """``held``: the engine holds every batch until the test sets ``rig.b.gate``."""
        rig = Rig(config, behaviour)
        if held:
            rig.b.gate.clear()
        rigs.append(rig)
        rig.scheduler.start()
        if not rig.b.fail_load:
            await asyncio.wait_for(rig.scheduler.wait_loaded(), 5)
        return rig

    yield make
    for rig in rigs:
        rig.b.gate.set()
        rig.scheduler.stop()


def req(text: str = "Hello.", speed: float = 1.0) -> SynthesisRequest:
    return SynthesisRequest(text=text, speed=speed)


async def test_each_worker_creates_and_uses_its_own_engine(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(workers=3))
    handles = [rig.scheduler.submit(req(f"Request {i}.")) for i in range(6)]
    for h in handles:
        assert len(await collect(h)) == 1
    assert len(set(rig.b.created_in)) == 3
    assert threading.get_ident() not in rig.b.created_in
    assert rig.b.misuse == []
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert rig.b.load_nice == [min(19, loop_nice + 5)] * 3  # engines yield the CPU to the loop
    assert rig.scheduler.is_ready()
    assert rig.scheduler.is_live()


async def test_batching_window_groups_requests_that_arrive_together(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_batch_size=4, batch_window_s=0.2))
    handles = [rig.scheduler.submit(req(f"Text {i}.")) for i in range(3)]
    results = [await collect(h) for h in handles]
    assert [len(r) for r in results] == [1, 1, 1]
    assert rig.b.batches == [["Text 0.", "Text 1.", "Text 2."]]
    assert rig.metrics.registry.get_sample_value("voicefleet_batch_size_sum") == 3


async def test_batches_never_exceed_max_batch_size(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_batch_size=2, batch_window_s=0.05))
    handles = [rig.scheduler.submit(req(f"Text {i}.")) for i in range(5)]
    for h in handles:
        await collect(h)
    assert [len(b) for b in rig.b.batches] == [2, 2, 1]
    assert rig.b.texts() == [f"Text {i}." for i in range(5)]  # FIFO


async def test_without_batching_requests_run_one_by_one(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_batch_size=1))
    handles = [rig.scheduler.submit(req(f"Text {i}.")) for i in range(3)]
    for h in handles:
        await collect(h)
    assert [len(b) for b in rig.b.batches] == [1, 1, 1]


async def test_chunks_arrive_per_sentence_before_the_request_finishes(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), FakeBehaviour(sentence_delay_s=0.1))
    handle = rig.scheduler.submit(req("One. Two. Three. Four."))
    started = time.monotonic()
    first = await handle.next_chunk()
    first_at = time.monotonic() - started
    rest = await collect(handle)
    total = time.monotonic() - started
    assert first is not None
    assert len(first) == SENTENCE_SAMPLES
    assert len(rest) == 3
    assert first_at < total / 2


async def test_full_queue_is_refused_with_retry_after(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_queue=2), held=True)
    running = rig.scheduler.submit(req("Running."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    queued = [rig.scheduler.submit(req("Queued " + "x" * 400 + ".")) for _ in range(2)]
    with pytest.raises(QueueFull) as info:
        rig.scheduler.submit(req("One too many."))
    assert http_status(info.value) == (429, "rate_limit_error")
    assert info.value.retry_after_s is not None
    assert info.value.retry_after_s >= 8
    assert rig.rejected("queue_full") == 1
    assert rig.scheduler.queue_depth() == 2
    rig.b.gate.set()
    for h in (running, *queued):
        assert len(await collect(h)) == 1


async def test_cancelled_before_start_never_reaches_the_engine(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), held=True)
    first = rig.scheduler.submit(req("Runs."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    gone = rig.scheduler.submit(req("Client went away."))
    assert rig.scheduler.queue_depth() == 1
    work_before = rig.scheduler.work_seconds()
    gone.cancel()
    assert rig.scheduler.queue_depth() == 0
    assert rig.scheduler.work_seconds() < work_before
    rig.b.gate.set()
    await collect(first)
    after = rig.scheduler.submit(req("Later."))
    await collect(after)
    assert rig.b.texts() == ["Runs.", "Later."]
    assert rig.rejected("client_gone") == 1


async def test_engine_stops_when_every_request_of_a_running_batch_is_cancelled(
    rig_factory,
) -> None:
    rig = await rig_factory(SchedulerConfig(), FakeBehaviour(sentence_delay_s=0.05))
    handle = rig.scheduler.submit(req(" ".join(f"Sentence {i}." for i in range(20))))
    assert await handle.next_chunk() is not None
    handle.cancel()
    await eventually(lambda: rig.scheduler.in_flight() == 0)
    assert rig.b.closed_early == 1
    assert rig.b.chunks_yielded < 20


async def test_timeout_covers_queue_wait_and_run(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(request_timeout_s=0.3), held=True)
    stuck = rig.scheduler.submit(req("Stuck in the engine."))
    waiting = rig.scheduler.submit(req("Stuck in the queue."))
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await collect(stuck)
    with pytest.raises(RequestTimeout):
        await collect(waiting)
    assert 0.25 < time.monotonic() - started < 2.0
    rig.b.gate.set()
    await eventually(lambda: rig.scheduler.pending() == 0)
    assert rig.b.texts() == ["Stuck in the engine."]  # the queued one never ran
    assert rig.rejected("timeout") == 2


async def test_unspeakable_request_in_a_batch_fails_alone(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_batch_size=4, batch_window_s=0.1))
    good = rig.scheduler.submit(req("Fine."))
    bad = rig.scheduler.submit(req("..."))
    also_good = rig.scheduler.submit(req("Also fine."))
    assert len(await collect(good)) == 1
    with pytest.raises(InvalidRequest, match="nothing to speak"):
        await collect(bad)
    assert len(await collect(also_good)) == 1


async def test_engine_failure_is_an_error_never_silence(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig())
    handle = rig.scheduler.submit(req("Good start. Then FAIL here. Never."))
    assert await handle.next_chunk() is not None
    with pytest.raises(SynthesisFailed, match="simulated engine failure"):
        await collect(handle)
    ok = rig.scheduler.submit(req("Worker still serves."))
    assert len(await collect(ok)) == 1
    assert rig.scheduler.is_live()


async def test_worker_that_fails_to_load_is_not_live_and_refuses_work(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), FakeBehaviour(fail_load=True))
    with pytest.raises(RuntimeError, match="failed to load"):
        await asyncio.wait_for(rig.scheduler.wait_loaded(), 5)
    await eventually(lambda: not rig.scheduler.is_live())
    assert not rig.scheduler.is_ready()
    with pytest.raises(NotReady):
        rig.scheduler.submit(req())


async def test_worker_death_fails_its_request_and_turns_liveness_false(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig())
    queued_behind = None
    dying = rig.scheduler.submit(req("FATAL."))
    queued_behind = rig.scheduler.submit(req("Behind it."))
    with pytest.raises(SynthesisFailed, match="worker died"):
        await collect(dying)
    with pytest.raises(NotReady):
        await collect(queued_behind)
    await eventually(lambda: not rig.scheduler.is_live())
    assert not rig.scheduler.is_ready()


async def test_drain_waits_for_accepted_work_and_refuses_new(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), held=True)
    accepted = [rig.scheduler.submit(req(f"Accepted {i}.")) for i in range(3)]
    results = [asyncio.ensure_future(collect(h)) for h in accepted]
    drain = asyncio.ensure_future(rig.scheduler.drain(grace_s=5.0))
    await asyncio.sleep(0.05)
    assert not rig.scheduler.is_ready()
    assert rig.scheduler.is_live()
    with pytest.raises(Draining) as info:
        rig.scheduler.submit(req("Too late."))
    assert http_status(info.value)[0] == 503
    assert info.value.retry_after_s
    assert not drain.done()
    rig.b.gate.set()
    report = await asyncio.wait_for(drain, 5)
    assert report.complete
    assert report.pending_at_start == 3
    assert [len(await r) for r in results] == [1, 1, 1]
    assert rig.rejected("draining") == 1


async def test_drain_gives_up_after_the_grace_and_fails_what_is_left(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), held=True)
    running = rig.scheduler.submit(req("Never finishes."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    queued = rig.scheduler.submit(req("Never starts."))
    started = time.monotonic()
    report = await rig.scheduler.drain(grace_s=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert report.abandoned == 2
    assert not report.complete
    for handle in (running, queued):
        with pytest.raises(ShuttingDown):
            await collect(handle)


async def test_metrics_follow_queued_and_completed_work(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(), held=True)
    handles = [rig.scheduler.submit(req("Twenty characters.. Two.")) for _ in range(3)]
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    assert rig.sample("voicefleet_queue_depth") == 2
    assert rig.sample("voicefleet_requests_in_flight") == 1
    # 3 requests x (0.01 + 0.01 * 24 chars); the running one counts at least 5 %.
    assert rig.sample("voicefleet_queue_work_seconds") > 2 * 0.25
    rig.b.gate.set()
    for h in handles:
        await collect(h)
    await eventually(lambda: rig.scheduler.pending() == 0)
    assert rig.sample("voicefleet_queue_depth") == 0
    assert rig.sample("voicefleet_requests_in_flight") == 0
    assert rig.sample("voicefleet_queue_work_seconds") == 0
    assert rig.sample("voicefleet_audio_seconds_total") == pytest.approx(3 * 2 * 0.1)
    assert rig.sample("voicefleet_time_to_first_audio_seconds_count") == 3
    # The autoscaler's first-audio model reads service times without the queueing: the
    # two queued requests waited behind the gate, so their first audio after admission
    # took longer in sum than after their start.
    assert rig.sample("voicefleet_service_seconds_count") == 3
    assert rig.sample("voicefleet_start_to_first_audio_seconds_count") == 3
    service = rig.sample("voicefleet_service_seconds_sum")
    squares = rig.sample("voicefleet_service_seconds_squared_total")
    assert service > 0
    assert service**2 / 3 <= squares + 1e-12 <= service**2  # mean^2 <= E[x^2], x >= 0
    assert rig.sample("voicefleet_start_to_first_audio_seconds_sum") < rig.sample(
        "voicefleet_time_to_first_audio_seconds_sum"
    )


async def test_submit_before_load_is_not_ready() -> None:
    behaviour = FakeBehaviour()
    scheduler = Scheduler(FakeFactory(behaviour), SchedulerConfig(), create_metrics())
    with pytest.raises(NotReady):
        scheduler.submit(req())
    assert not scheduler.is_live()
    assert not scheduler.is_ready()


async def test_higher_priority_runs_first_and_fifo_within_a_class(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_batch_size=1), held=True)
    running = rig.scheduler.submit(req("Running."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    order = [
        ("Shed 1.", "sheddable"),
        ("Std 1.", "standard"),
        ("Crit 1.", "critical"),
        ("Shed 2.", "sheddable"),
        ("Crit 2.", "critical"),
        ("Std 2.", "standard"),
    ]
    handles = [rig.scheduler.submit(req(text), priority) for text, priority in order]
    rig.b.gate.set()
    for h in (running, *handles):
        await collect(h)
    assert rig.b.texts() == [
        "Running.",
        "Crit 1.",
        "Crit 2.",
        "Std 1.",
        "Std 2.",
        "Shed 1.",
        "Shed 2.",
    ]
    accepted = rig.sample_labels("voicefleet_priority_requests_total")
    assert accepted[("critical", "accepted")] == 2
    assert accepted[("sheddable", "accepted")] == 2


async def test_critical_pushes_lower_classes_out_of_a_full_queue_with_a_429(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(max_queue=2), held=True)
    running = rig.scheduler.submit(req("Running."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    shed = rig.scheduler.submit(req("Shed."), "sheddable")
    std = rig.scheduler.submit(req("Std."), "standard")
    crit = rig.scheduler.submit(req("Crit."), "critical")
    with pytest.raises(QueueFull) as pushed:
        await collect(shed)
    assert http_status(pushed.value) == (429, "rate_limit_error")
    assert "pushed out" in str(pushed.value)
    assert pushed.value.code == "priority_evicted"
    assert pushed.value.retry_after_s is not None
    crit2 = rig.scheduler.submit(req("Crit 2."), "critical")  # standard goes next
    with pytest.raises(QueueFull):
        await collect(std)
    with pytest.raises(QueueFull):  # nothing below critical left to push out
        rig.scheduler.submit(req("Crit 3."), "critical")
    rig.b.gate.set()
    for h in (running, crit, crit2):
        assert len(await collect(h)) == 1
    assert rig.b.texts() == ["Running.", "Crit.", "Crit 2."]
    assert rig.rejected("evicted") == 2
    counts = rig.sample_labels("voicefleet_priority_requests_total")
    assert counts[("sheddable", "evicted")] == 1
    assert counts[("standard", "evicted")] == 1
    assert counts[("critical", "refused")] == 1


async def test_sheddable_is_refused_past_the_wait_target(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(wait_target_s=1.0), held=True)
    running = rig.scheduler.submit(req("Running " + "x" * 200 + "."))  # about 2 s of work
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    with pytest.raises(QueueFull) as refused:
        rig.scheduler.submit(req("Shed."), "sheddable")
    assert "target" in str(refused.value)
    assert refused.value.code == "priority_shed"
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 2
    crit = rig.scheduler.submit(req("Crit."), "critical")
    rig.b.gate.set()
    for h in (running, crit):
        await collect(h)
    assert rig.rejected("shed") == 1


async def test_a_reserved_worker_leaves_sheddable_work_for_critical_work(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(workers=2, reserved_workers=1), held=True)
    first = rig.scheduler.submit(req("Standard."))
    await eventually(lambda: rig.scheduler.in_flight() == 1)
    shed = rig.scheduler.submit(req("Shed."), "sheddable")
    await asyncio.sleep(0.05)
    assert rig.scheduler.in_flight() == 1  # the last idle worker is kept free
    assert rig.scheduler.queue_depth() == 1
    crit = rig.scheduler.submit(req("Crit."), "critical")
    await eventually(lambda: rig.scheduler.in_flight() == 2)
    assert rig.scheduler.queue_depth() == 1
    rig.b.gate.set()
    for h in (first, crit, shed):
        assert len(await collect(h)) == 1  # sheddable runs once two workers are idle
    assert rig.b.texts()[-1] == "Shed."


async def test_with_one_worker_nothing_is_reserved(rig_factory) -> None:
    rig = await rig_factory(SchedulerConfig(workers=1, reserved_workers=1))
    assert len(await collect(rig.scheduler.submit(req("Shed."), "sheddable"))) == 1
