"""A first-audio target against the work-seconds policy on a local cluster, through the router.

Starts a fresh local cluster (the real node), the operator (``--autoscale-interval 1``,
reading the router's held requests) and one ``voicefleet-router`` on loopback that watches
the namespace, as the chart runs them. Then, for each round and each trace, one
``simulated`` TTSVoice per policy at once (minReplicas 1, maxReplicas 5,
``scaleDownDelaySeconds`` 30, one worker per pod, 50m CPU each so every policy's pods fit
the node at once):

* ``work-seconds (default 10)``: ``targetWorkSecondsPerReplica`` 10, the CRD default;
* ``work-seconds (hand-tuned 1)``: ``targetWorkSecondsPerReplica`` 1;
* ``first audio p99 <= 1 s``: ``target: {timeToFirstAudioSeconds: 1, percentile: 99}``;
* the control, ``fixed 5 replicas``: autoscaling off, all 5 pods serving before the clock
  starts. It pays for the most pods and never waits for one to start, so what it misses
  is what this machine (its CPU, the router, the client) costs at that load, and what the
  others miss beyond it is what scaling cost them.

The voices of one trace run side by side, under the same seeded open-loop arrivals
(Poisson), so a busy moment of the machine falls on all of them:

* ``step``: ``--low`` req/s for 60 s (long enough for every policy to settle on it: a
  new pod took 10-15 s to turn ready on the shared 2-core machine), ``--high`` for 45 s,
  ``--low`` for 15 s;
* ``noisy``: ``--noisy`` req/s (flat rate, Poisson noise) for 30 s of warm-up (not
  counted: every voice starts at one replica) and 90 s counted.

Every request is a short streamed reply (~80 characters, two sentences, about 0.37 s of
engine time, first audio about 0.2 s after it starts) sent to the router by voice name
(``model``), as users call voices; time to first audio is measured at the client from the
moment the request was due (a late send counts against it) to the first body bytes. A
failed request counts as a miss. Reported per trace and policy, as medians over the
rounds: share of requests whose first audio came within 1 s, p99 time to first audio,
replica-seconds (``spec.replicas`` integrated over the trace), peak replicas, failures.

    flock /tmp/vf/realnode.lock flock /tmp/vf/bench.lock \\
      .venv/bin/python -m voicefleet_bench.autoscaler_cluster_first_audio --rounds 3 \\
        --json /tmp/afa.json --doc docs/autoscaler.md --plot docs/autoscaler-cluster-first-audio.png

``--report FILE`` renders a saved ``--json`` run (table and plot) without a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from voicefleet_bench import report
from voicefleet_bench.cluster import operator_stage
from voicefleet_bench.procs import HOST, free_port, router_under, wait_ready
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster
from voicefleet_localcluster.voices import voice_manifest

NS = "bench"
TEXT = "Hello there, this is a short reply. It should start speaking at once, please."
TARGET_S = 1.0
SECTION = "autoscaler_cluster_first_audio"
MAX_REPLICAS = 5
FIXED = f"fixed {MAX_REPLICAS} replicas (autoscaler off: the control)"
POLICIES: dict[str, dict[str, Any]] = {
    "work-seconds (default 10)": {"targetWorkSecondsPerReplica": 10},
    "work-seconds (hand-tuned 1)": {"targetWorkSecondsPerReplica": 1},
    "first audio p99 <= 1 s": {"target": {"timeToFirstAudioSeconds": TARGET_S, "percentile": 99}},
    FIXED: {"enabled": False},
}
SHORT = {
    "work-seconds (default 10)": "wd",
    "work-seconds (hand-tuned 1)": "wt",
    "first audio p99 <= 1 s": "fa",
    FIXED: "fx",
}
COLORS = {
    "work-seconds (default 10)": "tab:gray",
    "work-seconds (hand-tuned 1)": "tab:blue",
    "first audio p99 <= 1 s": "tab:red",
    FIXED: "tab:green",
}


def voice(name: str, policy: dict[str, Any]) -> dict[str, Any]:
    """One policy's voice: the simulated engine in pods small enough that 3 x 5 fit."""
    return voice_manifest(
        name,
        engine="simulated",
        replicas=MAX_REPLICAS if policy.get("enabled") is False else 1,
        resources={"cpu": "50m", "memory": "200Mi"},
        server={"workers": 1, "maxQueue": 256, "drainGraceSeconds": 30},
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "scaleDownDelaySeconds": 30,
            **policy,
        },
    )


def poisson(
    rng: random.Random, rate_at: Callable[[float], float], peak: float, end: float
) -> list[float]:
    """Arrival times of a Poisson process with rate ``rate_at(t)`` (thinning under ``peak``)."""
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() * peak <= rate_at(t):
            out.append(t)


def step_trace(seed: int, low: float, high: float) -> tuple[list[float], float]:
    """``low`` for 60 s, ``high`` for 45 s, ``low`` for 15 s: (arrivals, duration)."""
    end = 120.0
    return poisson(random.Random(seed), lambda t: high if 60 <= t < 105 else low, high, end), end


NOISY_WARMUP_S = 30.0
"""Seconds of the noisy trace not counted: every voice starts at one replica, and what a
policy does under steady noise is the question, not how it leaves one pod."""


def noisy_trace(seed: int, rate: float) -> tuple[list[float], float]:
    """``rate`` for 30 s of warm-up and 90 s counted: (arrivals, duration)."""
    end = NOISY_WARMUP_S + 90.0
    return poisson(random.Random(1000 + seed), lambda _t: rate, rate, end), end


async def one(
    client: httpx.AsyncClient, url: str, model: str, due: float
) -> tuple[float | None, str]:
    """Time to first audio of one request from when it was due (None: failed, with why)."""
    body = {"model": model, "input": TEXT, "voice": "default", "stream_format": "audio"}
    try:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as rsp:
            if rsp.status_code != 200:
                await rsp.aread()
                return None, f"{rsp.status_code} {rsp.text[:80]}"
            first = None
            async for chunk in rsp.aiter_bytes():
                if chunk and first is None:
                    first = time.monotonic() - due
            return first, ""
    except httpx.HTTPError as exc:
        return None, repr(exc)[:120]


def _kube(cluster: LocalCluster) -> Any:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    return client, api


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc says them."""
    with open("/proc/loadavg", encoding="ascii") as f:
        return f.read().split()[:3]


class Sampler:
    """``spec.replicas`` and ready pods of every voice, once a second, in one list each."""

    def __init__(self, cluster: LocalCluster) -> None:
        k8s, api = _kube(cluster)
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        voices = self.custom.list_namespaced_custom_object(
            "voicefleet.io", "v1alpha1", NS, "ttsvoices"
        )
        spec = {v["metadata"]["name"]: int(v["spec"].get("replicas") or 0) for v in voices["items"]}
        ready: dict[str, int] = {}
        for pod in self.core.list_namespaced_pod(NS).items:
            name = (pod.metadata.labels or {}).get("voicefleet.io/voice")
            conds = pod.status.conditions or []
            ok = pod.metadata.deletion_timestamp is None and any(
                c.type == "Ready" and c.status == "True" for c in conds
            )
            if name and ok:
                ready[name] = ready.get(name, 0) + 1
        return spec, ready


async def warm(url: str, names: list[str], within_s: float = 180.0) -> None:
    """Until the router serves every voice (its first pod ready and known to the router)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=30) as client:
        for name in names:
            while True:
                body = {"model": name, "input": "Ready.", "voice": "default"}
                try:
                    if (await client.post(f"{url}/v1/audio/speech", json=body)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"voice {name} not served by the router in {within_s:g} s")
                await asyncio.sleep(0.5)


async def run_trace(
    cluster: LocalCluster,
    url: str,
    trace: str,
    round_: int,
    times: list[float],
    duration: float,
    counted_from: float,
) -> list[dict[str, Any]]:
    """All policies' voices at once under ``times``; one result per policy, over the
    requests due from ``counted_from`` on and the replicas from then to ``duration``."""
    names = {label: f"{trace}-{SHORT[label]}-{round_}" for label in POLICIES}
    for label, name in names.items():
        cluster.apply(voice(name, POLICIES[label]), namespace=NS)
    await warm(url, list(names.values()))
    sampler = Sampler(cluster)
    deadline = time.monotonic() + 180
    while True:  # the control's pods all serving before the clock starts
        spec, ready = await asyncio.to_thread(sampler.read)
        if all(ready.get(n, 0) >= spec.get(n, 1) for n in names.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"pods not ready in 180 s: {spec} {ready}")
        await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)  # the warm-up requests' pods report before the clock starts
    timeline: dict[str, list[tuple[float, int, int]]] = {n: [] for n in names.values()}
    load_before = loadavg()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.monotonic()
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                try:
                    spec, ready = await asyncio.to_thread(sampler.read)
                    at = time.monotonic() - t0
                    for n in names.values():
                        timeline[n].append((at, spec.get(n, 0), ready.get(n, 0)))
                except Exception as exc:  # a slow API call: keep going
                    print(f"sample failed: {exc!r}", file=sys.stderr)
                await asyncio.sleep(1.0)

        sampling = asyncio.create_task(sample())
        tasks: dict[str, list[asyncio.Task[tuple[float | None, str]]]] = {
            n: [] for n in names.values()
        }
        for at in times:
            due = t0 + at
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for n in names.values():
                tasks[n].append(asyncio.create_task(one(client, url, n, due)))
        await asyncio.sleep(max(0.0, t0 + duration - time.monotonic()))
        results = {n: await asyncio.gather(*ts) for n, ts in tasks.items()}
        done.set()
        await sampling
    load_after = loadavg()
    out = []
    for label, name in names.items():
        events = cluster.get_json(
            "events", "-n", NS, "--field-selector", f"involvedObject.name={name}"
        )
        status = cluster.get_json("ttsvoice", name, "-n", NS).get("status", {})
        counted = [fw for at, fw in zip(times, results[name], strict=True) if at >= counted_from]
        firsts = [f for f, _ in counted if f is not None]
        failed = [why for f, why in counted if f is None]
        ordered = sorted(firsts)
        tl = timeline[name]
        seconds = 0.0
        for (t, count, _), (u, _, _) in zip(tl, [*tl[1:], (duration, 0, 0)], strict=True):
            lo, hi = max(t, counted_from), min(u, duration)
            seconds += count * max(0.0, hi - lo)
        out.append(
            {
                "trace": trace,
                "round": round_,
                "policy": label,
                "requests": len(counted),
                "counted_from_s": counted_from,
                "within_target": sum(1 for f in firsts if f <= TARGET_S) / max(1, len(counted)),
                "p99_first_audio_s": ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
                "p50_first_audio_s": ordered[len(ordered) // 2] if ordered else None,
                "replica_seconds": round(seconds),
                "peak_replicas": max((n for _, n, _ in tl), default=0),
                "failed": len(failed),
                "failures": failed[:3],
                "load_before": load_before,
                "load_after": load_after,
                "arrivals": times,
                "first_audio": [None if f is None else round(f, 4) for f, _ in results[name]],
                "timeline": [(round(t, 1), n, r) for t, n, r in tl],
                "scale_events": [
                    f"{e['reason']}: {e['message']}"
                    for e in events["items"]
                    if "Scale" in e["reason"]
                ][:8],
                "first_audio_status": (status.get("autoscaling") or {}).get("firstAudio"),
            }
        )
        print(
            json.dumps(
                {
                    k: v
                    for k, v in out[-1].items()
                    if k not in ("arrivals", "first_audio", "timeline")
                }
            ),
            flush=True,
        )
    for name in names.values():
        cluster.kubectl_run("delete", "ttsvoice", name, "-n", NS, "--wait=false")
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The table of medians over rounds (per-round values beside them) and what was run."""
    rows = []
    for trace in ("step", "noisy"):
        for label in POLICIES:
            runs = [r for r in results if r["trace"] == trace and r["policy"] == label]
            if not runs:
                continue
            within = [100 * r["within_target"] for r in runs]
            p99 = [r["p99_first_audio_s"] for r in runs if r["p99_first_audio_s"] is not None]
            rs = [float(r["replica_seconds"]) for r in runs]
            rows.append(
                [
                    trace,
                    label,
                    f"{median(within):.1f}% ({', '.join(f'{w:.1f}' for w in within)})",
                    f"{median(p99):.2f} ({', '.join(f'{p:.2f}' for p in p99)})",
                    f"{median(rs):.0f} ({', '.join(f'{x:.0f}' for x in rs)})",
                    f"{median([float(r['peak_replicas']) for r in runs]):.0f}",
                    str(sum(r["failed"] for r in runs)),
                ]
            )
    loads = sorted(
        {" ".join(r["load_before"]) for r in results}
        | {" ".join(r["load_after"]) for r in results},
        key=lambda line: float(line.split()[0]),
    )
    rounds = len({r["round"] for r in results})
    lines = [
        f"Medians over {rounds} rounds (each round's value in brackets, in order); "
        f"commit {meta.get('commit', '?')}, {meta.get('started', '?')}; load average (1/5/15 min) "
        f"at the starts and ends of the traces: {loads[0]} .. {loads[-1]}. Requests per trace "
        f"and policy (per round): step {meta.get('step_requests')}, noisy "
        f"{meta.get('noisy_requests')} (counted after its {NOISY_WARMUP_S:g} s warm-up); "
        f"target: first audio within {TARGET_S:g} s for 99 % of requests, at the client.",
        "",
        *report.markdown_table(
            [
                "trace",
                "policy",
                "first audio within 1 s",
                "p99 first audio (s)",
                "replica-seconds",
                "peak replicas",
                "failed (all rounds)",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Replicas over time (round 1) per trace, and share within target vs replica-seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, trace in enumerate(("step", "noisy")):
        ax = axes[0][col]
        first_round = min((r["round"] for r in results if r["trace"] == trace), default=None)
        for r in results:
            if r["trace"] != trace or r["round"] != first_round:
                continue
            t = [p[0] for p in r["timeline"]]
            ax.step(
                t,
                [p[1] for p in r["timeline"]],
                where="post",
                color=COLORS[r["policy"]],
                label=f"{r['policy']}: spec.replicas",
            )
            ax.step(
                t,
                [p[2] for p in r["timeline"]],
                where="post",
                color=COLORS[r["policy"]],
                linestyle=":",
                alpha=0.7,
            )
        ax.set_title(
            f"{trace} trace, round {first_round}: replicas (solid) and ready pods (dotted)"
        )
        if trace == "noisy":  # what lies left of the line is warm-up, not counted
            ax.axvline(NOISY_WARMUP_S, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("seconds")
        ax.set_ylabel("replicas")
        arrivals: list[float] = next(
            (r["arrivals"] for r in results if r["trace"] == trace and r["round"] == first_round),
            [],
        )
        if arrivals:
            twin = ax.twinx()
            bins = list(range(0, int(max(arrivals)) + 6, 5))
            twin.hist(
                arrivals, bins=bins, weights=[1 / 5] * len(arrivals), color="tab:green", alpha=0.15
            )
            twin.set_ylabel("arrivals (req/s, 5 s bins)")
        ax.legend(loc="upper left", fontsize=7)
        ax2 = axes[1][col]
        for label in POLICIES:
            runs = [r for r in results if r["trace"] == trace and r["policy"] == label]
            if not runs:
                continue
            xs = [r["replica_seconds"] for r in runs]
            ys = [100 * r["within_target"] for r in runs]
            ax2.scatter(xs, ys, color=COLORS[label], alpha=0.5, s=20)
            ax2.scatter(
                [median(xs)],
                [median(ys)],
                color=COLORS[label],
                s=120,
                marker="*",
                label=f"{label} (median)",
            )
        ax2.axhline(99, color="black", linewidth=0.8, linestyle="--")
        ax2.set_title(
            f"{trace}: first audio within {TARGET_S:g} s vs replica-seconds (per round, median *)"
        )
        ax2.set_xlabel("replica-seconds")
        ax2.set_ylabel("% within target")
        ax2.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


async def measure(
    cluster: LocalCluster, url: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for k in range(1, args.rounds + 1):
        seed = args.seed + k - 1
        for trace in args.traces:
            times, duration = (
                step_trace(seed, args.low, args.high)
                if trace == "step"
                else noisy_trace(seed, args.noisy)
            )
            counted_from = NOISY_WARMUP_S if trace == "noisy" else 0.0
            if args.scale != 1.0:  # a short smoke run: the same shape, compressed
                times, duration = [t * args.scale for t in times], duration * args.scale
                counted_from *= args.scale
            print(
                f"round {k}, {trace}: {len(times)} requests per policy, seed {seed}",
                file=sys.stderr,
                flush=True,
            )
            results.extend(await run_trace(cluster, url, trace, k, times, duration, counted_from))
            if args.json:
                args.json.write_text(json.dumps({"meta": args.meta, "results": results}))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--low", type=float, default=1.0)
    p.add_argument("--high", type=float, default=6.0)
    p.add_argument("--noisy", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--traces", nargs="+", default=["step", "noisy"], choices=["step", "noisy"])
    p.add_argument(
        "--scale", type=float, default=1.0, help="compress the traces' time (smoke runs)"
    )
    p.add_argument(
        "--json", type=Path, help="write every request and timeline here, after each trace"
    )
    p.add_argument("--doc", type=Path, help="put the table into this page's bench block")
    p.add_argument("--plot", type=Path, help="write the plot here")
    p.add_argument("--report", type=Path, help="render a saved --json run; start nothing")
    args = p.parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        results, args.meta = saved["results"], saved["meta"]
    else:
        args.meta = {
            "rounds": args.rounds,
            "commit": commit(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "step_requests": "varies by seed",
            "noisy_requests": "varies by seed",
        }
        port = free_port()
        url = f"http://{HOST}:{port}"
        log = Path("/tmp/autoscaler-cluster-first-audio-operator.log")
        flags = ("--autoscale-interval=1", f"--router-metrics-url={url}/metrics")
        with operator_stage(NS, log, *flags) as cluster:
            argv_r, env = router_under(
                sys.executable, "", port, "--namespace", NS, f"--kubeconfig={cluster.kubeconfig}"
            )
            router_log = Path("/tmp/autoscaler-cluster-first-audio-router.log")
            with router_log.open("wb") as out:
                router = subprocess.Popen(argv_r, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                wait_ready(router, f"{url}/readyz", 60, router_log)
                results = asyncio.run(measure(cluster, url, args))
            finally:
                stop_process(router, grace=10)
    per = {
        t: sorted({r["requests"] for r in results if r["trace"] == t}) for t in ("step", "noisy")
    }
    args.meta["step_requests"] = "/".join(map(str, per["step"])) or "—"
    args.meta["noisy_requests"] = "/".join(map(str, per["noisy"])) or "—"
    if args.json and args.report is None:
        args.json.write_text(json.dumps({"meta": args.meta, "results": results}))
    text = render(results, args.meta)
    report.publish(text, args.doc or Path("/dev/null"), SECTION, write=args.doc is not None)
    if args.plot is not None:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
