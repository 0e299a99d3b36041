"""Shared fixtures. The local-cluster fixtures live in voicefleet_localcluster.pytest_plugin;
they start nothing unless a test requests `local_cluster` or `cluster_namespace`.

`make test` (hack/run-tests.sh) runs the tests marked `cluster` (set at collection: those
using a cluster fixture, and every end-to-end test, since each runs the chart or `make up`
on this host's one node) in one process, one at a time, and the server, router and unit
tests in a second process beside it, with the tests marked `nodeless` (the control plane
alone, started by that process).

Every ``voicefleet-server`` a run starts (and every engine a fixture loads through
``calibration_cache``) keeps its load-time cost calibration in one directory for the run
(``VOICEFLEET_CALIBRATION_CACHE``): the first start of a voice calibrates, later starts of
the same voice warm up once and reuse the fit. Tests that check calibration itself load
their engine without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicefleet_api.env import CALIBRATION_CACHE
from voicefleet_localcluster import binaries, pytest_plugin
from voicefleet_localcluster.pytest_plugin import (  # noqa: F401  (fixtures, by name)
    cluster_namespace,
    local_cluster,
    real_cluster,
)

SEAWEEDFS_BESIDE = "VOICEFLEET_SEAWEEDFS_BESIDE"
"""Set to 1 by `make test`: `weed` and promtool build in the background beside the run."""
BUILT_BESIDE = {"seaweedfs": binaries.ensure_seaweedfs, "promtool": binaries.ensure_promtool}
"""Marker -> the build its tests wait for when it runs beside the run."""
_OWN_CALIBRATION_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One calibration cache for the run, unless the caller named one. Set before xdist
    starts its workers, so they (and the servers they start) inherit it."""
    if os.environ.get(CALIBRATION_CACHE):
        return
    path = tempfile.mkdtemp(prefix="voicefleet-calibration-")
    os.environ[CALIBRATION_CACHE] = path
    config.stash[_OWN_CALIBRATION_CACHE] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_OWN_CALIBRATION_CACHE, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(CALIBRATION_CACHE, None)


@pytest.fixture(scope="session")
def calibration_cache() -> Path:
    """The run's calibration cache, for fixtures that load an engine in the test process."""
    return Path(os.environ[CALIBRATION_CACHE])


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark cluster tests (the plugin's hook: those using the session's cluster), and with
    them the tests that start a node of their own (`make up`, the CLI): `make test` runs
    them all in its cluster stream, one at a time (hack/run-tests.sh). The e2e tests that
    only render the chart or check its alert rules need no cluster and run beside them."""
    pytest_plugin.pytest_collection_modifyitems(config, items)
    for item in items:
        if item.get_closest_marker("own_node") is not None:
            item.add_marker(pytest.mark.cluster)
    # The one ordering of the session, in this one place (a second sort in another conftest
    # reordered own_node tests behind the session's cluster once). Stable: otherwise
    # collection order.
    # - Tests that start a node of their own (`make up`, the CLI) run before any test
    #   starts the session's cluster: one real node can run per host.
    # - Then tests marked `slow`: `make test-fast` hands whole files to its workers in this
    #   order (`--dist loadfile --no-loadscope-reorder`), and a long module handed out last
    #   keeps the run waiting while the other worker idles.
    # - Tests of a Go tool built beside the run (SeaweedFS, promtool) last: in `make test`
    #   they build in the background (minutes on a fresh machine) while both streams run
    #   everything else.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("own_node") is None,
            any(item.get_closest_marker(marker) for marker in BUILT_BESIDE),
            item.get_closest_marker("slow") is None,
        )
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build what the selected cluster tests need (the plugin's hook), and SeaweedFS for
    the tests marked `seaweedfs` (minutes cold, cached after): before the first test, so
    no test's timeout runs while it builds.

    `make test` builds `weed` in the background beside both streams and says so with
    VOICEFLEET_SEAWEEDFS_BESIDE=1: then the SeaweedFS tests (sorted last) wait for that
    build just before they start (`pytest_runtest_protocol` below)."""
    pytest_plugin.pytest_collection_finish(session)
    config = session.config
    if config.option.collectonly or os.environ.get(SEAWEEDFS_BESIDE) == "1":
        return
    if any(item.get_closest_marker("seaweedfs") for item in session.items):
        binaries.ensure_seaweedfs(log=lambda line: pytest_plugin._echo(config, line))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Before a test of a tool that builds beside the run (`make test`: `weed`, promtool),
    wait for that build (its lock), or build it: outside pytest-timeout's wrapper, whose
    clock is for the test, not for minutes of compiling on a fresh machine."""
    if os.environ.get(SEAWEEDFS_BESIDE) == "1":
        for marker, ensure in BUILT_BESIDE.items():
            if item.get_closest_marker(marker):
                ensure(lambda line: pytest_plugin._echo(item.config, line))
    yield
