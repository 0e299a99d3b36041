"""How the operator is plugged into kopf: its settings, its registry, its activities.

Nothing is registered at import: :func:`build_registry` makes a fresh
``kopf.OperatorRegistry`` (tests build as many as they like), and every handler
gets its collaborators from ``kopf.Memo`` (:class:`~voicefleet_operator.deps.Deps`).
What each handler does is :mod:`voicefleet_operator.handlers`; what the indexes hold
is :mod:`voicefleet_operator.indexes` and :mod:`voicefleet_operator.pods`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import kopf

from voicefleet_api.crd import GROUP, PLURAL, VERSION
from voicefleet_api.labels import MANAGED_BY, MANAGED_BY_LABEL, VOICE_LABEL
from voicefleet_operator import handlers, indexes, pods
from voicefleet_operator.autoscaler_load import ROUTER_INDEX_NAME, router_selector
from voicefleet_operator.autoscaler_status import VOICE_INDEX_NAME, index_voice
from voicefleet_operator.handlers import deps_of
from voicefleet_operator.k8s import KubeError
from voicefleet_operator.kopfstate import KopfState, MemoryDiffBaseStorage, MemoryProgressStorage
from voicefleet_operator.settings import OperatorConfig

__all__ = ["ANNOTATION_PREFIX", "WATCH_SERVER_TIMEOUT", "build_registry", "build_settings"]

WATCH_SERVER_TIMEOUT = 600
"""Ask the API server to end each watch after this long, so a silently dead
connection is noticed and re-established (kopf's default is to wait forever)."""
ANNOTATION_PREFIX = "operator.voicefleet.io"
"""The prefix of what kopf still writes on a TTSVoice: a delayed retry's touch annotation
(and the finalizer name kopf removes from voices of older versions)."""


def in_loop(index: Callable[..., Mapping[Any, Any]]) -> Callable[..., Awaitable[Mapping[Any, Any]]]:
    """``index`` as a coroutine, so kopf calls it in its event loop, not its thread pool.

    kopf hands every plain ``def`` to ``execution.max_workers`` threads, index functions
    included: each watch event's index update was a hop to a thread and back, and waited
    for a free one behind reconciles blocked on the API server (a new voice's events
    make about a dozen such updates). The index functions are pure and take
    microseconds, so they run inline. No ``functools.wraps``: kopf follows
    ``__wrapped__`` and would see the plain function again.
    """

    async def indexed(**kwargs: Any) -> Mapping[Any, Any]:
        return index(**kwargs)

    indexed.__name__ = indexed.__qualname__ = getattr(index, "__name__", "index")
    indexed.__doc__ = index.__doc__
    return indexed


def build_settings(config: OperatorConfig, state: KopfState | None = None) -> kopf.OperatorSettings:
    """kopf settings for this operator (see docs/operator.md for the reasons).

    kopf's bookkeeping (the essence it last handled, its handlers' progress) stays in
    memory (``state``, :mod:`voicefleet_operator.kopfstate`), not on the voices: the
    annotation storage cost every new voice a patch of its own (and a watch event for
    every watcher), and the TTSVoice status schema is structural, so kopf's free-form
    ``status.kopf`` would be pruned anyway. Only a delayed retry's wake-up (kopf's touch)
    still patches an annotation under our prefix. Events: only the ones handlers post
    explicitly (`posting.loggers` off), so 100 voices do not mean 100s of "handler
    succeeded" Events.
    """
    settings = kopf.OperatorSettings()
    state = state if state is not None else KopfState()
    settings.persistence.progress_storage = MemoryProgressStorage(state, prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = MemoryDiffBaseStorage(state)
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT + 30
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = config.workers
    settings.peering.name = config.peering_name
    settings.peering.priority = config.priority
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = config.peering is not None
    # Named namespaces (the chart's namespaced mode): Roles grant no cluster-wide list of
    # namespaces or CRDs, and nothing needs them; kopf would only log that it may not.
    settings.scanning.disabled = config.exact_namespaces
    return settings


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator; nothing global is touched.

    ``config`` adds what depends on flags: the autoscaler loop and its voice index (unless
    ``--autoscale-interval 0``) and the index of router pods (``--router-pod-selector``, in
    ``--router-namespace`` only).
    Voices, Deployments, claims and pods are indexed so that handlers read nothing
    from the API server (see :mod:`voicefleet_operator.handlers`).
    """
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(ensure_peering)
    managed = {MANAGED_BY_LABEL: MANAGED_BY}
    kopf.index(GROUP, VERSION, PLURAL, id=indexes.VOICES_INDEX, registry=registry)(
        in_loop(indexes.index_voice)
    )
    kopf.index(
        "apps",
        "v1",
        "deployments",
        labels=managed,
        id=indexes.DEPLOYMENTS_INDEX,
        registry=registry,
    )(in_loop(indexes.index_deployment))
    kopf.index("", "v1", "persistentvolumeclaims", id=indexes.CLAIMS_INDEX, registry=registry)(
        in_loop(indexes.index_claim)
    )
    kopf.index(
        "",
        "v1",
        "pods",
        labels={VOICE_LABEL: kopf.PRESENT},
        id=pods.INDEX_NAME,
        registry=registry,
    )(in_loop(pods.index_pod))
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(handlers.reconcile)
    kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)(handlers.reconcile)
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(handlers.reconcile)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True)(handlers.deleted)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(forget_deleted_voice)
    kopf.on.event("apps", "v1", "deployments", labels=managed, registry=registry)(
        handlers.deployment_event
    )
    kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry)(handlers.pvc_event)
    kopf.on.event("", "v1", "pods", labels={VOICE_LABEL: kopf.PRESENT}, registry=registry)(
        handlers.pod_event
    )
    if config is None or config.autoscale_interval > 0:
        # One loop for all voices, not a daemon per voice: daemons need a finalizer on
        # every voice, which strands voices once the operator is gone (autoscaler.py).
        kopf.index(GROUP, VERSION, PLURAL, id=VOICE_INDEX_NAME, registry=registry)(
            in_loop(index_voice)
        )
        kopf.on.startup(registry=registry)(start_autoscaler)
        kopf.on.cleanup(registry=registry)(stop_autoscaler)
    if config is not None and config.router_pod_selector:
        kopf.index(
            "",
            "v1",
            "pods",
            labels=router_selector(config.router_pod_selector),
            id=ROUTER_INDEX_NAME,
            registry=registry,
        )(in_loop(pods.router_indexer(config.router_namespace or "")))
    return registry


async def start_autoscaler(memo: Any, **kwargs: Any) -> None:
    """Start the autoscaler loop in the background (``autoscaler.Autoscaler``).

    It returns at once: a voice's first reconcile never waits behind autoscaler work.
    The indexes kopf hands to this startup handler are its live views, filled as its
    watches list and follow voices and pods.
    """
    deps = deps_of(memo)
    if deps.autoscaler is not None:
        deps.autoscaler.start(
            kwargs[VOICE_INDEX_NAME], kwargs[pods.INDEX_NAME], kwargs.get(ROUTER_INDEX_NAME)
        )


async def stop_autoscaler(memo: Any, **_: Any) -> None:
    deps = deps_of(memo)
    if deps.autoscaler is not None:
        await deps.autoscaler.stop()


async def forget_deleted_voice(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A voice is gone: drop what the operator kept about it (kopf's bookkeeping, locks,
    refusals, last status, gauges). The optional delete handler runs only while another
    finalizer holds a deleted voice; this runs on every deletion, in the event loop."""
    if event.get("type") != "DELETED":
        return
    deps = deps_of(memo)
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    deps.kopf_state.forget(str(meta.get("uid") or ""))
    deps.memory.forget(namespace, name)
    deps.metrics.forget_voice(f"{namespace}/{name}")


# --- activities -------------------------------------------------------------------------


def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf authenticates with exactly the credentials our own client uses."""
    connection = deps_of(memo).connection
    if connection is None:
        raise kopf.PermanentError("voicefleet-operator started without credentials in Deps")
    return connection()


def ensure_peering(memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Create the peering object(s) kopf will heartbeat into, unless standalone.

    With `--peering` a missing peering CRD is fatal (kopf refuses to start);
    without it (auto mode) we just say that replicas will not coordinate.
    """
    deps = deps_of(memo)
    config = deps.config
    if config.standalone:
        return
    targets: Sequence[str | None] = (
        [None] if config.clusterwide else [ns for ns in config.namespaces if "*" not in ns]
    )
    ensure = deps.ensure_peering
    if ensure is None:
        return
    for namespace in targets:
        try:
            created = ensure(config.peering_name, namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise
            if config.peering is not None:
                raise kopf.PermanentError(
                    f"--peering {config.peering}: the kopf peering CRDs are not installed "
                    "(kubectl apply -f crds/kopf-peering.yaml), or use --standalone"
                ) from exc
            logger.warning(
                "kopf peering CRDs are not installed (crds/kopf-peering.yaml): "
                "running without peering; do not run a second replica"
            )
            return
        if created:
            logger.info(
                "created peering object %r in %s", config.peering_name, namespace or "cluster"
            )
