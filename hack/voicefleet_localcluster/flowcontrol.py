"""Counting one client's requests with the API server's own books.

A FlowSchema that matches every request of one ServiceAccount, and nothing else, gives
that client a flow of its own, so the real kube-apiserver's
``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`` counts exactly what
it asked for, with no proxy or client-side hook in the way; ``apiserver_request_total``
says by verb and resource what every client did meanwhile. The operator's request-count
test and the operator-scale benchmark both count this way, so they count alike.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Collection
from typing import Any, Final

from voicefleet_localcluster.testing import LocalCluster

__all__ = ["request_counts", "service_account_flow", "settled_counts"]

_DISPATCHED: Final = "apiserver_flowcontrol_dispatched_requests_total"
_REQUESTS: Final = "apiserver_request_total"
_LABEL: Final = re.compile(r'(\w+)="([^"]*)"')


def service_account_flow(name: str, namespace: str, service_account: str) -> dict[str, Any]:
    """A FlowSchema ``name`` putting every request of the ServiceAccount in one flow."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": 100,
            "priorityLevelConfiguration": {"name": "workload-high"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"namespace": namespace, "name": service_account},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def request_counts(
    cluster: LocalCluster, flow: str, kinds: Collection[str] | None = None
) -> tuple[int, Counter[str]]:
    """(requests dispatched in ``flow``, every client's requests by ``"VERB resource[/sub]"``,
    of the resources in ``kinds`` or all), from the API server's ``/metrics`` now."""
    text = cluster.kubectl_run("get", "--raw", "/metrics").stdout
    dispatched = 0
    by_verb: Counter[str] = Counter()
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in (_DISPATCHED, _REQUESTS):
            continue
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(_LABEL.findall(labels_text))
        count = int(float(value))
        if name == _DISPATCHED:
            if labels.get("flow_schema") == flow:
                dispatched += count
        elif kinds is None or labels.get("resource") in kinds:
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            by_verb[f"{labels.get('verb')} {labels.get('resource')}{sub}"] += count
    return dispatched, by_verb


def settled_counts(
    cluster: LocalCluster,
    flow: str,
    *,
    quiet: float,
    timeout: float,
    kinds: Collection[str] | None = None,
) -> tuple[int, Counter[str]]:
    """:func:`request_counts` once the flow's count has not moved for ``quiet`` seconds
    (the client is idle); raises ``AssertionError`` if it still moves after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = request_counts(cluster, flow, kinds)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = request_counts(cluster, flow, kinds)
        if now[0] != last[0]:
            since = time.monotonic()
        last = now
        if time.monotonic() - since >= quiet:
            return last
    raise AssertionError(f"flow {flow} never went quiet (still at {last[0]} requests)")
