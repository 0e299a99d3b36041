"""The Helm chart rendered by the real Helm binary: lint, schema refusals, what it makes.

No cluster: `helm lint` and `helm template` only (the install itself is in
test_chart_install.py). The binary is the pinned Helm built by the local cluster.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicefleet_inference.router.settings import RouterSettings
from voicefleet_localcluster import binaries
from voicefleet_operator.settings import parse_args

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "voicefleet"


@pytest.fixture(scope="module")
def helm() -> Path:
    return binaries.ensure_binaries() / "helm"


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(
    helm: Path, *sets: str, show_only: str | None = None, set_json: Sequence[str] = ()
) -> list[dict[str, Any]]:
    # No --kube-version: the pinned Helm is stamped with the Kubernetes version it
    # links (binaries.helm_kube_version), as Helm's own release build does.
    args = ["template", "vf", str(CHART), "--namespace", "voicefleet-system"]
    for item in sets:
        args += ["--set", item]
    for item in set_json:
        args += ["--set-json", item]
    if show_only:
        args += ["--show-only", show_only]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean(helm: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_lint_with_everything_enabled(helm: Path) -> None:
    proc = run_helm(
        helm,
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,"
        "monitoring.dashboard.enabled=true,operator.replicas=2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.replicas=0", "/operator/replicas"),
        ("router.replicas=-1", "/router/replicas"),
        ("router.port=70000", "/router/port"),
        ("router.service.type=Ingress", "/router/service/type"),
        ("operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy"),
        ("monitoring.prometheusRule.degradedFor=five minutes", "/prometheusRule/degradedFor"),
        ("monitoring.prometheusRule.saturatedRatio=2", "/prometheusRule/saturatedRatio"),
        ("operator.replicaz=2", "'replicaz' not allowed"),
        ("crds.install=maybe", "/crds/install"),
        ("operator.autoscaler.routerSelector=app in (a)", "/operator/autoscaler/routerSelector"),
        ("rbac.scope=namespaces", "/rbac/watchNamespaces"),
        ("rbac.scope=some", "/rbac/scope"),
        ("rbac.watchNamespaces={Team_A}", "/rbac/watchNamespaces/0"),
    ],
)
def test_schema_refuses_bad_values_with_a_clear_message(
    helm: Path, setting: str, complaint: str
) -> None:
    """A typo or an out-of-range value stops `helm install` and names the value."""
    proc = run_helm(helm, "template", "vf", str(CHART), "--set", setting)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr, proc.stderr


def test_defaults_render_every_component(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert set(crds) == {
        "ttsvoices.voicefleet.io",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert crds["ttsvoices.voicefleet.io"]["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }
    # the CRD is the file in crds/, not a re-typed copy
    source = yaml.safe_load((REPO / "crds" / "ttsvoices.yaml").read_text())
    assert crds["ttsvoices.voicefleet.io"]["spec"] == source["spec"]
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert deployments["vf-voicefleet-router"]["spec"]["replicas"] == 2
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["minAvailable"] == 1


def test_crds_toggle_off(helm: Path) -> None:
    docs = render(helm, "crds.install=false")
    assert not by_kind(docs, "CustomResourceDefinition")


def pod_specs(docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")]


def test_pods_meet_the_restricted_pod_security_standard(helm: Path) -> None:
    """The fields PSS "restricted" checks (the install test enforces it for real)."""
    for spec in pod_specs(render(helm)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert "resources" in container
            assert container["resources"]["requests"]


def operator_args(docs: Sequence[dict[str, Any]]) -> list[str]:
    dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["voicefleet-operator"]
    return [str(a) for a in container["args"]]


def test_operator_flags_follow_values(helm: Path) -> None:
    single = operator_args(render(helm))
    assert "--standalone" in single
    assert not any(a.startswith("--default-image") for a in single)
    assert not any(a.startswith("--default-gpu-image") for a in single)
    peered = operator_args(
        render(
            helm,
            "operator.replicas=3",
            "operator.defaultVoiceImage=registry.example/tts:1",
            "operator.defaultGpuVoiceImage=registry.example/tts:1-cuda",
        )
    )
    assert "--default-gpu-image=registry.example/tts:1-cuda" in peered
    assert "--peering=voicefleet" in peered
    assert "--standalone" not in peered
    assert "--default-image=registry.example/tts:1" in peered


def test_operator_and_router_scheduling_values(helm: Path) -> None:
    docs = render(
        helm,
        "operator.nodeSelector.pool=system",
        "router.tolerations[0].key=dedicated",
        "router.tolerations[0].operator=Exists",
        "router.image.tag=9.9.9",
    )
    specs = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")
    }
    assert specs["vf-voicefleet-operator"]["nodeSelector"] == {"pool": "system"}
    router = specs["vf-voicefleet-router"]
    assert router["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert router["containers"][0]["image"].endswith(":9.9.9")


def rules(docs: Sequence[dict[str, Any]], suffix: str) -> dict[tuple[str, str], set[str]]:
    role = next(
        d
        for d in docs
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"].endswith(suffix)
    )
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def test_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm)
    router = rules(docs, "router")
    assert router == {
        ("voicefleet.io", "ttsvoices"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
    }
    operator = rules(docs, "operator")
    assert operator[("", "pods")] == {"get", "list", "watch", "patch"}
    assert operator[("voicefleet.io", "ttsvoices")] == {"get", "list", "watch", "patch"}
    # the per-voice NetworkPolicy is applied like the Service, never watched
    assert operator[("networking.k8s.io", "networkpolicies")] == {
        "get",
        "create",
        "patch",
        "delete",
    }
    everything = set().union(*operator.values())
    assert "*" not in everything
    assert "escalate" not in everything
    assert "bind" not in everything
    assert ("", "secrets") not in operator
    # and never a wildcard resource or group
    assert all("*" not in key for pair in operator for key in pair)


def test_router_role_narrows_to_one_namespace(helm: Path) -> None:
    docs = render(helm, "router.allNamespaces=false", "router.defaultNamespace=voices")
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "voices"
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "voicefleet-system"


def test_monitoring_objects(helm: Path) -> None:
    docs = render(
        helm,
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.dashboard.enabled=true",
    )
    assert len(by_kind(docs, "PodMonitor")) == 2
    rule = by_kind(docs, "PrometheusRule")[0]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "VoiceFleetVoiceDegraded",
        "VoiceFleetNoReadyPod",
        "VoiceFleetQueueSaturated",
        "VoiceFleetHeldRequestsTimingOut",
    }
    dashboard = next(
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    panels = json.loads(dashboard["data"]["voicefleet.json"])["panels"]
    assert len(panels) == 6


def test_admission_policy_binds_to_the_operators_service_account(helm: Path) -> None:
    docs = render(helm, "operator.modelCacheDir=/var/cache/vf")
    policy = by_kind(docs, "ValidatingAdmissionPolicy")[0]
    binding = by_kind(docs, "ValidatingAdmissionPolicyBinding")[0]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        'request.userInfo.username == "system:serviceaccount:voicefleet-system:'
        'vf-voicefleet-operator"'
    )
    rules = {
        r["resources"][0]: set(r["operations"])
        for r in policy["spec"]["matchConstraints"]["resourceRules"]
    }
    assert rules == {
        "deployments": {"CREATE", "UPDATE", "DELETE"},
        "services": {"CREATE", "UPDATE", "DELETE"},
        "poddisruptionbudgets": {"CREATE", "UPDATE", "DELETE"},
        "networkpolicies": {"CREATE", "UPDATE", "DELETE"},
        "pods": {"UPDATE"},
    }
    hostpath = next(v for v in policy["spec"]["validations"] if "hostPath" in v["expression"])
    assert 'v.hostPath.path == "/var/cache/vf"' in hostpath["expression"]
    without_cache = by_kind(render(helm), "ValidatingAdmissionPolicy")[0]
    hostpath = next(
        v for v in without_cache["spec"]["validations"] if "hostPath" in v["expression"]
    )
    assert "v.hostPath.path ==" not in hostpath["expression"]
    assert not by_kind(
        render(helm, "operator.admissionPolicy.enabled=false"), "ValidatingAdmissionPolicy"
    )


def container_of(docs: Sequence[dict[str, Any]], suffix: str) -> dict[str, Any]:
    dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(suffix))
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def test_namespaced_mode_renders_roles_only_in_the_watched_namespaces(helm: Path) -> None:
    docs = render(helm, "rbac.scope=namespaces", "rbac.watchNamespaces={team-a,team-b}")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    roles = {(d["metadata"]["name"], d["metadata"]["namespace"]) for d in by_kind(docs, "Role")}
    # the operator also watches its own namespace: the routers it reads live there
    assert roles == {
        ("vf-voicefleet-operator", "team-a"),
        ("vf-voicefleet-operator", "team-b"),
        ("vf-voicefleet-operator", "voicefleet-system"),
        ("vf-voicefleet-router", "team-a"),
        ("vf-voicefleet-router", "team-b"),
    }
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        (subject,) = binding["subjects"]
        assert subject["namespace"] == "voicefleet-system"
    operator = next(
        d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "vf-voicefleet-operator"
    )
    resources = {r for rule in operator["rules"] for r in rule["resources"]}
    assert "namespaces" not in resources
    assert "customresourcedefinitions" not in resources
    assert "clusterkopfpeerings" not in resources
    args = operator_args(docs)
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
        "--namespace=voicefleet-system",
    ]
    router_args = container_of(docs, "router")["args"]
    assert "--watch-namespaces=team-a,team-b" in router_args
    # the admission policy is the same in every mode
    assert by_kind(docs, "ValidatingAdmissionPolicy")


def test_the_operator_trusts_routers_in_the_release_namespace_with_the_token(helm: Path) -> None:
    docs = render(helm)
    args = operator_args(docs)
    assert "--router-namespace=voicefleet-system" in args
    assert any(a.startswith("--router-pod-selector=") for a in args)
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == "vf-voicefleet-router-metrics-token"
    refs = {}
    for suffix in ("operator", "router"):
        for env in container_of(docs, suffix)["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs[env["name"]] = ref
    token_ref = {"name": "vf-voicefleet-router-metrics-token", "key": "token"}
    assert refs == {
        "VOICEFLEET_OPERATOR_ROUTER_TOKEN": token_ref,
        "VOICEFLEET_ROUTER_METRICS_TOKEN": token_ref,
    }
    router_pod = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("router")
    )["spec"]["template"]["metadata"]
    assert "prometheus.io/scrape" not in router_pod.get("annotations", {})
    monitors = by_kind(render(helm, "monitoring.podMonitor.enabled=true"), "PodMonitor")
    control = next(m for m in monitors if m["metadata"]["name"].endswith("control"))
    router_endpoint = next(e for e in control["spec"]["podMetricsEndpoints"] if e["port"] == "http")
    assert router_endpoint["authorization"]["credentials"] == token_ref
    open_docs = render(helm, "router.metricsAuth.enabled=false")
    assert not by_kind(open_docs, "Secret")
    assert not any(
        "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        for e in container_of(open_docs, "operator")["env"]
    )


# -- NetworkPolicies: only the router (and the operator) reach the voice pods ---------------

RELEASE_NS = {"matchLabels": {"kubernetes.io/metadata.name": "voicefleet-system"}}
ROUTER_PEER = {
    "namespaceSelector": RELEASE_NS,
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/instance": "vf",
            "app.kubernetes.io/name": "voicefleet-router",
        }
    },
}
OPERATOR_PEER = {
    "namespaceSelector": RELEASE_NS,
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/instance": "vf",
            "app.kubernetes.io/name": "voicefleet-operator",
        }
    },
}


def voice_peers(docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The peers the operator writes into each voice's NetworkPolicy (None: no flag)."""
    flags = [a for a in operator_args(docs) if a.startswith("--network-policy-from=")]
    if not flags:
        return None
    (flag,) = flags
    peers: list[dict[str, Any]] = json.loads(flag.split("=", 1)[1])
    return peers


def pod_labels(docs: Sequence[dict[str, Any]], suffix: str) -> dict[str, str]:
    dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(suffix))
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return labels


def test_voice_pods_accept_only_this_releases_router_and_operator(helm: Path) -> None:
    docs = render(helm)
    assert voice_peers(docs) == [ROUTER_PEER, OPERATOR_PEER]
    # the selectors match the pods the chart runs (their template labels) ...
    for peer, suffix in ((ROUTER_PEER, "router"), (OPERATOR_PEER, "operator")):
        labels = pod_labels(docs, suffix)
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    # ... and what the operator's flag parser accepts
    flag = next(a for a in operator_args(docs) if a.startswith("--network-policy-from="))
    config = parse_args(["-A", flag])
    assert config.network_policy_peers == (ROUTER_PEER, OPERATOR_PEER)


def test_voice_ingress_allow_list_is_added_and_the_router_left_out_when_disabled(
    helm: Path,
) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    docs = render(
        helm,
        "router.enabled=false",
        set_json=[f"networkPolicy.voiceIngressFrom={json.dumps([prometheus])}"],
    )
    assert voice_peers(docs) == [OPERATOR_PEER, prometheus]
    assert not by_kind(docs, "NetworkPolicy")  # no router, no router policy


def test_network_policies_off(helm: Path) -> None:
    docs = render(helm, "networkPolicy.enabled=false")
    assert voice_peers(docs) is None
    assert not by_kind(docs, "NetworkPolicy")


def test_router_policy_admits_anyone_on_its_port_by_default_and_the_given_peers_when_set(
    helm: Path,
) -> None:
    (policy,) = by_kind(render(helm, "router.port=9000"), "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "voicefleet-system"
    assert policy["spec"]["podSelector"]["matchLabels"] == ROUTER_PEER["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # no `from`: every source, on the router's port only
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 9000, "protocol": "TCP"}]}]
    (cluster_only,) = by_kind(
        render(helm, set_json=['networkPolicy.routerIngressFrom=[{"namespaceSelector": {}}]']),
        "NetworkPolicy",
    )
    assert cluster_only["spec"]["ingress"] == [
        {"from": [{"namespaceSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]}
    ]


def test_namespaced_mode_passes_the_same_peers(helm: Path) -> None:
    """In both scopes the operator writes the voices' policies: one mechanism, and it
    follows each voice into whatever namespace it lives in (globs included)."""
    docs = render(helm, "rbac.scope=namespaces", "rbac.watchNamespaces={team-a}")
    assert voice_peers(docs) == [ROUTER_PEER, OPERATOR_PEER]
    operator = next(
        d
        for d in by_kind(docs, "Role")
        if d["metadata"]["name"] == "vf-voicefleet-operator"
        and d["metadata"]["namespace"] == "team-a"
    )
    assert any("networkpolicies" in r["resources"] for r in operator["rules"])


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('[{"podSelektor": {}}]', "/networkPolicy/voiceIngressFrom/0"),
        ("[{}]", "/networkPolicy/voiceIngressFrom/0"),
        ('[{"ipBlock": {}}]', "/networkPolicy/voiceIngressFrom/0/ipBlock"),
    ],
)
def test_schema_refuses_a_malformed_peer(helm: Path, value: str, complaint: str) -> None:
    proc = run_helm(
        helm, "template", "vf", str(CHART), "--set-json", f"networkPolicy.voiceIngressFrom={value}"
    )
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr


def env_names(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_voice_auth_gives_the_key_to_the_operator_and_router_only(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = render(helm)
    assert not [s for s in by_kind(off, "Secret") if s["metadata"]["name"].endswith("voice-auth")]
    assert "VOICEFLEET_OPERATOR_POD_TOKEN_KEY" not in env_names(container_of(off, "operator"))
    docs = render(helm, "voiceAuth.enabled=true")
    (secret,) = [
        s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "vf-voicefleet-voice-auth"
    ]
    assert secret["metadata"]["namespace"] == "voicefleet-system"
    assert len(secret["data"]["key"]) >= 48
    for suffix, variable in (
        ("operator", "VOICEFLEET_OPERATOR_POD_TOKEN_KEY"),
        ("router", "VOICEFLEET_ROUTER_POD_TOKEN_KEY"),
    ):
        ref = env_names(container_of(docs, suffix))[variable]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vf-voicefleet-voice-auth", "key": "key"}
    # both read it under the names their settings know
    monkeypatch.setenv("VOICEFLEET_OPERATOR_POD_TOKEN_KEY", "k1")
    monkeypatch.setenv("VOICEFLEET_ROUTER_POD_TOKEN_KEY", "k2")
    operator_key = parse_args(["-A"]).pod_token_key
    router_key = RouterSettings().pod_token_key
    assert operator_key is not None
    assert operator_key.get_secret_value() == "k1"
    assert router_key is not None
    assert router_key.get_secret_value() == "k2"
