"""kopf handlers: decode, delegate to the pure core, apply through `k8s`, report.

Flow of one reconcile (create / update / resume of a TTSVoice)::

    parse_voice(body) ─▶ problems (PVC exists?) ─▶ build_* ─▶ kopf.adopt ─▶ k8s.apply
                                                     └──────────────▶ derive_status ─▶ status patch
                                                                        └─▶ transitions ─▶ Events

A Deployment event (its status moved) recomputes the owning voice's status the
same way, without applying anything. Decisions live in `builders` and
`conditions`; this module only moves data between them and the API.

Handlers are plain `def`: kopf runs them in its thread pool
(`settings.execution.max_workers`), which is where the blocking client calls
belong. Nothing is registered at import: `build_registry()` makes a fresh
`kopf.OperatorRegistry`, and dependencies reach handlers through `kopf.Memo`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from voicefleet_api.crd import GROUP, KIND, PLURAL, VERSION
from voicefleet_api.labels import VOICE_LABEL
from voicefleet_operator import labels, pods
from voicefleet_operator.autoscaler import (
    GRACEFUL_EXIT_SECONDS,
    ROUTER_INDEX_NAME,
    Autoscaler,
    AutoscalerConfig,
    router_selector,
    run_daemon,
)
from voicefleet_operator.builders import BuildOptions, build_deployment, build_pdb, build_service
from voicefleet_operator.conditions import Problem, derive_status, transitions
from voicefleet_operator.failures import PodReport, pod_report, rejected_problem
from voicefleet_operator.k8s import Kube, KubeError
from voicefleet_operator.metrics import OperatorMetrics
from voicefleet_operator.settings import OperatorConfig
from voicefleet_operator.spec import SpecError, Voice, parse_voice

REJECTED_STATUSES = frozenset({400, 422})
"""API answers that mean "this object is invalid": no retry will change them, only a new
spec will (kopf.PermanentError; the update handler runs on the next spec change)."""
RETRY_DELAY = 30.0
"""Seconds before kopf retries a voice that is invalid or waits on something (a PVC)."""
WATCH_SERVER_TIMEOUT = 600
"""Ask the API server to end each watch after this long, so a silently dead
connection is noticed and re-established (kopf's default is to wait forever)."""
ANNOTATION_PREFIX = "operator.voicefleet.io"
"""kopf's own bookkeeping annotations on TTSVoices (instead of kopf.zalando.org/...)."""


@dataclass
class Deps:
    """Everything handlers need, carried in `kopf.Memo` (no module globals)."""

    config: OperatorConfig
    kube: Kube
    metrics: OperatorMetrics
    options: BuildOptions
    autoscaler: Autoscaler | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _rejections: dict[tuple[str, str], tuple[int, Problem]] = field(default_factory=dict)

    @classmethod
    def create(cls, *, config: OperatorConfig, kube: Kube, metrics: OperatorMetrics) -> Deps:
        return cls(
            config=config,
            kube=kube,
            metrics=metrics,
            options=BuildOptions(
                default_image=config.default_image, default_gpu_image=config.gpu_image
            ),
            autoscaler=(
                Autoscaler(
                    AutoscalerConfig(
                        interval=config.autoscale_interval,
                        scrape_timeout=min(0.8 * config.autoscale_interval, 5.0),
                        stale_after=max(5.0, 3 * config.autoscale_interval),
                        router_urls=config.router_metrics_urls,
                        router_port=config.router_metrics_port,
                    ),
                    kube,
                )
                if config.autoscale_interval > 0
                else None
            ),
        )

    def voice_lock(self, namespace: str, name: str) -> threading.Lock:
        """One lock per voice: the reconcile and the Deployment-event path both write
        its status from different threads; serialising them keeps read-compare-write
        of conditions (and the Events derived from it) consistent."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
            self._rejections.pop((namespace, name), None)

    def reject(self, voice: Voice, problem: Problem | None) -> None:
        """Remember (or, with None, forget) that the API server refused this generation's
        objects, so status refreshes from pod and Deployment events keep reporting it."""
        with self._locks_guard:
            if problem is None:
                self._rejections.pop((voice.namespace, voice.name), None)
            else:
                self._rejections[(voice.namespace, voice.name)] = (voice.generation, problem)

    def rejection(self, voice: Voice) -> list[Problem]:
        """The refusal recorded for this voice's current generation, if any."""
        with self._locks_guard:
            found = self._rejections.get((voice.namespace, voice.name))
        return [found[1]] if found is not None and found[0] == voice.generation else []


def _body(raw: Mapping[str, Any]) -> kopf.Body:
    """kopf's typed view of a plain dict (for kopf.event / kopf.adopt)."""
    return kopf.Body(cast(kopf.RawBody, dict(raw)))


def _pod_report(kwargs: Mapping[str, Any], voice: Voice) -> PodReport:
    """What the voice's pods say, from the pod index kopf injected into a handler."""
    index = kwargs.get(pods.INDEX_NAME)
    if not isinstance(index, Mapping):
        return PodReport()
    return pod_report(
        pods.pods_of(index, voice.namespace, voice.name), memory=voice.spec.resources.memory
    )


def _deps(memo: Any) -> Deps:
    deps = memo.get("deps") if isinstance(memo, Mapping) else getattr(memo, "deps", None)
    if not isinstance(deps, Deps):
        raise RuntimeError("voicefleet-operator started without Deps in kopf.Memo")
    return deps


# --- settings and registry --------------------------------------------------------------


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf settings for this operator (see docs/operator.md for the reasons).

    Persistence stays in annotations (with our own prefix), not `status.kopf`:
    the TTSVoice status schema is structural and would prune kopf's free-form
    progress, and annotations survive restarts so a resumed operator knows what
    it last handled (no duplicate work). Events: only the ones handlers post
    explicitly (`posting.loggers` off), so 100 voices do not mean 100s of
    "handler succeeded" Events.
    """
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
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
    return settings


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator; nothing global is touched.

    ``config`` adds what depends on flags: the autoscaler daemon (unless
    ``--autoscale-interval 0``) and the index of router pods (``--router-pod-selector``).
    """
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(ensure_peering)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(reconcile)
    kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)(reconcile)
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(reconcile)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True)(deleted)
    kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={labels.MANAGED_BY_LABEL: labels.MANAGED_BY},
        registry=registry,
    )(deployment_event)
    kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry)(pvc_event)
    kopf.index(
        "",
        "v1",
        "pods",
        labels={VOICE_LABEL: kopf.PRESENT},
        id=pods.INDEX_NAME,
        registry=registry,
    )(pods.index_pod)
    kopf.on.event("", "v1", "pods", labels={VOICE_LABEL: kopf.PRESENT}, registry=registry)(
        pod_event
    )
    if config is None or config.autoscale_interval > 0:
        kopf.daemon(
            GROUP,
            VERSION,
            PLURAL,
            registry=registry,
            cancellation_backoff=GRACEFUL_EXIT_SECONDS,
            cancellation_timeout=5.0,
        )(autoscale)
        kopf.on.cleanup(registry=registry)(close_autoscaler)
    if config is not None and config.router_pod_selector:
        kopf.index(
            "",
            "v1",
            "pods",
            labels=router_selector(config.router_pod_selector),
            id=ROUTER_INDEX_NAME,
            registry=registry,
        )(pods.index_pod_any)
    return registry


async def autoscale(
    body: kopf.Body, stopped: kopf.DaemonStopped, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """The voice's autoscaler loop (``autoscaler.run_daemon``); logic lives there."""
    deps = _deps(memo)
    if deps.autoscaler is None:
        return
    await run_daemon(
        deps.autoscaler,
        body,
        stopped,
        kwargs[pods.INDEX_NAME],
        kwargs.get(ROUTER_INDEX_NAME),
        logger,
    )


async def close_autoscaler(memo: Any, **_: Any) -> None:
    deps = _deps(memo)
    if deps.autoscaler is not None:
        await deps.autoscaler.close()


# --- activities -------------------------------------------------------------------------


def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf authenticates with exactly the credentials our own client uses."""
    from voicefleet_operator.k8s import connection_info

    return connection_info(_deps(memo).kube.api)


def ensure_peering(memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Create the peering object(s) kopf will heartbeat into, unless standalone.

    With `--peering` a missing peering CRD is fatal (kopf refuses to start);
    without it (auto mode) we just say that replicas will not coordinate.
    """
    deps = _deps(memo)
    config = deps.config
    if config.standalone:
        return
    targets: Sequence[str | None] = (
        [None] if config.clusterwide else [ns for ns in config.namespaces if "*" not in ns]
    )
    for namespace in targets:
        try:
            created = deps.kube.ensure_peering(config.peering_name, namespace)
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


# --- the reconcile ----------------------------------------------------------------------


def _problems(voice: Voice, kube: Kube) -> list[Problem]:
    """What only the operator can see wrong: today, a volume model's missing PVC."""
    volume = voice.spec.model.volume
    if volume is None:
        return []
    claim = volume.persistent_volume_claim.claim_name
    if kube.pvc_exists(voice.namespace, claim):
        return []
    return [
        Problem(
            reason="PVCNotFound",
            message=(
                f"PersistentVolumeClaim {claim!r} (spec.model.volume.persistentVolumeClaim) "
                f"does not exist in namespace {voice.namespace!r}; create it with the model "
                f"at {volume.path!r}; retrying every {RETRY_DELAY:.0f}s"
            ),
        )
    ]


def _write_status(
    deps: Deps,
    body: Mapping[str, Any],
    voice: Voice,
    deployment: Mapping[str, Any] | None,
    problems: Sequence[Problem],
    pod_state: PodReport | None = None,
) -> None:
    """Derive the status, patch it only when it differs, post Events for transitions.

    `body` must be the freshest TTSVoice we have: its conditions are the "before"
    for lastTransitionTime and for deciding which transitions deserve an Event.
    `problems` are the operator's own; the API server's refusal of this generation's
    objects and what the pods report (`pod_state`, from the pod index) are added here, so
    every path that writes status reports them the same way.
    """
    current: Mapping[str, Any] = body.get("status") or {}
    previous = list(current.get("conditions") or [])
    report = pod_state or PodReport()
    found = [*problems, *deps.rejection(voice), *report.problems]
    status = derive_status(
        voice, deployment, found, previous, datetime.now(UTC), starting=report.starting
    )
    deps.metrics.observe_voice(f"{voice.namespace}/{voice.name}", status)
    if all(current.get(key) == value for key, value in status.items()):
        return
    deps.kube.patch_voice_status(voice.namespace, voice.name, status)
    deps.metrics.status_writes.inc()
    for event_type, reason, message in transitions(previous, status.get("conditions") or []):
        kopf.event(_body(body), type=event_type, reason=reason, message=message)


class Rejected(Exception):
    """The API server refused an owned object as invalid (`REJECTED_STATUSES`)."""

    def __init__(self, kind: str, error: KubeError) -> None:
        super().__init__(f"{kind}: {error}")
        self.problem = rejected_problem(kind, error.status, error.message)


def _apply_one(deps: Deps, obj: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return deps.kube.apply(obj)
    except KubeError as exc:
        if exc.status in REJECTED_STATUSES:
            raise Rejected(str(obj["kind"]), exc) from exc
        raise


def _apply(deps: Deps, body: Mapping[str, Any], voice: Voice) -> dict[str, Any]:
    """Server-side apply Service, PDB (or delete it), then Deployment; return the
    Deployment as the API server now has it. An object the API server refuses raises
    `Rejected`; a fully applied generation clears an earlier refusal."""
    service = build_service(voice)
    pdb = build_pdb(voice)
    deployment = build_deployment(voice, deps.options)
    owned = [obj for obj in (service, pdb, deployment) if obj is not None]
    kopf.adopt(owned, owner=_body(body))
    _apply_one(deps, service)
    if pdb is not None:
        _apply_one(deps, pdb)
    elif deps.kube.delete_pdb(voice.namespace, voice.name):
        kopf.event(
            _body(body),
            type="Normal",
            reason="PodDisruptionBudgetDeleted",
            message="autoscaling.maxReplicas is 1: the PodDisruptionBudget is no longer needed",
        )
    applied = _apply_one(deps, deployment)
    deps.reject(voice, None)
    return applied


def _with_fresh_status(deps: Deps, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with the status the API server has now (kopf's copy may predate a status
    write from a pod or Deployment event), so Events are derived against what is stored."""
    meta = body.get("metadata") or {}
    fresh = deps.kube.get_voice(str(meta.get("namespace")), str(meta.get("name")))
    if fresh is None or (fresh.get("metadata") or {}).get("uid") != meta.get("uid"):
        return body
    return {**body, "status": fresh.get("status") or {}}


def _invalid(
    deps: Deps, body: Mapping[str, Any], error: SpecError, logger: kopf.Logger
) -> kopf.TemporaryError:
    """Report a spec the API server let through but the operator cannot build.

    No Voice exists to derive status from, so this writes just the Degraded
    condition (keeping the transition time when it was already reported).
    """
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    message = f"invalid spec: {error}"
    current: Mapping[str, Any] = body.get("status") or {}
    previous = list(current.get("conditions") or [])
    old = next((c for c in previous if c.get("type") == "Degraded"), None)
    generation = int(meta.get("generation") or 0)
    unchanged = (
        old is not None
        and old.get("status") == "True"
        and old.get("reason") == "InvalidSpec"
        and old.get("message") == message
    )
    if not unchanged:
        degraded = {
            "type": "Degraded",
            "status": "True",
            "reason": "InvalidSpec",
            "message": message,
            "lastTransitionTime": (
                old["lastTransitionTime"]
                if old is not None and old.get("status") == "True"
                else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            "observedGeneration": generation,
        }
        conditions = [c for c in previous if c.get("type") != "Degraded"] + [degraded]
        deps.kube.patch_voice_status(
            namespace, name, {"conditions": conditions, "observedGeneration": generation}
        )
        deps.metrics.status_writes.inc()
        deps.metrics.observe_voice(f"{namespace}/{name}", {"conditions": conditions})
        kopf.event(_body(body), type="Warning", reason="InvalidSpec", message=message)
    logger.warning("%s", message)
    deps.metrics.reconcile_errors.labels(reason="invalid_spec").inc()
    return kopf.TemporaryError(message, delay=RETRY_DELAY)


def reconcile(body: kopf.Body, reason: Any, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Make the cluster match one TTSVoice; idempotent, so create/update/resume share it."""
    deps = _deps(memo)
    trigger = str(reason) if str(reason) in ("create", "update", "resume") else "update"
    started = time.perf_counter()
    deps.metrics.reconciles.labels(trigger=trigger).inc()
    try:
        _reconcile(deps, dict(body), logger, kwargs)
    finally:
        deps.metrics.reconcile_duration.labels(trigger=trigger).observe(
            time.perf_counter() - started
        )


def _reconcile(
    deps: Deps, body: dict[str, Any], logger: kopf.Logger, kwargs: Mapping[str, Any]
) -> None:
    """One reconcile; `kwargs` are the calling handler's (kopf injects the pod index)."""
    try:
        voice = parse_voice(body)
    except SpecError as exc:
        raise _invalid(deps, body, exc, logger) from exc
    with deps.voice_lock(voice.namespace, voice.name):
        try:
            body = _with_fresh_status(deps, body)
            problems = _problems(voice, deps.kube)
            report = _pod_report(kwargs, voice)
            if problems:
                # Leave whatever runs alone (a PVC deleted under serving pods must not
                # take them down); report, and look again later.
                deployment = deps.kube.get_deployment(voice.namespace, voice.name)
            else:
                try:
                    deployment = _apply(deps, body, voice)
                except Rejected as exc:
                    # Permanent for this spec: report it, do not retry every few seconds.
                    deps.reject(voice, exc.problem)
                    deployment = deps.kube.get_deployment(voice.namespace, voice.name)
                    _write_status(deps, body, voice, deployment, problems, report)
                    deps.metrics.reconcile_errors.labels(reason="rejected").inc()
                    logger.warning("%s", exc.problem.message)
                    raise kopf.PermanentError(exc.problem.message) from exc
            _write_status(deps, body, voice, deployment, problems, report)
        except KubeError as exc:
            deps.metrics.reconcile_errors.labels(reason="api").inc()
            if exc.status == 403:  # RBAC: say on the voice itself which permission is missing
                kopf.event(
                    _body(body),
                    type="Warning",
                    reason="Forbidden",
                    message=f"{exc.message} (the operator's ServiceAccount lacks this "
                    "permission: check its ClusterRole, e.g. the Helm chart's)",
                )
            raise kopf.TemporaryError(f"API call failed: {exc}", delay=5) from exc
    if problems:
        deps.metrics.reconcile_errors.labels(reason="problem").inc()
        raise kopf.TemporaryError("; ".join(p.message for p in problems), delay=RETRY_DELAY)
    logger.info(
        "reconciled generation %d: Deployment replicas %d",
        voice.generation,
        voice.spec.replicas,
    )


def deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Nothing to do: ownerReferences let the garbage collector remove what we made."""
    meta = body.get("metadata") or {}
    _deps(memo).forget(str(meta.get("namespace")), str(meta.get("name")))
    _deps(memo).metrics.forget_voice(f"{meta.get('namespace')}/{meta.get('name')}")
    logger.info("deleted; the garbage collector removes its Deployment, Service and PDB")


# --- Deployment events ------------------------------------------------------------------


def owner_voice(deployment: Mapping[str, Any]) -> str | None:
    for ref in (deployment.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


def _replicas_drifted(deployment: Mapping[str, Any], voice: Voice) -> bool:
    """True when the Deployment asks for other replicas than the voice's ``spec.replicas``."""
    replicas = (deployment.get("spec") or {}).get("replicas")
    return isinstance(replicas, int) and replicas != voice.spec.replicas


def deployment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A managed Deployment changed: refresh its voice's status (replicas, Ready…).

    A Deployment deleted behind our back while its voice lives is re-created at once
    rather than waiting for the next change to the voice. Likewise a Deployment whose
    ``spec.replicas`` was written by someone else (``kubectl scale deployment``, an HPA
    aimed at the Deployment) is put back to the voice's ``spec.replicas`` at once: the
    TTSVoice's scale subresource is the one writer of replicas, so two writers never
    take turns. The voice is read fresh, so a Deployment event that merely lags a
    ``kubectl scale ttsvoice`` re-applies the same value and changes nothing.
    """
    deps = _deps(memo)
    deployment = dict(body)
    meta = deployment.get("metadata") or {}
    namespace = str(meta.get("namespace"))
    name = owner_voice(deployment)
    if name is None:
        return
    started = time.perf_counter()
    deps.metrics.reconciles.labels(trigger="deployment").inc()
    try:
        with deps.voice_lock(namespace, name):  # read under the lock: see pod_event
            voice_body = deps.kube.get_voice(namespace, name)
            if voice_body is None or (voice_body.get("metadata") or {}).get("deletionTimestamp"):
                return
            try:
                voice = parse_voice(voice_body)
            except SpecError:
                return  # the voice's own reconcile reports it
            problems = _problems(voice, deps.kube)
            report = _pod_report(kwargs, voice)
            current: Mapping[str, Any] | None = deployment
            try:
                if event.get("type") == "DELETED":
                    current = None
                    if not problems:
                        logger.warning("Deployment deleted while its TTSVoice exists: re-creating")
                        current = _apply(deps, voice_body, voice)
                elif not problems and _replicas_drifted(deployment, voice):
                    logger.warning(
                        "Deployment replicas were set to %s outside the TTSVoice: restoring %s"
                        " (scale the TTSVoice instead)",
                        (deployment.get("spec") or {}).get("replicas"),
                        voice.spec.replicas,
                    )
                    current = _apply(deps, voice_body, voice)
            except Rejected as exc:
                deps.reject(voice, exc.problem)
            _write_status(deps, voice_body, voice, current, problems, report)
    except KubeError as exc:
        deps.metrics.reconcile_errors.labels(reason="api").inc()
        logger.warning("could not refresh TTSVoice %s/%s status: %s", namespace, name, exc)
    finally:
        deps.metrics.reconcile_duration.labels(trigger="deployment").observe(
            time.perf_counter() - started
        )


# --- PVC events -------------------------------------------------------------------------


def pvc_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A claim appeared: reconcile at once the voices that were waiting for it.

    Without this a voice stays Degraded until kopf's next retry (`RETRY_DELAY`);
    with it, creating the missing PVC brings the voice up within a second.
    Only real ADDED events count (kopf's initial listing has no type).
    """
    if event.get("type") != "ADDED":
        return
    deps = _deps(memo)
    meta = body.get("metadata") or {}
    namespace, claim = str(meta.get("namespace")), str(meta.get("name"))
    try:
        candidates = deps.kube.list_voices(namespace)
    except KubeError as exc:
        logger.warning("could not list TTSVoices in %s: %s", namespace, exc)
        return
    for voice_body in candidates:
        volume = ((voice_body.get("spec") or {}).get("model") or {}).get("volume") or {}
        if (volume.get("persistentVolumeClaim") or {}).get("claimName") != claim:
            continue
        if (voice_body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = voice_body["metadata"]["name"]
        logger.info("PersistentVolumeClaim %s appeared: reconciling TTSVoice %s", claim, name)
        deps.metrics.reconciles.labels(trigger="pvc").inc()
        try:
            _reconcile(deps, voice_body, logger, kwargs)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            logger.warning("TTSVoice %s/%s still not reconciled: %s", namespace, name, exc)


# --- pods -------------------------------------------------------------------------------


def pod_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A voice's pod changed (scheduled, started, crashed, became ready): refresh the
    voice's status from the pod index at once, so a crash loop, a pull error or an
    unschedulable pod reaches ``Degraded`` within the pod event, not a timeout.

    kopf updates the index before it calls handlers for the same event, so the index
    already holds this pod's new status. Only the voice and its Deployment are read.
    """
    meta = body.get("metadata") or {}
    name = (meta.get("labels") or {}).get(labels.VOICE_LABEL)
    if not name:
        return
    namespace = str(meta.get("namespace"))
    deps = _deps(memo)
    started = time.perf_counter()
    deps.metrics.reconciles.labels(trigger="pod").inc()
    try:
        # Read the voice under its lock: its conditions are the "before" of the Events,
        # and another thread may just have rewritten them.
        with deps.voice_lock(namespace, str(name)):
            voice_body = deps.kube.get_voice(namespace, str(name))
            if voice_body is None or (voice_body.get("metadata") or {}).get("deletionTimestamp"):
                return
            try:
                voice = parse_voice(voice_body)
            except SpecError:
                return  # the voice's own reconcile reports it
            report = _pod_report(kwargs, voice)
            deployment = deps.kube.get_deployment(namespace, voice.name)
            problems = _problems(voice, deps.kube)
            _write_status(deps, voice_body, voice, deployment, problems, report)
    except KubeError as exc:
        deps.metrics.reconcile_errors.labels(reason="api").inc()
        logger.warning("could not refresh TTSVoice %s/%s status: %s", namespace, name, exc)
    finally:
        deps.metrics.reconcile_duration.labels(trigger="pod").observe(time.perf_counter() - started)
