"""What the API server says about new voices: what one costs it (counted by the API server
itself), and its refusals reported on the voice.

A FlowSchema sends every request of the operator's ServiceAccount (and only those) to
its own flow, so the real kube-apiserver's
``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`` counts exactly
what the operator asked for. The test applies voices and compares the count before
and after each has settled: a reconcile that starts reading per event, or writes its
status twice, fails here. The bound is docs/operator.md's "requests per new voice";
raise it only with a reason written there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operatorprocs import (
    SA_NAME,
    SA_NAMESPACE,
    Operator,
    condition,
    merge_patch,
    new_operator,
    scalable_voice,
    voice,
)

from voicefleet_api.labels import VOICE_GENERATION_ANNOTATION
from voicefleet_localcluster.flowcontrol import service_account_flow, settled_counts
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(300)]

FLOW = "voicefleet-operator-count"
REQUESTS_PER_NEW_VOICE = 4
NAMESPACE_PREFIX = "opreq"
"""Server-side apply of the Service and the Deployment (2), status written when the voice
is first reconciled and again when the Deployment controller has observed it (2); no
reads. No PodDisruptionBudget below two pods (and no deletion of one for a new voice
whose maxReplicas is 1); kopf's bookkeeping is in memory (no patch on the voice) and the
autoscaler has nothing to report on a voice at zero (no write)."""


def _settled(cluster: LocalCluster) -> tuple[int, Counter[str]]:
    """The operator's requests so far and every client's by verb, once it is idle."""
    return settled_counts(cluster, FLOW, quiet=4.0, timeout=60.0)


@pytest.fixture(scope="module")
def counted_namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """The module's one namespace, the only one the counted operator watches."""
    with local_cluster.namespace(NAMESPACE_PREFIX) as name:
        yield name


@pytest.fixture(scope="module")
def counted_operator(
    local_cluster: LocalCluster,
    sa_kubeconfig: Path,
    counted_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The operator as its ServiceAccount, standalone (no peering heartbeats in the
    count), with its requests in a flow of their own."""
    local_cluster.apply(service_account_flow(FLOW, SA_NAMESPACE, SA_NAME))
    op = new_operator(
        sa_kubeconfig,
        tmp_path_factory.mktemp("operator-requests") / "operator.log",
        # Only this module's namespace: voices other modules leave behind (their
        # namespaces still terminating) would otherwise add work to the count.
        namespaces=[counted_namespace],
    )
    op.start(timeout=90)
    try:
        yield op
    finally:
        op.stop()


def _rolled_out(cluster: LocalCluster, ns: str, name: str, generation: int = 1) -> None:
    """Wait until the voice's status is at ``generation`` and its rollout is complete."""

    def done() -> bool:
        body = voice(cluster, ns, name)
        progressing = condition(body, "Progressing")
        return (
            (body.get("status") or {}).get("observedGeneration") == generation
            and progressing is not None
            and progressing["reason"] == "RolloutComplete"
        )

    wait_for(done, timeout=60, what=f"TTSVoice {ns}/{name} reconciled at {generation}")


def _new_voice(cluster: LocalCluster, ns: str, name: str, max_replicas: int = 3) -> dict[str, Any]:
    cluster.apply(
        {
            **scalable_voice(name, max_replicas=max_replicas),
            "metadata": {"name": name, "namespace": ns},
        }
    )
    _rolled_out(cluster, ns, name)
    return voice(cluster, ns, name)


def test_a_new_voice_costs_a_fixed_small_number_of_requests_and_reads_nothing(
    local_cluster: LocalCluster, counted_operator: Operator, counted_namespace: str
) -> None:
    ns = counted_namespace
    _new_voice(local_cluster, ns, "warmup")  # first-use costs (discovery, connections) out
    costs = []
    # One settled count between voices is the "after" of one and the "before" of the next
    # (a late request of a voice is then counted for the next one, not lost between two).
    before, verbs = _settled(local_cluster)
    # maxReplicas 3 (the default) and 1: neither has a PodDisruptionBudget to apply or delete
    for name, max_replicas in (("first", 3), ("second", 3), ("third", 1)):
        _new_voice(local_cluster, ns, name, max_replicas)
        after, verbs_after = _settled(local_cluster)
        costs.append(after - before)
        print(f"\n{name}: {costs[-1]} requests; all clients: {verbs_after - verbs}")
        before, verbs = after, verbs_after
    assert costs == [REQUESTS_PER_NEW_VOICE] * 3, costs
    assert local_cluster.get_json("pdb", "-n", ns)["items"] == []


def test_a_burst_of_deployment_events_costs_no_reads(
    local_cluster: LocalCluster, counted_operator: Operator, counted_namespace: str
) -> None:
    """Each change to a voice's Deployment is a watch event the operator handles: it
    refreshes the voice's status from its indexes (pod events take the same path) and
    writes only a status that changed. Annotating the Deployment ten times makes its
    controller roll the annotation into the ReplicaSet and report each rollout
    (Progressing moves and settles), so some status writes are due; every request the
    operator makes must be one of them (the old path also read the voice and the
    Deployment on each event: 20 GETs more)."""
    ns = counted_namespace
    _new_voice(local_cluster, ns, "churn")
    before, verbs = _settled(local_cluster)
    for i in range(10):
        local_cluster.kubectl_run(
            "annotate",
            "deployment",
            "churn",
            "-n",
            ns,
            f"test.voicefleet.io/poke={i}",
            "--overwrite",
        )
    after, verbs_after = _settled(local_cluster)
    cost, moved = after - before, verbs_after - verbs
    status_writes = moved["PATCH ttsvoices/status"]  # only the operator writes voice status
    print(f"\n10 Deployment events: {cost} operator requests, {status_writes} status writes")
    assert cost == status_writes, f"{cost} requests, {status_writes} status writes: {moved}"


def test_a_quota_that_refuses_the_service_is_reported_on_the_voice_and_retried(
    local_cluster: LocalCluster, counted_operator: Operator, counted_namespace: str
) -> None:
    """The API server's refusal of an owned object for a cause the voice cannot fix (a
    ResourceQuota here; a full Service range, a 500, takes the same path) is Degraded
    in the server's own words; the Deployment is made anyway, and the voice recovers
    by itself once the cluster allows the Service."""
    ns = counted_namespace
    local_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-services", "namespace": ns},
            "spec": {"hard": {"services": "0"}},
        }
    )
    wait_for(
        lambda: bool(
            (
                local_cluster.get_json("resourcequota", "no-services", "-n", ns).get("status") or {}
            ).get("hard")
        ),
        timeout=30,
        what="the quota controller to publish the quota",
    )
    local_cluster.apply(
        {**scalable_voice("capped"), "metadata": {"name": "capped", "namespace": ns}}
    )

    def degraded() -> dict[str, Any] | None:
        found = condition(voice(local_cluster, ns, "capped"), "Degraded")
        return found if found is not None and found["status"] == "True" else None

    wait_for(lambda: degraded() is not None, timeout=60, what="Degraded on the capped voice")
    found = degraded()
    assert found is not None
    assert found["reason"] == "QuotaExceeded", found
    assert "exceeded quota: no-services" in found["message"], found
    assert (
        local_cluster.kubectl_run("get", "deployment", "capped", "-n", ns, check=False).returncode
        == 0
    )
    local_cluster.kubectl_run("delete", "resourcequota", "no-services", "-n", ns)
    wait_for(
        lambda: (
            (condition(voice(local_cluster, ns, "capped"), "Degraded") or {}).get("status")
            == "False"
        ),
        timeout=60,
        what="the voice to recover once the quota is gone (retried every 15 s)",
    )
    assert (
        local_cluster.kubectl_run("get", "service", "capped", "-n", ns, check=False).returncode == 0
    )


def test_a_restart_loses_no_reconcile_and_rewrites_no_settled_voice(
    local_cluster: LocalCluster, counted_operator: Operator, counted_namespace: str
) -> None:
    """kopf's bookkeeping lives in the operator's memory: a restarted operator must still
    reconcile a voice created and one changed while it was stopped, and must write
    nothing on a voice that was settled (no status, no annotation)."""
    ns = counted_namespace
    settled = _new_voice(local_cluster, ns, "settled")
    _new_voice(local_cluster, ns, "changed")
    assert counted_operator.stop() == 0
    local_cluster.apply(
        {
            **scalable_voice("born-while-down"),
            "metadata": {"name": "born-while-down", "namespace": ns},
        }
    )
    merge_patch(local_cluster, ns, "changed", {"spec": {"server": {"maxQueue": 7}}})
    before, verbs = _settled(local_cluster)
    counted_operator.start(timeout=120)
    _rolled_out(local_cluster, ns, "born-while-down")
    _rolled_out(local_cluster, ns, "changed", generation=2)
    after, verbs_after = _settled(local_cluster)
    moved = verbs_after - verbs
    print(f"\nrestart: {after - before} operator requests; all clients: {moved}")
    deployment = local_cluster.get_json("deployment", "changed", "-n", ns)
    assert deployment["metadata"]["annotations"][VOICE_GENERATION_ANNOTATION] == "2"
    env = deployment["spec"]["template"]["spec"]["containers"][0].get("env") or []
    assert {"name": "VOICEFLEET_MAX_QUEUE", "value": "7"} in env, env
    assert local_cluster.get_json("deployment", "born-while-down", "-n", ns)
    assert voice(local_cluster, ns, "settled") == settled
    assert moved["PATCH ttsvoices"] == 0, moved  # nothing of kopf's on any voice
