"""kopf's bookkeeping kept in memory (voicefleet_operator.kopfstate), on kopf's own types.

What matters is what kopf concludes from it: a stored essence equal to the object's is
"nothing changed", no essence is "created", a differing one "updated"; on first sight the
voice's ``status.observedGeneration`` stands in for what an earlier process handled.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from fake_kube import FakeKube

from voicefleet_operator.builders import BuildOptions
from voicefleet_operator.deps import Deps
from voicefleet_operator.kopfstate import KopfState, MemoryDiffBaseStorage, MemoryProgressStorage
from voicefleet_operator.metrics import OperatorMetrics
from voicefleet_operator.settings import parse_args
from voicefleet_operator.wiring import ANNOTATION_PREFIX, forget_deleted_voice

STARTED = datetime(2026, 12, 3, 16, 0, 0, 500_000, tzinfo=UTC)
"""When the KopfState of most tests was made (the operator process started)."""


def voice(
    uid: str,
    generation: int,
    observed: int | None,
    replicas: int = 0,
    created: str = "2026-12-03T16:00:01Z",
) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {
            "namespace": "ns",
            "name": "joe",
            "uid": uid,
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": {"replicas": replicas, "model": {"bundled": "en_US-joe-medium"}},
        "status": {} if observed is None else {"observedGeneration": observed},
    }
    return kopf.Body(cast(kopf.RawBody, raw))


def test_a_voice_never_handled_has_no_base_until_kopf_stores_one() -> None:
    storage = MemoryDiffBaseStorage(KopfState(started=STARTED))
    new = voice("a", 1, None)
    assert storage.fetch(body=new) is None
    written = voice("a", 1, 1)  # our own status write, before the handler finished
    assert storage.fetch(body=written) is None  # still not handled: kopf retries "create"
    essence = storage.build(body=written)
    storage.store(body=written, patch=kopf.Patch(), essence=essence)
    assert storage.fetch(body=written) == essence


def test_a_voice_without_status_from_before_this_process_is_not_new() -> None:
    """An earlier operator may have applied a voice's objects (its NetworkPolicy among
    them) and stopped before its status write, or the status was lost: such a voice is
    kopf's "update" (base without spec), so its reconcile is not ``created`` and looks
    for what it may own. Only a voice created since this process started is "create"
    (a creationTimestamp is whole seconds: the second the process started in is older)."""
    state = KopfState()
    older = voice("k", 1, None, created="2026-12-03T15:00:00Z")
    base = MemoryDiffBaseStorage(state).fetch(body=older)
    assert base is not None
    assert "spec" not in base
    storage = MemoryDiffBaseStorage(KopfState(started=STARTED))
    assert storage.fetch(body=voice("l", 1, None, created="2026-12-03T16:00:00Z")) is not None
    assert storage.fetch(body=voice("m", 1, None, created="2026-12-03T16:00:01Z")) is None
    unreadable = voice("n", 1, None, created="")  # no timestamp to go by: as if older
    assert storage.fetch(body=unreadable) is not None


def test_on_first_sight_the_status_says_what_was_handled_before() -> None:
    state = KopfState()
    storage = MemoryDiffBaseStorage(state)
    handled = voice("b", 2, 2)
    assert storage.fetch(body=handled) == storage.build(body=handled)  # kopf: resume
    changed = voice("c", 3, 2, replicas=1)
    base = storage.fetch(body=changed)
    assert base is not None
    assert "spec" not in base  # kopf: update (the spec differs)
    assert storage.build(body=changed)["spec"] != base.get("spec")
    # Only the first sight guesses: later events compare with what kopf stored.
    assert storage.fetch(body=voice("b", 3, 2, replicas=2)) == storage.build(body=handled)


def test_progress_is_kept_per_object_and_handler_and_writes_nothing() -> None:
    state = KopfState()
    storage = MemoryProgressStorage(state, prefix=ANNOTATION_PREFIX)
    body, other = voice("d", 1, None), voice("e", 1, None)
    patch = kopf.Patch()
    record = kopf.ProgressRecord(started="2026-12-03T15:00:00", retries=1, delayed="x")
    storage.store(key=kopf.HandlerId("reconcile"), record=record, body=body, patch=patch)
    assert not patch
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body) == record
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=other) is None
    storage.purge(key=kopf.HandlerId("reconcile"), body=body, patch=patch)
    assert not patch
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body) is None


def test_a_delayed_retry_still_wakes_up_through_an_annotation() -> None:
    storage = MemoryProgressStorage(KopfState(), prefix=ANNOTATION_PREFIX)
    patch = kopf.Patch()
    storage.touch(body=voice("f", 1, None), patch=patch, value="2026-12-03T15:00:00")
    annotations = patch["metadata"]["annotations"]
    assert annotations[f"{ANNOTATION_PREFIX}/touch-dummy"] == "2026-12-03T15:00:00"


def test_a_deleted_voice_is_forgotten() -> None:
    state = KopfState()
    diffbase = MemoryDiffBaseStorage(state)
    progress = MemoryProgressStorage(state, prefix=ANNOTATION_PREFIX)
    body = voice("g", 1, 1)
    diffbase.fetch(body=body)
    progress.store(
        key=kopf.HandlerId("reconcile"),
        record=kopf.ProgressRecord(retries=1),
        body=body,
        patch=kopf.Patch(),
    )
    state.forget("g")
    assert state == KopfState()


def test_the_deleted_event_of_a_voice_drops_what_the_operator_kept() -> None:
    deps = Deps(
        config=parse_args(["-A", "--autoscale-interval=0"]),
        kube=FakeKube(),
        metrics=OperatorMetrics.create(),
        options=BuildOptions(),
    )
    body = voice("h", 1, 1)
    MemoryDiffBaseStorage(deps.kopf_state).fetch(body=body)
    deps.memory.wrote("ns", "joe", "h", {"observedGeneration": 1})
    memo = kopf.Memo(deps=deps)
    modified = kopf.RawEvent(type="MODIFIED", object=cast(kopf.RawBody, dict(body)))
    asyncio.run(forget_deleted_voice(event=modified, body=body, memo=memo))
    assert deps.kopf_state.essences
    deleted = kopf.RawEvent(type="DELETED", object=cast(kopf.RawBody, dict(body)))
    asyncio.run(forget_deleted_voice(event=deleted, body=body, memo=memo))
    assert deps.kopf_state == KopfState()
    assert deps.memory.status(dict(body)) == {"observedGeneration": 1}  # the body's own only


def test_the_essence_is_kopfs_own_without_copying_status_and_managed_fields() -> None:
    """The build skips copying what kopf's build deletes anyway: the same essence as
    kopf's own, for a voice as the API server sends it (managedFields, status, labels,
    annotations; kopf's touch annotation is cleared later by the progress storage)."""
    storage = MemoryDiffBaseStorage(KopfState(started=STARTED))
    raw = cast(dict[str, Any], dict(voice("a", 3, 2, replicas=2)))
    raw["metadata"] = {
        **raw["metadata"],
        "labels": {"team": "tts"},
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            f"{ANNOTATION_PREFIX}/touch-dummy": "x",
            "note": "kept",
        },
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        "resourceVersion": "42",
    }
    raw["status"] = {"observedGeneration": 2, "conditions": [{"type": "Ready"}]}
    body = kopf.Body(cast(kopf.RawBody, raw))
    stock = kopf.DiffBaseStorage.build(storage, body=body)
    assert storage.build(body=body) == stock
    meta = storage.build(body=body)["metadata"]
    assert meta["labels"] == {"team": "tts"}
    assert meta["annotations"]["note"] == "kept"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in meta["annotations"]
    assert set(meta) == {"labels", "annotations"}  # no managedFields, resourceVersion
    assert storage.build(body=body)["spec"] == raw["spec"]
    assert storage.build(body=body)["spec"] is not raw["spec"]  # a copy, not the body's
    with_status = storage.build(body=body, extra_fields=["status.observedGeneration"])
    assert with_status == kopf.DiffBaseStorage.build(
        storage, body=body, extra_fields=["status.observedGeneration"]
    )
    assert with_status["status"] == {"observedGeneration": 2}
