"""pytest fixtures for the local cluster; tests/conftest.py imports them.

- `local_cluster` (session): a running control plane + process kubelet, built and
  started on first request, stopped at session end. Tests that never request it
  never start (or build) anything.
- `cluster_namespace` (function): a fresh namespace, deleted after the test.
- `real_cluster` (module; session on the real node): a cluster on the real node
  (kubelet + containerd + runc, kube-proxy, CoreDNS) with the project's images loaded.
  One real node can run per host; when `local_cluster` itself runs on the real node
  ($VOICEFLEET_NODE=real) both are the same cluster.

Building on a fresh machine takes minutes. pytest-timeout counts fixture setup
against the first test that requests the fixture, so the build runs during
collection instead, and only when some selected test needs the cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Literal

import pytest

from voicefleet_localcluster import binaries, imagebuild
from voicefleet_localcluster.controlplane import default_node_kind
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster

FIXTURES = ("local_cluster", "real_cluster")
IMAGE_ERROR = pytest.StashKey[str]()
"""Why building or loading the images at collection failed, for the fixture to report."""


def _echo(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture so a long build shows progress."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)
    else:
        print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use a cluster fixture `cluster` (so `-m` can select them)."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in FIXTURES):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries (and the images, for the real node) if a *selected* test needs
    them: after `-m`/`-k` deselection, so a run without cluster tests builds nothing."""
    config = session.config
    if config.option.collectonly:
        return
    used = {f for item in session.items for f in FIXTURES if f in getattr(item, "fixturenames", ())}
    if not used:
        return
    binaries.ensure_binaries(log=lambda line: _echo(config, line))
    if "real_cluster" not in used and default_node_kind() != "real":
        return
    # Pods on the real node are containers of our images: build (cached by recipe and
    # layers) and load them now, as `make images` does, so no test waits on it. A failure
    # fails the real-node tests (their fixture raises it), not the session.
    try:
        imagebuild.build_all(
            "cpu", load=True, refresh_base=False, log=lambda line: _echo(config, line)
        )
    except imagebuild.ImageBuildError as exc:
        config.stash[IMAGE_ERROR] = str(exc)
        _echo(config, f"images not ready: {exc}")


def _real_node_scope(fixture_name: str, config: pytest.Config) -> Literal["session", "module"]:
    """Session-wide when every cluster test runs on the real node; else per module.

    One real node can run per host. Per module, the node is gone before the next module
    (e2e's `make up` among them) starts its own, since cluster tests run one at a time.
    """
    return "session" if default_node_kind() == "real" else "module"


@pytest.fixture(scope=_real_node_scope)
def real_cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """A cluster on the real node (kubelet + containerd + runc)."""
    if IMAGE_ERROR in pytestconfig.stash:
        pytest.fail(f"the images for the real node: {pytestconfig.stash[IMAGE_ERROR]}")
    gpus = int(os.environ.get("VOICEFLEET_KUBELET_GPUS", "4"))
    cluster = start_local_cluster(
        gpus=gpus, node="real", log=lambda line: _echo(pytestconfig, line)
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def local_cluster(
    pytestconfig: pytest.Config, request: pytest.FixtureRequest
) -> Iterator[LocalCluster]:
    """A real local cluster for the whole session (see `LocalCluster` for helpers).

    On the real node ($VOICEFLEET_NODE=real) it is `real_cluster`: one node per host.
    """
    if default_node_kind() == "real":
        shared: LocalCluster = request.getfixturevalue("real_cluster")
        yield shared
        return
    gpus = int(os.environ.get("VOICEFLEET_KUBELET_GPUS", "4"))
    cluster = start_local_cluster(
        gpus=gpus, node="process", log=lambda line: _echo(pytestconfig, line)
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    with local_cluster.namespace(request.node.name) as name:
        yield name
