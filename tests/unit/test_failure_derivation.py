"""failures.pod_report / rejected_problem: pods as the API server sends them → Problems.

The pod bodies below follow what `kubectl get pod -o json` shows for each failure on
a real node (kubelet v1.34 wording); they go through the pod index's own `pod_info`,
as in the operator.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from voicefleet_api.termination import format_message, parse_message
from voicefleet_operator.conditions import Problem, derive_status
from voicefleet_operator.failures import PodReport, rejected_problem
from voicefleet_operator.failures import pod_report as report_of
from voicefleet_operator.pods import pod_info
from voicefleet_operator.spec import parse_voice

MODEL_LINE = format_message(
    "ModelLoadFailed",
    "engine worker 0 failed to load: unknown model 'en_US-nobody-medium': use "
    "'en_US-joe-medium' or a path to a Piper .onnx file (engine piper-onnx)",
)


def pod(
    name: str = "v-abc-1",
    *,
    phase: str = "Running",
    ready: bool = False,
    scheduled: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [
        scheduled or {"type": "PodScheduled", "status": "True"},
    ]
    if scheduled is None:
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if container is not None:
        status["containerStatuses"] = [
            {
                "name": "server",
                "image": "ghcr.io/voicefleet/voicefleet-server:0.1.0",
                "ready": ready,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-27T17:00:00Z"}},
                "lastState": {},
                **container,
            }
        ]
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {"voicefleet.io/voice": "v"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T17:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {"name": "server", "resources": {"limits": {"memory": "64Mi"}}, "image": "x"}
            ]
        },
        "status": status,
    }


def crash_looping(message: str = "", reason: str = "Error", code: int = 1) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": "2026-11-27T17:00:00Z",
        "finishedAt": "2026-11-27T17:00:03Z",
        "containerID": "process://1",
    }
    if message:
        terminated["message"] = message
    return {
        "restartCount": 3,
        "state": {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container=server pod=v-abc-1_ns(u)",
            }
        },
        "lastState": {"terminated": terminated},
    }


def pod_report(pods: list[dict[str, Any]], memory: str | None = None) -> PodReport:
    infos = [pod_info(p) for p in pods]
    return report_of([i for i in infos if i is not None], memory=memory)


def only(report: PodReport) -> Problem:
    assert len(report.problems) == 1, report
    return report.problems[0]


def test_model_load_failure_is_named_by_the_termination_message() -> None:
    problem = only(pod_report([pod(container=crash_looping(MODEL_LINE))]))
    assert problem.reason == "ModelLoadFailed"
    assert problem.from_pods
    assert "unknown model 'en_US-nobody-medium'" in problem.message
    assert "'en_US-joe-medium'" in problem.message, "the models it knows"
    assert "exited with code 1 (restarted 3 times)" in problem.message


def test_model_load_failure_reported_while_the_next_try_runs() -> None:
    """Running again but not ready: the last failure still stands (no flapping)."""
    running = crash_looping(MODEL_LINE)
    running["state"] = {"running": {"startedAt": "2026-11-27T17:00:05Z"}}
    assert only(pod_report([pod(container=running)])).reason == "ModelLoadFailed"
    running["ready"] = True
    report = pod_report([pod(container=running, ready=True)])
    assert report.problems == (), "ready again: recovered"
    assert report.starting == 0


def test_crash_loop_quotes_exit_code_and_log_fallback() -> None:
    problem = only(pod_report([pod(container=crash_looping("Traceback ...\nImportError: x"))]))
    assert problem.reason == "CrashLoopBackOff"
    assert "keeps failing (restarted 3 times): exit code 1 (Error): Traceback ..." in (
        problem.message
    )
    assert "\n" not in problem.message


def test_terminated_not_restarted() -> None:
    container = {
        "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "bad flag"}},
    }
    problem = only(pod_report([pod(container=container, phase="Failed")]))
    assert problem.reason == "ContainerTerminated"
    assert problem.message == "container 'server' terminated: exit code 2 (Error): bad flag"


def test_clean_exit_is_not_a_problem() -> None:
    container = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_report([pod(container=container, phase="Succeeded")]).problems == ()


def test_oom_killed_names_the_limit() -> None:
    problem = only(
        pod_report([pod(container=crash_looping(reason="OOMKilled", code=137))], memory="64Mi")
    )
    assert problem.reason == "OOMKilled"
    assert "exceeding its memory limit of 64Mi" in problem.message
    assert "spec.resources.memory" in problem.message


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_has_one_stable_message(reason: str) -> None:
    error = 'failed to pull image "ghcr.io/x/nope:1": not found'
    message = (
        error if reason == "ErrImagePull" else f'Back-off pulling image "x": ErrImagePull: {error}'
    )
    container = {"state": {"waiting": {"reason": reason, "message": message}}}
    problem = only(pod_report([pod(container=container, phase="Pending")]))
    assert problem.reason == "ImagePullBackOff"
    assert problem.message.endswith(f": {error}")
    assert "cannot pull image 'ghcr.io/voicefleet/voicefleet-server:0.1.0'" in problem.message


def test_unschedulable_carries_the_schedulers_words() -> None:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 "
        "nodes are available: 1 No preemption victims found for incoming pod.",
    }
    problem = only(pod_report([pod(phase="Pending", scheduled=scheduled)]))
    assert problem.reason == "Unschedulable"
    assert "1 Insufficient nvidia.com/gpu" in problem.message


def test_container_that_cannot_start() -> None:
    container = {
        "state": {
            "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}
        }
    }
    problem = only(pod_report([pod(container=container, phase="Pending")]))
    assert (problem.reason, problem.message) == (
        "CreateContainerConfigError",
        "container 'server' cannot start: secret \"s\" not found",
    )


def test_starting_pods_are_counted_not_failed() -> None:
    creating = {"state": {"waiting": {"reason": "ContainerCreating"}}}
    report = pod_report(
        [
            pod("a", phase="Pending", container=creating),
            pod("b", container={}),
            pod("c", ready=True, container={"ready": True}),
            pod("d", phase="Pending"),  # scheduled, no container status yet
        ]
    )
    assert report.problems == ()
    assert report.starting == 3


def test_several_pods_fold_into_one_line_most_specific_first() -> None:
    pods = [
        pod("b", container=crash_looping(MODEL_LINE)),
        pod("a", container=crash_looping(MODEL_LINE)),
        pod("c", container=crash_looping("boom")),
        pod("z", container=crash_looping("gone"), deleting=True),
    ]
    report = pod_report(pods)
    assert [p.reason for p in report.problems] == ["ModelLoadFailed", "CrashLoopBackOff"]
    assert report.problems[0].message.endswith("(and 1 more pod(s) alike)")
    assert "gone" not in " ".join(p.message for p in report.problems), "terminating pod"
    assert pod_report(list(reversed(pods))) == report, "order of the index does not matter"


def test_rejected_object_quotes_the_field_path() -> None:
    problem = rejected_problem(
        "Deployment",
        422,
        'Deployment.apps "v" is invalid: spec.template.spec.tolerations[0].operator: '
        "Invalid value: \"b\": value must be empty when `operator` is 'Exists'",
    )
    assert problem.reason == "DeploymentRejected"
    assert "spec.template.spec.tolerations[0].operator" in problem.message
    assert "the operator retries when it changes" in problem.message
    assert not problem.from_pods


def test_termination_line_round_trip() -> None:
    assert parse_message(MODEL_LINE + "\n") == ("ModelLoadFailed", MODEL_LINE.split(": ", 1)[1])
    assert parse_message("Traceback: boom") is None, "only reasons the server writes"
    assert parse_message("") is None
    assert len(format_message("ModelLoadFailed", "x" * 9000).encode()) == 4096
    with pytest.raises(ValueError, match="unknown termination reason"):
        format_message("SomethingElse", "x")


# --- the status the pods lead to ---------------------------------------------------------

VOICE = parse_voice(
    {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": "v", "namespace": "ns", "generation": 2, "uid": "u"},
        "spec": {"model": {"bundled": "en_US-nobody-medium"}, "replicas": 1},
    }
)
DEPLOYMENT: dict[str, Any] = {
    "metadata": {"generation": 1, "annotations": {"voicefleet.io/voice-generation": "2"}},
    "spec": {"replicas": 1},
    "status": {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "unavailableReplicas": 1,
        "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
        ],
    },
}
NOW = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_crash_loop_makes_the_voice_degraded_stalled_and_not_ready() -> None:
    report = pod_report([pod(container=crash_looping(MODEL_LINE))])
    got = conditions(derive_status(VOICE, DEPLOYMENT, report.problems, [], NOW))
    assert got["Degraded"][:2] == ("True", "ModelLoadFailed")
    assert got["Ready"] == (
        "False",
        "ReplicasNotReady",
        "0/1 replicas ready: ModelLoadFailed (see Degraded)",
    )
    assert got["Progressing"] == (
        "False",
        "Stalled",
        "pods cannot become ready: ModelLoadFailed (see Degraded)",
    )


def test_pending_pods_never_read_as_no_problems() -> None:
    creating = {"state": {"waiting": {"reason": "ContainerCreating"}}}
    report = pod_report([pod(phase="Pending", container=creating)])
    status = derive_status(VOICE, DEPLOYMENT, report.problems, [], NOW, starting=report.starting)
    degraded = conditions(status)["Degraded"]
    assert degraded == ("False", "AsExpected", "1 pod(s) starting; no failure reported yet")
    ready = copy.deepcopy(DEPLOYMENT)
    ready["status"].update(readyReplicas=1, availableReplicas=1, unavailableReplicas=0)
    ready["status"]["conditions"] = [
        {"type": "Available", "status": "True"},
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
    ]
    status = derive_status(VOICE, ready, (), [], NOW)
    assert conditions(status)["Degraded"] == ("False", "AsExpected", "no problems observed")


def killed_once(*, waiting: str | None = None, restarts: int = 1) -> dict[str, Any]:
    """What the kubelet shows after one SIGKILL (issue 18: a single `kill -9` of the server):
    restarted at once, running again, not ready yet; the kill in lastState."""
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-27T17:00:04Z"}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": "back-off 10s restarting"}}
    return {
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}},
    }


def test_a_single_restart_is_not_a_crash_loop() -> None:
    problem = only(pod_report([pod(container=killed_once())]))
    assert problem.reason == "ContainerRestarted"
    assert problem.message == (
        "container 'server' restarted once after exit code 137 (Error); "
        "waiting for it to become ready"
    )
    assert problem.transient
    got = conditions(derive_status(VOICE, DEPLOYMENT, (problem,), [], NOW))
    assert got["Degraded"][:2] == ("True", "ContainerRestarted")
    assert got["Progressing"][:2] == ("True", "RollingOut"), "not Stalled: it may recover"
    # ready again: nothing to report, whatever the restart count
    recovered = {**killed_once(), "ready": True}
    assert pod_report([pod(container=recovered, ready=True)]).problems == ()


@pytest.mark.parametrize(
    "container",
    [killed_once(waiting="CrashLoopBackOff"), killed_once(restarts=2)],
    ids=["the-kubelet-says-so", "restarted-twice"],
)
def test_a_crash_loop_is_named_once_the_kubelet_backs_off(container: dict[str, Any]) -> None:
    problem = only(pod_report([pod(container=container)]))
    assert problem.reason == "CrashLoopBackOff"
    assert not problem.transient


def test_a_restart_after_a_long_run_is_not_a_crash_loop() -> None:
    """Killed twice, a day apart: restartCount 2, but the last run lasted hours."""
    container = killed_once(restarts=2)
    container["lastState"]["terminated"].update(
        startedAt="2026-11-27T09:00:00Z", finishedAt="2026-11-27T17:00:00Z"
    )
    problem = only(pod_report([pod(container=container)]))
    assert problem.reason == "ContainerRestarted"
    assert "after a long run (2 restarts in all)" in problem.message
    container["lastState"]["terminated"].update(startedAt="2026-11-27T16:59:55Z")
    assert only(pod_report([pod(container=container)])).reason == "CrashLoopBackOff"


def test_progressing_until_the_old_pods_are_gone() -> None:
    """The Deployment says complete as soon as a pod is being deleted; the pod says not."""
    done = copy.deepcopy(DEPLOYMENT)
    done["metadata"]["annotations"]["voicefleet.io/voice-generation"] = str(VOICE.generation)
    done["status"].update(readyReplicas=1, availableReplicas=1, unavailableReplicas=0)
    done["status"]["conditions"] = [
        {"type": "Available", "status": "True"},
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
    ]
    new = {"ready": True, "state": {"running": {"startedAt": "2026-11-27T17:00:04Z"}}}
    old = {"state": {"running": {"startedAt": "2026-11-27T16:00:00Z"}}}
    report = pod_report(
        [pod("v-new-1", ready=True, container=new), pod("v-old-1", container=old, deleting=True)]
    )
    assert report.terminating == 1
    status = derive_status(VOICE, done, report.problems, [], NOW, terminating=report.terminating)
    assert conditions(status)["Progressing"] == (
        "True",
        "RollingOut",
        "1 old pod(s) still terminating",
    )
    gone = pod_report([pod("v-new-1", ready=True, container=new)])
    status = derive_status(VOICE, done, gone.problems, [], NOW, terminating=gone.terminating)
    assert conditions(status)["Progressing"][:2] == ("False", "RolloutComplete")
