"""Builders: what a TTSVoice becomes (Deployment, Service, PDB), checked field by field,
with the server's own settings loader and Kubernetes' env rules (kube_env) as judges."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_env import resolve_env, resolve_port

import voicefleet_api
from voicefleet_api import podauth
from voicefleet_api.labels import selector_labels
from voicefleet_inference.settings import build_parser, load_settings
from voicefleet_operator.builders import (
    GPU_TOLERATION,
    BuildOptions,
    build_deployment,
    build_network_policy,
    build_pdb,
    build_service,
    pdb_unwanted,
    server_env,
    service_endpoint,
)
from voicefleet_operator.spec import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, EnvVar, Voice, parse_voice

OPTS = BuildOptions()
LABELS = {
    "app.kubernetes.io/instance": "joe",
    "app.kubernetes.io/managed-by": "voicefleet-operator",
    "app.kubernetes.io/name": "voicefleet-inference",
    "voicefleet.io/voice": "joe",
}
PVC_MODEL: dict[str, Any] = {
    "volume": {
        "persistentVolumeClaim": {"claimName": "piper-voices"},
        "path": "voices/de_DE-thorsten-medium.onnx",
    }
}


def voice(generation: int = 3, **spec: Any) -> Voice:
    spec.setdefault("model", {"bundled": "en_US-joe-medium"})
    return parse_voice(
        {
            "metadata": {
                "name": "joe",
                "namespace": "voices",
                "uid": "u",
                "generation": generation,
            },
            "spec": spec,
        }
    )


def pod_spec(v: Voice, options: BuildOptions = OPTS) -> dict[str, Any]:
    spec: dict[str, Any] = build_deployment(v, options)["spec"]["template"]["spec"]
    return spec


def container(v: Voice, options: BuildOptions = OPTS) -> dict[str, Any]:
    containers = pod_spec(v, options)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_list(v: Voice) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container(v)["env"]
    return env


def kubelet_env(v: Voice, pod_ip: str = "127.0.0.7") -> dict[str, str]:
    """The container's environment as a kubelet resolves it (Kubernetes rules)."""
    pod = {"metadata": {"name": "joe-abc", "namespace": "voices"}, "spec": pod_spec(v)}
    return resolve_env(container(v), pod, base_env={}, pod_ip=pod_ip, host_ip="127.0.0.1")


# -- Deployment: identity and selector -------------------------------------------------------


def test_deployment_identity_and_labels() -> None:
    d = build_deployment(voice(), OPTS)
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "Deployment")
    assert d["metadata"]["name"] == "joe"
    assert d["metadata"]["namespace"] == "voices"
    assert d["metadata"]["labels"] == LABELS
    assert "ownerReferences" not in d["metadata"]  # the caller adopts
    assert "status" not in d
    assert d["spec"]["selector"] == {"matchLabels": {"voicefleet.io/voice": "joe"}}
    assert d["spec"]["selector"]["matchLabels"] == selector_labels("joe")


def test_deployment_records_the_voice_generation_outside_the_pod_template() -> None:
    d = build_deployment(voice(generation=12), OPTS)
    assert d["metadata"]["annotations"] == {"voicefleet.io/voice-generation": "12"}
    template = d["spec"]["template"]
    assert "voicefleet.io/voice-generation" not in template["metadata"]["annotations"]
    assert template == build_deployment(voice(generation=13), OPTS)["spec"]["template"]


@pytest.mark.parametrize("replicas", [0, 1, 5, 1000])
def test_replicas_come_from_the_spec(replicas: int) -> None:
    assert build_deployment(voice(replicas=replicas), OPTS)["spec"]["replicas"] == replicas


def test_rolling_update_never_drops_capacity() -> None:
    strategy = build_deployment(voice(), OPTS)["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_pod_labels_are_merged_and_cannot_override_the_selector() -> None:
    v = voice(podLabels={"team": "speech", "tier": "gold"})
    labels = build_deployment(v, OPTS)["spec"]["template"]["metadata"]["labels"]
    assert labels == {**LABELS, "team": "speech", "tier": "gold"}
    # parse_voice refuses reserved keys; a VoiceSpec built in code still cannot win.
    sneaky = v.model_copy(
        update={
            "spec": v.spec.model_copy(
                update={
                    "pod_labels": {
                        "voicefleet.io/voice": "other",
                        "app.kubernetes.io/name": "x",
                        "ok": "1",
                    }
                }
            )
        }
    )
    labels = build_deployment(sneaky, OPTS)["spec"]["template"]["metadata"]["labels"]
    assert labels == {**LABELS, "ok": "1"}
    selector = build_deployment(sneaky, OPTS)["spec"]["selector"]["matchLabels"]
    assert all(labels[k] == val for k, val in selector.items())


def test_pod_annotations_carry_prometheus_scrape_and_user_ones() -> None:
    v = voice(podAnnotations={"example.com/owner": "speech", "prometheus.io/port": "9999"})
    annotations = build_deployment(v, OPTS)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "example.com/owner": "speech",
        "prometheus.io/path": "/metrics",
        "prometheus.io/port": "8080",  # the server's real port wins over a user's typo
        "prometheus.io/scrape": "true",
    }


# -- container -------------------------------------------------------------------------------


def test_container_basics() -> None:
    c = container(voice())
    assert c["name"] == "server"
    assert c["command"] == ["voicefleet-server"]
    assert c["ports"] == [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert "args" not in c


@pytest.mark.parametrize(
    ("spec_image", "default_image", "expected"),
    [
        (None, None, DEFAULT_IMAGE),
        (None, "registry.local/voicefleet-server:dev", "registry.local/voicefleet-server:dev"),
        (
            "mine/voicefleet-server:1",
            "registry.local/voicefleet-server:dev",
            "mine/voicefleet-server:1",
        ),
    ],
)
def test_image_precedence(spec_image: str | None, default_image: str | None, expected: str) -> None:
    v = voice(image=spec_image) if spec_image else voice()
    options = BuildOptions(default_image=default_image) if default_image else BuildOptions()
    assert container(v, options)["image"] == expected


def test_operator_default_image_flag_sets_the_image_of_a_voice_that_names_none() -> None:
    """``voicefleet-operator --default-image X``: the flag, parsed, reaches the builder."""
    from voicefleet_operator.settings import parse_args

    config = parse_args(["-A", "--default-image", "registry.local/vf/server:x"])
    options = BuildOptions(default_image=config.default_image)
    assert container(voice(), options)["image"] == "registry.local/vf/server:x"
    assert container(voice(image="mine/server:1"), options)["image"] == "mine/server:1"
    # Without the flag: the server image of the operator's own version.
    assert parse_args(["-A"]).default_image == DEFAULT_IMAGE
    assert DEFAULT_IMAGE.endswith(":" + voicefleet_api.__version__)


def test_a_gpu_voice_without_engine_or_image_runs_vits_torch_on_the_gpu_image() -> None:
    """The GPU default: vits-torch (batched torch passes) in the CUDA build of the image."""
    from voicefleet_operator.settings import parse_args

    config = parse_args(["-A", "--default-gpu-image", "registry.local/vf/server:x-cuda"])
    options = BuildOptions(default_image=config.default_image, default_gpu_image=config.gpu_image)
    gpu = voice(resources={"gpus": 1})
    c = container(gpu, options)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VOICEFLEET_ENGINE"] == "vits-torch"
    assert c["image"] == "registry.local/vf/server:x-cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # A CPU voice keeps piper-onnx and the CPU image; a written engine or image wins.
    cpu = container(voice(), options)
    assert {e["name"]: e.get("value") for e in cpu["env"]}["VOICEFLEET_ENGINE"] == "piper-onnx"
    assert cpu["image"] == config.default_image
    chosen = container(voice(resources={"gpus": 1}, engine="piper-onnx", image="mine:1"), options)
    assert {e["name"]: e.get("value") for e in chosen["env"]}["VOICEFLEET_ENGINE"] == "piper-onnx"
    assert chosen["image"] == "mine:1"
    assert parse_args(["-A"]).gpu_image == DEFAULT_GPU_IMAGE == DEFAULT_IMAGE + "-cuda"
    # Without the GPU flag, it follows --default-image (a private registry stays private).
    assert parse_args(["-A", "--default-image", "reg.local/s:2"]).gpu_image == "reg.local/s:2-cuda"


def test_pull_policy_and_command_options() -> None:
    c = container(voice(imagePullPolicy="Never"), BuildOptions(command=("python", "-m", "x")))
    assert c["imagePullPolicy"] == "Never"
    assert c["command"] == ["python", "-m", "x"]


def test_probes() -> None:
    c = container(voice())
    readiness, liveness, startup = c["readinessProbe"], c["livenessProbe"], c["startupProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert readiness["periodSeconds"] == 2
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert (liveness["periodSeconds"], liveness["failureThreshold"]) == (10, 3)
    assert startup["httpGet"]["path"] == "/healthz"
    # generous: liveness must not kill a container still importing onnxruntime
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for probe in (readiness, liveness, startup):
        assert probe["timeoutSeconds"] <= probe["periodSeconds"]
        assert probe["successThreshold"] == 1
        # the named port resolves to the server's port, as a kubelet resolves it
        assert resolve_port(probe["httpGet"]["port"], c) == 8080


def test_startup_timeout_option_scales_the_startup_probe() -> None:
    startup = container(voice(), BuildOptions(startup_timeout_seconds=61))["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 61
    assert startup["periodSeconds"] * (startup["failureThreshold"] - 1) < 61


def test_pre_stop_sleeps_before_sigterm() -> None:
    assert container(voice())["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert container(voice(), BuildOptions(pre_stop_sleep_seconds=8))["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 8}}
    }


@pytest.mark.parametrize("drain", [1, 30, 45, 3600])
def test_termination_grace_covers_prestop_drain_and_send(drain: int) -> None:
    pod = pod_spec(voice(server={"drainGraceSeconds": drain}))
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == drain + 15
    # preStop sleep + drain + the server's 5 s to send the last responses fit inside
    assert grace > 5 + drain + 5


def test_security_context_exactly() -> None:
    pod = pod_spec(voice())
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(voice())["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod


def test_tmp_is_a_writable_empty_dir() -> None:
    pod = pod_spec(voice())
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert container(voice())["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_volume_model_is_mounted_read_only_and_named_to_the_server() -> None:
    v = voice(model=PVC_MODEL)
    pod = pod_spec(v)
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "piper-voices", "readOnly": True},
    } in pod["volumes"]
    mounts = container(v)["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in mounts
    assert server_env(v)["VOICEFLEET_MODEL"] == "/models/voices/de_DE-thorsten-medium.onnx"
    # every mount refers to a volume that exists
    assert {m["name"] for m in mounts} <= {vol["name"] for vol in pod["volumes"]}
    # no hostPath anywhere: the pod cannot read arbitrary host files
    assert "hostPath" not in json.dumps(pod)


def test_writable_claim_is_still_mounted_read_only() -> None:
    model = copy.deepcopy(PVC_MODEL)
    model["volume"]["persistentVolumeClaim"]["readOnly"] = False
    v = voice(model=model)
    claim = next(vol for vol in pod_spec(v)["volumes"] if vol["name"] == "model")
    assert claim["persistentVolumeClaim"]["readOnly"] is False
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container(v)[
        "volumeMounts"
    ]


def test_bundled_model_has_no_model_volume() -> None:
    pod = pod_spec(voice())
    assert [vol["name"] for vol in pod["volumes"]] == ["tmp"]
    assert server_env(voice())["VOICEFLEET_MODEL"] == "en_US-joe-medium"


# -- env ----------------------------------------------------------------------------------


def test_pod_ip_is_defined_before_the_host_refers_to_it() -> None:
    env = env_list(voice())
    assert env[0] == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    names = [e["name"] for e in env]
    assert names.index("VOICEFLEET_HOST") > names.index("POD_IP")
    assert {"name": "VOICEFLEET_HOST", "value": "$(POD_IP)"} in env
    assert kubelet_env(voice(), pod_ip="127.0.0.9")["VOICEFLEET_HOST"] == "127.0.0.9"


def test_env_names_are_unique_and_operator_ones_sorted() -> None:
    v = voice(
        env=[{"name": "Z", "value": "1"}, {"name": "A", "value": "2"}],
        server={"maxBatchSize": 4, "threadsPerWorker": 1},
    )
    env = env_list(v)
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    operator_names = [n for n in names if n.startswith("VOICEFLEET_")]
    assert operator_names == sorted(operator_names)
    # user variables last, in the user's order (a value may refer to an earlier one)
    assert names[-2:] == ["Z", "A"]


def test_user_env_may_refer_to_earlier_variables() -> None:
    v = voice(env=[{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(VOICEFLEET_PORT)"}])
    assert kubelet_env(v)["B"] == "x-8080"


def test_user_env_cannot_shadow_operator_env_even_when_built_in_code() -> None:
    v = voice()
    sneaky = v.model_copy(
        update={
            "spec": v.spec.model_copy(
                update={"env": (EnvVar("POD_IP", "1.2.3.4"), EnvVar("OK", "1"))}
            )
        }
    )
    env = env_list(sneaky)
    assert [e for e in env if e["name"] == "POD_IP"] == [env[0]]
    assert env[-1] == {"name": "OK", "value": "1"}


def test_every_server_variable_is_known_to_the_server() -> None:
    help_text = build_parser(cores=4).format_help()
    for name in server_env(voice(server={"maxBatchSize": 2, "threadsPerWorker": 1})):
        assert f"${name}" in help_text, name


def test_the_server_loads_exactly_the_tuning_asked_for() -> None:
    """Parse the pod's environment with the server's own loader: every knob must land."""
    v = voice(
        resources={"gpus": 0},
        server={
            "maxQueue": 17,
            "maxBatchSize": 3,
            "batchWindowMs": 12,
            "workers": 2,
            "threadsPerWorker": 3,
            "requestTimeoutSeconds": 77,
            "drainGraceSeconds": 41,
            "maxInputChars": 1234,
        },
    )
    s = load_settings([], kubelet_env(v, pod_ip="127.0.0.5"), cores=64)
    assert (s.host, s.port, s.engine, s.model, s.device) == (
        "127.0.0.5",
        8080,
        "piper-onnx",
        "en_US-joe-medium",
        "cpu",
    )
    assert (s.max_queue, s.max_batch_size, s.batch_window_ms) == (17, 3, 12.0)
    assert (s.workers, s.threads_per_worker) == (2, 3)
    assert (s.request_timeout_s, s.drain_grace_s, s.max_input_chars) == (77.0, 41.0, 1234)


def test_unset_optional_knobs_leave_the_server_defaults() -> None:
    env = kubelet_env(voice())
    assert "VOICEFLEET_MAX_BATCH_SIZE" not in env
    assert "VOICEFLEET_THREADS_PER_WORKER" not in env
    s = load_settings([], env, cores=6)
    assert (s.max_batch_size, s.threads_per_worker) == (1, 6)


def test_defaults_of_a_voice_match_the_servers_defaults() -> None:
    """A default TTSVoice runs the server as ``voicefleet-server`` alone would.

    Bar the two pod-specific values: the host (the pod IP) and the termination-message
    file the kubelet reads.
    """
    from_pod = load_settings([], kubelet_env(voice()), cores=4)
    bare = load_settings([], {}, cores=4)
    assert from_pod.termination_message_path == "/dev/termination-log"
    pod_only = {"host": bare.host, "termination_message_path": ""}
    assert from_pod.model_copy(update=pod_only) == bare


def test_gpu_voice_runs_on_cuda_with_the_gpu_batch_default() -> None:
    v = voice(resources={"gpus": 1})
    s = load_settings([], kubelet_env(v), cores=4)
    assert (s.device, s.max_batch_size, s.workers) == ("cuda", 8, 1)


def test_a_multi_gpu_voice_gets_one_engine_worker_per_gpu() -> None:
    # The server reads the operator's env as it would in the pod: every GPU gets a worker.
    s = load_settings([], kubelet_env(voice(resources={"gpus": 3})), cores=4)
    assert s.devices == ("cuda:0", "cuda:1", "cuda:2")
    assert s.workers == 3
    # More workers than GPUs are kept (they take the GPUs in turn).
    more = load_settings([], kubelet_env(voice(resources={"gpus": 2}, server={"workers": 4})))
    assert (more.devices, more.workers) == (("cuda:0", "cuda:1"), 4)


def test_env_values_are_all_strings() -> None:
    for item in env_list(voice(server={"maxBatchSize": 2})):
        assert set(item) in ({"name", "value"}, {"name", "valueFrom"})
        if "value" in item:
            assert isinstance(item["value"], str)


# -- resources and scheduling ----------------------------------------------------------------


def test_cpu_resources() -> None:
    r = container(voice(resources={"cpu": "500m", "memory": "768Mi"}))["resources"]
    assert r == {"requests": {"cpu": "500m", "memory": "768Mi"}, "limits": {"memory": "768Mi"}}
    assert "tolerations" not in pod_spec(voice())
    assert server_env(voice())["VOICEFLEET_DEVICE"] == "cpu"


def test_gpu_resources_and_toleration() -> None:
    v = voice(resources={"gpus": 2, "cpu": 4, "memory": "4Gi"})
    r = container(v)["resources"]
    assert r == {
        "requests": {"cpu": "4", "memory": "4Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "2"},
    }
    assert pod_spec(v)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert server_env(v)["VOICEFLEET_DEVICE"] == "cuda:0,cuda:1"
    assert server_env(voice(resources={"gpus": 1}))["VOICEFLEET_DEVICE"] == "cuda"


def test_gpu_toleration_merges_with_user_tolerations_without_duplicates() -> None:
    user = {"key": "dedicated", "operator": "Equal", "value": "tts", "effect": "NoSchedule"}
    v = voice(resources={"gpus": 1}, tolerations=[user])
    assert pod_spec(v)["tolerations"] == [user, GPU_TOLERATION]
    again = voice(resources={"gpus": 1}, tolerations=[user, dict(GPU_TOLERATION)])
    assert pod_spec(again)["tolerations"] == [user, GPU_TOLERATION]
    cpu_only = voice(tolerations=[user])
    assert pod_spec(cpu_only)["tolerations"] == [user]


def test_scheduling_fields_pass_through_and_are_absent_when_unset() -> None:
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}
    }
    v = voice(nodeSelector={"pool": "tts", "b": "1"}, affinity=affinity, priorityClassName="tts")
    pod = pod_spec(v)
    assert pod["nodeSelector"] == {"b": "1", "pool": "tts"}
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "tts"
    bare = pod_spec(voice())
    for key in ("nodeSelector", "affinity", "priorityClassName", "tolerations"):
        assert key not in bare


def test_built_objects_do_not_alias_the_voice() -> None:
    v = voice(affinity={"a": {"b": 1}}, tolerations=[{"key": "k"}])
    pod = pod_spec(v)
    pod["affinity"]["a"]["b"] = 2
    pod["tolerations"][0]["key"] = "changed"
    assert v.spec.affinity == {"a": {"b": 1}}
    assert v.spec.tolerations == ({"key": "k"},)


# -- determinism -----------------------------------------------------------------------------


def test_same_voice_gives_byte_identical_objects() -> None:
    v = voice(model=PVC_MODEL, replicas=2, resources={"gpus": 1}, podLabels={"b": "1", "a": "2"})
    assert build_pdb(v) is not None
    assert json.dumps(build_deployment(v, OPTS)) == json.dumps(build_deployment(v, OPTS))
    assert json.dumps(build_service(v)) == json.dumps(build_service(v))
    assert json.dumps(build_pdb(v)) == json.dumps(build_pdb(v))


def test_insertion_order_of_user_maps_does_not_change_the_output() -> None:
    a = voice(
        podLabels={"x": "1", "y": "2"},
        podAnnotations={"p": "1", "q": "2"},
        nodeSelector={"m": "1", "n": "2"},
    )
    b = voice(
        podLabels={"y": "2", "x": "1"},
        podAnnotations={"q": "2", "p": "1"},
        nodeSelector={"n": "2", "m": "1"},
    )
    assert json.dumps(build_deployment(a, OPTS)) == json.dumps(build_deployment(b, OPTS))


def test_scaling_fields_never_touch_the_pod_template() -> None:
    """Replicas and autoscaling bounds change often; they must not roll pods."""
    base = build_deployment(voice(), OPTS)
    scaled = build_deployment(
        voice(
            replicas=3,
            autoscaling={"minReplicas": 0, "maxReplicas": 9, "scaleDownDelaySeconds": 1},
        ),
        OPTS,
    )
    assert json.dumps(base["spec"]["template"]) == json.dumps(scaled["spec"]["template"])
    assert scaled["spec"]["replicas"] == 3


def test_tuning_changes_do_touch_the_pod_template() -> None:
    base = build_deployment(voice(), OPTS)["spec"]["template"]
    tuned = build_deployment(voice(server={"maxQueue": 65}), OPTS)["spec"]["template"]
    assert base != tuned


def test_nothing_volatile_in_the_output() -> None:
    text = json.dumps(build_deployment(voice(), OPTS))
    assert re.search(r"\d{4}-\d\d-\d\dT", text) is None  # no timestamps
    for word in ("Timestamp", "creation", "resourceVersion", "uid", "managedFields"):
        assert word not in text, word


# -- Service, PDB, endpoint ------------------------------------------------------------------


def test_service() -> None:
    s = build_service(voice())
    assert (s["apiVersion"], s["kind"]) == ("v1", "Service")
    assert s["metadata"] == {"labels": LABELS, "name": "joe", "namespace": "voices"}
    assert s["spec"] == {
        "type": "ClusterIP",
        "selector": {"voicefleet.io/voice": "joe"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    }
    assert "clusterIP" not in s["spec"]


def test_service_selects_the_deployments_pods() -> None:
    v = voice(replicas=2, podLabels={"team": "x"})
    pod_labels = build_deployment(v, OPTS)["spec"]["template"]["metadata"]["labels"]
    pdb = build_pdb(v)
    assert pdb is not None
    for selector in (build_service(v)["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert all(pod_labels.get(k) == val for k, val in selector.items())


@pytest.mark.parametrize(
    ("replicas", "max_replicas", "wanted"),
    [(0, 1, False), (1, 1, False), (0, 3, False), (1, 3, False), (2, 2, True), (2, 1000, True)],
)
def test_pdb_only_while_the_voice_asks_for_more_than_one_pod(
    replicas: int, max_replicas: int, wanted: bool
) -> None:
    v = voice(replicas=replicas, autoscaling={"minReplicas": 0, "maxReplicas": max_replicas})
    pdb = build_pdb(v)
    assert (pdb is not None) is wanted
    if pdb is not None:
        assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
        assert pdb["metadata"] == {"labels": LABELS, "name": "joe", "namespace": "voices"}
        assert pdb["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"voicefleet.io/voice": "joe"}},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }


@pytest.mark.parametrize(("max_replicas", "unwanted"), [(1, True), (2, False), (1000, False)])
def test_a_budget_is_deleted_only_once_two_pods_can_never_run(
    max_replicas: int, unwanted: bool
) -> None:
    """Below two pods a budget is kept, not deleted (pdb_unwanted is False), so the
    autoscaler crossing 1 <-> 2 neither creates nor deletes it each time."""
    v = voice(replicas=0, autoscaling={"minReplicas": 0, "maxReplicas": max_replicas})
    assert pdb_unwanted(v) is unwanted
    assert build_pdb(v) is None


def test_a_plain_voice_gets_no_budget_until_it_runs_two_pods() -> None:
    """maxReplicas defaults to 3, replicas to 1: the budget comes with the second pod."""
    assert build_pdb(voice()) is None
    assert not pdb_unwanted(voice())
    assert build_pdb(voice(replicas=2)) is not None


ROUTER_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "voicefleet-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "voicefleet-router"}},
}


def test_no_network_policy_unless_the_operator_is_given_peers() -> None:
    assert build_network_policy(voice(), OPTS) is None


def test_network_policy_admits_only_the_given_peers_to_the_server_port() -> None:
    options = BuildOptions(network_policy_from=(ROUTER_PEER, {"ipBlock": {"cidr": "10.0.0.0/8"}}))
    v = voice(podLabels={"team": "x"})
    policy = build_network_policy(v, options)
    assert policy is not None
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert policy["metadata"] == {"labels": LABELS, "name": "joe", "namespace": "voices"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"voicefleet.io/voice": "joe"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [ROUTER_PEER, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }
        ],
    }
    # It selects exactly the Deployment's pods, on the port they serve on.
    template = build_deployment(v, options)["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert all(
        labels.get(k) == val for k, val in policy["spec"]["podSelector"]["matchLabels"].items()
    )
    assert template["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080
    # A copy: mutating the result never reaches the options shared by every voice.
    policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["x"] = "y"
    assert "x" not in ROUTER_PEER["podSelector"]["matchLabels"]
    assert build_network_policy(v, options) == build_network_policy(v, options)


def test_pod_token_only_with_a_key_and_it_is_the_voices_own() -> None:
    def env_of(options: BuildOptions) -> dict[str, str]:
        spec = build_deployment(voice(), options)["spec"]["template"]["spec"]
        pod = {"metadata": {"name": "joe-abc", "namespace": "voices"}, "spec": spec}
        server = spec["containers"][0]
        return resolve_env(server, pod, base_env={}, pod_ip="127.0.0.7", host_ip="127.0.0.1")

    assert "VOICEFLEET_AUTH_TOKEN" not in env_of(OPTS)
    keyed = BuildOptions(pod_token_key="k3y")
    token = env_of(keyed)["VOICEFLEET_AUTH_TOKEN"]
    assert token == podauth.pod_token("k3y", "voices", "joe")
    assert "k3y" not in json.dumps(build_deployment(voice(), keyed))  # the key never leaves
    assert "k3y" not in repr(keyed)
    # the server reads it as its auth token
    settings = load_settings([], environ=env_of(keyed))
    assert settings.auth_token is not None
    assert settings.auth_token.get_secret_value() == token


def test_service_endpoint() -> None:
    assert service_endpoint(voice()) == "http://joe.voices.svc:80"


# -- the shipped samples ---------------------------------------------------------------------

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "crds" / "samples").glob("*.yaml"))


def sample_voice(name: str) -> Voice:
    path = next(p for p in SAMPLES if p.name == name)
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["namespace"] = "voices"
    return parse_voice(doc)


def test_bundled_sample_runs_one_pod_without_a_budget() -> None:
    v = sample_voice("en-us-joe.yaml")
    assert build_deployment(v, OPTS)["spec"]["replicas"] == 1
    assert build_pdb(v) is None  # its maxReplicas is 1


def test_gpu_sample_gets_one_gpu_toleration_and_cuda() -> None:
    v = sample_voice("gpu-voice.yaml")
    pod = pod_spec(v)
    assert pod["tolerations"].count(GPU_TOLERATION) == 1
    assert container(v)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    s = load_settings([], kubelet_env(v), cores=4)
    assert (s.device, s.max_batch_size, s.batch_window_ms) == ("cuda", 16, 10.0)


def test_pvc_sample_mounts_its_claim_and_fits_its_cores() -> None:
    v = sample_voice("pvc-voice.yaml")
    claim = next(vol for vol in pod_spec(v)["volumes"] if vol["name"] == "model")
    assert claim["persistentVolumeClaim"]["claimName"] == "piper-voices"
    # threadsPerWorker x workers must fit the CPU request the sample asks for
    s = load_settings([], kubelet_env(v), cores=int(v.spec.resources.cpu))
    assert s.model == f"/models/{v.spec.model.volume.path}"  # type: ignore[union-attr]
