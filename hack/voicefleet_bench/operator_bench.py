"""What the operator benchmarks share: the voice catalogue, its parallel applier, and the
operator started as its ServiceAccount with its requests in a flow of their own.

``operator_scale`` (end to end: N voices applied to reconciled) and ``apply_cost`` (what
one create costs the API server) apply the same catalogue to the same operator, set up
alike, so their figures can be read together: the chart's RBAC (the one source), a
FlowSchema that counts exactly the operator's requests (``voicefleet_localcluster.flowcontrol``),
and ``/healthz`` before anything is applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from voicefleet_bench.procs import free_port
from voicefleet_localcluster.flowcontrol import service_account_flow
from voicefleet_localcluster.kubeapi import KubeClient
from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, wait_for

__all__ = ["OPERATOR", "SA_NAME", "SA_NAMESPACE", "catalogue", "parallel_apply", "start_operator"]

OPERATOR = Path(sys.executable).parent / "voicefleet-operator"
SA_NAMESPACE, SA_NAME = "voicefleet-system", "voicefleet-operator"
_GROUP_PATH = "/apis/voicefleet.io/v1alpha1"


def catalogue(count: int, namespace: str) -> list[dict[str, Any]]:
    """The benchmarks' voice, ``count`` times (replicas 0: no pods, so what is measured is
    the operator and the API server, not the node)."""
    return [
        {
            "apiVersion": "voicefleet.io/v1alpha1",
            "kind": "TTSVoice",
            "metadata": {"name": f"voice-{i:04d}", "namespace": namespace},
            "spec": {
                "replicas": 0,
                "model": {"bundled": "en_US-joe-medium"},
                "resources": {"cpu": "250m", "memory": "512Mi"},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
            },
        }
        for i in range(count)
    ]


def parallel_apply(client: KubeClient, items: list[dict[str, Any]], threads: int) -> None:
    """Server-side apply each item (kubectl's PATCH, field manager ``kubectl``) from
    ``threads`` threads at once."""

    def one(item: dict[str, Any]) -> None:
        meta = item["metadata"]
        client.request(
            "PATCH",
            f"{_GROUP_PATH}/namespaces/{meta['namespace']}/ttsvoices/{meta['name']}",
            params={"fieldManager": "kubectl", "force": "true", "fieldValidation": "Strict"},
            body=item,
            content_type="application/apply-patch+yaml",
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, items))


def start_operator(
    cluster: LocalCluster,
    work: Path,
    flow: str,
    scope: Sequence[str],
    *,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """The operator as its ServiceAccount (the chart's RBAC), its requests counted in the
    FlowSchema ``flow``, watching ``scope`` (``--all-namespaces`` or ``--namespace=…``
    flags), started and healthy. Returns the process and its log; the caller stops it.

    ``env``: the process's environment (default: this one's, less ``KUBECONFIG``).
    """
    cluster.kubectl_run("create", "namespace", SA_NAMESPACE)
    cluster.apply(cluster.operator_rbac())
    cluster.apply(service_account_flow(flow, SA_NAMESPACE, SA_NAME))
    kubeconfig = cluster.service_account_kubeconfig(SA_NAMESPACE, SA_NAME, work / "sa.kubeconfig")
    health = free_port()
    argv = [
        str(OPERATOR),
        *scope,
        f"--kubeconfig={kubeconfig}",
        f"--health-port={health}",
        f"--metrics-port={free_port()}",
        "--standalone",
        *extra,
    ]
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    log_path = work / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200,
            timeout=90,
            what=f"operator /healthz (log {log_path})",
        )
    except BaseException:
        stop_process(proc, grace=20)
        raise
    return proc, log_path
