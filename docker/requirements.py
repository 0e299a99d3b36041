"""Print the requirements of some of pyproject.toml's extras, one per line, for pip -r.

Why this exists: the Dockerfiles install the dependencies in a layer of their own, before
any source is copied, so that a source-only change reuses that layer (seconds) instead of
downloading and unpacking onnxruntime, numpy and PyAV again (minutes). That layer may see
only pyproject.toml, so the list comes from it here rather than from a file that could
drift from it. Runs on the image's own Python with the standard library alone (tomllib,
Python >= 3.11), because nothing is installed yet when it runs.

    python3 docker/requirements.py pyproject.toml server torch   # the extras' requirements
    python3 docker/requirements.py pyproject.toml --build-system # [build-system].requires

An extra may name this project's own extras (``voicefleet[server,torch]``): they are
expanded in place, never passed to pip (which would look the project up on PyPI).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?(.*)$")


class RequirementsError(Exception):
    """pyproject.toml lacks what was asked for (an unknown extra, no project name)."""


def _canonical(name: str) -> str:
    """PEP 503 name normalisation: ``Joe_US.piper`` and ``joe-us-piper`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Mapping[str, object], extras: Sequence[str]) -> list[str]:
    """The base dependencies plus those of ``extras``, self-references expanded, deduplicated.

    Order is kept (base first, then each extra in the order asked) so the output is stable
    and a Dockerfile layer built from it is reused as long as the dependencies are the same.
    """
    project = pyproject.get("project")
    if not isinstance(project, Mapping) or not isinstance(project.get("name"), str):
        raise RequirementsError("pyproject.toml has no [project] name")
    own = _canonical(str(project["name"]))
    optional = project.get("optional-dependencies", {})
    if not isinstance(optional, Mapping):
        raise RequirementsError("[project.optional-dependencies] is not a table")
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(requirement: str) -> None:
        match = _NAME.match(requirement)
        if match and _canonical(match.group(1)) == own:
            for extra in (match.group(2) or "").split(","):
                if extra.strip():
                    expand(extra.strip())
        elif requirement not in out:
            out.append(requirement)

    def expand(extra: str) -> None:
        if extra in seen_extras:
            return
        if extra not in optional:
            known = ", ".join(sorted(str(k) for k in optional))
            raise RequirementsError(f"no extra {extra!r} in pyproject.toml (known: {known})")
        seen_extras.add(extra)
        for requirement in optional[extra]:
            add(str(requirement))

    for requirement in project.get("dependencies", []):
        add(str(requirement))
    for extra in extras:
        expand(extra)
    return out


def build_requirements(pyproject: Mapping[str, object]) -> list[str]:
    """``[build-system].requires``: what ``pip install --no-build-isolation .`` needs first."""
    build = pyproject.get("build-system", {})
    if not isinstance(build, Mapping):
        raise RequirementsError("[build-system] is not a table")
    return [str(r) for r in build.get("requires", [])]


def main(argv: Sequence[str]) -> int:
    """CLI: ``requirements.py PYPROJECT (--build-system | EXTRA...)``; EXTRA may be a,b."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    data = tomllib.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        if list(argv[1:]) == ["--build-system"]:
            lines = build_requirements(data)
        else:
            extras = [e.strip() for arg in argv[1:] for e in arg.split(",") if e.strip()]
            lines = requirements(data, extras)
    except RequirementsError as error:
        print(f"requirements.py: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
