"""Routing policies side by side on one Poisson trace, through the real router.

Four simulated pods (the joe voice's cost model, ``--speed-factor`` times faster, with
log-normal noise so the router's estimates are estimates), one arrival trace (80 % one
sentence, 20 % paragraph, Poisson at ``--load`` of the pods' total capacity), sent through
``voicefleet-router`` once per policy: round-robin, random, least-request, jsq-work. The
same trace also runs through a perfect-information queue simulation (exact service
times, each request to the pod with the least remaining work), which bounds what any
router could do. Latency is arrival to last byte.

    .venv/bin/python -m voicefleet_bench.router_policies            # writes docs/router.md + PNG

Only loopback traffic; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass

import httpx

from voicefleet_bench import REPO, router_common
from voicefleet_bench.machine import machine_note
from voicefleet_bench.procs import exit_cleanly_on_sigterm, free_port, processes
from voicefleet_bench.report import publish
from voicefleet_bench.router_common import PARAGRAPH, SENTENCES
from voicefleet_bench.stats import percentile
from voicefleet_inference.cost import REFERENCE_COST

POLICIES = ("round-robin", "random", "least-request", "jsq-work")
PNG = REPO / "docs" / "router-latency-cdf.png"


@dataclass(frozen=True)
class Arrival:
    at: float
    text: str


def trace(rate: float, duration_s: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        long = rng.random() < 0.2
        out.append(Arrival(t, PARAGRAPH if long else rng.choice(SENTENCES)))


def mean_cost(speed_factor: float) -> float:
    costs = [REFERENCE_COST.estimate(s) for s in SENTENCES]
    return (0.8 * statistics.fmean(costs) + 0.2 * REFERENCE_COST.estimate(PARAGRAPH)) / speed_factor


def perfect_information(
    arrivals: list[Arrival], pods: int, speed: float, jitter: float, seed: int
) -> list[float]:
    """Exact service times, each arrival to the pod that frees up first (FIFO per pod)."""
    rng = random.Random(seed)
    free_at = [0.0] * pods
    heapq.heapify(free_at)
    latencies = []
    for a in arrivals:
        service = REFERENCE_COST.estimate(a.text) / speed
        if jitter > 0:
            service *= math.exp(rng.gauss(-jitter * jitter / 2, jitter))
        start = max(a.at, heapq.heappop(free_at))
        heapq.heappush(free_at, start + service)
        latencies.append(start + service - a.at)
    return latencies


async def replay(url: str, arrivals: list[Arrival]) -> tuple[list[float], int]:
    """Send each arrival at its time (open loop); latency to the last byte, and failures."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512, keepalive_expiry=2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        # warm the connection pool and the router (not measured)
        await asyncio.gather(
            *(client.post(url + "/v1/audio/speech", json=_body("Hi.")) for _ in range(8))
        )
        latencies: list[float] = []
        failures = 0
        origin = time.perf_counter() + 0.2

        async def one(a: Arrival) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, origin + a.at - time.perf_counter()))
            sent = origin + a.at
            response = await client.post(url + "/v1/audio/speech", json=_body(a.text))
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                failures += 1

        await asyncio.gather(*(one(a) for a in arrivals))
    return latencies, failures


def _body(text: str) -> dict[str, object]:
    return {"model": "joe", "input": text, "voice": "default", "response_format": "wav"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--speed-factor", type=float, default=0.5)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument(
        "--audio-seconds-per-char",
        type=float,
        default=0.005,
        help="audio the simulated pods return (the real voice: 0.057); less audio keeps the "
        "pods' encoding CPU from blurring a queueing benchmark on a small machine",
    )
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=POLICIES,
        default=list(POLICIES),
        help="run only these (a side-by-side check of one policy; the table needs all four)",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; leave docs/ (table and PNG) alone"
    )
    args = parser.parse_args()
    policies = tuple(p for p in POLICIES if p in args.policies)
    if policies != POLICIES and not args.no_doc:
        parser.error("the docs table needs every policy: add --no-doc to run a subset")
    exit_cleanly_on_sigterm()

    rate = args.load * args.pods / mean_cost(args.speed_factor)
    arrivals = trace(rate, args.duration_s, args.seed)
    n_long = sum(1 for a in arrivals if a.text == PARAGRAPH)
    print(
        f"trace: {len(arrivals)} requests ({n_long} paragraphs) at {rate:.1f}/s "
        f"over {args.duration_s:g} s",
        flush=True,
    )
    ports = [free_port() for _ in range(args.pods)]
    pods = [
        router_common.simulated_pod(
            p,
            speed_factor=args.speed_factor,
            jitter=args.jitter,
            seed=args.seed + i,
            audio_seconds_per_char=args.audio_seconds_per_char,
        )
        for i, p in enumerate(ports)
    ]
    results: dict[str, list[tuple[list[float], int]]] = {p: [] for p in policies}
    with processes(pods) as started:
        upstreams = [url for _, url in started]
        for round_no in range(args.rounds):
            order = policies if round_no % 2 == 0 else tuple(reversed(policies))
            for policy in order:
                port = free_port()
                with processes([router_common.router(port, upstreams, "--policy", policy)]) as (r,):
                    latencies, failures = asyncio.run(replay(r[1], arrivals))
                results[policy].append((latencies, failures))
                print(
                    f"round {round_no + 1} {policy:>13}: "
                    f"p50 {percentile(latencies, 0.5) * 1000:7.0f} ms "
                    f"p99 {percentile(latencies, 0.99) * 1000:7.0f} ms  failures {failures}",
                    flush=True,
                )
                time.sleep(1.0)  # let the pods drain completely between policies
    perfect = perfect_information(arrivals, args.pods, args.speed_factor, args.jitter, args.seed)

    def med(policy: str, q: float) -> float:
        return statistics.median(percentile(lat, q) for lat, _ in results[policy])

    rows = []
    for policy in policies:
        fails = sum(f for _, f in results[policy])
        rows.append((policy, med(policy, 0.5), med(policy, 0.99), fails))
    if policies != POLICIES:
        for name, p50, p99v, fails in rows:
            print(f"{name}: p50 {p50 * 1000:.0f} ms, p99 {p99v * 1000:.0f} ms, {fails} failed")
        print(f"{machine_note()}.")
        return 0
    p99 = {name: p for name, _, p, _ in rows}
    jsq = p99["jsq-work"]
    vs_rr, vs_lr = jsq / p99["round-robin"], jsq / p99["least-request"]
    perfect_p50, perfect_p99 = percentile(perfect, 0.5), percentile(perfect, 0.99)
    lines = [
        f"Command: `.venv/bin/python -m voicefleet_bench.router_policies` "
        "(what `make bench` runs): "
        f"{args.pods} simulated pods (speed factor {args.speed_factor:g}, jitter {args.jitter:g}, "
        f"{args.audio_seconds_per_char:g} s of audio per character), "
        f"{len(arrivals)} requests ({n_long} paragraphs, {len(arrivals) - n_long} sentences) as "
        f"Poisson arrivals at {rate:.1f}/s = {args.load:.0%} of capacity over "
        f"{args.duration_s:g} s; "
        f"the same trace through each policy, {args.rounds} round(s), medians over rounds. "
        f"{machine_note()}.",
        "",
        "| policy | p50 latency | p99 latency | failed requests |",
        "|---|---|---|---|",
    ]
    for name, p50, p99v, fails in rows:
        lines.append(f"| {name} | {p50 * 1000:.0f} ms | {p99v * 1000:.0f} ms | {fails} |")
    lines.append(
        f"| perfect information (simulation) | {perfect_p50 * 1000:.0f} ms | "
        f"{perfect_p99 * 1000:.0f} ms | - |"
    )
    lines += [
        "",
        f"jsq-work p99 ÷ round-robin p99 = **{vs_rr:.2f}** "
        f"(target ≤ 0.5: {'met' if vs_rr <= 0.5 else 'NOT met'}); "
        f"jsq-work p99 ÷ least-request p99 = **{vs_lr:.2f}** "
        f"(target ≤ 0.85: {'met' if vs_lr <= 0.85 else 'NOT met'}); "
        f"jsq-work p99 ÷ perfect-information p99 = {jsq / perfect_p99:.2f}.",
        "",
        f"![latency CDF per policy]({PNG.name})",
    ]
    if not args.no_doc:
        _plot(results, perfect)
    publish("\n".join(lines), router_common.DOC, "policies", write=not args.no_doc)
    return 0


def _plot(results: dict[str, list[tuple[list[float], int]]], perfect: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for policy in POLICIES:
        runs = results[policy]
        # the round whose p99 is the median one
        runs_sorted = sorted(runs, key=lambda r: percentile(r[0], 0.99))
        latencies = sorted(runs_sorted[len(runs_sorted) // 2][0])
        ys = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax.plot([x * 1000 for x in latencies], ys, label=policy)
    perfect_sorted = sorted(perfect)
    ax.plot(
        [x * 1000 for x in perfect_sorted],
        [(i + 1) / len(perfect_sorted) for i in range(len(perfect_sorted))],
        "k--",
        label="perfect information (sim)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("latency, arrival to last byte (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Same Poisson trace, 4 simulated pods, 80 % load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(PNG)


if __name__ == "__main__":
    sys.exit(main())
