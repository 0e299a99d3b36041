"""The autoscaler loop's own cost: N voices x M pods read every second.

A child process serves N*M synthetic pods (aiohttp, one per loopback address 127.0.1.x /
127.0.2.x ..., each answering the compact ``/load`` and a ``/metrics`` page with the
server's three gauges plus ~40 lines of histograms, like a real pod; with
``--metrics-only`` ``/load`` is a 404, as on a server older than the compact endpoint).
This process runs the operator's real single loop (``Autoscaler.tick`` over every voice
once per interval: read, ``decide``, status bookkeeping) on the voice and pod indexes as
kopf would hand them over. The Kubernetes side is a stand-in that counts writes (named
as such: this measures reading and deciding, not the API).

Reported: this process's CPU (user+sys seconds per wall second, i.e. cores), the tick
latency (all voices), median and p99; and, run just before in the same process against
the same servers, a bare baseline that only GETs each pod's ``/metrics`` on the same
schedule (``cpu_vs_bare_scrape``: our loop's CPU over it).

    .venv/bin/python -m voicefleet_bench.autoscaler_loop --voices 100 --pods 3 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from aiohttp import web

from voicefleet_api import load
from voicefleet_api.scale import ScaleResult
from voicefleet_operator.autoscaler import Autoscaler, AutoscalerConfig
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig
from voicefleet_operator.autoscaler_peering import NeverPaused
from voicefleet_operator.autoscaler_status import VoiceView, voice_view
from voicefleet_operator.pods import PodInfo

PORT = 18080


def address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def metrics_text(i: int) -> str:
    lines = [
        "# TYPE voicefleet_queue_depth gauge",
        f'voicefleet_queue_depth{{voice="v"}} {i % 3}',
        "# TYPE voicefleet_requests_in_flight gauge",
        'voicefleet_requests_in_flight{voice="v"} 1',
        "# TYPE voicefleet_queue_work_seconds gauge",
        f'voicefleet_queue_work_seconds{{voice="v"}} {1.5 + (i % 5) * 0.25}',
    ]
    for name in ("request_duration_seconds", "time_to_first_audio_seconds", "batch_size"):
        lines.append(f"# TYPE voicefleet_{name} histogram")
        for le in ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"):
            lines.append(f'voicefleet_{name}_bucket{{voice="v",le="{le}"}} 17')
        lines.append(f'voicefleet_{name}_sum{{voice="v"}} 9.5')
        lines.append(f'voicefleet_{name}_count{{voice="v"}} 17')
    return "\n".join(lines) + "\n"


async def serve(n: int, metrics_only: bool) -> None:
    runners = []
    for i in range(n):
        text = metrics_text(i)
        compact = load.format_load(load.PodLoad(1.5 + (i % 5) * 0.25, i % 3, 1, seq=i + 1))

        async def handler(_: web.Request, text: str = text) -> web.Response:
            return web.Response(text=text, content_type="text/plain")

        async def compact_handler(_: web.Request, compact: str = compact) -> web.Response:
            if metrics_only:
                return web.Response(status=404)
            return web.Response(text=compact, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", handler)
        app.router.add_get(load.LOAD_PATH, compact_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, address(i), PORT).start()
        runners.append(runner)
    print("ready", flush=True)
    await asyncio.Event().wait()


class CountingActuator:
    """Stand-in for the loop's ``KubeActuator`` in this benchmark only: counts, sends nothing."""

    def __init__(self) -> None:
        self.status_writes = 0
        self.scales = 0

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult:
        self.scales += 1
        return ScaleResult(replicas, replicas, replicas)

    def patch_status(self, namespace: str, name: str, patch: Any) -> None:
        self.status_writes += 1

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None:
        pass

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        pass


def voice_body(v: int, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "bench", "name": f"v{v}", "uid": f"u{v}", "generation": 1},
        "spec": {
            "replicas": replicas,
            "model": {"bundled": "en_US-joe-medium"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetWorkSecondsPerReplica": 10},
        },
        "status": {},
    }


def pod(v: int, k: int, i: int) -> PodInfo:
    return PodInfo(
        "bench",
        f"v{v}-{k}",
        f"v{v}",
        f"u{v}-{k}",
        address(i),
        "Running",
        True,
        None,
        "2026-01-01T00:00:00Z",
        None,
    )


async def drive(
    voices: int, pods: int, seconds: float, interval: float, bare: bool = False
) -> dict[str, float]:
    """Tick all voices once per interval; ``bare``: only GET each pod's /metrics (baseline)."""
    actuator = CountingActuator()
    source = HttpLoadSource(LoadConfig(timeout=0.8, pod_port=PORT))
    scaler = Autoscaler(
        AutoscalerConfig(interval=interval), actuator=actuator, load=source, gate=NeverPaused()
    )
    views = [voice_view(voice_body(v, pods)) for v in range(voices)]
    voice_index = {view.key: [view] for view in views}
    pod_index = {
        ("bench", f"v{v}"): [pod(v, k, v * pods + k) for k in range(pods)] for v in range(voices)
    }
    every_pod = [p for ps in pod_index.values() for p in ps]
    latencies: list[float] = []
    decided = 0
    stop = time.monotonic() + seconds
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() < stop:
        t0 = time.monotonic()
        if bare:
            await asyncio.gather(*(source._get(f"http://{p.ip}:{PORT}/metrics") for p in every_pod))
        else:
            decisions = await scaler.tick(voice_index, pod_index)
            decided += sum(1 for d in decisions.values() if d.state.history)
        latencies.append(time.monotonic() - t0)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await source.close()
    latencies.sort()
    return {
        "voices": voices,
        "pods": voices * pods,
        "cpu_cores": cpu / wall,
        "ticks": len(latencies),
        "voice_decisions": decided,
        "tick_p50_ms": statistics.median(latencies) * 1000,
        "tick_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "status_writes": actuator.status_writes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voices", type=int, default=100)
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="pods answer /load with 404 (older servers): the loop reads /metrics instead",
    )
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve, args.metrics_only))
        return 0
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicefleet_bench.autoscaler_loop",
            "--serve",
            str(args.voices * args.pods),
            *(["--metrics-only"] if args.metrics_only else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("metrics servers did not start")
        bare = asyncio.run(drive(args.voices, args.pods, args.seconds, args.interval, bare=True))
        result: dict[str, Any] = asyncio.run(
            drive(args.voices, args.pods, args.seconds, args.interval)
        )
        result["bare_cpu_cores"] = bare["cpu_cores"]
        result["bare_tick_p50_ms"] = bare["tick_p50_ms"]
        result["cpu_vs_bare_scrape"] = result["cpu_cores"] / max(bare["cpu_cores"], 1e-9)
    finally:
        child.terminate()
        child.wait(timeout=10)
    result["read"] = "/metrics" if args.metrics_only else load.LOAD_PATH
    result["cpus_on_machine"] = os.cpu_count() or 0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
