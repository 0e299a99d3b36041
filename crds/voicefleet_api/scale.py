"""The one writer of a voice's replica count: the TTSVoice ``scale`` subresource.

Everything that changes how many pods a voice runs (the autoscaler, scale from zero on a
held request, a person's tooling) calls :func:`scale_voice`; the operator's reconciler
then carries ``spec.replicas`` to the Deployment. Writing the Deployment directly would
race the reconciler, which puts it back.

The bounds come from the voice itself (``spec.autoscaling.minReplicas``/``maxReplicas``),
read in the same call, so a caller with a stale view can never push a voice out of them.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from voicefleet_api.crd import DEFAULT_MAX_REPLICAS, DEFAULT_MIN_REPLICAS, GROUP, PLURAL, VERSION

__all__ = ["ScaleError", "ScaleResult", "clamp_replicas", "replica_bounds", "scale_voice"]


class ScaleError(Exception):
    """The voice could not be read or its scale written; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """What :func:`scale_voice` did: ``previous`` → ``replicas`` (equal when unchanged)."""

    previous: int
    replicas: int
    requested: int

    @property
    def changed(self) -> bool:
        return self.previous != self.replicas

    @property
    def clamped(self) -> bool:
        return self.requested != self.replicas


def replica_bounds(voice: dict[str, Any]) -> tuple[int, int]:
    """``(minReplicas, maxReplicas)`` of a TTSVoice object, CRD defaults where absent."""
    autoscaling = (voice.get("spec") or {}).get("autoscaling") or {}
    low = int(autoscaling.get("minReplicas", DEFAULT_MIN_REPLICAS))
    high = int(autoscaling.get("maxReplicas", DEFAULT_MAX_REPLICAS))
    return low, max(low, high)


def clamp_replicas(requested: int, minimum: int, maximum: int) -> int:
    """``requested`` forced into ``minimum..maximum`` (never below 0)."""
    return max(0, minimum, min(requested, maximum))


def _error(exc: ApiException) -> ScaleError:
    message = str(exc.reason or "")
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(exc.body or "{}").get("message", message))
    return ScaleError(int(exc.status or 0), message)


def scale_voice(api: k8s_client.ApiClient, namespace: str, name: str, replicas: int) -> ScaleResult:
    """Set ``spec.replicas`` of TTSVoice ``namespace/name`` through its scale subresource.

    ``replicas`` is clamped to the voice's own bounds; nothing is written when the voice
    already has that count. The patch carries the ``resourceVersion`` that was read, so a
    concurrent writer makes this call fail with 409 instead of being silently overwritten.
    """
    custom = k8s_client.CustomObjectsApi(api)
    try:
        voice = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )
    except ApiException as exc:
        raise _error(exc) from exc
    low, high = replica_bounds(voice)
    target = clamp_replicas(replicas, low, high)
    previous = int((voice.get("spec") or {}).get("replicas", 0))
    if target == previous:
        return ScaleResult(previous=previous, replicas=target, requested=replicas)
    body = {
        "metadata": {"resourceVersion": voice["metadata"]["resourceVersion"]},
        "spec": {"replicas": target},
    }
    try:
        custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, name, body)
    except ApiException as exc:
        raise _error(exc) from exc
    return ScaleResult(previous=previous, replicas=target, requested=replicas)
