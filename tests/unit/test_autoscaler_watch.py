"""The autoscaler's held ``/load`` asks (``autoscaler_watch``) and the loop's early tick.

The seam is the watches' own ``Fetch`` callable: ``FakePodHttp`` below is a fake of it
(named as such) that answers like a pod's ``/load`` -- holding an ask until the pod's load
changes or the wait is over, as ``voicefleet_inference.server.loadwait`` does -- so every
rule of the watch (holding, trust, silence, older servers, steps) runs for real on the
event loop's clock. The loop's early tick is driven with a clock whose time moves only when
the test says. Real servers: tests/integration/test_autoscaler_load.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest

from voicefleet_api import load
from voicefleet_api.scale import ScaleResult
from voicefleet_operator.autoscaler import Autoscaler, AutoscalerConfig
from voicefleet_operator.autoscaler_status import VoiceView, voice_view
from voicefleet_operator.autoscaler_watch import Answer, PodWatches, WatchConfig
from voicefleet_operator.pods import PodInfo
from voicefleet_operator.scaling import Observation, PodSample, Policy, ScalingState, decide

T0 = 1_764_000_000.0
WAIT = 0.6
CONFIG = WatchConfig(
    port=8080, wait=WAIT, grace=0.2, poll_interval=0.1, timeout=0.1, stale_after=5.0
)


@dataclass
class FakePod:
    """One pod as the fake serves it."""

    work: float = 0.0
    seq: int = 1
    holds: bool = True
    compact: bool = True
    """False: an older server (``/load`` is a 404, ``/metrics`` has the gauges)."""
    hung: bool = False
    """Accepts the ask and never answers (a stopped process)."""
    refused: bool = False
    asks: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, work: float) -> None:
        self.work = work
        self.seq += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def text(self) -> str:
        busy = 1 if self.work > 0 else 0
        return load.format_load(load.PodLoad(self.work, 0, busy, seq=self.seq))


class FakePodHttp:
    """Fake of the watches' ``Fetch`` seam: pods by IP, answering as a pod's ``/load`` does."""

    def __init__(self) -> None:
        self.pods: dict[str, FakePod] = {}

    async def __call__(self, url: str, deadline_s: float, held: bool) -> Answer | None:
        parts = urlsplit(url)
        pod = self.pods[str(parts.hostname)]
        pod.asks.append(parts.path + ("?" + parts.query if parts.query else ""))
        if pod.refused:
            return None
        if pod.hung:
            await asyncio.sleep(deadline_s)  # the caller's deadline passes
            return None
        if not pod.compact:
            if parts.path == "/metrics":
                return Answer(200, _metrics(pod.work), False)
            return Answer(404, "", False)
        query = parse_qs(parts.query)
        wait = float(query.get("wait", ["0"])[0])
        after = int(query.get("after", ["0"])[0])
        if pod.holds and wait > 0 and after == pod.seq:
            changed = pod.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(wait, deadline_s))
        return Answer(200, pod.text(), pod.holds and wait > 0)


def _metrics(work: float) -> str:
    return (
        f"voicefleet_queue_work_seconds {work}\n"
        "voicefleet_queue_depth 0\n"
        f"voicefleet_requests_in_flight {1 if work > 0 else 0}\n"
    )


async def _until(predicate: object, within: float) -> float:
    """Seconds until ``predicate()`` holds (fails the test after ``within``)."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def test_an_idle_pod_is_asked_once_per_wait_and_a_step_arrives_at_once() -> None:
    async def scenario() -> tuple[float, list[str], float | None, bool]:
        http = FakePodHttp()
        pod = http.pods["10.0.0.1"] = FakePod()
        watches = PodWatches(http, CONFIG, clock=time.monotonic)
        watch = watches.watch("uid-1", "10.0.0.1")
        await watches.first_answers([watch], 1.0)
        assert watch.sample(time.monotonic()) == load.PodLoad(0.0, 0, 0, 1)
        await asyncio.sleep(WAIT * 1.6)  # idle: one plain ask, then held asks
        idle_asks = list(pod.asks)
        assert not watches.stepped.is_set()
        pod.set(3.0)
        took = await _until(lambda: watches.stepped.is_set(), 0.5)
        sample = watch.sample(time.monotonic())
        await watches.close()
        return took, idle_asks, sample.work_s if sample else None, watches.stepped.is_set()

    took, idle_asks, work, stepped = asyncio.run(scenario())
    assert idle_asks[0] == load.wait_path(WAIT, 0)  # the first ask is answered at once
    # ~1.6 waits idle: the first ask and two or three held ones (the first hold is cut at
    # random), not one per poll_interval (16).
    assert 2 <= len(idle_asks) <= 4, idle_asks
    assert all("after=1" in a for a in idle_asks[1:])
    assert took < 0.3  # the held ask answered on the change (it would have held 0.6 s)
    assert work == 3.0
    assert stepped


def test_a_pod_whose_load_keeps_changing_is_heard_at_once_then_once_per_interval() -> None:
    """A held ask is answered at every change: without a limit a busy pod would cost an
    answer every GAP_S (20 a second); after BURST quick ones it costs one per interval."""
    config = WatchConfig(
        port=8080, wait=WAIT, grace=0.2, poll_interval=0.5, timeout=0.1, stale_after=5.0
    )

    async def scenario() -> tuple[int, int, float]:
        http = FakePodHttp()
        pod = http.pods["10.0.0.1"] = FakePod()
        watches = PodWatches(http, config, clock=time.monotonic)
        watch = watches.watch("uid-1", "10.0.0.1")
        await watches.first_answers([watch], 1.0)
        await asyncio.sleep(0.05)
        before = len(pod.asks)
        start = time.monotonic()
        while time.monotonic() - start < 2.0:  # the load changes every 20 ms for 2 s
            pod.set(1.0 + (time.monotonic() - start))
            await asyncio.sleep(0.02)
        asked = len(pod.asks) - before
        sample = watch.sample(time.monotonic())
        await watches.close()
        return before, asked, sample.work_s if sample else -1.0

    before, asked, work = asyncio.run(scenario())
    assert before == 2  # the first ask and a held one
    # BURST (5) quick answers, then one per 0.5 s: about 5 + 4 in 2 s (40 without a limit)
    assert 7 <= asked <= 11, asked
    assert work > 1.0  # heard, and trusted between answers


def test_a_silent_pod_is_trusted_only_until_its_held_answer_is_overdue_then_unknown() -> None:
    async def scenario() -> tuple[float, load.PodLoad | None, load.PodLoad | None]:
        http = FakePodHttp()
        pod = http.pods["10.0.0.1"] = FakePod(work=2.0)
        watches = PodWatches(http, CONFIG, clock=time.monotonic)
        watch = watches.watch("uid-1", "10.0.0.1")
        await watches.first_answers([watch], 1.0)
        await asyncio.sleep(0.05)  # its first held ask is out
        pod.hung = True  # from the next ask on: the process stopped, its socket accepts
        pod.set(2.5)  # the ask out now is answered; the next one hangs
        await _until(lambda: len(pod.asks) == 3, 0.5)
        asked = time.monotonic()
        trusted = watch.sample(asked + WAIT)  # held: its last report still counts
        silent_after = await _until(lambda: watch.sample(time.monotonic()) is None, 3.0)
        # Refused (the process is gone): silent at once, not after a deadline.
        pod.hung, pod.refused = False, True
        again = watches.watch("uid-2", "10.0.0.1")
        await watches.first_answers([again], 1.0)
        refused = again.sample(time.monotonic())
        await watches.close()
        return silent_after, trusted, refused

    silent_after, trusted, refused = asyncio.run(scenario())
    assert trusted is not None
    assert trusted.work_s == 2.5
    # overdue: its wait and the grace after the hung ask went out
    assert WAIT + CONFIG.grace - 0.05 <= silent_after <= WAIT + CONFIG.grace + 0.4
    assert refused is None
    # Silence is never idle: a voice whose only pod is silent holds, it never shrinks to zero.
    policy = Policy(min_replicas=0, max_replicas=3, scale_to_zero_idle=0.0)
    obs = Observation(now=T0, replicas=1, ready=(PodSample(None),))
    decision = decide(obs, ScalingState(idle_since=T0 - 600), policy)
    assert decision.desired == 1
    assert decision.reason == "NoMetrics"
    assert decision.state.idle_since is None


def test_pods_that_do_not_hold_are_polled_and_older_ones_read_from_metrics() -> None:
    async def scenario() -> tuple[FakePod, FakePod, list[load.PodLoad | None]]:
        http = FakePodHttp()
        plain = http.pods["10.0.0.1"] = FakePod(work=1.5, holds=False)
        old = http.pods["10.0.0.2"] = FakePod(work=2.5, compact=False)
        watches = PodWatches(http, CONFIG, clock=time.monotonic)
        ws = [watches.watch("a", "10.0.0.1"), watches.watch("b", "10.0.0.2")]
        await watches.first_answers(ws, 1.0)
        await asyncio.sleep(0.55)
        samples = [w.sample(time.monotonic()) for w in ws]
        await watches.close()
        return plain, old, samples

    plain, old, samples = asyncio.run(scenario())
    assert samples[0] is not None
    assert samples[0].work_s == 1.5
    assert samples[1] is not None
    assert samples[1].work_s == 2.5
    assert 3 <= len(plain.asks) <= 8  # every poll_interval (0.1 s)
    assert old.asks[0].startswith(load.LOAD_PATH)  # asked once, a 404
    assert sum(1 for a in old.asks if a.startswith(load.LOAD_PATH)) == 1
    assert 3 <= old.asks.count("/metrics") <= 8


def test_watches_follow_the_pods_asked_for_and_end_with_them() -> None:
    async def scenario() -> tuple[int, int, bool]:
        http = FakePodHttp()
        http.pods["10.0.0.1"] = FakePod()
        http.pods["10.0.0.2"] = FakePod()
        watches = PodWatches(http, CONFIG, clock=time.monotonic)
        first = watches.watch("a", "10.0.0.1")
        assert watches.watch("a", "10.0.0.1") is first  # the same pod: the same watch
        moved = watches.watch("a", "10.0.0.2")  # a new IP: a new watch, the old one ends
        await asyncio.sleep(0.05)
        ended = first.task is not None and first.task.done()
        watches.watch("b", "10.0.0.1")
        two = len(watches)
        watches.retain(["b"])
        await asyncio.sleep(0.01)
        gone = moved.task is not None and moved.task.done()
        one = len(watches)
        await watches.close()
        return two, one, ended and gone

    two, one, ended = asyncio.run(scenario())
    assert (two, one) == (2, 1)
    assert ended


# --- the loop ticks early after a step --------------------------------------------------


class ManualClock:
    """Fake of the loop's ``Clock``: time moves only when the test advances it."""

    def __init__(self) -> None:
        self.t = T0
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t = round(self.t + seconds, 6)
        self._moved.set()
        self._moved = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        deadline = self.t + seconds
        while self.t < deadline - 1e-9:
            await self._moved.wait()


class SteppingLoad:
    """Fake of the loop's ``LoadSource``: idle pods; ``step`` says a pod turned busy."""

    def __init__(self) -> None:
        self.step = asyncio.Event()
        self.retained: list[set[str]] = []

    async def pod_samples(
        self, pods: Sequence[PodInfo], now: float, detailed: Collection[str] = ()
    ) -> list[PodSample]:
        return [PodSample(0.0, 0, 0) for _ in pods]

    async def router_pending(self, routers: Sequence[PodInfo]) -> dict[str, int]:
        return {}

    def retain(self, uids: Iterable[str]) -> None:
        self.retained.append(set(uids))

    async def stepped(self) -> None:
        await self.step.wait()
        self.step.clear()

    async def close(self) -> None:
        pass


class TickGate:
    """Fake of the loop's ``PauseGate``: records when each tick asked (never paused)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.ticks: list[float] = []

    async def paused(self, now: float) -> str | None:
        self.ticks.append(round(now - T0, 3))
        return None


class NoWrites:
    """Fake of the loop's ``Actuator``: nothing to write in this test."""

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult:
        return ScaleResult(replicas, replicas, replicas)

    def patch_status(self, namespace: str, name: str, patch: object) -> None:
        pass

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None:
        pass

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        pass


def test_a_pod_turning_busy_brings_the_next_tick_forward() -> None:
    async def scenario() -> list[float]:
        clock = ManualClock()
        source = SteppingLoad()
        gate = TickGate(clock)
        scaler = Autoscaler(
            AutoscalerConfig(interval=1.0), actuator=NoWrites(), load=source, gate=gate, clock=clock
        )
        view = voice_view(
            {
                "metadata": {"namespace": "ns", "name": "v", "uid": "u"},
                "spec": {"replicas": 1, "model": {"bundled": "en_US-joe-medium"}},
            }
        )
        scaler.start({view.key: [view]}, {})

        async def to(t: float) -> None:  # move the clock in 10 ms steps to T0 + t
            while clock.t < T0 + t - 1e-9:
                clock.advance(0.01)
                await asyncio.sleep(0.002)

        await to(2.1)  # quiet: ticks at 0, 1, 2
        source.step.set()  # a step just after the tick at 2: the next is at 2.5, not 3
        await to(2.3)
        await to(4.9)  # then back to the interval: 3.5, 4.5
        source.step.set()  # a step at 4.9: the next tick 0.25 s later, at 5.15, not 5.5
        await to(6.0)
        await scaler.stop()
        return gate.ticks

    ticks = asyncio.run(scenario())
    assert ticks[:7] == pytest.approx([0.0, 1.0, 2.0, 2.5, 3.5, 4.5, 5.15], abs=0.06), ticks
