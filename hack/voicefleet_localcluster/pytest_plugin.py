"""pytest fixtures for the local cluster; tests/conftest.py imports them.

- `local_cluster` (session): a running control plane + process kubelet, built and
  started on first request, stopped at session end. Tests that never request it
  never start (or build) anything.
- `cluster_namespace` (function): a fresh namespace, deleted after the test.

Building on a fresh machine takes minutes. pytest-timeout counts fixture setup
against the first test that requests the fixture, so the build runs during
collection instead, and only when some selected test needs the cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from voicefleet_localcluster import binaries
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster

FIXTURE = "local_cluster"


def _echo(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture so a long build shows progress."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)
    else:
        print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark cluster tests, and build the binaries now if any selected test needs them."""
    needs_cluster = False
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            needs_cluster = True
    if needs_cluster and not config.option.collectonly:
        binaries.ensure_binaries(log=lambda line: _echo(config, line))


@pytest.fixture(scope="session")
def local_cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """A real local cluster for the whole session (see `LocalCluster` for helpers)."""
    gpus = int(os.environ.get("VOICEFLEET_KUBELET_GPUS", "4"))
    cluster = start_local_cluster(gpus=gpus, log=lambda line: _echo(pytestconfig, line))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    with local_cluster.namespace(request.node.name) as name:
        yield name
