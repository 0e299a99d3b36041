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
"""The standalone server's ``--engine`` default, and a TTSVoice's on CPU pods."""
GPU_DEFAULT_ENGINE: Final = VITS_TORCH
"""A TTSVoice's engine on GPU pods when ``spec.engine`` is unset (batched passes)."""


def pod_device(gpus: int) -> str:
    """``VOICEFLEET_DEVICE`` for a pod with ``gpus`` GPUs: ``cpu``, ``cuda``, or a list.

    Several GPUs are listed (``cuda:0,cuda:1``) and the server spreads its engine workers
    over them, one engine per worker; the device plugin numbers a pod's GPUs from 0.
    """
    if gpus <= 0:
        return "cpu"
    if gpus == 1:
        return "cuda"
    return ",".join(f"cuda:{i}" for i in range(gpus))


def voice_engine(engine: str | None, gpus: int) -> str:
    """The engine a TTSVoice runs: ``spec.engine``, else by whether its pods have GPUs.

    The CRD gives ``spec.engine`` no schema default, so that an unset engine can follow
    ``resources.gpus``; this is the one place that rule lives.
    """
    if engine:
        return engine
    return GPU_DEFAULT_ENGINE if gpus > 0 else DEFAULT_ENGINE
