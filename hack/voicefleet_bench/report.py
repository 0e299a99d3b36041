"""How a benchmark puts its table into ``docs/``: between markers, so the prose around stays.

A page holds ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; a run replaces what lies
between them (or appends the block if the page has none yet). Nothing inside is typed by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_section(doc: Path, name: str, text: str) -> None:
    """Replace the ``bench:NAME`` block of ``doc`` with ``text`` (append it if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip() + "\n\n" + block + "\n"
    doc.write_text(updated, encoding="utf-8")


def publish(text: str, doc: Path, name: str, *, write: bool = True) -> None:
    """Print a benchmark's table and, unless ``write`` is off (``--no-doc``), put it into
    the ``bench:NAME`` block of ``doc``: every benchmark reports the same way."""
    print(text)
    if write:
        write_section(doc, name, text)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; an em dash when it was not measured (None or NaN)."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, then one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines
