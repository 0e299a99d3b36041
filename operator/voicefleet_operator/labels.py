"""Names the operator stamps on what it owns, and the selectors that find them again.

Every key here is read by something outside the operator: the Deployment selector
(immutable once created, so it must never change), the router and the autoscaler
(which list pods by :data:`VOICE_LABEL`), Prometheus (``prometheus.io/*`` pod
annotations) and ``kubectl get -l``. Keeping them in one module makes a rename a
one-line, reviewable change.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "APP_NAME",
    "FIELD_MANAGER",
    "INSTANCE_LABEL",
    "KIND",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "NAME_LABEL",
    "PLURAL",
    "PROMETHEUS_ANNOTATIONS",
    "RESERVED_LABEL_PREFIXES",
    "VOICE_GENERATION_ANNOTATION",
    "VOICE_LABEL",
    "is_reserved_label",
    "managed_by_selector",
    "object_labels",
    "selector_labels",
    "selector_string",
]

API_GROUP: Final = "voicefleet.io"
API_VERSION: Final = "v1alpha1"
KIND: Final = "TTSVoice"
PLURAL: Final = "ttsvoices"

VOICE_LABEL: Final = "voicefleet.io/voice"
"""The one selector label: Deployment selector, Service selector, PDB selector, router."""
MANAGED_BY: Final = "voicefleet-operator"
"""Value of ``app.kubernetes.io/managed-by`` on everything the operator creates."""
FIELD_MANAGER: Final = "voicefleet-operator"
"""Server-side apply field manager: the operator owns exactly the fields it sets."""

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
APP_NAME: Final = "voicefleet-inference"

VOICE_GENERATION_ANNOTATION: Final = "voicefleet.io/voice-generation"
"""On the Deployment's own metadata (never the pod template, so it cannot cause a
rollout): the TTSVoice ``metadata.generation`` it was built from. Status derivation uses
it to tell "the Deployment is up to date" from "the operator has not applied yet"."""

RESERVED_LABEL_PREFIXES: Final = ("voicefleet.io/", "app.kubernetes.io/")
"""User pod labels under these prefixes are refused: they would shadow the operator's."""

PROMETHEUS_ANNOTATIONS: Final[dict[str, str]] = {
    "prometheus.io/path": "/metrics",
    "prometheus.io/port": "8080",
    "prometheus.io/scrape": "true",
}
"""Pod annotations of the common Prometheus pod-discovery convention (scrape the server)."""


def selector_labels(voice_name: str) -> dict[str, str]:
    """The selector of a voice's pods: a fresh dict, ``{"voicefleet.io/voice": name}``.

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


def managed_by_selector() -> str:
    """Label selector of every object this operator manages (for watches and listing)."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def is_reserved_label(key: str) -> bool:
    """Whether a user-supplied pod label key falls under a prefix the operator owns."""
    return key.startswith(RESERVED_LABEL_PREFIXES)
