"""The real node: containers on kubelet + containerd + runc, Services, cluster DNS.

What a runtime enforces is asserted as the kernel and containerd report it: the
OOM killer's OOMKilled, containerd's own pull error, a read-only root filesystem,
the termination message read from the container's file. Client pods are started
with `kubectl run`, as a user would. Images are the node's own (busybox), built
locally because no registry is reachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nodeclients import BUSYBOX, RESTRICTED, rolled_out, run_client, steady_load, terminated
from operatorprocs import new_operator, voice_manifest

from voicefleet_localcluster import node, nodeimages
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture
def real_namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real node's cluster, named after the test."""
    with local_cluster.namespace(request.node.name) as name:
        yield name


def pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    """A one-container busybox pod, restricted securityContext, never restarted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": RESTRICTED,
                    **container,
                }
            ],
        },
    }


def test_node_is_real_ready_and_serves_dns(local_cluster: LocalCluster) -> None:
    obj = local_cluster.get_json("node", local_cluster.node_name)
    info = obj["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert info["kubeletVersion"].startswith("v1.34")
    addresses = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
    assert addresses["InternalIP"] == node.NODE_IP
    assert obj["status"]["capacity"]["nvidia.com/gpu"] == "4"
    svc = local_cluster.get_json("service", "kube-dns", "-n", "kube-system")
    assert svc["spec"]["clusterIP"] == node.DNS_SERVICE_IP
    endpoints = local_cluster.get_json("endpoints", "kubernetes", "-n", "default")
    assert endpoints["subsets"][0]["addresses"][0]["ip"] == node.NODE_IP


def test_in_cluster_http_by_dns_name_from_a_kubectl_run_client(
    local_cluster: LocalCluster, real_namespace: str
) -> None:
    ns = real_namespace
    serve = "echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    web = pod("web", ["sh", "-c", serve], volumeMounts=[{"name": "www", "mountPath": "/www"}])
    volumes = [{"name": "www", "emptyDir": {}}]
    web_spec = web["spec"] | {"restartPolicy": "Always", "volumes": volumes}
    local_cluster.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": web_spec,
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ],
        namespace=ns,
    )
    wait_for(lambda: local_cluster.ready_pods(ns, "app=web"), timeout=120, what="web pod ready")
    # From the host first, through kube-proxy, at the Service's ClusterIP: once that
    # answers, kube-proxy has programmed the Service and the client's call cannot race it.
    cluster_ip = local_cluster.get_json("service", "web", "-n", ns)["spec"]["clusterIP"]
    body = wait_for(
        lambda: httpx.get(f"http://{cluster_ip}/", timeout=5).text, timeout=60, what="ClusterIP"
    )
    assert body.startswith("hello-from-web-")
    url = f"http://web.{ns}.svc.{node.CLUSTER_DOMAIN}/"
    # busybox's `wget -T` segfaults: `timeout` bounds each try instead.
    fetch = f"timeout 10 wget -q -O - {url}"
    ok, logs = run_client(local_cluster, ns, "client", f"{fetch} || {{ sleep 2; {fetch}; }}")
    assert ok, logs
    assert logs.strip().startswith("hello-from-web-"), logs


def test_the_kernel_oomkills_a_container_over_its_memory_limit(
    local_cluster: LocalCluster, real_namespace: str
) -> None:
    ns = real_namespace
    # `tail` keeps the last line of its input in memory; /dev/zero has no newline.
    hog = pod(
        "hog",
        ["sh", "-c", "head -c 200m /dev/zero | tail"],
        resources={"limits": {"memory": "40Mi"}, "requests": {"memory": "40Mi"}},
    )
    local_cluster.apply(hog, namespace=ns)
    state = terminated(local_cluster, ns, "hog")
    assert state["reason"] == "OOMKilled", state
    assert state["exitCode"] == 137


def test_a_missing_image_is_reported_with_containerds_pull_error(
    local_cluster: LocalCluster, real_namespace: str
) -> None:
    ns = real_namespace
    missing = pod("ghost", ["sh"], image=f"{nodeimages.REPOSITORY}/missing:1")
    missing["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    local_cluster.apply(missing, namespace=ns)

    def waiting() -> dict[str, Any] | None:
        status = local_cluster.get_json("pod", "ghost", "-n", ns)["status"]
        for container in status.get("containerStatuses") or []:
            state = container.get("state", {}).get("waiting") or {}
            if state.get("reason") in ("ErrImagePull", "ImagePullBackOff") and state.get("message"):
                result: dict[str, Any] = state
                return result
        return None

    state = wait_for(waiting, timeout=120, interval=0.5, what="an image pull error")
    assert (
        "failed to pull and unpack image" in state["message"]
        or "failed to resolve" in (state["message"])
    ), state
    assert f"{nodeimages.REPOSITORY}/missing:1" in state["message"]


def test_a_read_only_root_filesystem_refuses_writes_but_an_emptydir_takes_them(
    local_cluster: LocalCluster, real_namespace: str
) -> None:
    ns = real_namespace
    script = "touch /oops 2>&1; touch /scratch/fine && echo scratch-ok; id -u"
    writer = pod(
        "writer",
        ["sh", "-c", script],
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    writer["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    local_cluster.apply(writer, namespace=ns)
    state = terminated(local_cluster, ns, "writer")
    logs = local_cluster.kubectl_run("logs", "writer", "-n", ns).stdout
    assert state["exitCode"] == 0, logs
    assert "Read-only file system" in logs
    assert "scratch-ok" in logs
    assert logs.split()[-1] == "65532"  # the image's non-root user


def test_the_termination_message_comes_from_the_containers_file(
    local_cluster: LocalCluster, real_namespace: str
) -> None:
    ns = real_namespace
    script = "echo 'model file missing: /models/x.onnx' > /dev/termination-log; exit 3"
    local_cluster.apply(pod("crasher", ["sh", "-c", script]), namespace=ns)
    state = terminated(local_cluster, ns, "crasher")
    assert state["exitCode"] == 3
    assert state["message"].strip() == "model file missing: /models/x.onnx"


def test_voice_pods_drain_with_no_failed_request_through_a_scale_down_and_a_rollout(
    local_cluster: LocalCluster, real_namespace: str, tmp_path: Path
) -> None:
    """The operator's pods in containers, called at the voice's Service (kube-proxy) while
    it scales 2 -> 1 and then rolls out a new template: preStop, the server's drain and
    the grace period keep every request answered. Each request opens its own connection,
    as a client without keep-alive does (a kept-alive connection stays pinned to its pod
    by conntrack, which is the client's retry problem, not the pod's)."""
    ns = real_namespace
    local_cluster.install_crds()
    operator = new_operator(local_cluster.kubeconfig, tmp_path / "operator.log", namespaces=[ns])
    operator.start(timeout=90)
    try:
        local_cluster.apply(
            voice_manifest(
                "drain",
                engine="simulated",
                replicas=2,
                resources={"cpu": "250m", "memory": "256Mi"},
                server={"drainGraceSeconds": 5},
                autoscaling={"enabled": False},
            ),
            namespace=ns,
        )
        selector = "voicefleet.io/voice=drain"
        wait_for(
            lambda: len(local_cluster.ready_pods(ns, selector)) == 2,
            timeout=240,
            what=f"two ready voice pods (operator log {operator.log_path})",
        )
        cluster_ip = local_cluster.get_json("service", "drain", "-n", ns)["spec"]["clusterIP"]
        url = f"http://{cluster_ip}/v1/audio/speech"
        body = {"model": "en_US-joe-medium", "input": "Keep talking.", "voice": "default"}

        def answered() -> bool:
            response = httpx.post(url, json=body, timeout=10)
            assert response.status_code == 200, response.text[:300]
            return True

        wait_for(answered, timeout=60, what=f"speech at the Service {url}")

        with steady_load(url, body) as outcomes:
            time.sleep(2)
            old = {p["metadata"]["name"] for p in local_cluster.pods(ns, selector)}
            local_cluster.kubectl_run(
                "patch", "ttsvoice", "drain", "-n", ns, "--type=merge",
                "-p", json.dumps({"spec": {"replicas": 1}}),
            )  # fmt: skip
            wait_for(
                lambda: len(local_cluster.pods(ns, selector)) == 1, timeout=120, what="scale to 1"
            )
            scaled_down = len(outcomes)
            local_cluster.kubectl_run(
                "patch", "ttsvoice", "drain", "-n", ns, "--type=merge",
                "-p", json.dumps({"spec": {"server": {"maxQueue": 32}}}),
            )  # fmt: skip
            wait_for(
                lambda: rolled_out(local_cluster, ns, selector, old, 1),
                timeout=240,
                what="the rollout to replace the pod",
            )
            time.sleep(2)
    finally:
        operator.stop()
    failed = [o for o in outcomes if o != "200"]
    print(f"\n{len(outcomes)} requests, {scaled_down} before the rollout, failed: {failed[:5]}")
    assert scaled_down > 5, outcomes[:5]
    assert len(outcomes) > 20, outcomes[:5]
    assert not failed, f"{len(failed)} of {len(outcomes)} failed: {failed[:5]}"
