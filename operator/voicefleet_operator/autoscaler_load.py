"""Reading load for the autoscaler: the pods' compact ``/load`` and the routers' held requests.

Every tick the loop needs three numbers per serving pod (work-seconds, queue depth,
requests in flight) and, per voice, the requests the routers hold because no replica
could take them. Both are parsed by :mod:`voicefleet_api.load`, the one reader of the
load contract, so the router and the autoscaler cannot disagree about what a pod said.

- **Pods**: ``GET /load``, a few dozen bytes instead of a rendered Prometheus page; pods
  of a voice with a first-audio target are read from ``/metrics`` instead, whose service
  counters (``load.parse_counters``) the queueing model is fitted to. A pod
  that answers 404 there is an older server: it is read from ``/metrics`` from then on
  (remembered per pod uid), so a rolling upgrade never blinds the autoscaler. A pod
  that does not answer keeps its last sample until it is ``stale_after`` old, then
  counts as "not answered" (the decision treats that as unknown, never as idle).
- **Routers** (discovery): the ``--router-metrics-url`` list plus the serving pods of the
  ``--router-pod-selector`` index (pods in ``--router-namespace`` only), each read once per
  tick for all voices, and merged. Their ``/metrics`` is read with the bearer token of
  ``--router-token`` (the chart's generated Secret) or ``--router-token-file``: the routers
  refuse anyone else.

All requests share one aiohttp session with a bounded connection pool, so a tick over
thousands of pods queues its requests instead of opening thousands of sockets at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from voicefleet_api import load
from voicefleet_api.labels import SERVER_PORT
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
    stale_after: float = 5.0
    pod_port: int = SERVER_PORT
    router_urls: tuple[str, ...] = ()
    router_port: int = SERVER_PORT
    router_token: str | None = None
    """The routers' ``/metrics`` bearer token; None (and no file): no Authorization header."""
    router_token_file: Path | None = None
    """Or a file holding it, read at every scrape (a rotated Secret is picked up)."""
    max_connections: int = 256
    """Concurrent requests of one tick (a fleet's pods are read in waves of this many)."""


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
    _session: aiohttp.ClientSession | None = None
    _kept: dict[str, _Kept] = field(default_factory=dict)
    _metrics_only: set[str] = field(default_factory=set)
    _said: set[str] = field(default_factory=set)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(
                    limit=self.config.max_connections, ttl_dns_cache=300
                ),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str] | None:
        """``(status, body)``, or None when the peer did not answer in time."""
        try:
            async with self.session().get(url, headers=headers) as rsp:
                return rsp.status, await rsp.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def _read_pod(self, pod: PodInfo, detailed: bool) -> PodSample:
        base = f"http://{pod.ip}:{self.config.pod_port}"
        if detailed:
            got = await self._get(base + "/metrics")
            if got is None or got[0] != 200:
                return PodSample(None)
            return _sample(load.parse_metrics(got[1]), load.parse_counters(got[1]))
        return _sample(await self._read_load(pod, base))

    async def _read_load(self, pod: PodInfo, base: str) -> load.PodLoad | None:
        if pod.uid not in self._metrics_only:
            got = await self._get(base + load.LOAD_PATH)
            if got is None:
                return None
            if got[0] == 200:
                return load.parse_load(got[1].strip())
            if got[0] != 404:
                return None
            self._metrics_only.add(pod.uid)
        got = await self._get(base + "/metrics")
        return load.parse_metrics(got[1]) if got is not None and got[0] == 200 else None

    async def pod_samples(
        self, pods: Sequence[PodInfo], now: float, detailed: Collection[str] = ()
    ) -> list[PodSample]:
        """One sample per pod, in order (a silent pod: its recent sample, else unanswered).

        Pods whose uid is in ``detailed`` are read from ``/metrics`` with their service
        counters (a kept sample carries none: counters are never reused).
        """
        found = await asyncio.gather(*(self._read_pod(p, p.uid in detailed) for p in pods))
        out = []
        for pod, sample in zip(pods, found, strict=True):
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
        """Forget every pod not in ``uids`` (gone pods must not pile up over days)."""
        keep = set(uids)
        for uid in [u for u in self._kept if u not in keep]:
            del self._kept[uid]
        self._metrics_only &= keep

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
