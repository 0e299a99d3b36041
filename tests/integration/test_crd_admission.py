"""The TTSVoice CRD on a real kube-apiserver, driven with the real kubectl.

What only a real API server can prove: the schema is structural and accepted, the CEL
rules compile within their cost budget and refuse bad voices with messages that say what
to fix, defaults are filled in, the scale subresource works (and respects the CEL bounds),
status is a subresource, and `kubectl get` / `kubectl explain` show what users need.
No operator runs here: this is the API alone.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "ttsvoices.yaml"
PEERING = REPO / "crds" / "kopf-peering.yaml"
SAMPLES = REPO / "crds" / "samples"
GROUP_VERSION = "voicefleet.io/v1alpha1"


@pytest.fixture(scope="module")
def crds(local_cluster: LocalCluster) -> LocalCluster:
    """Install the CRDs once for this module and wait until the API serves them."""
    for manifest in (CRD, PEERING):
        local_cluster.kubectl_run(
            "apply", "--server-side", "--force-conflicts", "-f", str(manifest)
        )
    local_cluster.kubectl_run(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/ttsvoices.voicefleet.io",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    # Established means served; discovery (what kubectl resolves `ttsv` with) follows.
    wait_for(
        lambda: local_cluster.kubectl_run("get", "ttsv", "-A", check=False).returncode == 0,
        timeout=30,
        what="kubectl to resolve the short name ttsv",
    )
    return local_cluster


@pytest.fixture(scope="module")
def reject_namespace(crds: LocalCluster) -> Iterator[str]:
    """One namespace for all refused voices: nothing is ever stored in it."""
    with crds.namespace("crd-admission-rejects") as name:
        yield name


def voice(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid TTSVoice (bundled model), with `spec` overrides."""
    body: dict[str, Any] = {
        "apiVersion": GROUP_VERSION,
        "kind": "TTSVoice",
        "metadata": {"name": name},
        "spec": {"model": {"bundled": "en_US-joe-medium"}},
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def get_voice(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("ttsvoice", name, "-n", namespace)


def assert_kept(written: Any, stored: Any, path: str) -> None:
    """Every value the user wrote is stored unchanged (the server only adds defaults)."""
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in stored, f"{path}.{key} was dropped"
            assert_kept(value, stored[key], f"{path}.{key}")
    else:
        assert stored == written, path


def create(cluster: LocalCluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl_run("create", "-n", namespace, "-f", "-", input=json.dumps(body))


# --- accepted, with defaults filled in by the API server ---------------------------------


@pytest.mark.parametrize(
    "sample", sorted(p.name for p in SAMPLES.glob("*.yaml")), ids=lambda name: name
)
def test_sample_is_accepted(crds: LocalCluster, cluster_namespace: str, sample: str) -> None:
    body = yaml.safe_load((SAMPLES / sample).read_text())
    crds.kubectl_run("apply", "-n", cluster_namespace, "-f", str(SAMPLES / sample))
    stored = get_voice(crds, cluster_namespace, body["metadata"]["name"])
    # What the sample says is kept as written; what it leaves out is defaulted.
    assert_kept(body["spec"], stored["spec"], "spec")
    assert stored["spec"].get("engine") == body["spec"].get("engine")  # no schema default
    # No image default: a voice that names none keeps none (the operator fills it in).
    assert stored["spec"].get("image") == body["spec"].get("image")
    assert stored["spec"]["server"]["requestTimeoutSeconds"] == 120
    assert stored["spec"]["server"]["drainGraceSeconds"] == 30
    assert "coldStartTimeoutSeconds" in stored["spec"]["autoscaling"]


def test_minimal_voice_gets_every_default(crds: LocalCluster, cluster_namespace: str) -> None:
    create(crds, cluster_namespace, voice("minimal"))
    spec = get_voice(crds, cluster_namespace, "minimal")["spec"]
    assert spec == {
        "replicas": 1,
        # no "engine": unset follows resources.gpus (the operator resolves it)
        "model": {"bundled": "en_US-joe-medium"},
        "imagePullPolicy": "IfNotPresent",
        "resources": {"cpu": "1", "memory": "1Gi", "gpus": 0},
        "server": {
            "maxQueue": 64,
            "batchWindowMs": 5,
            "workers": 1,
            "requestTimeoutSeconds": 120,
            "drainGraceSeconds": 30,
            "maxInputChars": 4096,
            "defaultPriority": "standard",
            "priorityWaitTargetMs": 0,
            "priorityReservedWorkers": 0,
        },
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetWorkSecondsPerReplica": 10,
            "scaleDownDelaySeconds": 300,
            "scaleToZeroIdleSeconds": 600,
            "coldStartTimeoutSeconds": 120,
            "enabled": True,
        },
    }


def test_url_models_are_accepted_as_written(crds: LocalCluster, cluster_namespace: str) -> None:
    for name, model in (
        (
            "url-https",
            {
                "url": "https://[::1]:8443/voices/en_US-joe-medium.onnx",
                "sha256": SHA,
                "configSha256": SHA,
                "credentialsSecret": "token",
                "caConfigMap": "corp-ca",
            },
        ),
        (
            "url-s3",
            {
                "url": "s3://voices.eu/en/en_US-joe-medium.onnx",
                "configUrl": "s3://voices.eu/en/config.json",
                "sha256": SHA,
                "configSha256": SHA,
                "credentialsSecret": "keys",
                "s3": {"endpoint": "http://127.0.0.1:8333", "region": "eu-1"},
            },
        ),
    ):
        create(crds, cluster_namespace, voice(name, model=model))
        assert get_voice(crds, cluster_namespace, name)["spec"]["model"] == model


def test_volume_model_defaults_read_only(crds: LocalCluster, cluster_namespace: str) -> None:
    body = voice("vol", model={"volume": {"persistentVolumeClaim": {"claimName": "voices"}}})
    body["spec"]["model"]["volume"]["path"] = "voices/en_US-joe-medium.onnx"
    body["spec"]["env"] = [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}, {"name": "EMPTY"}]
    body["spec"]["resources"] = {"cpu": 2, "memory": "2Gi"}
    create(crds, cluster_namespace, body)
    spec = get_voice(crds, cluster_namespace, "vol")["spec"]
    assert spec["model"]["volume"]["persistentVolumeClaim"] == {
        "claimName": "voices",
        "readOnly": True,
    }
    assert spec["env"][1] == {"name": "EMPTY", "value": ""}
    assert spec["resources"]["cpu"] == 2, "an integer quantity is accepted as written"


def test_tolerations_and_node_selector_as_kubernetes_allows_them(
    crds: LocalCluster, cluster_namespace: str
) -> None:
    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "a100", "effect": "PreferNoSchedule"},
        {"key": "spot", "value": "true"},  # operator defaults to Equal, effect to every one
        {"operator": "Exists"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 30},
        {"key": "any", "operator": "Exists", "effect": ""},
    ]
    selector = {"pool": "gpu-pool_1.a", "kubernetes.io/os": "linux", "empty": "", "one": "x"}
    create(crds, cluster_namespace, voice("tol", tolerations=tolerations, nodeSelector=selector))
    spec = get_voice(crds, cluster_namespace, "tol")["spec"]
    assert spec["tolerations"] == tolerations
    assert spec["nodeSelector"] == selector


# --- refused, with a message that says what to fix ----------------------------------------


def with_model(model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"model": model, **spec}


PVC = {"persistentVolumeClaim": {"claimName": "voices"}}
SHA = "0123456789abcdef" * 4

# (case id, spec of the voice, fragments the API server's message must contain)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "min-above-max",
        {"replicas": 3, "autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
        [
            "spec.autoscaling.minReplicas",
            "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
        ],
    ),
    (
        "replicas-above-max",
        {"replicas": 5, "autoscaling": {"maxReplicas": 3}},
        ["spec.replicas: Invalid value", "spec.replicas must be <= spec.autoscaling.maxReplicas"],
    ),
    (
        "replicas-below-min",
        {"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
        ["spec.replicas: Invalid value", "spec.replicas must be >= spec.autoscaling.minReplicas"],
    ),
    (
        "replicas-negative",
        {"replicas": -1},
        ["spec.replicas", "should be greater than or equal to 0"],
    ),
    (
        "replicas-above-bound",
        {"replicas": 1001, "autoscaling": {"maxReplicas": 1000}},
        ["spec.replicas", "should be less than or equal to 1000"],
    ),
    (
        "unknown-engine",
        {"engine": "tacotron"},
        ['spec.engine: Unsupported value: "tacotron"', '"piper-onnx"'],
    ),
    (
        "model-both",
        with_model({"bundled": "en_US-joe-medium", "volume": {**PVC, "path": "a.onnx"}}),
        ["spec.model must set exactly one of bundled", "volume (a .onnx file", "or url"],
    ),
    ("model-neither", with_model({}), ["spec.model must set exactly one of bundled"]),
    ("model-missing", {"model": None}, ["spec.model: Required value"]),
    (
        "path-absolute",
        with_model({"volume": {**PVC, "path": "/etc/voices/joe.onnx"}}),
        ["spec.model.volume.path must be relative to the volume root"],
    ),
    (
        "path-dotdot",
        with_model({"volume": {**PVC, "path": "voices/../../etc/joe.onnx"}}),
        ["spec.model.volume.path must not contain '..' segments"],
    ),
    (
        "path-empty-segment",
        with_model({"volume": {**PVC, "path": "voices//joe.onnx"}}),
        ["spec.model.volume.path must not contain empty or '.' segments"],
    ),
    (
        "path-not-onnx",
        with_model({"volume": {**PVC, "path": "voices/joe.onnx.json"}}),
        ["spec.model.volume.path must name the .onnx model file"],
    ),
    (
        "claim-name-invalid",
        with_model(
            {"volume": {"persistentVolumeClaim": {"claimName": "My_Voices"}, "path": "a.onnx"}}
        ),
        ["spec.model.volume.persistentVolumeClaim.claimName", "should match"],
    ),
    (
        "bundled-name-invalid",
        with_model({"bundled": "../etc/passwd"}),
        ["spec.model.bundled", "should match"],
    ),
    (
        "url-http",
        with_model({"url": "http://models.example/v.onnx", "sha256": SHA, "configSha256": SHA}),
        ["spec.model.url must start with https:// or s3://"],
    ),
    (
        "url-user-info",
        with_model(
            {"url": "https://u:p@models.example/v.onnx", "sha256": SHA, "configSha256": SHA}
        ),
        ["spec.model.url must be https://host[:port]/path/to/file without user info"],
    ),
    (
        "url-query",
        with_model(
            {
                "url": "https://models.example/v.onnx?X-Amz-Signature=1",
                "sha256": SHA,
                "configSha256": SHA,
            }
        ),
        ["spec.model.url must name the .onnx model file"],
    ),
    (
        "url-bad-bucket",
        with_model({"url": "s3://B/v.onnx", "sha256": SHA, "configSha256": SHA}),
        ["spec.model.url must be s3://bucket/key"],
    ),
    (
        "url-without-digest",
        with_model({"url": "https://models.example/v.onnx", "configSha256": SHA}),
        ["spec.model.sha256 is required with spec.model.url"],
    ),
    (
        "url-without-config-digest",
        with_model({"url": "https://models.example/v.onnx", "sha256": SHA}),
        ["spec.model.configSha256 is required with spec.model.url"],
    ),
    (
        "url-digest-malformed",
        with_model({"url": "https://models.example/v.onnx", "sha256": "abc", "configSha256": SHA}),
        ["spec.model.sha256"],
    ),
    (
        "url-and-bundled",
        with_model(
            {
                "bundled": "en_US-joe-medium",
                "url": "https://models.example/v.onnx",
                "sha256": SHA,
                "configSha256": SHA,
            }
        ),
        ["spec.model must set exactly one of bundled"],
    ),
    (
        "secret-without-url",
        with_model({"bundled": "en_US-joe-medium", "credentialsSecret": "keys"}),
        ["apply only to a model downloaded from spec.model.url"],
    ),
    (
        "s3-settings-on-https",
        with_model(
            {
                "url": "https://models.example/v.onnx",
                "sha256": SHA,
                "configSha256": SHA,
                "s3": {"endpoint": "http://minio:9000"},
            }
        ),
        ["spec.model.s3 applies only to an s3:// spec.model.url"],
    ),
    (
        "s3-endpoint-with-path",
        with_model(
            {
                "url": "s3://voices/v.onnx",
                "sha256": SHA,
                "configSha256": SHA,
                "s3": {"endpoint": "http://minio:9000/voices"},
            }
        ),
        ["spec.model.s3.endpoint must be http(s)://host[:port]"],
    ),
    (
        "cpu-malformed",
        {"resources": {"cpu": "lots"}},
        ["spec.resources.cpu must be a Kubernetes quantity above zero"],
    ),
    (
        "memory-zero",
        {"resources": {"memory": "0Mi"}},
        ["spec.resources.memory must be a Kubernetes quantity above zero"],
    ),
    (
        "cpu-negative-int",
        {"resources": {"cpu": -2}},
        ["spec.resources.cpu must be a Kubernetes quantity above zero"],
    ),
    (
        "target-zero",
        {"autoscaling": {"targetWorkSecondsPerReplica": 0}},
        ["spec.autoscaling.targetWorkSecondsPerReplica", "should be greater than 0"],
    ),
    (
        "target-negative",
        {"autoscaling": {"targetWorkSecondsPerReplica": -5}},
        ["spec.autoscaling.targetWorkSecondsPerReplica", "should be greater than 0"],
    ),
    (
        "gpus-17",
        {"resources": {"gpus": 17}},
        ["spec.resources.gpus", "should be less than or equal to 16"],
    ),
    (
        "max-queue-zero",
        {"server": {"maxQueue": 0}},
        ["spec.server.maxQueue", "should be greater than or equal to 1"],
    ),
    (
        "env-voicefleet-prefix",
        {"env": [{"name": "VOICEFLEET_MAX_QUEUE", "value": "9"}]},
        ["reserved for the operator", "spec.server.maxQueue"],
    ),
    (
        "env-pod-ip",
        {"env": [{"name": "POD_IP", "value": "0.0.0.0"}]},
        ["spec.env[0].name: Forbidden", "env name POD_IP is set by the operator"],
    ),
    (
        "env-duplicate",
        {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
        ["spec.env[1]: Duplicate value"],
    ),
    (
        "pod-label-reserved",
        {"podLabels": {"voicefleet.io/voice": "someone-else"}},
        ["spec.podLabels must not set keys under voicefleet.io/", "pick another prefix"],
    ),
    (
        "unknown-field",
        {"server": {"maxQueu": 10}},
        ['unknown field "spec.server.maxQueu"'],
    ),
    (
        "toleration-operator",
        {"tolerations": [{"key": "gpu", "operator": "Sometimes", "effect": "NoSchedule"}]},
        ['spec.tolerations[].operator must be "Exists" or "Equal"', "spec.tolerations[0]"],
    ),
    (
        "toleration-effect",
        {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedul"}]},
        ['spec.tolerations[].effect must be "NoSchedule", "PreferNoSchedule"'],
    ),
    (
        "node-selector-value",
        {"nodeSelector": {"pool": "a100 fast"}},
        ["spec.nodeSelector values must be label values", "spec.nodeSelector"],
    ),
    (
        "node-selector-value-edge",
        {"nodeSelector": {"pool": "gpu-"}},
        ["spec.nodeSelector values must be label values"],
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "fragments"), INVALID, ids=[case for case, _, _ in INVALID]
)
def test_invalid_voice_is_refused(
    crds: LocalCluster,
    reject_namespace: str,
    case: str,
    spec: dict[str, Any],
    fragments: list[str],
) -> None:
    body = voice(case, **spec)
    if body["spec"].get("model") is None:
        del body["spec"]["model"]
    result = crds.kubectl_run(
        "create", "-n", reject_namespace, "-f", "-", input=json.dumps(body), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    message = " ".join(result.stderr.split())
    assert "is invalid" in message or "unknown field" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    gone = crds.kubectl_run("get", "ttsvoice", case, "-n", reject_namespace, check=False)
    assert "NotFound" in gone.stderr


def test_name_must_suit_a_service(crds: LocalCluster, reject_namespace: str) -> None:
    """A dotted name is a valid object name but cannot name the voice's Service."""
    result = crds.kubectl_run(
        "create",
        "-n",
        reject_namespace,
        "-f",
        "-",
        input=json.dumps(voice("joe.medium")),
        check=False,
    )
    assert result.returncode != 0
    assert "metadata.name must be a DNS-1035 label" in " ".join(result.stderr.split())


def test_update_that_breaks_a_rule_is_refused(crds: LocalCluster, cluster_namespace: str) -> None:
    create(crds, cluster_namespace, voice("upd", replicas=2))
    patch = {"spec": {"autoscaling": {"maxReplicas": 1}}}
    result = crds.kubectl_run(
        "patch", "ttsvoice", "upd", "-n", cluster_namespace, "--type=merge",
        "-p", json.dumps(patch), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "spec.replicas must be <= spec.autoscaling.maxReplicas" in result.stderr
    assert get_voice(crds, cluster_namespace, "upd")["spec"]["autoscaling"]["maxReplicas"] == 3


# --- scale and status subresources ---------------------------------------------------------


def scale_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    path = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/ttsvoices/{name}/scale"
    scale: dict[str, Any] = json.loads(cluster.kubectl_run("get", "--raw", path).stdout)
    return scale


def test_kubectl_scale_within_bounds(crds: LocalCluster, cluster_namespace: str) -> None:
    create(crds, cluster_namespace, voice("sc", autoscaling={"minReplicas": 0, "maxReplicas": 3}))
    crds.kubectl_run("scale", "ttsvoice/sc", "-n", cluster_namespace, "--replicas=2")
    assert get_voice(crds, cluster_namespace, "sc")["spec"]["replicas"] == 2
    scale = scale_of(crds, cluster_namespace, "sc")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 2

    crds.kubectl_run("scale", "ttsv/sc", "-n", cluster_namespace, "--replicas=0")
    assert get_voice(crds, cluster_namespace, "sc")["spec"]["replicas"] == 0

    refused = crds.kubectl_run(
        "scale", "ttsvoice/sc", "-n", cluster_namespace, "--replicas=4", check=False
    )
    assert refused.returncode != 0
    assert "spec.replicas must be <= spec.autoscaling.maxReplicas" in refused.stderr
    assert get_voice(crds, cluster_namespace, "sc")["spec"]["replicas"] == 0


def hpa(name: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """An HPA on a TTSVoice. No metrics server runs, but an HPA still raises a target below
    its minReplicas, through the target's scale subresource: that is what this exercises."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": GROUP_VERSION, "kind": "TTSVoice", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }


def test_a_horizontal_pod_autoscaler_scales_a_voice_within_its_bounds(
    crds: LocalCluster, cluster_namespace: str
) -> None:
    """The real HPA controller scales TTSVoices, and the CEL bounds hold against it too."""
    create(crds, cluster_namespace, voice("fits"))
    create(crds, cluster_namespace, voice("capped"))
    crds.apply([hpa("fits", 2, 3), hpa("capped", 4, 5)], namespace=cluster_namespace)

    wait_for(
        lambda: get_voice(crds, cluster_namespace, "fits")["spec"]["replicas"] == 2,
        timeout=90,
        what="the HPA to scale voice fits to its minReplicas 2",
    )

    def refused() -> str | None:
        status = crds.get_json("hpa", "capped", "-n", cluster_namespace).get("status", {})
        for condition in status.get("conditions", []):
            if condition["type"] == "AbleToScale" and condition["status"] == "False":
                return str(condition["message"])
        return None

    message = wait_for(refused, timeout=90, what="the HPA on voice capped to be refused")
    assert "spec.replicas must be <= spec.autoscaling.maxReplicas" in message
    assert get_voice(crds, cluster_namespace, "capped")["spec"]["replicas"] == 1


def test_status_is_a_subresource_and_feeds_columns_and_scale(
    crds: LocalCluster, cluster_namespace: str
) -> None:
    create(crds, cluster_namespace, voice("st", replicas=2))
    status: dict[str, Any] = {
        "replicas": 2,
        "readyReplicas": 1,
        "desiredReplicas": 2,
        "selector": "voicefleet.io/voice=st",
        "queueDepth": 7,
        "queueWorkSeconds": 3.5,
        "endpoint": f"http://st.{cluster_namespace}.svc:80",
        "engine": "piper-onnx",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ReplicasNotReady",
                "message": "1/2 replicas ready",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    # Through the main resource, status is ignored (it belongs to the status subresource).
    crds.kubectl_run(
        "patch", "ttsvoice", "st", "-n", cluster_namespace, "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    assert "status" not in get_voice(crds, cluster_namespace, "st")
    crds.kubectl_run(
        "patch", "ttsvoice", "st", "-n", cluster_namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip
    assert get_voice(crds, cluster_namespace, "st")["status"]["queueDepth"] == 7

    rows = crds.kubectl_run("get", "ttsv", "st", "-n", cluster_namespace).stdout.splitlines()
    # QUEUE is the estimated engine work-seconds (the contract), not the request count.
    assert rows[1].split()[:7] == ["st", "piper-onnx", "en_US-joe-medium", "2", "1", "3.5", "False"]
    wide = crds.kubectl_run("get", "ttsv", "st", "-n", cluster_namespace, "-o", "wide").stdout
    assert f"http://st.{cluster_namespace}.svc:80" in wide

    scale = scale_of(crds, cluster_namespace, "st")
    assert scale["status"] == {"replicas": 2, "selector": "voicefleet.io/voice=st"}

    bad = {"status": {"conditions": [{**status["conditions"][0], "status": "Maybe"}]}}
    refused = crds.kubectl_run(
        "patch", "ttsvoice", "st", "-n", cluster_namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(bad), check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "Unsupported value" in refused.stderr


# --- kubectl UX ------------------------------------------------------------------------------


def test_get_prints_the_columns(crds: LocalCluster, cluster_namespace: str) -> None:
    create(crds, cluster_namespace, voice("cols"))
    header = crds.kubectl_run("get", "ttsv", "-n", cluster_namespace).stdout.splitlines()[0]
    columns = r"NAME\s+ENGINE\s+MODEL\s+DESIRED\s+READY\s+QUEUE\s+STATUS\s+REASON\s+AGE$"
    assert re.match(columns, header), header
    # The `voicefleet` category lists TTSVoices with everything else VoiceFleet defines.
    by_category = crds.kubectl_run("get", "voicefleet", "-n", cluster_namespace).stdout
    assert by_category.splitlines()[0] == header
    # ENGINE is what the operator resolved into status.engine (kept by the status schema,
    # not pruned); no operator runs in this module, so the test writes it as one would.
    crds.kubectl_run(
        "patch", "ttsv", "cols", "-n", cluster_namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"engine": "vits-torch"}}),
    )  # fmt: skip
    row = crds.kubectl_run("get", "ttsv", "cols", "-n", cluster_namespace).stdout.splitlines()[1]
    assert row.split()[:2] == ["cols", "vits-torch"]


def test_explain_teaches_the_api(crds: LocalCluster) -> None:
    spec = crds.kubectl_run("explain", "ttsvoice.spec").stdout
    assert "Desired state of the voice" in " ".join(spec.split())
    for field in ("autoscaling", "engine", "model", "replicas", "resources", "server"):
        assert re.search(rf"^\s+{field}\s", spec, re.MULTILINE), field
    minimum = " ".join(
        crds.kubectl_run("explain", "ttsv.spec.autoscaling.minReplicas").stdout.split()
    )
    assert "Fewest replicas (default 1). 0 allows scale-to-zero" in minimum
    model = " ".join(crds.kubectl_run("explain", "ttsvoice.spec.model").stdout.split())
    assert "Set exactly one of `bundled`" in model
