"""The operator's configuration: every command-line flag, typed, in one place.

`parse_args` is the only parser; the CLI calls it, tests call it, nothing
parses at import. A bad flag raises `UsageError` (the CLI turns it into exit
code 2 with the message), so tests can assert the message without a process.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HEALTH_PORT = 8081
DEFAULT_METRICS_PORT = 8082
DEFAULT_PEERING = "voicefleet-operator"
DEFAULT_WORKERS = 32
DEFAULT_AUTOSCALE_INTERVAL = 1.0
DEFAULT_ROUTER_METRICS_PORT = 8080
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class UsageError(ValueError):
    """The command line asks for something that cannot work; the message says what to fix."""


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know before it starts.

    `namespaces` empty means cluster-wide (`--all-namespaces`); kopf wants one
    or the other said explicitly. `health_port`/`metrics_port` None disables.
    `peering` None with `standalone` False means kopf's auto-detection: peer
    through `DEFAULT_PEERING` when the peering CRD is installed.
    """

    namespaces: tuple[str, ...] = ()
    health_port: int | None = DEFAULT_HEALTH_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT
    peering: str | None = None
    standalone: bool = False
    priority: int = 0
    default_image: str | None = None
    kubeconfig: Path | None = None
    workers: int = DEFAULT_WORKERS
    verbose: bool = False
    autoscale_interval: float = DEFAULT_AUTOSCALE_INTERVAL
    """Seconds between the autoscaler's scrapes of each voice; 0 turns it off."""
    router_metrics_urls: tuple[str, ...] = ()
    router_pod_selector: str | None = None
    router_metrics_port: int = DEFAULT_ROUTER_METRICS_PORT

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def peering_name(self) -> str:
        return self.peering or DEFAULT_PEERING


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so callers choose."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="voicefleet-operator",
        description=(
            "Reconcile TTSVoice objects (voicefleet.io/v1alpha1) into Deployments, "
            "Services and PodDisruptionBudgets. Exit codes: 0 stopped by SIGTERM/SIGINT, "
            "1 could not start or crashed, 2 bad command line."
        ),
    )
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for several; kopf globs like 'team-*' work)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch TTSVoices in every namespace"
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=DEFAULT_HEALTH_PORT,
        metavar="PORT",
        help="liveness endpoint http://0.0.0.0:PORT/healthz "
        f"(0 disables; default {DEFAULT_HEALTH_PORT})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help=f"Prometheus /metrics on 0.0.0.0:PORT (0 disables; default {DEFAULT_METRICS_PORT})",
    )
    peer = p.add_mutually_exclusive_group()
    peer.add_argument(
        "--peering",
        metavar="NAME",
        help="peer with other replicas through the kopf peering object NAME (mandatory: "
        "fail if the peering CRD is missing; the object is created if absent)",
    )
    peer.add_argument(
        "--standalone",
        action="store_true",
        help="never peer: for a single replica or a developer's laptop",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live replica acts, the others pause "
        "(default: random, so two replicas never tie: kopf pauses all tied peers)",
    )
    p.add_argument(
        "--default-image", metavar="IMAGE", help="image for TTSVoices that leave spec.image unset"
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="kubeconfig to use (default: in-cluster credentials, else $KUBECONFIG)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"threads running reconciles in parallel (default {DEFAULT_WORKERS})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--autoscale-interval",
        type=float,
        default=DEFAULT_AUTOSCALE_INTERVAL,
        metavar="SECONDS",
        help="how often the autoscaler scrapes each voice's pods and decides "
        f"(default {DEFAULT_AUTOSCALE_INTERVAL:g}; 0 turns the autoscaler off)",
    )
    p.add_argument(
        "--router-metrics-url",
        action="append",
        dest="router_metrics_urls",
        metavar="URL",
        help="a router's /metrics (repeat for several): held requests per voice "
        "(voicefleet_router_pending_requests) scale a voice from zero",
    )
    p.add_argument(
        "--router-pod-selector",
        metavar="K=V[,K=V]",
        help="find router pods by these labels instead (or as well) and scrape each one's "
        "/metrics on --router-metrics-port",
    )
    p.add_argument(
        "--router-metrics-port",
        type=int,
        default=DEFAULT_ROUTER_METRICS_PORT,
        metavar="PORT",
        help=f"port of the router pods' /metrics (default {DEFAULT_ROUTER_METRICS_PORT})",
    )
    return p


def _port(value: int, flag: str) -> int | None:
    if value == 0:
        return None
    if not 1 <= value <= 65535:
        raise UsageError(f"{flag} must be 0 (off) or a port 1..65535, got {value}")
    return value


def parse_args(argv: Sequence[str]) -> OperatorConfig:
    """Turn argv into an `OperatorConfig`; raise `UsageError` with what to fix."""
    ns = build_parser().parse_args(list(argv))
    namespaces: tuple[str, ...] = tuple(dict.fromkeys(ns.namespaces or ()))
    for name in namespaces:
        if "*" not in name and not _DNS_LABEL.match(name):
            raise UsageError(f"--namespace {name!r} is not a valid namespace name")
    health = _port(ns.health_port, "--health-port")
    metrics = _port(ns.metrics_port, "--metrics-port")
    if health is not None and health == metrics:
        raise UsageError(f"--health-port and --metrics-port are both {health}")
    if ns.peering is not None and not _DNS_SUBDOMAIN.match(ns.peering):
        raise UsageError(f"--peering {ns.peering!r} is not a valid object name")
    if ns.workers < 1 or ns.workers > 256:
        raise UsageError(f"--workers must be 1..256, got {ns.workers}")
    if ns.default_image is not None and not ns.default_image.strip():
        raise UsageError("--default-image must not be empty")
    if not (ns.autoscale_interval == 0 or 0.1 <= ns.autoscale_interval <= 60):
        raise UsageError(
            f"--autoscale-interval must be 0 (off) or 0.1..60 seconds, got {ns.autoscale_interval}"
        )
    urls = tuple(dict.fromkeys(ns.router_metrics_urls or ()))
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--router-metrics-url {url!r} must be an http(s) URL")
    selector = ns.router_pod_selector
    if selector is not None and not all(
        "=" in part and part.split("=", 1)[0].strip() for part in selector.split(",")
    ):
        raise UsageError(f"--router-pod-selector {selector!r}: expected key=value[,key=value]")
    if not 1 <= ns.router_metrics_port <= 65535:
        raise UsageError(f"--router-metrics-port must be 1..65535, got {ns.router_metrics_port}")
    priority = ns.priority if ns.priority is not None else random.randint(1, 1_000_000)
    return OperatorConfig(
        namespaces=namespaces,
        health_port=health,
        metrics_port=metrics,
        peering=ns.peering,
        standalone=ns.standalone,
        priority=priority,
        default_image=ns.default_image,
        kubeconfig=ns.kubeconfig,
        workers=ns.workers,
        verbose=ns.verbose,
        autoscale_interval=ns.autoscale_interval,
        router_metrics_urls=urls,
        router_pod_selector=selector,
        router_metrics_port=ns.router_metrics_port,
    )
