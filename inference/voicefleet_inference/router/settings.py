"""Every setting of ``voicefleet-router``: one typed field, one flag, one env variable.

:class:`RouterSettings` is a pydantic-settings model: each field reads
``VOICEFLEET_ROUTER_<FIELD>`` from the environment, and :func:`load_settings` adds a
``--field-name`` flag for each, generated from the same model (with the field's docstring as
its help, :mod:`voicefleet_api.flags`), so the two can never drift.
Precedence: flag, then environment, then the default. List fields take a comma-separated
string from the environment and repeatable or comma-separated flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voicefleet_api.flags import add_flags, flag, given, option_name

__all__ = [
    "ENV_PREFIX",
    "LOG_LEVELS",
    "Policy",
    "RouterSettings",
    "SettingsError",
    "build_parser",
    "load_settings",
]

ENV_PREFIX: Final = "VOICEFLEET_ROUTER_"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class Policy(StrEnum):
    """How a pod is chosen (see :mod:`.choice`); only ``jsq-work`` is meant for production,
    the others exist so the benchmark can compare them through the same router."""

    JSQ_WORK = "jsq-work"
    LEAST_REQUEST = "least-request"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


class SettingsError(ValueError):
    """A setting has a value the router cannot run with; the message names the variable."""


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        out: list[str] = []
        for item in value:
            out.extend(p.strip() for p in str(item).split(",") if p.strip())
        return out
    return value


class RouterSettings(BaseSettings):
    """The resolved configuration of one router process (validated on construction)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port (contract: 8080)."""
    namespace: str = Field(default="default", min_length=1)
    """The router's namespace: a bare ``model`` name resolves to a voice here."""
    watch_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra=flag(kind="repeat")
    )
    """Namespaces whose voices the router serves; empty: only ``namespace``; ``*``: all."""
    kubeconfig: Path | None = None
    """Kubeconfig file; unset: the in-cluster ServiceAccount, else ``~/.kube/config``."""
    static_upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list, json_schema_extra=flag(kind="repeat")
    )
    """Without Kubernetes (development, benchmarks): ``[namespace/]name=http://host:port``
    entries, one per pod, ``#model`` appended when the pods' model is not ``name``; no
    watch is started."""
    policy: Policy = Policy.JSQ_WORK
    """Pod choice: ``jsq-work`` (join the shortest queue of estimated work-seconds)."""
    poll_interval_s: float = Field(default=0.1, ge=0.02, le=5.0)
    """After a failed ask of a pod's ``/load``, how long before the next one."""
    poll_after_s: float = Field(default=0.5, gt=0.0, le=60.0)
    """A pod that sent this router no answer (with its load header) for this long is
    asked for its ``/load``; pods that answer requests often are never asked."""
    load_wait_s: float = Field(default=10.0, ge=0.0, le=30.0)
    """How long a pod may hold the router's ``/load?wait=`` when its load does not change
    (it answers at once when it does): an idle pod costs one exchange per this many
    seconds, and a pod that stops answering is taken for silent this long plus
    ``stale_after_s`` after its last answer. 0: ask every ``poll_after_s`` instead."""
    stale_after_s: float = Field(default=1.0, gt=0.0, le=60.0)
    """A load report older than this is ignored: the pod is silent, its load unknown, and
    other pods are preferred to it."""
    sample_above: int = Field(default=8, ge=2, le=10_000)
    """With more eligible pods than this, compare two at random (power of two choices)."""
    max_attempts: int = Field(default=3, ge=1, le=10)
    """Pods tried for one request before giving up (only while nothing reached the client)."""
    max_held_per_voice: int = Field(default=100, ge=0, le=100_000)
    """Requests held per voice while it has no ready pod; beyond it, 503 at once."""
    max_held_bytes_per_voice: int = Field(default=8 << 20, ge=0, le=1 << 34)
    """Bytes of request bodies held per voice (a speech request is a few KiB); beyond
    it, 503 with Retry-After at once."""
    max_held_bytes: int = Field(default=64 << 20, ge=0, le=1 << 36)
    """Bytes of request bodies held over all voices: the router's memory bound for them."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest request body; a longer one (chunked too) is refused with 413 as soon as it
    passes this, without reading the rest."""
    max_buffered_body_bytes: int = Field(default=64 << 20, ge=1 << 20, le=1 << 36)
    """Bytes of request bodies in memory at once over all requests (being read, held or
    sent on); past it a request gets 503 + Retry-After before its body is read."""
    body_timeout_s: float = Field(default=15.0, gt=0.0, le=600.0)
    """Longest time a client may take to send its request body (slow senders get 408)."""
    max_connections: int = Field(default=0, ge=0, le=1_000_000)
    """Open client connections at most (0: half the descriptor limit). Beyond it a new
    connection closes the one that has waited longest for a request head."""
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    """Time a client has to send a request head (slow-loris connections are closed)."""
    keep_alive_timeout_s: float = Field(default=75.0, gt=0.0, le=3600.0)
    """Idle time allowed between requests on one connection; longer than load balancers'
    idle timeouts, so that their side closes first and no request meets a closing socket."""
    max_concurrent_requests: int = Field(default=10_000, ge=0, le=1_000_000)
    """Requests in progress at most (held ones included); beyond it 503 + Retry-After
    (probes and metrics exempt; 0: no limit)."""
    cold_start_timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0)
    """How long a request is held for a voice that does not say (static upstreams)."""
    connect_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)
    """Longest wait to open a connection to a pod before another pod is tried."""
    upstream_timeout_s: float = Field(default=300.0, gt=0.0, le=3600.0)
    """Longest wait for a pod's next bytes (its own request timeout is shorter)."""
    auth_token: SecretStr | None = None
    """Bearer token required on /v1/ and /voices/ (e.g. from a Secret through the env)."""
    auth_token_file: Path | None = None
    """File holding the bearer token (a mounted Secret); read once at start."""
    metrics_token: SecretStr | None = None
    """Bearer token required on /metrics (the operator's autoscaler and Prometheus present
    it); unset: /metrics is open. Independent of auth_token: scraping is not calling."""
    pod_token_key: SecretStr | None = None
    """Key of the voice pods' bearer tokens (the chart's ``voiceAuth`` Secret): each request
    to a pod carries that voice's token, derived from it (``voicefleet_api.podauth``).
    Unset: pods are called without one."""
    metrics_token_file: Path | None = None
    """File holding the /metrics token (the chart's generated Secret); read once at start."""
    log_level: str = "info"
    """One of debug, info, warning, error."""

    @field_validator("watch_namespaces", "static_upstreams", mode="before")
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        return _split(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _one_token_source(self) -> RouterSettings:
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError("set auth_token or auth_token_file, not both")
        if self.metrics_token is not None and self.metrics_token_file is not None:
            raise ValueError("set metrics_token or metrics_token_file, not both")
        if self.poll_after_s >= self.stale_after_s:
            raise ValueError(
                "poll_after_s must be below stale_after_s (a pod is asked before it goes silent)"
            )
        return self

    @property
    def namespaces(self) -> tuple[str, ...] | None:
        """Namespaces to watch; ``None`` means all of them."""
        if "*" in self.watch_namespaces:
            return None
        return tuple(dict.fromkeys(self.watch_namespaces or [self.namespace]))

    def token(self) -> str | None:
        """The bearer token clients must send, or ``None`` (no auth). Reads the file."""
        return _read_token(self.auth_token, self.auth_token_file, "AUTH_TOKEN_FILE")

    def scrape_token(self) -> str | None:
        """The bearer token ``/metrics`` requires, or ``None`` (open). Reads the file."""
        return _read_token(self.metrics_token, self.metrics_token_file, "METRICS_TOKEN_FILE")

    def summary(self) -> str:
        where = (
            "static upstreams"
            if self.static_upstreams
            else ("all namespaces" if self.namespaces is None else ",".join(self.namespaces or ()))
        )
        return (
            f"namespace={self.namespace} watching={where} policy={self.policy.value} "
            f"poll={self.poll_interval_s * 1000:g}ms after {self.poll_after_s:g}s "
            f"load-wait={self.load_wait_s:g}s "
            f"stale={self.stale_after_s:g}s "
            f"attempts={self.max_attempts} held/voice={self.max_held_per_voice} "
            f"auth={'on' if self.auth_token or self.auth_token_file else 'off'} "
            f"metrics-auth={'on' if self.metrics_token or self.metrics_token_file else 'off'}"
        )


def _read_token(value: SecretStr | None, path: Path | None, variable: str) -> str | None:
    if value is not None:
        return value.get_secret_value() or None
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{ENV_PREFIX}{variable}: cannot read {path}: {exc}") from exc
    if not text:
        raise SettingsError(f"{ENV_PREFIX}{variable}: {path} is empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    """``voicefleet-router``'s flags, one per :class:`RouterSettings` field."""
    parser = argparse.ArgumentParser(
        prog="voicefleet-router",
        description=(
            "VoiceFleet router: one OpenAI-compatible endpoint for every TTSVoice, choosing "
            "the pod with the least queued work. Every flag can also be set by the "
            f"environment variable {ENV_PREFIX}<NAME>; a flag wins over its variable."
        ),
    )
    add_flags(parser, RouterSettings, env_names=lambda name: (f"{ENV_PREFIX}{name.upper()}",))
    return parser


def load_settings(argv: Sequence[str] | None = None) -> RouterSettings:
    """Flags over ``VOICEFLEET_ROUTER_*`` over defaults; raises :class:`SettingsError`."""
    args = given(build_parser().parse_args(argv))
    try:
        return RouterSettings(**args)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else ""
        where = f"{option_name(name)} / {ENV_PREFIX}{name.upper()}" if name else "settings"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
