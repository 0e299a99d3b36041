"""The router's identity on a real kube-apiserver: what its RBAC allows, which pods it sees.

The router's ServiceAccount and RBAC are the chart's (``helm template --show-only``, as
``LocalCluster.operator_rbac`` does for the operator), under their own release name. The
router runs in-process (``routerprocs.running_router``) with a bound token of that
ServiceAccount, discovering voices and pods by its own watch. A pod that merely carries
``voicefleet.io/voice`` (anyone may label a pod so) must not join the voice's pods, or it
would receive the voice's traffic; only the operator's pods (``managed-by`` too) do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from routerprocs import running_router

from voicefleet_api.labels import object_labels
from voicefleet_inference.router.settings import RouterSettings
from voicefleet_localcluster.testing import OPERATOR_CHART, LocalCluster

pytestmark = [pytest.mark.nodeless, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
RELEASE = "rtpriv"
ROUTER_SA = f"{RELEASE}-voicefleet-router"


@pytest.fixture(scope="module")
def router_identity(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """(release namespace, voice namespace, the router's kubeconfig)."""
    cluster = local_cluster
    cluster.install_crds()
    release_ns = cluster.create_namespace("rtpriv-release")
    voice_ns = cluster.create_namespace("rtpriv-voices")
    args = ["template", RELEASE, str(OPERATOR_CHART), "--namespace", release_ns]
    args += ["--set", "rbac.scope=namespaces", "--set", f"rbac.watchNamespaces={{{voice_ns}}}"]
    for template in ("templates/router/serviceaccount.yaml", "templates/router/rbac.yaml"):
        args += ["--show-only", template]
    rendered = cluster.helm_run(*args).stdout
    cluster.apply(rendered)
    path = tmp_path_factory.mktemp("router") / "sa.kubeconfig"
    kubeconfig = cluster.service_account_kubeconfig(release_ns, ROUTER_SA, path)
    try:
        yield release_ns, voice_ns, kubeconfig
    finally:
        cluster.kubectl_run("delete", "--ignore-not-found", "-f", "-", input=rendered, check=False)
        cluster.delete_namespace(voice_ns)
        cluster.delete_namespace(release_ns)


def can_i(cluster: LocalCluster, kubeconfig: Path, *args: str) -> bool:
    proc = cluster.kubectl_run(f"--kubeconfig={kubeconfig}", "auth", "can-i", *args, check=False)
    return proc.stdout.strip() == "yes"


def test_the_routers_rbac_reads_voices_and_pods_of_its_namespaces_only(
    local_cluster: LocalCluster, router_identity: tuple[str, str, Path]
) -> None:
    release_ns, voice_ns, kubeconfig = router_identity
    allowed = {
        what: can_i(local_cluster, kubeconfig, *what.split(), "-n", voice_ns)
        for what in (
            "list pods",
            "watch ttsvoices.voicefleet.io",
            "get secrets",
            "list secrets",
            "create pods",
            "patch ttsvoices.voicefleet.io",
            "get configmaps",
        )
    }
    assert allowed == {
        "list pods": True,
        "watch ttsvoices.voicefleet.io": True,
        "get secrets": False,
        "list secrets": False,
        "create pods": False,
        "patch ttsvoices.voicefleet.io": False,
        "get configmaps": False,
    }
    # namespaced mode: nothing outside the watched namespaces, kube-system included
    assert not can_i(local_cluster, kubeconfig, "list", "pods", "-n", "kube-system")
    assert not can_i(local_cluster, kubeconfig, "list", "pods", "--all-namespaces")
    assert not can_i(local_cluster, kubeconfig, "get", "secrets", "-n", release_ns)


def pod(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pod on a node that does not exist: stored, never run."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": "nowhere",
            "containers": [
                {
                    "name": "c",
                    "image": "registry.invalid/app:1",
                    "env": [{"name": "NOT_FOR_THE_ROUTER", "value": "a value in the spec"}],
                }
            ],
        },
    }


async def test_the_router_watches_only_the_operators_voice_pods(
    local_cluster: LocalCluster, router_identity: tuple[str, str, Path]
) -> None:
    _, voice_ns, kubeconfig = router_identity
    from kubernetes import config

    sample = yaml.safe_load((REPO / "crds" / "samples" / "en-us-joe.yaml").read_text())
    local_cluster.apply(sample, namespace=voice_ns)
    local_cluster.apply(
        [
            pod(voice_ns, "operators-pod", object_labels("en-us-joe")),
            pod(voice_ns, "lookalike", {"voicefleet.io/voice": "en-us-joe"}),
            pod(voice_ns, "unrelated", {"app": "other"}),
        ]
    )
    api = config.new_client_from_config(config_file=str(kubeconfig))
    settings = RouterSettings(namespace=voice_ns, watch_namespaces=[voice_ns])
    async with running_router(settings, api_client=api) as (service, _):
        deadline = time.monotonic() + 30
        while service.fleet.pod(f"{voice_ns}/operators-pod") is None:
            assert time.monotonic() < deadline, "the operator's pod never reached the fleet"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the watch has delivered everything listed
        seen = {
            name
            for name in ("operators-pod", "lookalike", "unrelated")
            if service.fleet.pod(f"{voice_ns}/{name}") is not None
        }
        synced = service.fleet.synced
        error = service.discovery.last_error if service.discovery else None
    assert seen == {"operators-pod"}
    assert synced, error
