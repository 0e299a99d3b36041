"""What the router costs: added latency at low rate, CPU per request, requests/s per core.

One simulated pod with a speed factor so large that synthesis takes ~0 s (so what is
measured is HTTP and the router, not the engine), and one router in front of it.

1. Low rate, one request at a time, direct and through the router *interleaved* (so drift
   on a shared machine hits both alike): median latency of each and the difference.
2. Capacity: ``--concurrency`` clients in a closed loop through the router for
   ``--seconds``; requests completed divided by the router process's CPU seconds gives
   requests per second per core (the load generator and the pod use other CPU).

    .venv/bin/python -m voicefleet_bench.router_overhead           # writes docs/router.md
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx

from voicefleet_bench import router_common
from voicefleet_bench.machine import machine_note
from voicefleet_bench.procs import cpu_seconds, exit_cleanly_on_sigterm, free_port, processes
from voicefleet_bench.report import publish

TEXT = "Hello there."


def _body(model: str) -> dict[str, object]:
    return {"model": model, "input": TEXT, "voice": "default", "response_format": "pcm"}


async def low_rate(direct: str, routed: str, n: int) -> tuple[list[float], list[float]]:
    async with httpx.AsyncClient(timeout=30) as client:
        for url, model in ((direct, "tts-1"), (routed, "joe")):
            for _ in range(20):  # warm connections on both paths
                await client.post(url + "/v1/audio/speech", json=_body(model))
        d, r = [], []
        for i in range(n):
            pairs = [(direct, "tts-1", d), (routed, "joe", r)]
            if i % 2:
                pairs.reverse()
            for url, model, sink in pairs:
                started = time.perf_counter()
                response = await client.post(url + "/v1/audio/speech", json=_body(model))
                sink.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            await asyncio.sleep(0.02)  # low rate: ~20 pairs/s at most
    return d, r


async def capacity(routed: str, concurrency: int, seconds: float) -> int:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency * 2)
    done = 0
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.post(routed + "/v1/audio/speech", json=_body("joe"))
                if response.status_code == 200:
                    done += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()

    pod_port, router_port = free_port(), free_port()
    pod = router_common.simulated_pod(pod_port, speed_factor=10_000, jitter=0.0, seed=1)
    added, direct_p50, routed_p50, cpu_per_request, per_core, raw_rate = [], [], [], [], [], []
    with processes([pod]) as ((_, pod_url),):
        router = router_common.router(router_port, [pod_url])
        with processes([router]) as ((router_proc, router_url),):
            for round_no in range(args.rounds):
                cpu0 = cpu_seconds(router_proc.pid)
                d, r = asyncio.run(low_rate(pod_url, router_url, args.requests))
                cpu1 = cpu_seconds(router_proc.pid)
                started = time.perf_counter()
                done = asyncio.run(capacity(router_url, args.concurrency, args.seconds))
                elapsed = time.perf_counter() - started
                cpu2 = cpu_seconds(router_proc.pid)
                direct_p50.append(statistics.median(d))
                routed_p50.append(statistics.median(r))
                added.append(routed_p50[-1] - direct_p50[-1])
                # low-rate CPU includes the scraper's share over the same wall time
                cpu_per_request.append((cpu1 - cpu0) / (args.requests + 20))
                per_core.append(done / max(cpu2 - cpu1, 1e-9))
                raw_rate.append(done / elapsed)
                print(
                    f"round {round_no + 1}: direct p50 {direct_p50[-1] * 1000:.2f} ms, routed p50 "
                    f"{routed_p50[-1] * 1000:.2f} ms, added {added[-1] * 1000:.2f} ms, router CPU "
                    f"{cpu_per_request[-1] * 1000:.2f} ms/request, {per_core[-1]:.0f} req/s per "
                    f"router core ({raw_rate[-1]:.0f} req/s reached)",
                    flush=True,
                )
    med = statistics.median
    lines = [
        "Command: `.venv/bin/python -m voicefleet_bench.router_overhead` (what `make bench` runs): "
        f"one simulated pod with speed factor 10000 (synthesis ≈ 0 s, `pcm` answers), "
        f"{args.requests} requests one at a time direct and through the router, interleaved; "
        f"then {args.concurrency} closed-loop clients through the router for {args.seconds:g} s; "
        f"{args.rounds} round(s), medians over rounds. {machine_note()}.",
        "",
        "| figure | median |",
        "|---|---|",
        f"| p50 latency direct to the pod | {med(direct_p50) * 1000:.2f} ms |",
        f"| p50 latency through the router | {med(routed_p50) * 1000:.2f} ms |",
        f"| **added p50** (target ≤ 2 ms) | **{med(added) * 1000:.2f} ms** "
        f"({'met' if med(added) <= 0.002 else 'NOT met'}) |",
        "| router CPU per request at low rate (scraping included) | "
        f"{med(cpu_per_request) * 1000:.2f} ms |",
        f"| router capacity: requests/s per core of router CPU | {med(per_core):.0f} |",
        "| requests/s reached (router, pod and load generator sharing the cores) | "
        f"{med(raw_rate):.0f} |",
    ]
    publish("\n".join(lines), router_common.DOC, "overhead", write=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
