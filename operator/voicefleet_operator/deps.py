"""Everything the handlers need, built once by the CLI and carried in ``kopf.Memo``.

Handlers get their collaborators from here (never from module globals), so a unit
test builds a :class:`Deps` around an in-memory ``Kube`` and an Event recorder and
calls a handler directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from voicefleet_operator.autoscaler import Autoscaler, build_autoscaler
from voicefleet_operator.autoscaler_peering import new_identity
from voicefleet_operator.builders import BuildOptions
from voicefleet_operator.cluster import EventPoster, Kube
from voicefleet_operator.k8s import Kube as ClientKube
from voicefleet_operator.k8s import connection_info
from voicefleet_operator.kopfstate import KopfState
from voicefleet_operator.memory import VoiceMemory
from voicefleet_operator.metrics import OperatorMetrics
from voicefleet_operator.settings import OperatorConfig

__all__ = ["Deps", "kopf_body", "post_kopf_event"]


def kopf_body(raw: Mapping[str, Any]) -> kopf.Body:
    """kopf's typed view of a plain dict (for kopf.event / kopf.adopt)."""
    return kopf.Body(cast(kopf.RawBody, dict(raw)))


def post_kopf_event(body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    """An Event through kopf's poster (batched on its own client, off the handler thread)."""
    kopf.event(kopf_body(body), type=type, reason=reason, message=message)


@dataclass
class Deps:
    """The handlers' collaborators (see the module docstring)."""

    config: OperatorConfig
    kube: Kube
    metrics: OperatorMetrics
    options: BuildOptions
    post_event: EventPoster = post_kopf_event
    memory: VoiceMemory = field(default_factory=VoiceMemory)
    kopf_state: KopfState = field(default_factory=KopfState)
    """kopf's per-voice bookkeeping, kept here instead of on the voices (:mod:`.kopfstate`)."""
    autoscaler: Autoscaler | None = None
    identity: str = field(default_factory=new_identity)
    """The peering identity: kopf heartbeats under it and the autoscaler's pause reads it."""
    connection: Callable[[], kopf.ConnectionInfo] | None = None
    """kopf's credentials (the login activity); None in tests that never start kopf."""
    ensure_peering: Callable[[str, str | None], bool] | None = None
    """Create kopf's peering object (name, namespace or None for cluster-wide)."""

    @classmethod
    def create(cls, *, config: OperatorConfig, kube: ClientKube, metrics: OperatorMetrics) -> Deps:
        """The operator's real dependencies around one API client."""
        identity = new_identity()
        return cls(
            config=config,
            kube=kube,
            metrics=metrics,
            options=BuildOptions(
                default_image=config.default_image,
                default_gpu_image=config.gpu_image,
                model_cache_dir=config.model_cache_dir,
                network_policy_from=config.network_policy_peers,
                pod_token_key=(
                    config.pod_token_key.get_secret_value() if config.pod_token_key else None
                ),
            ),
            identity=identity,
            autoscaler=build_autoscaler(config, kube, identity),
            connection=lambda: connection_info(kube.api),
            ensure_peering=kube.ensure_peering,
        )
