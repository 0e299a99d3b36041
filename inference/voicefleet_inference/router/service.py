"""Wire the router from its settings, and run it under uvicorn.

Usable from Python (tests, benchmarks) as well as from ``voicefleet-router``::

    service = build_router(settings)        # nothing started, no thread, no socket
    await service.start(api_client)         # discovery (watch or static) and the load watch
    ...                                     # serve service.app with any ASGI server
    await service.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from voicefleet_inference.connections import (
    ConcurrencyLimit,
    ConnectionLimits,
    WholeBodyForHttp10,
    limit_repeated_logs,
    uvicorn_options,
)
from voicefleet_inference.router.app import create_app
from voicefleet_inference.router.discovery import KubeDiscovery, parse_static
from voicefleet_inference.router.fleet import Fleet
from voicefleet_inference.router.metrics import RouterMetrics, create_metrics
from voicefleet_inference.router.poll import LoadPoller
from voicefleet_inference.router.proxy import Proxy
from voicefleet_inference.router.settings import RouterSettings

__all__ = ["RouterService", "build_router", "kube_api_client", "serve"]

log = logging.getLogger("voicefleet.router")


@dataclass
class RouterService:
    settings: RouterSettings
    fleet: Fleet
    metrics: RouterMetrics
    proxy: Proxy
    poller: LoadPoller
    app: ASGIApp
    discovery: KubeDiscovery | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, api_client: Any | None = None) -> None:
        """Static upstreams, or a watch through ``api_client``; then the load poller.

        Static pods are polled once before this returns, so the first requests are routed
        on the pods' own load rather than on nothing.
        """
        if self.settings.static_upstreams:
            for entry in parse_static(
                self.settings.static_upstreams,
                namespace=self.settings.namespace,
                cold_start_timeout_s=self.settings.cold_start_timeout_s,
            ):
                self.fleet.upsert_voice(entry.voice)
                self.fleet.upsert_pod(entry.pod)
            self.fleet.synced = True
            await self.poller.poll_once()
        else:
            if api_client is None:
                raise ValueError("a Kubernetes API client is needed without static upstreams")
            self.discovery = KubeDiscovery(
                api_client, self.fleet, asyncio.get_running_loop(), self.settings.namespaces
            )
            self.discovery.start()
        self._tasks.append(asyncio.create_task(self.poller.run(), name="load-poller"))

    def server_config(self, host: str, port: int, **extra: Any) -> uvicorn.Config:
        """The uvicorn configuration that serves this router with its connection limits."""
        limits = ConnectionLimits(
            max_connections=self.settings.max_connections,
            header_timeout_s=self.settings.header_timeout_s,
            keep_alive_s=self.settings.keep_alive_timeout_s,
        )
        return uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            # The router reads no client address, and X-Forwarded-* from a trusted peer
            # would cost a copy of every request's headers (uvicorn's default middleware).
            proxy_headers=False,
            **uvicorn_options(limits, "httptools"),
            **extra,
        )

    async def stop(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.poller.close()
        await self.proxy.close()


def build_router(
    settings: RouterSettings,
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    rng: random.Random | None = None,
) -> RouterService:
    """Everything the router is made of, wired but not started."""
    fleet = Fleet(settings.namespace, stale_after_s=settings.stale_after_s)
    metrics = create_metrics()
    proxy = Proxy(
        fleet,
        metrics,
        connect_timeout_s=settings.connect_timeout_s,
        upstream_timeout_s=settings.upstream_timeout_s,
        policy=settings.policy,
        max_attempts=settings.max_attempts,
        max_held_per_voice=settings.max_held_per_voice,
        max_held_bytes_per_voice=settings.max_held_bytes_per_voice,
        max_held_bytes=settings.max_held_bytes,
        sample_above=settings.sample_above,
        rng=rng,
        pod_token_key=(
            settings.pod_token_key.get_secret_value() if settings.pod_token_key else None
        ),
    )
    poller = LoadPoller(
        fleet,
        metrics,
        interval_s=settings.poll_interval_s,
        after_s=settings.poll_after_s,
        timeout_s=settings.stale_after_s,
        wait_s=settings.load_wait_s,
        connect_timeout_s=settings.connect_timeout_s,
    )
    fleet.on_pod_gone(lambda pod: metrics.forget_pod(str(pod.voice), pod.name))
    service = RouterService(settings, fleet, metrics, proxy, poller, _not_built)

    def discovery_error() -> str | None:
        return service.discovery.last_error if service.discovery else None

    app = create_app(
        fleet,
        proxy,
        metrics,
        token=token,
        metrics_token=metrics_token,
        discovery_error=discovery_error,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_buffered_body_bytes=settings.max_buffered_body_bytes,
    )
    service.app = ConcurrencyLimit(
        WholeBodyForHttp10(app), max_requests=settings.max_concurrent_requests
    )
    return service


async def _not_built(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the router's app is built by build_router")


def kube_api_client(settings: RouterSettings) -> Any:
    """An API client: the kubeconfig named, else in-cluster, else ``~/.kube/config``."""
    from kubernetes import client, config

    if settings.kubeconfig is not None:
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(settings.kubeconfig)
        )
    try:
        configuration = client.Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return client.ApiClient(configuration)
    except config.ConfigException:
        return config.new_client_from_config()  # type: ignore[no-untyped-call]


async def serve(
    settings: RouterSettings, token: str | None, metrics_token: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT (exit 0)."""
    service = build_router(settings, token=token, metrics_token=metrics_token)
    api_client = None if settings.static_upstreams else kube_api_client(settings)
    await service.start(api_client)
    limit_repeated_logs()
    server = uvicorn.Server(
        service.server_config(
            settings.host,
            settings.port,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=30,
        )
    )
    log.info(
        "voicefleet-router on http://%s:%d: %s", settings.host, settings.port, settings.summary()
    )
    try:
        await server.serve()
    finally:
        await service.stop()
    return 0 if server.started else 1
