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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import httpx

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
        client: httpx.AsyncClient,
        metrics: RouterMetrics,
        *,
        interval_s: float,
        after_s: float,
        timeout_s: float,
    ) -> None:
        self._fleet = fleet
        self._client = client
        self._metrics = metrics
        self._interval_s = interval_s
        self._after_s = after_s
        self._timeout_s = timeout_s
        self._metrics_only: set[str] = set()
        fleet.on_pod_gone(lambda pod: self._metrics_only.discard(pod.key))

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
            response = await self._client.get(base_url + path, timeout=self._timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._metrics.scrape_errors_total.inc()
            self._fleet.mark(key, down_s=_DOWN_MARK_S)
            log.debug("load poll of %s: cannot connect (%r)", key, exc)
            return
        except httpx.HTTPError as exc:
            self._metrics.scrape_errors_total.inc()
            log.debug("load poll of %s failed: %r", key, exc)
            return
        if response.status_code == 404 and not legacy:
            self._metrics_only.add(key)  # an older server: read its /metrics from now on
            return
        report: load.PodLoad | None = None
        if response.status_code == 200:
            text = response.text
            report = load.parse_metrics(text) if legacy else load.parse_load(text)
        if report is None:
            self._metrics.scrape_errors_total.inc()
            return
        self._metrics.load_reports_total.labels("poll").inc()
        self._fleet.record_load(key, sent_at, report)
