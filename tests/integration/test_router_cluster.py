"""The router on the real local control plane: voices the operator created, by name.

The operator runs as in ``test_operator.py`` (same conftest fixtures: its own ServiceAccount, real
kube-apiserver, the real node). The router runs in the test's event loop, built as
``voicefleet-router`` builds it, and discovers everything by watching TTSVoices and pods
with the admin kubeconfig. The voice uses the ``simulated`` engine: this test is about
following replicas as they come and go under load, and three real CPU pods would only
fight over the machine's two cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from operatorprocs import Operator, voice_manifest
from routerprocs import running_router

from voicefleet_inference.router.fleet import VoiceKey
from voicefleet_inference.router.service import RouterService
from voicefleet_inference.router.settings import RouterSettings
from voicefleet_localcluster.testing import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

SHORT = "The quick brown fox jumps over the lazy dog near the river bank."


def simulated_voice(name: str, replicas: int) -> dict[str, Any]:
    return voice_manifest(
        name,
        replicas=replicas,
        engine="simulated",
        env=[{"name": "SIMULATED_ENGINE_SPEED_FACTOR", "value": "4"}],
        resources={"cpu": "100m", "memory": "256Mi"},
        autoscaling={"minReplicas": 0, "maxReplicas": 3, "coldStartTimeoutSeconds": 60},
    )


async def until(predicate: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def ready_pods(service: RouterService, key: VoiceKey) -> set[str]:
    return {p.info.key for p in service.fleet.ready_pods(key)}


async def test_router_serves_an_operator_voice_by_name_through_scale_up_and_down(
    local_cluster: LocalCluster,
    cluster_namespace: str,
    operator: Operator,
) -> None:
    from kubernetes import config

    ns = cluster_namespace
    key = VoiceKey(ns, "joe")
    local_cluster.apply(simulated_voice("joe", 1), namespace=ns)
    api = config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    settings = RouterSettings(namespace=ns, poll_interval_s=0.1)
    results: list[tuple[int, str, float]] = []
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient, url: str) -> None:
        while not stop.is_set():
            body = {"model": "joe", "input": SHORT, "voice": "default", "response_format": "wav"}
            response = await client.post(url + "/v1/audio/speech", json=body)
            results.append(
                (
                    response.status_code,
                    response.headers.get("x-voicefleet-pod", ""),
                    time.monotonic(),
                )
            )
            if response.status_code != 200:
                results[-1] = (response.status_code, response.text, time.monotonic())

    async with (
        running_router(settings, api_client=api) as (service, url),
        httpx.AsyncClient(timeout=60) as client,
    ):
        await until(lambda: service.fleet.synced, 30, "the router's first list")
        await until(lambda: len(ready_pods(service, key)) == 1, 90, "one ready pod")
        models = (await client.get(url + "/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [f"{ns}/joe"]
        assert models["data"][0]["voicefleet"]["model"] == "en_US-joe-medium"
        assert models["data"][0]["voicefleet"]["cold_start_timeout_seconds"] == 60

        workers = [asyncio.create_task(load(client, url)) for _ in range(3)]
        try:
            await asyncio.sleep(1.0)
            local_cluster.kubectl_run("scale", "ttsv", "joe", "--replicas=3", "-n", ns)
            await until(lambda: len(ready_pods(service, key)) == 3, 120, "three ready pods")
            scaled_up = time.monotonic()
            await asyncio.sleep(2.0)
            local_cluster.kubectl_run("scale", "ttsv", "joe", "--replicas=1", "-n", ns)
            await until(lambda: len(ready_pods(service, key)) == 1, 60, "back to one pod")
            scaled_down = time.monotonic()
            await until(
                lambda: sum(1 for p in service.fleet.pods.values() if p.info.voice == key) == 1,
                60,
                "the removed pods gone from the watch",
            )
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        survivor = next(iter(ready_pods(service, key)))

    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    with_three = Counter(pod for _, pod, at in results if scaled_up + 0.5 <= at <= scaled_up + 2.0)
    assert len(with_three) == 3, with_three  # the router used every new replica
    after = {pod for _, pod, at in results if at > scaled_down + 0.5}
    assert after == {survivor}, after
    assert len(results) > 30
