"""Pure status derivation: what the Deployment and the operator saw → a TTSVoice ``.status``.

Three conditions, each shaped like ``metav1.Condition`` (``type``, ``status`` "True" /
"False" / "Unknown", CamelCase ``reason``, ``message``, ``lastTransitionTime`` as RFC 3339
UTC with a ``Z``, ``observedGeneration``), always in the order Ready, Progressing, Degraded:

``Ready``
    True when at least one replica is ready: the voice answers requests. Reason
    ``ReplicasReady`` when all replicas asked for are ready, ``PartiallyReady`` while some
    are (a scale-up or rollout in progress): an autoscaler scale-up must not make a serving
    voice look broken to the router or to ``kubectl wait``. A voice scaled to zero
    (``spec.replicas == 0``) is *not* Ready (reason ``ScaledToZero``): nothing serves
    until the router's first request wakes it, and clients listing ready voices must
    know that the first request will wait for a cold start.
``Progressing``
    True while the Deployment rolls out or scales: its controller has not observed its
    latest generation, fewer replicas are updated than wanted, old replicas are still
    terminating (by the pods themselves: the Deployment stops counting a pod once it is
    being deleted), or updated ones are not yet available; also while the Deployment lags the
    TTSVoice generation it should reflect. False with ``ProgressDeadlineExceeded`` when the
    Deployment gave up, ``Blocked`` when an operator problem stops reconciling, else
    ``RolloutComplete``.
``Degraded``
    True for every :class:`Problem` (reason = the first problem's, messages joined):
    those the operator detects, those the voice's pods report (``failures``), and the
    Deployment's ``ReplicaFailure`` or ``ProgressDeadlineExceeded``; else False with
    ``AsExpected`` ("no problems observed" only when no pod is still starting either).
    Pod problems also make ``Progressing`` False (``Stalled``) and are named in
    ``Ready``'s message.

``lastTransitionTime`` is kept from the previous condition of the same type whenever its
status did not change, so re-deriving an unchanged state writes an identical status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from voicefleet_api.labels import VOICE_GENERATION_ANNOTATION, selector_string
from voicefleet_operator.builders import service_endpoint
from voicefleet_operator.spec import Voice

__all__ = [
    "CONDITION_TYPES",
    "DEGRADED",
    "INVALID_SPEC",
    "PROGRESSING",
    "READY",
    "Problem",
    "derive_status",
    "format_time",
    "invalid_spec_status",
    "transitions",
]

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
CONDITION_TYPES: Final = (READY, PROGRESSING, DEGRADED)
INVALID_SPEC: Final = "InvalidSpec"
"""``Degraded``'s reason for a spec the operator cannot build (:func:`invalid_spec_status`)."""

_REASON: Final = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
"""metav1.Condition's reason pattern (the API server refuses anything else)."""
_MAX_MESSAGE: Final = 32_768
_ROLLING_REASONS: Final = frozenset({"NewReplicaSetCreated", "ReplicaSetUpdated"})
"""Deployment ``Progressing`` reasons that mean a rollout is under way."""


@dataclass(frozen=True)
class Problem:
    """Something only the operator can detect (e.g. ``PVCNotFound``, ``InvalidSpec``).

    ``reason`` must be CamelCase (metav1.Condition's pattern): checked at construction,
    because the API server would otherwise refuse the whole status patch.
    """

    reason: str
    message: str
    from_pods: bool = False
    """Reported by the voice's pods (a crash, a pull error, no node): the rollout cannot
    finish by itself, so ``Progressing`` is False (``Stalled``) rather than rolling on."""
    transient: bool = False
    """The pod may yet become ready by itself (one restart, not yet a crash loop by the
    kubelet's count): ``Degraded`` says what happened, ``Progressing`` is not ``Stalled``."""

    def __post_init__(self) -> None:
        if len(self.reason) > 1024 or not _REASON.match(self.reason):
            raise ValueError(f"condition reason must be CamelCase, got {self.reason!r}")


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision and ``Z`` (metav1.Time's wire form).

    A naive datetime is taken to be UTC already.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dep_condition(deployment: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    status = deployment.get("status") or {}
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


@dataclass(frozen=True)
class _Verdict:
    status: str
    reason: str
    message: str


def _problems_verdict(problems: Sequence[tuple[str, str]]) -> _Verdict:
    return _Verdict("True", problems[0][0], "; ".join(message for _, message in problems))


def _ready(
    voice: Voice, deployment: Mapping[str, Any] | None, problems: Sequence[Problem]
) -> _Verdict:
    desired = voice.spec.replicas
    if deployment is None:
        if problems:
            found = _problems_verdict([(p.reason, p.message) for p in problems])
            return _Verdict("False", found.reason, found.message)
        return _Verdict("False", "DeploymentNotFound", "the Deployment does not exist yet")
    ready = _int((deployment.get("status") or {}).get("readyReplicas"))
    if desired == 0:
        if ready:
            return _Verdict(
                "False", "ScaledToZero", f"scaling to zero; {ready} replica(s) still ready"
            )
        return _Verdict(
            "False", "ScaledToZero", "scaled to zero replicas; the next request starts one"
        )
    if ready >= desired:
        return _Verdict("True", "ReplicasReady", f"{ready}/{desired} replicas ready")
    failing = [p.reason for p in problems if p.from_pods]
    if ready >= 1:
        more = f"others fail: {', '.join(failing)}" if failing else "more are starting"
        return _Verdict("True", "PartiallyReady", f"{ready}/{desired} replicas ready; {more}")
    if failing:
        return _Verdict(
            "False",
            "ReplicasNotReady",
            f"{ready}/{desired} replicas ready: {', '.join(failing)} (see Degraded)",
        )
    return _Verdict("False", "ReplicasNotReady", f"{ready}/{desired} replicas ready")


def _rollout(voice: Voice, deployment: Mapping[str, Any]) -> str | None:
    """Why the Deployment is still rolling out, in ``kubectl rollout status`` terms; or None."""
    status = deployment.get("status") or {}
    generation = _int((deployment.get("metadata") or {}).get("generation"))
    observed = _int(status.get("observedGeneration"))
    if observed < generation:
        return f"waiting for the Deployment controller to observe generation {generation}"
    wanted = (deployment.get("spec") or {}).get("replicas")
    wanted = _int(wanted) if wanted is not None else voice.spec.replicas
    updated = _int(status.get("updatedReplicas"))
    replicas = _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if updated < wanted:
        return f"{updated} of {wanted} replicas updated"
    if replicas > updated:
        return f"{replicas - updated} old replica(s) pending termination"
    if available < updated:
        return f"{available} of {updated} updated replicas available"
    cond = _dep_condition(deployment, "Progressing")
    if cond is not None and cond.get("status") == "True" and cond.get("reason") in _ROLLING_REASONS:
        return str(cond.get("message") or "the Deployment is rolling out")
    return None


def _deadline_exceeded(deployment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cond = _dep_condition(deployment, "Progressing")
    if cond is not None and cond.get("reason") == "ProgressDeadlineExceeded":
        return cond
    return None


def _stale(voice: Voice, deployment: Mapping[str, Any]) -> bool:
    """Whether the Deployment was built from an older TTSVoice generation than ``voice``."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    try:
        built_from = int(str(annotations[VOICE_GENERATION_ANNOTATION]))
    except (KeyError, ValueError):
        return False  # not ours to judge: made before the annotation existed
    return built_from < voice.generation


def _progressing(
    voice: Voice,
    deployment: Mapping[str, Any] | None,
    problems: Sequence[Problem],
    terminating: int = 0,
) -> _Verdict:
    blocked = ", ".join(p.reason for p in problems)
    if deployment is None:
        if problems:
            return _Verdict("False", "Blocked", f"not reconciling until fixed: {blocked}")
        return _Verdict("True", "Creating", "creating the Deployment")
    deadline = _deadline_exceeded(deployment)
    if deadline is not None:
        message = str(deadline.get("message") or "the Deployment exceeded its progress deadline")
        return _Verdict("False", "ProgressDeadlineExceeded", message)
    stalled = ", ".join(p.reason for p in problems if p.from_pods and not p.transient)
    if stalled:
        return _Verdict("False", "Stalled", f"pods cannot become ready: {stalled} (see Degraded)")
    rolling = _rollout(voice, deployment)
    if rolling is not None:
        return _Verdict("True", "RollingOut", rolling)
    if terminating:
        # The Deployment counts a terminating pod as gone (its status no longer shows it),
        # but the pod still holds its node's resources and may still answer requests.
        return _Verdict("True", "RollingOut", f"{terminating} old pod(s) still terminating")
    if problems:
        return _Verdict("False", "Blocked", f"not reconciling until fixed: {blocked}")
    if _stale(voice, deployment):
        return _Verdict("True", "Reconciling", f"applying generation {voice.generation}")
    return _Verdict("False", "RolloutComplete", "the Deployment is rolled out and stable")


def _degraded(
    deployment: Mapping[str, Any] | None, problems: Sequence[Problem], starting: int
) -> _Verdict:
    found = [(p.reason, p.message) for p in problems]
    if deployment is not None:
        failure = _dep_condition(deployment, "ReplicaFailure")
        if failure is not None and failure.get("status") == "True":
            found.append(
                (
                    "ReplicaFailure",
                    str(failure.get("message") or "the Deployment cannot create pods"),
                )
            )
        deadline = _deadline_exceeded(deployment)
        if deadline is not None:
            found.append(
                (
                    "ProgressDeadlineExceeded",
                    str(deadline.get("message") or "the Deployment exceeded its progress deadline"),
                )
            )
    if found:
        return _problems_verdict(found)
    if starting:
        return _Verdict(
            "False", "AsExpected", f"{starting} pod(s) starting; no failure reported yet"
        )
    return _Verdict("False", "AsExpected", "no problems observed")


def _condition(
    kind: str,
    verdict: _Verdict,
    previous: Mapping[str, Mapping[str, Any]],
    generation: int,
    now: str,
) -> dict[str, Any]:
    before = previous.get(kind)
    since = now
    if before is not None and before.get("status") == verdict.status:
        kept = before.get("lastTransitionTime")
        if isinstance(kept, str) and kept:
            since = kept
    return {
        "lastTransitionTime": since,
        "message": verdict.message[:_MAX_MESSAGE],
        "observedGeneration": generation,
        "reason": verdict.reason,
        "status": verdict.status,
        "type": kind,
    }


def _by_type(conditions: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in conditions if isinstance(c, Mapping) and c.get("type")}


def derive_status(
    voice: Voice,
    deployment: Mapping[str, Any] | None,
    problems: Sequence[Problem],
    previous_conditions: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    starting: int = 0,
    terminating: int = 0,
) -> dict[str, Any]:
    """The TTSVoice ``.status`` patch for what was observed (see the module docstring).

    ``deployment`` is the live Deployment as read from the API server (``None`` when it
    does not exist); ``problems`` what the operator detected on this pass;
    ``previous_conditions`` the object's current ``.status.conditions``; ``starting``
    how many pods are on their way but not ready (a healthy ``Degraded`` then says so
    rather than "no problems observed"); ``terminating`` how many of the voice's pods are
    still shutting down (``Progressing`` stays True until they are gone). Keys the
    autoscaler owns (``queueDepth``, ``queueWorkSeconds``, ``lastScaleTime``) are not
    touched. Same inputs give an identical dict, so an unchanged state patches nothing new.
    """
    status = (deployment or {}).get("status") or {}
    previous = _by_type(previous_conditions)
    stamp = format_time(now)
    verdicts = {
        READY: _ready(voice, deployment, problems),
        PROGRESSING: _progressing(voice, deployment, problems, terminating),
        DEGRADED: _degraded(deployment, problems, starting),
    }
    return {
        "conditions": [
            _condition(kind, verdicts[kind], previous, voice.generation, stamp)
            for kind in CONDITION_TYPES
        ],
        "desiredReplicas": voice.spec.replicas,
        "endpoint": service_endpoint(voice),
        "engine": voice.spec.runs_engine,
        "observedGeneration": voice.generation,
        "readyReplicas": _int(status.get("readyReplicas")),
        "replicas": _int(status.get("replicas")),
        "selector": selector_string(voice.name),
    }


def invalid_spec_status(
    previous_conditions: Sequence[Mapping[str, Any]], message: str, generation: int, now: datetime
) -> dict[str, Any] | None:
    """The status patch for a spec the API server let through but the operator cannot build.

    No :class:`Voice` exists to derive Ready and Progressing from, so only ``Degraded``
    is set (reason ``InvalidSpec``), the other conditions stay as they were. None when
    exactly this is already reported, so a retry writes nothing. The transition time is
    kept while Degraded stays True, as :func:`derive_status` does.
    """
    previous = _by_type(previous_conditions)
    old = previous.get(DEGRADED)
    if (
        old is not None
        and old.get("status") == "True"
        and old.get("reason") == INVALID_SPEC
        and old.get("message") == message
    ):
        return None
    verdict = _Verdict("True", INVALID_SPEC, message)
    degraded = _condition(DEGRADED, verdict, previous, generation, format_time(now))
    kept = [
        dict(c) for c in previous_conditions if isinstance(c, Mapping) and c.get("type") != DEGRADED
    ]
    return {"conditions": [*kept, degraded], "observedGeneration": generation}


def transitions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """Kubernetes Events worth emitting between two condition lists: (type, reason, message).

    * Ready became True → Normal ``VoiceReady``;
    * Ready True → not True → Warning ``VoiceNotReady``, except a deliberate scale to
      zero, which is Normal ``ScaledToZero`` (an idle voice is not an incident);
    * Degraded became True, or stayed True with a new reason → Warning with that reason;
    * Degraded True → False → Normal ``VoiceRecovered``.

    Nothing for a condition that did not change, so re-deriving emits no duplicates.
    """
    before, after = _by_type(previous), _by_type(current)
    events: list[tuple[str, str, str]] = []

    def state(conds: Mapping[str, Mapping[str, Any]], kind: str) -> tuple[str, str, str]:
        c = conds.get(kind) or {}
        return str(c.get("status", "")), str(c.get("reason", "")), str(c.get("message", ""))

    if READY in after:
        was, _, _ = state(before, READY)
        now, reason, message = state(after, READY)
        if now == "True" and was != "True":
            events.append(("Normal", "VoiceReady", message))
        elif was == "True" and now != "True":
            if reason == "ScaledToZero":
                events.append(("Normal", "ScaledToZero", message))
            else:
                events.append(("Warning", "VoiceNotReady", f"{reason}: {message}"))
    if DEGRADED in after:
        was, was_reason, _ = state(before, DEGRADED)
        now, reason, message = state(after, DEGRADED)
        if now == "True" and (was != "True" or was_reason != reason):
            events.append(("Warning", reason, message))
        elif was == "True" and now == "False":
            events.append(("Normal", "VoiceRecovered", f"no longer degraded (was {was_reason})"))
    return events
