"""derive_status and transitions: the TTSVoice status as Kubernetes API conventions want it,
from Deployment states a real controller produces (fresh, rolling, stuck, scaled to zero)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from voicefleet_operator.conditions import (
    Problem,
    derive_status,
    format_time,
    transitions,
)
from voicefleet_operator.spec import Voice, parse_voice

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=3)
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def voice(replicas: int = 2, generation: int = 5) -> Voice:
    return parse_voice(
        {
            "metadata": {"name": "joe", "namespace": "voices", "generation": generation},
            "spec": {"replicas": replicas, "model": {"bundled": "en_US-joe-medium"}},
        }
    )


def deployment(
    *,
    replicas: int = 2,
    ready: int = 2,
    updated: int | None = None,
    available: int | None = None,
    current: int | None = None,
    generation: int = 1,
    observed: int | None = None,
    built_from: int | None = 5,
    conditions: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A Deployment as the API server returns it (status as the controller writes it)."""
    meta: dict[str, Any] = {"name": "joe", "namespace": "voices", "generation": generation}
    if built_from is not None:
        meta["annotations"] = {"voicefleet.io/voice-generation": str(built_from)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation if observed is None else observed,
            "replicas": replicas if current is None else current,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready if available is None else available,
            "conditions": list(conditions),
        },
    }


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in status["conditions"] if c["type"] == kind]
    assert len(found) == 1
    result: dict[str, Any] = found[0]
    return result


def summary(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# -- the status fields -------------------------------------------------------------------------


def test_status_fields() -> None:
    status = derive_status(voice(), deployment(current=3, ready=2), [], [], T0)
    assert status["replicas"] == 3
    assert status["readyReplicas"] == 2
    assert status["desiredReplicas"] == 2
    assert status["selector"] == "voicefleet.io/voice=joe"
    assert status["endpoint"] == "http://joe.voices.svc:80"
    assert status["observedGeneration"] == 5
    for key in ("queueDepth", "queueWorkSeconds", "lastScaleTime"):
        assert key not in status  # the autoscaler's fields


def test_conditions_have_the_metav1_condition_shape() -> None:
    for dep, problems in [
        (deployment(), []),
        (None, []),
        (None, [Problem("PVCNotFound", "claim x not found")]),
        (deployment(ready=0), [Problem("InvalidSpec", "bad")]),
    ]:
        status = derive_status(voice(), dep, problems, [], T0)
        assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded"]
        for c in status["conditions"]:
            assert set(c) == {
                "type",
                "status",
                "reason",
                "message",
                "lastTransitionTime",
                "observedGeneration",
            }
            assert c["status"] in ("True", "False", "Unknown")
            assert REASON.match(c["reason"]), c["reason"]
            assert RFC3339_Z.match(c["lastTransitionTime"])
            assert c["observedGeneration"] == 5
            assert c["message"]


def test_missing_deployment_status_counts_as_zero() -> None:
    dep = deployment()
    del dep["status"]
    status = derive_status(voice(), dep, [], [], T0)
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)
    assert summary(status)["Ready"] == ("False", "ReplicasNotReady")
    # generation 1 never observed: the controller has not looked yet
    assert summary(status)["Progressing"] == ("True", "RollingOut")


# -- Ready ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "ready", "expected"),
    [
        (1, 1, ("True", "ReplicasReady")),
        (2, 2, ("True", "ReplicasReady")),
        (2, 3, ("True", "ReplicasReady")),  # surge pod counted during a rollout
        (2, 1, ("True", "PartiallyReady")),  # scaling up: still serving
        (3, 2, ("True", "PartiallyReady")),
        (2, 0, ("False", "ReplicasNotReady")),
        (1, 0, ("False", "ReplicasNotReady")),
        (0, 0, ("False", "ScaledToZero")),
        (0, 1, ("False", "ScaledToZero")),
    ],
)
def test_ready(desired: int, ready: int, expected: tuple[str, str]) -> None:
    status = derive_status(
        voice(replicas=desired), deployment(replicas=desired, ready=ready), [], [], T0
    )
    assert summary(status)["Ready"] == expected
    if desired:
        assert f"{ready}/{desired}" in cond(status, "Ready")["message"]


def test_scaled_to_zero_says_the_next_request_wakes_it() -> None:
    status = derive_status(voice(replicas=0), deployment(replicas=0, ready=0), [], [], T0)
    assert "next request" in cond(status, "Ready")["message"]


def test_no_deployment_yet() -> None:
    status = derive_status(voice(), None, [], [], T0)
    assert summary(status) == {
        "Ready": ("False", "DeploymentNotFound"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "AsExpected"),
    }
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)


def test_pvc_missing_before_anything_was_created() -> None:
    problem = Problem("PVCNotFound", 'PersistentVolumeClaim "piper-voices" not found in voices')
    status = derive_status(voice(), None, [problem], [], T0)
    assert summary(status) == {
        "Ready": ("False", "PVCNotFound"),
        "Progressing": ("False", "Blocked"),
        "Degraded": ("True", "PVCNotFound"),
    }
    assert cond(status, "Degraded")["message"] == problem.message
    assert cond(status, "Ready")["message"] == problem.message
    assert "PVCNotFound" in cond(status, "Progressing")["message"]


def test_ready_reflects_serving_pods_even_with_an_operator_problem() -> None:
    """A spec edit that cannot be applied must not make a serving voice look down."""
    status = derive_status(voice(), deployment(), [Problem("InvalidSpec", "spec.x: bad")], [], T0)
    assert summary(status) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "Blocked"),
        "Degraded": ("True", "InvalidSpec"),
    }


# -- Progressing ---------------------------------------------------------------------------------


def test_steady_state() -> None:
    status = derive_status(
        voice(),
        deployment(
            conditions=[
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ]
        ),
        [],
        [],
        T0,
    )
    assert summary(status) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }


@pytest.mark.parametrize(
    ("dep", "words"),
    [
        (deployment(generation=3, observed=2), "observe generation 3"),
        (deployment(updated=1), "1 of 2 replicas updated"),
        (deployment(current=3, updated=2), "1 old replica(s) pending termination"),
        (deployment(updated=2, available=1, ready=2), "1 of 2 updated replicas available"),
        (
            deployment(
                conditions=[
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "ReplicaSetUpdated",
                        "message": 'ReplicaSet "joe-5f" is progressing.',
                    }
                ]
            ),
            'ReplicaSet "joe-5f" is progressing.',
        ),
    ],
    ids=["generation-lag", "updating", "old-terminating", "not-available", "controller-says"],
)
def test_rolling_out(dep: dict[str, Any], words: str) -> None:
    status = derive_status(voice(), dep, [], [], T0)
    assert summary(status)["Progressing"] == ("True", "RollingOut")
    assert words in cond(status, "Progressing")["message"]
    assert summary(status)["Degraded"] == ("False", "AsExpected")


def test_scaling_up_is_progress() -> None:
    status = derive_status(
        voice(replicas=4), deployment(replicas=4, ready=2, available=2), [], [], T0
    )
    assert summary(status)["Progressing"] == ("True", "RollingOut")
    # the two ready replicas keep serving while the other two start
    assert summary(status)["Ready"] == ("True", "PartiallyReady")


def test_deployment_built_from_an_older_voice_generation_is_reconciling() -> None:
    status = derive_status(voice(generation=6), deployment(built_from=5), [], [], T0)
    assert summary(status)["Progressing"] == ("True", "Reconciling")
    assert "6" in cond(status, "Progressing")["message"]


def test_deployment_without_generation_annotation_is_not_judged_stale() -> None:
    status = derive_status(voice(generation=6), deployment(built_from=None), [], [], T0)
    assert summary(status)["Progressing"] == ("False", "RolloutComplete")


def test_garbage_generation_annotation_is_not_judged_stale() -> None:
    dep = deployment()
    dep["metadata"]["annotations"]["voicefleet.io/voice-generation"] = "soon"
    assert summary(derive_status(voice(), dep, [], [], T0))["Progressing"][0] == "False"


def test_deployment_spec_replicas_absent_falls_back_to_the_voice() -> None:
    dep = deployment(replicas=2, updated=1)
    del dep["spec"]["replicas"]
    status = derive_status(voice(replicas=2), dep, [], [], T0)
    assert "1 of 2 replicas updated" in cond(status, "Progressing")["message"]


# -- Degraded ------------------------------------------------------------------------------------

DEADLINE = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "joe-7c" has timed out progressing.',
}
QUOTA = {
    "type": "ReplicaFailure",
    "status": "True",
    "reason": "FailedCreate",
    "message": 'pods "joe-7c-x" is forbidden: exceeded quota: compute',
}


def test_progress_deadline_exceeded() -> None:
    status = derive_status(
        voice(), deployment(updated=1, ready=2, conditions=[DEADLINE]), [], [], T0
    )
    assert summary(status)["Progressing"] == ("False", "ProgressDeadlineExceeded")
    assert summary(status)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    assert cond(status, "Degraded")["message"] == DEADLINE["message"]


def test_replica_failure() -> None:
    status = derive_status(voice(), deployment(ready=0, updated=0, conditions=[QUOTA]), [], [], T0)
    assert summary(status)["Degraded"] == ("True", "ReplicaFailure")
    assert "exceeded quota" in cond(status, "Degraded")["message"]


def test_replica_failure_false_is_not_degraded() -> None:
    healed = dict(QUOTA, status="False")
    status = derive_status(voice(), deployment(conditions=[healed]), [], [], T0)
    assert summary(status)["Degraded"] == ("False", "AsExpected")


def test_all_problems_are_reported_first_reason_wins() -> None:
    problems = [Problem("PVCNotFound", "claim a missing"), Problem("InvalidSpec", "spec.b bad")]
    status = derive_status(voice(), deployment(conditions=[QUOTA]), problems, [], T0)
    degraded = cond(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PVCNotFound")
    for words in ("claim a missing", "spec.b bad", "exceeded quota"):
        assert words in degraded["message"]


def test_huge_messages_are_capped() -> None:
    status = derive_status(voice(), None, [Problem("InvalidSpec", "x" * 40_000)], [], T0)
    assert len(cond(status, "Degraded")["message"]) == 32_768


@pytest.mark.parametrize("reason", ["", "pvc-not-found", "Has Space", "9Lives", "Trailing,"])
def test_problem_reasons_must_be_camel_case(reason: str) -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        Problem(reason, "m")


def test_problem_reason_may_use_the_metav1_alphabet() -> None:
    assert Problem("Pvc_Missing:Claim,2", "m").reason == "Pvc_Missing:Claim,2"


# -- lastTransitionTime ----------------------------------------------------------------------------


def test_transition_time_kept_while_status_unchanged_and_moved_when_it_flips() -> None:
    first = derive_status(voice(), deployment(ready=1), [], [], T0)
    second = derive_status(voice(), deployment(ready=2), [], first["conditions"], T1)
    # Ready stays True (1 of 2, then 2 of 2), only its reason and message change: time kept
    assert cond(second, "Ready")["status"] == "True"
    assert cond(second, "Ready")["lastTransitionTime"] == "2026-11-25T12:00:00Z"
    assert cond(second, "Ready")["reason"] != cond(first, "Ready")["reason"]
    assert cond(second, "Ready")["message"] != cond(first, "Ready")["message"]
    third = derive_status(voice(), deployment(ready=0), [], second["conditions"], T1)
    assert cond(third, "Ready")["status"] == "False"
    assert cond(third, "Ready")["lastTransitionTime"] == "2026-11-25T12:03:00Z"
    assert cond(third, "Degraded")["lastTransitionTime"] == "2026-11-25T12:00:00Z"


def test_reason_change_without_status_change_keeps_the_time() -> None:
    first = derive_status(voice(), None, [Problem("PVCNotFound", "a")], [], T0)
    second = derive_status(voice(), None, [Problem("InvalidSpec", "b")], first["conditions"], T1)
    assert cond(second, "Degraded")["reason"] == "InvalidSpec"
    assert cond(second, "Degraded")["lastTransitionTime"] == format_time(T0)


def test_rederiving_the_same_state_is_identical() -> None:
    first = derive_status(voice(), deployment(), [], [], T0)
    again = derive_status(voice(), deployment(), [], first["conditions"], T1)
    assert again == first


def test_previous_condition_without_time_gets_now() -> None:
    previous = [{"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "x"}]
    status = derive_status(voice(), deployment(), [], previous, T1)
    assert cond(status, "Ready")["lastTransitionTime"] == format_time(T1)


def test_unknown_previous_condition_types_are_ignored() -> None:
    previous: list[Any] = [{"type": "Legacy", "status": "True"}, {"status": "True"}, "junk"]
    status = derive_status(voice(), deployment(), [], previous, T0)
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded"]


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (
            datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T03:04:05Z",
        ),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),  # naive = UTC
    ],
)
def test_format_time(moment: datetime, text: str) -> None:
    assert format_time(moment) == text


# -- transitions -----------------------------------------------------------------------------------


def conds(**kinds: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"type": kind, "status": st, "reason": reason, "message": f"{kind} is {st} ({reason})"}
        for kind, (st, reason) in kinds.items()
    ]


def test_first_ready_emits_voice_ready() -> None:
    before = conds(Ready=("False", "ReplicasNotReady"), Degraded=("False", "AsExpected"))
    after = conds(Ready=("True", "ReplicasReady"), Degraded=("False", "AsExpected"))
    assert transitions(before, after) == [("Normal", "VoiceReady", "Ready is True (ReplicasReady)")]


def test_ready_on_the_very_first_status() -> None:
    after = conds(Ready=("True", "ReplicasReady"), Degraded=("False", "AsExpected"))
    assert transitions([], after) == [("Normal", "VoiceReady", "Ready is True (ReplicasReady)")]


def test_losing_ready_is_a_warning() -> None:
    before = conds(Ready=("True", "ReplicasReady"))
    after = conds(Ready=("False", "ReplicasNotReady"))
    assert transitions(before, after) == [
        ("Warning", "VoiceNotReady", "ReplicasNotReady: Ready is False (ReplicasNotReady)")
    ]


def test_scaling_to_zero_is_normal() -> None:
    before = conds(Ready=("True", "ReplicasReady"))
    after = conds(Ready=("False", "ScaledToZero"))
    assert transitions(before, after) == [
        ("Normal", "ScaledToZero", "Ready is False (ScaledToZero)")
    ]


def test_degraded_events() -> None:
    ok = conds(Degraded=("False", "AsExpected"))
    pvc = conds(Degraded=("True", "PVCNotFound"))
    spec = conds(Degraded=("True", "InvalidSpec"))
    assert transitions(ok, pvc) == [("Warning", "PVCNotFound", "Degraded is True (PVCNotFound)")]
    assert transitions([], pvc) == [("Warning", "PVCNotFound", "Degraded is True (PVCNotFound)")]
    assert transitions(pvc, spec) == [("Warning", "InvalidSpec", "Degraded is True (InvalidSpec)")]
    assert transitions(pvc, ok) == [
        ("Normal", "VoiceRecovered", "no longer degraded (was PVCNotFound)")
    ]


def test_unchanged_conditions_emit_nothing() -> None:
    state = conds(
        Ready=("True", "ReplicasReady"),
        Progressing=("False", "RolloutComplete"),
        Degraded=("True", "ReplicaFailure"),
    )
    assert transitions(state, state) == []
    assert transitions([], conds(Ready=("False", "ReplicasNotReady"))) == []


def test_progressing_alone_emits_nothing() -> None:
    before = conds(Progressing=("False", "RolloutComplete"))
    after = conds(Progressing=("True", "RollingOut"))
    assert transitions(before, after) == []


def test_ready_and_degraded_together_in_order() -> None:
    before = conds(Ready=("True", "ReplicasReady"), Degraded=("False", "AsExpected"))
    after = conds(Ready=("False", "ReplicasNotReady"), Degraded=("True", "ReplicaFailure"))
    assert [(t, r) for t, r, _ in transitions(before, after)] == [
        ("Warning", "VoiceNotReady"),
        ("Warning", "ReplicaFailure"),
    ]


def test_a_whole_life_through_derive_status() -> None:
    """Create, ready, PVC lost on an update, fixed, scaled to zero: the Events a user sees."""
    seen: list[tuple[str, str]] = []
    previous: list[dict[str, Any]] = []
    steps: list[tuple[Voice, dict[str, Any] | None, list[Problem]]] = [
        (voice(), None, []),
        (voice(), deployment(ready=0, updated=0, available=0, current=0), []),
        (voice(), deployment(ready=2), []),
        (voice(generation=6), deployment(ready=2), [Problem("PVCNotFound", "claim gone")]),
        (voice(generation=7), deployment(ready=2, built_from=7), []),
        (voice(replicas=0, generation=7), deployment(replicas=0, ready=0, built_from=7), []),
    ]
    for v, dep, problems in steps:
        status = derive_status(v, dep, problems, previous, T0)
        seen.extend(
            (kind, reason) for kind, reason, _ in transitions(previous, status["conditions"])
        )
        previous = status["conditions"]
    assert seen == [
        ("Normal", "VoiceReady"),
        ("Warning", "PVCNotFound"),
        ("Normal", "VoiceRecovered"),
        ("Normal", "ScaledToZero"),
    ]


# -- status as the API server really sends it (zero counts omitted) --------------------------


def test_zero_counts_omitted_while_the_first_pod_starts() -> None:
    dep = deployment(replicas=1)
    dep["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "unavailableReplicas": 1,
    }
    status = derive_status(voice(replicas=1), dep, [], [], T0)
    assert summary(status)["Ready"] == ("False", "ReplicasNotReady")
    assert summary(status)["Progressing"] == ("True", "RollingOut")
    assert cond(status, "Progressing")["message"] == "0 of 1 updated replicas available"
    assert (status["replicas"], status["readyReplicas"]) == (1, 0)


def test_scaled_to_zero_and_settled() -> None:
    dep = deployment(replicas=0, generation=2)
    dep["status"] = {
        "observedGeneration": 2,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }
    status = derive_status(voice(replicas=0), dep, [], [], T0)
    assert summary(status) == {
        "Ready": ("False", "ScaledToZero"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
