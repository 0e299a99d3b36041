"""FakeKube: an in-memory stand-in for the API server at our own seam (``cluster.Kube``).

A fake, named as such: it stores what the handlers apply and the status they write,
counts every call, and refuses an object when a test says so (with the status and
message the real API server would send). It does not run controllers or validate
schemas; the integration tests do that against a real kube-apiserver.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicefleet_operator.k8s import KubeError

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name)."""


@dataclass
class FakeKube:
    """Satisfies ``voicefleet_operator.cluster.Kube`` in memory."""

    objects: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    refuse: dict[str, KubeError] = field(default_factory=dict)
    """kind -> the error every apply of that kind raises."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = str(obj["kind"])
        meta = obj["metadata"]
        self.calls.append(("apply", kind, str(meta["name"])))
        if kind in self.refuse:
            raise self.refuse[kind]
        key = (kind, str(meta["namespace"]), str(meta["name"]))
        stored = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        generation = int((old or {}).get("metadata", {}).get("generation", 0))
        if old is None or old.get("spec") != stored.get("spec"):
            generation += 1
        stored["metadata"]["generation"] = generation
        stored.setdefault("status", (old or {}).get("status", {}))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def delete_pdb(self, namespace: str, name: str) -> bool:
        self.calls.append(("delete", "PodDisruptionBudget", name))
        return self.objects.pop(("PodDisruptionBudget", namespace, name), None) is not None

    def network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", "NetworkPolicy", name))
        stored = self.objects.get(("NetworkPolicy", namespace, name))
        return copy.deepcopy(stored) if stored is not None else None

    def delete_network_policy(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append(("delete", "NetworkPolicy", name))
        key = ("NetworkPolicy", namespace, name)
        stored = self.objects.get(key)
        if stored is None:
            return False
        if str(stored["metadata"].get("uid") or "") != uid:
            raise KubeError(409, f"Precondition failed: UID in precondition: {uid}")
        del self.objects[key]
        return True

    def patch_voice_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("patch-status", "TTSVoice", name))
        self.statuses.setdefault((namespace, name), {}).update(copy.deepcopy(dict(status)))

    def count(self, verb: str, kind: str | None = None) -> int:
        return sum(1 for v, k, _ in self.calls if v == verb and (kind is None or k == kind))


@dataclass
class EventRecorder:
    """Records the Events handlers post (``cluster.EventPoster``)."""

    posted: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        self.posted.append((type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.posted]
