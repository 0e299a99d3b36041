"""Request priority: the header both planes read, its values and their order.

A request names how much it matters (``x-voicefleet-priority``); pods serve higher
priority first and, when saturated, refuse the least important first. Shared here so
the router, the pods and the operator (which sets a voice's default) agree on the names.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CRITICAL",
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "PRIORITY_HEADER",
    "SHEDDABLE",
    "STANDARD",
    "Priority",
    "rank",
]

PRIORITY_HEADER: Final = "x-voicefleet-priority"
Priority = Literal["critical", "standard", "sheddable"]
CRITICAL: Final = "critical"
"""Never refused for waiting; may push queued sheddable work out of a full queue."""
STANDARD: Final = "standard"
"""The default; refused after sheddable work when a pod is saturated."""
SHEDDABLE: Final = "sheddable"
"""Refused first (429 with Retry-After) as soon as the queue's wait passes its target."""
PRIORITIES: Final[tuple[Priority, ...]] = (CRITICAL, STANDARD, SHEDDABLE)
"""Most important first: the label values of the by-priority metrics, bounded."""
DEFAULT_PRIORITY: Final[Priority] = STANDARD


def rank(priority: str) -> int:
    """0 for critical, 1 standard, 2 sheddable; ValueError for anything else."""
    try:
        return PRIORITIES.index(priority)
    except ValueError:
        raise ValueError(
            f"unknown priority {priority!r}; accepted: {', '.join(PRIORITIES)}"
        ) from None
