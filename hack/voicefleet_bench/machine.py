"""What a figure was measured on: cores, CPU model, load, versions, the checkout's commit.

Every report says this next to its numbers, because on a shared machine the load average
decides more than the code does: compare ratios from one run, not absolute times.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

from voicefleet_bench import REPO


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> str:
    """The 1/5/15-minute load averages, space-separated."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_note() -> str:
    """One sentence for a report: cores and the load at the end of the run."""
    return (
        f"{os.cpu_count()} cores, load average {loadavg()} at the end of the run "
        "(the machine was shared with other work; compare ratios, not absolute times)"
    )


def versions(dists: Iterable[str]) -> dict[str, str]:
    """Python's version and each installed distribution's ("not installed" if absent)."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_revision(
    paths: Iterable[str] = ("inference", "hack/voicefleet_bench", "pyproject.toml"),
) -> str:
    """The checkout's commit, with ``+dirty`` if ``paths`` had local changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
