"""Run the router in the test's own event loop, in front of real server processes.

The router is built exactly as ``voicefleet-router`` builds it (``build_router``) and served
by a real uvicorn on a loopback port; tests talk to it over real HTTP. Running it
in-process lets a test change the fleet directly (a pod appearing) where no Kubernetes
watch is involved: that is the seam, the rest is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from serverprocs import free_port

from voicefleet_bench.loadgen import series_value as metric_value  # noqa: F401  (for the router tests)
from voicefleet_inference.router.service import RouterService, build_router
from voicefleet_inference.router.settings import RouterSettings


@contextlib.asynccontextmanager
async def running_router(
    settings: RouterSettings,
    *,
    api_client: Any | None = None,
    token: str | None = None,
    metrics_token: str | None = None,
    seed: int = 0,
) -> AsyncIterator[tuple[RouterService, str]]:
    """A started router and its base URL; stopped (discovery, scraper, server) on exit."""
    port = free_port()
    service = build_router(
        settings, token=token, metrics_token=metrics_token, rng=random.Random(seed)
    )
    await service.start(api_client)
    server = uvicorn.Server(service.server_config("127.0.0.1", port, access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await service.stop()


async def router_metrics(base_url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{base_url}/metrics")).text
