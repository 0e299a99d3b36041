"""The operator's in-memory views of voices, their Deployments and the PVCs, kept by kopf.

Every status refresh (a pod or Deployment event) needs the voice, its Deployment and,
for a volume model, whether its claim exists. Reading them from the API server on
each event made a burst of pod events a burst of GETs (three per event); kopf already
watches all three kinds, so each is kept here as a ``kopf.index`` (like the pods in
:mod:`voicefleet_operator.pods`) and a refresh reads memory only.

kopf updates an index before it calls the handlers of the same event, and fills every
index from its initial listing before any handler runs, so a handler never sees an
index older than the event it handles.

The index functions are pure (a body in, ``{key: value}`` out) and keep plain-dict
copies of only the fields the operator reads, so 1,000 voices stay a few megabytes.
:class:`Views` bundles the four indexes a handler was given; tests build one from
plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from voicefleet_api.crd import GROUP, KIND
from voicefleet_operator.plain import plain_copy
from voicefleet_operator.pods import INDEX_NAME as PODS_INDEX
from voicefleet_operator.pods import PodInfo, PodKey, pods_of

__all__ = [
    "CLAIMS_INDEX",
    "DEPLOYMENTS_INDEX",
    "PODS_INDEX",
    "VOICES_INDEX",
    "Views",
    "index_claim",
    "index_deployment",
    "index_voice",
    "owner_voice",
]

VOICES_INDEX: Final = "voices_by_name"
DEPLOYMENTS_INDEX: Final = "deployments_by_voice"
CLAIMS_INDEX: Final = "claims_by_name"

Index = Mapping[PodKey, Iterable[Any]]
"""What kopf injects: key -> a store of the values every object gave under that key."""


def owner_voice(obj: Mapping[str, Any]) -> str | None:
    """The name of the TTSVoice that owns ``obj`` (its ownerReference), or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


def index_voice(body: Mapping[str, Any], **_: Any) -> dict[PodKey, dict[str, Any]]:
    """kopf index handler: each TTSVoice under ``(namespace, name)``, as the API sent it
    (spec, status, and the metadata kopf's adopt and Events need)."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    kept_meta = {
        key: plain_copy(meta[key])
        for key in ("name", "namespace", "uid", "generation", "deletionTimestamp", "labels")
        if key in meta
    }
    entry = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept_meta,
        "spec": plain_copy(body.get("spec") or {}),
        "status": plain_copy(body.get("status") or {}),
    }
    return {(str(meta.get("namespace") or ""), str(meta.get("name") or "")): entry}


def index_deployment(body: Mapping[str, Any], **_: Any) -> dict[PodKey, dict[str, Any]]:
    """kopf index handler: a voice's Deployment under ``(namespace, voice)``; only what
    status derivation and drift repair read (generation, annotations, replicas, status)."""
    voice = owner_voice(body)
    if voice is None:
        return {}
    meta: Mapping[str, Any] = body.get("metadata") or {}
    entry = {
        "metadata": {
            key: plain_copy(meta[key])
            for key in ("name", "namespace", "uid", "generation", "annotations")
            if key in meta
        },
        "spec": {"replicas": (body.get("spec") or {}).get("replicas")},
        "status": plain_copy(body.get("status") or {}),
    }
    return {(str(meta.get("namespace") or ""), voice): entry}


def index_claim(body: Mapping[str, Any], **_: Any) -> dict[PodKey, bool]:
    """kopf index handler: every PersistentVolumeClaim under ``(namespace, name)``."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    return {(str(meta.get("namespace") or ""), str(meta.get("name") or "")): True}


def _first(index: Index | None, key: PodKey) -> Any | None:
    store = (index or {}).get(key)
    for value in store or ():
        return value
    return None


@dataclass(frozen=True)
class Views:
    """The indexes one handler call was given, read by key. Missing indexes read empty."""

    voices: Index = field(default_factory=dict)
    deployments: Index = field(default_factory=dict)
    claims: Index = field(default_factory=dict)
    pods: Mapping[PodKey, Iterable[PodInfo]] = field(default_factory=dict)

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Views:
        """The views from a kopf handler's keyword arguments (indexes arrive by their id)."""

        def get(name: str) -> Any:
            value = kwargs.get(name)
            return value if isinstance(value, Mapping) else {}

        return cls(
            voices=get(VOICES_INDEX),
            deployments=get(DEPLOYMENTS_INDEX),
            claims=get(CLAIMS_INDEX),
            pods=get(PODS_INDEX),
        )

    def voice(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = _first(self.voices, (namespace, name))
        return dict(found) if isinstance(found, Mapping) else None

    def deployment(self, namespace: str, voice: str) -> dict[str, Any] | None:
        found = _first(self.deployments, (namespace, voice))
        return dict(found) if isinstance(found, Mapping) else None

    def claim_exists(self, namespace: str, name: str) -> bool:
        return _first(self.claims, (namespace, name)) is not None

    def pods_of(self, namespace: str, voice: str) -> list[PodInfo]:
        return pods_of(self.pods, namespace, voice)

    def voices_in(self, namespace: str) -> list[dict[str, Any]]:
        """Every indexed voice of one namespace (a claim appearing wakes those using it)."""
        out: list[dict[str, Any]] = []
        for (ns, _), store in self.voices.items():
            if ns == namespace:
                out.extend(dict(v) for v in store if isinstance(v, Mapping))
        return out
