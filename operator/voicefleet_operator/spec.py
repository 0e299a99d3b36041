"""A typed, validated mirror of a TTSVoice: what the builders and status code consume.

The API server already defaults and validates every field (OpenAPI bounds and CEL rules
in ``crds/ttsvoices.yaml``), so in the normal case parsing here only changes shape:
camelCase dicts become frozen dataclasses. It still re-checks what the builders rely on,
because objects written before a default or a rule existed are never re-validated, and
because a wrong type here would otherwise surface as an opaque failure deep inside a
server-side apply. An absent field takes the CRD's default; a present field of the wrong
type or out of bounds raises :class:`SpecError` whose message starts with the field's
path (``spec.server.maxQueue: ...``), ready to be shown in a ``Degraded`` condition.

Quantities (``resources.cpu``/``memory``) stay strings: the API server's CEL
``isQuantity`` already vetted them and Kubernetes accepts them verbatim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from voicefleet_operator.labels import is_reserved_label

__all__ = [
    "DEFAULT_IMAGE",
    "ENGINES",
    "PULL_POLICIES",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIX",
    "Autoscaling",
    "EnvVar",
    "ModelSource",
    "PersistentVolumeClaimRef",
    "Resources",
    "ServerTuning",
    "SpecError",
    "Voice",
    "VoiceSpec",
    "VolumeModel",
    "parse_spec",
    "parse_voice",
]

DEFAULT_IMAGE: Final = "ghcr.io/voicefleet/voicefleet-server:0.1.0"
ENGINES: Final = ("piper-onnx", "simulated")
PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
RESERVED_ENV_PREFIX: Final = "VOICEFLEET_"
"""User env may not set server knobs directly: ``spec.server`` is the one place for them."""
RESERVED_ENV_NAMES: Final = frozenset({"POD_IP"})
"""Env names the operator itself defines in the container (a duplicate would make the
server-side apply of the Deployment fail: ``env`` is a list keyed by name)."""

_BUNDLED: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_ENV: Final = 64


class SpecError(ValueError):
    """A TTSVoice the operator cannot turn into workloads; the message names the field.

    ``field`` is the dotted path (``spec.model.volume.path``) when known, for callers
    that want it apart from the prose.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# -- the typed mirror -----------------------------------------------------------------------


@dataclass(frozen=True)
class PersistentVolumeClaimRef:
    """``spec.model.volume.persistentVolumeClaim``."""

    claim_name: str
    read_only: bool = True


@dataclass(frozen=True)
class VolumeModel:
    """``spec.model.volume``: a Piper ``.onnx`` (with ``<path>.json``) on a PVC."""

    persistent_volume_claim: PersistentVolumeClaimRef
    path: str
    """Relative to the volume root; never absolute, never containing ``..``."""


@dataclass(frozen=True)
class ModelSource:
    """``spec.model``: exactly one of a bundled voice name or a volume."""

    bundled: str | None = None
    volume: VolumeModel | None = None

    def __post_init__(self) -> None:
        if (self.bundled is None) == (self.volume is None):
            raise SpecError("exactly one of bundled or volume must be set", field="spec.model")


@dataclass(frozen=True)
class EnvVar:
    """One ``spec.env`` item (plain values only: secrets belong in the pod's own refs)."""

    name: str
    value: str = ""


@dataclass(frozen=True)
class Resources:
    """``spec.resources``; quantities kept as the strings Kubernetes accepts."""

    cpu: str = "1"
    memory: str = "1Gi"
    gpus: int = 0


@dataclass(frozen=True)
class ServerTuning:
    """``spec.server``: the inference server's knobs (``None`` = the server's own default)."""

    max_queue: int = 64
    max_batch_size: int | None = None
    batch_window_ms: int = 5
    workers: int = 1
    threads_per_worker: int | None = None
    request_timeout_seconds: int = 120
    drain_grace_seconds: int = 30
    max_input_chars: int = 4096


@dataclass(frozen=True)
class Autoscaling:
    """``spec.autoscaling``: bounds and timings the autoscaler (a later issue) follows."""

    min_replicas: int = 1
    max_replicas: int = 3
    target_work_seconds_per_replica: float = 10.0
    scale_down_delay_seconds: int = 300
    scale_to_zero_idle_seconds: int = 600
    cold_start_timeout_seconds: int = 120
    enabled: bool = True
    """False: the autoscaler leaves spec.replicas alone (kubectl scale, an HPA)."""


@dataclass(frozen=True)
class VoiceSpec:
    """``spec`` of a TTSVoice with the CRD's defaults for every absent field.

    Mapping fields are plain dicts (copied on parse), so instances are not hashable.
    ``image`` is ``None`` when the object carries none; the builder then falls back to
    the operator's ``--default-image``, then :data:`DEFAULT_IMAGE`.
    """

    model: ModelSource
    replicas: int = 1
    engine: str = "piper-onnx"
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    env: tuple[EnvVar, ...] = ()
    resources: Resources = field(default_factory=Resources)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    server: ServerTuning = field(default_factory=ServerTuning)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)


@dataclass(frozen=True)
class Voice:
    """One TTSVoice as the operator sees it: identity plus the parsed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: VoiceSpec


# -- parsing --------------------------------------------------------------------------------


class _Fields:
    """Typed reads from one JSON object, each error naming ``<path>.<key>``."""

    def __init__(self, raw: object, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(f"must be an object, got {_kind(raw)}", field=path)
        self.raw: Mapping[str, Any] = raw
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def present(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def int_(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(key)
        if value is None:
            return default
        return _int_in(value, low, high, self.at(key))

    def opt_int(self, key: str, low: int, high: int) -> int | None:
        value = self.raw.get(key)
        return None if value is None else _int_in(value, low, high, self.at(key))

    def number(self, key: str, default: float, high: float) -> float:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"must be a number, got {_kind(value)}", field=self.at(key))
        number = float(value)
        if not (math.isfinite(number) and 0 < number <= high):
            raise SpecError(f"must be > 0 and <= {high:g}, got {value}", field=self.at(key))
        return number

    def str_(self, key: str, default: str) -> str:
        value = self.opt_str(key)
        return default if value is None else value

    def opt_str(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise SpecError(f"must be a string, got {_kind(value)}", field=self.at(key))
        if not value:
            raise SpecError("must not be empty", field=self.at(key))
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(f"must be true or false, got {_kind(value)}", field=self.at(key))
        return value

    def enum(self, key: str, default: str, allowed: Sequence[str]) -> str:
        value = self.str_(key, default)
        if value not in allowed:
            raise SpecError(
                f"must be one of {', '.join(allowed)}, got {value!r}", field=self.at(key)
            )
        return value

    def quantity(self, key: str, default: str) -> str:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SpecError(
                f"must be a quantity (string or integer), got {_kind(value)}", field=self.at(key)
            )
        text = str(value).strip()
        if not text:
            raise SpecError("must not be empty", field=self.at(key))
        return text

    def str_map(self, key: str) -> dict[str, str]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise SpecError(f"must be a map of strings, got {_kind(value)}", field=self.at(key))
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SpecError(f"{k!r} must map to a string, got {_kind(v)}", field=self.at(key))
            out[k] = v
        return out

    def obj_list(self, key: str) -> tuple[dict[str, Any], ...]:
        value = self.raw.get(key)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SpecError(f"must be a list, got {_kind(value)}", field=self.at(key))
        out: list[dict[str, Any]] = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise SpecError(
                    f"must be an object, got {_kind(item)}", field=f"{self.at(key)}[{i}]"
                )
            out.append(_deep_copy(item))
        return tuple(out)

    def obj(self, key: str) -> dict[str, Any] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise SpecError(f"must be an object, got {_kind(value)}", field=self.at(key))
        return _deep_copy(value)


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }.get(type(value), "a list" if isinstance(value, list | tuple) else "an object")


def _int_in(value: object, low: int, high: int, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type; 3.0 is 3
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"must be an integer, got {_kind(value)}", field=path)
    if not low <= value <= high:
        raise SpecError(f"must be between {low} and {high}, got {value}", field=path)
    return value


def _deep_copy(value: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy, so later edits of the watched body cannot leak into a spec."""

    def copy(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): copy(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [copy(x) for x in v]
        return v

    result: dict[str, Any] = copy(value)
    return result


def _parse_model(raw: object) -> ModelSource:
    f = _Fields(raw, "spec.model")
    bundled, volume = f.present("bundled"), f.present("volume")
    if bundled == volume:
        raise SpecError(
            "set exactly one of bundled (a voice shipped in the image) or volume "
            "(a model file on a PersistentVolumeClaim)",
            field="spec.model",
        )
    if bundled:
        name = f.str_("bundled", "")
        if not _BUNDLED.match(name):
            raise SpecError(
                f"{name!r} is not a voice name (letters, digits, '.', '_', '-'; at most 63)",
                field=f.at("bundled"),
            )
        return ModelSource(bundled=name)
    v = _Fields(f.raw["volume"], f.at("volume"))
    if not v.present("persistentVolumeClaim"):
        raise SpecError("required", field=v.at("persistentVolumeClaim"))
    p = _Fields(v.raw["persistentVolumeClaim"], v.at("persistentVolumeClaim"))
    claim = p.opt_str("claimName")
    if claim is None:
        raise SpecError("required", field=p.at("claimName"))
    if len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
        raise SpecError(
            f"{claim!r} is not a valid PersistentVolumeClaim name", field=p.at("claimName")
        )
    path = v.opt_str("path")
    if path is None:
        raise SpecError(
            "required (the .onnx file, relative to the volume root)", field=v.at("path")
        )
    segments = path.split("/")
    if path.startswith("/") or ".." in segments or not path.endswith(".onnx"):
        raise SpecError(
            f"{path!r} must be a relative path without '..' segments ending in .onnx",
            field=v.at("path"),
        )
    if "" in segments or "." in segments:
        raise SpecError(f"{path!r} has empty or '.' segments", field=v.at("path"))
    return ModelSource(
        volume=VolumeModel(
            persistent_volume_claim=PersistentVolumeClaimRef(
                claim_name=claim, read_only=p.bool_("readOnly", True)
            ),
            path=path,
        )
    )


def _parse_env(raw: object) -> tuple[EnvVar, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise SpecError(f"must be a list, got {_kind(raw)}", field="spec.env")
    if len(raw) > _MAX_ENV:
        raise SpecError(f"at most {_MAX_ENV} items, got {len(raw)}", field="spec.env")
    seen: set[str] = set()
    out: list[EnvVar] = []
    for i, item in enumerate(raw):
        f = _Fields(item, f"spec.env[{i}]")
        name = f.opt_str("name")
        if name is None:
            raise SpecError("required", field=f.at("name"))
        if not _ENV_NAME.match(name):
            raise SpecError(
                f"{name!r} is not a valid environment variable name", field=f.at("name")
            )
        if name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(
                f"{name} is reserved: set the server through spec.server instead",
                field=f.at("name"),
            )
        if name in RESERVED_ENV_NAMES:
            raise SpecError(f"{name} is set by the operator", field=f.at("name"))
        if name in seen:
            raise SpecError(f"{name} appears twice", field=f.at("name"))
        seen.add(name)
        value = f.raw.get("value")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise SpecError(f"must be a string, got {_kind(value)}", field=f.at("value"))
        out.append(EnvVar(name=name, value=value))
    return tuple(out)


def _parse_server(raw: object) -> ServerTuning:
    f = _Fields(raw, "spec.server")
    return ServerTuning(
        max_queue=f.int_("maxQueue", 64, 1, 100_000),
        max_batch_size=f.opt_int("maxBatchSize", 1, 256),
        batch_window_ms=f.int_("batchWindowMs", 5, 0, 1000),
        workers=f.int_("workers", 1, 1, 64),
        threads_per_worker=f.opt_int("threadsPerWorker", 1, 256),
        request_timeout_seconds=f.int_("requestTimeoutSeconds", 120, 1, 3600),
        drain_grace_seconds=f.int_("drainGraceSeconds", 30, 1, 3600),
        max_input_chars=f.int_("maxInputChars", 4096, 1, 100_000),
    )


def _parse_autoscaling(raw: object) -> Autoscaling:
    f = _Fields(raw, "spec.autoscaling")
    return Autoscaling(
        min_replicas=f.int_("minReplicas", 1, 0, 1000),
        max_replicas=f.int_("maxReplicas", 3, 1, 1000),
        target_work_seconds_per_replica=f.number("targetWorkSecondsPerReplica", 10.0, 3600),
        scale_down_delay_seconds=f.int_("scaleDownDelaySeconds", 300, 0, 86_400),
        scale_to_zero_idle_seconds=f.int_("scaleToZeroIdleSeconds", 600, 1, 86_400),
        cold_start_timeout_seconds=f.int_("coldStartTimeoutSeconds", 120, 1, 3600),
        enabled=f.bool_("enabled", True),
    )


def _parse_resources(raw: object) -> Resources:
    f = _Fields(raw, "spec.resources")
    return Resources(
        cpu=f.quantity("cpu", "1"),
        memory=f.quantity("memory", "1Gi"),
        gpus=f.int_("gpus", 0, 0, 16),
    )


def _priority_class(name: str | None) -> str | None:
    if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        raise SpecError(
            f"{name!r} is not a valid PriorityClass name", field="spec.priorityClassName"
        )
    return name


def parse_spec(raw: object) -> VoiceSpec:
    """The typed spec of one TTSVoice ``.spec``; raises :class:`SpecError`.

    Cross-field rules the API server enforces with CEL (``minReplicas <= maxReplicas``,
    ``replicas`` within them) are not re-checked: ``replicas`` is whatever the scale
    subresource holds, and refusing to reconcile an old object over a bound would only
    stop a serving voice. Everything the built pod depends on is checked.
    """
    f = _Fields(raw, "spec")
    pod_labels = f.str_map("podLabels")
    for key in sorted(pod_labels):
        if is_reserved_label(key):
            raise SpecError(
                f"{key!r} is under a prefix the operator owns (voicefleet.io/, app.kubernetes.io/)",
                field="spec.podLabels",
            )
    return VoiceSpec(
        model=_parse_model(f.raw.get("model")),
        replicas=f.int_("replicas", 1, 0, 1000),
        engine=f.enum("engine", "piper-onnx", ENGINES),
        image=f.opt_str("image"),
        image_pull_policy=f.enum("imagePullPolicy", "IfNotPresent", PULL_POLICIES),
        env=_parse_env(f.raw.get("env")),
        resources=_parse_resources(f.raw.get("resources")),
        node_selector=f.str_map("nodeSelector"),
        tolerations=f.obj_list("tolerations"),
        affinity=f.obj("affinity"),
        priority_class_name=_priority_class(f.opt_str("priorityClassName")),
        pod_labels=pod_labels,
        pod_annotations=f.str_map("podAnnotations"),
        server=_parse_server(f.raw.get("server")),
        autoscaling=_parse_autoscaling(f.raw.get("autoscaling")),
    )


def parse_voice(body: Mapping[str, Any]) -> Voice:
    """A :class:`Voice` from a TTSVoice object as the API server returns it (a dict).

    Raises :class:`SpecError` naming the field when the object cannot be served.
    """
    meta = _Fields(body.get("metadata"), "metadata")
    name = meta.opt_str("name")
    if name is None:
        raise SpecError("required", field="metadata.name")
    namespace = meta.opt_str("namespace")
    if namespace is None:
        raise SpecError("required (TTSVoice is namespaced)", field="metadata.namespace")
    uid = meta.raw.get("uid")
    generation = meta.raw.get("generation")
    return Voice(
        name=name,
        namespace=namespace,
        uid=uid if isinstance(uid, str) else "",
        generation=generation
        if isinstance(generation, int) and not isinstance(generation, bool)
        else 0,
        spec=parse_spec(body.get("spec")),
    )
