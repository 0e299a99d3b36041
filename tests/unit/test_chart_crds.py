"""The chart's CRD copies match crds/ byte for byte (hack/sync_chart_crds.py keeps them so)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from script_module import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "sync_chart_crds.py"


def load_sync() -> ModuleType:
    return load_script(SCRIPT, "sync_chart_crds")


def test_chart_crds_match_their_source() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_check_catches_drift_and_sync_repairs_it(tmp_path: Path) -> None:
    sync = load_sync()
    source = tmp_path / "crds" / "x.yaml"
    source.parent.mkdir()
    source.write_text("kind: CustomResourceDefinition\n")
    target = tmp_path / "chart"
    assert sync.drifted((source,), target) == ["x.yaml"]  # missing copy
    assert sync.sync((source,), target) == ["x.yaml"]
    assert sync.drifted((source,), target) == []
    (target / "x.yaml").write_text("kind: CustomResourceDefinition\n# edited by hand\n")
    assert sync.drifted((source,), target) == ["x.yaml"]
