"""kopf handlers: every event about a voice becomes a reconcile or a status refresh.

Two paths, both under the voice's lock (:mod:`voicefleet_operator.memory`)::

    reconcile (create / update / resume / a claim appeared)
        parse_voice ─▶ problems (claim in the index?) ─▶ build_* ─▶ kopf.adopt ─▶ apply
                                                                      └─▶ write_status
    refresh_status (a pod or a Deployment changed)
        voice, Deployment, claims, pods from kopf's indexes ─▶ [repair Deployment] ─▶ write_status

    write_status: derive_status ─▶ patch only when it differs ─▶ transitions ─▶ Events

Nothing is read from the API server on either path: kopf's indexes
(:mod:`voicefleet_operator.indexes`) hold the voices, Deployments, PVCs and pods, and
the status we last wrote is remembered. A new voice therefore costs its writes
only: two server-side applies (Service, Deployment; a NetworkPolicy too when policies
are on, and a PodDisruptionBudget only for a voice that asks for more than one pod) and
its status, written when it is first reconciled and again once the Deployment
controller has observed the Deployment (docs/operator.md counts them;
tests/integration/test_operator_requests.py keeps it so).

The reconcile handlers are plain ``def``: kopf runs them in its thread pool
(``settings.execution.max_workers``), where the blocking client calls belong. The
Deployment and pod event handlers are coroutines: most of those events change nothing,
so :func:`refresh_due` decides in kopf's event loop and only a refresh that will write
goes to that pool (:data:`POOL`). How they are registered is
:mod:`voicefleet_operator.wiring`; their collaborators arrive in ``kopf.Memo`` as
:class:`~voicefleet_operator.deps.Deps`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from voicefleet_api.labels import VOICE_LABEL
from voicefleet_operator.builders import (
    build_deployment,
    build_network_policy,
    build_pdb,
    build_service,
    pdb_unwanted,
)
from voicefleet_operator.conditions import (
    Problem,
    derive_status,
    invalid_spec_status,
    transitions,
)
from voicefleet_operator.deps import Deps, kopf_body
from voicefleet_operator.failures import (
    PodReport,
    failed_problem,
    is_quota_error,
    pod_report,
    rejected_problem,
)
from voicefleet_operator.indexes import Views, owner_voice
from voicefleet_operator.k8s import KubeError
from voicefleet_operator.spec import SpecError, Voice, parse_voice

__all__ = [
    "FAILED_RETRY_DELAY",
    "POOL",
    "REJECTED_STATUSES",
    "RETRY_DELAY",
    "deleted",
    "deployment_event",
    "deps_of",
    "pod_event",
    "pool_of",
    "pvc_event",
    "reconcile",
    "refresh_due",
    "refresh_status",
]

REJECTED_STATUSES = frozenset({400, 422})
"""API answers that mean "this object is invalid": no retry will change them, only a new
spec will (kopf.PermanentError; the update handler runs on the next spec change)."""
RETRY_DELAY = 30.0
"""Seconds before kopf retries a voice that is invalid or waits on something (a PVC)."""
FAILED_RETRY_DELAY = 15.0
"""Seconds between retries of an object the API server failed to store (a 5xx such as a
full Service range, or a quota): the cluster must change, so a calm pace suffices."""


POOL = "pool"
"""The ``kopf.Memo`` key of kopf's handler thread pool (``execution.executor``, sized by
``--workers``): where the async event handlers send a refresh that must write. Absent
(tests calling handlers directly), the loop's default executor serves."""


def pool_of(memo: Any) -> concurrent.futures.Executor | None:
    """kopf's handler pool from the memo (:data:`POOL`), or None for the loop's default."""
    pool = memo.get(POOL) if isinstance(memo, Mapping) else getattr(memo, POOL, None)
    return pool if isinstance(pool, concurrent.futures.Executor) else None


def deps_of(memo: Any) -> Deps:
    """The :class:`Deps` kopf carries in its memo (a startup without them is a bug)."""
    deps = memo.get("deps") if isinstance(memo, Mapping) else getattr(memo, "deps", None)
    if not isinstance(deps, Deps):
        raise RuntimeError("voicefleet-operator started without Deps in kopf.Memo")
    return deps


# --- what the operator sees ---------------------------------------------------------------


def _problems(voice: Voice, views: Views) -> list[Problem]:
    """What only the operator can see wrong: today, a volume model's missing PVC."""
    volume = voice.spec.model.volume
    if volume is None:
        return []
    claim = volume.persistent_volume_claim.claim_name
    if views.claim_exists(voice.namespace, claim):
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


def _pod_report(views: Views, voice: Voice) -> PodReport:
    return pod_report(
        views.pods_of(voice.namespace, voice.name), memory=voice.spec.resources.memory
    )


def _derived(
    deps: Deps,
    body: Mapping[str, Any],
    voice: Voice,
    deployment: Mapping[str, Any] | None,
    problems: Sequence[Problem],
    report: PodReport,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the voice's status as it is now, the status derived for it): see write_status."""
    current = deps.memory.status(body)
    found = [
        *problems,
        *deps.memory.refusals(voice.namespace, voice.name, voice.generation),
        *report.problems,
    ]
    status = derive_status(
        voice,
        deployment,
        found,
        list(current.get("conditions") or []),
        datetime.now(UTC),
        starting=report.starting,
        terminating=report.terminating,
    )
    return current, status


def _unchanged(current: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return all(current.get(key) == value for key, value in status.items())


def write_status(
    deps: Deps,
    body: Mapping[str, Any],
    voice: Voice,
    deployment: Mapping[str, Any] | None,
    problems: Sequence[Problem],
    report: PodReport,
) -> None:
    """Derive the status, patch it only when it differs, post Events for transitions.

    The "before" is the voice's status overlaid with what this operator last wrote
    (``VoiceMemory.status``): an index or a kopf body may not show our own last write
    yet. ``problems`` are the operator's own; the API server's refusals of this
    generation's objects and what the pods report are added here, so every path that
    writes status reports them the same way.
    """
    current, status = _derived(deps, body, voice, deployment, problems, report)
    previous = list(current.get("conditions") or [])
    deps.metrics.observe_voice(f"{voice.namespace}/{voice.name}", status)
    if _unchanged(current, status):
        return
    deps.kube.patch_voice_status(voice.namespace, voice.name, status)
    deps.memory.wrote(voice.namespace, voice.name, voice.uid, status)
    deps.metrics.status_writes.inc()
    for event_type, reason, message in transitions(previous, status.get("conditions") or []):
        deps.post_event(body, type=event_type, reason=reason, message=message)


# --- applying the owned objects -----------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The API server did not store an owned object; ``permanent`` when only a new spec helps."""

    problem: Problem
    permanent: bool


def _refusal(kind: str, error: KubeError) -> Refusal | None:
    """A refusal to report on the voice, or None for errors that are not about the object
    (unreachable server, missing permission, conflicts: those raise and kopf retries)."""
    if error.status in REJECTED_STATUSES:
        return Refusal(rejected_problem(kind, error.status, error.message), permanent=True)
    if error.status >= 500 or is_quota_error(error.status, error.message):
        return Refusal(
            failed_problem(kind, error.status, error.message, FAILED_RETRY_DELAY),
            permanent=False,
        )
    return None


def apply_owned(
    deps: Deps, body: Mapping[str, Any], voice: Voice, *, created: bool = False
) -> tuple[dict[str, Any] | None, list[Refusal]]:
    """Server-side apply the NetworkPolicy (when policies are on), the Service, the PDB,
    then the Deployment: the policy first, so no pod serves unprotected.

    The PDB is applied only while the voice asks for more than one pod, kept (neither
    applied nor deleted) below that, and deleted once ``autoscaling.maxReplicas`` is 1
    (:func:`~voicefleet_operator.builders.build_pdb`); a ``created`` voice owns none, so
    its reconcile deletes nothing.

    With policies off, a voice that existed before (any reconcile but its ``created`` one:
    a restart, a spec change) loses the NetworkPolicy a voice of its name owns from when
    they were on; a GET finds it, so new voices and the default (policies on) pay nothing.

    Each object is applied even when an earlier one was refused (a full Service range
    must not keep the pods from running). Returns the Deployment as stored (None when
    it was refused) and the refusals, which are remembered for this generation, so
    status refreshes keep reporting them; a fully applied generation clears them.
    """
    policy = build_network_policy(voice, deps.options)
    service = build_service(voice)
    pdb = build_pdb(voice)
    deployment = build_deployment(voice, deps.options)
    owned = [obj for obj in (policy, service, pdb, deployment) if obj is not None]
    kopf.adopt(owned, owner=kopf_body(body))
    refusals: list[Refusal] = []

    def one(obj: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            return deps.kube.apply(obj)
        except KubeError as exc:
            refused = _refusal(str(obj["kind"]), exc)
            if refused is None:
                raise
            refusals.append(refused)
            return None

    if policy is not None:
        one(policy)
    elif not created and _delete_our_network_policy(deps, voice):
        deps.post_event(
            body,
            type="Normal",
            reason="NetworkPolicyDeleted",
            message="network policies are off (no --network-policy-from): the voice's "
            "NetworkPolicy is deleted",
        )
    one(service)
    if pdb is not None:
        one(pdb)
    elif not created and pdb_unwanted(voice) and deps.kube.delete_pdb(voice.namespace, voice.name):
        deps.post_event(
            body,
            type="Normal",
            reason="PodDisruptionBudgetDeleted",
            message="autoscaling.maxReplicas is 1: the PodDisruptionBudget is no longer needed",
        )
    applied = one(deployment)
    deps.memory.refuse(
        voice.namespace, voice.name, voice.generation, tuple(r.problem for r in refusals)
    )
    return applied, refusals


def _delete_our_network_policy(deps: Deps, voice: Voice) -> bool:
    """Delete the policy of the voice's name if a TTSVoice of that name owns it: this voice,
    or an earlier one of the same name (deleted and created again) whose policy the garbage
    collector has not removed yet. One someone else wrote under that name is kept."""
    policy = deps.kube.network_policy(voice.namespace, voice.name)
    if policy is None or owner_voice(policy) != voice.name:
        return False
    uid = str((policy.get("metadata") or {}).get("uid") or "")
    return deps.kube.delete_network_policy(voice.namespace, voice.name, uid)


# --- the reconcile --------------------------------------------------------------------------


def _invalid(
    deps: Deps, body: Mapping[str, Any], error: SpecError, logger: kopf.Logger
) -> kopf.TemporaryError:
    """Report a spec the API server let through but the operator cannot build."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    message = f"invalid spec: {error}"
    previous = deps.memory.status(body).get("conditions") or []
    patch = invalid_spec_status(
        previous, message, int(meta.get("generation") or 0), datetime.now(UTC)
    )
    if patch is not None:
        deps.kube.patch_voice_status(namespace, name, patch)
        deps.memory.wrote(namespace, name, str(meta.get("uid") or ""), patch)
        deps.metrics.status_writes.inc()
        deps.metrics.observe_voice(f"{namespace}/{name}", patch)
        deps.post_event(body, type="Warning", reason="InvalidSpec", message=message)
    logger.warning("%s", message)
    deps.metrics.reconcile_errors.labels(reason="invalid_spec").inc()
    return kopf.TemporaryError(message, delay=RETRY_DELAY)


def reconcile(body: kopf.Body, reason: Any, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Make the cluster match one TTSVoice; idempotent, so create/update/resume share it."""
    deps = deps_of(memo)
    trigger = str(reason) if str(reason) in ("create", "update", "resume") else "update"
    created = trigger == "create"
    _timed(
        deps,
        trigger,
        lambda: reconcile_voice(deps, Views.of(kwargs), dict(body), logger, created=created),
    )


def reconcile_voice(
    deps: Deps,
    views: Views,
    body: Mapping[str, Any],
    logger: kopf.Logger,
    *,
    created: bool = False,
) -> None:
    """One reconcile of ``body`` (``created``: kopf's first, for a new voice); raises
    kopf's retry errors when it must run again."""
    try:
        voice = parse_voice(body)
    except SpecError as exc:
        raise _invalid(deps, body, exc, logger) from exc
    refusals: list[Refusal] = []
    with deps.memory.lock(voice.namespace, voice.name):
        try:
            problems = _problems(voice, views)
            deployment: Mapping[str, Any] | None
            if problems:
                # Leave whatever runs alone (a PVC deleted under serving pods must not
                # take them down); report, and look again later.
                deployment = views.deployment(voice.namespace, voice.name)
            else:
                deployment, refusals = apply_owned(deps, body, voice, created=created)
                if deployment is None:
                    deployment = views.deployment(voice.namespace, voice.name)
            write_status(deps, body, voice, deployment, problems, _pod_report(views, voice))
        except KubeError as exc:
            deps.metrics.reconcile_errors.labels(reason="api").inc()
            if exc.status == 403:  # RBAC: say on the voice itself which permission is missing
                deps.post_event(
                    body,
                    type="Warning",
                    reason="Forbidden",
                    message=f"{exc.message} (the operator's ServiceAccount lacks this "
                    "permission: check its ClusterRole, e.g. the Helm chart's)",
                )
            raise kopf.TemporaryError(f"API call failed: {exc}", delay=5) from exc
    if problems:
        deps.metrics.reconcile_errors.labels(reason="problem").inc()
        raise kopf.TemporaryError("; ".join(p.message for p in problems), delay=RETRY_DELAY)
    if refusals:
        message = "; ".join(r.problem.message for r in refusals)
        logger.warning("%s", message)
        if all(r.permanent for r in refusals):
            # Permanent for this spec: reported, not retried every few seconds.
            deps.metrics.reconcile_errors.labels(reason="rejected").inc()
            raise kopf.PermanentError(message)
        deps.metrics.reconcile_errors.labels(reason="api").inc()
        raise kopf.TemporaryError(message, delay=FAILED_RETRY_DELAY)
    logger.info(
        "reconciled generation %d: Deployment replicas %d", voice.generation, voice.spec.replicas
    )


def deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Nothing to do: ownerReferences let the garbage collector remove what we made."""
    deps = deps_of(memo)
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    deps.memory.forget(namespace, name)
    deps.metrics.forget_voice(f"{namespace}/{name}")
    logger.info("deleted; the garbage collector removes its Deployment, Service (and PDB)")


# --- the status refresh ---------------------------------------------------------------------


def _replicas_drifted(deployment: Mapping[str, Any], voice: Voice) -> bool:
    """True when the Deployment asks for other replicas than the voice's ``spec.replicas``."""
    replicas = (deployment.get("spec") or {}).get("replicas")
    return isinstance(replicas, int) and replicas != voice.spec.replicas


def refresh_status(
    deps: Deps,
    views: Views,
    namespace: str,
    name: str,
    logger: kopf.Logger,
    *,
    deployment_deleted: bool = False,
) -> None:
    """Re-derive one voice's status from the indexes; repair its Deployment if needed.

    The one path of pod and Deployment events. A Deployment deleted behind our back
    while its voice lives is re-created at once rather than at the voice's next change.
    A Deployment whose ``spec.replicas`` someone else wrote (``kubectl scale
    deployment``, an HPA aimed at it) is put back to the voice's: the TTSVoice's scale
    subresource is the one writer of replicas. The voice in the index is never older
    than the Deployment we built from it (we apply only what a voice event showed us),
    so a Deployment event that lags a ``kubectl scale ttsvoice`` re-applies the same
    value and changes nothing.
    """
    body = views.voice(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        voice = parse_voice(body)
    except SpecError:
        return  # the voice's own reconcile reports it
    with deps.memory.lock(namespace, name):
        problems = _problems(voice, views)
        deployment = None if deployment_deleted else views.deployment(namespace, name)
        if not problems:
            if deployment_deleted:
                logger.warning("Deployment deleted while its TTSVoice exists: re-creating")
                deployment, _ = apply_owned(deps, body, voice)
            elif deployment is not None and _replicas_drifted(deployment, voice):
                logger.warning(
                    "Deployment replicas were set to %s outside the TTSVoice: restoring %s"
                    " (scale the TTSVoice instead)",
                    (deployment.get("spec") or {}).get("replicas"),
                    voice.spec.replicas,
                )
                deployment, _ = apply_owned(deps, body, voice)
        write_status(deps, body, voice, deployment, problems, _pod_report(views, voice))


def refresh_due(deps: Deps, views: Views, namespace: str, name: str) -> bool:
    """Whether :func:`refresh_status` would write or repair anything for the voice now.

    Asked in kopf's event loop for every Deployment and pod event: most of them change
    nothing the status says (the echo of our own apply, a controller's progress between
    two verdicts), and deciding that here costs a derivation (~0.2 ms) instead of a hop
    to a pool thread and back, which a GIL profile of 100 new voices put at a fifth of
    the operator's CPU. The voice's lock is taken without waiting; when it is held (a
    reconcile or a refresh is under way) the answer is True, so the event takes the
    locked path as before and its news cannot be overtaken by an older write.
    """
    body = views.voice(namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    try:
        voice = parse_voice(body)
    except SpecError:
        return False
    lock = deps.memory.lock(namespace, name)
    if not lock.acquire(blocking=False):
        return True
    try:
        problems = _problems(voice, views)
        deployment = views.deployment(namespace, name)
        if not problems and deployment is not None and _replicas_drifted(deployment, voice):
            return True
        current, status = _derived(
            deps, body, voice, deployment, problems, _pod_report(views, voice)
        )
        deps.metrics.observe_voice(f"{namespace}/{name}", status)
        return not _unchanged(current, status)
    finally:
        lock.release()


async def _refresh_on_event(
    deps: Deps,
    pool: concurrent.futures.Executor | None,
    views: Views,
    trigger: str,
    namespace: str,
    name: str,
    logger: kopf.Logger,
    *,
    deployment_deleted: bool = False,
) -> None:
    """A Deployment or pod event: :func:`refresh_due` decides in the event loop, and only
    a refresh with something to write or repair goes to ``pool`` (kopf's, :data:`POOL`)."""
    started = time.perf_counter()
    deps.metrics.reconciles.labels(trigger=trigger).inc()
    try:
        if deployment_deleted or refresh_due(deps, views, namespace, name):
            # kopf's context goes along, as its own invoke does for sync handlers: kopf.event
            # finds its Event queue through context variables, and Events posted from a
            # bare pool thread would be dropped.
            await asyncio.get_running_loop().run_in_executor(
                pool,
                contextvars.copy_context().run,
                functools.partial(
                    _refresh_logged,
                    deps,
                    views,
                    namespace,
                    name,
                    logger,
                    deployment_deleted=deployment_deleted,
                ),
            )
    finally:
        deps.metrics.reconcile_duration.labels(trigger=trigger).observe(
            time.perf_counter() - started
        )


def _timed(deps: Deps, trigger: str, work: Callable[[], None]) -> None:
    started = time.perf_counter()
    deps.metrics.reconciles.labels(trigger=trigger).inc()
    try:
        work()
    finally:
        deps.metrics.reconcile_duration.labels(trigger=trigger).observe(
            time.perf_counter() - started
        )


def _refresh_logged(
    deps: Deps, views: Views, namespace: str, name: str, logger: kopf.Logger, **kw: bool
) -> None:
    """A refresh whose API failure is logged, not retried: the next event refreshes again."""
    try:
        refresh_status(deps, views, namespace, name, logger, **kw)
    except KubeError as exc:
        deps.metrics.reconcile_errors.labels(reason="api").inc()
        logger.warning("could not refresh TTSVoice %s/%s status: %s", namespace, name, exc)


async def deployment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A managed Deployment changed (its status moved, or it was deleted or scaled)."""
    name = owner_voice(body)
    if name is None:
        return
    namespace = str((body.get("metadata") or {}).get("namespace"))
    await _refresh_on_event(
        deps_of(memo),
        pool_of(memo),
        Views.of(kwargs),
        "deployment",
        namespace,
        name,
        logger,
        deployment_deleted=event.get("type") == "DELETED",
    )


async def pod_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A voice's pod changed (scheduled, started, crashed, became ready): refresh the
    voice's status from the pod index at once, so a crash loop, a pull error or an
    unschedulable pod reaches ``Degraded`` within the pod event, not a timeout."""
    meta = body.get("metadata") or {}
    name = (meta.get("labels") or {}).get(VOICE_LABEL)
    if not name:
        return
    namespace = str(meta.get("namespace"))
    await _refresh_on_event(
        deps_of(memo), pool_of(memo), Views.of(kwargs), "pod", namespace, str(name), logger
    )


def pvc_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A claim appeared: reconcile at once the voices that were waiting for it.

    Without this a voice stays Degraded until kopf's next retry (`RETRY_DELAY`); with
    it, creating the missing PVC brings the voice up within a second. Only real ADDED
    events count (kopf's initial listing has no type).
    """
    if event.get("type") != "ADDED":
        return
    deps = deps_of(memo)
    views = Views.of(kwargs)
    meta = body.get("metadata") or {}
    namespace, claim = str(meta.get("namespace")), str(meta.get("name"))
    for voice_body in views.voices_in(namespace):
        volume = ((voice_body.get("spec") or {}).get("model") or {}).get("volume") or {}
        if (volume.get("persistentVolumeClaim") or {}).get("claimName") != claim:
            continue
        if (voice_body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = voice_body["metadata"]["name"]
        logger.info("PersistentVolumeClaim %s appeared: reconciling TTSVoice %s", claim, name)
        try:
            _timed(deps, "pvc", functools.partial(reconcile_voice, deps, views, voice_body, logger))
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            logger.warning("TTSVoice %s/%s still not reconciled: %s", namespace, name, exc)
