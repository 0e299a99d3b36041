"""The pod index entry: a pod as the API server sends it -> PodInfo, and its wiring."""

from __future__ import annotations

from typing import Any

import kopf

from voicefleet_api.labels import POD_DELETION_COST_ANNOTATION, VOICE_LABEL
from voicefleet_operator.pods import INDEX_NAME, PodInfo, index_pod, pod_info, pods_of
from voicefleet_operator.wiring import build_registry


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "joe-7d9f-abcde",
            "namespace": "tts",
            "uid": "u-1",
            "creationTimestamp": "2026-11-27T10:00:00Z",
            "labels": {VOICE_LABEL: "joe", "pod-template-hash": "7d9f"},
            "annotations": {POD_DELETION_COST_ANNOTATION: "-5"},
        },
        "status": status,
    }


CRASHING = {
    "name": "server",
    "ready": False,
    "restartCount": 4,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    "lastState": {"terminated": {"exitCode": 1, "message": "model not found"}},
}


def test_a_ready_pod_is_serving_with_its_address_and_cost() -> None:
    info = pod_info(
        _pod(
            phase="Running",
            podIP="127.0.0.7",
            conditions=[
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        )
    )
    assert info is not None
    assert (info.namespace, info.voice, info.name, info.ip) == (
        "tts",
        "joe",
        "joe-7d9f-abcde",
        "127.0.0.7",
    )
    assert info.key == ("tts", "joe")
    assert info.ready
    assert info.serving
    assert not info.starting
    assert not info.terminating
    assert info.deletion_cost == -5
    assert info.created == "2026-11-27T10:00:00Z"


def test_a_crash_looping_pod_keeps_its_container_statuses_and_counts_as_starting() -> None:
    info = pod_info(
        _pod(
            phase="Running",
            conditions=[{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            containerStatuses=[CRASHING],
        )
    )
    assert info is not None
    assert not info.ready
    assert not info.serving
    assert info.starting
    assert info.container_statuses == (CRASHING,)
    assert info.container_statuses[0] is not CRASHING  # a copy, never kopf's live body
    assert info.conditions[0]["reason"] == "ContainersNotReady"


def test_a_terminating_ready_pod_is_neither_serving_nor_starting() -> None:
    body = _pod(
        phase="Running", podIP="127.0.0.8", conditions=[{"type": "Ready", "status": "True"}]
    )
    body["metadata"]["deletionTimestamp"] = "2026-11-27T10:05:00Z"
    info = pod_info(body)
    assert info is not None
    assert info.terminating
    assert not info.serving
    assert not info.starting


def test_a_new_pod_without_status_is_pending_and_a_foreign_pod_is_not_indexed() -> None:
    info = pod_info(_pod())
    assert info is not None
    assert info.phase == "Pending"
    assert info.starting
    assert info.ip is None
    assert index_pod(_pod()) == {("tts", "joe"): info}
    foreign = _pod()
    del foreign["metadata"]["labels"][VOICE_LABEL]
    assert pod_info(foreign) is None
    assert index_pod(foreign) == {}


def test_pods_of_reads_one_voice_sorted_and_empty_when_unknown() -> None:
    a = PodInfo("tts", "b", "joe", "u", None, "Pending", False, None, None, None)
    b = PodInfo("tts", "a", "joe", "u", None, "Pending", False, None, None, None)
    index = {("tts", "joe"): [a, b]}
    assert [p.name for p in pods_of(index, "tts", "joe")] == ["a", "b"]
    assert pods_of(index, "tts", "other") == []


def test_the_registry_indexes_voice_pods_under_the_documented_name() -> None:
    registry = build_registry()
    handlers = registry._indexing.get_all_handlers()  # kopf has no public listing
    ours = [h for h in handlers if h.id == INDEX_NAME]
    assert len(ours) == 1
    assert ours[0].labels == {VOICE_LABEL: kopf.PRESENT}
