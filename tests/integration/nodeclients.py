"""Clients on the real node and under load: busybox pods run as a user would, their
terminated state, and steady HTTP load while something changes.

Shared by the modules that check what the node enforces (``test_realnode``,
``test_network_policy``): a client is a ``kubectl run`` pod of the node's own busybox
image (no registry is reachable), with the restricted securityContext every pod here
runs under; its verdict is its container's terminated state and its log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from voicefleet_localcluster import nodeimages
from voicefleet_localcluster.testing import LocalCluster, wait_for

BUSYBOX = nodeimages.BUSYBOX_IMAGE
RESTRICTED: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The restricted Pod Security profile's container settings (the image's user is 65532)."""


def terminated(cluster: LocalCluster, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    """The pod's container's terminated state, once there is one; on a timeout the
    assertion carries ``kubectl describe`` of the pod."""

    def check() -> dict[str, Any] | None:
        status = cluster.get_json("pod", name, "-n", ns)["status"]
        for container in status.get("containerStatuses") or []:
            state = container.get("state", {}).get("terminated")
            if state:
                result: dict[str, Any] = state
                return result
        return None

    try:
        return wait_for(check, timeout=timeout, interval=0.5, what=f"pod {name} to terminate")
    except AssertionError as exc:
        described = cluster.kubectl_run("describe", "pod", name, "-n", ns, check=False)
        raise AssertionError(f"{exc}\n{described.stdout[-3000:]}") from exc


def run_client(
    cluster: LocalCluster,
    ns: str,
    name: str,
    script: str,
    labels: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> tuple[bool, str]:
    """A ``kubectl run`` busybox pod running ``sh -c script``: (it exited 0, its log)."""
    overrides = json.dumps({"spec": {"containers": [{"name": "client", "image": BUSYBOX,
        "imagePullPolicy": "Never", "securityContext": RESTRICTED,
        "command": ["sh", "-c", script]}]}})  # fmt: skip
    labelled = [f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}"] if labels else []
    cluster.kubectl_run(
        "run", name, "-n", ns, f"--image={BUSYBOX}", "--restart=Never", *labelled,
        f"--overrides={overrides}",
    )  # fmt: skip
    state = terminated(cluster, ns, name, timeout)
    log = cluster.kubectl_run("logs", name, "-n", ns).stdout
    return state["exitCode"] == 0, log


def rolled_out(cluster: LocalCluster, ns: str, selector: str, old: set[str], replicas: int) -> bool:
    """``replicas`` pods match ``selector``, none of them one of the ``old`` pod names,
    and every one is ready: a rollout (or a scale) has replaced the old pods."""
    pods = cluster.pods(ns, selector)
    names = {p["metadata"]["name"] for p in pods}
    return (
        len(pods) == replicas
        and not names & old
        and len(cluster.ready_pods(ns, selector)) == replicas
    )


@contextmanager
def steady_load(
    url: str, body: Mapping[str, Any], *, clients: int = 3, timeout: float = 30
) -> Iterator[list[str]]:
    """``clients`` threads POSTing ``body`` to ``url`` until the block ends, each request
    on a new connection (as a client without keep-alive: a kept-alive connection stays
    pinned to its pod by conntrack). Yields the outcomes as they come: the status code, or
    the error's type and message; every thread has stopped when the block is left."""
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(timeout=timeout) as client:
                    outcomes.append(str(client.post(url, json=dict(body)).status_code))
            except httpx.HTTPError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=load, daemon=True) for _ in range(clients)]
    for worker in workers:
        worker.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=timeout * 2)
