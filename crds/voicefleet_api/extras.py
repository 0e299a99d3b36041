"""Which pip extra each console script needs, and the message when it is missing.

One wheel carries all three programs, but each program's dependencies come with its
extra (``pip install 'voicefleet[operator]'`` brings no FastAPI). A script started
without its extra says which extra to install instead of a ModuleNotFoundError.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec

__all__ = ["OPERATOR_MODULES", "ROUTER_MODULES", "SERVER_MODULES", "missing_extra"]

SERVER_MODULES: tuple[str, ...] = ("fastapi", "uvicorn", "onnxruntime", "numpy", "soundfile")
OPERATOR_MODULES: tuple[str, ...] = ("kopf", "aiohttp", "kubernetes")
ROUTER_MODULES: tuple[str, ...] = (
    "fastapi",
    "uvicorn",
    "aiohttp",
    "httptools",
    "uvloop",
    "kubernetes",
)


def missing_extra(script: str, extra: str, modules: Sequence[str]) -> str | None:
    """The line to print when a module of ``extra`` is not installed; None when all are."""
    missing = [name for name in modules if find_spec(name) is None]
    if not missing:
        return None
    return (
        f"{script}: the '{extra}' extra is not installed (missing: {', '.join(missing)}); "
        f"install it with: pip install 'voicefleet[{extra}]'"
    )
