"""Every setting of the inference server: one typed pydantic-settings model.

Each field of :class:`Settings` is one CLI flag and one environment variable (the names in
:mod:`voicefleet_api.env`, which the operator writes into pods). Precedence: flag, then
environment variable, then the default. Defaults that depend on the machine (intra-op
threads by cores, batch size by device) are resolved in one validator, so ``Settings()``
and :func:`load_settings` always agree; ``voicefleet-server --help`` prints the values
this machine would get; the flags are generated from the model by the mechanism every
component shares (:mod:`voicefleet_api.flags`). Why those defaults: ``docs/server.md`` (measured in
``docs/engines.md``).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from voicefleet_api import engines
from voicefleet_api import env as names
from voicefleet_api.flags import add_flags, flag, option_name, spec_of

__all__ = [
    "LOG_LEVELS",
    "Settings",
    "SettingsError",
    "available_cores",
    "build_parser",
    "env_names",
    "load_settings",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")
_GPU_BATCH: Final = 8
_CPU_BATCH: Final = 1


_values_only: ContextVar[bool] = ContextVar("_values_only", default=False)


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message names the setting."""


def available_cores(cgroup_cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` reports the node's cores, but a pod limited to 2 CPUs on a 64-core
    node must not start 64 intra-op threads. A fractional quota rounds down (at least 1),
    as Go's automaxprocs does: rounding up would oversubscribe the quota.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


Lower = BeforeValidator(_lower)


class Settings(BaseSettings):
    """The resolved configuration of one server process (validated on construction).

    ``Settings()`` reads ``VOICEFLEET_*`` from the environment and fills the machine's
    defaults; :func:`load_settings` adds the command line (and takes the environment and
    core count as arguments, for tests).
    """

    model_config = SettingsConfigDict(
        env_prefix=names.PREFIX,
        frozen=True,
        extra="ignore",
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
    )

    host: Annotated[str, Field(min_length=1)] = Field(
        "0.0.0.0", json_schema_extra=flag(metavar="ADDR")
    )
    """Address to listen on."""
    port: int = Field(
        8080, ge=1, le=65535, validation_alias=AliasChoices("port", names.PORT, "PORT")
    )
    """TCP port (VOICEFLEET_PORT wins over PORT)."""
    engine: str = Field(
        engines.DEFAULT_ENGINE, min_length=1, json_schema_extra=flag(metavar="NAME")
    )
    """Engine implementation."""
    model: str = Field(
        "en_US-joe-medium", min_length=1, json_schema_extra=flag(metavar="NAME|PATH")
    )
    """Voice model: a bundled voice name or a path to a Piper .onnx (with .onnx.json)."""
    device: Annotated[str, Lower] = Field(
        "cpu", pattern=r"^(cpu|cuda(:\d+)?(,cuda(:\d+)?)*)$", json_schema_extra=flag(metavar="DEV")
    )
    """One of cpu, cuda, cuda:N, or a list cuda:0,cuda:1 (workers take them in turn)."""
    workers: int = Field(1, ge=1, le=64)
    """Engine worker threads, each owning its own engine instance."""
    threads_per_worker: int = Field(
        0,
        ge=1,
        json_schema_extra=flag(
            "--threads-per-worker",
            "--threads",
            default_text="cores // workers = {threads} here ({cores} core(s))",
        ),
    )
    """Intra-op threads (onnxruntime) per worker; on CPU workers x threads may not exceed
    the cores."""
    max_queue: int = Field(64, ge=1)
    """Requests waiting at most; beyond it 429 with Retry-After."""
    max_batch_size: int = Field(
        0,
        ge=1,
        le=256,
        json_schema_extra=flag(default_text=f"{_CPU_BATCH} on cpu, {_GPU_BATCH} on cuda"),
    )
    """Requests run together in one engine call (dynamic batching); batching measured no
    gain on CPU."""
    batch_window_ms: float = Field(
        5.0, ge=0, le=1000, allow_inf_nan=False, json_schema_extra=flag(metavar="MS")
    )
    """How long a worker waits after the first queued request for more to batch."""
    request_timeout_s: float = Field(120.0, gt=0, le=3600, allow_inf_nan=False)
    """Per-request limit on queue wait plus synthesis (then 504)."""
    default_priority: Annotated[Literal["critical", "standard", "sheddable"], Lower] = Field(
        "standard", json_schema_extra=flag(metavar="P")
    )
    """Priority of requests without an x-voicefleet-priority header: critical, standard
    or sheddable."""
    priority_wait_target_s: float = Field(0.0, ge=0, le=3600, allow_inf_nan=False)
    """Estimated queue wait past which sheddable requests get 429 (standard past twice
    it; critical only when the queue is full of critical work); 0: off."""
    priority_reserved_workers: int = Field(0, ge=0, le=256)
    """Engine workers that never start sheddable work while they are the last idle ones,
    so critical and standard requests do not wait behind it (at most workers - 1 apply)."""
    drain_grace_s: float = Field(30.0, ge=0, le=3600, allow_inf_nan=False)
    """On SIGTERM/SIGINT, time accepted requests get to finish before exit."""
    max_input_chars: int = Field(4096, ge=1, le=100_000)
    """Longest accepted text, in characters."""
    max_connections: int = Field(0, ge=0, le=1_000_000)
    """Open connections at most; beyond it a new one closes the connection that has
    waited longest for a request head (0: half the descriptor limit)."""
    header_timeout_s: float = Field(10.0, gt=0, le=600, allow_inf_nan=False)
    """Time a client has to send a request head (slow-loris connections are closed)."""
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600, allow_inf_nan=False)
    """Idle time allowed between requests on one connection (the router drops its idle
    pod connections after 4 s, before this)."""
    body_timeout_s: float = Field(15.0, gt=0, le=600, allow_inf_nan=False)
    """Time a client has to send its whole request body (then 408)."""
    max_concurrent_requests: int = Field(1024, ge=0, le=1_000_000)
    """HTTP requests in progress at most, beyond it 503 + Retry-After (probes, metrics
    and /load exempt; 0: no limit); the queue bounds synthesis on its own."""
    auth_token: SecretStr | None = Field(None, json_schema_extra=flag(metavar="TOKEN"))
    """Bearer token required on /v1/ and /tts (401 without it; probes, /metrics and /load
    stay open): pod-side auth where NetworkPolicy is not enforced. The operator sets the
    voice's own token through the environment; a flag would show in the process list."""
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Lower] = Field(
        "info", json_schema_extra=flag(metavar="LEVEL")
    )
    """One of debug, info, warning, error (debug also logs every request)."""
    calibration_cache: str = Field("", max_length=4096, json_schema_extra=flag(metavar="DIR"))
    """Directory where a Piper engine keeps its load-time cost calibration, by model digest,
    engine, runtime, device, threads and processor: a later start with the same key warms
    up once and reuses it instead of timing three syntheses (empty: calibrate every start;
    a fit measured on a busy machine is kept until its file is removed)."""
    termination_message_path: str = Field("", max_length=4096)
    """File that gets one line naming the cause when the model fails to load (the pod's
    terminationMessagePath; empty: none)."""
    cores: int = Field(
        default_factory=available_cores, ge=1, exclude=True, json_schema_extra=flag(hidden=True)
    )
    """Cores this process may use (resolved, not a flag): the bound for workers x threads."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Validate ``values`` alone (no environment read); raises :class:`SettingsError`."""
        token = _values_only.set(True)
        try:
            return cls(**values)
        finally:
            _values_only.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then the environment; no .env or secret files. from_values: arguments.
        return (init_settings,) if _values_only.get() else (init_settings, env_settings)

    @model_validator(mode="before")
    @classmethod
    def _machine_defaults(cls, data: Any) -> Any:
        """The one place the machine-dependent defaults are chosen."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        cores = data.setdefault("cores", available_cores())
        if data.get("threads_per_worker") is None:
            workers = _int_or(data.get("workers"), 1)
            data["threads_per_worker"] = max(1, _int_or(cores, 1) // max(1, workers))
        if data.get("max_batch_size") is None:
            device = str(_lower(data.get("device", "cpu")))
            data["max_batch_size"] = _GPU_BATCH if device.startswith("cuda") else _CPU_BATCH
        return data

    @model_validator(mode="after")
    def _fits_the_cores(self) -> Settings:
        if self.device == "cpu" and self.workers * self.threads_per_worker > self.cores:
            raise PydanticCustomError(
                "oversubscribed",
                "{message}",
                {
                    "message": f"{names.WORKERS} x {names.THREADS_PER_WORKER} = {self.workers} "
                    f"x {self.threads_per_worker} exceeds the {self.cores} core(s) available; "
                    "threads would fight for cores and every request would slow down. "
                    "Lower one of them."
                },
            )
        return self

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices engine workers take in turn (worker ``i`` gets ``devices[i % n]``)."""
        return tuple(self.device.split(","))

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000.0

    def summary(self) -> str:
        """The one-line startup summary."""
        return (
            f"model={self.model} engine={self.engine} device={self.device} "
            f"workers={self.workers}x{self.threads_per_worker} threads (cores={self.cores}) "
            f"max_batch={self.max_batch_size} window={self.batch_window_ms:g}ms "
            f"queue={self.max_queue} timeout={self.request_timeout_s:g}s "
            f"drain_grace={self.drain_grace_s:g}s max_input={self.max_input_chars}"
        )


def _int_or(value: object, fallback: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return fallback


def env_names(field: str) -> tuple[str, ...]:
    """The environment variables of a field, most specific first (the first set wins)."""
    info = Settings.model_fields[field]
    if isinstance(info.validation_alias, AliasChoices):
        return tuple(
            str(c) for c in info.validation_alias.choices if isinstance(c, str) and c != field
        )
    return (names.PREFIX + field.upper(),)


def _describe(exc: ValidationError) -> str:
    """Every problem, named by its environment variable, so one failed start shows them all."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if not loc:
            problems.append(error["msg"])
            continue
        field = str(loc[0])
        field = next((n for n in Settings.model_fields if field in (n, *env_names(n))), field)
        name = env_names(field)[0] if field in Settings.model_fields else field
        problems.append(f"{name}: {error['msg']}, got {error['input']!r}")
    return "; ".join(problems)


# -- command line and environment -----------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _parser_of(info: FieldInfo) -> Callable[[str], Any]:
    return {int: _integer, float: _number}.get(info.annotation, str)  # type: ignore[arg-type]


def build_parser(cores: int | None = None) -> argparse.ArgumentParser:
    """The ``voicefleet-server`` argument parser; its help lists every env var and default."""
    cores = available_cores() if cores is None else cores
    parser = argparse.ArgumentParser(
        prog="voicefleet-server",
        description=(
            "VoiceFleet inference server: one TTS voice over HTTP (OpenAI /v1/audio/speech, "
            "GPT-SoVITS-compatible /tts, /healthz, /readyz, /metrics). Every flag can also be "
            "set by the environment variable shown; a flag wins over its variable."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Drain: on SIGTERM or SIGINT /readyz turns 503 at once, new requests get 503, "
        "accepted ones finish within the drain grace, then the process exits 0. "
        "A model that fails to load exits 1; with $VOICEFLEET_TERMINATION_MESSAGE_PATH set "
        "(the operator sets /dev/termination-log), the reason is also written there as one "
        "line, which Kubernetes shows as the container's termination message.",
    )
    threads = max(1, cores)
    add_flags(
        parser,
        Settings,
        env_names=env_names,
        format_default=lambda text: text.format(threads=threads, cores=cores),
    )
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cores: int | None = None,
) -> Settings:
    """Settings from flags, then environment, then defaults; raises :class:`SettingsError`.

    ``--help`` exits through argparse as usual. ``cores`` overrides detection (tests).
    """
    cores = available_cores() if cores is None else cores
    env = os.environ if environ is None else environ
    args = vars(build_parser(cores).parse_args(argv))
    values: dict[str, Any] = {"cores": cores}
    errors: list[str] = []
    for field, info in Settings.model_fields.items():
        cli = spec_of(info)
        if cli.get("hidden"):
            continue
        raw, source = args.get(field), cli.get("flags", (option_name(field),))[0]
        if raw is None:
            for name in env_names(field):
                if env.get(name, "") != "":
                    raw, source = env[name], name
                    break
        if raw is None:
            continue
        try:
            values[field] = _parser_of(info)(str(raw))
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
    if errors:
        raise SettingsError("; ".join(errors))
    return Settings.from_values(values)
