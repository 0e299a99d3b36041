"""The operator's view of the shared label names, plus what only the operator uses.

The label keys, selectors and annotations are a contract with the router, the autoscaler,
Prometheus and ``kubectl``, so they live in :mod:`voicefleet_api.labels`; this module
re-exports them for the operator's modules and adds the server-side apply field manager.
"""

from __future__ import annotations

from typing import Final

from voicefleet_api.labels import (
    APP_NAME,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PROMETHEUS_ANNOTATIONS,
    RESERVED_LABEL_PREFIXES,
    VOICE_GENERATION_ANNOTATION,
    VOICE_LABEL,
    is_reserved_label,
    object_labels,
    selector_labels,
    selector_string,
)

__all__ = [
    "APP_NAME",
    "FIELD_MANAGER",
    "INSTANCE_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "NAME_LABEL",
    "PROMETHEUS_ANNOTATIONS",
    "RESERVED_LABEL_PREFIXES",
    "VOICE_GENERATION_ANNOTATION",
    "VOICE_LABEL",
    "is_reserved_label",
    "object_labels",
    "selector_labels",
    "selector_string",
]

FIELD_MANAGER: Final = "voicefleet-operator"
"""Server-side apply field manager: the operator owns exactly the fields it sets."""
