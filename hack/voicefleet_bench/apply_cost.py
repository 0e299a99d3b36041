"""What one TTSVoice create costs the API server, and who pays for ``kubectl apply``'s time.

One local cluster (real etcd, kube-apiserver, controller-manager, node), the repository's
CRDs and the operator as its ServiceAccount (``--namespace 'op-*'``: it reconciles the
voices of ``op-`` namespaces only and idles through the others). Then N voices (the
operator-scale benchmark's catalogue) are created in a fresh namespace per run, with every
combination of

- **method**: ``kubectl apply --server-side`` (``ssa``), ``kubectl apply`` (client-side,
  ``csa``), ``kubectl create`` (``create``), and ``parallel``: this module's own applier,
  the same server-side apply PATCHes as ``ssa`` from ``--parallel`` threads (what the API
  server can take when the client is not serial; not what a user runs);
- **CRD**: the CRD as it is (``cel``) or the same schema without its
  ``x-kubernetes-validations`` (``nocel``), swapped in place between runs; a swap counts
  as done when a voice that breaks a CEL rule is refused (or accepted) by a dry run;
- **operator**: reconciling the voices (``on``, namespace ``op-…``) or not (``off``).

Runs are interleaved (every combination once per round, ``--rounds`` rounds) so that the
machine's other work spreads over all of them alike; each waits until the operator is idle
and the machine's 1-minute load is below ``--max-load`` (or 20 s passed) before it starts,
and its namespace is deleted (and gone) after it, so every run starts from the same cluster.
Per run it records the wall time of the apply, kubectl's own CPU time, the CPU time of
kube-apiserver, etcd, kube-controller-manager and the operator during it, and from the API
server's ``/metrics`` (differences over the run): requests and their mean duration by verb
and resource (``apiserver_request_duration_seconds``). kubectl runs with
``-v=6``, whose per-request response times give the share of the wall time spent waiting
for the server; the rest is kubectl itself (start, discovery, decoding, printing).

Usage::

    .venv/bin/python -m voicefleet_bench.apply_cost --voices 100 --rounds 3 --json /tmp/cost.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import yaml

from voicefleet_bench import REPO
from voicefleet_bench.machine import git_revision
from voicefleet_bench.operator_bench import catalogue, parallel_apply, start_operator
from voicefleet_bench.procs import cpu_seconds
from voicefleet_localcluster.controlplane import PROFILING_ENV
from voicefleet_localcluster.flowcontrol import settled_counts
from voicefleet_localcluster.kubeapi import ApiError, KubeClient, ssl_context
from voicefleet_localcluster.kubeconfig import load as load_kubeconfig
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster, wait_for

CRD = REPO / "crds" / "ttsvoices.yaml"
GROUP_PATH = "/apis/voicefleet.io/v1alpha1"
FLOW = "voicefleet-operator-apply-cost"
METHODS = ("ssa", "csa", "create", "parallel")
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager")
HISTOGRAMS = ("apiserver_request_duration_seconds",)
LONG_RUNNING = ("WATCH", "CONNECT")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_KLOG_TIME = re.compile(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")
_RESPONSE = re.compile(r'"Response" verb="(\w+)" url="[^"]*" status="[^"]*" milliseconds=(\d+)')
_THROTTLED = re.compile(r"Waited for ([0-9.]+)(ms|s) due to client-side throttling")
_RESPONSE_OLD = re.compile(r"\b(GET|PATCH|POST|PUT|DELETE) https://\S+ \d+ [^\n]*? in (\d+) millis")


def without_cel(crd: dict[str, Any]) -> dict[str, Any]:
    """``crd`` with every ``x-kubernetes-validations`` removed (everything else kept)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "x-kubernetes-validations"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    stripped: dict[str, Any] = strip(copy.deepcopy(crd))
    return stripped


def _breaks_cel(namespace: str) -> dict[str, Any]:
    """A voice only a CEL rule refuses (two model sources; the schema alone allows it)."""
    body = catalogue(1, namespace)[0]
    body["metadata"]["name"] = "cel-probe"
    body["spec"]["model"] = {
        "bundled": "en_US-joe-medium",
        "volume": {"persistentVolumeClaim": {"claimName": "x"}, "path": "a.onnx"},
    }
    return body


def use_crd(cluster: LocalCluster, client: KubeClient, crd: dict[str, Any], cel: bool) -> None:
    """Replace the TTSVoice CRD in place and wait until the API server enforces it."""
    cluster.kubectl_run(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd)
    )
    probe = _breaks_cel("default")

    def enforced() -> bool:
        try:
            client.request(
                "POST",
                f"{GROUP_PATH}/namespaces/default/ttsvoices",
                params={"dryRun": "All"},
                body=probe,
            )
        except ApiError as exc:
            return cel and exc.status == 422
        return not cel

    wait_for(enforced, timeout=60, what=f"the CRD {'with' if cel else 'without'} CEL in force")
    # Every API server handler sees the new schema once one does; give watches a moment.
    time.sleep(2.0)


def metrics(cluster: LocalCluster) -> dict[tuple[str, str], float]:
    """``{(series, labels): value}`` of the histograms' _sum and _count, and of
    ``apiserver_request_total``, from the API server's /metrics now."""
    out: dict[tuple[str, str], float] = {}
    text = cluster.kubectl_run("get", "--raw", "/metrics").stdout
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if not any(name in (f"{h}_sum", f"{h}_count") for h in HISTOGRAMS):
            continue
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(_LABEL.findall(labels_text))
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        key = f"{labels.get('verb')} {labels.get('resource')}{sub}"
        out[(name, key)] = out.get((name, key), 0.0) + float(value)
    return out


def server_view(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Requests by verb/resource with their mean duration (ms) over a run, and the time
    spent in requests other than watches."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests: dict[str, dict[str, float]] = {}
    total_seconds = 0.0
    for (name, key), value in delta.items():
        if name != "apiserver_request_duration_seconds_count" or value < 1:
            continue
        spent = delta.get(("apiserver_request_duration_seconds_sum", key), 0.0)
        if key.split()[0] not in LONG_RUNNING:
            total_seconds += spent
        requests[key] = {"count": int(value), "mean_ms": round(1000 * spent / value, 2)}
    ordered = dict(sorted(requests.items(), key=lambda kv: -kv[1]["count"]))
    return {
        "requests": ordered,
        "request_seconds": round(total_seconds, 3),
    }


def kubectl_timings(stderr: str, started_wall: float) -> dict[str, Any]:
    """From kubectl -v=6: its requests, the time spent waiting for responses, and when
    its first and last request ended (seconds after the process started)."""
    waits: Counter[str] = Counter()
    waited_ms = 0
    stamps: list[float] = []
    throttled_s = 0.0
    for line in stderr.splitlines():
        waited = _THROTTLED.search(line)
        if waited is not None:
            throttled_s += float(waited.group(1)) / (1000 if waited.group(2) == "ms" else 1)
        found = _RESPONSE.search(line) or _RESPONSE_OLD.search(line)
        if found is None:
            continue
        waits[found.group(1)] += 1
        waited_ms += int(found.group(2))
        stamp = _KLOG_TIME.match(line)
        if stamp is not None:
            h, m, s = int(stamp.group(1)), int(stamp.group(2)), float(stamp.group(3))
            stamps.append(h * 3600 + m * 60 + s)
    day = time.gmtime(started_wall)
    start = day.tm_hour * 3600 + day.tm_min * 60 + day.tm_sec + (started_wall % 1)
    return {
        "requests": dict(waits),
        "waited_s": round(waited_ms / 1000, 3),
        "throttled_s": round(throttled_s, 3),
        "first_response_s": round(stamps[0] - start, 3) if stamps else None,
        "last_response_s": round(stamps[-1] - start, 3) if stamps else None,
    }


def profile_apiserver(cluster: LocalCluster, seconds: int, out: Path) -> threading.Thread:
    """A thread that writes the API server's CPU profile of the next ``seconds`` to ``out``
    (the cluster must run with ``VOICEFLEET_APISERVER_PROFILING=1``)."""
    config = load_kubeconfig(cluster.kubeconfig)

    def fetch() -> None:
        with httpx.Client(base_url=config.server, verify=ssl_context(config)) as http:
            response = http.get(
                "/debug/pprof/profile", params={"seconds": seconds}, timeout=seconds + 60
            )
            response.raise_for_status()
            out.write_bytes(response.content)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    return thread


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _quiet(cluster: LocalCluster, max_load: float) -> None:
    """The operator idle, and the machine's 1-minute load under ``max_load`` (20 s at most)."""
    settled_counts(cluster, FLOW, quiet=3.0, timeout=180.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if float(Path("/proc/loadavg").read_text().split()[0]) < max_load:
            return
        time.sleep(2.0)


def one_run(
    cluster: LocalCluster,
    client: KubeClient,
    pids: dict[str, int],
    method: str,
    operator_on: bool,
    cel: bool,
    count: int,
    serial: int,
    threads: int,
    pprof: tuple[int, Path] | None = None,
) -> dict[str, Any]:
    namespace = f"{'op' if operator_on else 'plain'}-{serial:03d}"
    cluster.kubectl_run("create", "namespace", namespace)
    items = catalogue(count, namespace)
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    argv = {
        "ssa": ["apply", "--server-side", "-f", "-"],
        "csa": ["apply", "-f", "-"],
        "create": ["create", "-f", "-"],
    }
    before = metrics(cluster)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load = Path("/proc/loadavg").read_text().split()[:3]
    kubectl_cpu = _children_cpu()
    profiler = profile_apiserver(cluster, *pprof) if pprof is not None else None
    started_wall = time.time()
    started = time.monotonic()
    timings: dict[str, Any] | None = None
    if method == "parallel":
        parallel_apply(client, items, threads)
    else:
        done = subprocess.run(
            [str(cluster.kubectl), "-v=6", *argv[method]],
            input=listed,
            env=cluster.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        timings = kubectl_timings(done.stderr, started_wall)
    wall = time.monotonic() - started
    kubectl_cpu = _children_cpu() - kubectl_cpu
    if profiler is not None:
        profiler.join()
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    after = metrics(cluster)
    # Gone before the next run: voices left behind would add to the operator's and the
    # controllers' work in later runs.
    cluster.kubectl_run("delete", "namespace", namespace, "--wait=true", timeout=300)
    return {
        "method": method,
        "operator": "on" if operator_on else "off",
        "crd": "cel" if cel else "nocel",
        "voices": count,
        "namespace": namespace,
        "seconds": round(wall, 3),
        "ms_per_voice": round(1000 * wall / count, 1),
        "kubectl_cpu_s": round(kubectl_cpu, 2) if method != "parallel" else None,
        "cpu_s": cpu,
        "kubectl": timings,
        "server": server_view(before, after),
        "load_average_before": load,
    }


def measure(
    count: int,
    rounds: int,
    methods: Iterable[str],
    threads: int,
    max_load: float,
    say: Callable[[str], None],
    pprof: tuple[int, Path] | None = None,
) -> list[dict[str, Any]]:
    if pprof is not None:
        os.environ[PROFILING_ENV] = "1"
    cluster = start_local_cluster(log=lambda line: say(f"[cluster] {line}"))
    work = Path(tempfile.mkdtemp(prefix="apply-cost-"))
    client = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=60)
    operator: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    try:
        full = yaml.safe_load(CRD.read_text())
        stripped = without_cel(full)
        cluster.install_crds()
        operator, _ = start_operator(cluster, work, FLOW, ["--namespace=op-*"])
        pids = {name: cluster.state.pids[name] for name in COMPONENTS}
        pids["operator"] = operator.pid
        serial = 0
        # Warm-up: discovery caches and connections, so the first measured run is no outlier.
        for cel in (True, False):
            use_crd(cluster, client, full if cel else stripped, cel)
            one_run(cluster, client, pids, "ssa", True, cel, 10, serial, threads)
            serial += 1
        for round_ in range(rounds):
            for cel in (True, False) if round_ % 2 == 0 else (False, True):
                use_crd(cluster, client, full if cel else stripped, cel)
                for operator_on in (False, True):
                    for method in methods:
                        _quiet(cluster, max_load)
                        profiled = round_ == 0 and method == "ssa" and cel and operator_on
                        result = one_run(
                            cluster,
                            client,
                            pids,
                            method,
                            operator_on,
                            cel,
                            count,
                            serial,
                            threads,
                            pprof if profiled else None,
                        )
                        result["round"] = round_
                        serial += 1
                        results.append(result)
                        say(
                            f"round {round_} {method:8} crd={result['crd']:5} "
                            f"operator={result['operator']:3} {result['seconds']:6.2f} s "
                            f"cpu {result['cpu_s']} kubectl {result['kubectl_cpu_s']} "
                            f"load {' '.join(result['load_average_before'])}"
                        )
        return results
    finally:
        client.close()
        if operator is not None:
            stop_process(operator, grace=20)
        cluster.stop()


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (method, crd, operator)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["method"], r["crd"], r["operator"])].append(r)
    rows = []
    for (method, crd, op), runs in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "crd": crd,
            "operator": op,
            "runs": len(runs),
            "seconds": [r["seconds"] for r in runs],
            "median_s": statistics.median(r["seconds"] for r in runs),
        }
        for name in (*COMPONENTS, "operator"):
            row[f"cpu_{name}"] = statistics.median(r["cpu_s"][name] for r in runs)
        if method != "parallel":
            row["kubectl_cpu_s"] = statistics.median(r["kubectl_cpu_s"] for r in runs)
            row["kubectl_waited_s"] = statistics.median(r["kubectl"]["waited_s"] for r in runs)
        row["request_seconds"] = statistics.median(r["server"]["request_seconds"] for r in runs)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--parallel", type=int, default=8, help="threads of the parallel applier")
    parser.add_argument("--max-load", type=float, default=2.5)
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument(
        "--pprof",
        type=Path,
        help="write the API server's CPU profile of the first round's kubectl apply "
        "--server-side with the operator on and CEL here (`go tool pprof -top FILE`)",
    )
    parser.add_argument("--pprof-seconds", type=int, default=15)
    args = parser.parse_args()
    results = measure(
        args.voices,
        args.rounds,
        args.methods,
        args.parallel,
        args.max_load,
        lambda line: print(line, file=sys.stderr, flush=True),
        (args.pprof_seconds, args.pprof) if args.pprof else None,
    )
    out = {
        "revision": git_revision(("operator", "crds")),
        "cpus": os.cpu_count(),
        "summary": summary(results),
        "runs": results,
    }
    text = json.dumps(out, indent=2)
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
