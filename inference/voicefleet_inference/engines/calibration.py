"""A voice's load-time cost calibration, optionally kept on disk for the next start.

Every Piper engine times :data:`CALIBRATION_TEXTS` at load (a warm-up and three timed
syntheses) to fit its :class:`~voicefleet_inference.cost.CostModel`. The fit depends on
the model, the runtime, the device, the thread count and the processor, and on nothing a
restart changes; so with a cache directory (the server's ``--calibration-cache``) the
first start writes the fit to a file named by a digest of exactly those, and a later
start with the same key reuses it after one warm-up synthesis instead of four.

A fit is kept as measured: one made while the machine was busy (higher overhead) stays
until its file is removed. Without a directory every load calibrates, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

from voicefleet_inference.cost import CostModel

__all__ = [
    "CALIBRATION_TEXTS",
    "calibrate_cost",
    "calibration_key",
    "load_or_calibrate",
    "model_digest",
    "processor",
]

log = logging.getLogger(__name__)

CALIBRATION_TEXTS = (
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming starts after the first sentence, so long answers begin quickly and finish "
    "without stalls.",
)
"""Real syntheses timed at load: short, medium, long, so the fit sees the per-character
slope and the fixed per-request overhead."""

_FORMAT = 1
"""Version of the file layout; part of the key, so a new layout never reads an old file."""


def calibrate_cost(run_text: Callable[[str], object]) -> CostModel:
    """Warm up once, then time :data:`CALIBRATION_TEXTS` and fit a :class:`CostModel`."""
    run_text(CALIBRATION_TEXTS[0])  # the first run allocates and picks kernels; never timed
    measurements: list[tuple[int, float]] = []
    for text in CALIBRATION_TEXTS:
        t0 = time.perf_counter()
        run_text(text)
        measurements.append((len(text), time.perf_counter() - t0))
    return CostModel.fit(measurements)


def model_digest(path: Path) -> str:
    """SHA-256 of the model file (hex): a changed model is a new key."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@cache
def processor() -> str:
    """This machine's processor as the kernel names it (``model name``), and its arch."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {name or platform.processor() or 'unknown'}"


def calibration_key(
    *, engine: str, runtime: str, model_path: Path, device: str, threads: int
) -> dict[str, str]:
    """What a fit depends on: the engine and its runtime's version, the model's digest,
    the device and threads, and the processor."""
    return {
        "format": str(_FORMAT),
        "engine": engine,
        "runtime": runtime,
        "model_sha256": model_digest(model_path),
        "device": device,
        "threads": str(threads),
        "processor": processor(),
    }


def _path(cache_dir: Path, key: Mapping[str, str]) -> Path:
    name = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"cost-{name}.json"


def _read(path: Path, key: Mapping[str, str]) -> CostModel | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != dict(key):
            return None
        return CostModel(float(data["overhead_seconds"]), float(data["seconds_per_char"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the calibration cache file %s: %s", path, exc)
        return None


def _write(path: Path, key: Mapping[str, str], cost: CostModel) -> None:
    """Atomically: a concurrent start reads the old file, the new one, or none."""
    body = {
        "key": dict(key),
        "overhead_seconds": cost.overhead_seconds,
        "seconds_per_char": cost.seconds_per_char,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cost-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep the calibration in %s: %s", path.parent, exc)


def load_or_calibrate(
    run_text: Callable[[str], object],
    cache_dir: Path | None,
    key: Callable[[], Mapping[str, str]],
) -> CostModel:
    """The cost model for this load: calibrated, or read from ``cache_dir`` under ``key``.

    A cached fit still costs one warm-up synthesis (the first run allocates and picks
    kernels, which the first request would otherwise pay). ``key`` is only called with a
    directory (it hashes the model file). An unreadable or mismatched file is calibrated
    over; a directory that cannot be written is logged and the fit is used anyway.
    """
    if cache_dir is None:
        return calibrate_cost(run_text)
    resolved = key()
    path = _path(cache_dir, resolved)
    cached = _read(path, resolved)
    if cached is not None:
        run_text(CALIBRATION_TEXTS[0])
        log.info("cost model from the calibration cache %s: %s", path, cached)
        return cached
    cost = calibrate_cost(run_text)
    _write(path, resolved, cost)
    return cost
