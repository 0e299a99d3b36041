"""Read each ready pod's queue gauges every 100-250 ms into the fleet's load view.

The router's own bookkeeping only knows what *this* router sent. A scrape adds what other
router replicas and direct callers sent, and corrects the cost model's estimate with the
pod's own (calibrated) figure. All pods are scraped concurrently; a scrape that fails or
is slow is simply missing, and the pod's scraped view ages out after ``stale_after_s``.
A pod that was marked unreachable and answers a scrape is reachable again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from voicefleet_api import load
from voicefleet_inference.router.fleet import Fleet
from voicefleet_inference.router.metrics import RouterMetrics

__all__ = ["Scraper"]

log = logging.getLogger("voicefleet.router.scrape")


class Scraper:
    def __init__(
        self,
        fleet: Fleet,
        client: httpx.AsyncClient,
        metrics: RouterMetrics,
        interval_s: float,
    ) -> None:
        self._fleet = fleet
        self._client = client
        self._metrics = metrics
        self._interval_s = interval_s

    async def run(self) -> None:
        """Scrape forever (cancel the task to stop)."""
        while True:
            started = time.monotonic()
            await self.scrape_once()
            await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))

    async def scrape_once(self) -> None:
        targets = [
            (key, state.info.base_url)
            for key, state in self._fleet.pods.items()
            if state.info.base_url and state.info.ready and not state.info.deleting
        ]
        if targets:
            await asyncio.gather(*(self._scrape(key, url) for key, url in targets))

    async def _scrape(self, key: str, base_url: str) -> None:
        sent_at = self._fleet.clock()
        try:
            response = await self._client.get(
                f"{base_url}/metrics", timeout=max(0.05, self._interval_s * 2)
            )
        except httpx.HTTPError as exc:
            self._metrics.scrape_errors_total.inc()
            log.debug("scrape of %s failed: %r", key, exc)
            return
        gauges = load.parse_metrics(response.text) if response.status_code == 200 else None
        if gauges is None:
            self._metrics.scrape_errors_total.inc()
            return
        self._fleet.record_scrape(key, sent_at, gauges.work_s, gauges.depth, gauges.in_flight)
