"""The chart's ValidatingAdmissionPolicy on a real kube-apiserver, as the operator's identity.

The chart's ServiceAccount, RBAC and policy are rendered by ``helm template --show-only``
(the one source, as ``LocalCluster.operator_rbac``) under their own release name, so the
policy binds to this module's ServiceAccount only. Requests are made with a bound token of
that ServiceAccount: the RBAC allows each of them (cluster scope), so a refusal can come
only from the policy, and its message is checked. What passes is the operator's own work:
the builders' Deployment, Service, PDB and NetworkPolicy of a real TTSVoice, adopted as kopf
adopts them.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicefleet_localcluster.testing import OPERATOR_CHART, LocalCluster, wait_for
from voicefleet_operator.builders import (
    BuildOptions,
    build_deployment,
    build_network_policy,
    build_pdb,
    build_service,
)
from voicefleet_operator.spec import parse_voice

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
RELEASE = "vap"
SA_NAME = f"{RELEASE}-voicefleet-operator"
CACHE_DIR = "/var/cache/voicefleet-models"
TEMPLATES = (
    "templates/operator/serviceaccount.yaml",
    "templates/operator/rbac.yaml",
    "templates/operator/admission-policy.yaml",
)
PEERS = (
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vap-release"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "voicefleet-router"}},
    },
)
"""What the chart passes as --network-policy-from (the peers' content is not the policy's
business; which pods the NetworkPolicy selects is)."""


@dataclass(frozen=True)
class Setup:
    cluster: LocalCluster
    release_ns: str
    voice_ns: str
    sa_kubeconfig: Path
    voice: dict[str, Any]

    def as_operator(self, *args: str, input: str | None = None) -> tuple[int, str]:
        proc = self.cluster.kubectl_run(
            f"--kubeconfig={self.sa_kubeconfig}", *args, input=input, check=False
        )
        return proc.returncode, proc.stdout + proc.stderr


def chart_objects(cluster: LocalCluster, namespace: str) -> str:
    args = ["template", RELEASE, str(OPERATOR_CHART), "--namespace", namespace]
    args += ["--set", f"operator.modelCacheDir={CACHE_DIR}"]
    for template in TEMPLATES:
        args += ["--show-only", template]
    return cluster.helm_run(*args).stdout


@pytest.fixture(scope="module")
def setup(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cluster = local_cluster
    cluster.install_crds()
    release_ns = cluster.create_namespace("vap-release")
    voice_ns = cluster.create_namespace("vap-voices")
    rendered = chart_objects(cluster, release_ns)
    cluster.apply(rendered)
    sample = yaml.safe_load((REPO / "crds" / "samples" / "en-us-joe.yaml").read_text())
    sample["spec"]["autoscaling"]["maxReplicas"] = 2  # so that a PDB may be built too
    cluster.apply(sample, namespace=voice_ns)
    voice = cluster.get_json("ttsvoice", "en-us-joe", "-n", voice_ns)
    path = tmp_path_factory.mktemp("vap") / "sa.kubeconfig"
    kubeconfig = cluster.service_account_kubeconfig(release_ns, SA_NAME, path)
    try:
        yield Setup(cluster, release_ns, voice_ns, kubeconfig, voice)
    finally:
        cluster.kubectl_run("delete", "--ignore-not-found", "-f", "-", input=rendered, check=False)
        cluster.delete_namespace(voice_ns)
        cluster.delete_namespace(release_ns)


def adopted(obj: dict[str, Any], voice: dict[str, Any]) -> dict[str, Any]:
    """As ``kopf.adopt`` leaves it: a controller ownerReference to the TTSVoice."""
    out = copy.deepcopy(obj)
    out["metadata"]["ownerReferences"] = [
        {
            "apiVersion": voice["apiVersion"],
            "kind": voice["kind"],
            "name": voice["metadata"]["name"],
            "uid": voice["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return out


def voice_objects(setup: Setup, options: BuildOptions) -> list[dict[str, Any]]:
    voice = parse_voice(setup.voice)
    # the voice scaled to two pods: a budget is built only then (the PDB's fields do not
    # depend on the count, and the policy does not look at replicas)
    two = copy.deepcopy(setup.voice)
    two["spec"]["replicas"] = 2
    pdb = build_pdb(parse_voice(two))
    assert pdb is not None
    built = [build_service(voice), pdb, build_deployment(voice, options)]
    policy = build_network_policy(voice, options)
    if policy is not None:
        built.append(policy)
    return [adopted(obj, setup.voice) for obj in built]


def apply_as_operator(setup: Setup, obj: dict[str, Any], *extra: str) -> tuple[int, str]:
    """Server-side apply as the operator does (a PATCH that may create)."""
    return setup.as_operator(
        "apply", "--server-side", "--field-manager=voicefleet-operator", *extra, "-f", "-",
        input=json.dumps(obj),
    )  # fmt: skip


def refused_until_in_force(setup: Setup, obj: dict[str, Any]) -> str:
    """A new policy takes a moment to be loaded by the API server: wait for the refusal."""

    last = [""]

    def attempt() -> str | None:
        code, out = apply_as_operator(setup, obj, "--dry-run=server")
        last[0] = out
        return out if code != 0 and "ValidatingAdmissionPolicy" in out else None

    try:
        return wait_for(attempt, timeout=30, interval=0.5, what="the admission policy in force")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {last[0]}") from None


def plain_deployment(namespace: str, name: str) -> dict[str, Any]:
    """The issue's probe: a Deployment that merely runs something, owned by no voice."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": "clusterrole-aggregation-controller",
                    "containers": [{"name": "c", "image": "busybox"}],
                },
            },
        },
    }


def test_a_kube_system_deployment_is_refused_for_the_operator_only(setup: Setup) -> None:
    probe = plain_deployment("kube-system", f"probe-{secrets.token_hex(3)}")
    message = refused_until_in_force(setup, probe)
    assert "may write only objects owned by a TTSVoice" in message, message
    assert f"deployments kube-system/{probe['metadata']['name']} has none" in message
    # RBAC alone would have let it through: the operator may create Deployments anywhere.
    code, out = setup.as_operator("auth", "can-i", "create", "deployments", "-n", "kube-system")
    assert code == 0, out
    assert out.strip() == "yes"
    # The policy binds to the operator's identity only: the admin's dry run passes.
    admin = setup.cluster.kubectl_run(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(probe)
    )
    assert "serverside-applied" in admin.stdout


def test_the_operators_own_objects_pass(setup: Setup) -> None:
    """The builders' objects for a real TTSVoice (the hostPath model cache included)."""
    objects = voice_objects(
        setup, BuildOptions(model_cache_dir=CACHE_DIR, network_policy_from=PEERS)
    )
    assert [obj["kind"] for obj in objects][-1] == "NetworkPolicy"
    refused_until_in_force(setup, plain_deployment(setup.voice_ns, "in-force"))
    for obj in objects:
        code, out = apply_as_operator(setup, obj)
        assert code == 0, f"{obj['kind']}: {out}"
    # applied again (an update by the same field manager), and a PDB deleted, as the
    # operator does when maxReplicas drops to 1
    for obj in objects:
        code, out = apply_as_operator(setup, obj)
        assert code == 0, f"{obj['kind']} re-applied: {out}"
    code, out = setup.as_operator("delete", "pdb", "en-us-joe", "-n", setup.voice_ns)
    assert code == 0, out


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (
            lambda pod: pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
            "may not mount a hostPath volume other than the model cache "
            "(operator.modelCacheDir): deployments {ns}/en-us-joe mounts /",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"].update(
                privileged=True, allowPrivilegeEscalation=True
            ),
            "may not create privileged containers or add capabilities: "
            "deployments {ns}/en-us-joe asks it for server",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"].update(
                capabilities={"add": ["SYS_ADMIN"]}
            ),
            "asks it for server",
        ),
        (lambda pod: pod.update(hostNetwork=True), "in the node's namespaces"),
        (lambda pod: pod.update(hostPID=True), "in the node's namespaces"),
        (lambda pod: pod.update(hostIPC=True), "in the node's namespaces"),
        (
            lambda pod: pod["containers"][0]["ports"][0].update(hostPort=8080),
            "may not open host ports",
        ),
        (
            lambda pod: pod.update(serviceAccountName="clusterrole-aggregation-controller"),
            "run as the namespace's default ServiceAccount without its token",
        ),
        (
            lambda pod: pod.update(automountServiceAccountToken=True),
            "run as the namespace's default ServiceAccount without its token",
        ),
    ],
    ids=[
        "hostPath",
        "privileged",
        "capabilities",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "hostPort",
        "serviceAccount",
        "token",
    ],
)
def test_a_voice_deployment_beyond_what_a_voice_implies_is_refused(
    setup: Setup, change: Any, complaint: str
) -> None:
    deployment = voice_objects(setup, BuildOptions())[2]
    deployment["metadata"]["name"] = "en-us-joe"
    change(deployment["spec"]["template"]["spec"])
    message = refused_until_in_force(setup, deployment)
    assert complaint.format(ns=setup.voice_ns) in message, message


def test_labels_and_owner_are_both_required(setup: Setup) -> None:
    service = voice_objects(setup, BuildOptions())[0]
    unlabelled = copy.deepcopy(service)
    del unlabelled["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    message = refused_until_in_force(setup, unlabelled)
    assert "labelled app.kubernetes.io/managed-by=voicefleet-operator" in message, message
    orphan = copy.deepcopy(service)
    orphan["metadata"]["ownerReferences"][0]["kind"] = "ConfigMap"
    message = refused_until_in_force(setup, orphan)
    assert "owned by a TTSVoice" in message, message
    exposed = copy.deepcopy(service)
    exposed["spec"]["type"] = "NodePort"
    message = refused_until_in_force(setup, exposed)
    assert "only ClusterIP Services without externalIPs" in message, message


def test_a_network_policy_selects_only_its_own_voices_pods(setup: Setup) -> None:
    """A policy that selected other pods (or every pod) could open them to anyone: a
    stolen operator token may write only the voice's own, selecting exactly its pods."""
    policy = voice_objects(setup, BuildOptions(network_policy_from=PEERS))[3]
    for selector in ({}, {"matchLabels": {"app": "database"}},
                     {"matchLabels": {"voicefleet.io/voice": "another-voice"}}):  # fmt: skip
        wider = copy.deepcopy(policy)
        wider["spec"]["podSelector"] = selector
        message = refused_until_in_force(setup, wider)
        assert "NetworkPolicies that select exactly the pods of their own voice" in message
        assert f"networkpolicies {setup.voice_ns}/en-us-joe" in message, message
    unowned = copy.deepcopy(policy)
    del unowned["metadata"]["ownerReferences"]
    assert "owned by a TTSVoice" in refused_until_in_force(setup, unowned)


def test_the_operator_may_not_take_over_an_existing_object(setup: Setup) -> None:
    """Adding our labels and owner to someone else's Service is an update of an object
    that was not ours: refused, although the new object would pass."""
    name = f"theirs-{secrets.token_hex(3)}"
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": setup.voice_ns},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}},
    }
    setup.cluster.apply(theirs)
    ours = voice_objects(setup, BuildOptions())[0]
    taken = copy.deepcopy(theirs)
    taken["metadata"]["labels"] = ours["metadata"]["labels"]
    taken["metadata"]["ownerReferences"] = ours["metadata"]["ownerReferences"]
    message = refused_until_in_force(setup, taken)
    assert f"services {setup.voice_ns}/{name} has none" in message, message
    code, out = setup.as_operator("delete", "service", name, "-n", setup.voice_ns)
    assert code != 0, out
    assert "owned by a TTSVoice" in out, out


def test_pods_only_voice_pod_metadata(setup: Setup) -> None:
    """The autoscaler's pod-deletion-cost annotation passes on a voice pod; anything on
    another pod, or a voice pod's image, is refused. The pods name a node that does not
    exist, so nothing runs."""
    cluster = setup.cluster

    def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": setup.voice_ns, "labels": labels},
            "spec": {
                "nodeName": "nowhere",
                "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
            },
        }

    voice_labels = voice_objects(setup, BuildOptions())[2]["spec"]["template"]["metadata"]["labels"]
    cluster.apply([pod("voice-pod", voice_labels), pod("other-pod", {"app": "other"})])
    cost = json.dumps(
        {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-5"}}}
    )

    def patch(name: str, body: str) -> tuple[int, str]:
        return setup.as_operator(
            "patch", "pod", name, "-n", setup.voice_ns, "--type=strategic", "-p", body
        )

    def refused(name: str, body: str) -> str | None:
        code, out = patch(name, body)
        return out if code != 0 and "ValidatingAdmissionPolicy" in out else None

    message = wait_for(lambda: refused("other-pod", cost), timeout=60, what="the policy")
    assert "may change only pods of its voices" in message, message
    code, out = patch("voice-pod", cost)
    assert code == 0, out
    image = json.dumps({"spec": {"containers": [{"name": "c", "image": "evil/app:1"}]}})
    code, message = patch("voice-pod", image)
    assert code != 0, message
    assert "only the metadata of a voice pod" in message, message


def test_the_policy_type_checks_without_warnings(setup: Setup) -> None:
    """The API server type-checks every expression against the matched kinds' schemas;
    a misspelt field would show as a warning here (and as a runtime error later)."""

    def checked() -> dict[str, Any] | None:
        policy = setup.cluster.get_json("validatingadmissionpolicy", SA_NAME)
        status: dict[str, Any] = policy.get("status") or {}
        return status if status.get("observedGeneration") else None

    status = wait_for(checked, timeout=30, what="the policy type-checked")
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
