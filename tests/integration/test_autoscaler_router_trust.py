"""The issue-18 attack on the autoscaler, replayed: a look-alike router in another namespace.

A pod carrying the routers' labels in a namespace of the attacker's, serving a fake
``voicefleet_router_pending_requests`` for a zero-replica voice, made the operator scale
that voice up within 2 s. The operator runs here with ``--router-pod-selector`` and
``--router-namespace`` as the chart passes them (its ServiceAccount, the chart's RBAC); the
fake router is a real process-kubelet pod. Placed elsewhere it changes nothing; the same pod
in the router namespace (and answering without a token: the operator's scrape is not
refused here) does scale the voice, which shows the test could fail.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operatorprocs import Operator, new_operator, voice_manifest

from voicefleet_localcluster.testing import LocalCluster, python_image, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

LABELS = {"app.kubernetes.io/name": "voicefleet-router", "app.kubernetes.io/instance": "trust"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())

FAKE_ROUTER = textwrap.dedent(
    """
    import http.server, os
    PAGE = os.environ["PAGE"].encode()
    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(PAGE)
        def log_message(self, *args):
            pass
    http.server.HTTPServer((os.environ["POD_IP"], 8080), Metrics).serve_forever()
    """
)


def fake_router(name: str, voice: str) -> dict[str, Any]:
    page = f'voicefleet_router_pending_requests{{voice="{voice}"}} 5.0\n'
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {
            "containers": [
                {
                    "name": "router",
                    "image": python_image(),
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", FAKE_ROUTER],
                    "env": [
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                        {"name": "PAGE", "value": page},
                    ],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }
            ]
        },
    }


@pytest.fixture(scope="module")
def router_ns(local_cluster: LocalCluster) -> Iterator[str]:
    with local_cluster.namespace("trust-routers") as name:
        yield name


@pytest.fixture(scope="module")
def trusting_operator(
    sa_kubeconfig: Path, router_ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = new_operator(
        sa_kubeconfig,
        tmp_path_factory.mktemp("trust") / "operator.log",
        extra=[f"--router-pod-selector={SELECTOR}", f"--router-namespace={router_ns}"],
    )
    op.start(timeout=60)
    try:
        yield op
    finally:
        op.stop()


def replicas(cluster: LocalCluster, ns: str, name: str) -> int:
    return int(cluster.get_json("ttsvoice", name, "-n", ns)["spec"].get("replicas", 0))


def test_only_a_router_in_the_router_namespace_can_scale_a_voice_from_zero(
    local_cluster: LocalCluster,
    cluster_namespace: str,
    router_ns: str,
    trusting_operator: Operator,
) -> None:
    cluster, ns = local_cluster, cluster_namespace
    voice = voice_manifest(
        "target",
        replicas=0,
        engine="simulated",
        resources={"cpu": "100m", "memory": "256Mi"},
        autoscaling={"minReplicas": 0, "maxReplicas": 3},
    )
    cluster.apply(voice, namespace=ns)
    wait_for(
        lambda: cluster.get_json("deployment", "target", "-n", ns),
        timeout=60,
        what="the voice reconciled",
    )
    # the attacker's pod, in the attacker's (here: the voice's own) namespace
    cluster.apply(fake_router("lookalike", f"{ns}/target"), namespace=ns)
    wait_for(lambda: cluster.ready_pods(ns, SELECTOR), timeout=60, what="the fake router ready")
    time.sleep(5)  # the attack scaled within 2 s
    assert replicas(cluster, ns, "target") == 0, "a look-alike router scaled the voice"
    # the same pod where routers are trusted: read, and the voice scales
    cluster.apply(fake_router("trusted", f"{ns}/target"), namespace=router_ns)
    wait_for(
        lambda: replicas(cluster, ns, "target") >= 1,
        timeout=60,
        what=f"a scale from zero on the trusted router (log {trusting_operator.log_path})",
    )
