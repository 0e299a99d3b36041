"""The local cluster is real: API server, validation, controllers, scheduler, RBAC, process kubelet.

Every test talks to binaries built from the pinned Go modules (built on first
use, never skipped) and waits on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from voicefleet_localcluster.controlplane import ClusterStartError, ControlPlane
from voicefleet_localcluster.procs import alive, marked_processes
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "voicefleet-cluster"


def http_server_deployment(name: str, replicas: int, grace: int = 5) -> dict[str, Any]:
    """A Deployment of Python's http.server bound to the pod IP via the downward API."""
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
                    "terminationGracePeriodSeconds": grace,
                    "containers": [
                        {
                            "name": "web",
                            "image": "docker.io/library/python:3.11",
                            "command": ["python", "-m", "http.server"],
                            "args": ["--bind", "$(POD_IP)", "8080"],
                            "env": [
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                }
                            ],
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


def container_pids(pod: dict[str, Any]) -> list[int]:
    """The kubelet reports each container's process as containerID process://<pid>."""
    pids = []
    for status in pod.get("status", {}).get("containerStatuses", []):
        cid = status.get("containerID", "")
        if cid.startswith("process://"):
            pids.append(int(cid.removeprefix("process://")))
    return pids


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


def test_deployment_pods_get_distinct_loopback_ips_and_serve_http(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.apply(http_server_deployment("web", replicas=2), namespace=ns)
    pods = wait_for(
        lambda: (ready := local_cluster.ready_pods(ns, "app=web")) and len(ready) == 2 and ready,
        timeout=90,
        what="2 ready pods",
    )
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2
    for ip in ips:
        assert ipaddress.ip_address(ip).is_loopback
        assert ip != "127.0.0.1"
        response = httpx.get(f"http://{ip}:8080/", timeout=5)
        assert response.status_code == 200
    for pod in pods:
        statuses = pod["status"]["containerStatuses"]
        assert statuses[0]["ready"] is True
        assert statuses[0]["state"].get("running")
        log_path = Path(pod["metadata"]["annotations"]["voicefleet.io/log-path"])
        assert log_path.is_file()
        # http.server logs the probe's GET requests: the output is really captured there.
        wait_for(lambda p=log_path: '"GET / HTTP/1.1" 200' in p.read_text(), what="access log")


def test_scaling_to_zero_ends_the_processes(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.apply(http_server_deployment("scaled", replicas=2), namespace=ns)
    pods = wait_for(
        lambda: (ready := local_cluster.ready_pods(ns, "app=scaled")) and len(ready) == 2 and ready,
        timeout=90,
        what="2 ready pods",
    )
    pids = [pid for pod in pods for pid in container_pids(pod)]
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)
    local_cluster.kubectl_run("scale", "deployment/scaled", "-n", ns, "--replicas=0")
    wait_for(lambda: not local_cluster.pods(ns, "app=scaled"), timeout=60, what="pods deleted")
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="processes ended")


def test_deleting_an_owner_garbage_collects_its_dependents(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.apply(http_server_deployment("owned", replicas=1), namespace=ns)
    pod = wait_for(lambda: local_cluster.ready_pods(ns, "app=owned"), timeout=90, what="ready pod")[
        0
    ]
    pids = container_pids(pod)
    # A plain object owned by a ConfigMap: GC of arbitrary owner references.
    owner = local_cluster.get_json("deployment", "owned", "-n", ns)
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-settings",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "owned",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
        "data": {"k": "v"},
    }
    local_cluster.apply(dependent, namespace=ns)
    local_cluster.kubectl_run("delete", "deployment/owned", "-n", ns, "--wait=false")

    def collected() -> bool:
        left = local_cluster.kubectl_run(
            "get", "replicasets,pods,configmaps", "-n", ns, "-o", "name", check=False
        )
        names = [n for n in left.stdout.split() if "owned" in n]
        return not names

    wait_for(collected, timeout=90, what="ReplicaSet, Pod and ConfigMap to be collected")
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="process ended")


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


def test_pod_env_downward_api_and_completion(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.kubectl_run(
        "create", "configmap", "settings", "-n", ns, "--from-literal=voice=joe"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "printer", "labels": {"tier": "gold"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c"],
                    "args": [
                        "echo name=$MY_NAME ns=$MY_NS ip=$MY_IP node=$MY_NODE "
                        "tier=$TIER voice=$VOICE url=$(URL) literal='$$(URL)'"
                    ],
                    "env": [
                        {
                            "name": "MY_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {
                            "name": "MY_NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {
                            "name": "MY_NODE",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                        },
                        {
                            "name": "TIER",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}},
                        },
                        {
                            "name": "VOICE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "voice"}},
                        },
                        {"name": "URL", "value": "http://$(MY_IP):8080"},
                    ],
                }
            ],
        },
    }
    local_cluster.apply(pod, namespace=ns)
    done = wait_for(
        lambda: (
            (p := local_cluster.get_json("pod", "printer", "-n", ns))["status"].get("phase")
            == "Succeeded"
            and p
        ),
        timeout=60,
        what="pod to succeed",
    )
    ip = done["status"]["podIP"]
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    output = local_cluster.pod_log(ns, "printer")
    assert (
        f"name=printer ns={ns} ip={ip} node={local_cluster.node_name} tier=gold voice=joe "
        f"url=http://{ip}:8080 literal=$(URL)"
    ) in output


GRACEFUL = textwrap.dedent(
    """
    import http.server, os, signal, sys, time
    def on_term(*_):
        print("got SIGTERM", flush=True)
        time.sleep(0.5)
        print("drained", flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    class Hook(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            print("preStop " + self.path, flush=True)
            self.send_response(200); self.end_headers()
    http.server.HTTPServer((os.environ["POD_IP"], 8080), Hook).serve_forever()
    """
)


def _graceful_pod(name: str, script: str, grace: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", script],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": 8080}}},
                }
            ],
        },
    }


def test_deletion_runs_prestop_then_sigterm(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    local_cluster.apply(_graceful_pod("graceful", GRACEFUL, grace=10), namespace=ns)
    pod = wait_for(lambda: local_cluster.ready_pods(ns), timeout=60, what="pod ready")[0]
    log_path = Path(pod["metadata"]["annotations"]["voicefleet.io/log-path"])
    local_cluster.kubectl_run("delete", "pod", "graceful", "-n", ns, "--wait=false")
    wait_for(
        lambda: "drained" in log_path.read_text().splitlines(),
        timeout=30,
        what="SIGTERM handler to finish",
    )
    lines = log_path.read_text().splitlines()
    assert lines.index("preStop /drain") < lines.index("got SIGTERM") < lines.index("drained")
    wait_for(lambda: not local_cluster.pods(ns), timeout=30, what="pod deletion to complete")


def test_deletion_kills_after_the_grace_period(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    stubborn = GRACEFUL.replace('print("drained", flush=True)', "time.sleep(3600)")
    local_cluster.apply(_graceful_pod("stubborn", stubborn, grace=2), namespace=ns)
    pod = wait_for(lambda: local_cluster.ready_pods(ns), timeout=60, what="pod ready")[0]
    pid = container_pids(pod)[0]
    local_cluster.kubectl_run("delete", "pod", "stubborn", "-n", ns, "--wait=false")
    wait_for(lambda: not alive(pid), timeout=20, what="SIGKILL after the grace period")
    wait_for(lambda: not local_cluster.pods(ns), timeout=20, what="pod deletion to complete")


def test_failed_liveness_probe_restarts_the_container(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    deployment = http_server_deployment("unwell", replicas=1, grace=1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"] = {
        "httpGet": {"path": "/", "port": 9},  # nothing listens there
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    local_cluster.apply(deployment, namespace=ns)

    def restarted() -> bool:
        pods = local_cluster.pods(ns, "app=unwell")
        statuses = pods[0]["status"]["containerStatuses"] if pods else []
        return bool(statuses) and statuses[0]["restartCount"] >= 1

    wait_for(restarted, timeout=60, what="a liveness restart")
    pod = local_cluster.pods(ns, "app=unwell")[0]
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["message"] == "Liveness probe failed"


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
                        "image": "python",
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


def test_cli_up_and_down_leave_no_process_behind(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A second, independent cluster through the CLI that `make cluster-up/down` call."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    up = subprocess.run(
        # The process kubelet: a real node is one per host (its own tests: test_realnode).
        [str(CLI), "up", "--node=process", f"--state-dir={state_dir}"],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip
    state = json.loads((state_dir / "state.json").read_text()) if up.returncode == 0 else {}
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = state_dir / "kubeconfig"
        assert kubeconfig.is_file()
        assert state["server"] != local_cluster.server, "two clusters must not share ports"

        def kubectl(*args: str, stdin: str | None = None) -> str:
            return subprocess.run(
                [str(local_cluster.kubectl), f"--kubeconfig={kubeconfig}", *args],
                input=stdin, capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip

        wait_for(
            lambda: subprocess.run(
                [str(local_cluster.kubectl), f"--kubeconfig={kubeconfig}", "get", "sa", "default"],
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
            timeout=90, what="pods of the second cluster ready",
        )  # fmt: skip
        assert len(marked_processes(state["cluster_id"])) >= 7  # 5 components, kubelet, 2 pods
    finally:
        down = subprocess.run(
            [str(CLI), "down", f"--state-dir={state_dir}"],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert marked_processes(state["cluster_id"]) == []
    assert not any(alive(pid) for pid in state["pids"].values())
    assert not Path(state["work_dir"]).exists()
    assert not (state_dir / "kubeconfig").exists()
    assert not (state_dir / "state.json").exists()


IN_POD_CLIENT = textwrap.dedent(
    """
    import os
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    config.load_config()  # in-cluster files are absent; falls back to $KUBECONFIG
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
                    "image": "python",
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


def test_a_failed_start_reports_the_log_tail_and_leaves_nothing_running(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Fault injection: a kube-apiserver that rejects its flags, next to the real etcd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in local_cluster.bin_dir.iterdir():
        (bin_dir / binary.name).symlink_to(binary)
    (bin_dir / "kube-apiserver").unlink()
    (bin_dir / "kube-apiserver").write_text('#!/bin/sh\necho "unknown flag: --foo" >&2\nexit 1\n')
    (bin_dir / "kube-apiserver").chmod(0o755)
    plane = ControlPlane(bin_dir=bin_dir, log=lambda line: None)
    with pytest.raises(ClusterStartError, match="kube-apiserver exited with code 1") as failure:
        plane.start(timeout=30)
    message = str(failure.value)
    assert "unknown flag: --foo" in message
    kept = Path(message.split("log ", 1)[1].split(",", 1)[0])
    try:
        assert kept.is_file()  # the log survives; the rest of the work dir does not
        assert not plane.work_dir.exists()
        assert marked_processes(plane.cluster_id) == []
    finally:
        shutil.rmtree(kept.parent, ignore_errors=True)


def test_kubectl_logs_reads_the_container_output(
    local_cluster: LocalCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    script = (
        "import time\nfor i in range(20):\n    print('line', i, flush=True)\n    time.sleep(0.1)"
    )
    local_cluster.kubectl_run(
        "run", "talker", "-n", ns, "--image=python", "--restart=Never", "--command",
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
