"""Reading load for the autoscaler: the pods' held ``/load`` asks and the routers' held requests.

Every tick the loop needs three numbers per serving pod (work-seconds, queue depth,
requests in flight) and, per voice, the requests the routers hold because no replica
could take them. Both are parsed by :mod:`voicefleet_api.load`, the one reader of the
load contract, so the router and the autoscaler cannot disagree about what a pod said.

- **Pods**: one held ``GET /load?wait=S&after=N`` per serving pod
  (:mod:`.autoscaler_watch`): the pod answers when its load changes, else every ``S``
  seconds, so a tick reads what the pods last said without asking them, and an idle
  fleet costs one small exchange per pod per ``S`` (not one per tick). A pod that does
  not hold is asked every interval; one that answers 404 there is an older server and is
  read from ``/metrics`` (remembered per pod uid), so a rolling upgrade never blinds the
  autoscaler. A pod whose ask fails or is overdue is silent: "not answered" (the
  decision treats that as unknown, never as idle). Pods of a voice with a first-audio
  target are read from ``/metrics`` each tick instead, whose service counters
  (``load.parse_counters``) the queueing model is fitted to; such a pod that does not
  answer keeps its last sample until it is ``stale_after`` old.
- **Routers** (discovery): the ``--router-metrics-url`` list plus the serving pods of the
  ``--router-pod-selector`` index (pods in ``--router-namespace`` only), each read once per
  tick for all voices, and merged. Their ``/metrics`` is read with the bearer token of
  ``--router-token`` (the chart's generated Secret) or ``--router-token-file``: the routers
  refuse anyone else.

All requests share one aiohttp session. Held asks keep a connection each; the others
(first asks, polls, ``/metrics`` pages) go at most ``max_connections`` at a time, so the
first tick over thousands of pods queues its requests instead of opening thousands of
sockets at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from voicefleet_api import load
from voicefleet_api.labels import SERVER_PORT
from voicefleet_operator.autoscaler_watch import Answer, PodWatches, WatchConfig
from voicefleet_operator.pods import PodInfo
from voicefleet_operator.scaling import PodSample

__all__ = ["ROUTER_INDEX_NAME", "HttpLoadSource", "LoadConfig", "router_selector"]

log = logging.getLogger("voicefleet_operator.autoscaler")

ROUTER_INDEX_NAME = "router_pods"
"""kwarg name of the optional index of router pods (``--router-pod-selector``)."""


@dataclass(frozen=True)
class LoadConfig:
    """Where and how patiently to read load."""

    timeout: float = 0.8
    """Deadline of an ask answered at once (a first ask, a poll, a ``/metrics`` page)."""
    stale_after: float = 5.0
    """How long a sample read without holding (a poll, a page) stays good, and how late a
    held ask may be answered after its ``wait`` before its pod is silent (on a saturated
    machine the operator's own loop runs late: a tight grace made hundreds of pods
    flap silent at once)."""
    wait: float = 10.0
    """Seconds a pod may hold an ask (0: poll every ``poll_interval`` instead)."""
    poll_interval: float = 1.0
    """Asks of a pod that does not hold (the loop's interval)."""
    pod_port: int = SERVER_PORT
    router_urls: tuple[str, ...] = ()
    router_port: int = SERVER_PORT
    router_token: str | None = None
    """The routers' ``/metrics`` bearer token; None (and no file): no Authorization header."""
    router_token_file: Path | None = None
    """Or a file holding it, read at every scrape (a rotated Secret is picked up)."""
    max_connections: int = 256
    """Requests answered at once (not held) in flight together."""


def router_selector(selector: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> a kopf label filter (equality only, the common case)."""
    out: dict[str, str] = {}
    for part in selector.split(","):
        k, sep, v = part.strip().partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{selector!r}: expected key=value[,key=value]")
        out[k.strip()] = v.strip().lstrip("=")
    return out


def _sample(found: load.PodLoad | None, counters: load.PodCounters | None = None) -> PodSample:
    if found is None:
        return PodSample(None)
    return PodSample(
        found.work_s, queue_depth=found.depth, in_flight=found.in_flight, counters=counters
    )


@dataclass
class _Kept:
    at: float
    sample: PodSample


@dataclass
class HttpLoadSource:
    """The loop's load source over HTTP (see the module docstring)."""

    config: LoadConfig
    clock: Callable[[], float] = time.time
    """The watches' clock (the loop's ``SystemClock.now``: Unix seconds)."""
    _session: aiohttp.ClientSession | None = None
    _slots: asyncio.Semaphore | None = None
    _watches: PodWatches | None = None
    _kept: dict[str, _Kept] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                # no cap on connections: each held ask keeps one (plain ones: _slots)
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )
        return self._session

    def watches(self) -> PodWatches:
        """The pods' held asks (made on first use: they need the running loop)."""
        if self._watches is None:
            cfg = self.config
            self._watches = PodWatches(
                self._fetch,
                WatchConfig(
                    port=cfg.pod_port,
                    wait=cfg.wait,
                    grace=cfg.stale_after,
                    poll_interval=cfg.poll_interval,
                    timeout=cfg.timeout,
                    stale_after=cfg.stale_after,
                ),
                clock=self.clock,
            )
        return self._watches

    async def close(self) -> None:
        if self._watches is not None:
            await self._watches.close()
        if self._session is not None:
            await self._session.close()

    async def _get(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str] | None:
        """``(status, body)``, or None when the peer did not answer in time."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_connections)
        async with self._slots:
            try:
                async with self.session().get(url, headers=headers) as rsp:
                    return rsp.status, await rsp.text()
            except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
                return None

    async def _fetch(self, url: str, deadline_s: float, held: bool) -> Answer | None:
        """One load ask (``held``: the pod may hold it ``deadline_s``; not one of _slots)."""
        if held:
            return await self._ask(url, deadline_s)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_connections)
        async with self._slots:
            return await self._ask(url, deadline_s)

    async def _ask(self, url: str, deadline_s: float) -> Answer | None:
        try:
            limit = aiohttp.ClientTimeout(total=deadline_s)
            async with self.session().get(url, timeout=limit) as rsp:
                text = await rsp.text()
                return Answer(rsp.status, text, load.LOAD_WAIT_HEADER in rsp.headers)
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def _read_detailed(self, pod: PodInfo) -> PodSample:
        got = await self._get(f"http://{pod.ip}:{self.config.pod_port}/metrics")
        if got is None or got[0] != 200:
            return PodSample(None)
        return _sample(load.parse_metrics(got[1]), load.parse_counters(got[1]))

    async def pod_samples(
        self, pods: Sequence[PodInfo], now: float, detailed: Collection[str] = ()
    ) -> list[PodSample]:
        """One sample per pod, in order (a silent pod: unanswered).

        Pods whose uid is in ``detailed`` are read from ``/metrics`` now, with their
        service counters (a kept sample carries none: counters are never reused); the
        others are what their watch last heard, trusted at the watches' clock. A pod
        watched for the first time is waited for (at most ``timeout``).
        """
        watches = self.watches()
        watched = {p.uid: p.ip for p in pods if p.uid not in detailed and p.ip}
        watches.retain(watched)
        started = [watches.watch(uid, ip) for uid, ip in watched.items()]
        deep = [p for p in pods if p.uid in detailed]
        _, found = await asyncio.gather(
            watches.first_answers(started, self.config.timeout),
            asyncio.gather(*(self._read_detailed(p) for p in deep)),
        )
        read = dict(zip((p.uid for p in deep), found, strict=True))
        heard_at = self.clock()
        out = []
        for pod in pods:
            if pod.uid not in read:
                watch = watches.get(pod.uid)
                out.append(_sample(watch.sample(heard_at) if watch is not None else None))
                continue
            sample = read[pod.uid]
            if sample.answered:
                self._kept[pod.uid] = _Kept(now, sample)
            else:
                old = self._kept.get(pod.uid)
                if old is not None and now - old.at <= self.config.stale_after:
                    sample = replace(old.sample, counters=None)
                else:
                    self._kept.pop(pod.uid, None)
            out.append(sample)
        return out

    async def stepped(self) -> None:
        """Return when a watched pod turned from idle to busy (since the last return)."""
        event = self.watches().stepped
        await event.wait()
        event.clear()

    def _router_headers(self) -> dict[str, str] | None:
        path = self.config.router_token_file
        if path is None:
            token = self.config.router_token
            return {"Authorization": f"Bearer {token}"} if token else None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self._say_once(f"cannot read the router token {path}: {exc}")
            return None
        return {"Authorization": f"Bearer {token}"} if token else None

    def _say_once(self, message: str) -> None:
        """A misconfiguration is logged once, not once a second."""
        if message not in self._said:
            self._said.add(message)
            log.warning("autoscaler: %s", message)

    def retain(self, uids: Iterable[str]) -> None:
        """Forget every pod not in ``uids`` and end its watch (gone pods must not pile up
        over days; a paused operator holds no asks)."""
        keep = set(uids)
        for uid in [u for u in self._kept if u not in keep]:
            del self._kept[uid]
        if self._watches is not None:
            self._watches.retain(keep)

    async def router_pending(self, routers: Sequence[PodInfo]) -> dict[str, int]:
        """Held requests per ``"namespace/name"``, summed over every router."""
        urls = list(self.config.router_urls) + [
            f"http://{p.ip}:{self.config.router_port}/metrics" for p in routers if p.serving
        ]
        headers = self._router_headers() if urls else None
        merged: dict[str, int] = {}
        for url, got in zip(
            urls, await asyncio.gather(*(self._get(u, headers) for u in urls)), strict=True
        ):
            if got is None:
                continue
            if got[0] in (401, 403):
                self._say_once(f"router {url} refused the scrape ({got[0]}): check the token")
                continue
            if got[0] != 200:
                continue
            for voice, n in load.router_pending(got[1]).items():
                merged[voice] = merged.get(voice, 0) + n
        return merged
