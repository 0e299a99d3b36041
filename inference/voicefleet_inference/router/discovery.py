"""Where the pods are: a watch on TTSVoices and their pods, or a static list.

Why pods and not EndpointSlices: pods work on every cluster, carry the one fact routing
needs before anything else (``deletionTimestamp``: stop sending *now*, before the endpoint
controller catches up), and the local cluster's loopback pod IPs are refused in
EndpointSlices. Why TTSVoices too: a voice scaled to zero has no pod, and the router must
still know it (to hold its requests) and its model name and cold-start timeout.

The Kubernetes client is synchronous, so each watch runs in its own daemon thread: list,
then watch from the list's ``resourceVersion``; on 410 Gone (history compacted) or any
error, list again. Every change goes to the event loop with ``call_soon_threadsafe``; the
:class:`~voicefleet_inference.router.fleet.Fleet` is only ever touched there. A watch event
reaches the fleet within milliseconds, so a pod turning ready, draining or vanishing is
seen well within a second.

The conversions from API objects (:func:`voice_from_object`, :func:`pod_from_object`) and
from ``--static-upstreams`` (:func:`parse_static`) are pure and tested alone.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from voicefleet_api import crd, labels
from voicefleet_inference.router.fleet import Fleet, PodInfo, VoiceInfo, VoiceKey, model_name_of

__all__ = [
    "KubeDiscovery",
    "StaticUpstream",
    "parse_static",
    "pod_from_object",
    "voice_from_object",
]

log = logging.getLogger("voicefleet.router.discovery")

_WATCH_TIMEOUT_S: Final = 60
"""Server-side watch timeout: the watch ends and is re-opened, so ``stop()`` is noticed."""
_RETRY_S: Final = 1.0
_DEFAULT_COLD_START_S: Final = 120.0
"""The CRD's default for ``spec.autoscaling.coldStartTimeoutSeconds`` (objects predating it)."""


def _created(meta: dict[str, Any]) -> int:
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, str):
        try:
            return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return 0
    timestamp = getattr(stamp, "timestamp", None)
    return int(timestamp()) if callable(timestamp) else 0


def voice_from_object(obj: dict[str, Any]) -> VoiceInfo:
    """A TTSVoice (as a dict from the API) → what the router needs of it."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    autoscaling = spec.get("autoscaling") or {}
    return VoiceInfo(
        key=VoiceKey(str(meta.get("namespace", "")), str(meta.get("name", ""))),
        model_name=model_name_of(spec),
        cold_start_timeout_s=float(
            autoscaling.get("coldStartTimeoutSeconds", _DEFAULT_COLD_START_S)
        ),
        created=_created(meta),
    )


def pod_from_object(obj: dict[str, Any], port: int = labels.SERVER_PORT) -> PodInfo | None:
    """A pod (as a dict in the API's camelCase) → PodInfo; None if it is no voice's pod."""
    meta = obj.get("metadata") or {}
    voice = (meta.get("labels") or {}).get(labels.VOICE_LABEL)
    if not voice:
        return None
    status = obj.get("status") or {}
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    namespace = str(meta.get("namespace", ""))
    return PodInfo(
        namespace=namespace,
        name=str(meta.get("name", "")),
        voice=VoiceKey(namespace, str(voice)),
        base_url=f"http://{_host(ip)}:{port}" if ip else None,
        ready=ready and status.get("phase") == "Running",
        deleting=meta.get("deletionTimestamp") is not None,
    )


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True, slots=True)
class StaticUpstream:
    voice: VoiceInfo
    pod: PodInfo


def parse_static(
    entries: Iterable[str], *, namespace: str, cold_start_timeout_s: float
) -> list[StaticUpstream]:
    """``[namespace/]name=http://host:port[#model]`` entries → voices and ready pods.

    The pods' model name defaults to the voice's name. Raises ValueError naming the bad
    entry. Several entries for one voice are several pods of it.
    """
    out: list[StaticUpstream] = []
    for index, entry in enumerate(entries):
        voice_part, sep, url_part = entry.partition("=")
        url, _, model_name = url_part.partition("#")
        ns, _, name = voice_part.strip().rpartition("/")
        parts = urlsplit(url.strip())
        if not sep or not name or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"static upstream {entry!r}: expected [namespace/]name=http://host:port[#model]"
            )
        key = VoiceKey(ns or namespace, name)
        voice = VoiceInfo(key, model_name.strip() or name, cold_start_timeout_s)
        pod = PodInfo(
            namespace=key.namespace,
            name=f"{name}-static-{index}",
            voice=key,
            base_url=f"{parts.scheme}://{parts.netloc}",
            ready=True,
        )
        out.append(StaticUpstream(voice, pod))
    return out


class KubeDiscovery:
    """Watches TTSVoices and voice pods in some namespaces (or all) into a Fleet."""

    def __init__(
        self,
        api_client: Any,
        fleet: Fleet,
        loop: asyncio.AbstractEventLoop,
        namespaces: tuple[str, ...] | None,
    ) -> None:
        self._api = api_client
        self._fleet = fleet
        self._loop = loop
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced: set[tuple[str, str | None]] = set()
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def start(self) -> None:
        for namespace in self._namespaces:
            for kind in ("voices", "pods"):
                thread = threading.Thread(
                    target=self._run,
                    args=(kind, namespace),
                    name=f"watch-{kind}-{namespace or 'all'}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    # -- threads ---------------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _lister(
        self, kind: str, namespace: str | None
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        from kubernetes import client

        if kind == "voices":
            custom = client.CustomObjectsApi(self._api)
            if namespace is None:
                return custom.list_cluster_custom_object, (crd.GROUP, crd.VERSION, crd.PLURAL), {}
            return (
                custom.list_namespaced_custom_object,
                (crd.GROUP, crd.VERSION, namespace, crd.PLURAL),
                {},
            )
        core = client.CoreV1Api(self._api)
        # Only the operator's voice pods come back: the router's ServiceAccount may read
        # every pod in its namespaces, but it asks for no other pod's spec or env.
        selector = {"label_selector": labels.VOICE_POD_SELECTOR}
        if namespace is None:
            return core.list_pod_for_all_namespaces, (), selector
        return core.list_namespaced_pod, (namespace,), selector

    def _run(self, kind: str, namespace: str | None) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch(kind, namespace)
            except Exception as exc:  # any API or network error: say so, list again
                if self._stop.is_set():
                    return
                self.last_error = f"{kind} watch in {namespace or 'all namespaces'}: {exc}"
                log.warning("%s; listing again in %.0f s", self.last_error, _RETRY_S)
                self._stop.wait(_RETRY_S)

    def _list_and_watch(self, kind: str, namespace: str | None) -> None:
        from kubernetes import watch

        lister, args, kwargs = self._lister(kind, namespace)
        listed = lister(*args, **kwargs)
        if kind == "voices":
            items = [voice_from_object(o) for o in listed.get("items", [])]
            version = str(listed.get("metadata", {}).get("resourceVersion", ""))
            self._post(self._fleet.replace, items, None, namespace)
        else:
            raw = self._api.sanitize_for_serialization(listed)
            pods = [p for p in (pod_from_object(o) for o in raw.get("items", [])) if p]
            version = str(raw.get("metadata", {}).get("resourceVersion", ""))
            self._post(self._fleet.replace, None, pods, namespace)
        self._mark_synced(kind, namespace)
        self.last_error = None
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                lister,
                *args,
                resource_version=version,
                timeout_seconds=_WATCH_TIMEOUT_S,
                allow_watch_bookmarks=True,
                **kwargs,
            ):
                if self._stop.is_set():
                    return
                self._apply(kind, event)
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, kind: str, event: dict[str, Any]) -> None:
        kind_of_event = event.get("type")
        if kind_of_event == "ERROR":
            raise RuntimeError(f"watch error: {event.get('raw_object') or event.get('object')}")
        if kind_of_event not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK
        if kind == "voices":
            voice = voice_from_object(event["object"])
            if kind_of_event == "DELETED":
                self._post(self._fleet.remove_voice, voice.key)
            else:
                self._post(self._fleet.upsert_voice, voice)
            return
        raw = event.get("raw_object") or self._api.sanitize_for_serialization(event["object"])
        pod = pod_from_object(raw)
        if pod is None:
            return
        if kind_of_event == "DELETED":
            self._post(self._fleet.remove_pod, pod.key)
        else:
            self._post(self._fleet.upsert_pod, pod)

    def _mark_synced(self, kind: str, namespace: str | None) -> None:
        with self._lock:
            self._synced.add((kind, namespace))
            done = len(self._synced) == 2 * len(self._namespaces)
        if done:
            self._post(setattr, self._fleet, "synced", True)
