"""Pure builders: a :class:`~voicefleet_operator.spec.Voice` in, Kubernetes objects out.

What each object holds, and why, is explained in ``docs/operator-objects.md``. The
results are plain dicts ready for server-side apply: ``apiVersion``, ``kind``,
``metadata.name``/``namespace``/``labels`` and the ``spec`` fields the operator owns,
never ``ownerReferences`` (the caller adopts them) and never ``status``.

Determinism is a requirement, not a nicety: the operator re-applies on every resume and
on every change, and a pod template that differed byte-for-byte between two runs for the
same input (a timestamp, a set iterated in hash order, a reordered env list) would roll
every voice's pods for nothing. So every mapping is built in sorted key order, lists
whose order carries no meaning are sorted, and nothing reads the clock or the machine.
Fields the operator does not want are omitted rather than set empty, so that server-side
apply releases them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from voicefleet_api import engines, podauth, termination
from voicefleet_api import env as server_env_names
from voicefleet_api.labels import (
    PROMETHEUS_ANNOTATIONS,
    VOICE_GENERATION_ANNOTATION,
    is_reserved_label,
    object_labels,
    selector_labels,
)
from voicefleet_api.labels import SERVER_PORT as _CONTRACT_PORT
from voicefleet_operator.spec import (
    DEFAULT_GPU_IMAGE,
    DEFAULT_IMAGE,
    ModelDownload,
    Voice,
    VoiceSpec,
)

__all__ = [
    "CONTAINER_NAME",
    "FETCH_CONTAINER_NAME",
    "GPU_RESOURCE",
    "GPU_TOLERATION",
    "MODEL_MOUNT",
    "POD_GID",
    "POD_UID",
    "SERVER_PORT",
    "SERVICE_PORT",
    "TERMINATION_MARGIN_SECONDS",
    "BuildOptions",
    "build_deployment",
    "build_network_policy",
    "build_pdb",
    "build_service",
    "pdb_unwanted",
    "server_env",
    "service_endpoint",
]

CONTAINER_NAME: Final = "server"
SERVER_PORT: Final = _CONTRACT_PORT
"""The inference server's port (DESIGN.md contract); named ``http`` in the pod."""
SERVICE_PORT: Final = 80
MODEL_MOUNT: Final = "/models"
"""Where a volume model's PVC is mounted, read-only; ``spec.model.volume.path`` is below it.
A url model's files are downloaded there too (``<key>/<name>.onnx``, see
:attr:`~voicefleet_operator.spec.ModelDownload.cache_key`)."""
FETCH_CONTAINER_NAME: Final = "fetch-model"
"""The init container that downloads a url model (``voicefleet-fetch``, the server image)."""
FETCH_RESOURCES: Final[dict[str, Any]] = {
    "limits": {"memory": "256Mi"},
    "requests": {"cpu": "100m", "memory": "256Mi"},
}
"""The fetcher streams through a small buffer: its memory does not grow with the model."""
POD_UID: Final = 65532
POD_GID: Final = 65532
"""The conventional "nonroot" id of distroless images: never 0, never a real login."""
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_TOLERATION: Final[dict[str, str]] = {
    "effect": "NoSchedule",
    "key": GPU_RESOURCE,
    "operator": "Exists",
}
"""GPU node pools are commonly tainted ``nvidia.com/gpu:NoSchedule``; a GPU voice must
tolerate that taint to land anywhere at all."""
TERMINATION_MARGIN_SECONDS: Final = 15
"""terminationGracePeriodSeconds = drainGraceSeconds + this. The pod's shutdown spends
the preStop sleep (5 s), then the server's drain (at most drainGraceSeconds), then up to
5 s for uvicorn to send the last responses: 15 s covers both with 5 s to spare, so SIGKILL
never cuts a drain that stayed within its own grace."""


@dataclass(frozen=True)
class BuildOptions:
    """Operator-wide settings that shape every Deployment (from the operator's CLI).

    ``default_image`` applies only to a TTSVoice that carries no ``spec.image`` (the CRD
    has no default for it); the operator's ``--default-image`` sets it, and
    ``--default-gpu-image`` sets ``default_gpu_image``, used instead for a voice whose
    pods ask for GPUs (the CPU image carries neither torch nor CUDA).
    """

    default_image: str = DEFAULT_IMAGE
    default_gpu_image: str = DEFAULT_GPU_IMAGE
    command: tuple[str, ...] = ("voicefleet-server",)
    fetch_command: tuple[str, ...] = ("voicefleet-fetch",)
    model_cache_dir: str | None = None
    """A node directory (hostPath) where url models are kept by digest, so later replicas on
    the node skip the download; ``None``: an emptyDir per pod. Opt-in, because a hostPath
    is node state shared by every voice on it (the directory must be writable by uid
    65532); the server mounts it read-only."""
    pre_stop_sleep_seconds: int = 5
    """Time for endpoint controllers and the router to drop a terminating pod before
    the server gets SIGTERM and starts refusing new work."""
    startup_timeout_seconds: int = 300
    """How long a new container may take to answer ``/healthz`` before liveness applies
    (onnxruntime import and a cold model cache on a busy node can take minutes)."""
    readiness_period_seconds: int = 2
    liveness_period_seconds: int = 10
    pod_token_key: str | None = field(default=None, repr=False)
    """The key each voice's pod token is derived from (:mod:`voicefleet_api.podauth`);
    ``None``: the pods take requests without a token (the chart's ``voiceAuth``)."""
    network_policy_from: tuple[Mapping[str, Any], ...] | None = None
    """The peers (NetworkPolicyPeer objects) a voice's pods accept connections from, as
    the chart computes them (its routers, its operator, ``networkPolicy.voiceIngressFrom``);
    ``None``: the operator writes no NetworkPolicy."""


def service_endpoint(voice: Voice) -> str:
    """The in-cluster URL of the voice's Service (``.status.endpoint``)."""
    return f"http://{voice.name}.{voice.namespace}.svc:{SERVICE_PORT}"


def _metadata(voice: Voice, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    meta["labels"] = dict(sorted(object_labels(voice.name).items()))
    meta["name"] = voice.name
    meta["namespace"] = voice.namespace
    return meta


def _download_path(download: ModelDownload, namespace: str) -> str:
    return f"{MODEL_MOUNT}/{download.cache_dir(namespace)}/{download.model_name}.onnx"


def _model_argument(voice: Voice) -> str:
    spec = voice.spec
    if spec.model.bundled is not None:
        return spec.model.bundled
    download = spec.model.download
    if download is not None:
        return _download_path(download, voice.namespace)
    assert spec.model.volume is not None  # ModelSource guarantees exactly one
    return f"{MODEL_MOUNT}/{spec.model.volume.path}"


def server_env(voice: Voice) -> dict[str, str]:
    """The ``VOICEFLEET_*`` variables the server reads (``voicefleet_inference.settings``).

    Optional knobs left unset in the TTSVoice are left out, so the server picks its own
    machine-dependent default (batch size by device, threads by cores). ``VOICEFLEET_HOST``
    refers to ``$(POD_IP)``, defined before it in the container.
    """
    spec = voice.spec
    tuning = spec.server
    env = {
        server_env_names.BATCH_WINDOW_MS: str(tuning.batch_window_ms),
        server_env_names.DEVICE: engines.pod_device(spec.resources.gpus),
        server_env_names.DRAIN_GRACE_S: str(tuning.drain_grace_seconds),
        server_env_names.ENGINE: spec.runs_engine,
        server_env_names.HOST: f"$({server_env_names.POD_IP})",
        server_env_names.MAX_INPUT_CHARS: str(tuning.max_input_chars),
        server_env_names.MAX_QUEUE: str(tuning.max_queue),
        server_env_names.MODEL: _model_argument(voice),
        server_env_names.PORT: str(SERVER_PORT),
        server_env_names.REQUEST_TIMEOUT_S: str(tuning.request_timeout_seconds),
        server_env_names.DEFAULT_PRIORITY: tuning.default_priority,
        server_env_names.PRIORITY_WAIT_TARGET_S: str(tuning.priority_wait_target_ms / 1000),
        server_env_names.PRIORITY_RESERVED_WORKERS: str(tuning.priority_reserved_workers),
        server_env_names.TERMINATION_MESSAGE_PATH: termination.PATH,
        # at least one engine worker per GPU, or a GPU of the pod would sit idle
        server_env_names.WORKERS: str(max(tuning.workers, spec.resources.gpus)),
    }
    if tuning.max_batch_size is not None:
        env[server_env_names.MAX_BATCH_SIZE] = str(tuning.max_batch_size)
    if tuning.threads_per_worker is not None:
        env[server_env_names.THREADS_PER_WORKER] = str(tuning.threads_per_worker)
    return dict(sorted(env.items()))


def _container_env(voice: Voice, options: BuildOptions) -> list[dict[str, Any]]:
    spec = voice.spec
    env: list[dict[str, Any]] = [
        {"name": server_env_names.POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
    values = server_env(voice)
    if options.pod_token_key is not None:
        # The voice's own token, not the key: readable in the Deployment, it opens this
        # voice only (voicefleet_api.podauth says why).
        token = podauth.pod_token(options.pod_token_key, voice.namespace, voice.name)
        values = dict(sorted({**values, server_env_names.AUTH_TOKEN: token}.items()))
    env.extend({"name": k, "value": v} for k, v in values.items())
    taken = {item["name"] for item in env}
    # User variables come last and keep their order: a value may refer to an earlier one.
    env.extend(
        {"name": item.name, "value": item.value} for item in spec.env if item.name not in taken
    )
    return env


def _http_probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "failureThreshold": failures,
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "successThreshold": 1,
        "timeoutSeconds": timeout,
    }


def _resources(spec: VoiceSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    if spec.resources.gpus > 0:
        limits[GPU_RESOURCE] = str(spec.resources.gpus)
    # No CPU limit: CFS throttling of a latency-bound server hurts more than it protects.
    return {
        "limits": dict(sorted(limits.items())),
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
    }


def _tolerations(spec: VoiceSpec) -> list[dict[str, Any]]:
    out = [copy.deepcopy(t) for t in spec.tolerations]
    if spec.resources.gpus > 0 and GPU_TOLERATION not in out:
        out.append(dict(GPU_TOLERATION))
    return out


def _pod_labels(voice: Voice) -> dict[str, str]:
    labels = {k: v for k, v in voice.spec.pod_labels.items() if not is_reserved_label(k)}
    labels.update(object_labels(voice.name))  # the operator's labels always win
    return dict(sorted(labels.items()))


def _pod_annotations(spec: VoiceSpec) -> dict[str, str]:
    annotations = dict(spec.pod_annotations)
    annotations.update(PROMETHEUS_ANNOTATIONS)  # the autoscaler depends on these scrapes
    return dict(sorted(annotations.items()))


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": key, "name": secret}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _fetch_env(download: ModelDownload, namespace: str) -> list[dict[str, Any]]:
    """The fetcher's variables; credentials and the CA by reference, never by value.

    A missing Secret, ConfigMap or required key stops the init container with
    ``CreateContainerConfigError`` naming it, which the voice's ``Degraded`` repeats.
    """
    env: list[dict[str, Any]] = [
        {"name": server_env_names.FETCH_CONFIG_SHA256, "value": download.config_sha256},
        {"name": server_env_names.FETCH_CONFIG_URL, "value": download.config_url},
        {"name": server_env_names.FETCH_DEST, "value": _download_path(download, namespace)},
    ]
    if download.s3 is not None:
        env.append({"name": server_env_names.FETCH_S3_REGION, "value": download.s3.region})
        if download.s3.endpoint is not None:
            env.append({"name": server_env_names.FETCH_S3_ENDPOINT, "value": download.s3.endpoint})
    env += [
        {"name": server_env_names.FETCH_SHA256, "value": download.sha256},
        {"name": server_env_names.FETCH_URL, "value": download.url},
        {
            "name": server_env_names.TERMINATION_MESSAGE_PATH,
            "value": termination.PATH,
        },
    ]
    if download.ca_config_map is not None:
        env.append(
            {
                "name": server_env_names.FETCH_CA_PEM,
                "valueFrom": {"configMapKeyRef": {"key": "ca.crt", "name": download.ca_config_map}},
            }
        )
    secret = download.credentials_secret
    if secret is not None:
        if download.s3 is not None:
            env += [
                _secret_env(
                    server_env_names.FETCH_ACCESS_KEY_ID, secret, "accessKeyId", optional=False
                ),
                _secret_env(
                    server_env_names.FETCH_SECRET_ACCESS_KEY,
                    secret,
                    "secretAccessKey",
                    optional=False,
                ),
                _secret_env(
                    server_env_names.FETCH_SESSION_TOKEN, secret, "sessionToken", optional=True
                ),
            ]
        else:
            env.append(_secret_env(server_env_names.FETCH_TOKEN, secret, "token", optional=False))
    return env


def _image(spec: VoiceSpec, options: BuildOptions) -> str:
    return spec.image or (
        options.default_gpu_image if spec.resources.gpus > 0 else options.default_image
    )


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def _fetch_container(
    voice: Voice, download: ModelDownload, options: BuildOptions
) -> dict[str, Any]:
    """The init container: download, check both digests, or leave a one-line reason."""
    spec = voice.spec
    return {
        "command": list(options.fetch_command),
        "env": _fetch_env(download, voice.namespace),
        "image": _image(spec, options),
        "imagePullPolicy": spec.image_pull_policy,
        "name": FETCH_CONTAINER_NAME,
        "resources": copy.deepcopy(FETCH_RESOURCES),
        "securityContext": _security_context(),
        "terminationMessagePath": termination.PATH,
        "terminationMessagePolicy": termination.POLICY,
        "volumeMounts": [
            {"mountPath": MODEL_MOUNT, "name": "model"},
            {"mountPath": "/tmp", "name": "tmp"},
        ],
    }


def _container(voice: Voice, options: BuildOptions) -> dict[str, Any]:
    spec = voice.spec
    mounts: list[dict[str, Any]] = []
    if spec.model.volume is not None or spec.model.download is not None:
        mounts.append({"mountPath": MODEL_MOUNT, "name": "model", "readOnly": True})
    mounts.append({"mountPath": "/tmp", "name": "tmp"})
    startup_period = 2
    return {
        "command": list(options.command),
        "env": _container_env(voice, options),
        "image": _image(spec, options),
        "imagePullPolicy": spec.image_pull_policy,
        "lifecycle": {"preStop": {"sleep": {"seconds": options.pre_stop_sleep_seconds}}},
        "livenessProbe": _http_probe("/healthz", options.liveness_period_seconds, 3, 5),
        "name": CONTAINER_NAME,
        "ports": [{"containerPort": SERVER_PORT, "name": "http", "protocol": "TCP"}],
        "readinessProbe": _http_probe("/readyz", options.readiness_period_seconds, 2, 2),
        "resources": _resources(spec),
        "securityContext": _security_context(),
        "startupProbe": _http_probe(
            "/healthz",
            startup_period,
            max(1, math.ceil(options.startup_timeout_seconds / startup_period)),
            2,
        ),
        # The server's one-line reason for a failed start lands in the pod's status
        # (and from there in the TTSVoice's Degraded condition); a crash before it can
        # write still leaves the log tail there.
        "terminationMessagePath": termination.PATH,
        "terminationMessagePolicy": termination.POLICY,
        "volumeMounts": mounts,
    }


def _volumes(spec: VoiceSpec, options: BuildOptions) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = []
    if spec.model.download is not None:
        if options.model_cache_dir is not None:
            volumes.append(
                {
                    "hostPath": {"path": options.model_cache_dir, "type": "DirectoryOrCreate"},
                    "name": "model",
                }
            )
        else:
            volumes.append({"emptyDir": {}, "name": "model"})
    if spec.model.volume is not None:
        claim = spec.model.volume.persistent_volume_claim
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {
                    "claimName": claim.claim_name,
                    "readOnly": claim.read_only,
                },
            }
        )
    volumes.append({"emptyDir": {}, "name": "tmp"})
    return volumes


def _pod_spec(voice: Voice, options: BuildOptions) -> dict[str, Any]:
    spec = voice.spec
    pod: dict[str, Any] = {}
    if spec.affinity is not None:
        pod["affinity"] = copy.deepcopy(spec.affinity)  # the result is the caller's to mutate
    # The server never calls the API server; no token in the pod is one less secret to leak.
    pod["automountServiceAccountToken"] = False
    pod["containers"] = [_container(voice, options)]
    # Service links would inject <SERVICE>_PORT variables: a Service named "voicefleet"
    # in the namespace would set VOICEFLEET_PORT=tcp://... behind the server's back.
    pod["enableServiceLinks"] = False
    download = spec.model.download
    if download is not None:
        pod["initContainers"] = [_fetch_container(voice, download, options)]
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.priority_class_name is not None:
        pod["priorityClassName"] = spec.priority_class_name
    pod["securityContext"] = {
        "fsGroup": POD_GID,
        "runAsGroup": POD_GID,
        "runAsNonRoot": True,
        "runAsUser": POD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["terminationGracePeriodSeconds"] = (
        spec.server.drain_grace_seconds + TERMINATION_MARGIN_SECONDS
    )
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    pod["volumes"] = _volumes(spec, options)
    return pod


def build_deployment(voice: Voice, options: BuildOptions) -> dict[str, Any]:
    """The voice's Deployment (``apps/v1``): the inference server, one pod per replica.

    ``spec.replicas`` is copied from the TTSVoice (the scale subresource's field), the
    only writer of replica counts. Changing replicas or autoscaling bounds never changes
    the pod template, so it never rolls pods.
    """
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(voice, {VOICE_GENERATION_ANNOTATION: str(voice.generation)}),
        "spec": {
            "replicas": voice.spec.replicas,
            "selector": {"matchLabels": selector_labels(voice.name)},
            "strategy": {
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                "type": "RollingUpdate",
            },
            "template": {
                "metadata": {
                    "annotations": _pod_annotations(voice.spec),
                    "labels": _pod_labels(voice),
                },
                "spec": _pod_spec(voice, options),
            },
        },
    }


def build_service(voice: Voice) -> dict[str, Any]:
    """The voice's ClusterIP Service: port 80 (``http``) to the pods' named port ``http``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(voice),
        "spec": {
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": "http"}
            ],
            "selector": selector_labels(voice.name),
            "type": "ClusterIP",
        },
    }


def build_pdb(voice: Voice) -> dict[str, Any] | None:
    """A PodDisruptionBudget (``policy/v1``) allowing one voluntary eviction at a time.

    ``None`` unless the voice asks for more than one pod (``spec.replicas > 1``, within
    ``autoscaling.maxReplicas > 1``): ``maxUnavailable: 1`` over one pod or none lets a
    drain evict it anyway, so such a budget protects nothing, and it costs the cluster
    four writes per voice (the apply, the disruption controller's status and its
    ``NoPods`` Event twice). ``None`` does not mean "delete": a budget made while the
    voice ran several pods is kept until :func:`pdb_unwanted` (so the autoscaler
    crossing 1 ↔ 2 does not create and delete it each time). ``unhealthyPodEvictionPolicy:
    AlwaysAllow`` lets a drain evict pods that are not ready anyway (e.g. crash-looping)
    instead of stalling on them.
    """
    if voice.spec.replicas <= 1 or pdb_unwanted(voice):
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(voice),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(voice.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def pdb_unwanted(voice: Voice) -> bool:
    """Whether a budget the voice may have must go: ``autoscaling.maxReplicas <= 1``, so it
    can never run two pods again (a budget over one pod either blocks drains forever or
    protects nothing)."""
    return voice.spec.autoscaling.max_replicas <= 1


def build_network_policy(voice: Voice, options: BuildOptions) -> dict[str, Any] | None:
    """The voice's NetworkPolicy (``networking.k8s.io/v1``): only the given peers reach it.

    Selects exactly the voice's pods (its selector label) and allows ingress on the server
    port from ``options.network_policy_from`` only, so a pod elsewhere in the cluster cannot
    bypass the router's authentication, admission and fairness by calling a pod or the
    voice's Service. Egress is left alone (``policyTypes: [Ingress]``): a pod downloads
    its model. Traffic from the pod's own node (kubelet probes) is allowed by every
    enforcing implementation. ``None`` when policies are off; the chart writes the
    peers once (docs/operations.md "Security").
    """
    if options.network_policy_from is None:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(voice),
        "spec": {
            "ingress": [
                {
                    "from": [copy.deepcopy(dict(peer)) for peer in options.network_policy_from],
                    "ports": [{"port": SERVER_PORT, "protocol": "TCP"}],
                }
            ],
            "podSelector": {"matchLabels": selector_labels(voice.name)},
            "policyTypes": ["Ingress"],
        },
    }
