"""Turning NetworkPolicies off removes the ones the operator wrote, on a real API server.

The chart's ``networkPolicy.enabled=false`` restarts the operator without
``--network-policy-from``. The operator (the chart's RBAC, as its ServiceAccount) first
runs with policies on and writes one beside each voice; restarted without the flag, its
reconcile of each voice it finds (kopf's resume) deletes the policy that voice owns and
says so in an Event, and leaves alone a policy of the same name that someone else wrote.
Voices with no replicas: what is checked is the API server's objects, not pods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from operatorprocs import Operator, events_for, exists, new_operator, scalable_voice

from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(300)]

PEERS = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "voicefleet-router"}}}]


def reconciles_done(op: Operator) -> float:
    """Reconciles this operator process finished, whatever triggered them."""
    text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).text
    counts = re.findall(
        r"^voicefleet_operator_reconcile_duration_seconds_count\{[^}]*\} (\S+)$", text, re.M
    )
    return sum(float(count) for count in counts)


def deleted_events(cluster: LocalCluster, ns: str, name: str) -> list[dict[str, object]]:
    return [e for e in events_for(cluster, ns, name) if e["reason"] == "NetworkPolicyDeleted"]


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    local_cluster.install_crds()
    with local_cluster.namespace("np-off") as name:
        yield name


def test_an_operator_restarted_with_policies_off_deletes_the_voices_policies_only(
    local_cluster: LocalCluster, sa_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    cluster, ns = local_cluster, namespace
    log = tmp_path / "operator.log"
    on = new_operator(
        sa_kubeconfig,
        log,
        namespaces=[ns],
        extra=["--autoscale-interval=0", f"--network-policy-from={json.dumps(PEERS)}"],
    )
    on.start(timeout=90)
    try:
        cluster.apply([scalable_voice("joe"), scalable_voice("ann")], namespace=ns)
        wait_for(
            lambda: exists(cluster, ns, "networkpolicy", "joe", "ann"),
            timeout=60,
            what=f"the voices' NetworkPolicies (operator log {log})",
        )
    finally:
        on.stop()
    # ann's policy replaced, while no operator runs, by one its user wrote under that name
    cluster.kubectl_run("delete", "networkpolicy", "ann", "-n", ns)
    theirs = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "ann"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    cluster.apply(theirs, namespace=ns)

    off = new_operator(sa_kubeconfig, log, namespaces=[ns], extra=["--autoscale-interval=0"])
    off.start(timeout=90)
    try:
        wait_for(
            lambda: not exists(cluster, ns, "networkpolicy", "joe"),
            timeout=60,
            what=f"joe's NetworkPolicy to be deleted (operator log {log})",
        )
        deleted = wait_for(lambda: deleted_events(cluster, ns, "joe"), timeout=30, what="the Event")
        assert "network policies are off" in str(deleted[0]["message"])
        # both voices' reconciles on the restart finished: ann's kept the user's policy
        wait_for(lambda: reconciles_done(off) >= 2, timeout=60, what="both voices reconciled")
        kept = cluster.get_json("networkpolicy", "ann", "-n", ns)
        assert "ownerReferences" not in kept["metadata"]
        assert deleted_events(cluster, ns, "ann") == []
    finally:
        off.stop()
