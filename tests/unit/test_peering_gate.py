"""The autoscaler loop's peering pause: kopf's rule, read from the peering object."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from voicefleet_operator.autoscaler_peering import PeeringGate, new_identity, pause_reason

NOW = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC).timestamp()


def record(priority: int, seen_ago: float = 1.0, lifetime: int = 60) -> dict[str, Any]:
    seen = datetime.fromtimestamp(NOW - seen_ago, UTC)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_a_live_peer_of_higher_priority_pauses_and_ourselves_never_count() -> None:
    status = {"me": record(100), "other": record(200)}
    reason = pause_reason(status, "me", 100, NOW)
    assert reason is not None
    assert "other" in reason
    assert "200 > 100" in reason
    assert pause_reason({"me": record(100)}, "me", 100, NOW) is None
    assert pause_reason({"me": record(100), "low": record(50)}, "me", 100, NOW) is None
    assert pause_reason({}, "me", 100, NOW) is None


def test_a_tied_peer_pauses_everyone_as_kopf_does() -> None:
    reason = pause_reason({"me": record(100), "twin": record(100)}, "me", 100, NOW)
    assert reason is not None
    assert "same priority" in reason


def test_a_peer_whose_lease_ran_out_no_longer_pauses() -> None:
    assert pause_reason({"other": record(200, seen_ago=61, lifetime=60)}, "me", 100, NOW) is None
    assert pause_reason({"other": record(200, seen_ago=59, lifetime=60)}, "me", 100, NOW)
    # A record without a readable lastseen counts as live, as kopf reads it.
    assert pause_reason({"other": {"priority": 200}}, "me", 100, NOW)


class FakePeeringReader:
    """Fake of our own seam (``PeeringReader``): peering status per namespace, or a failure."""

    def __init__(self, statuses: Mapping[str | None, Mapping[str, Any] | None]) -> None:
        self.statuses = dict(statuses)
        self.fail = False
        self.reads: list[tuple[str, str | None]] = []

    def get_peering_status(self, name: str, namespace: str | None) -> Mapping[str, Any] | None:
        self.reads.append((name, namespace))
        if self.fail:
            raise RuntimeError("API server unreachable")
        return self.statuses.get(namespace)


def test_the_gate_reads_each_namespace_and_keeps_its_verdict_when_a_read_fails() -> None:
    reader = FakePeeringReader({"a": {"me": record(10)}, "b": {"other": record(20)}})
    gate = PeeringGate(reader, name="vf", namespaces=["a", "b"], identity="me", priority=10)

    async def scenario() -> list[str | None]:
        verdicts = [await gate.paused(NOW)]
        reader.fail = True
        verdicts.append(await gate.paused(NOW))  # kept: still paused
        reader.fail = False
        reader.statuses["b"] = None  # the object is gone (or its CRD): act
        verdicts.append(await gate.paused(NOW))
        return verdicts

    first, kept, after = asyncio.run(scenario())
    assert first is not None
    assert first.startswith("b: other")
    assert kept == first
    assert after is None
    assert ("vf", "a") in reader.reads
    assert ("vf", "b") in reader.reads
    cluster = PeeringGate(reader, name="vf", namespaces=[], identity="me", priority=10)
    asyncio.run(cluster.paused(NOW))
    assert reader.reads[-1] == ("vf", None)


def test_identity_follows_pod_id_like_kopf(monkeypatch: Any) -> None:
    monkeypatch.setenv("POD_ID", "voicefleet-operator-abc")
    assert new_identity() == "voicefleet-operator-abc"
    monkeypatch.delenv("POD_ID")
    assert new_identity() != new_identity()


def test_identity_without_a_passwd_entry_uses_the_uid(monkeypatch: Any) -> None:
    """Our images run as 65532, which has no passwd entry: getpass raises KeyError."""
    import getpass

    def no_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_entry)
    assert new_identity().startswith("uid")
