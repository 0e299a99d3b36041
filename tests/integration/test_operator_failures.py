"""A voice that cannot run says why: one test per failure class, on the real control plane.

One operator (the least-privilege ServiceAccount of test_operator) serves the module.
To keep the module short, the failures run in parallel: the module fixture applies
every broken voice at once, records what each one shows when it is Degraded (its
conditions, ``kubectl get ttsv`` with and without ``-o wide``, ``kubectl describe``,
its Events), then fixes them all at once. Each test then checks its class:
``Degraded=True`` with the expected reason and a message naming the cause within its
stated time, the reason in ``kubectl get ttsv``, a Warning Event, ``Ready`` and
``Progressing`` agreeing, and recovery (``Degraded=False`` and a ``VoiceRecovered``
Event) after the fix. The seconds from apply to Degraded and what
``kubectl get``/``describe`` print are echoed (``pytest -s``) for docs/operator.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

# The module's operator comes from conftest.py, its helpers from operatorprocs (same RBAC).
from operatorprocs import Operator, condition, degraded_with, events_for, voice, voice_manifest

from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@dataclass(frozen=True)
class Case:
    """One broken voice: what is wrong, what the user must read, how it is fixed."""

    name: str
    spec: dict[str, Any]
    reason: str
    fragments: tuple[str, ...]
    fix: list[dict[str, Any]]  # a JSON patch
    within: float  # seconds from apply to Degraded


BASE: dict[str, Any] = {
    "replicas": 1,
    "model": {"bundled": "en_US-joe-medium"},
    "resources": {"cpu": "250m", "memory": "512Mi"},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
}

CASES = {
    case.name: case
    for case in (
        Case(
            "typo-model",
            {"model": {"bundled": "en_US-nobody-medium"}},
            "ModelLoadFailed",
            ("unknown model 'en_US-nobody-medium'", "'en_US-joe-medium'", "exited with code 1"),
            [{"op": "replace", "path": "/spec/model/bundled", "value": "en_US-joe-medium"}],
            within=60,
        ),
        Case(
            "no-image",
            {"image": "ghcr.io/nobody/no-such-server:1"},
            "ImagePullBackOff",
            # The operator's framing, then containerd's own words quoting the image.
            (
                "cannot pull image 'ghcr.io/nobody/no-such-server:1'",
                'failed to pull and unpack image "ghcr.io/nobody/no-such-server:1"',
            ),
            [{"op": "remove", "path": "/spec/image"}],
            within=30,
        ),
        Case(
            "no-node",
            {"nodeSelector": {"pool": "nowhere"}},
            "Unschedulable",
            ("0/1 nodes are available", "didn't match Pod's node affinity/selector"),
            [{"op": "remove", "path": "/spec/nodeSelector"}],
            within=30,
        ),
        Case(
            "small-memory",
            {"resources": {"cpu": "250m", "memory": "40Mi"}},
            "OOMKilled",
            ("exceeding its memory limit of 40Mi", "spec.resources.memory"),
            [{"op": "replace", "path": "/spec/resources/memory", "value": "512Mi"}],
            within=60,
        ),
        Case(
            "bad-toleration",
            {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
            "DeploymentRejected",
            ("spec.template.spec.tolerations[0]", "must be empty when `operator` is 'Exists'"),
            [{"op": "replace", "path": "/spec/tolerations", "value": [{"operator": "Exists"}]}],
            within=20,
        ),
    )
}


@dataclass
class Seen:
    """What one voice showed once Degraded, before its fix."""

    seconds: float  # from apply to the Degraded transition (second precision)
    voice: dict[str, Any]
    row: str
    wide: str
    describe: str
    warnings: list[dict[str, Any]]


@dataclass
class Broken:
    namespace: str
    seen: dict[str, Seen]
    rejected_before: float
    rejected_after: float
    quiet_seconds: float


def rejected_count(op: Operator) -> float:
    text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).text
    found = re.search(r'reconcile_errors_total\{reason="rejected"\} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def observe(cluster: LocalCluster, ns: str, case: Case, applied_at: float) -> Seen:
    cond = wait_for(
        lambda: degraded_with(cluster, ns, case.name, case.reason),
        timeout=case.within,
        what=f"{case.name}: Degraded=True {case.reason}",
    )
    # The condition's own transition time against the apply: the time to Degraded,
    # whichever voice this loop looked at first.
    since = datetime.strptime(cond["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
    warnings = wait_for(
        lambda: [
            e
            for e in events_for(cluster, ns, case.name)
            if e["type"] == "Warning" and e["reason"] == case.reason
        ],
        timeout=15,
        what=f"{case.name}: a Warning {case.reason} Event",
    )
    get = ("get", "ttsv", case.name, "-n", ns)
    return Seen(
        seconds=since.replace(tzinfo=UTC).timestamp() - applied_at,
        voice=voice(cluster, ns, case.name),
        row=cluster.kubectl_run(*get).stdout,
        wide=cluster.kubectl_run(*get, "-o", "wide").stdout,
        describe=cluster.kubectl_run("describe", "ttsv", case.name, "-n", ns).stdout,
        warnings=warnings,
    )


@pytest.fixture(scope="module")
def broken(local_cluster: LocalCluster, operator: Operator) -> Iterator[Broken]:
    """Every broken voice applied in one `kubectl apply`, observed Degraded, then fixed."""
    with local_cluster.namespace("failures") as ns:
        items = [voice_manifest(case.name, **{**BASE, **case.spec}) for case in CASES.values()]
        applied_at = time.time()
        local_cluster.apply(items, namespace=ns)
        seen = {"bad-toleration": observe(local_cluster, ns, CASES["bad-toleration"], applied_at)}
        rejected_at, rejected_before = time.monotonic(), rejected_count(operator)
        for case in CASES.values():
            if case.name not in seen:
                seen[case.name] = observe(local_cluster, ns, case, applied_at)
        # The refused Deployment gets no timer retry: watch for longer than the 5 s an
        # API error would be retried after, before its spec is fixed.
        time.sleep(max(0.0, 7 - (time.monotonic() - rejected_at)))
        rejected_after = rejected_count(operator)
        quiet = time.monotonic() - rejected_at
        for case in CASES.values():
            local_cluster.kubectl_run(
                "patch", "ttsv", case.name, "-n", ns, "--type=json", "-p", json.dumps(case.fix)
            )
        yield Broken(ns, seen, rejected_before, rejected_after, quiet)


def check_failure_class(
    cluster: LocalCluster, operator: Operator, broken: Broken, case: Case
) -> None:
    ns, name = broken.namespace, case.name
    seen = broken.seen[name]
    assert seen.seconds <= case.within, f"{name}: Degraded after {seen.seconds:.0f}s"
    cond = condition(seen.voice, "Degraded")
    ready, progressing = condition(seen.voice, "Ready"), condition(seen.voice, "Progressing")
    assert cond is not None
    assert ready is not None
    assert progressing is not None
    for fragment in case.fragments:
        assert fragment in cond["message"], f"{fragment!r} not in {cond['message']!r}"
    assert ready["status"] == "False", ready
    assert case.reason in ready["reason"] + ready["message"], ready
    assert progressing["status"] == "False", progressing
    assert progressing["reason"] in ("Stalled", "Blocked"), progressing
    assert re.search(rf"^{name}\s.*\s{case.reason}\s", seen.row, re.M), seen.row
    assert case.fragments[0] in seen.wide, seen.wide  # the MESSAGE column
    assert case.fragments[0] in seen.warnings[0]["message"], seen.warnings
    assert f"Warning  {case.reason}" in seen.describe, seen.describe
    print(
        f"\n=== {name}: Degraded {case.reason} about {seen.seconds:.0f}s after apply\n"
        f"{seen.row}{seen.wide}"
        + "\n".join(line for line in seen.describe.splitlines() if case.reason in line)
    )

    # Fixed (by the fixture): Degraded clears with a Normal Event.
    wait_for(
        lambda: (condition(voice(cluster, ns, name), "Degraded") or {}).get("status") == "False",
        timeout=120,
        what=f"{name}: Degraded=False after the fix",
    )
    wait_for(
        lambda: any(e["reason"] == "VoiceRecovered" for e in events_for(cluster, ns, name)),
        timeout=15,
        what=f"{name}: a VoiceRecovered Event",
    )
    assert operator.healthy()


def test_unknown_model_reads_the_servers_last_words(
    local_cluster: LocalCluster, operator: Operator, broken: Broken
) -> None:
    check_failure_class(local_cluster, operator, broken, CASES["typo-model"])
    # Recovered for real: the fixed voice serves.
    wait_for(
        lambda: (
            (condition(voice(local_cluster, broken.namespace, "typo-model"), "Ready") or {}).get(
                "status"
            )
            == "True"
        ),
        timeout=120,
        what="typo-model Ready after the fix",
    )


def test_image_that_cannot_be_pulled(
    local_cluster: LocalCluster, operator: Operator, broken: Broken
) -> None:
    check_failure_class(local_cluster, operator, broken, CASES["no-image"])


def test_pod_that_no_node_can_run(
    local_cluster: LocalCluster, operator: Operator, broken: Broken
) -> None:
    check_failure_class(local_cluster, operator, broken, CASES["no-node"])


def test_pod_killed_for_its_memory(
    local_cluster: LocalCluster, operator: Operator, broken: Broken
) -> None:
    check_failure_class(local_cluster, operator, broken, CASES["small-memory"])


def test_deployment_refused_by_the_api_server_is_not_retried_in_a_loop(
    local_cluster: LocalCluster, operator: Operator, broken: Broken
) -> None:
    assert broken.rejected_before >= 1
    assert broken.quiet_seconds >= 6.5
    assert broken.rejected_after == broken.rejected_before, (
        f"a refused Deployment was retried on a timer within {broken.quiet_seconds:.0f}s"
    )
    check_failure_class(local_cluster, operator, broken, CASES["bad-toleration"])
    wait_for(
        lambda: local_cluster.get_json("deployment", "bad-toleration", "-n", broken.namespace),
        timeout=15,
        what="the Deployment once the spec is valid",
    )
