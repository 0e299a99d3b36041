"""Whether kopf's peering has paused this operator: the autoscaler loop pauses with it.

kopf pauses an operator when its peering object (``ClusterKopfPeering`` or
``KopfPeering``) lists another live peer of higher priority, or of the same priority
(then every tied peer pauses and warns); it resumes when those are gone or their lease
(``lastseen + lifetime``) has run out. kopf stops its own watches and daemons then, but
keeps that state to itself, and the autoscaler is one loop of ours, not a kopf daemon
(a daemon would need a finalizer on every voice). So the loop reads the same peering
object once per tick and applies the same rule (:func:`pause_reason`, pure) to the
same identity kopf heartbeats under (the CLI hands kopf the identity made here).

``--standalone`` and a cluster without the peering CRD (kopf then runs unpeered) never
pause. A read that fails for another reason keeps the last verdict: a flaky API server
must neither start a second writer nor stop the only one.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

__all__ = ["PeeringGate", "PeeringReader", "new_identity", "pause_reason"]

log = logging.getLogger(__name__)

DEFAULT_LIFETIME_SECONDS: Final = 60
"""kopf's lease when a peer's record names none."""


def new_identity() -> str:
    """This operator's peering identity, in kopf's own shape.

    ``POD_ID`` (the chart sets it to the pod's name) when present, as kopf does; else
    ``user@host/time/random``, unique per process so two local replicas never collide.
    """
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in our images
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}/{now}/{secrets.token_hex(3)}"


def _deadline(record: Mapping[str, Any]) -> float | None:
    lastseen = record.get("lastseen")
    try:
        lifetime = float(record.get("lifetime", DEFAULT_LIFETIME_SECONDS))
        seen = datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen.timestamp() + lifetime


def pause_reason(status: Mapping[str, Any], identity: str, priority: int, now: float) -> str | None:
    """Why kopf pauses us given a peering object's ``status``; None when we may act.

    ``status`` maps each peer's identity to ``{priority, lifetime, lastseen}`` (kopf's
    format). Our own record and dead peers (lease over) do not count; a record without
    a readable ``lastseen`` counts as live, as kopf reads it.
    """
    blockers: list[str] = []
    for peer, record in status.items():
        if peer == identity or not isinstance(record, Mapping):
            continue
        deadline = _deadline(record)
        if deadline is not None and deadline <= now:
            continue
        try:
            theirs = int(record.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if theirs > priority:
            blockers.append(f"{peer} (priority {theirs} > {priority})")
        elif theirs == priority:
            blockers.append(f"{peer} (same priority {theirs}: all tied peers pause)")
    return "; ".join(sorted(blockers)) or None


class PeeringReader(Protocol):
    """Reads a peering object's ``status`` (None: the object or its CRD does not exist)."""

    def get_peering_status(self, name: str, namespace: str | None) -> Mapping[str, Any] | None:
        """Raises on API failures other than "not found"."""
        ...


class PeeringGate:
    """Answers "is this operator paused?" once per tick from the peering object(s).

    ``namespaces`` empty means the cluster-scoped peering (``--all-namespaces``); else
    kopf keeps one peering object per namespace and pauses when any of them says so.
    """

    def __init__(
        self,
        reader: PeeringReader,
        *,
        name: str,
        namespaces: Sequence[str],
        identity: str,
        priority: int,
    ) -> None:
        self._reader = reader
        self._name = name
        self._namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.identity = identity
        self.priority = priority
        self._last: str | None = None

    async def paused(self, now: float) -> str | None:
        """The reason to pause (None: act), read now."""
        reasons = []
        for namespace in self._namespaces:
            try:
                status = await asyncio.to_thread(
                    self._reader.get_peering_status, self._name, namespace
                )
            except Exception as exc:  # the API server's trouble: keep the last verdict
                log.warning(
                    "could not read peering %s: %s; keeping the last verdict", self._name, exc
                )
                return self._last
            reason = pause_reason(status or {}, self.identity, self.priority, now)
            if reason is not None:
                reasons.append(reason if namespace is None else f"{namespace}: {reason}")
        self._last = "; ".join(reasons) or None
        return self._last


class NeverPaused:
    """The gate of a ``--standalone`` operator (no peering, no other writer)."""

    async def paused(self, now: float) -> str | None:
        return None
