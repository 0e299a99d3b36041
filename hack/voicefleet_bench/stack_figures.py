"""Figures of the local stack: `make up` wall time and resident memory at rest.

    .venv/bin/python -m voicefleet_bench.stack_figures [--rest 60] [--state-dir DIR]

Runs `voicefleet-cluster stack-up` (what `make up` runs after `make install`) into a
scratch state dir, waits `--rest` seconds, sums the RSS of every process of the stack
(the control plane's, which carry the cluster's marker; the node's: containerd, shims,
kubelet, kube-proxy, kube-router; and every container in the kubepods cgroups: operator,
router, voice pods, CoreDNS), prints one line per program and the total, then stops it.
The control plane is started fresh each time; whether the Go binaries were cached
decides "fresh" vs "cached".
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from voicefleet_localcluster import node
from voicefleet_localcluster.controlplane import ClusterState
from voicefleet_localcluster.procs import marked_processes

BIN = Path(sys.executable).parent


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    for word in words:
        name = Path(word).name
        if name.startswith(("kube-", "etcd", "voicefleet-")):
            return name
    return Path(words[0]).name if words else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest", type=float, default=60.0, help="seconds at rest before RSS")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="vf-stack-figures-"))
    cli = str(BIN / "voicefleet-cluster")
    started = time.monotonic()
    subprocess.run([cli, "stack-up", "--state-dir", str(state_dir)], check=True)
    took = time.monotonic() - started
    try:
        print(f"stack-up: {took:.1f} s")
        time.sleep(args.rest)
        state = ClusterState.load(state_dir / "state.json")
        groups: dict[str, list[int]] = defaultdict(list)
        stack = {*marked_processes(state.cluster_id), *node.node_processes()}
        stack.update(node.pod_processes())
        for pid in sorted(stack):
            groups[label(pid)].append(rss_kib(pid))
        total = 0
        for name, values in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
            total += sum(values)
            print(f"  {name:<36} {len(values):>2} proc  {sum(values) / 1024:7.1f} MiB")
        print(f"RSS at rest after {args.rest:.0f} s: {total / 1024:.0f} MiB")
    finally:
        subprocess.run([cli, "stack-down", "--state-dir", str(state_dir)], check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
