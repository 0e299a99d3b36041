"""The operator's in-memory view of the voices' pods: a kopf index keyed by voice.

kopf keeps it current from one pod watch (managed pods only), so status refreshes read
a voice's pods from memory instead of listing them per event. Each entry is the part of
the pod the operator reads (name, deletion mark, container limits, conditions,
container statuses), in the API server's JSON shape, so the pure functions that read it
(`failures.pod_report`) are tested with pods exactly as the API server sends them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import kopf

from voicefleet_operator import labels

__all__ = ["POD_INDEX", "PodIndex", "index_pod", "pods_of"]

POD_INDEX: Final = "voice_pods"
"""The keyword kopf injects the index under (the indexing function's name)."""

PodIndex = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]
"""(namespace, voice name) → that voice's pods (kopf.Index satisfies this)."""


def voice_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """kopf indexing function: one entry per managed pod, under its voice."""
    meta = body.get("metadata") or {}
    voice = (meta.get("labels") or {}).get(labels.VOICE_LABEL)
    if not voice:
        return None
    return {(str(namespace), str(voice)): index_pod(body)}


def index_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The slice of a pod the operator reads, in the API server's shape."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    kept_meta = {k: meta[k] for k in ("name", "namespace", "deletionTimestamp") if k in meta}
    containers = [
        {"name": c.get("name"), "resources": c.get("resources") or {}}
        for c in (pod.get("spec") or {}).get("containers") or ()
    ]
    kept_status = {
        k: status[k] for k in ("phase", "conditions", "containerStatuses") if k in status
    }
    return {"metadata": kept_meta, "spec": {"containers": containers}, "status": kept_status}


def pods_of(index: PodIndex | None, namespace: str, voice: str) -> list[Mapping[str, Any]]:
    """A snapshot of one voice's pods (empty without an index or pods).

    Handlers run in kopf's thread pool while the event loop updates the index; a
    concurrent update can interrupt the copy, which is then simply taken again.
    """
    if index is None:
        return []
    for _ in range(5):
        try:
            return list(index.get((namespace, voice), ()))
        except RuntimeError:  # changed size during iteration
            continue
    return list(index.get((namespace, voice), ()))
