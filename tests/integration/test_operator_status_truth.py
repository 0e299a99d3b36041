"""The TTSVoice's status through a single kill and a rollout, on the real control plane.

Issue 18 found a single pod kill reported as ``CrashLoopBackOff`` "keeps failing", and
``Progressing`` saying ``RolloutComplete`` while the old pod still terminated (the
Deployment stops counting a pod once it is being deleted; the voice pod's preStop sleep
and drain keep it for several seconds more). The operator runs as in ``test_operator.py``
(its ServiceAccount, the chart's RBAC); the voice runs the ``simulated`` engine, so the
pod is a real server process the test can kill once.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from operatorprocs import Operator, condition, voice, voice_manifest

from voicefleet_localcluster import node
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

NAME = "truth"


def simulated(env_value: str) -> dict[str, Any]:
    return voice_manifest(
        NAME,
        replicas=1,
        engine="simulated",
        env=[{"name": "SIMULATED_ENGINE_SPEED_FACTOR", "value": env_value}],
        resources={"cpu": "100m", "memory": "256Mi"},
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
    )


def ready(cluster: LocalCluster, ns: str) -> bool:
    ready_cond = condition(voice(cluster, ns, NAME), "Ready")
    return ready_cond is not None and ready_cond["status"] == "True"


def server_pid(pod: dict[str, Any]) -> int:
    """The host pid of the server's container (a SIGKILL from outside, as the kernel's
    OOM killer or a crash would end it; PID 1 inside ignores a kill from within)."""
    (status,) = pod["status"]["containerStatuses"]
    return node.task_pid(status["containerID"])


def test_a_single_kill_is_a_restart_and_a_rollout_lasts_until_the_old_pod_is_gone(
    local_cluster: LocalCluster, cluster_namespace: str, operator: Operator
) -> None:
    cluster, ns = local_cluster, cluster_namespace
    cluster.apply(simulated("4"), namespace=ns)
    wait_for(lambda: ready(cluster, ns), timeout=120, interval=0.5, what="the voice Ready")

    # -- one SIGKILL of the server: a restart, never a crash loop --------------------------
    (pod,) = cluster.ready_pods(ns, f"voicefleet.io/voice={NAME}")
    os.kill(server_pid(pod), signal.SIGKILL)
    reasons: list[str] = []

    def back() -> bool:
        obj = voice(cluster, ns, NAME)
        degraded = condition(obj, "Degraded") or {}
        if degraded.get("status") == "True":
            reasons.append(str(degraded.get("reason")))
        pods = cluster.pods(ns, f"voicefleet.io/voice={NAME}")
        restarted = any(
            s.get("restartCount", 0) >= 1
            for p in pods
            for s in p.get("status", {}).get("containerStatuses", [])
        )
        ready_cond = condition(obj, "Ready") or {}
        return (
            restarted and ready_cond.get("status") == "True" and degraded.get("status") == "False"
        )

    wait_for(back, timeout=120, interval=0.2, what="the voice Ready again after one kill")
    assert "CrashLoopBackOff" not in reasons, reasons
    assert set(reasons) <= {"ContainerRestarted", "ContainerTerminated"}, reasons

    # -- a rollout: Progressing is True while an old pod still terminates ------------------
    cluster.apply(simulated("5"), namespace=ns)  # a new pod template
    seen_terminating = 0
    lies: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # the voice first, then the pods: a pod terminating now was terminating then too
        progressing = condition(voice(cluster, ns, NAME), "Progressing") or {}
        pods = cluster.pods(ns, f"voicefleet.io/voice={NAME}")
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]
        if terminating:
            seen_terminating += 1
            if progressing.get("reason") == "RolloutComplete":
                lies.append(f"{progressing} while {terminating[0]['metadata']['name']} terminates")
        elif seen_terminating and progressing.get("reason") == "RolloutComplete":
            break
        time.sleep(0.2)
    assert seen_terminating, "the old pod was never seen terminating"
    assert not lies, lies
    assert progressing.get("reason") == "RolloutComplete", progressing
