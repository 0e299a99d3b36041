"""Engine names (contract): what ``spec.engine`` and ``VOICEFLEET_ENGINE`` accept."""

from __future__ import annotations

from typing import Final

PIPER_ONNX: Final = "piper-onnx"
"""Piper VITS voices through onnxruntime (CPU, or CUDA with onnxruntime-gpu)."""
VITS_TORCH: Final = "vits-torch"
"""Our own PyTorch VITS implementation of Piper voices (batched on GPU)."""
SIMULATED: Final = "simulated"
"""Load testing only: the server's API and metrics, service time from the real voice's
cost model, no model loaded."""

ENGINES: Final = (PIPER_ONNX, VITS_TORCH, SIMULATED)
DEFAULT_ENGINE: Final = PIPER_ONNX
