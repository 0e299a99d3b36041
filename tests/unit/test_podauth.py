"""The voice pods' token derivation (voicefleet_api.podauth): one function, two callers."""

from __future__ import annotations

import hashlib
import hmac

from voicefleet_api import podauth


def test_each_voice_gets_its_own_token_and_the_key_is_not_recoverable_from_it() -> None:
    token = podauth.pod_token("key", "team-a", "joe")
    assert token == hmac.new(b"key", b"team-a/joe", hashlib.sha256).hexdigest()
    assert len(token) == 64
    assert token == podauth.pod_token("key", "team-a", "joe")  # deterministic: no rollouts
    others = {
        podauth.pod_token("key", "team-b", "joe"),
        podauth.pod_token("key", "team-a", "jane"),
        podauth.pod_token("other", "team-a", "joe"),
    }
    assert token not in others
    assert len(others) == 3
    assert "key" not in token
