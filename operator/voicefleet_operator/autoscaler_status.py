"""What the autoscaler reads from a TTSVoice and what it writes back into its status.

Pure: no clock, no I/O, no kopf or Kubernetes imports. The loop (``autoscaler.py``)
sees each voice as a :class:`VoiceView`, kept by a ``kopf.index`` over TTSVoices
(:func:`index_voice`), so a tick reads no voice from the API server. Status is the
autoscaler's memory across restarts and operators: ``lastScaleTime`` and
``autoscaling.idleSince`` are read back by :func:`state_from_status`, so a new operator
(a restart, or a peer taking over) keeps the scale-to-zero clock running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from voicefleet_api.crd import GROUP, KIND, VERSION
from voicefleet_operator.plain import plain_copy
from voicefleet_operator.scaling import Decision, Observation, Policy, ScalingState
from voicefleet_operator.spec import SpecError, parse_voice

__all__ = [
    "VOICE_INDEX_NAME",
    "VoiceKey",
    "VoiceView",
    "index_voice",
    "parse_time",
    "rfc3339",
    "state_from_status",
    "status_differs",
    "status_patch",
    "voice_view",
]

VOICE_INDEX_NAME: Final = "autoscaled_voices"
"""The kwarg name kopf injects the voice index under (the id of :func:`index_voice`)."""

OWNED_STATUS_FIELDS: Final = ("queueWorkSeconds", "queueDepth", "lastScaleTime", "autoscaling")
"""The status fields the autoscaler writes; the reconciler owns every other one."""

VoiceKey = tuple[str, str]
"""``(namespace, name)``."""


@dataclass(frozen=True, slots=True)
class VoiceView:
    """One TTSVoice as the autoscaler needs it, copied out of kopf's body.

    ``policy`` is None when the spec does not parse (the reconciler reports that; the
    autoscaler leaves such a voice alone). ``status`` holds only
    :data:`OWNED_STATUS_FIELDS`, as stored, so an unchanged tick can be told apart
    from one worth writing.
    """

    namespace: str
    name: str
    uid: str
    replicas: int
    policy: Policy | None
    enabled: bool
    cold_start: float
    deleting: bool
    status: Mapping[str, Any]

    @property
    def key(self) -> VoiceKey:
        return (self.namespace, self.name)

    @property
    def acts(self) -> bool:
        """Whether the loop decides for this voice at all."""
        return self.enabled and self.policy is not None and not self.deleting

    def reference(self) -> dict[str, str]:
        """The voice as an Event's ``involvedObject``."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }


def voice_view(body: Mapping[str, Any]) -> VoiceView:
    """The :class:`VoiceView` of a TTSVoice body as the API server sends it."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    status: Mapping[str, Any] = body.get("status") or {}
    policy: Policy | None = None
    enabled, cold_start = False, 0.0
    try:
        voice = parse_voice(body)
    except SpecError:
        pass
    else:
        a = voice.spec.autoscaling
        policy = Policy(
            min_replicas=a.min_replicas,
            max_replicas=max(a.min_replicas, a.max_replicas),
            target_work_seconds=a.target_work_seconds_per_replica,
            scale_down_delay=float(a.scale_down_delay_seconds),
            scale_to_zero_idle=float(a.scale_to_zero_idle_seconds),
        )
        enabled, cold_start = a.enabled, float(a.cold_start_timeout_seconds)
    return VoiceView(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        replicas=int((body.get("spec") or {}).get("replicas") or 0),
        policy=policy,
        enabled=enabled,
        cold_start=cold_start,
        deleting=bool(meta.get("deletionTimestamp")),
        status={k: plain_copy(status[k]) for k in OWNED_STATUS_FIELDS if k in status},
    )


def index_voice(body: Mapping[str, Any], **_: Any) -> dict[VoiceKey, VoiceView]:
    """kopf index handler: one :class:`VoiceView` per TTSVoice under ``(namespace, name)``."""
    view = voice_view(body)
    return {view.key: view}


def parse_time(value: object) -> float | None:
    """Unix seconds from an RFC 3339 timestamp in status (None when absent or bad)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rfc3339(ts: float) -> str:
    """Unix seconds as status writes them (whole seconds, UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_from_status(status: Mapping[str, Any]) -> ScalingState:
    """The part of the decision's memory that survives a restart, read back from status."""
    auto = status.get("autoscaling") or {}
    return ScalingState(
        last_scale_time=parse_time(status.get("lastScaleTime")),
        idle_since=parse_time(auto.get("idleSince")),
    )


def status_patch(decision: Decision, obs: Observation, scaled: bool) -> dict[str, Any]:
    """The status fields the autoscaler owns, for one decision."""
    state = decision.state
    patch: dict[str, Any] = {
        "queueWorkSeconds": round(decision.work_seconds, 3),
        "queueDepth": decision.queue_depth,
        "autoscaling": {
            "desiredReplicas": decision.desired,
            "neededReplicas": decision.need,
            "pendingRequests": obs.pending_requests,
            "scrapedPods": sum(1 for s in obs.ready if s.answered),
            "readyPods": len(obs.ready),
            "startingPods": obs.starting,
            "observedTime": rfc3339(obs.now),
            "idleSince": rfc3339(state.idle_since) if state.idle_since is not None else None,
        },
    }
    if scaled:
        patch["lastScaleTime"] = rfc3339(obs.now)
        patch["autoscaling"]["lastScaleReason"] = decision.reason
        patch["autoscaling"]["lastScaleMessage"] = decision.message[:1024]
    return patch


def status_differs(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether ``patch`` (from :func:`status_patch`) says anything ``status`` does not,
    ignoring when it was observed."""
    for key, value in patch.items():
        if key == "autoscaling":
            current = status.get("autoscaling") or {}
            if any(current.get(k) != v for k, v in value.items() if k != "observedTime"):
                return True
        elif status.get(key) != value:
            return True
    return False
