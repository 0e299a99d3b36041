"""Plain copies of what kopf hands us, made in one place.

kopf's bodies, indexes and status are live mappings that kopf keeps updating; anything the
operator keeps (a parsed spec, an index entry, the status it last wrote) is copied into
plain ``dict``/``list`` values first, so a later event can never change it behind our back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["plain_copy"]


def plain_copy(value: Any) -> Any:
    """``value`` with every mapping a ``dict`` (string keys) and every sequence a ``list``."""
    if isinstance(value, Mapping):
        return {str(k): plain_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_copy(v) for v in value]
    return value
