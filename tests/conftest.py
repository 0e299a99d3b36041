"""Shared fixtures. The local-cluster fixtures live in voicefleet_localcluster.pytest_plugin;
they start nothing unless a test requests `local_cluster` or `cluster_namespace`.

Under pytest-xdist (`make test` runs `--dist loadgroup`), every test that needs the local
cluster (the `cluster` marker, set at collection) and every end-to-end test (each runs the
chart or `make up` on this host's one node) joins one `xdist_group`: they run in one worker,
one after another, sharing its session cluster, while the server, router and unit tests run
in the other workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from voicefleet_localcluster import pytest_plugin
from voicefleet_localcluster.pytest_plugin import (  # noqa: F401  (fixtures, by name)
    cluster_namespace,
    local_cluster,
    real_cluster,
)

E2E = Path(__file__).resolve().parent / "e2e"
CLUSTER_GROUP = "cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark cluster tests (the plugin's hook), then put them and the e2e tests in one group."""
    pytest_plugin.pytest_collection_modifyitems(config, items)
    for item in items:
        if item.get_closest_marker("cluster") is not None or item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.xdist_group(CLUSTER_GROUP))
