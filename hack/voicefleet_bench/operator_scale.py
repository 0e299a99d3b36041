"""How fast voicefleet-operator reconciles N TTSVoices applied at once, and at what cost.

What it asks of the API server for them, and its memory then.

For each N (default 100 and 1,000), on a fresh local cluster (real kube-apiserver,
controller-manager, scheduler, node; ``--no-node``: the control plane alone, which is all
voices at replicas 0 need): install the CRDs and the operator's RBAC, start
``voicefleet-operator --all-namespaces --standalone`` as its ServiceAccount, wait until
it is healthy and idle, then ``kubectl apply --server-side`` N voices in one go
(replicas 0, so no pods start: this measures the operator, not model loading) and time,
from the start of the apply, until

- every voice's Deployment and Service exist, and
- every voice's status has ``observedGeneration`` equal to its generation.

The end is taken from watches of the three kinds (:class:`DoneClock`: the arrival of the
last of those 3·N facts), not from polling, which was up to a second late and loaded
the API server it measured; a listing then confirms it. Per voice, the time from its
creation to its status (the operator's own latency) is reported as median, p90 and max,
and the share of the machine's CPU that was busy over the run says whether it was
CPU-bound (the cores are shared with whatever else runs).

PodDisruptionBudgets are counted but not waited for: the operator makes one only for a
voice that asks for two pods or more (none here), older versions made one for each of
these voices (maxReplicas 3) and applied it before writing the status, so the status
condition covers it for them.

**Requests** are counted by the API server: a FlowSchema puts every request of the
operator's ServiceAccount in a flow of its own, and
``apiserver_flowcontrol_dispatched_requests_total`` for that flow is read from the API
server's ``/metrics`` when the operator is idle before the apply and once it is quiet
again after. ``apiserver_request_total`` gives the split by verb and resource (of every
client; the operator is the only writer of TTSVoice status and the only server-side
applier of Deployments, Services and PDBs).

The operator's resident memory (``VmRSS``, and the peak ``VmHWM``) is read right after.
Each run gives up after ``--seconds-per-voice`` x N (at least 120 s). Targets (issue 23):
100 voices <= 5 s, 1,000 voices <= 60 s, RSS <= 300 MB after.

``--operator-src DIR`` runs the operator from another checkout (its ``operator/`` and
``crds/`` go first on ``PYTHONPATH``) for before/after figures with the same driver.

Usage::

    .venv/bin/python -m voicefleet_bench.operator_scale                 # 100 and 1,000
    .venv/bin/python -m voicefleet_bench.operator_scale --voices 20 --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicefleet_bench import REPO
from voicefleet_bench.machine import git_revision
from voicefleet_bench.operator_bench import catalogue, parallel_apply, start_operator
from voicefleet_bench.procs import memory_mb
from voicefleet_bench.report import fmt, write_section
from voicefleet_localcluster.flowcontrol import settled_counts
from voicefleet_localcluster.kubeapi import KubeClient
from voicefleet_localcluster.kubeconfig import load as load_kubeconfig
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster
from voicefleet_operator.settings import DEFAULT_WORKERS

NAMESPACE = "scale"
FLOW = "voicefleet-operator-bench"
DOC = REPO / "docs" / "operator.md"
SECTION = "operator-scale"
PARALLEL_THREADS = 8
"""``--applier parallel``: server-side applies in flight at once (not what a user runs)."""
KINDS = (
    "ttsvoices",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "events",
    "replicasets",
    "endpoints",
    "endpointslices",
    "ipaddresses",
)
"""Resources whose request counts the table splits by verb: the voices, what the operator
makes, and what the controllers and the API server write for those."""
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager")
"""Control-plane processes whose CPU time over the run is recorded, with the operator's."""
NODE_COMPONENTS = ("kube-proxy", "kube-router", "kubelet", "containerd")
"""The real node's processes, recorded too when it runs (with their reaped children:
kube-proxy's ``iptables-restore`` for each Service change): they watch every Service and
EndpointSlice the voices bring and share the cores with the rest."""


def voices(count: int) -> str:
    """The catalogue as one ``kubectl apply`` input."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": catalogue(count, NAMESPACE)})


def _names(client: KubeClient, path: str) -> set[str]:
    items = client.get(path, limit=100000).get("items") or []
    return {str((item.get("metadata") or {}).get("name")) for item in items}


def count_done(client: KubeClient) -> tuple[int, int, int, int]:
    """(Deployments, Services, PDBs, voices whose status caught up with their generation)."""
    ns = NAMESPACE
    deployments = _names(client, f"/apis/apps/v1/namespaces/{ns}/deployments")
    services = _names(client, f"/api/v1/namespaces/{ns}/services")
    pdbs = _names(client, f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets")
    items = client.get(f"/apis/voicefleet.io/v1alpha1/namespaces/{ns}/ttsvoices").get("items")
    observed = sum(
        1
        for v in items or []
        if (v.get("status") or {}).get("observedGeneration") == v["metadata"]["generation"]
    )
    return len(deployments), len(services), len(pdbs), observed


class DoneClock:
    """When each voice of the run was done, from watches instead of polling.

    Three watches (voices, Deployments, Services in the namespace) record the moment each
    Deployment and Service is first seen and each voice's status first shows
    ``observedGeneration`` equal to its generation; the run is done at the latest of
    those 3·N moments. Polling (four LISTs a second) quantized "done" to the poll period
    (up to a second late) and added its own load to the API server it measures; a watch
    event arrives within milliseconds of the write and costs the server one encoding.
    The watches start from the namespace's listing before the apply, so nothing written
    after it is missed however late a stream connects.
    """

    def __init__(self, client: KubeClient, count: int) -> None:
        self.count = count
        self.client = client
        self.voice_added: dict[str, float] = {}
        self.voice_done: dict[str, float] = {}
        self.deployments: dict[str, float] = {}
        self.services: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> None:
        ns = NAMESPACE
        for path, seen in (
            (f"/apis/voicefleet.io/v1alpha1/namespaces/{ns}/ttsvoices", self._voice),
            (f"/apis/apps/v1/namespaces/{ns}/deployments", self._first(self.deployments)),
            (f"/api/v1/namespaces/{ns}/services", self._first(self.services)),
        ):
            version = str(self.client.get(path)["metadata"]["resourceVersion"])
            thread = threading.Thread(target=self._follow, args=(path, version, seen), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _first(self, into: dict[str, float]) -> Callable[[dict[str, Any], float], None]:
        def seen(obj: dict[str, Any], now: float) -> None:
            into.setdefault(str(obj["metadata"]["name"]), now)

        return seen

    def _voice(self, obj: dict[str, Any], now: float) -> None:
        name = str(obj["metadata"]["name"])
        self.voice_added.setdefault(name, now)
        if (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]:
            self.voice_done.setdefault(name, now)

    def _follow(
        self, path: str, version: str, seen: Callable[[dict[str, Any], float], None]
    ) -> None:
        try:
            while not self._stop.is_set():
                params = {"resourceVersion": version, "allowWatchBookmarks": "true"}
                for event in self.client.watch(path, params, self._stop, timeout_seconds=600):
                    obj = event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        seen(obj, time.monotonic())
                        with self._changed:
                            self._changed.notify_all()
        except Exception as exc:  # reported by wait(): a broken clock must not pass silently
            self.errors.append(f"{path}: {exc!r}")
            with self._changed:
                self._changed.notify_all()

    def done(self) -> bool:
        return min(len(self.voice_done), len(self.deployments), len(self.services)) >= self.count

    def wait(self, timeout: float) -> bool:
        """True once every voice is done; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.done() and not self.errors:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        if self.errors:
            raise RuntimeError(f"a watch of the done clock failed: {self.errors}")
        return True

    def finished_at(self) -> float:
        return max(
            max(self.voice_done.values()),
            max(self.deployments.values()),
            max(self.services.values()),
        )

    def latencies(self) -> list[float]:
        """Per voice: from its creation reaching the watch to its status at its generation."""
        return sorted(
            self.voice_done[name] - self.voice_added[name]
            for name in self.voice_done
            if name in self.voice_added
        )


_WATCH_METRICS = {
    "apiserver_watch_events_total": "events",
    "apiserver_watch_events_sizes_sum": "bytes",
}


def watch_traffic(cluster: LocalCluster) -> Counter[str]:
    """Watch events the API server has sent to all watchers so far, and their bytes, by
    resource (``"deployments events"``, ``"deployments bytes"``), from its ``/metrics``:
    what each kind's writes cost in fan-out (the operator decodes every event it gets)."""
    sent: Counter[str] = Counter()
    for line in cluster.kubectl_run("get", "--raw", "/metrics").stdout.splitlines():
        name, _, rest = line.partition("{")
        if name in _WATCH_METRICS:
            labels, _, value = rest.rpartition("} ")
            resource = labels.split('resource="', 1)[1].split('"', 1)[0]
            sent[f"{resource} {_WATCH_METRICS[name]}"] += int(float(value))
    return sent


def cpu_with_children(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of the children it has reaped (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far, from ``/proc/stat``: the share of
    the window the cores were busy tells a CPU-bound run from one that waits."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def deployments_observed(client: KubeClient) -> int:
    """Deployments whose controller has observed their generation (it writes their status)."""
    items = client.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", limit=100000)
    return sum(
        1
        for d in items.get("items") or []
        if (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
    )


def _operator_env(operator_src: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    if operator_src is not None:
        paths = [str(operator_src / "operator"), str(operator_src / "crds")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the operator until stopped (SIGINT makes it write ``out``).

    A ``-gil`` in the file's stem keeps only the thread holding the GIL: the operator's
    CPU, without the threads that wait for the API server or for the GIL itself."""
    spy = Path(sys.executable).parent / "py-spy"
    argv = [str(spy), "record", "--pid", str(pid), "--rate", "50", "--subprocesses"]
    argv += ["--gil"] if "-gil" in out.stem else []
    argv += ["--format", "raw" if out.suffix == ".txt" else "flamegraph", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def run(
    count: int,
    workers: int | None,
    seconds_per_voice: float,
    operator_src: Path | None,
    profile: Path | None = None,
    applier: str = "kubectl",
    node: bool = True,
) -> dict[str, Any]:
    cluster = start_local_cluster(
        log=lambda line: print(f"[cluster] {line}", file=sys.stderr), real_node=node
    )
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    proc: subprocess.Popen[bytes] | None = None
    client = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=60)
    watcher = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=60)
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
        cluster.kubectl_run("create", "namespace", NAMESPACE)
        proc, log_path = start_operator(
            cluster,
            work,
            FLOW,
            ["--all-namespaces"],
            extra=[] if workers is None else [f"--workers={workers}"],
            env=_operator_env(operator_src),
        )
        flow_before, verbs_before = settled_counts(
            cluster, FLOW, quiet=3.0, timeout=120.0, kinds=KINDS
        )
        idle = memory_mb(proc.pid)

        limit = max(120.0, seconds_per_voice * count)
        spy = _profiler(proc.pid, profile) if profile is not None else None
        pids = {name: cluster.state.pids[name] for name in COMPONENTS}
        pids["operator"] = proc.pid
        pids.update({n: cluster.state.pids[n] for n in NODE_COMPONENTS if n in cluster.state.pids})
        traffic_before = watch_traffic(cluster)
        clock = DoneClock(watcher, count)
        clock.start()
        cpu_before = {name: cpu_with_children(pid) for name, pid in pids.items()}
        ticks_before = machine_ticks()
        started = time.monotonic()
        if applier == "kubectl":
            cluster.kubectl_run(
                "apply", "--server-side", "-f", "-", input=voices(count), timeout=limit
            )
        elif applier == "kubectl-client-side":  # a GET, then a create, per voice
            cluster.kubectl_run("apply", "-f", "-", input=voices(count), timeout=limit)
        else:  # the same server-side apply PATCHes, PARALLEL_THREADS at a time
            parallel_apply(client, json.loads(voices(count))["items"], PARALLEL_THREADS)
        applied = time.monotonic() - started
        if not clock.wait(limit - applied):
            n_dep, n_svc, n_pdb, n_obs = count_done(client)
            raise SystemExit(
                f"{count} voices not done after {limit:.0f} s: {n_dep} Deployments, "
                f"{n_svc} Services, {n_pdb} PDBs, {n_obs} statuses (log {log_path})"
            )
        seen_done = time.monotonic() - started
        cpu = {
            name: round(cpu_with_children(pid) - cpu_before[name], 2) for name, pid in pids.items()
        }
        ticks_after = machine_ticks()
        traffic = {k: v for k, v in (watch_traffic(cluster) - traffic_before).most_common() if v}
        clock.stop()
        total = clock.finished_at() - started
        n_dep, n_svc, _, n_obs = count_done(client)  # the watches' verdict, checked by a listing
        if not n_dep == n_svc == n_obs == count:
            raise SystemExit(f"the watches said done, the listing did not: {n_dep, n_svc, n_obs}")
        observed_at_done = deployments_observed(client)
        latencies = clock.latencies()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        memory = memory_mb(proc.pid)
        # The operator writes a voice's status again once the Deployment controller has
        # observed its Deployment, and that controller (20 requests/s, ~4 writes a
        # Deployment) trails a burst of 1,000 by minutes: wait as long as the run may take.
        settle_started = time.monotonic()
        flow_after, verbs_after = settled_counts(
            cluster, FLOW, quiet=5.0, timeout=limit, kinds=KINDS
        )
        settle_seconds = time.monotonic() - settle_started
        verbs = {k: v for k, v in (verbs_after - verbs_before).most_common() if v}
        writes = sum(v for k, v in verbs.items() if k.split()[0] in WRITE_VERBS)
        return {
            "voices": count,
            "applier": applier,
            "node": node,
            "apply_seconds": round(applied, 2),
            "all_deployments_seconds": round(max(clock.deployments.values()) - started, 2),
            "all_reconciled_seconds": round(total, 2),
            "done_noticed_seconds": round(seen_done, 2),
            # kubectl's own start (reading, discovery) before the first voice is stored:
            # part of what a user waits for, so inside the figure of record, shown apart
            "first_voice_stored_seconds": round(min(clock.voice_added.values()) - started, 2),
            "voice_latency_seconds": {
                "median": round(statistics.median(latencies), 2),
                "p90": round(latencies[int(0.9 * (len(latencies) - 1))], 2),
                "max": round(latencies[-1], 2),
            },
            "settled_after_done_seconds": round(settle_seconds, 1),
            "limit_seconds": limit,
            "pdbs": count_done(client)[2],
            "deployments_observed_at_done": observed_at_done,
            "cpu_seconds_to_done": cpu,
            "watch_traffic_to_done": traffic,
            "machine_busy_to_done": round(
                (ticks_after[0] - ticks_before[0]) / max(1, ticks_after[1] - ticks_before[1]), 2
            ),
            "operator_requests": flow_after - flow_before,
            "operator_requests_per_voice": round((flow_after - flow_before) / count, 2),
            "requests_by_verb": verbs,
            "writes": writes,
            "writes_per_voice": round(writes / count, 2),
            "rss_idle_mb": round(idle["VmRSS"], 1),
            "rss_after_mb": round(memory["VmRSS"], 1),
            "rss_peak_mb": round(memory["VmHWM"], 1),
            "workers": workers or DEFAULT_WORKERS,
            "cpus": os.cpu_count(),
            "load_average": Path("/proc/loadavg").read_text().split()[:3],
            "revision": git_revision(("operator",)) if operator_src is None else str(operator_src),
        }
    finally:
        client.close()
        watcher.close()
        if proc is not None:
            stop_process(proc, grace=20)
        cluster.stop()


def table(results: list[dict[str, Any]], command: str, label: str) -> str:
    rows = [
        "| voices | `kubectl apply` returned | all Deployments exist | all reconciled "
        "(objects + status) | operator requests (per voice) | RSS idle → after (peak) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['voices']} | {fmt(r['apply_seconds'])} s | "
            f"{fmt(r['all_deployments_seconds'])} s | **{fmt(r['all_reconciled_seconds'])} s** | "
            f"{r['operator_requests']} ({fmt(r['operator_requests_per_voice'], 2)}) | "
            f"{fmt(r['rss_idle_mb'], 0)} → **{fmt(r['rss_after_mb'], 0)} MB** "
            f"({fmt(r['rss_peak_mb'], 0)}) |"
        )
    split = []
    for r in results:
        verbs = ", ".join(f"{k} {v}" for k, v in r["requests_by_verb"].items())
        split.append(
            f"- {r['voices']} voices, every client's requests by verb ({r.get('writes', '?')} "
            f"writes, {fmt(r.get('writes_per_voice', 0), 2)} a voice): {verbs}"
        )
        if "cpu_seconds_to_done" in r:
            cpu = ", ".join(f"{k} {fmt(v, 1)}" for k, v in r["cpu_seconds_to_done"].items())
            split.append(f"- {r['voices']} voices, CPU seconds from the apply to done: {cpu}")
    loads = "; ".join(
        f"{r['voices']} voices: operator from {r.get('revision', '?')}, load average "
        f"{' '.join(r['load_average'])} at the end"
        for r in results
    )
    return "\n".join(
        [
            f"{label} Measured by `{command}` ({os.cpu_count()} cores, shared with other "
            f"work: compare ratios, not absolute times; {loads}).",
            "",
            *rows,
            "",
            *split,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--voices", type=int, nargs="+", default=[100, 1000], help="one run per count"
    )
    parser.add_argument("--workers", type=int, default=None, help="operator --workers")
    parser.add_argument(
        "--seconds-per-voice",
        type=float,
        default=0.5,
        help="give up after this many seconds per voice (at least 120 s)",
    )
    parser.add_argument(
        "--operator-src", type=Path, help="run the operator from this checkout (before figures)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the operator from apply to done into this file (.svg flame graph, "
        ".txt collapsed stacks; a name with -gil, e.g. prof-gil.txt: only the thread "
        "holding the GIL); needs `pip install py-spy`",
    )
    parser.add_argument(
        "--section",
        default=SECTION,
        help=f"the bench block of {DOC.relative_to(REPO)} to replace",
    )
    parser.add_argument("--label", default="", help="a sentence before the table")
    parser.add_argument(
        "--applier",
        choices=("kubectl", "kubectl-client-side", "parallel"),
        default="kubectl",
        help="kubectl apply --server-side (what a user runs), plain kubectl apply (client-"
        "side: the last-applied annotation, a GET and a create per voice), or the same "
        f"server-side applies from {PARALLEL_THREADS} threads (voicefleet_bench.apply_cost)",
    )
    parser.add_argument(
        "--no-node",
        action="store_true",
        help="the control plane alone, no real node (nothing here needs one: replicas 0); "
        "without its kube-proxy, kube-router and kubelet watching the new Services",
    )
    parser.add_argument("--no-doc", action="store_true", help=f"do not write {DOC.name}")
    args = parser.parse_args()
    command = " ".join(["python -m voicefleet_bench.operator_scale", *sys.argv[1:]])
    results = [
        run(
            n,
            args.workers,
            args.seconds_per_voice,
            args.operator_src,
            args.profile.with_stem(f"{args.profile.stem}-{n}") if args.profile else None,
            args.applier,
            not args.no_node,
        )
        for n in args.voices
    ]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not args.no_doc:
        write_section(DOC, args.section, table(results, command, args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
