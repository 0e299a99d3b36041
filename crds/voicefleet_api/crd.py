"""Identity of the TTSVoice custom resource (``crds/ttsvoices.yaml`` is the source)."""

from __future__ import annotations

from typing import Final

GROUP: Final = "voicefleet.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TTSVoice"
PLURAL: Final = "ttsvoices"
SINGULAR: Final = "ttsvoice"
SHORT_NAME: Final = "ttsv"

DEFAULT_MIN_REPLICAS: Final = 1
"""``spec.autoscaling.minReplicas`` when an object predates the CRD default (the CRD wins)."""
DEFAULT_MAX_REPLICAS: Final = 3
"""``spec.autoscaling.maxReplicas`` when an object predates the CRD default (the CRD wins)."""
