"""TTSVoice manifests for the tests and benchmarks that run voices on the local cluster.

One builder, so every voice a test or a benchmark applies names the bundled model, the
API version and the simulated engine's footprint the same way, and a change to the CRD
is made once here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["simulated_voice", "voice_manifest"]


def voice_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A TTSVoice ``name`` with ``spec`` (camelCase keys; the bundled voice unless ``model``)."""
    return {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": name},
        "spec": {"model": {"bundled": "en_US-joe-medium"}, **spec},
    }


def simulated_voice(name: str, **spec: Any) -> dict[str, Any]:
    """A voice on the ``simulated`` engine (the real voice's cost model, no model loaded,
    so replicas add capacity even on two cores), in pods of 100m CPU and 256Mi."""
    return voice_manifest(
        name, engine="simulated", resources={"cpu": "100m", "memory": "256Mi"}, **spec
    )
