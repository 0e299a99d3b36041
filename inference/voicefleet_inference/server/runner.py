"""Build the server from :class:`Settings`, and run it under uvicorn with graceful drain.

Usable from Python (benchmarks, tests) as well as from ``voicefleet-server``::

    service = build_service(settings)          # nothing started yet
    exit_code = asyncio.run(serve(settings, service))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from voicefleet_api.termination import MODEL_LOAD_FAILED
from voicefleet_inference.connections import (
    ConnectionLimits,
    limit_repeated_logs,
    uvicorn_options,
)
from voicefleet_inference.engines.base import Engine
from voicefleet_inference.metrics import Metrics, create_metrics
from voicefleet_inference.scheduler import EngineFactory, Scheduler, SchedulerConfig
from voicefleet_inference.server.app import create_app
from voicefleet_inference.server.drain import DrainingServer
from voicefleet_inference.server.lastwords import write_last_words
from voicefleet_inference.settings import Settings

__all__ = ["Service", "build_service", "engine_factory", "scheduler_config", "serve"]

log = logging.getLogger("voicefleet.server")


@dataclass(frozen=True, slots=True)
class Service:
    """Everything one server process is made of, wired but not started."""

    settings: Settings
    metrics: Metrics
    scheduler: Scheduler
    app: FastAPI


def engine_factory(settings: Settings) -> EngineFactory:
    """A factory the scheduler calls in each worker thread: one engine per thread.

    Successive calls take ``settings.devices`` in turn, so the workers of a pod with
    several GPUs spread one engine per device (round robin when workers outnumber them).
    """
    turns = itertools.count()
    lock = threading.Lock()

    def create() -> Engine:
        from voicefleet_inference.engines.registry import create_engine  # deferred: onnxruntime

        with lock:
            turn = next(turns)
        device = settings.devices[turn % len(settings.devices)]
        return create_engine(
            settings.engine,
            settings.model,
            device,
            settings.threads_per_worker,
            calibration_cache=Path(settings.calibration_cache)
            if settings.calibration_cache
            else None,
        )

    return create


def scheduler_config(settings: Settings) -> SchedulerConfig:
    return SchedulerConfig(
        workers=settings.workers,
        max_queue=settings.max_queue,
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_s,
        request_timeout_s=settings.request_timeout_s,
        wait_target_s=settings.priority_wait_target_s,
        reserved_workers=settings.priority_reserved_workers,
    )


def build_service(settings: Settings, factory: EngineFactory | None = None) -> Service:
    """Metrics, scheduler and app for ``settings``; ``factory`` replaces the real engines."""
    metrics = create_metrics()
    scheduler = Scheduler(factory or engine_factory(settings), scheduler_config(settings), metrics)
    return Service(settings, metrics, scheduler, create_app(settings, scheduler, metrics))


async def _watch_load(
    service: Service, server: DrainingServer, failed: list[str], last_words: Path | None
) -> None:
    started = time.monotonic()
    try:
        info = await service.scheduler.wait_loaded()
    except RuntimeError as exc:
        log.error("%s; exiting", exc)
        write_last_words(last_words, MODEL_LOAD_FAILED, f"{exc} (engine {service.settings.engine})")
        failed.append(str(exc))
        server.should_exit = True
        return
    log.info(
        "ready: %s (%d Hz%s) on %s, %d worker(s) loaded in %.1fs",
        info.model_name,
        info.sample_rate,
        f", speakers: {', '.join(info.speakers)}" if info.speakers else "",
        info.device,
        service.settings.workers,
        time.monotonic() - started,
    )


async def serve(
    settings: Settings, service: Service | None = None, *, last_words: Path | None = None
) -> int:
    """Run until drained after SIGTERM/SIGINT (0), or until the engine fails to load (1).

    A load failure is also written to ``last_words`` (the termination-message file) when
    given, so the pod's status says why it exited.
    """
    service = service or build_service(settings)
    config = uvicorn.Config(
        service.app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="off",
        timeout_graceful_shutdown=5,
        **uvicorn_options(
            ConnectionLimits(
                max_connections=settings.max_connections,
                header_timeout_s=settings.header_timeout_s,
                keep_alive_s=settings.keep_alive_timeout_s,
            )
        ),
    )
    limit_repeated_logs()
    server = DrainingServer(config, service.scheduler, settings.drain_grace_s)
    log.info(
        "voicefleet-server starting on http://%s:%d: %s",
        settings.host,
        settings.port,
        settings.summary(),
    )
    service.scheduler.start()
    failed: list[str] = []
    watcher = asyncio.create_task(_watch_load(service, server, failed, last_words))
    try:
        await server.serve()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        service.scheduler.stop()
    return 1 if failed or not server.started else 0
