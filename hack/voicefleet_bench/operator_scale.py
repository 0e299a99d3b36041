"""How fast voicefleet-operator reconciles 100 TTSVoices applied at once, and its memory then.

On a fresh local cluster (real kube-apiserver, controller-manager, scheduler, process
kubelet): install the CRDs and the operator's RBAC, start `voicefleet-operator
--all-namespaces` as its ServiceAccount, wait until it is healthy and idle, then
`kubectl apply` N voices in one request (replicas 0, so no pods start: this measures
the operator, not model loading) and time until

- every voice's Deployment exists (and its Service, and its PodDisruptionBudget:
  maxReplicas 3, so the operator makes all three objects), and
- every voice's status has `observedGeneration` equal to its generation.

The operator's resident memory (VmRSS, and the peak VmHWM) is read from
/proc/<pid>/status right after. Targets (issue 4): <= 30 s and <= 200 MB for 100.

Usage::

    .venv/bin/python -m voicefleet_bench.operator_scale            # 100 voices
    .venv/bin/python -m voicefleet_bench.operator_scale --voices 20 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from voicefleet_bench import REPO
from voicefleet_bench.procs import free_port, memory_mb
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster, wait_for
from voicefleet_operator.settings import DEFAULT_WORKERS

OPERATOR = Path(sys.executable).parent / "voicefleet-operator"
NAMESPACE = "scale"


def voices(count: int) -> str:
    docs = [
        {
            "apiVersion": "voicefleet.io/v1alpha1",
            "kind": "TTSVoice",
            "metadata": {"name": f"voice-{i:03d}", "namespace": NAMESPACE},
            "spec": {
                "replicas": 0,
                "model": {"bundled": "en_US-joe-medium"},
                "resources": {"cpu": "250m", "memory": "512Mi"},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
            },
        }
        for i in range(count)
    ]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})


def count_done(cluster: LocalCluster, count: int) -> tuple[int, int, int]:
    """(Deployments, PDBs, voices whose status caught up with their generation)."""
    names = cluster.kubectl_run("get", "deployments,pdb", "-n", NAMESPACE, "-o", "name").stdout
    deps = [n for n in names.split() if n.startswith("deployment")]
    pdbs = [n for n in names.split() if n.startswith("poddisruptionbudget")]
    items = cluster.get_json("ttsvoices", "-n", NAMESPACE)["items"]
    observed = sum(
        1
        for v in items
        if (v.get("status") or {}).get("observedGeneration") == v["metadata"]["generation"]
    )
    return len(deps), len(pdbs), observed


def run(count: int, workers: int | None) -> dict[str, Any]:
    cluster = start_local_cluster(log=lambda line: print(f"[cluster] {line}", file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        cluster.kubectl_run(
            "apply",
            "-f",
            str(REPO / "crds/ttsvoices.yaml"),
            "-f",
            str(REPO / "crds/kopf-peering.yaml"),
        )
        cluster.kubectl_run(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/ttsvoices.voicefleet.io"
        )
        cluster.kubectl_run("create", "namespace", "voicefleet-system")
        cluster.kubectl_run("create", "namespace", NAMESPACE)
        cluster.apply(cluster.operator_rbac())  # the chart's RBAC, the one source
        kubeconfig = cluster.service_account_kubeconfig(
            "voicefleet-system", "voicefleet-operator", work / "sa.kubeconfig"
        )
        health = free_port()
        argv = [
            str(OPERATOR),
            "--all-namespaces",
            f"--kubeconfig={kubeconfig}",
            f"--health-port={health}",
            f"--metrics-port={free_port()}",
            "--standalone",
        ]
        if workers is not None:
            argv.append(f"--workers={workers}")
        log_path = work / "operator.log"
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200,
            timeout=30,
            what="operator /healthz",
        )
        time.sleep(2)  # let the initial listings settle, so the idle figure is idle
        idle = memory_mb(proc.pid)

        manifest = voices(count)
        started = time.monotonic()
        cluster.kubectl_run("apply", "-f", "-", input=manifest, timeout=120)
        applied = time.monotonic() - started
        first_all_deployments: float | None = None
        while True:
            n_dep, n_pdb, n_obs = count_done(cluster, count)
            now = time.monotonic() - started
            if first_all_deployments is None and n_dep == count:
                first_all_deployments = now
            if n_dep == count and n_pdb == count and n_obs == count:
                break
            if now > 300:
                raise SystemExit(f"not done after 300 s: {n_dep} deployments, {n_obs} statuses")
            time.sleep(0.5)
        total = time.monotonic() - started
        memory = memory_mb(proc.pid)
        return {
            "voices": count,
            "apply_seconds": round(applied, 2),
            "all_deployments_seconds": round(first_all_deployments or total, 2),
            "all_reconciled_seconds": round(total, 2),
            "rss_idle_mb": round(idle["VmRSS"], 1),
            "rss_after_mb": round(memory["VmRSS"], 1),
            "rss_peak_mb": round(memory["VmHWM"], 1),
            "workers": workers or DEFAULT_WORKERS,
            "cpus": os.cpu_count(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
    finally:
        if proc is not None:
            stop_process(proc, grace=20)
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="operator --workers")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.voices, args.workers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
