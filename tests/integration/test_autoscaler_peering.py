"""The single autoscaler loop follows kopf's peering: paused behind a higher-priority peer,
back at work the moment that peer leaves.

Operator A (the ``operator`` fixture: priority 100, peering) runs the autoscaler. Operator
B joins with priority 200 and ``--autoscale-interval=0``: while B is live, kopf pauses A
and A's loop must not scale anything, so an idle voice that A would take to zero within
seconds stays as it is; when B leaves, A's loop resumes and does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from operatorprocs import Operator, live_peers, new_operator

from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

IDLE_SECONDS = 3


def idle_voice(name: str) -> dict[str, Any]:
    return simulated_voice(
        name,
        replicas=1,
        server={"workers": 1},
        autoscaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZeroIdleSeconds": IDLE_SECONDS},
    )


def test_the_loop_pauses_behind_a_higher_priority_peer_and_resumes_when_it_leaves(
    local_cluster: LocalCluster,
    cluster_namespace: str,
    operator: Operator,
    sa_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    ns, name = cluster_namespace, "peer-idle"
    higher = new_operator(
        sa_kubeconfig, tmp_path / "higher.log", priority=200, extra=["--autoscale-interval=0"]
    )
    higher.start()
    try:
        wait_for(lambda: live_peers(local_cluster) == 2, timeout=30, what="two peers")
        wait_for(
            lambda: "autoscaler paused (kopf peering)" in operator.log(),
            timeout=30,
            what="A's loop to pause",
        )
        local_cluster.apply(idle_voice(name), namespace=ns)
        wait_for(
            lambda: len(local_cluster.ready_pods(ns, f"voicefleet.io/voice={name}")) == 1,
            timeout=90,
            what="the voice's pod (reconciled by B)",
        )
        # Well past scaleToZeroIdleSeconds: nobody may scale (A paused, B has no autoscaler).
        time.sleep(IDLE_SECONDS + 5)
        voice = local_cluster.get_json("ttsvoice", name, "-n", ns)
        assert voice["spec"]["replicas"] == 1
        assert "autoscaling" not in voice.get("status", {})
        assert f"[{ns}/{name}]" not in operator.log().split("autoscaler paused (kopf peering)")[-1]
    finally:
        assert higher.stop() == 0, higher.log()[-3000:]

    wait_for(lambda: "autoscaler resumed" in operator.log(), timeout=30, what="A's loop to resume")
    started = time.monotonic()
    wait_for(
        lambda: local_cluster.get_json("ttsvoice", name, "-n", ns)["spec"]["replicas"] == 0,
        timeout=60,
        what="A to take the idle voice to zero",
    )
    print(f"resumed -> zero in {time.monotonic() - started:.1f} s")
    voice = local_cluster.get_json("ttsvoice", name, "-n", ns)
    assert voice["status"]["autoscaling"]["lastScaleReason"] == "ScaleToZero"
