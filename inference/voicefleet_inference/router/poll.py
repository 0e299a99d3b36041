"""Ask a pod for its load only when it has told us nothing lately.

Every answer a pod sends carries its load (``x-voicefleet-load``; the proxy records it),
so a pod this router talks to is never polled. The poller looks every ``interval_s`` for
serving pods whose last report is older than ``after_s`` (idle pods, or pods only other
routers use) and GETs their compact ``/load`` (a few dozen bytes) concurrently. A pod that
does not answer stays unheard: once its report is older than the fleet's staleness bound it
is *silent*, and the choice prefers every other pod (:mod:`.fleet`, :mod:`.choice`). A pod
that cannot be connected to is marked unreachable for a moment.

A pod whose server predates ``/load`` (404 during a rolling upgrade) is read from its
``/metrics`` page instead, through the same contract reader.

Polls go through aiohttp (its HTTP parser is in C) rather than the proxy's httpx client:
measured on this machine, a poll costs ~0.2 ms of CPU that way against ~1.7 ms, and idle
polling is what a router with thousands of pods spends its time on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import aiohttp

from voicefleet_api import load
from voicefleet_inference.router.fleet import Fleet
from voicefleet_inference.router.metrics import RouterMetrics

__all__ = ["LoadPoller"]

log = logging.getLogger("voicefleet.router.poll")

_DOWN_MARK_S: Final = 1.0


class LoadPoller:
    def __init__(
        self,
        fleet: Fleet,
        metrics: RouterMetrics,
        *,
        interval_s: float,
        after_s: float,
        timeout_s: float,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._interval_s = interval_s
        self._after_s = after_s
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._metrics_only: set[str] = set()
        fleet.on_pod_gone(lambda pod: self._metrics_only.discard(pod.key))

    def _client(self) -> aiohttp.ClientSession:
        """One session, made on first use (it needs the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                # Idle connections dropped before the pods' own keep-alive timeout (5 s).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        """One round: every serving pod not heard from within ``after_s``, concurrently."""
        targets = self._fleet.to_poll(self._fleet.clock(), self._after_s)
        if targets:
            await asyncio.gather(*(self._poll(key, url) for key, url in targets))

    async def _poll(self, key: str, base_url: str) -> None:
        sent_at = self._fleet.clock()
        legacy = key in self._metrics_only
        path = "/metrics" if legacy else load.LOAD_PATH
        try:
            async with self._client().get(base_url + path) as response:
                status = response.status
                text = await response.text() if status == 200 else ""
        except aiohttp.ClientConnectorError as exc:
            self._metrics.scrape_errors_total.inc()
            self._fleet.mark(key, down_s=_DOWN_MARK_S)
            log.debug("load poll of %s: cannot connect (%r)", key, exc)
            return
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            self._metrics.scrape_errors_total.inc()
            log.debug("load poll of %s failed: %r", key, exc)
            return
        if status == 404 and not legacy:
            self._metrics_only.add(key)  # an older server: read its /metrics from now on
            return
        report: load.PodLoad | None = None
        if status == 200:
            report = load.parse_metrics(text) if legacy else load.parse_load(text)
        if report is None:
            self._metrics.scrape_errors_total.inc()
            return
        self._metrics.load_reports_total.labels("poll").inc()
        self._fleet.record_load(key, sent_at, report)
