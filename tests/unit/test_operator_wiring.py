"""How the operator is wired into kopf, checked without a cluster.

`build_settings` is where every kopf knob is decided (docs/operator.md explains
each); these tests pin the decisions so a refactor cannot drop one silently.
"""

from __future__ import annotations

import asyncio
import logging

import kopf
import pytest
from prometheus_client import generate_latest

from voicefleet_operator import metrics
from voicefleet_operator.indexes import owner_voice
from voicefleet_operator.kopfstate import KopfState, MemoryDiffBaseStorage, MemoryProgressStorage
from voicefleet_operator.settings import DEFAULT_PEERING, parse_args
from voicefleet_operator.wiring import (
    ANNOTATION_PREFIX,
    WATCH_SERVER_TIMEOUT,
    build_registry,
    build_settings,
)


def test_settings_keep_kopf_state_in_memory_and_post_only_explicit_events() -> None:
    state = KopfState()
    settings = build_settings(parse_args(["-A"]), state)
    progress = settings.persistence.progress_storage
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(progress, MemoryProgressStorage)
    assert progress.state is state
    assert progress.prefix == ANNOTATION_PREFIX  # a delayed retry's touch annotation
    assert isinstance(diffbase, MemoryDiffBaseStorage)
    assert diffbase.state is state
    assert settings.posting.enabled
    assert not settings.posting.loggers
    assert settings.posting.level == logging.INFO
    assert settings.watching.server_timeout == WATCH_SERVER_TIMEOUT
    assert settings.watching.client_timeout is not None
    assert settings.watching.client_timeout > WATCH_SERVER_TIMEOUT


@pytest.mark.parametrize(
    ("argv", "name", "mandatory", "standalone"),
    [
        (["-A"], DEFAULT_PEERING, False, False),
        (["-A", "--peering=prod"], "prod", True, False),
        (["-A", "--standalone"], DEFAULT_PEERING, False, True),
    ],
)
def test_peering_follows_the_flags(
    argv: list[str], name: str, mandatory: bool, standalone: bool
) -> None:
    settings = build_settings(parse_args([*argv, "--priority=42", "--workers=7"]))
    assert settings.peering.name == name
    assert settings.peering.mandatory is mandatory
    assert settings.peering.standalone is standalone
    assert settings.peering.priority == 42
    assert settings.execution.max_workers == 7


def test_each_registry_is_fresh_and_the_default_one_stays_empty() -> None:
    first, second = build_registry(), build_registry()
    assert first is not second
    assert first is not kopf.get_default_registry()


def test_theowner_voice_is_read_from_the_controller_reference() -> None:
    deployment = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"},
                {"apiVersion": "voicefleet.io/v1alpha1", "kind": "TTSVoice", "name": "joe"},
            ]
        }
    }
    assert owner_voice(deployment) == "joe"
    assert owner_voice({"metadata": {}}) is None
    stranger = {"metadata": {"ownerReferences": [{"apiVersion": "x.io/v1", "kind": "TTSVoice"}]}}
    assert owner_voice(stranger) is None


def test_metrics_live_in_their_own_registry_under_the_names_in_metrics_py() -> None:
    a, b = metrics.OperatorMetrics.create(), metrics.OperatorMetrics.create()
    a.reconciles.labels(trigger="create").inc()
    a.reconcile_errors.labels(reason="problem").inc()
    a.reconcile_duration.labels(trigger="create").observe(0.02)
    a.status_writes.inc()
    text = generate_latest(a.registry).decode()
    assert f'{metrics.RECONCILES}{{trigger="create"}} 1.0' in text
    assert f'{metrics.RECONCILE_ERRORS}{{reason="problem"}} 1.0' in text
    assert f'{metrics.RECONCILE_DURATION}_count{{trigger="create"}} 1.0' in text
    assert f"{metrics.STATUS_WRITES} 1.0" in text
    assert f'{metrics.RECONCILES}{{trigger="create"}}' not in generate_latest(b.registry).decode()


def test_every_index_runs_in_kopfs_event_loop_and_indexes_as_its_pure_function() -> None:
    """kopf sends a plain ``def`` to its thread pool, where reconciles block on the API
    server; the index functions are registered as coroutines so an index update never
    waits for a thread (kopf's own check decides, so this is what kopf will do)."""
    from kopf._core.actions.invocation import is_async_fn

    from voicefleet_operator.indexes import index_deployment

    registry = build_registry(
        parse_args(
            ["-A", "--router-pod-selector=app=router", "--router-namespace=voicefleet-system"]
        )
    )
    found = {h.id: h.fn for h in registry._indexing.get_all_handlers()}  # no public listing
    assert set(found) >= {"voices_by_name", "deployments_by_voice", "claims_by_name"}
    assert all(is_async_fn(fn) for fn in found.values()), found
    deployment = {
        "metadata": {
            "name": "joe",
            "namespace": "tts",
            "generation": 2,
            "ownerReferences": [
                {"apiVersion": "voicefleet.io/v1alpha1", "kind": "TTSVoice", "name": "joe"}
            ],
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 1},
    }
    indexed = asyncio.run(found["deployments_by_voice"](body=deployment, logger=None))
    assert indexed == index_deployment(deployment) != {}
