"""The autoscaler: one loop for every voice -- read load, decide, scale, report.

One asyncio task per operator (started by a kopf startup handler, stopped by its
cleanup handler) ticks every ``--autoscale-interval`` seconds. It is not a kopf daemon
per voice: a daemon needs a finalizer on its voice, and a finalizer strands the voice
(undeletable) once the operator is uninstalled or stopped. Each tick:

1. asks the peering gate (``autoscaler_peering``) whether kopf's peering pauses this
   operator; paused, it reads and writes nothing, and on resuming it forgets what it
   remembered (another operator may have scaled meanwhile; status has the rest);
2. takes every voice from the voice index (``autoscaler_status.index_voice``) and its
   pods from the pod index (``pods``): no API read per tick;
3. takes every serving pod's load as its held ``/load`` ask last heard it (no request
   per tick: ``autoscaler_watch``) and reads the routers' held requests once
   (``autoscaler_load``), all voices together; the pods of a voice with a first-audio
   target are read now, with their service counters, turned into the model's inputs
   over recent windows by ``autoscaler_service.ServiceWindows``;
4. calls the pure :func:`scaling.decide` per voice;
5. on a change: before a scale-down, annotates the serving pods with
   ``controller.kubernetes.io/pod-deletion-cost`` (their work in milliseconds, so the
   least-loaded goes first), writes replicas only through the scale subresource, and
   posts a Normal Event with the numbers;
6. writes what it saw into ``status`` when it scaled, when ``idleSince`` moved, or at
   most every ``status_interval`` seconds while the numbers move; a voice at zero with
   nothing going on gets no first report (``autoscaler_status.quiet_at_zero``).

Between ticks the loop sleeps ``interval``, but a pod that turns from idle to busy
(its held ask answers at once) brings the next tick forward to ``interval / 4`` later
(never sooner than ``interval / 2`` after the last one). A scale-up wants two ticks of
evidence, so a load step is decided on at most ~1.5 intervals after it (not 2), whatever
the phase of the ticks.

A voice with ``spec.autoscaling.enabled: false`` is left alone, so ``kubectl scale
ttsv`` or an HPA on the scale subresource work as without us.

The loop's inputs are Protocols (clock, load source, pause gate, actuator) so its tests
run it tick by tick with a fake clock and fakes at these seams; ``KubeActuator`` is the
real actuator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from voicefleet_api.labels import POD_DELETION_COST_ANNOTATION
from voicefleet_api.scale import ScaleError, ScaleResult, scale_voice
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig
from voicefleet_operator.autoscaler_peering import NeverPaused, PeeringGate
from voicefleet_operator.autoscaler_service import ServiceWindows
from voicefleet_operator.autoscaler_status import (
    VoiceKey,
    VoiceView,
    parse_time,
    quiet_at_zero,
    state_from_status,
    status_differs,
    status_patch,
)
from voicefleet_operator.k8s import Kube, KubeError
from voicefleet_operator.pods import PodInfo, PodKey, pods_of
from voicefleet_operator.scaling import Decision, Observation, PodSample, ScalingState, decide
from voicefleet_operator.settings import OperatorConfig

__all__ = [
    "Actuator",
    "Autoscaler",
    "AutoscalerConfig",
    "Clock",
    "KubeActuator",
    "LoadSource",
    "PauseGate",
    "SystemClock",
    "build_autoscaler",
]

log = logging.getLogger(__name__)

MAX_DELETION_COST = 1_000_000


@dataclass(frozen=True)
class AutoscalerConfig:
    """The loop's knobs (operator flags)."""

    interval: float = 1.0
    status_interval: float = 5.0


class Clock(Protocol):
    """Wall time (Unix seconds: status timestamps must survive restarts) and sleeping."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LoadSource(Protocol):
    """Where load comes from (``autoscaler_load.HttpLoadSource`` in the operator)."""

    async def pod_samples(
        self, pods: Sequence[PodInfo], now: float, detailed: Collection[str] = ()
    ) -> list[PodSample]:
        """One sample per pod; those in ``detailed`` (uids) with their service counters."""
        ...

    async def router_pending(self, routers: Sequence[PodInfo]) -> dict[str, int]: ...

    def retain(self, uids: Iterable[str]) -> None:
        """Forget (and stop watching) every pod not in ``uids``."""
        ...

    async def stepped(self) -> None:
        """Return when a pod turned from idle to busy since the last return (the loop then
        ticks early)."""
        ...

    async def close(self) -> None: ...


class PauseGate(Protocol):
    """Whether the operator is paused by peering (``autoscaler_peering.PeeringGate``)."""

    async def paused(self, now: float) -> str | None: ...


class Actuator(Protocol):
    """The loop's writes. Blocking calls; the loop runs them in threads."""

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult: ...

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None: ...

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class KubeActuator:
    """The real writes: the scale subresource, the status subresource, pods, Events."""

    kube: Kube

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult:
        return scale_voice(self.kube.api, namespace, name, replicas)

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.kube.patch_voice_status(namespace, name, patch)

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None:
        self.kube.patch_pod_annotations(
            pod.namespace, pod.name, {POD_DELETION_COST_ANNOTATION: str(cost)}
        )

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        self.kube.post_event(voice.reference(), type=type, reason=reason, message=message)


def _voices(index: Mapping[Any, Iterable[VoiceView]]) -> list[VoiceView]:
    return sorted((v for store in index.values() for v in store), key=lambda v: v.key)


@dataclass
class Autoscaler:
    """The loop and its memory across ticks (see the module docstring)."""

    config: AutoscalerConfig
    actuator: Actuator
    load: LoadSource
    gate: PauseGate
    clock: Clock = field(default_factory=SystemClock)
    _states: dict[VoiceKey, ScalingState] = field(default_factory=dict)
    _service: ServiceWindows = field(default_factory=ServiceWindows)
    _last_status: dict[VoiceKey, float] = field(default_factory=dict)
    _paused: str | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def paused(self) -> str | None:
        """Why the last tick did nothing (kopf peering), or None."""
        return self._paused

    def start(
        self,
        voices: Mapping[Any, Iterable[VoiceView]],
        pods: Mapping[PodKey, Iterable[PodInfo]],
        routers: Mapping[Any, Iterable[PodInfo]] | None = None,
    ) -> None:
        """Run :meth:`run` in the background (the startup handler must not wait for it)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(voices, pods, routers), name="autoscaler")

    async def stop(self) -> None:
        """End the loop after the tick in progress (its writes finish)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.load.close()

    async def run(
        self,
        voices: Mapping[Any, Iterable[VoiceView]],
        pods: Mapping[PodKey, Iterable[PodInfo]],
        routers: Mapping[Any, Iterable[PodInfo]] | None = None,
    ) -> None:
        """Tick every ``interval`` until :meth:`stop`; the indexes are kopf's live views."""
        interval = self.config.interval
        log.info("autoscaler loop started (every %gs, one loop for all voices)", interval)
        while not self._stopping.is_set():
            started = self.clock.now()
            try:
                await self.tick(voices, pods, routers)
            except Exception:  # a bad tick must not end the loop
                log.exception("autoscaler tick failed")
            await self._until_next(started)
        log.info("autoscaler loop stopped")

    async def _until_next(self, started: float) -> None:
        """Wait for the next tick: ``interval`` after the last one started, or sooner when a
        pod turns busy (``LoadSource.stepped``): then ``interval / 4`` after that (the
        step's burst is in) and no sooner than ``interval / 2`` after the last tick."""
        interval = self.config.interval
        until = started + interval
        stepper: asyncio.Future[None] | None = asyncio.ensure_future(self.load.stepped())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                now = self.clock.now()
                sleeper = asyncio.ensure_future(self.clock.sleep(max(0.05, until - now)))
                waiting: set[asyncio.Future[Any]] = {sleeper, stopper}
                if stepper is not None:
                    waiting.add(stepper)
                try:
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                if sleeper in done or stopper in done:
                    return
                now = self.clock.now()
                until = min(until, max(now + interval / 4, started + interval / 2))
                stepper = None  # one early tick per step; the next wait listens again
        finally:
            if stepper is not None:
                stepper.cancel()
            stopper.cancel()

    async def tick(
        self,
        voices: Mapping[Any, Iterable[VoiceView]],
        pods: Mapping[PodKey, Iterable[PodInfo]],
        routers: Mapping[Any, Iterable[PodInfo]] | None = None,
    ) -> dict[VoiceKey, Decision]:
        """One observe-decide-act round over every voice; the decisions made."""
        now = self.clock.now()
        reason = await self.gate.paused(now)
        if reason is not None:
            if self._paused is None:
                log.info("autoscaler paused (kopf peering): %s", reason)
                self._states.clear()
                self._last_status.clear()
                self.load.retain(())  # a paused operator holds no asks at the pods
            self._paused = reason
            return {}
        if self._paused is not None:
            log.info("autoscaler resumed: no other operator of higher or equal priority")
            self._paused = None

        acting = [v for v in _voices(voices) if v.acts]
        keys = {v.key for v in acting}
        for key in [k for k in self._states if k not in keys]:
            self._forget(key)
        mine = {v.key: pods_of(pods, v.namespace, v.name) for v in acting}
        serving = {k: [p for p in ps if p.serving] for k, ps in mine.items()}
        flat = [p for ps in serving.values() for p in ps]
        router_pods = [p for store in (routers or {}).values() for p in store]
        detailed = {
            p.uid
            for v in acting
            if v.policy is not None and v.policy.first_audio_target is not None
            for p in serving[v.key]
        }
        samples, pending = await asyncio.gather(
            self.load.pod_samples(flat, now, detailed), self.load.router_pending(router_pods)
        )
        self.load.retain(p.uid for p in flat)
        self._service.retain(detailed)
        for pod, sample in zip(flat, samples, strict=True):
            if sample.counters is not None:
                self._service.add(pod.uid, now, sample.counters)
        by_voice: dict[VoiceKey, list[PodSample]] = {}
        at = 0
        for key, ps in serving.items():
            by_voice[key] = list(samples[at : at + len(ps)])
            at += len(ps)
        decided = await asyncio.gather(
            *(
                self._voice(v, now, mine[v.key], serving[v.key], by_voice[v.key], pending)
                for v in acting
            ),
            return_exceptions=True,
        )
        out: dict[VoiceKey, Decision] = {}
        for voice, outcome in zip(acting, decided, strict=True):
            if isinstance(outcome, Decision):
                out[voice.key] = outcome
            elif isinstance(outcome, Exception):  # one voice's failure never skips the others
                log.error("[%s/%s] autoscaler tick failed", *voice.key, exc_info=outcome)
            else:
                raise outcome  # CancelledError and the like end the loop
        return out

    def _forget(self, key: VoiceKey) -> None:
        self._states.pop(key, None)
        self._last_status.pop(key, None)

    async def _voice(
        self,
        voice: VoiceView,
        now: float,
        pods: Sequence[PodInfo],
        serving: Sequence[PodInfo],
        samples: Sequence[PodSample],
        pending: Mapping[str, int],
    ) -> Decision:
        assert voice.policy is not None  # VoiceView.acts
        live = [p for p in pods if not p.terminating]
        starting = sum(
            1
            for p in live
            if p.starting and now - (parse_time(p.created) or now) < voice.cold_start
        )
        starting += max(0, voice.replicas - len(live))
        target = voice.policy.first_audio_target
        service = None
        if target is not None:
            service = self._service.measure(
                (p.uid for p in serving), now, target, voice.policy.first_audio_percentile
            )
        obs = Observation(
            now=now,
            replicas=voice.replicas,
            ready=tuple(samples),
            starting=starting,
            pending_requests=pending.get(f"{voice.namespace}/{voice.name}", 0),
            service=service,
        )
        state = self._states.get(voice.key)
        if state is None:
            state = state_from_status(voice.status)
        decision = decide(obs, state, voice.policy)
        log.debug(
            "[%s/%s] autoscaler: %d -> %d (%s) %s",
            voice.namespace,
            voice.name,
            voice.replicas,
            decision.desired,
            decision.reason,
            decision.message,
        )
        scaled = False
        if decision.desired != voice.replicas:
            scaled = await self._scale(voice, decision, serving, samples)
            if not scaled:
                decision = _unchanged(decision, state)
        self._states[voice.key] = decision.state
        await self._report(voice, decision, obs, scaled, state)
        return decision

    async def _scale(
        self,
        voice: VoiceView,
        decision: Decision,
        serving: Sequence[PodInfo],
        samples: Sequence[PodSample],
    ) -> bool:
        if decision.desired < voice.replicas:
            await self._mark_least_loaded(serving, samples)
        try:
            result = await asyncio.to_thread(
                self.actuator.scale, voice.namespace, voice.name, decision.desired
            )
        except ScaleError as exc:
            log.warning(
                "[%s/%s] could not scale %d -> %d: %s",
                voice.namespace,
                voice.name,
                voice.replicas,
                decision.desired,
                exc,
            )
            await self._event(
                voice,
                "Warning",
                "ScaleFailed",
                f"could not scale {voice.replicas} -> {decision.desired}: {exc}",
            )
            return False
        if not result.changed:
            return False
        log.info(
            "[%s/%s] %s %d -> %d: %s",
            voice.namespace,
            voice.name,
            decision.reason,
            result.previous,
            result.replicas,
            decision.message,
        )
        await self._event(
            voice,
            "Normal",
            decision.reason,
            f"{result.previous} -> {result.replicas} replicas: {decision.message}",
        )
        return True

    async def _event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        try:
            await asyncio.to_thread(self.actuator.event, voice, type, reason, message)
        except KubeError as exc:
            log.warning("[%s/%s] could not post Event %s: %s", *voice.key, reason, exc)

    async def _mark_least_loaded(
        self, serving: Sequence[PodInfo], samples: Sequence[PodSample]
    ) -> None:
        """Deletion cost = work in ms: the ReplicaSet removes the least-loaded pod first."""
        calls = []
        for pod, sample in zip(serving, samples, strict=True):
            work = sample.work_seconds if sample.answered else None
            cost = MAX_DELETION_COST if work is None else min(MAX_DELETION_COST, int(work * 1000))
            if pod.deletion_cost != cost:
                calls.append(asyncio.to_thread(self.actuator.set_deletion_cost, pod, cost))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, KubeError):
                log.warning("could not set pod-deletion-cost: %s", outcome)

    async def _report(
        self,
        voice: VoiceView,
        decision: Decision,
        obs: Observation,
        scaled: bool,
        before: ScalingState,
    ) -> None:
        patch = status_patch(decision, obs, scaled, voice.policy)
        if "autoscaling" not in voice.status and quiet_at_zero(patch, voice.replicas):
            return  # nothing to say yet about a voice at zero (autoscaler_status.quiet_at_zero)
        # "moved": turned idle or busy. The status we would write is compared with the one
        # the voice has, without the observation time, so a restarted operator facing an
        # unchanged voice writes nothing; changes are written at most every status_interval.
        moved = (before.idle_since is None) != (decision.state.idle_since is None)
        changed = status_differs(voice.status, patch)
        last = self._last_status.get(voice.key)
        due = changed and (last is None or obs.now - last >= self.config.status_interval)
        if not (scaled or (moved and changed) or due):
            return
        try:
            await asyncio.to_thread(self.actuator.patch_status, voice.namespace, voice.name, patch)
            self._last_status[voice.key] = obs.now
        except KubeError as exc:
            log.warning("[%s/%s] could not write autoscaler status: %s", *voice.key, exc)


def _unchanged(decision: Decision, state: ScalingState) -> Decision:
    """The decision as if it had not scaled (the write failed or changed nothing)."""
    return replace(
        decision,
        state=replace(decision.state, last_scale_time=state.last_scale_time),
    )


def build_autoscaler(config: OperatorConfig, kube: Kube, identity: str) -> Autoscaler | None:
    """The operator's autoscaler from its flags (None with ``--autoscale-interval 0``).

    ``identity`` must be the one kopf heartbeats under (the CLI passes the same to
    ``kopf.operator``), or the peering gate would take this operator for a peer.
    """
    interval = config.autoscale_interval
    if interval <= 0:
        return None
    load = HttpLoadSource(
        LoadConfig(
            timeout=min(0.8 * interval, 5.0),
            stale_after=max(5.0, 3 * interval),
            poll_interval=interval,
            router_urls=config.router_metrics_urls,
            router_port=config.router_metrics_port,
            router_token=(
                config.router_token.get_secret_value() if config.router_token is not None else None
            ),
            router_token_file=config.router_token_file,
        )
    )
    gate: PauseGate = NeverPaused()
    if not config.standalone:
        named = [ns for ns in config.namespaces if "*" not in ns]
        if config.namespaces and not named:
            log.warning(
                "autoscaler: namespace globs only (%s): it cannot read their peering objects "
                "and will not pause for peers; name the namespaces or run one replica",
                ",".join(config.namespaces),
            )
        else:
            gate = PeeringGate(
                kube,
                name=config.peering_name,
                namespaces=named,
                identity=identity,
                priority=config.priority,
            )
    return Autoscaler(
        AutoscalerConfig(interval=interval), actuator=KubeActuator(kube), load=load, gate=gate
    )
