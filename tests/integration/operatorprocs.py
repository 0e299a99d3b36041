"""The operator as a test process: start/stop/log, its argv, and cluster read helpers.

Shared by the integration modules that run ``voicefleet-operator`` against the local
control plane; the fixtures that start one (``sa_kubeconfig``, ``operator``) are in this
folder's ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from serverprocs import free_port as free_port  # one free_port for every test helper

from voicefleet_localcluster.procs import stop_process
from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import voice_manifest as voice_manifest  # one builder

REPO = Path(__file__).resolve().parents[2]
OPERATOR = Path(sys.executable).parent / "voicefleet-operator"
SAMPLE = REPO / "crds" / "samples" / "en-us-joe.yaml"
PVC_SAMPLE = REPO / "crds" / "samples" / "pvc-voice.yaml"
SA_NAMESPACE = "voicefleet-system"
SA_NAME = "voicefleet-operator"
PEERING = "voicefleet-test"


@dataclass
class Operator:
    """A running voicefleet-operator process and where its output goes."""

    argv: list[str]
    log_path: Path
    health_port: int
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self, timeout: float = 30) -> None:
        """Start it and wait for ``/healthz`` (a cold start on a busy 2-core machine can
        take longer than the default: callers that restart under load pass more)."""
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"  # the log is read while the operator runs
        with self.log_path.open("ab") as log:
            log.write(f"--- test: start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.starts += 1
        wait_for(self.healthy, timeout=timeout, what=f"operator /healthz (log {self.log_path})")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited: {self.proc and self.proc.returncode}")
        rsp = httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2)
        return rsp.status_code == 200

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, grace=20)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def new_operator(
    kubeconfig: Path,
    log_path: Path,
    *,
    namespaces: Sequence[str] = (),
    priority: int | None = None,
    extra: Sequence[str] = (),
) -> Operator:
    """An operator, not yet started, on free ports: watching ``namespaces`` (none: all of
    them), in the test peering at ``priority`` (``None``: standalone), with ``extra`` flags."""
    health, metrics = free_port(), free_port()
    scope = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    peering = (
        ["--standalone"] if priority is None else [f"--peering={PEERING}", f"--priority={priority}"]
    )
    argv = [
        str(OPERATOR),
        *scope,
        f"--kubeconfig={kubeconfig}",
        f"--health-port={health}",
        f"--metrics-port={metrics}",
        *peering,
        *extra,
    ]
    return Operator(argv, log_path, health, metrics)


def voice(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get_json("ttsvoice", name, "-n", ns)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return None


def degraded_with(cluster: LocalCluster, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    """The voice's ``Degraded`` condition if it is True with ``reason``, else None."""
    cond = condition(voice(cluster, ns, name), "Degraded")
    return cond if cond and cond["status"] == "True" and cond["reason"] == reason else None


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    refs: list[dict[str, Any]] = obj["metadata"].get("ownerReferences", [])
    return refs == [
        {
            "apiVersion": "voicefleet.io/v1alpha1",
            "kind": "TTSVoice",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def exists(cluster: LocalCluster, ns: str, *what: str) -> bool:
    return cluster.kubectl_run("get", *what, "-n", ns, check=False).returncode == 0


def live_peers(cluster: LocalCluster) -> int:
    """Operators alive in the test peering (kopf's heartbeats in its status)."""
    obj = cluster.get_json("clusterkopfpeering", PEERING)
    return sum(1 for v in (obj.get("status") or {}).values() if v)


def scalable_voice(name: str, *, replicas: int = 0, max_replicas: int = 3) -> dict[str, Any]:
    return voice_manifest(
        name,
        replicas=replicas,
        resources={"cpu": "250m", "memory": "512Mi"},
        autoscaling={"minReplicas": 0, "maxReplicas": max_replicas},
    )


def merge_patch(cluster: LocalCluster, ns: str, name: str, patch: dict[str, Any]) -> None:
    """``kubectl patch --type=merge`` of the voice ``ns/name``."""
    cluster.kubectl_run(
        "patch", "ttsvoice", name, "-n", ns, "--type=merge", "-p", json.dumps(patch)
    )


def events_for(cluster: LocalCluster, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "events", "-n", ns, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


# --- tests ------------------------------------------------------------------------------
