"""The seam between the handlers and the outside world: the calls they make, as Protocols.

Handlers write four things to the API server (server-side apply of an owned object,
the deletion of a PodDisruptionBudget no longer wanted, of a NetworkPolicy left from when
policies were on, the voice's status) and post Events through kopf; the one read is that
policy's, when policies are off, and whether it is ours is the handlers' decision (the
voice, its Deployment and the PVCs come from kopf's indexes,
:mod:`voicefleet_operator.indexes`). Naming exactly those calls
here lets the handler logic run against an in-memory fake in unit tests
(``tests/unit/fake_kube.py``) and keeps the real client in :mod:`voicefleet_operator.k8s`
(its ``Kube`` class satisfies :class:`Kube`). Implementations raise
:class:`voicefleet_operator.k8s.KubeError` with the API server's status and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["EventPoster", "Kube"]


class Kube(Protocol):
    """The API server as the handlers use it (writes only)."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply a Deployment, Service, PodDisruptionBudget or NetworkPolicy;
        return it as stored."""
        ...

    def delete_pdb(self, namespace: str, name: str) -> bool:
        """Delete a PodDisruptionBudget; False when it was already gone."""
        ...

    def network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The NetworkPolicy ``name`` as stored; None when there is none."""
        ...

    def delete_network_policy(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the NetworkPolicy ``name`` only while it is still the object ``uid`` (a
        precondition); False when it was already gone."""
        ...

    def patch_voice_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a TTSVoice's status (a deleted voice is not an error)."""
        ...


class EventPoster(Protocol):
    """Posts a Kubernetes Event about an object (kopf.event in the operator)."""

    def __call__(
        self, body: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None: ...
