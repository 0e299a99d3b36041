"""Pure derivation of why a voice cannot run, from what the cluster says about it.

Input is what the API server returns: pods as the operator's pod index holds them
(:class:`~voicefleet_operator.pods.PodInfo`: ``status.conditions`` and
``status.containerStatuses`` copied as sent) and the text of a refused write. Output is
:class:`~voicefleet_operator.conditions.Problem` values for the ``Degraded`` condition,
carrying the cluster's own words (the scheduler's message, the kubelet's waiting
reason, the exit code and termination message), so ``kubectl get ttsv`` and
``kubectl describe ttsv`` say what ``kubectl describe pod`` would. Reasons:

==========================  ===========================================================
``ModelLoadFailed``         the server's termination message says its model did not load
``ModelFetchFailed``        the fetcher (init container) could not download a url model
``ModelDigestMismatch``     a downloaded model file has another sha256 than the spec names
``OOMKilled``               a container was killed for exceeding its memory limit
``CrashLoopBackOff``        a container keeps exiting non-zero: the kubelet says so (its
                            waiting reason), or it has restarted more than once
``ContainerRestarted``      a container exited once and runs again, not ready yet (a
                            killed pod, a node hiccup); transient: cleared once ready
``ContainerTerminated``     a container exited non-zero (not, or not yet, restarted)
``ImagePullBackOff``        the image cannot be pulled (``ErrImagePull`` and back-off)
``Unschedulable``           the scheduler found no node (its message says why)
``CreateContainerConfigError`` / ``CreateContainerError`` / ``RunContainerError``
                            the kubelet cannot even start the container
``<Kind>Rejected``          the API server refused an owned object (422 with field path)
``<Kind>Failed``            the API server failed to store an owned object (a 5xx, e.g. a
                            full Service IP range), in its own words; retried
``QuotaExceeded``           an owned object exceeds a ResourceQuota (403 naming the quota)
==========================  ===========================================================

A container that failed before and is running but not yet ready still counts as
failing (its ``lastState``): a crash loop alternates running and back-off, and the
condition must not flap between the two. Once the container is ready again it does
not count, whatever its restart count. Terminating pods are ignored (a rollout
replaces them). Identical problems of several pods are folded into one line with the
count, so the message does not grow with the replica count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from voicefleet_api.termination import parse_message
from voicefleet_operator.conditions import Problem
from voicefleet_operator.pods import PodInfo

__all__ = [
    "IMAGE_PULL_BACKOFF",
    "OOM_KILLED",
    "QUOTA_EXCEEDED",
    "PodReport",
    "failed_problem",
    "is_quota_error",
    "pod_report",
    "rejected_problem",
]

CRASH_LOOP: Final = "CrashLoopBackOff"
TERMINATED: Final = "ContainerTerminated"
RESTARTED: Final = "ContainerRestarted"
IMAGE_PULL_BACKOFF: Final = "ImagePullBackOff"
OOM_KILLED: Final = "OOMKilled"
UNSCHEDULABLE: Final = "Unschedulable"
QUOTA_EXCEEDED: Final = "QuotaExceeded"

_IMAGE_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
_START_REASONS: Final = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
LONG_RUN_SECONDS: Final = 600
"""A container that ran this long before exiting is not crash-looping, whatever its restart
count (the kubelet resets its back-off after 10 minutes as well)."""
_BACKOFF_PREFIX: Final = "Back-off pulling image"
_MAX_DETAIL: Final = 1024
"""Longest termination message or log tail quoted (the kubelet keeps up to 4 KiB)."""
_ORDER: Final = (
    "ModelDigestMismatch",
    "ModelFetchFailed",
    "ModelLoadFailed",
    OOM_KILLED,
    CRASH_LOOP,
    TERMINATED,
    RESTARTED,
    IMAGE_PULL_BACKOFF,
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    UNSCHEDULABLE,
)
"""Most specific first: the condition's reason is the first problem's."""


@dataclass(frozen=True)
class PodReport:
    """What the voice's pods say: problems (for ``Degraded``) and how many are starting.

    ``starting`` counts pods that are neither failing nor ready yet (Pending, or
    running but not ready) so a healthy-looking ``Degraded=False`` can still say that
    pods are on their way instead of "no problems observed".
    """

    problems: tuple[Problem, ...] = ()
    starting: int = 0
    terminating: int = 0
    """Pods being deleted (a rollout's old ones, a scale-down's): ``Progressing`` until gone."""


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"


def _terminated_text(term: Mapping[str, Any]) -> str:
    code = term.get("exitCode")
    reason = term.get("reason") or "Error"
    text = f"exit code {code} ({reason})"
    message = _one_line(str(term.get("message") or ""))
    return f"{text}: {message}" if message else text


def _ran_for(term: Mapping[str, Any]) -> float:
    """Seconds the terminated container ran (0 when the times are missing or unreadable)."""
    try:
        started = datetime.fromisoformat(str(term["startedAt"]).replace("Z", "+00:00"))
        finished = datetime.fromisoformat(str(term["finishedAt"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (finished - started).total_seconds()


def _container_problem(status: Mapping[str, Any], memory: str | None) -> Problem | None:
    name = str(status.get("name") or "?")
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    waiting_reason = str(waiting.get("reason") or "")
    waiting_message = str(waiting.get("message") or "")
    restarts = status.get("restartCount") or 0

    if waiting_reason in _IMAGE_REASONS:
        # The back-off message repeats the pull error after "ErrImagePull: "; quote the
        # error itself so the message stays the same through pull, back-off, pull…
        detail = waiting_message
        if detail.startswith(_BACKOFF_PREFIX) and "ErrImagePull: " in detail:
            detail = detail.split("ErrImagePull: ", 1)[1]
        image = status.get("image") or ""
        return Problem(
            IMAGE_PULL_BACKOFF,
            f"container {name!r} cannot pull image {image!r}: "
            f"{_one_line(detail) or waiting_reason}",
        )
    if waiting_reason in _START_REASONS:
        return Problem(
            waiting_reason,
            f"container {name!r} cannot start: {_one_line(waiting_message) or waiting_reason}",
        )

    term = state.get("terminated") or {}
    current = bool(term)
    if not term and not status.get("ready"):
        term = (status.get("lastState") or {}).get("terminated") or {}
    if not term or (term.get("exitCode") == 0 and term.get("reason") != OOM_KILLED):
        if waiting_reason == CRASH_LOOP:
            return Problem(CRASH_LOOP, f"container {name!r} is crash-looping: {waiting_message}")
        return None

    restarted = f" (restarted {restarts} time{'s' if restarts != 1 else ''})" if restarts else ""
    parsed = parse_message(str(term.get("message") or ""))
    if parsed is not None:
        reason, detail = parsed
        return Problem(
            reason,
            f"container {name!r} exited with code {term.get('exitCode')}{restarted}: "
            f"{_one_line(detail)}",
        )
    if term.get("reason") == OOM_KILLED:
        within = f" of {memory}" if memory else ""
        return Problem(
            OOM_KILLED,
            f"container {name!r} was killed for exceeding its memory limit{within}"
            f"{restarted}; raise spec.resources.memory",
        )
    # The kubelet restarts a container the first time at once and backs off only from the
    # second exit: one restart is one failure (a kill, an eviction's neighbour), not a loop;
    # nor is a restart after a long run (the kubelet forgets its back-off by then).
    looping = restarts >= 2 and _ran_for(term) < LONG_RUN_SECONDS
    if waiting_reason == CRASH_LOOP or (not current and looping):
        return Problem(
            CRASH_LOOP, f"container {name!r} keeps failing{restarted}: {_terminated_text(term)}"
        )
    if not current and restarts:
        again = "once" if restarts == 1 else f"after a long run ({restarts} restarts in all)"
        return Problem(
            RESTARTED,
            f"container {name!r} restarted {again} after {_terminated_text(term)}; "
            "waiting for it to become ready",
            transient=True,
        )
    return Problem(TERMINATED, f"container {name!r} terminated: {_terminated_text(term)}")


def _scheduled(pod: PodInfo) -> Mapping[str, Any] | None:
    for cond in pod.conditions:
        if cond.get("type") == "PodScheduled":
            return cond
    return None


def _pod_problems(pod: PodInfo, memory: str | None) -> list[Problem]:
    scheduled = _scheduled(pod)
    if scheduled is not None and scheduled.get("status") == "False":
        if scheduled.get("reason") == UNSCHEDULABLE:
            message = _one_line(str(scheduled.get("message") or "no node fits the pod"))
            return [Problem(UNSCHEDULABLE, f"no node can run the pod: {message}")]
        return []
    found = []
    # A failed init container (the model fetcher) is why the server never started.
    for container in (*pod.init_container_statuses, *pod.container_statuses):
        problem = _container_problem(container, memory)
        if problem is not None:
            found.append(problem)
    return found


def _rank(reason: str) -> int:
    return _ORDER.index(reason) if reason in _ORDER else len(_ORDER)


def pod_report(pods: Iterable[PodInfo], *, memory: str | None = None) -> PodReport:
    """Problems and the number of starting pods among one voice's pods.

    ``memory`` is the voice's memory limit, quoted when a pod was OOM-killed. Pods are
    taken in name order, so the same pods always give the same report (an unchanged
    state writes an identical status). Several pods with the same problem give one
    Problem whose message says how many.
    """
    pods_seen = list(pods)
    live = sorted((p for p in pods_seen if not p.terminating), key=lambda p: p.name)
    grouped: dict[str, list[Problem]] = {}
    starting = 0
    for pod in live:
        problems = _pod_problems(pod, memory)
        for problem in problems:
            grouped.setdefault(problem.reason, []).append(problem)
        if not problems and not pod.ready:
            starting += 1
    merged = []
    for reason in sorted(grouped, key=lambda r: (_rank(r), r)):
        same = grouped[reason]
        message = same[0].message
        if len(same) > 1:
            message = f"{message} (and {len(same) - 1} more pod(s) alike)"
        transient = all(p.transient for p in same)
        merged.append(Problem(reason, message, from_pods=True, transient=transient))
    terminating = sum(1 for p in pods_seen if p.terminating)
    return PodReport(tuple(merged), starting, terminating)


def rejected_problem(kind: str, status: int, message: str) -> Problem:
    """An owned object the API server refused (400/422: invalid, 403: forbidden by policy).

    The reason names the kind (``DeploymentRejected``); the message is the API server's
    own, which carries the field path (``spec.template.spec.tolerations[0].operator:
    Unsupported value: "Sometimes": supported values: "Equal", "Exists"``).
    """
    return Problem(
        f"{kind}Rejected",
        f"the API server refused the {kind} ({status}): {_one_line(message)}; "
        "fix the TTSVoice spec (the operator retries when it changes)",
    )


def is_quota_error(status: int, message: str) -> bool:
    """Whether a refusal is a ResourceQuota's (403 "exceeded quota"), not a missing permission.

    Both come back as 403 Forbidden; only the message tells them apart, and they need
    different fixes (raise the quota vs. grant the operator a permission).
    """
    return status == 403 and "exceeded quota" in message


def failed_problem(kind: str, status: int, message: str, retry_seconds: float) -> Problem:
    """An owned object the API server could not store, though the spec may be fine.

    A 5xx (``Internal error occurred: failed to allocate a serviceIP: range is full``) or
    a ResourceQuota refusal: the cluster, not the voice, has to change, so the operator
    keeps retrying, and the voice says why its object is missing in the server's words.
    """
    text = _one_line(message)
    if is_quota_error(status, message):
        return Problem(
            QUOTA_EXCEEDED,
            f"the {kind} exceeds a ResourceQuota ({status}): {text}; raise the quota or "
            f"free capacity in the namespace (retrying every {retry_seconds:.0f}s)",
        )
    return Problem(
        f"{kind}Failed",
        f"the API server could not store the {kind} ({status}): {text} "
        f"(retrying every {retry_seconds:.0f}s)",
    )
