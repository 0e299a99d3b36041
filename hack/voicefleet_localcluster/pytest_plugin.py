"""pytest fixtures for the local cluster; tests/conftest.py imports them.

- `local_cluster` (session): a running control plane and the real node (kubelet +
  containerd + runc, kube-proxy, CoreDNS, kube-router's firewall) with the project's
  images loaded; built and started on first request, stopped at session end. Tests that
  never request it never start (or build) anything. One real node can run per host, so
  the session shares one; `real_cluster` is the same cluster, by the name the tests of
  the node itself use. When every selected test that uses it is marked `nodeless` (it
  needs the API server and controllers only), the session's cluster is the control plane
  alone: `make test` runs those tests beside the real node's, in its other stream.
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

from voicefleet_localcluster import binaries, imagebuild, prepare
from voicefleet_localcluster.testing import LocalCluster, start_local_cluster

FIXTURES = ("local_cluster", "real_cluster")
NODE_PARTS_READY = "VOICEFLEET_NODE_PARTS_READY"
NODELESS = pytest.StashKey[bool]()
"""Set at collection: no selected test needs the real node, so the session's cluster is
the control plane alone."""
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


def _uses_cluster(item: pytest.Item) -> bool:
    return any(f in getattr(item, "fixturenames", ()) for f in FIXTURES)


def _is_nodeless(item: pytest.Item) -> bool:
    return item.get_closest_marker("nodeless") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use a cluster fixture `cluster` (so `-m` can select them), except
    those marked `nodeless`: they need the control plane only, so `make test` runs them in
    its other stream, on a control plane of its own with no node (`real_node=False`, which
    may run beside the host's one real node), off the serial cluster stream."""
    for item in items:
        if not _uses_cluster(item):
            continue
        if not _is_nodeless(item):
            item.add_marker(pytest.mark.cluster)
        elif "real_cluster" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is marked nodeless but asks for the node")


def _needs_cluster(item: pytest.Item) -> bool:
    """Uses the session's cluster, or starts a node of its own (marked `own_node`)."""
    return _uses_cluster(item) or item.get_closest_marker("own_node") is not None


def _needs_node(items: list[pytest.Item]) -> bool:
    """Whether the session's cluster needs the real node: some selected test that uses it
    is not marked `nodeless`, or a test starts a node of its own."""
    return any(
        (_uses_cluster(item) and not _is_nodeless(item))
        or item.get_closest_marker("own_node") is not None
        for item in items
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries and the images if a *selected* test needs them: after `-m`/`-k`
    deselection, so a run without cluster tests builds nothing. `make test` has built and
    loaded them just before (`voicefleet-cluster build --node`) and says so in
    VOICEFLEET_NODE_PARTS_READY=1: then the check is not repeated."""
    config = session.config
    config.stash[NODELESS] = not _needs_node(session.items)
    if config.option.collectonly:
        return
    if not any(_needs_cluster(item) for item in session.items):
        return
    log = imagebuild.serialized(lambda line: _echo(config, line))
    if config.stash[NODELESS]:  # the control plane only: no images, no kube-router
        binaries.ensure_binaries(log=log)
        return
    if os.environ.get(NODE_PARTS_READY) == "1":
        return
    # Pods on the real node are containers of our images: built (cached by recipe and
    # layers) beside the Go builds and loaded once built, as `make images` does, so no
    # test waits on it. `make test` has built all of it before pytest starts.
    try:
        built = prepare.build_node_parts(log)
    except imagebuild.ImageBuildError as exc:
        # An image failure fails the real-node tests (their fixture raises it), not the
        # session.
        config.stash[IMAGE_ERROR] = str(exc)
        log(f"images not ready: {exc}")
        return
    try:
        imagebuild.load_built(built, log)
    except imagebuild.ImageBuildError as exc:
        config.stash[IMAGE_ERROR] = str(exc)
        log(f"images not ready: {exc}")


@pytest.fixture(scope="session")
def local_cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """The session's cluster on the real node (see `LocalCluster` for helpers); the
    control plane alone when every selected test that uses it is marked `nodeless`."""
    if IMAGE_ERROR in pytestconfig.stash:
        pytest.fail(f"the images for the real node: {pytestconfig.stash[IMAGE_ERROR]}")
    gpus = int(os.environ.get("VOICEFLEET_KUBELET_GPUS", "4"))
    cluster = start_local_cluster(
        gpus=gpus,
        log=lambda line: _echo(pytestconfig, line),
        real_node=not pytestconfig.stash.get(NODELESS, False),
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def real_cluster(local_cluster: LocalCluster) -> LocalCluster:
    """`local_cluster`, named for the tests of what the real node itself enforces."""
    return local_cluster


@pytest.fixture
def cluster_namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    with local_cluster.namespace(request.node.name) as name:
        yield name
