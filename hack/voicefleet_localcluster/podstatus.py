"""Pure construction of a Pod's `status` from what the process kubelet observed.

The kubelet writes status only when this function's output changes, so it must
be deterministic: condition transition times are carried over from the
previous status unless the condition's value actually flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

JsonDict = dict[str, Any]
State = Literal["waiting", "running", "terminated"]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server stores it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str
    started_at: datetime | None
    finished_at: datetime
    message: str = ""

    def to_dict(self, container_id: str) -> JsonDict:
        out: JsonDict = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "finishedAt": timestamp(self.finished_at),
            "containerID": container_id,
        }
        if self.started_at is not None:
            out["startedAt"] = timestamp(self.started_at)
        if self.message:
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class ContainerView:
    """A snapshot of one container as the runtime sees it."""

    name: str
    image: str
    state: State
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    pid: int | None = None
    started_at: datetime | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    termination: Termination | None = None
    last_termination: Termination | None = None

    def container_id(self) -> str:
        return f"process://{self.pid}" if self.pid else ""

    def to_status(self) -> JsonDict:
        state: JsonDict
        if self.state == "running":
            state = {"running": {"startedAt": timestamp(self.started_at or datetime.now(UTC))}}
        elif self.state == "terminated" and self.termination is not None:
            state = {"terminated": self.termination.to_dict(self.container_id())}
        else:
            waiting: JsonDict = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: JsonDict = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {},
        }
        if self.last_termination is not None:
            status["lastState"] = {"terminated": self.last_termination.to_dict("")}
        if self.pid:
            status["containerID"] = self.container_id()
        return status


def pod_phase(containers: Sequence[ContainerView], restart_policy: str) -> str:
    """Pending → Running → Succeeded/Failed, following the kubelet's rules."""
    if any(c.state == "running" for c in containers):
        return "Running"
    if containers and all(c.state == "terminated" for c in containers):
        failed = any(c.termination is not None and c.termination.exit_code != 0 for c in containers)
        if restart_policy == "Always" or (restart_policy == "OnFailure" and failed):
            return "Running"  # about to be restarted
        return "Failed" if failed else "Succeeded"
    never_ran = [c for c in containers if c.termination is None and c.last_termination is None]
    if not containers or len(never_ran) == len(containers):
        return "Pending"
    return "Running"  # some container waits in back-off to be restarted


def _condition(
    kind: str, value: bool, previous: Sequence[JsonDict], now: datetime, reason: str = ""
) -> JsonDict:
    status = "True" if value else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else timestamp(now)
    )
    condition: JsonDict = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason and not value:
        condition["reason"] = reason
    return condition


def build_pod_status(
    *,
    containers: Sequence[ContainerView],
    restart_policy: str,
    pod_ip: str,
    host_ip: str,
    start_time: datetime,
    previous_conditions: Sequence[JsonDict],
    now: datetime,
) -> JsonDict:
    """The full `status` object to write for a pod."""
    phase = pod_phase(containers, restart_policy)
    all_ready = bool(containers) and all(c.ready for c in containers)
    not_ready = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", True, previous_conditions, now),
        _condition("Initialized", True, previous_conditions, now),
        _condition("Ready", all_ready, previous_conditions, now, not_ready),
        _condition("ContainersReady", all_ready, previous_conditions, now, not_ready),
        _condition("PodScheduled", True, previous_conditions, now),
    ]
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(start_time),
        "containerStatuses": [c.to_status() for c in containers],
    }
