"""The handlers' logic in milliseconds: drift repair, refusal memory, PVC waiting, the
API server's failures, no duplicate writes. Against ``FakeKube`` (our own seam,
``tests/unit/fake_kube.py``) with kopf's indexes as plain dicts; the same paths run
against a real kube-apiserver in tests/integration/test_operator*.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import logging
from typing import Any

import kopf
import pytest
from fake_kube import EventRecorder, FakeKube

from voicefleet_api.labels import VOICE_LABEL
from voicefleet_operator import handlers
from voicefleet_operator.builders import BuildOptions
from voicefleet_operator.deps import Deps
from voicefleet_operator.indexes import (
    CLAIMS_INDEX,
    DEPLOYMENTS_INDEX,
    PODS_INDEX,
    VOICES_INDEX,
    Views,
    index_claim,
    index_deployment,
    index_voice,
)
from voicefleet_operator.k8s import KubeError
from voicefleet_operator.metrics import OperatorMetrics
from voicefleet_operator.pods import index_pod
from voicefleet_operator.settings import parse_args

NS = "tts"
LOG = logging.getLogger("test")


def _voice(
    name: str = "joe", *, replicas: int = 1, generation: int = 1, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation},
        "spec": {
            "replicas": replicas,
            "model": {"bundled": "en_US-joe-medium"},
            "resources": {"cpu": "250m", "memory": "512Mi"},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
            **spec,
        },
    }


class Cluster:
    """kopf's indexes for one test, fed from what FakeKube stores (as the watches would)."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.voices: dict[tuple[str, str], dict[str, Any]] = {}
        self.claims: set[tuple[str, str]] = set()
        self.pods: list[dict[str, Any]] = []

    def views(self) -> Views:
        voices: dict[Any, list[Any]] = {}
        for body in self.voices.values():
            # the index holds what the API server has, status included (lagging or not)
            for key, value in index_voice(body).items():
                voices.setdefault(key, []).append(value)
        deployments: dict[Any, list[Any]] = {}
        for (kind, _, _), obj in self.kube.objects.items():
            if kind == "Deployment":
                for key, value in index_deployment(obj).items():
                    deployments.setdefault(key, []).append(value)
        claims: dict[Any, list[Any]] = {}
        for ns, name in self.claims:
            for key, value in index_claim({"metadata": {"namespace": ns, "name": name}}).items():
                claims.setdefault(key, []).append(value)
        pods: dict[Any, list[Any]] = {}
        for pod in self.pods:
            for key, value in index_pod(pod).items():
                pods.setdefault(key, []).append(value)
        return Views.of(
            {
                VOICES_INDEX: voices,
                DEPLOYMENTS_INDEX: deployments,
                CLAIMS_INDEX: claims,
                PODS_INDEX: pods,
            }
        )

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        self.voices[(NS, body["metadata"]["name"])] = body
        return body


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def events() -> EventRecorder:
    return EventRecorder()


@pytest.fixture
def deps(kube: FakeKube, events: EventRecorder) -> Deps:
    return Deps(
        config=parse_args(["-A", "--autoscale-interval=0"]),
        kube=kube,
        metrics=OperatorMetrics.create(),
        options=BuildOptions(),
        post_event=events,
    )


@pytest.fixture
def cluster(kube: FakeKube) -> Cluster:
    return Cluster(kube)


def _condition(kube: FakeKube, name: str, kind: str) -> dict[str, Any]:
    for cond in kube.statuses[(NS, name)]["conditions"]:
        if cond["type"] == kind:
            return dict(cond)
    raise AssertionError(f"no {kind} condition")


def _deployment(kube: FakeKube, name: str = "joe") -> dict[str, Any]:
    return kube.objects[("Deployment", NS, name)]


@pytest.mark.parametrize(("replicas", "max_replicas"), [(0, 3), (1, 3), (0, 1), (1, 1)])
def test_a_new_voice_below_two_pods_costs_two_applies_and_one_status_write(
    deps: Deps, kube: FakeKube, cluster: Cluster, replicas: int, max_replicas: int
) -> None:
    """No PodDisruptionBudget under two pods (it would protect nothing), and a new voice
    owns none to delete even when its maxReplicas is 1."""
    body = cluster.add(
        _voice(replicas=replicas, autoscaling={"minReplicas": 0, "maxReplicas": max_replicas})
    )
    handlers.reconcile_voice(deps, cluster.views(), body, LOG, created=True)
    assert kube.calls == [
        ("apply", "Service", "joe"),
        ("apply", "Deployment", "joe"),
        ("patch-status", "TTSVoice", "joe"),
    ]
    # The Deployment's watch event (the index now holds it) derives the same status: no write.
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert kube.count("patch-status") == 1


def test_with_network_policies_on_the_policy_is_applied_before_anything_serves(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    """The chart's --network-policy-from: one more apply per reconcile, and it comes first,
    so no voice pod ever runs without the policy that keeps other pods off it."""
    peers = ({"podSelector": {"matchLabels": {"app": "router"}}},)
    deps = dataclasses.replace(deps, options=BuildOptions(network_policy_from=peers))
    body = cluster.add(_voice(replicas=2))
    handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    assert [call for call in kube.calls if call[0] == "apply"] == [
        ("apply", "NetworkPolicy", "joe"),
        ("apply", "Service", "joe"),
        ("apply", "PodDisruptionBudget", "joe"),
        ("apply", "Deployment", "joe"),
    ]
    policy = kube.objects[("NetworkPolicy", NS, "joe")]
    assert policy["spec"]["ingress"][0]["from"] == [dict(p) for p in peers]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "TTSVoice"


def test_the_budget_comes_with_the_second_pod_stays_below_it_and_goes_with_max_replicas_1(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    """The autoscaler (or kubectl scale) moves spec.replicas; the budget is applied before
    the Deployment that asks for the second pod, then neither re-applied nor deleted
    while the voice runs fewer (no create/delete churn as it crosses 1 <-> 2), and
    deleted, with an Event, once maxReplicas says two pods can never run again."""
    pdb = ("PodDisruptionBudget", NS, "joe")
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(_voice(replicas=0)), LOG)
    assert pdb not in kube.objects
    handlers.reconcile_voice(
        deps, cluster.views(), cluster.add(_voice(replicas=2, generation=2)), LOG
    )
    assert pdb in kube.objects
    assert kube.calls[-4:-1] == [
        ("apply", "Service", "joe"),
        ("apply", "PodDisruptionBudget", "joe"),
        ("apply", "Deployment", "joe"),
    ]
    for generation, replicas in ((3, 1), (4, 0)):
        calls = len(kube.calls)
        handlers.reconcile_voice(
            deps,
            cluster.views(),
            cluster.add(_voice(replicas=replicas, generation=generation)),
            LOG,
        )
        assert pdb in kube.objects
        assert not [c for c in kube.calls[calls:] if c[1] == "PodDisruptionBudget"]
    lowered = _voice(replicas=0, generation=5, autoscaling={"minReplicas": 0, "maxReplicas": 1})
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(lowered), LOG)
    assert pdb not in kube.objects
    assert events.reasons() == ["PodDisruptionBudgetDeleted"]


def test_replicas_written_on_the_deployment_are_restored_to_the_voices(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    body = cluster.add(_voice(replicas=2))
    handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    _deployment(kube)["spec"]["replicas"] = 5  # kubectl scale deployment joe --replicas 5
    applies = kube.count("apply", "Deployment")
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert kube.count("apply", "Deployment") == applies + 1
    assert _deployment(kube)["spec"]["replicas"] == 2
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)  # no drift: nothing applied
    assert kube.count("apply", "Deployment") == applies + 1


def test_a_deployment_deleted_under_a_live_voice_is_recreated(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    body = cluster.add(_voice())
    handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    del kube.objects[("Deployment", NS, "joe")]
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG, deployment_deleted=True)
    assert ("Deployment", NS, "joe") in kube.objects


def test_a_refused_deployment_stays_reported_by_later_refreshes_until_a_new_spec_applies(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    kube.refuse["Deployment"] = KubeError(422, 'Deployment.apps "joe" is invalid: spec.x: bad')
    body = cluster.add(_voice())
    with pytest.raises(kopf.PermanentError, match=r"spec\.x: bad"):
        handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    degraded = _condition(kube, "joe", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "DeploymentRejected")
    assert events.reasons().count("DeploymentRejected") == 1
    # A pod event refreshes status: the refusal is remembered, not forgotten, not re-posted.
    writes = kube.count("patch-status")
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert _condition(kube, "joe", "Degraded")["reason"] == "DeploymentRejected"
    assert kube.count("patch-status") == writes
    assert events.reasons().count("DeploymentRejected") == 1
    # A new generation that applies clears it.
    del kube.refuse["Deployment"]
    fixed = cluster.add(_voice(generation=2))
    handlers.reconcile_voice(deps, cluster.views(), fixed, LOG)
    assert _condition(kube, "joe", "Degraded")["status"] == "False"
    assert "VoiceRecovered" in events.reasons()


def test_a_voice_waits_for_its_claim_and_comes_up_when_the_claim_appears(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    volume = {"volume": {"persistentVolumeClaim": {"claimName": "models"}, "path": "v/a.onnx"}}
    body = cluster.add(_voice(model=volume))
    with pytest.raises(kopf.TemporaryError, match="'models'"):
        handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    assert kube.count("apply") == 0
    assert _condition(kube, "joe", "Degraded")["reason"] == "PVCNotFound"
    cluster.claims.add((NS, "models"))
    handlers.pvc_event(
        {"type": "ADDED", "object": {}},
        kopf.Body({"metadata": {"namespace": NS, "name": "models"}}),
        kopf.Memo(deps=deps),
        LOG,
        **{CLAIMS_INDEX: cluster.views().claims, VOICES_INDEX: cluster.views().voices},
    )
    assert kube.count("apply", "Deployment") == 1
    assert _condition(kube, "joe", "Degraded")["status"] == "False"


def test_a_full_service_range_is_reported_in_the_servers_words_and_the_deployment_still_runs(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    message = "Internal error occurred: failed to allocate a serviceIP: range is full"
    kube.refuse["Service"] = KubeError(500, message)
    body = cluster.add(_voice())
    with pytest.raises(kopf.TemporaryError, match="range is full"):
        handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    degraded = _condition(kube, "joe", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ServiceFailed")
    assert message in degraded["message"]
    assert ("Deployment", NS, "joe") in kube.objects


def test_a_quota_refusal_is_quota_exceeded_not_a_missing_permission(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    message = (
        'deployments.apps "joe" is forbidden: exceeded quota: small, requested: '
        "count/deployments.apps=1, used: count/deployments.apps=1, "
        "limited: count/deployments.apps=1"
    )
    kube.refuse["Deployment"] = KubeError(403, message)
    body = cluster.add(_voice())
    with pytest.raises(kopf.TemporaryError, match="exceeded quota"):
        handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    degraded = _condition(kube, "joe", "Degraded")
    assert degraded["reason"] == "QuotaExceeded"
    assert "limited: count/deployments.apps=1" in degraded["message"]
    assert "Forbidden" not in events.reasons()


def test_a_missing_permission_is_still_a_forbidden_event_and_a_retry(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    kube.refuse["Service"] = KubeError(403, 'services "joe" is forbidden: User "x" cannot patch')
    body = cluster.add(_voice())
    with pytest.raises(kopf.TemporaryError, match="API call failed"):
        handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    assert events.reasons() == ["Forbidden"]


def test_an_index_that_lags_our_own_write_neither_rewrites_nor_reposts(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    body = cluster.add(_voice(replicas=1))
    handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    cluster.pods.append(
        {
            "metadata": {
                "name": "joe-1",
                "namespace": NS,
                "labels": {VOICE_LABEL: "joe"},
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "server",
                        "ready": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    }
                ],
            },
        }
    )
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)  # the index's status is empty
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert events.reasons().count("CrashLoopBackOff") == 1
    assert kube.count("patch-status") == 2


def test_with_network_policies_off_a_voice_loses_the_policy_it_owns_and_keeps_others(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    """Policies turned off (an operator restarted without --network-policy-from): the
    next reconcile of a voice that existed deletes the policy it owns; a policy of the
    same name that someone else wrote is not ours to delete."""
    peers = ({"podSelector": {"matchLabels": {"app": "router"}}},)
    on = dataclasses.replace(deps, options=BuildOptions(network_policy_from=peers))
    joe, ann = cluster.add(_voice("joe")), cluster.add(_voice("ann"))
    handlers.reconcile_voice(on, cluster.views(), joe, LOG)
    theirs = {"kind": "NetworkPolicy", "metadata": {"name": "ann", "namespace": NS}}
    kube.objects[("NetworkPolicy", NS, "ann")] = theirs
    handlers.reconcile_voice(deps, cluster.views(), joe, LOG)
    handlers.reconcile_voice(deps, cluster.views(), ann, LOG)
    assert ("NetworkPolicy", NS, "joe") not in kube.objects
    assert kube.objects[("NetworkPolicy", NS, "ann")] is theirs
    assert events.reasons().count("NetworkPolicyDeleted") == 1
    # a new voice (kopf's create) cannot own one yet: no read for it
    calls = len(kube.calls)
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(_voice("new")), LOG, created=True)
    assert kube.count("get") == 2
    assert ("get", "NetworkPolicy", "new") not in kube.calls[calls:]


def test_with_network_policies_off_a_recreated_voice_loses_the_policy_its_predecessor_left(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    """A voice deleted and created again under its name while policies were turned off: the
    policy the earlier voice owns (its uid, not this one's) is ours all the same, left for
    the garbage collector; the new voice's reconcile deletes it instead of keeping it."""
    peers = ({"podSelector": {"matchLabels": {"app": "router"}}},)
    on = dataclasses.replace(deps, options=BuildOptions(network_policy_from=peers))
    handlers.reconcile_voice(on, cluster.views(), cluster.add(_voice("joe")), LOG)
    again = _voice("joe")
    again["metadata"]["uid"] = "uid-joe-again"
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(again), LOG)
    assert ("NetworkPolicy", NS, "joe") not in kube.objects
    assert events.reasons() == ["NetworkPolicyDeleted"]


def test_an_invalid_spec_is_reported_once(
    deps: Deps, kube: FakeKube, cluster: Cluster, events: EventRecorder
) -> None:
    body = cluster.add(
        _voice(env=[{"name": "PATH", "value": "/x"}, {"name": "PATH", "value": "/y"}])
    )
    for _ in range(2):
        with pytest.raises(kopf.TemporaryError, match="invalid spec"):
            handlers.reconcile_voice(deps, cluster.views(), body, LOG)
    assert kube.count("patch-status") == 1
    assert events.reasons() == ["InvalidSpec"]
    assert _condition(kube, "joe", "Degraded")["reason"] == "InvalidSpec"


def _controller_observed(kube: FakeKube, name: str = "joe") -> None:
    """What the Deployment controller writes once it has rolled out a zero-replica voice."""
    deployment = _deployment(kube, name)
    deployment["status"] = {
        "observedGeneration": deployment["metadata"]["generation"],
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }


def test_refresh_due_says_in_advance_whether_a_refresh_would_write_or_repair(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    """The event loop's check (no thread, no API call) agrees with the refresh itself: the
    echo of our own apply is nothing to do, the controller's verdict is, and so are
    drifted replicas; while the voice's lock is held the event takes the locked path."""
    assert not handlers.refresh_due(deps, cluster.views(), NS, "nobody")
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(_voice(replicas=0)), LOG)
    assert not handlers.refresh_due(deps, cluster.views(), NS, "joe")
    calls = len(kube.calls)
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert kube.calls[calls:] == []
    _controller_observed(kube)
    assert handlers.refresh_due(deps, cluster.views(), NS, "joe")
    handlers.refresh_status(deps, cluster.views(), NS, "joe", LOG)
    assert kube.calls[calls:] == [("patch-status", "TTSVoice", "joe")]
    assert _condition(kube, "joe", "Progressing")["reason"] == "RolloutComplete"
    assert not handlers.refresh_due(deps, cluster.views(), NS, "joe")
    _deployment(kube)["spec"]["replicas"] = 3  # kubectl scale deployment joe --replicas 3
    assert handlers.refresh_due(deps, cluster.views(), NS, "joe")
    _deployment(kube)["spec"]["replicas"] = 0
    with deps.memory.lock(NS, "joe"):  # a reconcile under way on a pool thread
        assert handlers.refresh_due(deps, cluster.views(), NS, "joe")
    assert not handlers.refresh_due(deps, cluster.views(), NS, "joe")


class CountingPool(concurrent.futures.ThreadPoolExecutor):
    """A real thread pool that counts what is sent to it (kopf's, in the operator)."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.sent = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.sent += 1
        return super().submit(fn, *args, **kwargs)


def test_deployment_and_pod_events_reach_the_pool_only_when_a_refresh_has_work(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    """kopf calls the async event handlers in its loop; a refresh is sent to kopf's pool
    (carried in the memo) only when it will write or repair, and a deleted Deployment
    always is (it is re-created)."""
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(_voice(replicas=0)), LOG)
    pool = CountingPool()
    memo = kopf.Memo(deps=deps, **{handlers.POOL: pool})

    def deployment_event(kind: str) -> None:
        views = cluster.views()
        kwargs = {
            VOICES_INDEX: views.voices,
            DEPLOYMENTS_INDEX: views.deployments,
            CLAIMS_INDEX: views.claims,
            PODS_INDEX: views.pods,
        }
        body = kopf.Body(_deployment(kube))
        event = {"type": kind, "object": dict(body)}
        asyncio.run(
            handlers.deployment_event(event=event, body=body, memo=memo, logger=LOG, **kwargs)
        )

    try:
        deployment_event("ADDED")  # the echo of our own apply
        assert (pool.sent, kube.count("patch-status")) == (0, 1)
        _controller_observed(kube)
        deployment_event("MODIFIED")
        assert (pool.sent, kube.count("patch-status")) == (1, 2)
        deployment_event("MODIFIED")  # a resync: nothing new
        assert (pool.sent, kube.count("patch-status")) == (1, 2)
        applies = kube.count("apply", "Deployment")
        deployment_event("DELETED")
        assert pool.sent == 2
        assert kube.count("apply", "Deployment") == applies + 1
        pod = {"metadata": {"name": "joe-1", "namespace": NS, "labels": {VOICE_LABEL: "joe"}}}
        asyncio.run(
            handlers.pod_event(
                event={"type": "ADDED"},
                body=kopf.Body(pod),
                memo=memo,
                logger=LOG,
                **{
                    VOICES_INDEX: cluster.views().voices,
                    DEPLOYMENTS_INDEX: cluster.views().deployments,
                },
            )
        )
        assert pool.sent == 2  # no pod in the index, no change: decided in the loop
    finally:
        pool.shutdown()
    assert handlers.pool_of(memo) is pool
    assert handlers.pool_of(kopf.Memo(deps=deps)) is None  # the loop's default executor


KOPF_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("kopf_context", default="")
"""Stands for kopf's own context variables (its Event queue), set around each handler."""


def test_a_refresh_sent_to_the_pool_posts_its_events_in_kopfs_context(
    deps: Deps, kube: FakeKube, cluster: Cluster
) -> None:
    """kopf.event finds its Event queue through context variables: the pool thread of a
    refresh must see the handler's context, or the Warning Events of a crash are lost."""
    seen: list[tuple[str, str]] = []
    deps = dataclasses.replace(
        deps, post_event=lambda body, **kw: seen.append((kw["reason"], KOPF_CONTEXT.get()))
    )
    handlers.reconcile_voice(deps, cluster.views(), cluster.add(_voice(replicas=1)), LOG)
    _deployment(kube)["status"] = {"observedGeneration": 1, "readyReplicas": 1, "replicas": 1}
    pool = CountingPool()
    views = cluster.views()

    async def event_in_kopfs_context() -> None:
        KOPF_CONTEXT.set("kopf")
        await handlers.deployment_event(
            event={"type": "MODIFIED"},
            body=kopf.Body(_deployment(kube)),
            memo=kopf.Memo(deps=deps, **{handlers.POOL: pool}),
            logger=LOG,
            **{VOICES_INDEX: views.voices, DEPLOYMENTS_INDEX: views.deployments},
        )

    try:
        asyncio.run(event_in_kopfs_context())
    finally:
        pool.shutdown()
    assert pool.sent == 1
    assert ("VoiceReady", "kopf") in seen, seen
