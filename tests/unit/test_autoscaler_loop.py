"""The single autoscaler loop, tick by tick, with a fake clock and fakes at its seams.

The seams are the loop's own Protocols (``Clock``, ``LoadSource``, ``PauseGate``,
``Actuator``): the fakes below are named as such and hold no logic beyond recording.
Everything else -- the voice index entries, ``scaling.decide``, status bookkeeping --
is the real code. ``HttpLoadSource`` is tested against real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import pytest
from aiohttp import web

from voicefleet_api import load, metric_names
from voicefleet_api.scale import ScaleError, ScaleResult
from voicefleet_localcluster.procs import free_port
from voicefleet_operator.autoscaler import Autoscaler, AutoscalerConfig
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig, router_selector
from voicefleet_operator.autoscaler_status import (
    VoiceView,
    index_voice,
    parse_time,
    state_from_status,
    status_differs,
    status_patch,
    voice_view,
)
from voicefleet_operator.pods import PodInfo
from voicefleet_operator.scaling import Observation, PodSample, Policy, ScalingState, decide
from voicefleet_operator.settings import UsageError, parse_args

T0 = 1_764_000_000.0


class FakeClock:
    """Fake of the loop's ``Clock``: time moves only when the loop sleeps or a test says."""

    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class FakeLoad:
    """Fake of the loop's ``LoadSource``: work per pod uid, held requests per voice."""

    def __init__(self) -> None:
        self.work: dict[str, float] = {}
        self.pending: dict[str, int] = {}
        self.reads = 0
        self.retained: set[str] = set()
        self.closed = False
        self.counters: dict[str, load.PodCounters] = {}
        self.detailed: set[str] = set()

    async def pod_samples(
        self, pods: Sequence[PodInfo], now: float, detailed: Collection[str] = ()
    ) -> list[PodSample]:
        self.reads += 1
        self.detailed = set(detailed)
        return [
            PodSample(
                self.work.get(p.uid, 0.0),
                0,
                0,
                counters=self.counters.get(p.uid) if p.uid in detailed else None,
            )
            for p in pods
        ]

    async def router_pending(self, routers: Sequence[PodInfo]) -> dict[str, int]:
        return dict(self.pending)

    def retain(self, uids: Iterable[str]) -> None:
        self.retained = set(uids)

    async def stepped(self) -> None:
        await asyncio.Event().wait()  # never: these tests tick on the interval

    async def close(self) -> None:
        self.closed = True


class FakeGate:
    """Fake of the loop's ``PauseGate``: paused while ``reason`` is set."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.asked: list[float] = []
        self.fifth = asyncio.Event()

    async def paused(self, now: float) -> str | None:
        self.asked.append(now)
        if len(self.asked) >= 5:
            self.fifth.set()
        return self.reason


class FakeActuator:
    """Fake of the loop's ``Actuator``: applies scales to ``replicas`` and records writes."""

    def __init__(self) -> None:
        self.replicas: dict[tuple[str, str], int] = {}
        self.statuses: list[tuple[str, Mapping[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.costs: dict[str, int] = {}
        self.refuse = False
        self.broken: set[str] = set()

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult:
        if self.refuse:
            raise ScaleError(409, "the object has been modified")
        before = self.replicas.get((namespace, name), 0)
        self.replicas[(namespace, name)] = replicas
        return ScaleResult(before, replicas, replicas)

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        if name in self.broken:
            raise RuntimeError(f"{name}: unexpected")
        self.statuses.append((name, patch))

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None:
        self.costs[pod.name] = cost

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        self.events.append((voice.name, reason, message))


def body(
    name: str, replicas: int, autoscaling: dict[str, Any], status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "replicas": replicas,
            "model": {"bundled": "en_US-joe-medium"},
            "autoscaling": autoscaling,
        },
        "status": status or {},
    }


def pod(voice: str, k: int, *, ready: bool = True) -> PodInfo:
    return PodInfo(
        "ns",
        f"{voice}-{k}",
        voice,
        f"{voice}-uid-{k}",
        f"127.0.0.{k + 1}",
        "Running",
        ready,
        None,
        "2025-11-24T15:00:00Z",
        None,
    )


class World:
    """The indexes the loop reads (as kopf keeps them) and the fakes it talks to."""

    def __init__(self) -> None:
        self.voices: dict[tuple[str, str], list[VoiceView]] = {}
        self.pods: dict[tuple[str, str], list[PodInfo]] = {}
        self.clock = FakeClock()
        self.load = FakeLoad()
        self.gate = FakeGate()
        self.actuator = FakeActuator()
        self.scaler = Autoscaler(
            AutoscalerConfig(interval=1.0, status_interval=5.0),
            actuator=self.actuator,
            load=self.load,
            gate=self.gate,
            clock=self.clock,
        )

    def put(self, raw: dict[str, Any], pods: int) -> None:
        view = voice_view(raw)
        self.voices[view.key] = [view]
        self.pods[view.key] = [pod(view.name, k) for k in range(pods)]
        self.actuator.replicas[view.key] = view.replicas

    def follow_scale(self) -> None:
        """What the API server and the reconciler would do: spec and pods follow a scale."""
        for key, n in self.actuator.replicas.items():
            old = self.voices[key][0]
            raw = body(old.name, n, {"minReplicas": 0, "maxReplicas": 5})
            raw["spec"]["autoscaling"] = {
                "minReplicas": old.policy.min_replicas if old.policy else 0,
                "maxReplicas": old.policy.max_replicas if old.policy else 5,
                "targetWorkSecondsPerReplica": old.policy.target_work_seconds if old.policy else 10,
                "scaleDownDelaySeconds": int(old.policy.scale_down_delay) if old.policy else 300,
            }
            self.voices[key] = [voice_view(raw)]
            self.pods[key] = [pod(old.name, k) for k in range(n)]

    async def tick(self) -> dict[Any, Any]:
        decisions = await self.scaler.tick(self.voices, self.pods)
        self.clock.t += 1.0
        return decisions


AUTO = {"minReplicas": 1, "maxReplicas": 5, "targetWorkSecondsPerReplica": 4}


def test_one_loop_scales_every_voice_from_the_indexes_and_reports() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("busy", 1, {**AUTO, "scaleDownDelaySeconds": 3}), pods=1)
        w.put(body("quiet", 1, AUTO), pods=1)
        w.load.work["busy-uid-0"] = 12.0
        first = await w.tick()
        assert first[("ns", "busy")].reason != "ScaleUp"  # one sample never scales
        second = await w.tick()
        assert second[("ns", "busy")].reason == "ScaleUp"
        assert w.actuator.replicas[("ns", "busy")] >= 2  # how many: test_scaling.py
        assert w.actuator.replicas[("ns", "quiet")] == 1
        w.follow_scale()
        for k in range(w.actuator.replicas[("ns", "busy")]):
            w.load.work[f"busy-uid-{k}"] = 0.0
        for _ in range(6):
            await w.tick()
        w.follow_scale()  # the removed pods are gone from the index
        await w.tick()
        return w

    w = asyncio.run(scenario())
    reasons = [reason for name, reason, _ in w.actuator.events if name == "busy"]
    assert reasons == ["ScaleUp", "ScaleDown"]
    assert w.actuator.replicas[("ns", "busy")] == 1
    assert "work 12.0s" in w.actuator.events[0][2]
    scaled = [p for name, p in w.actuator.statuses if name == "busy" and "lastScaleTime" in p]
    assert [p["autoscaling"]["lastScaleReason"] for p in scaled] == ["ScaleUp", "ScaleDown"]
    assert w.load.reads == 9  # one read of all pods per tick, not one per voice
    assert w.load.retained == {"busy-uid-0", "quiet-uid-0"}  # gone pods are forgotten


def counters(t: float, rate: float, served_per_s: float) -> load.PodCounters:
    """A pod's cumulative counters after ``t`` seconds: ``rate`` requests/s offered,
    ``served_per_s`` served at 0.5 s each with first audio 0.1 s after start and 0.2 s
    after admission (cumulative buckets on the server's own bounds)."""
    served = served_per_s * t
    bounds = (0.05, 0.1, 0.2, 0.5, 1.0, math.inf)
    starts = tuple((b, served if b >= 0.1 else 0.0) for b in bounds)
    firsts = tuple((b, served if b >= 0.2 else 0.0) for b in bounds)
    return load.PodCounters(rate * t, served, 0.5 * served, 0.25 * served, starts, firsts)


def test_a_voice_with_a_first_audio_target_is_read_in_detail_and_sized_by_the_model() -> None:
    target = {"timeToFirstAudioSeconds": 0.3, "percentile": 99}

    async def scenario() -> tuple[World, list[Any]]:
        w = World()
        w.put(body("fast", 1, {"minReplicas": 1, "maxReplicas": 20, "target": target}), pods=2)
        w.put(body("plain", 1, AUTO), pods=1)
        decided = []
        for _ in range(8):  # 6 requests/s offered to each of two pods, 0.5 s each
            for k in range(2):
                w.load.counters[f"fast-uid-{k}"] = counters(w.clock.t - T0, 6.0, 2.0)
            decided.append((await w.tick())[("ns", "fast")])
        return w, decided

    w, decided = asyncio.run(scenario())
    assert w.load.detailed == {"fast-uid-0", "fast-uid-1"}  # only the target voice's pods
    first = decided[0]
    assert first.policy_name == "WorkSeconds"  # one reading is a baseline, nothing measured
    last = decided[-1]
    assert last.policy_name == "FirstAudioTarget"
    # 12 requests/s of 0.5 s each: 6 erlangs; the model wants more than 6 replicas.
    assert last.model_replicas is not None
    assert 7 <= last.model_replicas <= 12
    ups = [d for d in decided if d.reason == "ScaleUp"]
    assert ups
    assert ups[0].desired == ups[0].need
    status = [p for name, p in w.actuator.statuses if name == "fast"][-1]["autoscaling"]
    assert status["policy"] == "FirstAudioTarget"
    fa = status["firstAudio"]
    assert fa["targetSeconds"] == 0.3
    assert fa["percentile"] == 99
    assert fa["arrivalRate"] == pytest.approx(12.0)
    assert fa["meanServiceSeconds"] == pytest.approx(0.5)
    assert fa["serviceVariability"] == pytest.approx(0.0)
    assert 0.05 < fa["startToFirstAudioSeconds"] <= 0.1
    assert fa["observedWithinTarget"] == pytest.approx(100.0)
    assert 0.1 < fa["observedSeconds"] <= 0.2
    assert fa["predictedWithinTarget"] >= 99
    plain = [p for name, p in w.actuator.statuses if name == "plain"][-1]["autoscaling"]
    assert plain["policy"] == "WorkSeconds"
    assert plain["firstAudio"] is None


def test_paused_by_peering_the_loop_reads_and_writes_nothing_and_resumes_from_status() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("v", 1, AUTO), pods=1)
        w.load.work["v-uid-0"] = 12.0
        await w.tick()  # one sample remembered: the next would scale
        w.gate.reason = "other (priority 200 > 100)"
        for _ in range(5):
            assert await w.tick() == {}
        paused_for = w.scaler.paused
        assert paused_for == "other (priority 200 > 100)"
        assert w.actuator.events == []
        reads_while_paused = w.load.reads
        assert reads_while_paused == 1
        assert w.load.retained == set()  # paused: no pod is watched (no asks held at pods)
        w.gate.reason = None
        resumed = await w.tick()
        # Memory was dropped on pausing: this is a first sample again, not a second one.
        assert resumed[("ns", "v")].reason != "ScaleUp"
        assert w.scaler.paused is None
        assert w.load.retained == {"v-uid-0"}  # resumed: watched again
        assert (await w.tick())[("ns", "v")].reason == "ScaleUp"
        return w

    w = asyncio.run(scenario())
    assert [reason for _, reason, _ in w.actuator.events] == ["ScaleUp"]


def test_opted_out_invalid_and_deleting_voices_are_left_alone() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("manual", 3, {**AUTO, "enabled": False}), pods=3)
        invalid = body("broken", 3, AUTO)
        invalid["spec"]["model"] = {}
        w.put(invalid, pods=3)
        going = body("going", 3, AUTO)
        going["metadata"]["deletionTimestamp"] = "2025-11-24T16:00:00Z"
        w.put(going, pods=3)
        for _ in range(40):
            assert await w.tick() == {}
        return w

    w = asyncio.run(scenario())
    assert w.actuator.events == []
    assert w.actuator.statuses == []


def test_a_new_voice_at_zero_gets_no_report_until_something_happens() -> None:
    """A catalogue applied at zero replicas costs the autoscaler no status write per voice;
    the first request held for it is scaled up and reported."""

    async def scenario() -> World:
        w = World()
        w.put(body("idle", 0, {"minReplicas": 0, "maxReplicas": 3}), pods=0)
        for _ in range(12):  # past status_interval (5 s) twice
            await w.tick()
        assert w.actuator.statuses == []
        w.load.pending["ns/idle"] = 2
        await w.tick()
        return w

    w = asyncio.run(scenario())
    assert w.actuator.replicas[("ns", "idle")] == 1
    [(name, patch)] = w.actuator.statuses
    assert name == "idle"
    assert patch["autoscaling"]["lastScaleReason"] == "ScaleFromZero"
    assert patch["autoscaling"]["pendingRequests"] == 2


def test_a_voice_at_zero_with_a_report_keeps_being_reported() -> None:
    """Only the first report is skipped: a voice whose status has one gets its changes."""

    async def scenario() -> World:
        w = World()
        reported = {"autoscaling": {"desiredReplicas": 1, "readyPods": 1}, "queueDepth": 0}
        w.put(body("was-busy", 0, {"minReplicas": 0, "maxReplicas": 3}, reported), pods=0)
        await w.tick()
        return w

    w = asyncio.run(scenario())
    [(name, patch)] = w.actuator.statuses
    assert (name, patch["autoscaling"]["desiredReplicas"]) == ("was-busy", 0)


def test_a_refused_scale_is_a_warning_event_and_changes_nothing() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("v", 1, AUTO), pods=1)
        w.load.work["v-uid-0"] = 12.0
        w.actuator.refuse = True
        await w.tick()
        decision = (await w.tick())[("ns", "v")]
        assert decision.state.last_scale_time is None
        return w

    w = asyncio.run(scenario())
    assert w.actuator.events[0][1] == "ScaleFailed"
    assert "409" in w.actuator.events[0][2]


def test_one_voice_failing_unexpectedly_never_skips_the_others() -> None:
    async def scenario() -> dict[Any, Any]:
        w = World()
        w.put(body("bad", 1, AUTO), pods=1)
        w.put(body("good", 1, AUTO), pods=1)
        w.actuator.broken.add("bad")
        return await w.tick()

    decided = asyncio.run(scenario())
    assert list(decided) == [("ns", "good")]


def test_a_scale_down_marks_the_least_loaded_pod_to_go_first() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("v", 3, {**AUTO, "scaleDownDelaySeconds": 2}), pods=3)
        w.load.work.update({"v-uid-0": 0.9, "v-uid-1": 0.1, "v-uid-2": 0.5})
        for _ in range(4):
            await w.tick()
        return w

    w = asyncio.run(scenario())
    assert w.actuator.replicas[("ns", "v")] == 1
    assert w.actuator.costs == {"v-0": 900, "v-1": 100, "v-2": 500}


def test_run_ticks_at_the_interval_on_its_clock_and_stops_promptly() -> None:
    async def scenario() -> World:
        w = World()
        w.put(body("v", 1, AUTO), pods=1)
        w.scaler.start(w.voices, w.pods)
        await asyncio.wait_for(w.gate.fifth.wait(), timeout=5)
        await asyncio.wait_for(w.scaler.stop(), timeout=5)
        return w

    w = asyncio.run(scenario())
    assert w.load.closed
    gaps = [b - a for a, b in zip(w.gate.asked, w.gate.asked[1:], strict=False)]
    assert gaps
    assert all(g == pytest.approx(1.0) for g in gaps), gaps


def test_the_voice_index_copies_what_the_loop_needs() -> None:
    raw = body("v", 2, AUTO, status={"conditions": [{"type": "Ready"}], "queueDepth": 3})
    entry = index_voice(raw)
    view = entry[("ns", "v")]
    assert view.replicas == 2
    assert view.policy is not None
    assert view.policy.target_work_seconds == 4
    assert view.acts
    assert view.status == {"queueDepth": 3}  # only the autoscaler's own fields
    assert view.reference()["kind"] == "TTSVoice"
    assert view.reference()["uid"] == "uid-v"


def test_status_round_trip_keeps_last_scale_and_idle_since_across_a_restart() -> None:
    policy = Policy(min_replicas=0, scale_to_zero_idle=60)
    obs = Observation(now=T0, replicas=1, ready=(PodSample(0.0, 0, 0),))
    decision = decide(obs, ScalingState(), policy)
    patch = status_patch(decision, obs, scaled=True)
    assert patch["queueWorkSeconds"] == 0.0
    assert patch["autoscaling"]["idleSince"] == "2025-11-24T16:00:00Z"
    assert patch["lastScaleTime"] == "2025-11-24T16:00:00Z"
    restored = state_from_status(patch)
    assert restored.idle_since == obs.now
    assert restored.last_scale_time == obs.now
    assert parse_time("not a time") is None
    assert parse_time(None) is None


def test_an_unchanged_voice_gets_no_status_write_only_the_observation_time_differs() -> None:
    policy = Policy(min_replicas=1)
    obs = Observation(now=T0, replicas=1, ready=(PodSample(0.0, 0, 0),))
    decision = decide(obs, ScalingState(), policy)
    written = status_patch(decision, obs, scaled=False)
    later = Observation(now=obs.now + 30, replicas=1, ready=obs.ready)
    again = decide(later, decision.state, policy)
    assert not status_differs(written, status_patch(again, later, scaled=False))
    busy = Observation(now=obs.now + 31, replicas=1, ready=(PodSample(2.5, 1, 1),))
    assert status_differs(written, status_patch(decide(busy, again.state, policy), busy, False))
    assert status_differs({}, written)


def test_autoscaler_flags() -> None:
    config = parse_args(
        [
            "-A",
            "--autoscale-interval",
            "0.5",
            "--router-metrics-url",
            "http://router.voicefleet-system.svc:8080/metrics",
            "--router-pod-selector",
            "app.kubernetes.io/name=voicefleet-router",
            "--router-namespace",
            "voicefleet-system",
        ]
    )
    assert config.autoscale_interval == 0.5
    assert config.router_metrics_urls == ("http://router.voicefleet-system.svc:8080/metrics",)
    assert config.router_pod_selector == "app.kubernetes.io/name=voicefleet-router"
    assert router_selector("a=b, c=d") == {"a": "b", "c": "d"}
    assert parse_args(["-A"]).autoscale_interval == 1.0
    assert parse_args(["-A", "--autoscale-interval", "0"]).autoscale_interval == 0
    with pytest.raises(UsageError, match="autoscale-interval"):
        parse_args(["-A", "--autoscale-interval", "0.01"])
    with pytest.raises(UsageError, match="router-metrics-url"):
        parse_args(["-A", "--router-metrics-url", "router:8080"])
    with pytest.raises(UsageError, match="router-pod-selector"):
        parse_args(["-A", "--router-pod-selector", "justakey"])


# --- HttpLoadSource against real HTTP servers on loopback ---------------------------------

OLD_POD_METRICS = f"""# TYPE {metric_names.QUEUE_DEPTH} gauge
{metric_names.QUEUE_DEPTH}{{voice="en_US-joe-medium"}} 3.0
{metric_names.REQUESTS_IN_FLIGHT} 1.0
{metric_names.QUEUE_WORK_SECONDS} 4.25
"""

ROUTER_METRICS = f"""# TYPE {metric_names.ROUTER_PENDING_REQUESTS} gauge
{metric_names.ROUTER_PENDING_REQUESTS}{{voice="ns/v"}} 2.0
{metric_names.ROUTER_PENDING_REQUESTS}{{voice="other/v"}} 5.0
"""


class Pod:
    """A real HTTP server on one loopback address: ``/load``, or only ``/metrics`` (old)."""

    def __init__(self, host: str, *, compact: bool) -> None:
        self.host, self.compact = host, compact
        self.silent = False
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None

    async def _load(self, _: web.Request) -> web.Response:
        self.hits.append("/load")
        if self.silent:
            await asyncio.sleep(1.5)
        if not self.compact:
            return web.Response(status=404)
        return web.Response(text=load.format_load(load.PodLoad(2.5, 2, 1, seq=7)))

    async def _metrics(self, _: web.Request) -> web.Response:
        self.hits.append("/metrics")
        if self.silent:
            await asyncio.sleep(1.5)
        return web.Response(text=OLD_POD_METRICS if self.host != "router" else ROUTER_METRICS)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get(load.LOAD_PATH, self._load)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        address = "127.0.0.9" if self.host == "router" else self.host
        await web.TCPSite(self.runner, address, port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def test_pods_are_read_from_load_old_ones_from_metrics_and_silence_is_never_idle() -> None:
    """Pods that cannot hold an ask (these servers never do) are polled every interval; a
    poll that times out makes the pod silent at once (held asks: test_autoscaler_watch)."""
    port = free_port()

    async def scenario() -> tuple[list[list[PodSample]], dict[str, int], list[Pod]]:
        new, old, router = (
            Pod("127.0.0.1", compact=True),
            Pod("127.0.0.2", compact=False),
            Pod("router", compact=False),
        )
        for server in (new, old, router):
            await server.start(port)
        source = HttpLoadSource(
            LoadConfig(
                timeout=0.5,
                stale_after=2.0,
                poll_interval=0.2,
                pod_port=port,
                router_urls=(f"http://127.0.0.9:{port}/metrics",),
            )
        )
        pods = [pod("v", 0), pod("v", 1)]  # 127.0.0.1 and 127.0.0.2
        rounds = [await source.pod_samples(pods, T0)]  # the first asks are waited for
        await asyncio.sleep(0.7)
        rounds.append(await source.pod_samples(pods, T0 + 1))
        new.silent = True
        await asyncio.sleep(1.0)  # its next poll (within 0.2 s) fails after 0.5 s
        rounds.append(await source.pod_samples(pods, T0 + 2))
        pending = await source.router_pending([])
        await source.close()
        for server in (new, old, router):
            await server.stop()
        return rounds, pending, [new, old]

    rounds, pending, (new, old) = asyncio.run(scenario())
    compact, metrics = PodSample(2.5, 2, 1), PodSample(4.25, 3, 1)
    assert rounds[0] == [compact, metrics]
    assert rounds[1] == [compact, metrics]
    assert rounds[2] == [PodSample(None), metrics]  # silent: unknown, not idle
    assert pending == {"ns/v": 2, "other/v": 5}
    assert "/metrics" not in new.hits  # the compact endpoint only
    assert 3 <= new.hits.count("/load") <= 12  # polled every 0.2 s, not held
    assert old.hits.count("/load") == 1  # a 404 once, then /metrics only
    assert 3 <= old.hits.count("/metrics") <= 12


def test_the_registry_asks_for_no_finalizer_and_runs_one_loop_only_when_on() -> None:
    """No daemon, no handler needing a finalizer: voices outlive an uninstalled operator."""
    from voicefleet_operator.wiring import build_registry

    on = build_registry(parse_args(["-A"]))
    assert list(on._spawning.get_all_handlers()) == []  # no daemons, no timers
    assert not any(h.requires_finalizer for h in on._changing.get_all_handlers())
    activities = [h.id for h in on._activities.get_all_handlers()]
    assert "start_autoscaler" in activities
    assert "stop_autoscaler" in activities
    assert "autoscaled_voices" in [h.id for h in on._indexing.get_all_handlers()]
    off = build_registry(parse_args(["-A", "--autoscale-interval", "0"]))
    assert "start_autoscaler" not in [h.id for h in off._activities.get_all_handlers()]
    assert "autoscaled_voices" not in [h.id for h in off._indexing.get_all_handlers()]
