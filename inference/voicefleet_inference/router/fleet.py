"""The router's view of voices, their pods and the load on each pod.

Everything here runs on the event-loop thread: discovery threads post their changes with
``loop.call_soon_threadsafe``, so no lock is needed and a decision never sees half an
update.

Load view of a pod (what :func:`PodState.work_s` returns), in engine-seconds:

    max(0, reported work - time since that report)
  + cost of this router's requests sent after that report that are still open

A report is the pod's own load (:mod:`voicefleet_api.load`): the ``x-voicefleet-load``
header on every answer it sends this router, or an answer of its ``/load`` when it has sent
none for a while (:mod:`.poll`). It is in the pod's own calibrated seconds and accounts for
other routers and direct callers. Since then the pod has worked through its queue at one
engine-second per second, and this router has sent more, so the view stays fresh between
reports. Reports are ordered by the pod's ``seq`` (two answers can race back), else by
when they were taken.

A report is trusted for ``stale_after_s`` after it was taken, or, longer, while the pod
holds a ``/load?wait=`` of this router that it promised to answer as soon as its load
changes (:meth:`Fleet.watch`, until the answer is due plus ``stale_after_s``). A pod with
no trusted report is **silent**: its load is unknown, so it is never taken for idle. Its
view falls back to this router's own open requests, and the choice prefers every pod that
is not silent (:mod:`.choice`). A pod just discovered is given ``stale_after_s`` to be
heard from (the watcher asks it at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from voicefleet_api.load import PodLoad
from voicefleet_inference.router.choice import Candidate

__all__ = [
    "Fleet",
    "Flight",
    "PodInfo",
    "PodState",
    "UnknownVoice",
    "VoiceInfo",
    "VoiceKey",
    "model_name_of",
]


@dataclass(frozen=True, slots=True, order=True)
class VoiceKey:
    namespace: str
    name: str
    label: str = field(init=False, repr=False, compare=False)
    """``namespace/name``, the metrics' ``voice`` label (made once: every request uses it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.namespace}/{self.name}")

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """What the router needs of a TTSVoice."""

    key: VoiceKey
    model_name: str
    """What the voice's pods expect as ``model`` (the router rewrites requests to it)."""
    cold_start_timeout_s: float
    created: int = 0
    """Unix time of creation (``created`` in ``/v1/models``)."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the router needs of a pod (from the watch, or a static upstream)."""

    namespace: str
    name: str
    voice: VoiceKey
    base_url: str | None
    """``http://ip:port``; None while the pod has no IP."""
    ready: bool
    deleting: bool = False
    key: str = field(init=False, repr=False, compare=False)
    """``namespace/name`` (made once: every request reads it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")


def model_name_of(spec: dict[str, Any]) -> str:
    """The model name a voice's pods serve: ``bundled``, or the volume file's stem."""
    model = spec.get("model") or {}
    if model.get("bundled"):
        return str(model["bundled"])
    path = str((model.get("volume") or {}).get("path", ""))
    return PurePosixPath(path).name.removesuffix(".onnx") if path else ""


class UnknownVoice(LookupError):
    """No TTSVoice by that name; carries the names that do exist."""

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(model)
        self.model = model
        self.known = known


@dataclass(eq=False)
class Flight:
    """One request this router has open at a pod."""

    pod_key: str
    cost_s: float
    sent_at: float


@dataclass(eq=False)
class PodState:
    info: PodInfo
    known_since: float = 0.0
    """When this router first saw the pod at its address (the grace before it is silent)."""
    open: set[Flight] = field(default_factory=set)
    reported_work_s: float | None = None
    reported_in_flight: int = 0
    reported_depth: int = 0
    reported_at: float = -1e9
    reported_seq: int = 0
    reported_free: int | None = None
    answered_at: float = -1e9
    """When this router last took a report from one of the pod's answers (a header)."""
    watched_until: float = -1e9
    """Until when a held ``/load`` poll vouches for the last report (:meth:`Fleet.watch`)."""
    full_until: float = -1e9
    draining_until: float = -1e9
    unreachable_until: float = -1e9

    def fresh(self, now: float, stale_after_s: float) -> bool:
        """The pod's last report is recent enough to trust, or a held poll vouches for it."""
        return self.reported_work_s is not None and (
            now - self.reported_at <= stale_after_s or now <= self.watched_until
        )

    def silent(self, now: float, stale_after_s: float) -> bool:
        """Nothing heard from the pod within ``stale_after_s`` (after its grace)."""
        return not self.fresh(now, stale_after_s) and now - self.known_since > stale_after_s

    def work_s(self, now: float, stale_after_s: float) -> float:
        """Estimated engine-seconds queued and running at the pod (module docstring)."""
        if self.reported_work_s is None or not self.fresh(now, stale_after_s):
            return sum(f.cost_s for f in self.open)
        since = sum(f.cost_s for f in self.open if f.sent_at >= self.reported_at)
        return max(0.0, self.reported_work_s - (now - self.reported_at)) + since

    def requests(self, now: float, stale_after_s: float) -> int:
        """Requests at the pod: reported queue + running, plus this router's since then."""
        if not self.fresh(now, stale_after_s):
            return len(self.open)
        since = sum(1 for f in self.open if f.sent_at >= self.reported_at)
        return self.reported_depth + self.reported_in_flight + since

    def free_slots(self, now: float, stale_after_s: float) -> int | None:
        """Queue slots the pod has left, less this router's requests it may not have counted;
        ``None`` when it does not report them (an older server). 0 with no fresh report."""
        if not self.fresh(now, stale_after_s):
            return 0
        if self.reported_free is None:
            return None
        since = sum(1 for f in self.open if f.sent_at >= self.reported_at)
        # Requests still on their way were in neither figure; the room the pod had in all
        # (free + queued + running) less everything this router has open there bounds it.
        room = self.reported_free + self.reported_depth + self.reported_in_flight
        return min(self.reported_free - since, room - len(self.open))

    def candidate(self, now: float, stale_after_s: float) -> Candidate:
        """The pod as the choice sees it: :meth:`work_s`, :meth:`requests` and
        :meth:`silent` in one pass over its open requests (this runs for every request)."""
        info = self.info
        reported = self.reported_work_s
        if reported is not None and (
            now - self.reported_at <= stale_after_s or now <= self.watched_until
        ):
            at = self.reported_at
            since_cost = 0.0
            since = 0
            for flight in self.open:
                if flight.sent_at >= at:
                    since_cost += flight.cost_s
                    since += 1
            work = max(0.0, reported - (now - at)) + since_cost
            count = self.reported_depth + self.reported_in_flight + since
            silent = False
        else:
            work = sum(f.cost_s for f in self.open)
            count = len(self.open)
            silent = now - self.known_since > stale_after_s
        return Candidate(
            info.key,
            work,
            count,
            info.ready and info.base_url is not None,
            info.deleting or now < self.draining_until,
            now < self.full_until,
            now < self.unreachable_until,
            silent,
        )


class Fleet:
    """Voices and pods by key; the load on each pod; wake-ups for held requests."""

    def __init__(
        self,
        namespace: str,
        *,
        stale_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.voices: dict[VoiceKey, VoiceInfo] = {}
        self.pods: dict[str, PodState] = {}
        self._by_voice: dict[VoiceKey, dict[str, PodState]] = {}
        """The same pods by voice: a request looks at its voice's pods only."""
        self._changed: dict[VoiceKey, asyncio.Event] = {}
        self._gone_listeners: list[Callable[[PodInfo], None]] = []
        self._pod_listeners: list[Callable[[PodState], None]] = []
        self.synced = False
        """True once discovery has listed everything at least once (``/readyz``)."""

    # -- discovery side ------------------------------------------------------------------

    def on_pod_gone(self, listener: Callable[[PodInfo], None]) -> None:
        """Call ``listener(info)`` when a pod leaves the fleet (e.g. to drop its metrics)."""
        self._gone_listeners.append(listener)

    def on_pod(self, listener: Callable[[PodState], None]) -> None:
        """Call ``listener(state)`` when a pod is added or changes (e.g. to watch its load)."""
        self._pod_listeners.append(listener)

    def upsert_voice(self, voice: VoiceInfo) -> None:
        self.voices[voice.key] = voice
        self._wake(voice.key)

    def remove_voice(self, key: VoiceKey) -> None:
        self.voices.pop(key, None)
        self._wake(key)

    def upsert_pod(self, info: PodInfo) -> None:
        state = self.pods.get(info.key)
        if state is None:
            state = self.pods[info.key] = PodState(info, known_since=self.clock())
        else:
            if state.info.base_url != info.base_url:  # a new IP is a new server
                state.reported_work_s = None
                state.reported_free = None
                state.reported_seq = 0
                state.watched_until = -1e9
                state.known_since = self.clock()
            if state.info.voice != info.voice:
                self._unindex(state)
            state.info = info
        self._by_voice.setdefault(info.voice, {})[info.key] = state
        for listener in self._pod_listeners:
            listener(state)
        self._wake(info.voice)

    def _unindex(self, state: PodState) -> None:
        pods = self._by_voice.get(state.info.voice)
        if pods is not None:
            pods.pop(state.info.key, None)
            if not pods:
                del self._by_voice[state.info.voice]

    def remove_pod(self, key: str) -> None:
        state = self.pods.pop(key, None)
        if state is not None:
            self._unindex(state)
            for listener in self._gone_listeners:
                listener(state.info)
            self._wake(state.info.voice)

    def replace(
        self,
        voices: Iterable[VoiceInfo] | None,
        pods: Iterable[PodInfo] | None,
        namespace: str | None,
    ) -> None:
        """A full list from discovery (``namespace`` None: all): drop what it lacks."""

        def inside(ns: str) -> bool:
            return namespace is None or ns == namespace

        if voices is not None:
            fresh = {v.key: v for v in voices}
            for key in [k for k in self.voices if inside(k.namespace) and k not in fresh]:
                self.remove_voice(key)
            for voice in fresh.values():
                self.upsert_voice(voice)
        if pods is not None:
            fresh_pods = {p.key: p for p in pods}
            for pod_key in [k for k, s in self.pods.items() if inside(s.info.namespace)]:
                if pod_key not in fresh_pods:
                    self.remove_pod(pod_key)
            for pod in fresh_pods.values():
                self.upsert_pod(pod)

    # -- load view -----------------------------------------------------------------------

    def begin(self, pod_key: str, cost_s: float) -> Flight:
        flight = Flight(pod_key, cost_s, self.clock())
        state = self.pods.get(pod_key)
        if state is not None:
            state.open.add(flight)
        return flight

    def end(self, flight: Flight) -> None:
        state = self.pods.get(flight.pod_key)
        if state is None or flight not in state.open:
            return
        state.open.discard(flight)
        self._wake(state.info.voice)

    def record_load(
        self, pod_key: str, at: float, load: PodLoad, *, on_answer: bool = True
    ) -> None:
        """The pod reported ``load``, taken at ``at`` (a plain poll: when it was sent; a
        header or a held poll: when it arrived); ``on_answer``: on an answer to one of this
        router's requests (a header), not a poll. An older report arriving after a newer
        one is dropped: by the pod's ``seq`` while reports keep coming (a restarted pod
        counts from 1 again, and a restart is longer than ``stale_after_s``), else by
        ``at``."""
        state = self.pods.get(pod_key)
        if state is None:
            return
        if on_answer:
            state.answered_at = max(state.answered_at, at)
        recent = at - state.reported_at <= self.stale_after_s
        if load.seq and state.reported_seq and recent:
            if load.seq <= state.reported_seq:
                return
        elif at < state.reported_at:
            return
        state.reported_work_s = load.work_s
        state.reported_depth = load.depth
        state.reported_in_flight = load.in_flight
        state.reported_at = at
        state.reported_seq = load.seq
        state.reported_free = load.free
        if state.unreachable_until > at:
            state.unreachable_until = at  # it answered: reachable again
        self._wake(state.info.voice)  # held requests may fit now

    def watch(self, pod_key: str, until: float) -> None:
        """A poll the pod will answer as soon as its load changes is held until ``until``
        (its answer is due by then): the last report stays trusted so long. A past
        ``until`` ends that (the poll failed)."""
        state = self.pods.get(pod_key)
        if state is not None:
            state.watched_until = until

    def to_poll(self, now: float, after_s: float) -> list[tuple[str, str]]:
        """``(key, base_url)`` of serving pods not heard from within ``after_s``."""
        return [
            (key, state.info.base_url)
            for key, state in self.pods.items()
            if state.info.base_url
            and state.info.ready
            and not state.info.deleting
            and now - state.reported_at > after_s
        ]

    def mark(
        self, pod_key: str, *, full_s: float = 0, draining_s: float = 0, down_s: float = 0
    ) -> None:
        """Remember for a while that a pod answered 429, 503, or could not be reached."""
        state = self.pods.get(pod_key)
        if state is None:
            return
        now = self.clock()
        if full_s:
            state.full_until = max(state.full_until, now + full_s)
        if draining_s:
            state.draining_until = max(state.draining_until, now + draining_s)
        if down_s:
            state.unreachable_until = max(state.unreachable_until, now + down_s)

    # -- request side --------------------------------------------------------------------

    def resolve(self, model: str) -> VoiceInfo:
        """``name`` (in the router's namespace) or ``namespace/name`` → the voice."""
        namespace, _, name = model.rpartition("/")
        key = VoiceKey(namespace or self.namespace, name)
        voice = self.voices.get(key)
        if voice is None:
            raise UnknownVoice(model, sorted(str(k) for k in self.voices))
        return voice

    def candidates(self, voice: VoiceKey) -> list[Candidate]:
        pods = self._by_voice.get(voice)
        if not pods:
            return []
        now = self.clock()
        stale_after_s = self.stale_after_s
        return [s.candidate(now, stale_after_s) for s in pods.values()]

    def ready_pods(self, voice: VoiceKey) -> list[PodState]:
        pods = self._by_voice.get(voice)
        if not pods:
            return []
        return [
            s for s in pods.values() if s.info.ready and not s.info.deleting and s.info.base_url
        ]

    def pod(self, key: str) -> PodState | None:
        return self.pods.get(key)

    def changed(self, voice: VoiceKey) -> asyncio.Event:
        """An event set at the next change to ``voice`` or its pods (held requests wait)."""
        event = self._changed.get(voice)
        if event is None:
            event = self._changed[voice] = asyncio.Event()
        return event

    def _wake(self, voice: VoiceKey) -> None:
        event = self._changed.pop(voice, None)
        if event is not None:
            event.set()
