"""The shared names package: pure parts (bounds, clamping) and the import contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from voicefleet_api import crd, engines, labels
from voicefleet_api.scale import clamp_replicas, replica_bounds


@pytest.mark.parametrize(
    ("requested", "low", "high", "expected"),
    [(5, 1, 3, 3), (0, 1, 3, 1), (2, 0, 3, 2), (0, 0, 3, 0), (-4, 0, 3, 0), (7, 2, 10, 7)],
)
def test_clamp_replicas_keeps_within_bounds(
    requested: int, low: int, high: int, expected: int
) -> None:
    assert clamp_replicas(requested, low, high) == expected


def test_replica_bounds_read_from_the_voice_with_crd_defaults() -> None:
    assert replica_bounds({"spec": {}}) == (crd.DEFAULT_MIN_REPLICAS, crd.DEFAULT_MAX_REPLICAS)
    voice = {"spec": {"autoscaling": {"minReplicas": 0, "maxReplicas": 8}}}
    assert replica_bounds(voice) == (0, 8)


def test_selector_is_the_one_voice_label() -> None:
    assert labels.selector_labels("a") == {labels.VOICE_LABEL: "a"}
    assert labels.selector_string("a") == "voicefleet.io/voice=a"
    assert labels.object_labels("a")[labels.VOICE_LABEL] == "a"


def test_engine_names_match_the_contract() -> None:
    assert engines.ENGINES == ("piper-onnx", "vits-torch", "simulated")


def test_package_imports_neither_plane_nor_the_kube_client() -> None:
    code = (
        "import sys, voicefleet_api; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('voicefleet_inference', 'voicefleet_operator', 'kubernetes', 'kopf', 'fastapi')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
