"""The operator in the chart's namespaced mode, under its admission policy, as its own identity.

Rendered by ``helm template --show-only`` with ``rbac.scope=namespaces``: Roles in the
watched namespace and the release namespace, no ClusterRole, and the
ValidatingAdmissionPolicy bound to this release's ServiceAccount. The real operator process
runs with a bound token of that ServiceAccount and the flags the chart gives it
(``--namespace`` per namespace), so this proves together that kopf starts without any
cluster-wide permission, and that everything the operator really writes (kopf's adoption,
server-side apply, the PDB) passes the policy, while a voice in an unwatched namespace is
left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from operatorprocs import Operator, merge_patch, new_operator, scalable_voice

from voicefleet_localcluster.testing import OPERATOR_CHART, LocalCluster, wait_for

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(300)]

RELEASE = "nsop"
SA_NAME = f"{RELEASE}-voicefleet-operator"
TEMPLATES = (
    "templates/operator/serviceaccount.yaml",
    "templates/operator/rbac.yaml",
    "templates/operator/admission-policy.yaml",
)


@dataclass(frozen=True)
class Namespaced:
    cluster: LocalCluster
    release_ns: str
    watched: str
    unwatched: str
    operator: Operator


@pytest.fixture(scope="module")
def namespaced(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Namespaced]:
    cluster = local_cluster
    cluster.install_crds()
    release_ns = cluster.create_namespace("nsop-release")
    watched = cluster.create_namespace("nsop-voices")
    unwatched = cluster.create_namespace("nsop-elsewhere")
    args = ["template", RELEASE, str(OPERATOR_CHART), "--namespace", release_ns]
    args += ["--set", "rbac.scope=namespaces", "--set", f"rbac.watchNamespaces={{{watched}}}"]
    for template in TEMPLATES:
        args += ["--show-only", template]
    rendered = cluster.helm_run(*args).stdout
    assert "kind: ClusterRole" not in rendered
    cluster.apply(rendered)
    logs = tmp_path_factory.mktemp("nsop")
    kubeconfig = cluster.service_account_kubeconfig(release_ns, SA_NAME, logs / "sa.kubeconfig")
    operator = new_operator(kubeconfig, logs / "operator.log", namespaces=[watched, release_ns])
    operator.start(timeout=60)
    try:
        yield Namespaced(cluster, release_ns, watched, unwatched, operator)
    finally:
        operator.stop()
        for ns in (watched, unwatched):
            cluster.kubectl_run(
                "delete", "ttsvoice", "--all", "-n", ns, "--wait=false", check=False
            )
        cluster.kubectl_run("delete", "--ignore-not-found", "-f", "-", input=rendered, check=False)
        for ns in (watched, unwatched, release_ns):
            cluster.delete_namespace(ns)


def test_a_voice_in_a_watched_namespace_gets_its_objects_through_the_policy(
    namespaced: Namespaced,
) -> None:
    cluster, ns = namespaced.cluster, namespaced.watched
    # Two replicas, so that a PDB is made too (none below two pods); no node fits them, so
    # nothing starts: what is tested is the operator's writes, not the pods.
    manifest = scalable_voice("nsvoice", replicas=2, max_replicas=3)
    manifest["spec"]["nodeSelector"] = {"pool": "nowhere"}
    cluster.apply(manifest, namespace=ns)
    for kind in ("service", "poddisruptionbudget", "deployment"):
        wait_for(
            lambda kind=kind: cluster.get_json(kind, "nsvoice", "-n", ns),
            timeout=60,
            what=f"the voice's {kind} (operator log {namespaced.operator.log_path})",
        )
    deployment = cluster.get_json("deployment", "nsvoice", "-n", ns)
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TTSVoice", "nsvoice", True)
    # no more PDB when maxReplicas drops to 1: the operator's delete passes the policy too
    merge_patch(
        cluster, ns, "nsvoice", {"spec": {"replicas": 1, "autoscaling": {"maxReplicas": 1}}}
    )
    wait_for(
        lambda: cluster.kubectl_run("get", "pdb", "nsvoice", "-n", ns, check=False).returncode != 0,
        timeout=60,
        what="the PDB deleted",
    )
    log = namespaced.operator.log()
    assert "ValidatingAdmissionPolicy" not in log, log[-3000:]
    assert "Not enough permissions" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def test_a_voice_in_another_namespace_is_left_alone(namespaced: Namespaced) -> None:
    cluster, ns = namespaced.cluster, namespaced.unwatched
    cluster.apply(scalable_voice("outside", replicas=0), namespace=ns)
    # a voice in the watched namespace, applied after it, is served: the operator is alive
    cluster.apply(scalable_voice("inside", replicas=0), namespace=namespaced.watched)
    wait_for(
        lambda: cluster.get_json("deployment", "inside", "-n", namespaced.watched),
        timeout=60,
        what="the watched voice's Deployment",
    )
    assert cluster.kubectl_run("get", "deployment", "outside", "-n", ns, check=False).returncode
    voice = cluster.get_json("ttsvoice", "outside", "-n", ns)
    assert "status" not in voice or not voice["status"].get("conditions")
