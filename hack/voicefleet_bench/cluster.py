"""The stage of the cluster benchmarks: a fresh local cluster, the CRDs, one namespace, and
``voicefleet-operator`` watching it (standalone), all gone again on the way out.

One home, so the autoscaler benchmarks start the operator one way and a change to its
flags or to cluster start-up is made once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from voicefleet_bench.procs import BIN, free_port
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster


@contextlib.contextmanager
def operator_stage(namespace: str, log_path: Path, *flags: str) -> Iterator[LocalCluster]:
    """Yield the cluster once the operator (with ``flags``) runs, its output in ``log_path``."""
    cluster = start_local_cluster(log=lambda line: print(line, file=sys.stderr))
    operator: subprocess.Popen[bytes] | None = None
    try:
        cluster.install_crds()
        cluster.kubectl_run("create", "namespace", namespace)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        argv = [
            str(BIN / "voicefleet-operator"),
            f"--namespace={namespace}",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--health-port={free_port()}",
            f"--metrics-port={free_port()}",
            "--standalone",
            *flags,
        ]
        with log_path.open("wb") as log:
            operator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        yield cluster
    finally:
        if operator is not None:
            stop_process(operator, grace=20)
        cluster.stop()
