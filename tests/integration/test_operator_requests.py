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

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operatorprocs import (
    OPERATOR,
    SA_NAME,
    SA_NAMESPACE,
    Operator,
    condition,
    free_port,
    scalable_voice,
    voice,
)

from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

FLOW = "voicefleet-operator-count"
REQUESTS_PER_NEW_VOICE = 7
NAMESPACE_PREFIX = "opreq"
"""kopf's bookkeeping patch on the voice (1), server-side apply of the Service, the
PodDisruptionBudget and the Deployment (3), status written when the voice is first
reconciled and again when the Deployment controller has observed it (2), and the
autoscaler loop's first report on the voice (1); no reads."""


def _dispatched(cluster: LocalCluster) -> int:
    """The operator's requests so far, from the API server's own metrics."""
    text = cluster.kubectl_run("get", "--raw", "/metrics").stdout
    total = 0
    for line in text.splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and (
            f'flow_schema="{FLOW}"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _by_verb(cluster: LocalCluster) -> Counter[str]:
    """Every client's requests by verb and resource (to say what a failing count was)."""
    text = cluster.kubectl_run("get", "--raw", "/metrics").stdout
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        key = f"{labels.get('verb')} {labels.get('resource')}/{labels.get('subresource', '')}"
        out[key] += int(float(line.rsplit(" ", 1)[1]))
    return out


def _settled(cluster: LocalCluster, quiet: float = 4.0, timeout: float = 60.0) -> int:
    """The count once it has not moved for ``quiet`` seconds (the operator is idle)."""
    deadline = time.monotonic() + timeout
    last, since = _dispatched(cluster), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _dispatched(cluster)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"the operator never went quiet (still at {last} requests)")


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
    local_cluster.apply(
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": FLOW},
            "spec": {
                "matchingPrecedence": 100,
                "priorityLevelConfiguration": {"name": "workload-high"},
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"namespace": SA_NAMESPACE, "name": SA_NAME},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "namespaces": ["*"],
                                "clusterScope": True,
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }
    )
    health, metrics = free_port(), free_port()
    op = Operator(
        argv=[
            str(OPERATOR),
            # Only this module's namespaces: voices other modules leave behind (their
            # namespaces still terminating) would otherwise add work to the count.
            f"--namespace={counted_namespace}",
            f"--kubeconfig={sa_kubeconfig}",
            f"--health-port={health}",
            f"--metrics-port={metrics}",
            "--standalone",
        ],
        log_path=tmp_path_factory.mktemp("operator-requests") / "operator.log",
        health_port=health,
        metrics_port=metrics,
    )
    op.start(timeout=90)
    try:
        yield op
    finally:
        op.stop()


def _new_voice(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    cluster.apply({**scalable_voice(name), "metadata": {"name": name, "namespace": ns}})

    def reconciled() -> bool:
        body = voice(cluster, ns, name)
        progressing = condition(body, "Progressing")
        return (
            (body.get("status") or {}).get("observedGeneration") == 1
            and progressing is not None
            and progressing["reason"] == "RolloutComplete"
        )

    wait_for(reconciled, timeout=60, what=f"TTSVoice {ns}/{name} reconciled and rolled out")
    return voice(cluster, ns, name)


def test_a_new_voice_costs_a_fixed_small_number_of_requests_and_reads_nothing(
    local_cluster: LocalCluster, counted_operator: Operator, counted_namespace: str
) -> None:
    ns = counted_namespace
    _new_voice(local_cluster, ns, "warmup")  # first-use costs (discovery, connections) out
    costs = []
    for name in ("first", "second", "third"):
        before, verbs = _settled(local_cluster), _by_verb(local_cluster)
        _new_voice(local_cluster, ns, name)
        costs.append(_settled(local_cluster) - before)
        print(f"\n{name}: {costs[-1]} requests; all clients: {_by_verb(local_cluster) - verbs}")
    assert costs == [REQUESTS_PER_NEW_VOICE] * 3, costs


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
    before, verbs = _settled(local_cluster), _by_verb(local_cluster)
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
    cost = _settled(local_cluster) - before
    moved = _by_verb(local_cluster) - verbs
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
