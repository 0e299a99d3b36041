"""Shared fixtures. The local-cluster fixtures live in voicefleet_localcluster.pytest_plugin;
they start nothing unless a test requests `local_cluster` or `cluster_namespace`."""

from voicefleet_localcluster.pytest_plugin import (  # noqa: F401  (fixtures and hook, by name)
    cluster_namespace,
    local_cluster,
    pytest_collection_modifyitems,
)
