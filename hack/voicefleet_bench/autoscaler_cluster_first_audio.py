"""A first-audio target against the work-seconds policy, on a local cluster, on one trace.

Starts a fresh local cluster (the real node) and the operator
(``--autoscale-interval 1``); then, one after the other, one ``simulated`` TTSVoice per
policy (minReplicas 1, maxReplicas 6, ``scaleDownDelaySeconds`` 30, one worker per pod):

* ``work-seconds (default 10)``: ``targetWorkSecondsPerReplica`` 10, the CRD default;
* ``work-seconds (hand-tuned 1)``: ``targetWorkSecondsPerReplica`` 1;
* ``first audio p99 <= 1 s``: ``target: {timeToFirstAudioSeconds: 1, percentile: 99}``.

Each gets the same open-loop trace (seeded Poisson arrivals: ``--low`` req/s for 60 s,
``--high`` for ``--step-seconds``, ``--low`` for 30 s) of short requests (~80 characters,
two sentences, about 0.4 s of engine time), streamed (``stream_format: audio``) to the
ready pods' loopback addresses round robin, as a router would; time to first audio is
measured at the client (request sent -> first body bytes). A request that finds no ready
pod waits for one (counted from its arrival). Reported per policy: share of requests whose
first audio came within 1 s, p99 time to first audio, replica-seconds (``spec.replicas``
integrated over the trace), peak replicas, failed requests.

    .venv/bin/python -m voicefleet_bench.autoscaler_cluster_first_audio
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from voicefleet_bench.cluster import operator_stage
from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

NS = "bench"
TEXT = "Hello there, this is a short reply. It should start speaking at once, please."
TARGET_S = 1.0
POLICIES: dict[str, dict[str, Any]] = {
    "work-seconds (default 10)": {"targetWorkSecondsPerReplica": 10},
    "work-seconds (hand-tuned 1)": {"targetWorkSecondsPerReplica": 1},
    "first audio p99 <= 1 s": {"target": {"timeToFirstAudioSeconds": TARGET_S, "percentile": 99}},
}


def voice(name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return simulated_voice(
        name,
        replicas=1,
        server={"workers": 1, "maxQueue": 256, "drainGraceSeconds": 60},
        autoscaling={"minReplicas": 1, "maxReplicas": 6, "scaleDownDelaySeconds": 30, **policy},
    )


def arrivals(seed: int, low: float, high: float, step: float) -> list[float]:
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    end = 60 + step + 30
    while True:
        t += rng.expovariate(high)
        if t >= end:
            return out
        rate = high if 60 <= t < 60 + step else low
        if rng.random() * high <= rate:
            out.append(t)


class Pods:
    """The ready pods' addresses, refreshed every 0.5 s."""

    def __init__(self, cluster: LocalCluster, selector: str) -> None:
        self.cluster, self.selector = cluster, selector
        self.ips: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                pods = self.cluster.ready_pods(NS, self.selector)
                self.ips = [p["status"]["podIP"] for p in pods if p["status"].get("podIP")]
            except Exception:  # a slow kubectl call: keep the last list
                pass
            time.sleep(0.5)


def one(client: httpx.Client, pods: Pods, k: int, sent: float) -> tuple[float | None, str]:
    """Time to first audio of one request from its arrival (None: failed, with why)."""
    while not pods.ips:
        if time.monotonic() - sent > 60:
            return None, "no ready pod for 60 s"
        time.sleep(0.05)
    ips = pods.ips
    ip = ips[k % len(ips)]
    body = {"model": "en_US-joe-medium", "input": TEXT, "voice": "default"}
    try:
        with client.stream(
            "POST", f"http://{ip}:8080/v1/audio/speech", json={**body, "stream_format": "audio"}
        ) as rsp:
            if rsp.status_code != 200:
                return None, f"{ip} {rsp.status_code}"
            first = None
            for chunk in rsp.iter_bytes():
                if chunk and first is None:
                    first = time.monotonic() - sent
            return first, ""
    except httpx.HTTPError as exc:
        return None, f"{ip} {exc!r}"


def run_policy(
    cluster: LocalCluster, label: str, name: str, policy: dict[str, Any], times: list[float]
) -> dict[str, Any]:
    selector = f"voicefleet.io/voice={name}"
    cluster.apply(voice(name, policy), namespace=NS)
    wait_for(lambda: len(cluster.ready_pods(NS, selector)) == 1, timeout=120, what="1 pod")
    pods = Pods(cluster, selector)
    results: list[tuple[float | None, str]] = []
    timeline: list[tuple[float, int]] = []
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(max_workers=96) as pool:
        t0 = time.monotonic()
        futures = []
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.is_set():
                try:
                    v = cluster.get_json("ttsvoice", name, "-n", NS)
                    timeline.append((time.monotonic() - t0, int(v["spec"].get("replicas", 0))))
                except Exception:
                    pass
                time.sleep(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for k, at in enumerate(times):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, client, pods, k, time.monotonic()))
        results = [f.result() for f in futures]
        sampler_stop.set()
        sampler.join(timeout=10)
        end = time.monotonic() - t0
    pods.stop.set()
    events = cluster.get_json("events", "-n", NS, "--field-selector", f"involvedObject.name={name}")
    status = cluster.get_json("ttsvoice", name, "-n", NS).get("status", {})
    cluster.kubectl_run("delete", "ttsvoice", name, "-n", NS, "--wait=false")
    firsts = sorted(f for f, _ in results if f is not None)
    failed = [why for f, why in results if f is None]
    seconds = 0.0
    for (t, n), (u, _) in zip(timeline, [*timeline[1:], (end, 0)], strict=True):
        seconds += n * (u - t)
    return {
        "policy": label,
        "requests": len(results),
        "within_target": sum(1 for f in firsts if f <= TARGET_S) / len(results),
        "p99_first_audio_s": firsts[int(0.99 * (len(firsts) - 1))] if firsts else None,
        "replica_seconds": round(seconds),
        "peak_replicas": max((n for _, n in timeline), default=0),
        "failed": len(failed),
        "failures": failed[:3],
        "timeline": [(round(t), n) for t, n in timeline],
        "scale_events": [
            f"{e['reason']}: {e['message']}" for e in events["items"] if "Scale" in e["reason"]
        ][:6],
        "first_audio_status": (status.get("autoscaling") or {}).get("firstAudio"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--low", type=float, default=1.0)
    p.add_argument("--high", type=float, default=6.0)
    p.add_argument("--step-seconds", type=float, default=90)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    times = arrivals(args.seed, args.low, args.high, args.step_seconds)
    out: list[dict[str, Any]] = []
    log = Path("/tmp/autoscaler-cluster-first-audio-operator.log")
    with operator_stage(NS, log, "--autoscale-interval=1") as cluster:
        for k, (label, policy) in enumerate(POLICIES.items()):
            result = run_policy(cluster, label, f"policy{k}", policy, times)
            print(json.dumps(result), flush=True)
            out.append(result)
    print(f"{len(times)} requests per policy; seed {args.seed}")
    print("| policy | first audio within 1 s | p99 first audio (s) | replica-seconds | peak |")
    print("|---|---|---|---|---|")
    for r in out:
        p99 = r["p99_first_audio_s"]
        print(
            f"| {r['policy']} | {r['within_target']:.1%} | "
            f"{'—' if p99 is None else f'{p99:.2f}'} | {r['replica_seconds']} "
            f"| {r['peak_replicas']} |"
        )
    if args.output is not None:
        args.output.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
