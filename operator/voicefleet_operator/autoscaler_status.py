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
from voicefleet_operator.scaling import (
    Decision,
    Observation,
    Policy,
    ScalingState,
    ServiceMeasure,
)
from voicefleet_operator.spec import SpecError, parse_voice

__all__ = [
    "VOICE_INDEX_NAME",
    "VoiceKey",
    "VoiceView",
    "first_audio_status",
    "index_voice",
    "parse_time",
    "quiet_at_zero",
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
            first_audio_target=a.target.time_to_first_audio_seconds if a.target else None,
            first_audio_percentile=a.target.percentile / 100 if a.target else 0.99,
            # the pod's workers, as the Deployment builder sets them (one per GPU at least)
            servers_per_pod=max(voice.spec.server.workers, voice.spec.resources.gpus),
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


FIRST_AUDIO_FIELDS: Final = (
    "targetSeconds",
    "percentile",
    "arrivalRate",
    "meanServiceSeconds",
    "serviceVariability",
    "startToFirstAudioSeconds",
    "servedRequests",
    "modelReplicas",
    "predictedWithinTarget",
    "observedWithinTarget",
    "observedSeconds",
)
"""Every field of ``status.autoscaling.firstAudio``, each written (null when unknown) so a
merge patch never leaves an old value behind."""


def _percent(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 2)


def first_audio_status(
    decision: Decision, service: ServiceMeasure | None, policy: Policy
) -> dict[str, Any] | None:
    """``status.autoscaling.firstAudio``: the model's inputs, prediction and the observed
    first audio; None for a voice without a target (a merge patch then removes it)."""
    if policy.first_audio_target is None:
        return None
    out: dict[str, Any] = dict.fromkeys(FIRST_AUDIO_FIELDS)  # null: removed (merge patch)
    out |= {
        "targetSeconds": policy.first_audio_target,
        "percentile": round(100 * policy.first_audio_percentile, 2),
    }
    if service is not None:
        out |= {
            "arrivalRate": round(service.arrival_rate, 3),
            "meanServiceSeconds": round(service.mean_service, 3),
            "serviceVariability": round(service.scv, 3),
            "startToFirstAudioSeconds": round(service.start_to_first_audio, 3),
            "servedRequests": service.served,
            "observedWithinTarget": _percent(service.observed_within),
            "observedSeconds": (
                None if service.observed_seconds is None else round(service.observed_seconds, 3)
            ),
        }
    if decision.model_replicas is not None:
        out["modelReplicas"] = decision.model_replicas
    if decision.predicted_within is not None:
        out["predictedWithinTarget"] = _percent(decision.predicted_within)
    return out


def status_patch(
    decision: Decision, obs: Observation, scaled: bool, policy: Policy | None = None
) -> dict[str, Any]:
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
            "policy": decision.policy_name,
            "firstAudio": (
                first_audio_status(decision, obs.service, policy) if policy is not None else None
            ),
        },
    }
    if scaled:
        patch["lastScaleTime"] = rfc3339(obs.now)
        patch["autoscaling"]["lastScaleReason"] = decision.reason
        patch["autoscaling"]["lastScaleMessage"] = decision.message[:1024]
    return patch


def quiet_at_zero(patch: Mapping[str, Any], replicas: int) -> bool:
    """Whether a report (from :func:`status_patch`) says only that a voice at zero replicas
    has nothing going on: no pod, no queue, no request held, none wanted, no scale.

    The loop does not write such a report on a voice that has no ``status.autoscaling``
    yet, so a voice created at zero and never asked for costs no autoscaler write (in a
    catalogue applied at once, one status write less per voice); the report comes with
    the first thing to say. Its ``idleSince`` would be of no use: a voice at zero has
    nothing to scale down.
    """
    auto = patch.get("autoscaling") or {}
    counts = ("desiredReplicas", "neededReplicas", "pendingRequests", "readyPods", "startingPods")
    return (
        replicas == 0
        and "lastScaleTime" not in patch
        and not patch.get("queueWorkSeconds")
        and not patch.get("queueDepth")
        and not any(auto.get(key) for key in (*counts, "scrapedPods"))
    )


def status_differs(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether ``patch`` (from :func:`status_patch`) says anything ``status`` does not,
    ignoring when it was observed."""
    for key, value in patch.items():
        if key == "autoscaling":
            current = status.get("autoscaling") or {}
            if any(
                _stored(current.get(k)) != _stored(v)
                for k, v in value.items()
                if k != "observedTime"
            ):
                return True
        elif status.get(key) != value:
            return True
    return False


def _stored(value: Any) -> Any:
    """``value`` as a merge patch leaves it stored: nulls inside an object are removed."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    return value
