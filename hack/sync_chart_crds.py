#!/usr/bin/env python3
"""Copy the CRDs from `crds/` (their source of truth) into the Helm chart.

The chart cannot read files outside its own directory, so it carries a copy under
`charts/voicefleet/files/crds/`; `templates/crds.yaml` renders them behind
`crds.install`. Run this after editing a CRD (`make chart-crds`); `--check` exits 1
when a copy has drifted, and tests/unit/test_chart_crds.py runs that check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "crds" / "ttsvoices.yaml", ROOT / "crds" / "kopf-peering.yaml")
CHART_CRDS = ROOT / "charts" / "voicefleet" / "files" / "crds"


def drifted(sources: tuple[Path, ...] = SOURCES, target: Path = CHART_CRDS) -> list[str]:
    """Names of chart copies that are missing or differ from their source."""
    return [
        src.name
        for src in sources
        if not (target / src.name).is_file() or (target / src.name).read_bytes() != src.read_bytes()
    ]


def sync(sources: tuple[Path, ...] = SOURCES, target: Path = CHART_CRDS) -> list[str]:
    """Copy every drifted CRD into the chart; return the names copied."""
    changed = drifted(sources, target)
    target.mkdir(parents=True, exist_ok=True)
    for src in sources:
        if src.name in changed:
            (target / src.name).write_bytes(src.read_bytes())
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for name in stale:
            print(
                f"charts/voicefleet/files/crds/{name} differs from crds/{name}: "
                "run `make chart-crds`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for name in sync():
        print(f"copied crds/{name} -> charts/voicefleet/files/crds/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
