"""`helm install` in the namespaced mode on the local cluster: Roles only, end to end.

``rbac.scope=namespaces`` with one watched namespace: the release creates no ClusterRole
or ClusterRoleBinding; the operator (its Roles in the watched and the release namespace,
under its admission policy) serves a voice there and scales it from zero on a request the
router holds, which it reads from this release's router pods with the generated
``/metrics`` token; a voice in any other namespace is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from voicefleet_localcluster import stack
from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "vfns"
NAMESPACE = "vfns-system"
OPERATOR = f"{RELEASE}-voicefleet-operator"
ROUTER = f"{RELEASE}-voicefleet-router"


@dataclass(frozen=True)
class Installed:
    cluster: LocalCluster
    watched: str
    unwatched: str


def zero_voice(name: str) -> dict[str, Any]:
    """A TTSVoice on the simulated engine that idles at zero replicas."""
    return simulated_voice(
        name,
        replicas=0,
        autoscaling={
            "minReplicas": 0,
            "maxReplicas": 2,
            "scaleDownDelaySeconds": 2,
            "scaleToZeroIdleSeconds": 3,
            "coldStartTimeoutSeconds": 120,
        },
    )


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster) -> Iterator[Installed]:
    cluster = local_cluster
    watched = cluster.create_namespace("vfns-voices")
    unwatched = cluster.create_namespace("vfns-elsewhere")
    release = stack.release_for_test(
        cluster,
        release=RELEASE,
        namespace=NAMESPACE,
        voice_namespaces=[watched, unwatched],
        set_values=(
            "rbac.scope=namespaces",
            f"rbac.watchNamespaces={{{watched}}}",
            f"router.defaultNamespace={watched}",
            "router.replicas=1",
        ),
    )
    try:
        with release:
            yield Installed(cluster, watched, unwatched)
    finally:
        for ns in (watched, unwatched):
            cluster.delete_namespace(ns)


def test_the_release_grants_nothing_cluster_wide(installed: Installed) -> None:
    cluster = installed.cluster
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for kind in ("clusterroles", "clusterrolebindings"):
        assert cluster.get_json(kind, "-l", selector)["items"] == [], kind
    roles = cluster.get_json("roles", "-A", "-l", selector)["items"]
    placed = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles}
    assert placed == {
        (installed.watched, OPERATOR),
        (installed.watched, ROUTER),
        (NAMESPACE, OPERATOR),
    }


def test_a_held_request_scales_a_watched_voice_from_zero(installed: Installed) -> None:
    """The operator finds the router in its own namespace (a Role there), scrapes its
    /metrics with the token, scales the voice; the router answers the held request."""
    cluster, ns = installed.cluster, installed.watched
    cluster.apply(zero_voice("zero"), namespace=ns)
    wait_for(
        lambda: cluster.get_json("deployment", "zero", "-n", ns),
        timeout=60,
        what="the watched voice's Deployment",
    )
    (router,) = cluster.ready_pods(NAMESPACE, "app.kubernetes.io/name=voicefleet-router")
    url = f"http://{router['status']['podIP']}:8080"
    started = time.monotonic()
    with httpx.Client(timeout=150) as http:
        response = http.post(
            f"{url}/v1/audio/speech", json=stack.speech_request("zero", "Hello, namespaced.")
        )
    print(f"answered from zero replicas in {time.monotonic() - started:.1f} s")
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"
    assert response.headers.get("x-voicefleet-pod", "").startswith(f"{ns}/zero-")


def test_a_voice_in_an_unwatched_namespace_is_ignored(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.unwatched
    cluster.apply(zero_voice("outside"), namespace=ns)
    cluster.apply(zero_voice("inside"), namespace=installed.watched)
    wait_for(
        lambda: cluster.get_json("deployment", "inside", "-n", installed.watched),
        timeout=60,
        what="the watched voice's Deployment (the operator is alive)",
    )
    assert cluster.kubectl_run("get", "deployment", "outside", "-n", ns, check=False).returncode
    (pod,) = cluster.ready_pods(NAMESPACE, "app.kubernetes.io/name=voicefleet-operator")
    log = cluster.pod_log(NAMESPACE, pod["metadata"]["name"])
    assert "autoscaler loop started" in log
    assert "refused the scrape" not in log
    assert "Not enough permissions" not in log
