"""The local cluster is real: API server, validation, controllers, scheduler, RBAC, and the
node (kubelet + containerd + runc), driven through its CLI, kubectl and Helm.

Every test talks to binaries built from the pinned Go modules (built on first use, never
skipped) and waits on conditions with deadlines, never fixed sleeps. The tests marked
`own_node` start a cluster of their own, so they run before the session's (one node per
host; tests/conftest.py orders them first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicefleet_localcluster import binaries
from voicefleet_localcluster import node as realnode
from voicefleet_localcluster.controlplane import ClusterStartError, ControlPlane
from voicefleet_localcluster.procs import alive, marked_processes
from voicefleet_localcluster.testing import LocalCluster, python_image, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "voicefleet-cluster"
PYTHON_IMAGE = python_image()


def http_server_deployment(name: str, replicas: int) -> dict[str, Any]:
    """A Deployment of Python's http.server on port 8080, Ready once it answers."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": PYTHON_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-m", "http.server", "8080"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


@pytest.mark.own_node
def test_cli_up_and_down_leave_nothing_behind(tmp_path: Path) -> None:
    """The CLI that `make cluster-up/down` call: pods serve, and `down` leaves no process,
    no container cgroup and no state behind."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    kubectl_bin = binaries.ensure_binaries() / "kubectl"
    up = subprocess.run(
        [str(CLI), "up", f"--state-dir={state_dir}"],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip
    state = json.loads((state_dir / "state.json").read_text()) if up.returncode == 0 else {}
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = state_dir / "kubeconfig"
        assert kubeconfig.is_file()

        def kubectl(*args: str, stdin: str | None = None) -> str:
            return subprocess.run(
                [str(kubectl_bin), f"--kubeconfig={kubeconfig}", *args],
                input=stdin, capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip

        wait_for(
            lambda: subprocess.run(
                [str(kubectl_bin), f"--kubeconfig={kubeconfig}", "get", "sa", "default"],
                capture_output=True, check=False,
            ).returncode == 0,
            timeout=60, what="default ServiceAccount",
        )  # fmt: skip
        kubectl(
            "apply", "-n", "default", "-f", "-", stdin=json.dumps(http_server_deployment("w", 2))
        )
        wait_for(
            lambda: kubectl("get", "pods", "-l", "app=w", "-o", "jsonpath={.items[*].status.podIP}")
            .split()
            .__len__()
            == 2
            and all(
                c == "True"
                for c in kubectl(
                    "get", "pods", "-l", "app=w",
                    "-o", 'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}',
                ).split()
            ),
            timeout=120, what="pods of the CLI's cluster ready",
        )  # fmt: skip
        assert realnode.kubepods_cgroups(), "the pods run in the kubelet's cgroups"
    finally:
        down = subprocess.run(
            [str(CLI), "down", f"--state-dir={state_dir}"],
            capture_output=True, text=True, timeout=180, env=env, check=False,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert marked_processes(state["cluster_id"]) == []
    assert not any(alive(pid) for pid in state["pids"].values())
    assert not realnode.kubepods_cgroups()
    assert not Path(state["work_dir"]).exists()
    assert not (state_dir / "kubeconfig").exists()
    assert not (state_dir / "state.json").exists()


def fault_injected_bin_dir(tmp_path: Path) -> Path:
    """The cached binaries, but a kube-apiserver that rejects its flags."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in binaries.ensure_binaries().iterdir():
        (bin_dir / binary.name).symlink_to(binary)
    (bin_dir / "kube-apiserver").unlink()
    (bin_dir / "kube-apiserver").write_text('#!/bin/sh\necho "unknown flag: --foo" >&2\nexit 1\n')
    (bin_dir / "kube-apiserver").chmod(0o755)
    return bin_dir


@pytest.mark.own_node
def test_a_failed_start_reports_the_log_tail_and_leaves_nothing_running(tmp_path: Path) -> None:
    """Fault injection: a kube-apiserver that rejects its flags, next to the real etcd."""
    plane = ControlPlane(bin_dir=fault_injected_bin_dir(tmp_path), log=lambda line: None)
    with pytest.raises(ClusterStartError, match="kube-apiserver exited with code 1") as failure:
        plane.start(timeout=60)
    message = str(failure.value)
    assert "unknown flag: --foo" in message
    kept = Path(message.split("log ", 1)[1].split(",", 1)[0])
    try:
        assert kept.is_file()  # the log survives; the rest of the work dir does not
        assert not plane.work_dir.exists()
        assert marked_processes(plane.cluster_id) == []
        assert realnode.owner_of_running_node() is None
    finally:
        shutil.rmtree(kept.parent, ignore_errors=True)


def test_a_second_start_is_refused_and_leaves_the_running_node_alone(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """One node per host: a second cluster's start names the running one and stops, and
    its clean-up touches nothing of the node it was refused (it once reset it)."""
    plane = ControlPlane(bin_dir=fault_injected_bin_dir(tmp_path), log=lambda line: None)
    with pytest.raises(ClusterStartError, match="a real node already runs on this host"):
        plane.start(timeout=60)
    assert not plane.work_dir.exists()
    assert local_cluster.kubectl_run("get", "--raw", "/readyz").stdout.strip() == "ok"
    node = local_cluster.get_json("node", local_cluster.node_name)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert realnode.containerd_ready()


def test_apiserver_is_healthy_and_node_ready(local_cluster: LocalCluster) -> None:
    assert local_cluster.kubectl_run("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(local_cluster.kubectl_run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.34")
    node = local_cluster.get_json("node", local_cluster.node_name)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert not node["spec"].get("taints"), "the node must not be tainted out from under pods"


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.voicefleet.io
spec:
  group: test.voicefleet.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.minReplicas <= self.maxReplicas
              message: minReplicas must not exceed maxReplicas
            properties:
              minReplicas: {type: integer, minimum: 0, default: 0}
              maxReplicas: {type: integer, minimum: 1, maximum: 10, default: 1}
"""


def widget(name: str, **spec: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "test.voicefleet.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_crd_schema_and_cel_rules_are_enforced(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    local_cluster.apply(CRD)
    local_cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd/widgets.test.voicefleet.io", "--timeout=60s"
    )
    ns = cluster_namespace
    wait_for(
        lambda: (
            local_cluster.kubectl_run(
                "apply",
                "-n",
                ns,
                "-f",
                "-",
                input=widget("ok", minReplicas=1, maxReplicas=3),
                check=False,
            ).returncode
            == 0
        ),
        what="the new CRD to be served",
    )
    defaulted = local_cluster.get_json("widget", "ok", "-n", ns)
    assert defaulted["spec"] == {"minReplicas": 1, "maxReplicas": 3}

    too_many = local_cluster.kubectl_run(
        "apply", "-n", ns, "-f", "-", input=widget("big", maxReplicas=11), check=False
    )
    assert too_many.returncode != 0
    assert "spec.maxReplicas" in too_many.stderr
    assert "should be less than or equal to 10" in too_many.stderr

    crossed = local_cluster.kubectl_run(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=widget("crossed", minReplicas=5, maxReplicas=2),
        check=False,
    )
    assert crossed.returncode != 0
    assert "minReplicas must not exceed maxReplicas" in crossed.stderr


def test_service_account_token_is_limited_to_its_role(
    local_cluster: LocalCluster, cluster_namespace: str, tmp_path: Path
) -> None:
    ns = cluster_namespace
    rbac = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: configmap-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {ns}}}
"""
    local_cluster.apply(rbac)
    config = local_cluster.service_account_kubeconfig(ns, "reader", tmp_path / "reader.kubeconfig")

    def as_reader(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(local_cluster.kubectl), f"--kubeconfig={config}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    allowed = as_reader("get", "configmaps", "-n", ns)
    assert allowed.returncode == 0, allowed.stderr
    user = f"system:serviceaccount:{ns}:reader"
    secrets = as_reader("get", "secrets", "-n", ns)
    assert secrets.returncode != 0
    assert f'User "{user}" cannot list resource "secrets"' in secrets.stderr
    elsewhere = as_reader("get", "configmaps", "-n", "default")
    assert elsewhere.returncode != 0
    assert "forbidden" in elsewhere.stderr.lower()
    writes = as_reader("create", "configmap", "x", "-n", ns, "--from-literal=a=b")
    assert writes.returncode != 0
    assert "cannot create resource" in writes.stderr


def test_gpu_requests_schedule_within_node_capacity(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace

    def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": PYTHON_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", "import time; time.sleep(3600)"],
                        "resources": {"limits": {"nvidia.com/gpu": gpus}},
                    }
                ]
            },
        }

    local_cluster.apply([gpu_pod("fits", 1), gpu_pod("too-big", 64)], namespace=ns)
    wait_for(lambda: local_cluster.ready_pods(ns), timeout=60, what="GPU pod ready")
    unschedulable = wait_for(
        lambda: next(
            (
                c
                for c in local_cluster.get_json("pod", "too-big", "-n", ns)["status"].get(
                    "conditions", []
                )
                if c["type"] == "PodScheduled" and c["status"] == "False"
            ),
            None,
        ),
        timeout=60,
        what="too-big to be reported unschedulable",
    )
    assert "nvidia.com/gpu" in unschedulable["message"]


IN_POD_CLIENT = textwrap.dedent(
    """
    import os
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    config.load_incluster_config()  # the token and CA the kubelet mounted
    api = client.CoreV1Api()
    ns = os.environ["NS"]
    print("configmaps", len(api.list_namespaced_config_map(ns).items))
    try:
        api.list_namespaced_secret(ns)
        print("secrets allowed")
    except ApiException as exc:
        print("secrets denied", exc.status)
    """
)


def test_pods_reach_the_api_server_as_their_service_account(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.kubectl_run("create", "serviceaccount", "app", "-n", ns)
    local_cluster.kubectl_run(
        "create", "role", "cm-reader", "--verb=list", "--resource=configmaps", "-n", ns
    )
    local_cluster.kubectl_run(
        "create", "rolebinding", "app", "--role=cm-reader", f"--serviceaccount={ns}:app", "-n", ns
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "serviceAccountName": "app",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": PYTHON_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", IN_POD_CLIENT],
                    "env": [
                        {
                            "name": "NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        }
                    ],
                }
            ],
        },
    }
    local_cluster.apply(pod, namespace=ns)
    wait_for(
        lambda: (
            local_cluster.get_json("pod", "client", "-n", ns)["status"].get("phase")
            in ("Succeeded", "Failed")
        ),
        timeout=60,
        what="the in-pod client to finish",
    )
    output = local_cluster.pod_log(ns, "client")
    assert "configmaps 1" in output, output  # kube-root-ca.crt, published by the controller
    assert "secrets denied 403" in output, output


def test_helm_installs_a_chart(
    local_cluster: LocalCluster, cluster_namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: hello\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    ns = cluster_namespace
    local_cluster.helm_run(
        "install", "demo", str(chart), "-n", ns, "--set", "greeting=hello", "--wait"
    )
    data = local_cluster.get_json("configmap", "demo-greeting", "-n", ns)["data"]
    assert data == {"greeting": "hello"}
    listed = json.loads(local_cluster.helm_run("list", "-n", ns, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [("demo", "deployed")]
    local_cluster.helm_run("uninstall", "demo", "-n", ns, "--wait")
    gone = local_cluster.kubectl_run("get", "configmap", "demo-greeting", "-n", ns, check=False)
    assert gone.returncode != 0


def test_kubectl_logs_reads_the_container_output(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    script = (
        "import time\nfor i in range(20):\n    print('line', i, flush=True)\n    time.sleep(0.1)"
    )
    local_cluster.kubectl_run(
        "run", "talker", "-n", ns, f"--image={PYTHON_IMAGE}", "--restart=Never", "--command",
        "--", "python", "-c", script,
    )  # fmt: skip
    # `logs -f` on a pod whose container has not started yet returns at once with nothing
    # (it failed so once on a loaded machine): follow once the container runs (or ran).
    wait_for(
        lambda: (
            local_cluster.get_json("pod", "talker", "-n", ns)["status"]["phase"]
            in ("Running", "Succeeded")
        ),
        what="talker to start",
    )
    followed = local_cluster.kubectl_run("logs", "-f", "talker", "-n", ns, timeout=60)
    assert followed.stdout.splitlines()[-1] == "line 19"  # -f ends when the container does
    wait_for(
        lambda: local_cluster.get_json("pod", "talker", "-n", ns)["status"]["phase"] == "Succeeded",
        what="pod to succeed",
    )
    tail = local_cluster.kubectl_run("logs", "talker", "-n", ns, "--tail=2").stdout
    assert tail.splitlines() == ["line 18", "line 19"]
