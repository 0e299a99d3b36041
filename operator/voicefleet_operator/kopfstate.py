"""kopf's per-object bookkeeping, kept in the operator's memory instead of on the voices.

kopf remembers two things per object: the *essence* it last handled (its diff base, to
tell a spec change from a status write) and each handler's *progress* (retries, delays).
Its stock storages write both into the object, one merge patch per handled change of
every voice: a write, a new ``resourceVersion`` and a watch event to every watcher, for
each new voice, just to say "handled". This module keeps both in dicts keyed by the
object's uid, so a reconcile that succeeds costs the API server nothing beyond its own
writes.

What a restart loses, and how kopf still tells create, update and resume apart: the first
time this process sees a voice (kopf's listing at start, or a watch event), the diff base
is taken from what the operator wrote on the voice before, its
``status.observedGeneration``. Equal to the voice's generation: that generation was
handled, so its current essence is the base (kopf calls the ``resume`` handlers). Lower:
the spec changed since (kopf calls the ``update`` handlers; the base then lacks ``spec``,
so the diff handlers see is "all of spec"). Absent, on a voice created since this
process started: never handled (``create``, whose reconcile skips looking for objects a
new voice cannot own yet). Absent on an older voice proves nothing (an earlier process
may have applied its objects and stopped before its status write, or the status was
lost), so it is treated as lower (``update``), and the reconcile looks. The comparison
is of the API server's ``creationTimestamp`` (whole seconds, rounded down) with this
process's clock at its start: a voice created in the second the process started counts
as older. That first answer is remembered like any stored essence; later events compare
with what kopf stores once the handlers succeed, and a reconcile that failed is retried
by kopf as with the annotation storage. Handler progress (retry counts, delays) starts
afresh after a restart, which the handlers do not rely on.

One thing still goes to the object: kopf's *touch*. A handler that asks to be retried
later (``kopf.TemporaryError(delay=...)``) is re-run by an event on its object, and when
nothing else happens kopf makes one by patching an annotation
(``operator.voicefleet.io/touch-dummy``): retries cost one write each, as before.

kopf calls these storages from its event loop only, so the dicts need no lock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import kopf

__all__ = ["KopfState", "MemoryDiffBaseStorage", "MemoryProgressStorage"]


def _uid(body: kopf.Body) -> str:
    return str(body.get("metadata", {}).get("uid") or "")


@dataclass
class KopfState:
    """What kopf would have written on each object, by uid (see the module docstring)."""

    essences: dict[str, kopf.BodyEssence] = field(default_factory=dict)
    progress: dict[tuple[str, str], kopf.ProgressRecord] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    started: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)
    """When this process began keeping them: a voice created before may have been handled
    by an earlier process even without a status saying so."""

    def forget(self, uid: str) -> None:
        """Drop a deleted object's entries (its uid never comes back)."""
        self.essences.pop(uid, None)
        self.seen.discard(uid)
        for key in [k for k in self.progress if k[0] == uid]:
            del self.progress[key]


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handler progress in :class:`KopfState`; only the touch (a delayed retry's wake-up)
    and the essence cleaning stay those of the annotation storage, under ``prefix``."""

    def __init__(self, state: KopfState, *, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self.state = state

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self.state.progress.get((_uid(body), str(key)))

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
        self.state.progress[(_uid(body), str(key))] = copy.deepcopy(record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self.state.progress.pop((_uid(body), str(key)), None)


class MemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """The last handled essence of each object in :class:`KopfState`; on an object's first
    sight, what its ``status.observedGeneration`` says was handled (module docstring)."""

    def __init__(self, state: KopfState) -> None:
        super().__init__()
        self.state = state

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence of ``body``, without deep-copying what it then throws away.

        kopf builds the essence on every watch event of a voice (our own status writes
        included) by deep-copying the whole object, ``metadata.managedFields`` and
        ``status`` too, and deleting all of ``metadata`` but labels and annotations and
        all of ``status``. It gets only those parts here, so the result is the same and
        the copy is of the spec alone. Handlers that ask for extra (status) fields get
        kopf's own build; ours ask for none.
        """
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata", {})
        kept = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        kept["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)))

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        uid = _uid(body)
        if uid in self.state.essences or uid in self.state.seen:
            return self.state.essences.get(uid)
        self.state.seen.add(uid)
        essence = self._handled_before(body)
        if essence is not None:
            self.state.essences[uid] = essence
        return essence

    def _handled_before(self, body: kopf.Body) -> kopf.BodyEssence | None:
        observed = body.get("status", {}).get("observedGeneration")
        generation = body.get("metadata", {}).get("generation")
        if not isinstance(generation, int):
            return None
        if not isinstance(observed, int):
            if self._created_since_start(body):
                return None
            observed = 0  # handled or not by an earlier process: unknown, so look
        essence = self.build(body=body)
        if observed < generation:
            essence = cast(kopf.BodyEssence, {k: v for k, v in essence.items() if k != "spec"})
        return essence

    def _created_since_start(self, body: kopf.Body) -> bool:
        stamp = body.get("metadata", {}).get("creationTimestamp")
        try:
            created = datetime.fromisoformat(str(stamp))
        except ValueError:
            return False  # none, or unreadable: as if older
        if created.tzinfo is None:
            return False
        return created >= self.state.started

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self.state.essences[_uid(body)] = copy.deepcopy(essence)
