"""Labels and annotations on what the operator creates, and the selectors that find it.

Read outside the operator: the Deployment selector (immutable once created, so it must
never change), the router and the autoscaler (pods by :data:`VOICE_LABEL`), Prometheus
(``prometheus.io/*`` pod annotations) and ``kubectl get -l``.
"""

from __future__ import annotations

from typing import Final

VOICE_LABEL: Final = "voicefleet.io/voice"
"""The one selector label: Deployment, Service and PDB selectors, router, autoscaler."""
MANAGED_BY: Final = "voicefleet-operator"
"""Value of ``app.kubernetes.io/managed-by`` on everything the operator creates."""

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
APP_NAME: Final = "voicefleet-inference"

VOICE_GENERATION_ANNOTATION: Final = "voicefleet.io/voice-generation"
"""On the Deployment's own metadata (never the pod template, so it cannot cause a
rollout): the TTSVoice ``metadata.generation`` it was built from."""

POD_DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
"""Kubernetes' own hint to the ReplicaSet controller: lower cost is deleted first."""

RESERVED_LABEL_PREFIXES: Final = ("voicefleet.io/", "app.kubernetes.io/")
"""User pod labels under these prefixes are refused: they would shadow the operator's."""

SERVER_PORT: Final = 8080
"""The inference server's port inside every pod (contract: ``$PORT``, 8080)."""

PROMETHEUS_ANNOTATIONS: Final[dict[str, str]] = {
    "prometheus.io/path": "/metrics",
    "prometheus.io/port": str(SERVER_PORT),
    "prometheus.io/scrape": "true",
}
"""Pod annotations of the common Prometheus pod-discovery convention (scrape the server)."""


VOICE_POD_SELECTOR: Final = f"{MANAGED_BY_LABEL}={MANAGED_BY},{VOICE_LABEL}"
"""The label selector of every voice pod the operator made (any voice): what the router
lists and watches, so it never receives other pods' specs (their env included)."""


def selector_labels(voice_name: str) -> dict[str, str]:
    """The selector of a voice's pods: a fresh ``{"voicefleet.io/voice": name}``.

    Deliberately one label: a Deployment's selector is immutable, so it must hold only
    what can never change for the life of the voice.
    """
    return {VOICE_LABEL: voice_name}


def selector_string(voice_name: str) -> str:
    """The same selector as a label-selector string (``.status.selector``, ``kubectl -l``)."""
    return f"{VOICE_LABEL}={voice_name}"


def object_labels(voice_name: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io/*`` labels plus the selector label.

    Put on the Deployment, Service, PDB and every pod, so that ``kubectl get all -l
    app.kubernetes.io/instance=<voice>`` shows everything one voice became.
    """
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: voice_name,
        MANAGED_BY_LABEL: MANAGED_BY,
        VOICE_LABEL: voice_name,
    }


def is_reserved_label(key: str) -> bool:
    """Whether a user-supplied pod label key falls under a prefix the operator owns."""
    return key.startswith(RESERVED_LABEL_PREFIXES)
