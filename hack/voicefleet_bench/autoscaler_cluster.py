"""The autoscaler for real: a load step on a local cluster with `simulated` pods.

Starts a fresh local cluster (the real node), the operator (`--autoscale-interval
1`), and one `simulated` TTSVoice (minReplicas 1, maxReplicas 4, target 4 work-seconds,
scaleDownDelaySeconds 20). Then: 20 s of light load (1 client), a step to 10 clients for
60 s, back to 1 client for 60 s (through the scale-down). Every request goes to a ready
pod's IP (round robin over the pods ready at that moment, refreshed every
0.5 s), as a router would.

Reported: decision latency (load step -> first ScaleUp), pod-ready latency (each scale-up
-> the asked-for replicas ready), failed requests (any non-200 or connection error, the
scale-down included), and a PNG of desired vs ready replicas over time.

    .venv/bin/python -m voicefleet_bench.autoscaler_cluster --plot docs/autoscaler-cluster-step.png
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from voicefleet_bench.cluster import operator_stage
from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

TEXT = "The quick brown fox jumps over the lazy dog. " * 12
NS = "bench"
NAME = "stepper"
SELECTOR = f"voicefleet.io/voice={NAME}"


def voice() -> dict[str, Any]:
    return simulated_voice(
        NAME,
        replicas=1,
        server={"workers": 1, "maxQueue": 256, "drainGraceSeconds": 60},
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetWorkSecondsPerReplica": 4,
            "scaleDownDelaySeconds": 20,
        },
    )


class Clients:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.ips: list[str] = []
        self.want = 0
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def refresher(self) -> None:
        while not self.stop.is_set():
            try:
                pods = self.cluster.ready_pods(NS, SELECTOR)
                self.ips = [p["status"]["podIP"] for p in pods if p["status"].get("podIP")]
            except Exception:  # a slow kubectl call: keep the last list
                pass
            time.sleep(0.5)

    def worker(self, k: int) -> None:
        n = k
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                if k >= self.want or not self.ips:
                    time.sleep(0.1)
                    continue
                ip = self.ips[n % len(self.ips)]
                n += 1
                try:
                    rsp = client.post(
                        f"http://{ip}:8080/v1/audio/speech",
                        json={"model": "en_US-joe-medium", "input": TEXT, "voice": "default"},
                    )
                    if rsp.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{ip} {rsp.status_code} {rsp.text[:120]}")
                except httpx.HTTPError as exc:
                    self.failed.append(f"{ip} {exc!r}")

    def start(self, n: int) -> None:
        self.threads.append(threading.Thread(target=self.refresher, daemon=True))
        self.threads += [
            threading.Thread(target=self.worker, args=(k,), daemon=True) for k in range(n)
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=150)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, default=Path("docs/autoscaler-cluster-step.png"))
    p.add_argument("--step-seconds", type=float, default=60)
    args = p.parse_args(argv)
    log = Path("/tmp/autoscaler-cluster-operator.log")
    with operator_stage(NS, log, "--autoscale-interval=1") as cluster:
        cluster.apply(voice(), namespace=NS)
        wait_for(lambda: len(cluster.ready_pods(NS, SELECTOR)) == 1, timeout=90, what="1 pod")
        clients = Clients(cluster)
        clients.start(10)
        timeline: list[tuple[float, int, int]] = []
        t0 = time.monotonic()
        phases = [(20.0, 1), (args.step_seconds, 10), (60.0, 1)]
        step_at = phases[0][0]
        end = sum(d for d, _ in phases)
        while (now := time.monotonic() - t0) < end:
            acc = 0.0
            for duration, n in phases:
                acc += duration
                if now < acc:
                    clients.want = n
                    break
            v = cluster.get_json("ttsvoice", NAME, "-n", NS)
            ready = len(cluster.ready_pods(NS, SELECTOR))
            timeline.append((now, int(v["spec"].get("replicas", 0)), ready))
            time.sleep(0.5)
        clients.want = 0
        clients.close()
        events = cluster.get_json(
            "events", "-n", NS, "--field-selector", f"involvedObject.name={NAME}"
        )["items"]
    first_up = next((t for t, d, _ in timeline if t >= step_at and d > 1), None)
    ready_lat = []
    for i, (t, d, _) in enumerate(timeline):
        if i and d > timeline[i - 1][1]:
            done = next((u for u, dd, r in timeline[i:] if r >= d), None)
            if done is not None:
                ready_lat.append(done - t)
    result = {
        "decision_latency_s": None if first_up is None else round(first_up - step_at, 1),
        "pod_ready_latency_s": [round(x, 1) for x in ready_lat],
        "max_replicas": max(d for _, d, _ in timeline),
        "final_replicas": timeline[-1][1],
        "requests_ok": clients.ok,
        "requests_failed": len(clients.failed),
        "failures": clients.failed[:5],
        "scale_events": [
            f"{e['reason']}: {e['message']}" for e in events if "Scale" in e["reason"]
        ],
    }
    print(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step([t for t, _, _ in timeline], [d for _, d, _ in timeline], where="post", label="desired")
    ax.step([t for t, _, _ in timeline], [r for _, _, r in timeline], where="post", label="ready")
    ax.axvspan(step_at, step_at + args.step_seconds, alpha=0.15, label="10 clients")
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=90)
    return 0 if not clients.failed else 1


if __name__ == "__main__":
    sys.exit(main())
