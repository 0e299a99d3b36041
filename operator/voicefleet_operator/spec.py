"""A typed, validated mirror of a TTSVoice: what the builders and status code consume.

The CRD (``crds/ttsvoices.yaml``) is the source of every default and bound; these pydantic
models repeat them (a unit test compares the two) because objects stored before a default
or rule existed are never re-validated, and a wrong type here would otherwise surface as
an opaque failure deep inside a server-side apply. An absent or null field takes the CRD's
default; a bad one raises :class:`SpecError` whose message starts with the field's path
(``spec.server.maxQueue: ...``), ready for a ``Degraded`` condition. Quantities stay
strings: the API server's CEL ``isQuantity`` vetted them and Kubernetes takes them as is.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

import voicefleet_api
from voicefleet_api import engines
from voicefleet_api import env as server_env
from voicefleet_api.labels import is_reserved_label
from voicefleet_api.priority import DEFAULT_PRIORITY, PRIORITIES
from voicefleet_operator.plain import plain_copy

__all__ = [
    "DEFAULT_GPU_IMAGE",
    "DEFAULT_IMAGE",
    "DEFAULT_S3_REGION",
    "ENGINES",
    "GPU_IMAGE_SUFFIX",
    "PULL_POLICIES",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIX",
    "Autoscaling",
    "EnvVar",
    "FirstAudioTarget",
    "ModelDownload",
    "ModelSource",
    "PersistentVolumeClaimRef",
    "Resources",
    "S3Location",
    "ServerTuning",
    "SpecError",
    "Voice",
    "VoiceSpec",
    "VolumeModel",
    "parse_spec",
    "parse_voice",
]

IMAGE_REPOSITORY: Final = "ghcr.io/voicefleet/voicefleet-server"
DEFAULT_IMAGE: Final = f"{IMAGE_REPOSITORY}:{voicefleet_api.__version__}"
"""The server image of this operator's own version: ``--default-image`` unless overridden."""
GPU_IMAGE_SUFFIX: Final = "-cuda"
"""Tag suffix of the CUDA build of an inference image (docker/inference.Dockerfile)."""
DEFAULT_GPU_IMAGE: Final = f"{DEFAULT_IMAGE}{GPU_IMAGE_SUFFIX}"
"""Its CUDA build (torch, CUDA onnxruntime) for voices with GPUs: ``--default-gpu-image``."""
ENGINES: Final = engines.ENGINES
PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
RESERVED_ENV_PREFIX: Final = server_env.PREFIX
"""User env may not set server knobs directly: ``spec.server`` is the one place for them."""
RESERVED_ENV_NAMES: Final = frozenset({server_env.POD_IP})
"""Env names the operator itself defines in the container (a duplicate would make the
server-side apply of the Deployment fail: ``env`` is a list keyed by name)."""

_BUNDLED: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST: Final = r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
_HTTPS_URL: Final = re.compile(rf"^https://{_HOST}/[^?#@\s]*[^/?#@\s]$")
_S3_URL: Final = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^?#\s]*[^/?#\s]$")
_S3_ENDPOINT: Final = re.compile(rf"^https?://{_HOST}/?$")
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_REGION: Final = re.compile(r"^[a-z0-9-]{1,64}$")
DEFAULT_S3_REGION: Final = "us-east-1"
_MAX_ENV: Final = 64


class SpecError(ValueError):
    """A TTSVoice the operator cannot turn into workloads; the message names the field.

    ``field`` is the dotted path (``spec.model.volume.path``) when known, for callers
    that want it apart from the prose.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# -- field checks, each failing with the message the user reads ---------------------------


def _fail(message: str, *, at: str | None = None) -> PydanticCustomError:
    """A validation error carrying our own message (and, optionally, an absolute path)."""
    return PydanticCustomError("spec", "{message}", {"message": message, "at": at or ""})


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }.get(type(value), "a list" if isinstance(value, list | tuple) else "an object")


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type; 3.0 is 3
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise _fail(f"must be between {low} and {high}, got {value}")
        return value

    return check


def _positive_number(high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(f"must be a number, got {_kind(value)}")
        if not (math.isfinite(value) and 0 < value <= high):
            raise _fail(f"must be > 0 and <= {high:g}, got {value}")
        return float(value)

    return check


def _number_in(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(f"must be a number, got {_kind(value)}")
        if not (math.isfinite(value) and low <= value <= high):
            raise _fail(f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    return check


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {_kind(value)}")
    if not value:
        raise _fail("must not be empty")
    return value


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise _fail(f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"must be true or false, got {_kind(value)}")
    return value


def _quantity(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(f"must be a quantity (string or integer), got {_kind(value)}")
    text = str(value).strip()
    if not text:
        raise _fail("must not be empty")
    return text


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(f"must be a map of strings, got {_kind(value)}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _fail(f"{k!r} must map to a string, got {_kind(v)}")
    return dict(value)


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"must be an object, got {_kind(value)}")
    copied: dict[str, Any] = plain_copy(value)  # later edits of the body cannot leak in
    return copied


def _list(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _fail(f"must be a list, got {_kind(value)}")
    return value


def _dns_name(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
            raise _fail(f"{value!r} is not a valid {what} name")
        return value

    return check


def _int(low: int, high: int) -> Any:
    return BeforeValidator(_int_in(low, high))


Str = Annotated[str, BeforeValidator(_string)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Quantity = Annotated[str, BeforeValidator(_quantity)]
StrMap = Annotated[dict[str, str], BeforeValidator(_string_map)]
Obj = Annotated[dict[str, Any], BeforeValidator(_object)]


_validating: ContextVar[bool] = ContextVar("_validating", default=False)


class _Model(BaseModel):
    """Frozen, camelCase on the wire, snake_case in Python; null means "take the default".

    Positional construction follows field order (``Resources("500m", "2Gi", 2)``), and a
    model built directly raises :class:`SpecError` like a parsed one.
    """

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    def __init__(self, *args: Any, **values: Any) -> None:
        values.update(zip(type(self).model_fields, args, strict=False))
        if _validating.get():  # nested inside a validation: pydantic collects the errors
            super().__init__(**values)
            return
        token = _validating.set(True)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _spec_error(exc, "") from None
        finally:
            _validating.reset(token)

    @model_validator(mode="before")
    @classmethod
    def _object_without_nulls(cls, data: object) -> object:
        if data is None:
            return {}
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, Mapping):
            raise _fail(f"must be an object, got {_kind(data)}")
        return {k: v for k, v in data.items() if v is not None}


# -- the typed mirror -----------------------------------------------------------------------


class PersistentVolumeClaimRef(_Model):
    """``spec.model.volume.persistentVolumeClaim``."""

    claim_name: Annotated[Str, AfterValidator(_dns_name("PersistentVolumeClaim"))]
    read_only: Bool = True


def _model_path(path: str) -> str:
    segments = path.split("/")
    if path.startswith("/") or ".." in segments or not path.endswith(".onnx"):
        raise _fail(f"{path!r} must be a relative path without '..' segments ending in .onnx")
    if "" in segments or "." in segments:
        raise _fail(f"{path!r} has empty or '.' segments")
    return path


class VolumeModel(_Model):
    """``spec.model.volume``: a Piper ``.onnx`` (with ``<path>.json``) on a PVC."""

    persistent_volume_claim: PersistentVolumeClaimRef
    path: Annotated[Str, AfterValidator(_model_path)]
    """Relative to the volume root; never absolute, never containing ``..``."""


def _bundled_name(name: str) -> str:
    if not _BUNDLED.match(name):
        raise _fail(f"{name!r} is not a voice name (letters, digits, '.', '_', '-'; at most 63)")
    return name


def _download_url(value: str) -> str:
    if not (_HTTPS_URL.match(value) or _S3_URL.match(value)):
        raise _fail(
            f"{value!r} must be https://host[:port]/path or s3://bucket/key, without user "
            "info, query or fragment"
        )
    return value


def _model_url(value: str) -> str:
    if not value.endswith(".onnx"):
        raise _fail(f"{value!r} must name the .onnx model file")
    return value


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise _fail("must be 64 lowercase hex digits (sha256sum prints them)")
    return value


def _s3_endpoint(value: str) -> str:
    if not _S3_ENDPOINT.match(value):
        raise _fail(f"{value!r} must be http(s)://host[:port] with no path")
    return value.rstrip("/")


DownloadUrl = Annotated[Str, AfterValidator(_download_url)]
Sha256 = Annotated[Str, AfterValidator(_sha256)]


class S3Location(_Model):
    """``spec.model.s3``: the S3-compatible service an ``s3://`` url is read from."""

    endpoint: Annotated[Str, AfterValidator(_s3_endpoint)] | None = None
    """``None``: AWS S3 (virtual-hosted ``https://<bucket>.s3.<region>.amazonaws.com``)."""
    region: Annotated[Str, AfterValidator(_region)] = DEFAULT_S3_REGION


class ModelSource(_Model):
    """``spec.model``: exactly one of a bundled voice name, a volume or a download url.

    A url model carries the digests its download must have; credentials are never here,
    only the name of the Secret that holds them.
    """

    bundled: Annotated[Str, AfterValidator(_bundled_name)] | None = None
    volume: VolumeModel | None = None
    url: Annotated[DownloadUrl, AfterValidator(_model_url)] | None = None
    sha256: Sha256 | None = None
    config_url: DownloadUrl | None = None
    config_sha256: Sha256 | None = None
    credentials_secret: Annotated[Str, AfterValidator(_dns_name("Secret"))] | None = None
    ca_config_map: Annotated[Str, AfterValidator(_dns_name("ConfigMap"))] | None = None
    s3: S3Location | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(x is not None for x in (self.bundled, self.volume, self.url)) != 1:
            raise _fail(
                "set exactly one of bundled (a voice shipped in the image), volume "
                "(a model file on a PersistentVolumeClaim) or url (an https:// or s3:// "
                "address of a .onnx file, with its sha256)",
                at="spec.model",
            )
        if self.url is None:
            extra = [
                name
                for name, value in (
                    ("sha256", self.sha256),
                    ("configUrl", self.config_url),
                    ("configSha256", self.config_sha256),
                    ("credentialsSecret", self.credentials_secret),
                    ("caConfigMap", self.ca_config_map),
                    ("s3", self.s3),
                )
                if value is not None
            ]
            if extra:
                raise _fail(f"{', '.join(extra)} apply only to a url model", at="spec.model")
            return self
        if self.sha256 is None:
            raise _fail("required with spec.model.url", at="spec.model.sha256")
        if self.config_sha256 is None:
            raise _fail("required with spec.model.url", at="spec.model.configSha256")
        is_s3 = self.url.startswith("s3://")
        if self.s3 is not None and not is_s3:
            raise _fail("applies only to an s3:// url", at="spec.model.s3")
        if self.config_url is not None and self.config_url.startswith("s3://") != is_s3:
            raise _fail("must use the same scheme as spec.model.url", at="spec.model.configUrl")
        return self

    @property
    def download(self) -> ModelDownload | None:
        """What the fetcher needs for a url model; ``None`` for bundled and volume models."""
        if self.url is None:
            return None
        # _exactly_one guarantees both digests with a url
        assert self.sha256 is not None
        assert self.config_sha256 is not None
        return ModelDownload(
            url=self.url,
            sha256=self.sha256,
            config_url=self.config_url or f"{self.url}.json",
            config_sha256=self.config_sha256,
            credentials_secret=self.credentials_secret,
            ca_config_map=self.ca_config_map,
            s3=(self.s3 or S3Location()) if self.url.startswith("s3://") else None,
        )


@dataclass(frozen=True)
class ModelDownload:
    """A url model resolved: both files with their digests and how to reach them."""

    url: str
    sha256: str
    config_url: str
    config_sha256: str
    credentials_secret: str | None
    ca_config_map: str | None
    s3: S3Location | None

    @property
    def model_name(self) -> str:
        """The name the server serves the model under: the file name without ``.onnx``."""
        return self.url.rsplit("/", 1)[-1].removesuffix(".onnx")

    @property
    def cache_key(self) -> str:
        """Directory name keyed by both digests: the same files always land in one place."""
        return f"{self.sha256}-{self.config_sha256[:16]}"

    def cache_dir(self, namespace: str) -> str:
        """The download's directory on the model volume for a voice in ``namespace``.

        An anonymous download is shared by digest with every voice on the node (anyone
        could fetch it). One made with a credential is shared only by voices of the same
        namespace naming the same Secret and the same source: with the per-node cache, a
        voice whose credential the server refuses must not start on a copy that another
        tenant's credential fetched (found on the real node: a refused token went Ready).
        """
        if self.credentials_secret is None:
            return self.cache_key
        endpoint = self.s3.endpoint if self.s3 is not None and self.s3.endpoint else ""
        scope = "\n".join((namespace, self.credentials_secret, self.url, self.config_url, endpoint))
        return f"{self.cache_key}-{hashlib.sha256(scope.encode()).hexdigest()[:16]}"


def _region(value: str) -> str:
    if not _REGION.match(value):
        raise _fail(f"{value!r} is not a region name (lowercase letters, digits and '-')")
    return value


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise _fail(f"{name!r} is not a valid environment variable name")
    return name


def _plain_string(value: object) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {_kind(value)}")
    return value


class EnvVar(_Model):
    """One ``spec.env`` item (plain values only: secrets belong in the pod's own refs)."""

    name: Annotated[Str, AfterValidator(_env_name)]
    value: Annotated[str, BeforeValidator(_plain_string)] = ""


class Resources(_Model):
    """``spec.resources``; quantities kept as the strings Kubernetes accepts."""

    cpu: Quantity = "1"
    memory: Quantity = "1Gi"
    gpus: Annotated[int, _int(0, 16)] = 0


class ServerTuning(_Model):
    """``spec.server``: the inference server's knobs (``None`` = the server's own default)."""

    max_queue: Annotated[int, _int(1, 100_000)] = 64
    max_batch_size: Annotated[int, _int(1, 256)] | None = None
    batch_window_ms: Annotated[int, _int(0, 1000)] = 5
    workers: Annotated[int, _int(1, 64)] = 1
    threads_per_worker: Annotated[int, _int(1, 256)] | None = None
    request_timeout_seconds: Annotated[int, _int(1, 3600)] = 120
    drain_grace_seconds: Annotated[int, _int(1, 3600)] = 30
    max_input_chars: Annotated[int, _int(1, 100_000)] = 4096
    default_priority: Annotated[Str, AfterValidator(_one_of(PRIORITIES))] = DEFAULT_PRIORITY
    priority_wait_target_ms: Annotated[int, _int(0, 3_600_000)] = 0
    priority_reserved_workers: Annotated[int, _int(0, 64)] = 0


class FirstAudioTarget(_Model):
    """``spec.autoscaling.target``: first audio within a time for a share of requests.

    Its presence switches the autoscaler from the work-seconds rule to the queueing model
    (``scaling.decide``, ``queueing.replicas_for_first_audio``).
    """

    time_to_first_audio_seconds: Annotated[float, BeforeValidator(_positive_number(600))]
    percentile: Annotated[float, BeforeValidator(_number_in(50, 99.99))] = 99.0

    @model_validator(mode="before")
    @classmethod
    def _time_is_required(cls, data: object) -> object:
        # Pydantic's own "Field required" would not name the field the way users read it.
        if isinstance(data, Mapping) and data.get("timeToFirstAudioSeconds") is None:
            raise _fail("is required", at="spec.autoscaling.target.timeToFirstAudioSeconds")
        return data


class Autoscaling(_Model):
    """``spec.autoscaling``: bounds and timings the autoscaler follows."""

    min_replicas: Annotated[int, _int(0, 1000)] = 1
    max_replicas: Annotated[int, _int(1, 1000)] = 3
    target_work_seconds_per_replica: Annotated[float, BeforeValidator(_positive_number(3600))] = (
        10.0
    )
    scale_down_delay_seconds: Annotated[int, _int(0, 86_400)] = 300
    scale_to_zero_idle_seconds: Annotated[int, _int(1, 86_400)] = 600
    cold_start_timeout_seconds: Annotated[int, _int(1, 3600)] = 120
    enabled: Bool = True
    """False: the autoscaler leaves spec.replicas alone (kubectl scale, an HPA)."""
    target: FirstAudioTarget | None = None
    """A first-audio latency target; ``None``: the work-seconds policy."""


def _pod_labels(labels: dict[str, str]) -> dict[str, str]:
    for key in sorted(labels):
        if is_reserved_label(key):
            raise _fail(
                f"{key!r} is under a prefix the operator owns (voicefleet.io/, app.kubernetes.io/)"
            )
    return labels


class VoiceSpec(_Model):
    """``spec`` of a TTSVoice with the CRD's defaults for every absent field.

    Mapping fields are plain dicts (copied on parse), so instances are not hashable.
    ``image`` is ``None`` when the object carries none (the CRD has no default for it);
    the builder then uses the operator's ``--default-image``.

    Cross-field rules the API server enforces with CEL (``minReplicas <= maxReplicas``,
    ``replicas`` within them) are not re-checked: ``replicas`` is whatever the scale
    subresource holds, and refusing an old object over a bound would stop a serving voice.
    """

    model: ModelSource
    replicas: Annotated[int, _int(0, 1000)] = 1
    engine: Annotated[Str, AfterValidator(_one_of(ENGINES))] | None = None
    """As written; ``None`` follows ``resources.gpus`` (see :attr:`runs_engine`)."""
    image: Str | None = None
    image_pull_policy: Annotated[Str, AfterValidator(_one_of(PULL_POLICIES))] = "IfNotPresent"
    env: Annotated[tuple[EnvVar, ...], BeforeValidator(_list)] = ()
    resources: Resources = Resources()
    node_selector: StrMap = Field(default_factory=dict)
    tolerations: Annotated[tuple[Obj, ...], BeforeValidator(_list)] = ()
    affinity: Obj | None = None
    priority_class_name: Annotated[Str, AfterValidator(_dns_name("PriorityClass"))] | None = None
    pod_labels: Annotated[StrMap, AfterValidator(_pod_labels)] = Field(default_factory=dict)
    pod_annotations: StrMap = Field(default_factory=dict)
    server: ServerTuning = ServerTuning()
    autoscaling: Autoscaling = Autoscaling()

    @model_validator(mode="before")
    @classmethod
    def _model_is_required(cls, data: object) -> object:
        # A missing model reads as an empty one, so the message says what to set.
        if isinstance(data, Mapping) and data.get("model") is None:
            return {**data, "model": {}}
        return data

    @property
    def runs_engine(self) -> str:
        """The engine the pods run: ``engine``, else vits-torch with GPUs, piper-onnx without."""
        return engines.voice_engine(self.engine, self.resources.gpus)

    @field_validator("env")
    @classmethod
    def _env_is_the_users(cls, env: tuple[EnvVar, ...]) -> tuple[EnvVar, ...]:
        if len(env) > _MAX_ENV:
            raise _fail(f"at most {_MAX_ENV} items, got {len(env)}")
        seen: set[str] = set()
        for i, item in enumerate(env):
            at = f"spec.env[{i}].name"
            if item.name.startswith(RESERVED_ENV_PREFIX):
                raise _fail(
                    f"{item.name} is reserved: set the server through spec.server instead", at=at
                )
            if item.name in RESERVED_ENV_NAMES:
                raise _fail(f"{item.name} is set by the operator", at=at)
            if item.name in seen:
                raise _fail(f"{item.name} appears twice", at=at)
            seen.add(item.name)
        return env


class Voice(BaseModel):
    """One TTSVoice as the operator sees it: identity plus the parsed spec."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    uid: str
    generation: int
    spec: VoiceSpec


# -- parsing --------------------------------------------------------------------------------


def _spec_error(exc: ValidationError, prefix: str) -> SpecError:
    """The first problem of a validation error as a :class:`SpecError` naming its field."""
    first = exc.errors()[0]
    at = str((first.get("ctx") or {}).get("at") or "")
    if not at:
        at = prefix
        for part in first["loc"]:
            at += f"[{part}]" if isinstance(part, int) else f"{'.' if at else ''}{part}"
    message = "required" if first["type"] == "missing" else first["msg"]
    return SpecError(message, field=at or None)


def parse_spec(raw: object) -> VoiceSpec:
    """The typed spec of one TTSVoice ``.spec``; raises :class:`SpecError`."""
    token = _validating.set(True)
    try:
        return VoiceSpec.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise _spec_error(exc, "spec") from None
    finally:
        _validating.reset(token)


def _metadata_string(meta: Mapping[str, Any], key: str, missing: str) -> str:
    value = meta.get(key)
    if value is None or value == "":
        raise SpecError(missing, field=f"metadata.{key}")
    if not isinstance(value, str):
        raise SpecError(f"must be a string, got {_kind(value)}", field=f"metadata.{key}")
    return value


def parse_voice(body: Mapping[str, Any]) -> Voice:
    """A :class:`Voice` from a TTSVoice object as the API server returns it (a dict).

    Raises :class:`SpecError` naming the field when the object cannot be served.
    """
    meta = body.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise SpecError(f"must be an object, got {_kind(meta)}", field="metadata")
    name = _metadata_string(meta, "name", "required")
    namespace = _metadata_string(meta, "namespace", "required (TTSVoice is namespaced)")
    uid = meta.get("uid")
    generation = meta.get("generation")
    return Voice(
        name=name,
        namespace=namespace,
        uid=uid if isinstance(uid, str) else "",
        generation=generation
        if isinstance(generation, int) and not isinstance(generation, bool)
        else 0,
        spec=parse_spec(body.get("spec")),
    )
