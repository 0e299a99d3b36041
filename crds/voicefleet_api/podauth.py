"""The voice pods' bearer token: one derivation, shared by the operator and the router.

Optional pod-side authentication, for clusters whose network plugin does not enforce
NetworkPolicy (chart value ``voiceAuth.enabled``). One key (a Secret in the release
namespace) is known to the operator and the router only. Each voice's pods get a token of
their own, ``HMAC-SHA256(key, "<namespace>/<voice>")``: the operator writes it into the
voice's pods (``VOICEFLEET_AUTH_TOKEN``), the router computes it for the pod it sends to.
Why derived rather than the key itself: the token sits in the voice's Deployment, which
whoever may read Deployments in that namespace can read; it then opens that voice only,
which that reader could already call through the router, and never the key or another
namespace's voices. Why not a Secret per voice namespace: the operator would need to write
Secrets everywhere, and the router to read them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["SCHEME", "pod_token"]

SCHEME: Final = "Bearer"
"""``Authorization: Bearer <token>``, as the router and OpenAI clients already speak."""


def pod_token(key: str, namespace: str, voice: str) -> str:
    """The token the pods of ``namespace/voice`` require (64 hex digits)."""
    message = f"{namespace}/{voice}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
