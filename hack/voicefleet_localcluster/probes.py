"""Probe specs and the threshold bookkeeping that turns probe results into verdicts.

Kept free of I/O: `ProbeTracker` only answers "is a run due?" and folds results
into a verdict with Kubernetes' semantics (initial delay, period, consecutive
success/failure thresholds), so it is tested with plain numbers for time. The
single function that performs a probe over the network is `run_probe`.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from voicefleet_localcluster.podspec import resolve_port

JsonDict = dict[str, Any]
ProbeKind = Literal["readiness", "liveness", "startup"]


@dataclass(frozen=True)
class Probe:
    """One probe, with Kubernetes' defaults filled in."""

    action: Literal["http", "tcp", "exec"]
    host: str
    port: int = 0
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def parse_probe(spec: JsonDict | None, container: JsonDict, pod_ip: str) -> Probe | None:
    """Turn a container's probe spec into a Probe aimed at the pod's IP (None when absent)."""
    if not spec:
        return None
    timing: dict[str, Any] = {
        "initial_delay": float(spec.get("initialDelaySeconds", 0)),
        "period": float(spec.get("periodSeconds", 10)),
        "timeout": float(spec.get("timeoutSeconds", 1)),
        "success_threshold": int(spec.get("successThreshold", 1)),
        "failure_threshold": int(spec.get("failureThreshold", 3)),
    }
    if "httpGet" in spec:
        action = spec["httpGet"]
        headers = tuple(
            (str(h["name"]), str(h["value"])) for h in action.get("httpHeaders", []) or []
        )
        return Probe(
            action="http",
            host=str(action.get("host") or pod_ip),
            port=resolve_port(action["port"], container),
            path=str(action.get("path", "/")),
            scheme=str(action.get("scheme", "HTTP")).lower(),
            headers=headers,
            **timing,
        )
    if "tcpSocket" in spec:
        action = spec["tcpSocket"]
        return Probe(
            action="tcp",
            host=str(action.get("host") or pod_ip),
            port=resolve_port(action["port"], container),
            **timing,
        )
    if "exec" in spec:
        command = tuple(str(c) for c in spec["exec"].get("command", []))
        return Probe(action="exec", host=pod_ip, command=command, **timing)
    raise ValueError(f"unsupported probe {sorted(spec)}")


@dataclass
class ProbeTracker:
    """Consecutive-result bookkeeping for one probe of one container run.

    Readiness starts failed (a container is not ready until a probe succeeds);
    liveness and startup start "not failed", so only `failure_threshold`
    consecutive failures condemn a container.
    """

    probe: Probe
    kind: ProbeKind
    started_at: float
    last_run: float | None = None
    successes: int = 0
    failures: int = 0
    verdict: bool = field(init=False)

    def __post_init__(self) -> None:
        self.verdict = self.kind != "readiness"
        if self.kind == "startup":
            self.verdict = False

    def due(self, now: float) -> bool:
        if now < self.started_at + self.probe.initial_delay:
            return False
        return self.last_run is None or now >= self.last_run + self.probe.period

    def record(self, ok: bool, now: float) -> bool:
        """Fold in one result; return the (possibly new) verdict."""
        self.last_run = now
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.verdict = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.verdict = False
        return self.verdict

    @property
    def failed(self) -> bool:
        """True once failure_threshold consecutive failures were seen (liveness: restart)."""
        return self.failures >= self.probe.failure_threshold


def run_probe(probe: Probe, env: Mapping[str, str] | None = None) -> bool:
    """Perform one probe. HTTP: 200-399 is success, as in the kubelet."""
    try:
        if probe.action == "http":
            url = f"{probe.scheme}://{probe.host}:{probe.port}{probe.path}"
            response = httpx.get(
                url, headers=dict(probe.headers), timeout=probe.timeout, verify=False
            )
            return 200 <= response.status_code < 400
        if probe.action == "tcp":
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True
        result = subprocess.run(
            list(probe.command),
            env=dict(env or {}),
            capture_output=True,
            timeout=probe.timeout,
            check=False,
        )
        return result.returncode == 0
    except (httpx.HTTPError, OSError, subprocess.TimeoutExpired):
        return False
