"""The operator's configuration: one typed pydantic-settings model, flags over env vars.

:class:`OperatorConfig` holds every setting with its default and its check; each one can
come from a command-line flag or from ``VOICEFLEET_OPERATOR_<NAME>`` (a flag wins), so a
Helm chart may set either. The flags are generated from the model, each documented by its
field's docstring (:mod:`voicefleet_api.flags`, the same mechanism as the server's and the
router's). ``parse_args`` is the only parser; a bad value raises
:class:`UsageError` (the CLI turns it into exit code 2 with the message), so tests can
assert the message without a process. Nothing parses at import.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicefleet_api.flags import add_flags, by_annotation, flag, given
from voicefleet_operator.spec import DEFAULT_IMAGE, GPU_IMAGE_SUFFIX

__all__ = [
    "DEFAULT_AUTOSCALE_INTERVAL",
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PEERING",
    "DEFAULT_ROUTER_METRICS_PORT",
    "DEFAULT_WORKERS",
    "ENV_PREFIX",
    "OperatorConfig",
    "UsageError",
    "build_parser",
    "parse_args",
]

DEFAULT_HEALTH_PORT: Final = 8081
DEFAULT_METRICS_PORT: Final = 8082
DEFAULT_PEERING: Final = "voicefleet-operator"
DEFAULT_WORKERS: Final = 32
DEFAULT_AUTOSCALE_INTERVAL: Final = 1.0
DEFAULT_ROUTER_METRICS_PORT: Final = 8080
ENV_PREFIX: Final = "VOICEFLEET_OPERATOR_"
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class UsageError(ValueError):
    """The command line asks for something that cannot work; the message says what to fix."""


def _usage(message: str) -> PydanticCustomError:
    return PydanticCustomError("usage", "{message}", {"message": message})


def _port(value: object, flag: str) -> int | None:
    if value is None:
        return None
    port = int(str(value))
    if port == 0:
        return None
    if not 1 <= port <= 65535:
        raise _usage(f"{flag} must be 0 (off) or a port 1..65535, got {port}")
    return port


class OperatorConfig(BaseSettings):
    """Everything the operator needs to know before it starts.

    ``namespaces`` empty means cluster-wide (``--all-namespaces``); kopf wants one or the
    other said explicitly. ``health_port``/``metrics_port`` None (flag 0) disables.
    ``peering`` None with ``standalone`` False means kopf's auto-detection: peer through
    :data:`DEFAULT_PEERING` when the peering CRD is installed. ``priority`` defaults to a
    random one, so two replicas never tie (kopf pauses all tied peers).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, env_ignore_empty=True, use_attribute_docstrings=True
    )

    namespaces: tuple[str, ...] = Field(
        default=(),
        json_schema_extra=flag(
            "-n", "--namespace", metavar="NS", kind="repeat", group="scope", default_text="none"
        ),
    )
    """Watch this namespace (repeat for several; kopf globs like 'team-*' work)."""
    health_port: int | None = Field(
        default=DEFAULT_HEALTH_PORT, json_schema_extra=flag(metavar="PORT")
    )
    """Liveness endpoint http://0.0.0.0:PORT/healthz (0 disables)."""
    metrics_port: int | None = Field(
        default=DEFAULT_METRICS_PORT, json_schema_extra=flag(metavar="PORT")
    )
    """Prometheus /metrics on 0.0.0.0:PORT (0 disables)."""
    peering: str | None = Field(default=None, json_schema_extra=flag(metavar="NAME", group="peer"))
    """Peer with other replicas through the kopf peering object NAME (mandatory: fail if the
    peering CRD is missing; the object is created if absent). Unset: peer through
    ``voicefleet-operator`` when the peering CRD is installed."""
    standalone: bool = Field(default=False, json_schema_extra=flag(kind="switch", group="peer"))
    """Never peer: for a single replica or a developer's laptop."""
    priority: int = Field(
        default_factory=lambda: random.randint(1, 1_000_000),
        json_schema_extra=flag(default_text="random, so two replicas never tie"),
    )
    """Peering priority; the highest live replica acts, the others pause (kopf pauses all
    tied peers)."""
    default_image: str = Field(default=DEFAULT_IMAGE, json_schema_extra=flag(metavar="IMAGE"))
    """Image for TTSVoices that leave spec.image unset (the server of this operator's
    version)."""
    default_gpu_image: str | None = Field(
        default=None,
        json_schema_extra=flag(
            metavar="IMAGE", default_text=f"the --default-image with {GPU_IMAGE_SUFFIX} appended"
        ),
    )
    """Image instead for such TTSVoices whose pods ask for GPUs (resources.gpus > 0): the
    CUDA build with torch, for vits-torch."""
    model_cache_dir: str | None = Field(default=None, json_schema_extra=flag(metavar="PATH"))
    """Node directory (hostPath) where voices with spec.model.url keep their downloads by
    sha256, so later replicas on a node skip the download; it must be writable by uid 65532.
    Unset: each pod downloads into its own emptyDir."""
    kubeconfig: Path | None = Field(default=None, json_schema_extra=flag(metavar="PATH"))
    """Kubeconfig to use (unset: in-cluster credentials, else $KUBECONFIG)."""
    workers: int = DEFAULT_WORKERS
    """Threads running reconciles in parallel (1..256)."""
    verbose: bool = Field(default=False, json_schema_extra=flag("-v", "--verbose", kind="switch"))
    """Debug logging."""
    autoscale_interval: float = Field(
        default=DEFAULT_AUTOSCALE_INTERVAL, json_schema_extra=flag(metavar="SECONDS")
    )
    """How often the autoscaler scrapes each voice's pods and decides (0 turns it off)."""
    router_metrics_urls: tuple[str, ...] = Field(
        default=(), json_schema_extra=flag("--router-metrics-url", metavar="URL", kind="repeat")
    )
    """A router's /metrics (repeat for several): held requests per voice
    (voicefleet_router_pending_requests) scale a voice from zero."""
    router_pod_selector: str | None = Field(
        default=None, json_schema_extra=flag(metavar="K=V[,K=V]")
    )
    """Find router pods by these labels instead (or as well) and scrape each one's /metrics on
    --router-metrics-port; only pods in --router-namespace count."""
    router_namespace: str | None = Field(default=None, json_schema_extra=flag(metavar="NS"))
    """The one namespace whose pods --router-pod-selector may match (the chart's own): a pod
    elsewhere that copies the routers' labels is never read, so it cannot scale voices."""
    router_token: SecretStr | None = Field(default=None, json_schema_extra=flag(metavar="TOKEN"))
    """Bearer token the routers require on /metrics (the chart sets it from its generated
    Secret through VOICEFLEET_OPERATOR_ROUTER_TOKEN). Unset: no Authorization header."""
    router_token_file: Path | None = Field(default=None, json_schema_extra=flag(metavar="PATH"))
    """Or a file holding it (a mounted Secret), read at every scrape, so a rotated Secret is
    picked up."""
    router_metrics_port: int = Field(
        default=DEFAULT_ROUTER_METRICS_PORT, json_schema_extra=flag(metavar="PORT")
    )
    """Port of the router pods' /metrics."""
    pod_token_key: SecretStr | None = Field(default=None, json_schema_extra=flag(metavar="KEY"))
    """Key of the voice pods' bearer tokens (the chart sets it from its Secret through
    VOICEFLEET_OPERATOR_POD_TOKEN_KEY): each voice's pods require their own token, derived
    from it, on /v1/ and /tts; the router derives the same. Unset: pods require none."""
    network_policy_from: str | None = Field(default=None, json_schema_extra=flag(metavar="JSON"))
    """Write a NetworkPolicy next to each voice's Deployment: its pods accept connections
    (on the server port) only from these peers, a JSON list of NetworkPolicyPeer objects
    (the chart passes its router, its operator and networkPolicy.voiceIngressFrom). Unset:
    no policy is written."""

    @field_validator("namespaces", mode="after")
    @classmethod
    def _namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if "*" not in name and not _DNS_LABEL.match(name):
                raise _usage(f"--namespace {name!r} is not a valid namespace name")
        return tuple(dict.fromkeys(value))

    @field_validator("health_port", mode="before")
    @classmethod
    def _health_port(cls, value: object) -> int | None:
        return _port(value, "--health-port")

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, value: object) -> int | None:
        return _port(value, "--metrics-port")

    @field_validator("peering", mode="after")
    @classmethod
    def _peering(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.match(value):
            raise _usage(f"--peering {value!r} is not a valid object name")
        return value

    @field_validator("workers", mode="after")
    @classmethod
    def _workers(cls, value: int) -> int:
        if not 1 <= value <= 256:
            raise _usage(f"--workers must be 1..256, got {value}")
        return value

    @property
    def gpu_image(self) -> str:
        """Image for GPU voices without ``spec.image``: the flag, else the CPU one + ``-cuda``."""
        return self.default_gpu_image or f"{self.default_image}{GPU_IMAGE_SUFFIX}"

    @field_validator("default_image", "default_gpu_image", mode="after")
    @classmethod
    def _default_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise _usage(f"--{str(info.field_name).replace('_', '-')} must not be empty")
        return value

    @field_validator("model_cache_dir", mode="after")
    @classmethod
    def _model_cache_dir(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "/../" in f"{value}/"):
            raise _usage(f"--model-cache-dir must be an absolute path without '..', got {value!r}")
        return value

    @field_validator("autoscale_interval", mode="after")
    @classmethod
    def _autoscale_interval(cls, value: float) -> float:
        if not (value == 0 or 0.1 <= value <= 60):
            raise _usage(f"--autoscale-interval must be 0 (off) or 0.1..60 seconds, got {value}")
        return value

    @field_validator("router_metrics_urls", mode="after")
    @classmethod
    def _router_metrics_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise _usage(f"--router-metrics-url {url!r} must be an http(s) URL")
        return tuple(dict.fromkeys(value))

    @field_validator("router_pod_selector", mode="after")
    @classmethod
    def _router_pod_selector(cls, value: str | None) -> str | None:
        if value is not None and not all(
            "=" in part and part.split("=", 1)[0].strip() for part in value.split(",")
        ):
            raise _usage(f"--router-pod-selector {value!r}: expected key=value[,key=value]")
        return value

    @field_validator("router_namespace", mode="after")
    @classmethod
    def _router_namespace(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.match(value):
            raise _usage(f"--router-namespace {value!r} is not a valid namespace name")
        return value

    @field_validator("router_metrics_port", mode="after")
    @classmethod
    def _router_metrics_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise _usage(f"--router-metrics-port must be 1..65535, got {value}")
        return value

    @field_validator("network_policy_from", mode="after")
    @classmethod
    def _network_policy_from(cls, value: str | None) -> str | None:
        if value is not None:
            _peers(value)
        return value

    @property
    def network_policy_peers(self) -> tuple[dict[str, Any], ...] | None:
        """``--network-policy-from`` parsed (checked at startup), or None: no policies."""
        return None if self.network_policy_from is None else _peers(self.network_policy_from)

    @model_validator(mode="after")
    def _distinct_ports(self) -> OperatorConfig:
        if self.health_port is not None and self.health_port == self.metrics_port:
            raise _usage(f"--health-port and --metrics-port are both {self.health_port}")
        if self.peering is not None and self.standalone:
            raise _usage("--peering and --standalone exclude each other")
        if self.router_token is not None and self.router_token_file is not None:
            raise _usage("--router-token and --router-token-file exclude each other")
        if self.router_pod_selector and self.router_namespace is None:
            raise _usage(
                "--router-pod-selector needs --router-namespace: router pods are trusted in "
                "one namespace only, never by their labels across namespaces"
            )
        ns = self.router_namespace
        if self.router_pod_selector and ns and self.namespaces and not _watched(ns, self):
            raise _usage(
                f"--router-namespace {ns} is not watched: add --namespace {ns} "
                "(the operator sees pods only in the namespaces it watches)"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def exact_namespaces(self) -> bool:
        """Named namespaces without globs: kopf need not list or watch namespaces or CRDs
        (what a Role-only install cannot do), so its scanning is turned off."""
        return bool(self.namespaces) and not any("*" in ns for ns in self.namespaces)

    @property
    def peering_name(self) -> str:
        return self.peering or DEFAULT_PEERING


_PEER_KEYS: Final = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


def _peers(text: str) -> tuple[dict[str, Any], ...]:
    """The NetworkPolicyPeer list of ``--network-policy-from``, shape-checked.

    An empty list is refused: a policy with no peers isolates the pods from the router
    too, which is never what turning policies on means.
    """
    try:
        peers = json.loads(text)
    except ValueError as exc:
        raise _usage(f"--network-policy-from is not JSON: {exc}") from None
    if not isinstance(peers, list) or not peers:
        raise _usage("--network-policy-from must be a non-empty JSON list of NetworkPolicyPeer")
    for peer in peers:
        if not isinstance(peer, dict) or not peer or not set(peer) <= _PEER_KEYS:
            raise _usage(
                f"--network-policy-from: {json.dumps(peer)[:200]} is not a NetworkPolicyPeer "
                f"(an object of {', '.join(sorted(_PEER_KEYS))})"
            )
    return tuple(peers)


def _watched(namespace: str, config: OperatorConfig) -> bool:
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in config.namespaces)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so callers choose."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _env_names(field: str) -> tuple[str, ...]:
    # -n/-A choose the scope on the command line only (kopf wants it said explicitly).
    return () if field == "namespaces" else (f"{ENV_PREFIX}{field.upper()}",)


def build_parser() -> argparse.ArgumentParser:
    """The flags of :class:`OperatorConfig`; unset flags stay absent (env, then default)."""
    p = _Parser(
        prog="voicefleet-operator",
        description=(
            "Reconcile TTSVoice objects (voicefleet.io/v1alpha1) into Deployments, "
            "Services and PodDisruptionBudgets. Exit codes: 0 stopped by SIGTERM/SIGINT, "
            "1 could not start or crashed, 2 bad command line. Every flag but -n/-A can "
            f"also be set by the environment variable {ENV_PREFIX}<FLAG_NAME>; a flag wins."
        ),
        argument_default=argparse.SUPPRESS,
    )
    scope = p.add_mutually_exclusive_group(required=True)
    groups = {"scope": scope, "peer": p.add_mutually_exclusive_group()}
    add_flags(p, OperatorConfig, env_names=_env_names, groups=groups, types=by_annotation)
    scope.add_argument(  # not a field: "no namespaces" is what says cluster-wide
        "-A", "--all-namespaces", action="store_true", help="watch TTSVoices in every namespace"
    )
    return p


def parse_args(argv: Sequence[str]) -> OperatorConfig:
    """Turn argv (then ``VOICEFLEET_OPERATOR_*``) into an `OperatorConfig`; raise `UsageError`."""
    flags: dict[str, Any] = given(build_parser().parse_args(list(argv)))
    flags.pop("all_namespaces", None)
    try:
        return OperatorConfig(**flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "usage":
            raise UsageError(first["msg"]) from None
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}: {first['msg']}") from None
