"""NetworkPolicy on the real node: only the router (and the operator) reach a voice's pods.

The real node enforces NetworkPolicy with kube-router's firewall (iptables + ipset, started
beside kube-proxy by voicefleet_localcluster.node). The operator runs as a process with the
peers the chart gives it (`--network-policy-from`, rendered by `helm template` for a
release in its own namespace), so what is enforced is what a `helm install` would write.
Clients are `kubectl run` pods of the node's busybox calling the voice pod's IP directly
(no Service, no router): from another namespace the call is refused; from a pod carrying
the router's labels in the release namespace it is answered; the router's labels copied
into another namespace are refused. Deleting the policy opens the pod again, so the
refusals are the policy's and not the network's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from nodeclients import run_client
from operatorprocs import new_operator, voice_manifest

from voicefleet_localcluster import node, stack
from voicefleet_localcluster.testing import OPERATOR_CHART, LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RELEASE = "vf"
VOICE = "guarded"
ROUTER_LABELS = {
    "app.kubernetes.io/name": "voicefleet-router",
    "app.kubernetes.io/instance": RELEASE,
}


@dataclass(frozen=True)
class Setup:
    cluster: LocalCluster
    release: str
    voices: str
    outside: str
    pod_ip: str


def chart_peers(cluster: LocalCluster, release_ns: str) -> str:
    """The `--network-policy-from` the chart gives its operator for this release."""
    rendered = cluster.helm_run(
        "template", RELEASE, str(OPERATOR_CHART), "--namespace", release_ns,
        "--show-only", "templates/operator/deployment.yaml",
    ).stdout  # fmt: skip
    deployment: dict[str, Any] = yaml.safe_load(rendered)
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    (flag,) = [a for a in args if a.startswith("--network-policy-from=")]
    return flag


@pytest.fixture(scope="module")
def setup(real_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cluster = real_cluster
    # The node as this module needs it: bridged frames through iptables, firewall up.
    assert node.BRIDGE_NF_CALL_IPTABLES.read_text().strip() == "1"
    assert node.firewall_ready(), "kube-router's firewall chain is missing"
    cluster.install_crds()
    log_dir = tmp_path_factory.mktemp("netpol")
    with (
        cluster.namespace("np-release") as release,
        cluster.namespace("np-voices") as voices,
        cluster.namespace("np-outside") as outside,
    ):
        operator = new_operator(
            cluster.kubeconfig,
            log_dir / "operator.log",
            namespaces=[voices],
            extra=["--autoscale-interval=0", chart_peers(cluster, release)],
        )
        operator.start(timeout=90)
        try:
            cluster.apply(
                voice_manifest(
                    VOICE,
                    engine="simulated",
                    replicas=1,
                    resources={"cpu": "250m", "memory": "256Mi"},
                    autoscaling={"enabled": False},
                ),
                namespace=voices,
            )
            selector = f"voicefleet.io/voice={VOICE}"
            pods = wait_for(
                lambda: cluster.ready_pods(voices, selector),
                timeout=240,
                what=f"a ready voice pod (operator log {operator.log_path})",
            )
            yield Setup(cluster, release, voices, outside, pods[0]["status"]["podIP"])
        finally:
            operator.stop()


def tries(command: str, word: str) -> str:
    """Up to three tries two seconds apart, each bounded by `timeout` (busybox's own
    `wget -T` segfaults); prints ``<word>-OK`` on success, ``<word>-REFUSED`` per failure.

    A new client's address reaches kube-router's allow sets a moment after the pod starts,
    so one failure is not a refusal: only a pod refused every time counts as refused.
    No pause after the third refusal: nothing follows it.
    """
    return (
        f"{word}=1; for i in 1 2 3; do if {command}; then echo {word}-OK; {word}=0; break; "
        f"fi; echo {word}-REFUSED; [ $i = 3 ] || sleep 2; done"
    )


def call_pod(setup: Setup, namespace: str, name: str, labels: dict[str, str]) -> tuple[bool, str]:
    """A client calling the voice pod's IP directly: (answered, its log)."""
    fetch = f"timeout 10 wget -q -O - http://{setup.pod_ip}:8080/v1/models"
    return run_client(setup.cluster, namespace, name, f"{tries(fetch, 'POD')}; exit $POD", labels)


def test_the_operator_wrote_the_voices_policy_from_the_charts_peers(setup: Setup) -> None:
    policy = setup.cluster.get_json("networkpolicy", VOICE, "-n", setup.voices)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "TTSVoice"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"voicefleet.io/voice": VOICE}}
    peers = policy["spec"]["ingress"][0]["from"]
    release_ns = {"matchLabels": {"kubernetes.io/metadata.name": setup.release}}
    assert {"namespaceSelector": release_ns, "podSelector": {"matchLabels": ROUTER_LABELS}} in (
        peers
    )


def test_a_pod_of_another_namespace_is_refused_and_the_routers_pod_answered(
    setup: Setup,
) -> None:
    answered, log = call_pod(setup, setup.outside, "outsider", {"app": "client"})
    assert not answered, f"a pod of another namespace reached the voice pod:\n{log}"
    assert log.count("POD-REFUSED") == 3, log
    answered, log = call_pod(setup, setup.release, "router", ROUTER_LABELS)
    assert answered, f"a pod with the router's labels in the release namespace was refused:\n{log}"
    assert '"en_US-joe-medium"' in log or '"data"' in log, log
    # The labels alone are not trusted: the same pod in another namespace is refused.
    answered, log = call_pod(setup, setup.outside, "impostor", ROUTER_LABELS)
    assert not answered, f"the router's labels opened the pod from another namespace:\n{log}"


def test_without_the_policy_the_same_call_is_answered(setup: Setup) -> None:
    """The control: the refusals above are the policy's, not a network that drops all."""
    setup.cluster.kubectl_run("delete", "networkpolicy", VOICE, "-n", setup.voices)
    answered, log = call_pod(setup, setup.outside, "outsider-open", {"app": "client"})
    assert answered, f"with no policy the pod should answer anyone:\n{log}"


# -- the chart itself: helm install, the operator in a pod, the real router -------------------

CHART_RELEASE = "vfnp"


def test_helm_install_enforces_the_same_the_router_answers_a_pod_in_another_namespace_does_not(
    real_cluster: LocalCluster, setup: Setup
) -> None:
    """`helm install` with the chart's defaults (namespaced, so that its operator and this
    module's process operator never watch the same voices): the voice's policy is written
    by the operator pod, the real router reaches the voice pod through it, and a client
    pod of another namespace is answered by the router's Service (its policy admits every
    pod) but refused by the voice pod itself."""
    cluster = real_cluster
    release_ns = f"{CHART_RELEASE}-system"
    with (
        cluster.namespace("vfnp-voices") as voices,
        stack.release_for_test(
            cluster,
            release=CHART_RELEASE,
            namespace=release_ns,
            voice_namespaces=[voices],
            set_values=(
                "router.replicas=1",
                "rbac.scope=namespaces",
                f"rbac.watchNamespaces={{{voices}}}",
                f"router.defaultNamespace={voices}",
            ),
        ),
    ):
        cluster.apply(
            simulated_voice("charted", replicas=1, autoscaling={"enabled": False}),
            namespace=voices,
        )
        pods = wait_for(
            lambda: cluster.ready_pods(voices, "voicefleet.io/voice=charted"),
            timeout=240,
            what="the chart's operator to bring up the voice",
        )
        policy = cluster.get_json("networkpolicy", "charted", "-n", voices)
        assert policy["spec"]["podSelector"] == {"matchLabels": {"voicefleet.io/voice": "charted"}}
        pod_ip = pods[0]["status"]["podIP"]
        router = f"http://{CHART_RELEASE}-voicefleet-router.{release_ns}.svc.{node.CLUSTER_DOMAIN}"
        body = json.dumps({"model": "charted", "input": "Hello.", "voice": "default"})
        speak = (
            f"timeout 30 wget -q -O /dev/null --header 'Content-Type: application/json' "
            f"--post-data '{body}' {router}/v1/audio/speech"
        )
        direct = f"timeout 10 wget -q -O - http://{pod_ip}:8080/v1/models"
        answered, log = run_client(
            cluster, setup.outside, "chart-client",
            f"{tries(speak, 'ROUTER')}; {tries(direct, 'POD')}; exit $ROUTER", {"app": "client"},
        )  # fmt: skip
        assert answered, f"the router did not answer a pod of another namespace:\n{log}"
        # at the first try: the router's policy (no peers by default) needs no address set
        # that a new pod must first be added to
        assert "ROUTER-REFUSED" not in log, log
        assert "ROUTER-OK" in log, log
        assert log.count("POD-REFUSED") == 3, f"the voice pod answered a stranger:\n{log}"
        assert "POD-OK" not in log, log
