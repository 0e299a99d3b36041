"""The operator's in-memory view of every voice pod, kept current by one watch.

``index_pod`` is registered as a ``kopf.index`` over pods carrying
:data:`voicefleet_api.labels.VOICE_LABEL`; kopf calls it on every pod event and
keeps the result under the handler's id (``pods_by_voice``), injected by that name
into timers, daemons and other handlers. The autoscaler reads the pods of a voice
from it each tick (no list call per tick), and status code reads the same entries
for crash loops and waiting reasons, so the index keeps the pod's conditions and
``containerStatuses`` too.

Keys are ``(namespace, voice name)``; each value is one frozen :class:`PodInfo`.
:func:`pod_info` is pure (a pod dict in, a ``PodInfo`` out) and tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voicefleet_api.labels import POD_DELETION_COST_ANNOTATION, VOICE_LABEL
from voicefleet_operator.plain import plain_copy

__all__ = [
    "INDEX_NAME",
    "PodInfo",
    "PodKey",
    "index_pod",
    "index_pod_any",
    "pod_info",
    "pods_of",
    "router_indexer",
]

INDEX_NAME = "pods_by_voice"
"""The kwarg name kopf injects the index under (the id of :func:`index_pod`)."""

PodKey = tuple[str, str]
"""``(namespace, voice name)``."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the operator needs to know about one voice pod, copied out of its body.

    ``conditions`` and ``container_statuses`` are plain-dict copies of
    ``status.conditions`` and ``status.containerStatuses`` (plus init containers),
    so readers never hold kopf's live body.
    """

    namespace: str
    name: str
    voice: str
    uid: str
    ip: str | None
    phase: str
    ready: bool
    deletion_timestamp: str | None
    created: str | None
    deletion_cost: int | None
    conditions: tuple[dict[str, Any], ...] = ()
    container_statuses: tuple[dict[str, Any], ...] = ()
    init_container_statuses: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.voice)

    @property
    def terminating(self) -> bool:
        return self.deletion_timestamp is not None

    @property
    def serving(self) -> bool:
        """Ready, has an address and is not on its way out: a pod to scrape and route to."""
        return self.ready and self.ip is not None and not self.terminating

    @property
    def starting(self) -> bool:
        """Will become capacity soon: alive, not ready yet, not terminating, not finished."""
        return not self.ready and not self.terminating and self.phase in ("Pending", "Running")


def _dicts(raw: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list | tuple):
        return ()
    return tuple(plain_copy(item) for item in raw if isinstance(item, Mapping))


def _cost(annotations: Mapping[str, Any]) -> int | None:
    try:
        return int(annotations[POD_DELETION_COST_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        return None


def pod_info(pod: Mapping[str, Any]) -> PodInfo | None:
    """A :class:`PodInfo` from a pod as the API server sends it; None without a voice label."""
    meta: Mapping[str, Any] = pod.get("metadata") or {}
    voice = (meta.get("labels") or {}).get(VOICE_LABEL)
    if not voice:
        return None
    status: Mapping[str, Any] = pod.get("status") or {}
    conditions = _dicts(status.get("conditions"))
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    ip = status.get("podIP")
    return PodInfo(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        voice=str(voice),
        uid=str(meta.get("uid") or ""),
        ip=str(ip) if ip else None,
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        deletion_timestamp=meta.get("deletionTimestamp") or None,
        created=meta.get("creationTimestamp") or None,
        deletion_cost=_cost(meta.get("annotations") or {}),
        conditions=conditions,
        container_statuses=_dicts(status.get("containerStatuses")),
        init_container_statuses=_dicts(status.get("initContainerStatuses")),
    )


def index_pod(body: Mapping[str, Any], **_: Any) -> dict[PodKey, PodInfo]:
    """kopf index handler: one entry under ``(namespace, voice)`` per voice pod."""
    info = pod_info(body)
    return {} if info is None else {info.key: info}


def index_pod_any(body: Mapping[str, Any], **_: Any) -> dict[PodKey, PodInfo]:
    """kopf index handler for pods without a voice (the routers): keyed ``(namespace, name)``."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    info = pod_info({**body, "metadata": {**meta, "labels": {VOICE_LABEL: "-"}}})
    return {} if info is None else {(info.namespace, info.name): info}


def router_indexer(namespace: str) -> Callable[..., dict[PodKey, PodInfo]]:
    """The router index's handler: :func:`index_pod_any` for pods in ``namespace`` only.

    kopf watches pods in every namespace the operator serves; a label match alone would let
    anyone who can create a pod anywhere pose as a router and feed the autoscaler held
    requests (scaling voices up at will). Only the release's own namespace is trusted.
    """

    def index_router_pod(body: Mapping[str, Any], **_: Any) -> dict[PodKey, PodInfo]:
        meta: Mapping[str, Any] = body.get("metadata") or {}
        if meta.get("namespace") != namespace:
            return {}
        return index_pod_any(body)

    return index_router_pod


def pods_of(index: Mapping[PodKey, Iterable[PodInfo]], namespace: str, voice: str) -> list[PodInfo]:
    """The pods of one voice from the index (a fresh list, sorted by name; [] when none)."""
    store = index.get((namespace, voice))
    return sorted(store or (), key=lambda p: p.name)
