"""What the operator remembers about each voice between kopf events (in memory only).

Three things, all keyed by ``(namespace, name)`` and all safe to lose on a restart:

* **a lock per voice**: a reconcile and the refreshes fed by pod and Deployment events
  run on different threads of kopf's pool and all derive-and-write the voice's
  status; one at a time keeps the read-compare-write of conditions (and the Events
  derived from the comparison) consistent;
* **the refusal of its current generation**: an owned object the API server refused
  (422, a quota, a full Service range) is known only to the reconcile that tried;
  every later refresh must keep reporting it until a new apply succeeds;
* **the status it last wrote**: the "before" of the next derivation. The voice's copy
  in kopf's index lags our own write by a watch round trip; without this, a pod event
  in between would compare against the old conditions and post an Event twice. It
  is keyed by the voice's uid, so a voice re-created under the same name starts clean.

No API calls and no kopf here: this is plain, thread-safe bookkeeping.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicefleet_operator.conditions import Problem

__all__ = ["VoiceMemory"]

Key = tuple[str, str]


@dataclass
class VoiceMemory:
    """Per-voice locks, refusals and last-written status (see the module docstring)."""

    _guard: threading.Lock = field(default_factory=threading.Lock)
    _locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _refusals: dict[Key, tuple[int, tuple[Problem, ...]]] = field(default_factory=dict)
    _written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop everything about a deleted voice."""
        with self._guard:
            self._locks.pop((namespace, name), None)
            self._refusals.pop((namespace, name), None)
            self._written.pop((namespace, name), None)

    def refuse(
        self, namespace: str, name: str, generation: int, problems: tuple[Problem, ...]
    ) -> None:
        """Remember (or, with no problems, forget) why this generation's objects were refused."""
        with self._guard:
            if problems:
                self._refusals[(namespace, name)] = (generation, problems)
            else:
                self._refusals.pop((namespace, name), None)

    def refusals(self, namespace: str, name: str, generation: int) -> list[Problem]:
        """The refusals recorded for this generation (an older generation's do not count)."""
        with self._guard:
            found = self._refusals.get((namespace, name))
        return list(found[1]) if found is not None and found[0] == generation else []

    def wrote(self, namespace: str, name: str, uid: str, status: Mapping[str, Any]) -> None:
        """Record the status fields just written to the voice with this uid."""
        with self._guard:
            old = self._written.get((namespace, name))
            merged = dict(old[1]) if old is not None and old[0] == uid else {}
            merged.update(status)
            self._written[(namespace, name)] = (uid, merged)

    def status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The voice's status as it now is: ``body``'s, overlaid with what we wrote since.

        The fields we write have one writer (us), so our own last write is never older
        than what a watch event or an index hands us.
        """
        meta = body.get("metadata") or {}
        current = dict(body.get("status") or {})
        with self._guard:
            found = self._written.get((str(meta.get("namespace")), str(meta.get("name"))))
        if found is not None and found[0] == str(meta.get("uid") or ""):
            current.update(found[1])
        return current
