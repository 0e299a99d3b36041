"""Import a script that is not part of any package (``hack/sync_chart_crds.py``,
``docker/requirements.py``), so its functions can be tested like a module's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """The module the script at ``path`` defines, executed once under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
