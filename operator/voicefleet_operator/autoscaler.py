"""The autoscaler loop: scrape a voice's pods and the router, decide, scale, report.

One kopf daemon per TTSVoice (``autoscale``) ticks every ``--autoscale-interval``
seconds. Each tick:

1. reads the voice's pods from the operator's pod index (``pods.INDEX_NAME``; no list
   call per tick) and scrapes every serving pod's ``/metrics`` concurrently with one
   shared aiohttp session (a pod that does not answer keeps its last sample until it
   is ``stale_after`` old, then counts as "not answered");
2. reads the router's ``voicefleet_router_pending_requests{voice="ns/name"}`` from a
   per-tick cache shared by all voices (one scrape of each router per tick);
3. calls the pure :func:`scaling.decide`;
4. on a change: before a scale-down, annotates the serving pods with
   ``controller.kubernetes.io/pod-deletion-cost`` (their work in milliseconds, so the
   least-loaded goes first), writes replicas only through
   :func:`voicefleet_api.scale.scale_voice` (in a thread), and posts a Normal Event with
   the numbers;
5. writes what it saw into ``status`` (``queueWorkSeconds``, ``queueDepth``,
   ``lastScaleTime``, ``autoscaling.*``) when it scaled, when ``idleSince`` moved, or at
   most every ``status_interval`` seconds otherwise.

A voice with ``spec.autoscaling.enabled: false`` is left alone (the daemon idles), so
``kubectl scale ttsv`` or an HPA on the scale subresource work as without us.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from voicefleet_api import metric_names
from voicefleet_api.labels import POD_DELETION_COST_ANNOTATION, SERVER_PORT
from voicefleet_api.scale import ScaleError, scale_voice
from voicefleet_operator.k8s import Kube, KubeError
from voicefleet_operator.pods import PodInfo, PodKey, pods_of
from voicefleet_operator.scaling import (
    Decision,
    Observation,
    PodSample,
    Policy,
    ScalingState,
    decide,
)
from voicefleet_operator.spec import SpecError, parse_voice

__all__ = [
    "Autoscaler",
    "AutoscalerConfig",
    "parse_gauges",
    "parse_time",
    "state_from_status",
    "status_patch",
]

log = logging.getLogger(__name__)

ROUTER_INDEX_NAME = "router_pods"
"""kwarg name of the optional index of router pods (``--router-pod-selector``)."""
MAX_DELETION_COST = 1_000_000
STOP_CHECK_SECONDS = 1.0
"""Longest a sleeping daemon goes without looking at its kopf stop flag."""
GRACEFUL_EXIT_SECONDS = STOP_CHECK_SECONDS + 0.5
"""kopf's cancellation backoff: a stopped daemon finishes its tick and leaves on its own."""


@dataclass(frozen=True)
class AutoscalerConfig:
    """The loop's knobs (operator flags); ``interval`` 0 turns the autoscaler off."""

    interval: float = 1.0
    scrape_timeout: float = 0.8
    stale_after: float = 5.0
    status_interval: float = 5.0
    router_urls: tuple[str, ...] = ()
    router_port: int = SERVER_PORT
    pod_port: int = SERVER_PORT


def parse_gauges(text: str, names: Iterable[str]) -> dict[str, list[tuple[str, float]]]:
    """Samples of the named metrics in Prometheus text: ``{name: [(labels, value)]}``.

    A deliberately small reader: the loop scrapes hundreds of pods a second and needs
    three gauges of each, so it scans for lines starting with those names instead of
    building every family (prometheus-client's parser costs ~20x more per scrape).
    ``labels`` is the raw ``{...}`` text ("" without labels).
    """
    wanted = tuple(names)
    out: dict[str, list[tuple[str, float]]] = {n: [] for n in wanted}
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            labels, _, tail = rest.rpartition("}")
        else:
            name, _, tail = line.partition(" ")
            labels = ""
        if name not in out:
            continue
        try:
            value = float(tail.split()[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            out[name].append((labels, value))
    return out


def _pod_sample(text: str) -> PodSample:
    g = parse_gauges(
        text,
        (
            metric_names.QUEUE_WORK_SECONDS,
            metric_names.QUEUE_DEPTH,
            metric_names.REQUESTS_IN_FLIGHT,
        ),
    )

    def total(name: str) -> float:
        return sum(v for _, v in g[name])

    if not g[metric_names.QUEUE_WORK_SECONDS]:
        return PodSample(None)
    return PodSample(
        max(0.0, total(metric_names.QUEUE_WORK_SECONDS)),
        queue_depth=int(total(metric_names.QUEUE_DEPTH)),
        in_flight=int(total(metric_names.REQUESTS_IN_FLIGHT)),
    )


def _router_pending(text: str) -> dict[str, int]:
    """``{"namespace/name": held requests}`` from one router's metrics."""
    out: dict[str, int] = {}
    key = f'{metric_names.VOICE_LABEL_NAME}="'
    for labels, value in parse_gauges(text, (metric_names.ROUTER_PENDING_REQUESTS,))[
        metric_names.ROUTER_PENDING_REQUESTS
    ]:
        start = labels.find(key)
        if start < 0:
            continue
        voice = labels[start + len(key) :].split('"', 1)[0]
        out[voice] = out.get(voice, 0) + int(value)
    return out


def parse_time(value: object) -> float | None:
    """Unix seconds from an RFC 3339 timestamp in status (None when absent or bad)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_from_status(status: Mapping[str, Any]) -> ScalingState:
    """The part of the decision's memory that survives a restart, read back from status."""
    auto = status.get("autoscaling") or {}
    return ScalingState(
        last_scale_time=parse_time(status.get("lastScaleTime")),
        idle_since=parse_time(auto.get("idleSince")),
    )


def status_patch(decision: Decision, obs: Observation, scaled: bool) -> dict[str, Any]:
    """The status fields the autoscaler owns, for one decision."""
    state = decision.state
    patch: dict[str, Any] = {
        "queueWorkSeconds": round(decision.work_seconds, 3),
        "queueDepth": decision.queue_depth,
        "autoscaling": {
            "desiredReplicas": decision.desired,
            "neededReplicas": decision.need,
            "pendingRequests": obs.pending_requests,
            "scrapedPods": sum(1 for s in obs.ready if s.answered),
            "readyPods": len(obs.ready),
            "startingPods": obs.starting,
            "observedTime": _rfc3339(obs.now),
            "idleSince": _rfc3339(state.idle_since) if state.idle_since is not None else None,
        },
    }
    if scaled:
        patch["lastScaleTime"] = _rfc3339(obs.now)
        patch["autoscaling"]["lastScaleReason"] = decision.reason
        patch["autoscaling"]["lastScaleMessage"] = decision.message[:1024]
    return patch


def status_differs(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether ``patch`` (from :func:`status_patch`) says anything ``status`` does not,
    ignoring when it was observed."""
    for key, value in patch.items():
        if key == "autoscaling":
            current = status.get("autoscaling") or {}
            if any(current.get(k) != v for k, v in value.items() if k != "observedTime"):
                return True
        elif status.get(key) != value:
            return True
    return False


def policy_of(body: Mapping[str, Any]) -> tuple[Policy, bool, float] | None:
    """``(policy, enabled, cold start timeout)`` from a TTSVoice body; None when invalid."""
    try:
        voice = parse_voice(body)
    except SpecError:
        return None
    a = voice.spec.autoscaling
    policy = Policy(
        min_replicas=a.min_replicas,
        max_replicas=max(a.min_replicas, a.max_replicas),
        target_work_seconds=a.target_work_seconds_per_replica,
        scale_down_delay=float(a.scale_down_delay_seconds),
        scale_to_zero_idle=float(a.scale_to_zero_idle_seconds),
    )
    return policy, a.enabled, float(a.cold_start_timeout_seconds)


@dataclass
class _Sample:
    at: float
    sample: PodSample


@dataclass
class Autoscaler:
    """Shared by every voice's daemon: HTTP session, scrape cache, per-voice memory."""

    config: AutoscalerConfig
    kube: Kube
    _session: aiohttp.ClientSession | None = None
    _samples: dict[str, _Sample] = field(default_factory=dict)
    _states: dict[PodKey, ScalingState] = field(default_factory=dict)
    _last_status: dict[PodKey, float] = field(default_factory=dict)
    _router: tuple[float, dict[str, int]] = (0.0, {})
    _router_lock: asyncio.Lock | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.scrape_timeout),
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )
        return self._session

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def close(self) -> None:
        """End every daemon's loop (even one kopf spawned after its stop) and the session."""
        self._closing.set()
        if self._session is not None:
            await self._session.close()

    async def pause(self, seconds: float, is_stopped: Callable[[], bool]) -> None:
        """Sleep ``seconds`` or until stopped or closing, in this task alone.

        Not ``stopped.wait(n)``: kopf runs that wait in a task of its own, and if that
        task's timeout ends during kopf's shutdown grace, kopf re-raises its
        TimeoutError and the operator exits 1 after a clean SIGTERM. Here the stop flag
        is read every ``STOP_CHECK_SECONDS`` and kopf's ``GRACEFUL_EXIT_SECONDS``
        backoff covers the gap.
        """
        deadline = time.monotonic() + seconds
        while not is_stopped() and not self._closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(min(left, STOP_CHECK_SECONDS)):
                    await self._closing.wait()
            except TimeoutError:
                pass

    def forget(self, key: PodKey) -> None:
        self._states.pop(key, None)
        self._last_status.pop(key, None)

    async def _get(self, url: str) -> str | None:
        try:
            async with self.session().get(url) as rsp:
                if rsp.status != 200:
                    return None
                return await rsp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _scrape_pod(self, pod: PodInfo, now: float) -> PodSample:
        text = await self._get(f"http://{pod.ip}:{self.config.pod_port}/metrics")
        sample = _pod_sample(text) if text is not None else PodSample(None)
        if sample.answered:
            self._samples[pod.uid] = _Sample(now, sample)
            return sample
        old = self._samples.get(pod.uid)
        if old is not None and now - old.at <= self.config.stale_after:
            return old.sample
        self._samples.pop(pod.uid, None)
        return sample

    async def router_pending(self, now: float, router_pods: Sequence[PodInfo]) -> dict[str, int]:
        """Held requests per voice over every router, scraped at most once per tick."""
        if self._router_lock is None:
            self._router_lock = asyncio.Lock()
        async with self._router_lock:
            at, cached = self._router
            if now - at < self.config.interval * 0.5:
                return cached
            urls = list(self.config.router_urls) + [
                f"http://{p.ip}:{self.config.router_port}/metrics" for p in router_pods if p.serving
            ]
            texts = await asyncio.gather(*(self._get(u) for u in urls))
            merged: dict[str, int] = {}
            for text in texts:
                for voice, n in _router_pending(text or "").items():
                    merged[voice] = merged.get(voice, 0) + n
            self._router = (now, merged)
            return merged

    async def tick(
        self,
        body: Mapping[str, Any],
        pods: Sequence[PodInfo],
        router_pods: Sequence[PodInfo],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> Decision | None:
        """One observe-decide-act round for one voice; None when it does not apply."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        parsed = policy_of(body)
        if parsed is None:
            return None
        policy, enabled, cold_start = parsed
        key = (namespace, name)
        if not enabled:
            self.forget(key)
            return None
        now = time.time()
        replicas = int((body.get("spec") or {}).get("replicas") or 0)
        live = [p for p in pods if not p.terminating]
        serving = [p for p in live if p.serving]
        starting = sum(
            1 for p in live if p.starting and now - (parse_time(p.created) or now) < cold_start
        )
        starting += max(0, replicas - len(live))
        samples, pending = await asyncio.gather(
            asyncio.gather(*(self._scrape_pod(p, now) for p in serving)),
            self.router_pending(now, router_pods),
        )
        obs = Observation(
            now=now,
            replicas=replicas,
            ready=tuple(samples),
            starting=starting,
            pending_requests=pending.get(f"{namespace}/{name}", 0),
        )
        state = self._states.get(key)
        if state is None:
            state = state_from_status(body.get("status") or {})
        decision = decide(obs, state, policy)
        logger.debug(
            "autoscaler: %s -> %d (%s) %s",
            replicas,
            decision.desired,
            decision.reason,
            decision.message,
        )
        scaled = False
        if decision.desired != replicas:
            scaled = await self._scale(body, namespace, name, replicas, decision, serving, samples)
            if not scaled:
                decision = _unchanged(decision, state)
        self._states[key] = decision.state
        await self._report(body, key, decision, obs, scaled, state, logger)
        return decision

    async def _scale(
        self,
        body: Mapping[str, Any],
        namespace: str,
        name: str,
        replicas: int,
        decision: Decision,
        serving: Sequence[PodInfo],
        samples: Sequence[PodSample],
    ) -> bool:
        if decision.desired < replicas:
            await self._mark_least_loaded(serving, samples)
        try:
            result = await asyncio.to_thread(
                scale_voice, self.kube.api, namespace, name, decision.desired
            )
        except ScaleError as exc:
            log.warning(
                "%s/%s: could not scale %d -> %d: %s",
                namespace,
                name,
                replicas,
                decision.desired,
                exc,
            )
            kopf.event(
                _kbody(body),
                type="Warning",
                reason="ScaleFailed",
                message=f"could not scale {replicas} -> {decision.desired}: {exc}",
            )
            return False
        if not result.changed:
            return False
        kopf.event(
            _kbody(body),
            type="Normal",
            reason=decision.reason,
            message=f"{result.previous} -> {result.replicas} replicas: {decision.message}",
        )
        return True

    async def _mark_least_loaded(
        self, serving: Sequence[PodInfo], samples: Sequence[PodSample]
    ) -> None:
        """Deletion cost = work in ms: the ReplicaSet removes the least-loaded pod first."""
        calls = []
        for pod, sample in zip(serving, samples, strict=True):
            work = sample.work_seconds if sample.answered else None
            cost = MAX_DELETION_COST if work is None else min(MAX_DELETION_COST, int(work * 1000))
            if pod.deletion_cost == cost:
                continue
            calls.append(
                asyncio.to_thread(
                    self.kube.patch_pod_annotations,
                    pod.namespace,
                    pod.name,
                    {POD_DELETION_COST_ANNOTATION: str(cost)},
                )
            )
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, KubeError):
                log.warning("could not set pod-deletion-cost: %s", outcome)

    async def _report(
        self,
        body: Mapping[str, Any],
        key: PodKey,
        decision: Decision,
        obs: Observation,
        scaled: bool,
        before: ScalingState,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        status = body.get("status") or {}
        patch = status_patch(decision, obs, scaled)
        # "moved": turned idle or busy. The status we would write is compared with the one
        # the voice has, without the observation time, so a restarted operator facing an
        # unchanged voice writes nothing; changes are written at most every status_interval.
        moved = (before.idle_since is None) != (decision.state.idle_since is None)
        changed = status_differs(status, patch)
        last = self._last_status.get(key)
        due = changed and (last is None or obs.now - last >= self.config.status_interval)
        if not (scaled or (moved and changed) or due):
            return
        try:
            await asyncio.to_thread(self.kube.patch_voice_status, key[0], key[1], patch)
            self._last_status[key] = obs.now
        except KubeError as exc:
            logger.warning("could not write autoscaler status: %s", exc)


def _unchanged(decision: Decision, state: ScalingState) -> Decision:
    """The decision as if it had not scaled (the write failed or changed nothing)."""
    return replace(
        decision,
        state=replace(decision.state, last_scale_time=state.last_scale_time),
    )


def _kbody(raw: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(dict(raw))  # type: ignore[arg-type]


def router_selector(selector: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> a kopf label filter (equality only, the common case)."""
    out: dict[str, str] = {}
    for part in selector.split(","):
        k, sep, v = part.strip().partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{selector!r}: expected key=value[,key=value]")
        out[k.strip()] = v.strip().lstrip("=")
    return out


async def run_daemon(
    autoscaler: Autoscaler,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    index: Mapping[PodKey, Iterable[PodInfo]],
    router_index: Mapping[Any, Iterable[PodInfo]] | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """The per-voice loop kopf runs as a daemon; ``body`` is kopf's live view."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    interval = autoscaler.config.interval
    logger.info("autoscaler loop started (every %gs)", interval)
    try:
        while not stopped and not autoscaler.closing:
            started = time.monotonic()
            routers = [p for store in (router_index or {}).values() for p in store]
            try:
                await autoscaler.tick(body, pods_of(index, namespace, name), routers, logger)
            except Exception:  # a bad tick must not end the voice's loop
                logger.exception("autoscaler tick failed")
            await autoscaler.pause(
                max(0.05, interval - (time.monotonic() - started)), lambda: bool(stopped)
            )
    finally:
        autoscaler.forget((namespace, name))
