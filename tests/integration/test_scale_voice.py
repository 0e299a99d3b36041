"""``voicefleet_api.scale.scale_voice`` against a real kube-apiserver with the TTSVoice CRD.

The one writer of a voice's replica count must go through the scale subresource (so the
CRD's CEL bounds and RBAC on ``ttsvoices/scale`` apply), stay inside the voice's own
``minReplicas..maxReplicas`` and write nothing when the count is already right. No
operator runs here: the API alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from voicefleet_api.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from voicefleet_api.scale import ScaleError, scale_voice
from voicefleet_localcluster.testing import LocalCluster

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(180)]

CRD = Path(__file__).resolve().parents[2] / "crds" / "ttsvoices.yaml"


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> Iterator[k8s_client.ApiClient]:
    """The CRD installed and served, and a client of the real API server."""
    local_cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    local_cluster.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/ttsvoices.voicefleet.io"
    )
    client = k8s_config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def create_voice(cluster: LocalCluster, namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"model": {"bundled": "en_US-joe-medium"}, **spec},
    }
    cluster.kubectl_run("create", "-n", namespace, "-f", "-", input=json.dumps(body))


def stored(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("ttsvoice", name, "-n", namespace)


def test_writes_the_replicas_through_the_scale_subresource(
    local_cluster: LocalCluster, api: k8s_client.ApiClient, cluster_namespace: str
) -> None:
    create_voice(
        local_cluster,
        cluster_namespace,
        "joe",
        replicas=1,
        autoscaling={"minReplicas": 1, "maxReplicas": 4},
    )
    result = scale_voice(api, cluster_namespace, "joe", 3)
    assert (result.previous, result.replicas, result.changed, result.clamped) == (
        1,
        3,
        True,
        False,
    )
    voice = local_cluster.get_json(
        "ttsvoice", "joe", "-n", cluster_namespace, "--show-managed-fields"
    )
    assert voice["spec"]["replicas"] == 3
    writers = [m for m in voice["metadata"]["managedFields"] if m.get("subresource") == "scale"]
    assert writers, voice["metadata"]["managedFields"]
    scale = k8s_client.CustomObjectsApi(api).get_namespaced_custom_object_scale(
        GROUP, VERSION, cluster_namespace, PLURAL, "joe"
    )
    assert scale["spec"]["replicas"] == 3


def test_clamps_to_the_voices_own_bounds(
    local_cluster: LocalCluster, api: k8s_client.ApiClient, cluster_namespace: str
) -> None:
    create_voice(
        local_cluster,
        cluster_namespace,
        "bounded",
        replicas=2,
        autoscaling={"minReplicas": 2, "maxReplicas": 5},
    )
    high = scale_voice(api, cluster_namespace, "bounded", 50)
    assert (high.previous, high.replicas, high.requested, high.clamped) == (2, 5, 50, True)
    assert stored(local_cluster, cluster_namespace, "bounded")["spec"]["replicas"] == 5
    low = scale_voice(api, cluster_namespace, "bounded", 0)
    assert (low.previous, low.replicas, low.clamped) == (5, 2, True)
    assert stored(local_cluster, cluster_namespace, "bounded")["spec"]["replicas"] == 2


def test_scales_to_zero_only_when_min_replicas_allows_it(
    local_cluster: LocalCluster, api: k8s_client.ApiClient, cluster_namespace: str
) -> None:
    create_voice(
        local_cluster,
        cluster_namespace,
        "idle",
        replicas=1,
        autoscaling={"minReplicas": 0, "maxReplicas": 2},
    )
    assert scale_voice(api, cluster_namespace, "idle", 0).replicas == 0
    assert stored(local_cluster, cluster_namespace, "idle")["spec"]["replicas"] == 0


def test_writes_nothing_when_the_count_is_already_right(
    local_cluster: LocalCluster, api: k8s_client.ApiClient, cluster_namespace: str
) -> None:
    create_voice(
        local_cluster,
        cluster_namespace,
        "steady",
        replicas=3,
        autoscaling={"minReplicas": 1, "maxReplicas": 3},
    )
    before = stored(local_cluster, cluster_namespace, "steady")["metadata"]["resourceVersion"]
    same = scale_voice(api, cluster_namespace, "steady", 3)
    clamped_to_same = scale_voice(api, cluster_namespace, "steady", 10)
    assert (same.changed, same.replicas) == (False, 3)
    assert (clamped_to_same.changed, clamped_to_same.replicas) == (False, 3)
    after = stored(local_cluster, cluster_namespace, "steady")["metadata"]["resourceVersion"]
    assert after == before


def test_a_missing_voice_is_a_scale_error_with_the_status(
    api: k8s_client.ApiClient, cluster_namespace: str
) -> None:
    with pytest.raises(ScaleError) as caught:
        scale_voice(api, cluster_namespace, "nobody", 2)
    assert caught.value.status == 404
    assert "nobody" in caught.value.message
