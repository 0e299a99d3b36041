"""The autoscaler loop's own cost: N voices x M pods scraped every second.

A child process serves N*M synthetic ``/metrics`` endpoints (aiohttp, one per loopback
address 127.0.1.x / 127.0.2.x …, each answering the server's three gauges plus ~60
lines of histogram noise, like a real pod). This process runs the operator's real
``Autoscaler.tick`` for every voice once per interval, as the kopf daemons would, with
pods as the pod index would hand them over. The Kubernetes side is a stand-in that
counts status writes (named as such: this measures scraping and deciding, not the API).

Reported: this process's CPU (user+sys seconds per wall second, i.e. cores), and the
tick latency per voice (scrape of its pods + decision), median and p99; and, run just
before in the same process against the same servers, a bare baseline that only GETs each
pod's /metrics on the same schedule (``cpu_vs_bare_scrape``: our loop's CPU over it).

    .venv/bin/python -m voicefleet_bench.autoscaler_loop --voices 100 --pods 3 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from aiohttp import web

from voicefleet_operator.autoscaler import Autoscaler, AutoscalerConfig
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


async def serve(n: int) -> None:
    runners = []
    for i in range(n):
        text = metrics_text(i)

        async def handler(_: web.Request, text: str = text) -> web.Response:
            return web.Response(text=text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, address(i), PORT).start()
        runners.append(runner)
    print("ready", flush=True)
    await asyncio.Event().wait()


class CountingKube:
    """Stand-in for ``k8s.Kube`` in this benchmark only: counts writes, sends nothing."""

    api: Any = None

    def __init__(self) -> None:
        self.status_writes = 0

    def patch_voice_status(self, namespace: str, name: str, status: Any) -> None:
        self.status_writes += 1

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Any) -> None:
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
    """Tick every voice once per interval; ``bare``: only GET each pod's /metrics (baseline)."""
    kube = CountingKube()
    scaler = Autoscaler(
        AutoscalerConfig(interval=interval, scrape_timeout=0.8, pod_port=PORT),
        kube,  # type: ignore[arg-type]
    )
    log = logging.getLogger("bench")
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    bodies = [voice_body(v, pods) for v in range(voices)]
    pod_lists = [[pod(v, k, v * pods + k) for k in range(pods)] for v in range(voices)]
    decided = 0

    async def loop(v: int) -> None:
        nonlocal decided
        await asyncio.sleep(interval * v / voices)  # daemons start spread out, as in kopf
        while time.monotonic() < stop:
            t0 = time.monotonic()
            if bare:
                await asyncio.gather(
                    *(scaler._get(f"http://{p.ip}:{PORT}/metrics") for p in pod_lists[v])
                )
            else:
                d = await scaler.tick(bodies[v], pod_lists[v], [], log)
                if d is not None and d.state.history:
                    decided += 1
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(v) for v in range(voices)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await scaler.close()
    latencies.sort()
    return {
        "voices": voices,
        "pods": voices * pods,
        "cpu_cores": cpu / wall,
        "ticks": len(latencies),
        "decided": decided,
        "tick_p50_ms": statistics.median(latencies) * 1000,
        "tick_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "status_writes": kube.status_writes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voices", type=int, default=100)
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicefleet_bench.autoscaler_loop",
            "--serve",
            str(args.voices * args.pods),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("metrics servers did not start")
        bare = asyncio.run(drive(args.voices, args.pods, args.seconds, args.interval, bare=True))
        result = asyncio.run(drive(args.voices, args.pods, args.seconds, args.interval))
        result["bare_cpu_cores"] = bare["cpu_cores"]
        result["bare_tick_p50_ms"] = bare["tick_p50_ms"]
        result["cpu_vs_bare_scrape"] = result["cpu_cores"] / max(bare["cpu_cores"], 1e-9)
    finally:
        child.terminate()
        child.wait(timeout=10)
    result["cpus_on_machine"] = os.cpu_count() or 0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
