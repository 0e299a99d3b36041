"""The processes both router benchmarks start: simulated pods and a router in front of them.

Used by :mod:`voicefleet_bench.router_policies` and :mod:`voicefleet_bench.router_overhead`;
both write their tables between markers in ``docs/router.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from voicefleet_bench import REPO
from voicefleet_bench.procs import BIN, Command

SERVER = BIN / "voicefleet-server"
ROUTER = BIN / "voicefleet-router"
DOC = REPO / "docs" / "router.md"

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the plants before you leave on Friday.",
    "The museum opens at nine and the guided tour starts at ten.",
    "Our support team answers most questions within one business day.",
)
"""Short requests: what most callers of a voice send."""
PARAGRAPH = " ".join(
    [
        "When the storm finally passed, the villagers walked down to the harbour.",
        "They counted the boats and mended the torn nets before the light went.",
        "They shared whatever bread and soup they had managed to keep dry.",
        "Nobody spoke much, but everyone stayed until the last boat was pulled up.",
        "Then the lamps were lit one by one along the sea wall and the wind dropped.",
    ]
)
"""A long request (five sentences): the one a router must not queue short ones behind.
The router tests send it too."""


def simulated_pod(
    port: int,
    *,
    speed_factor: float,
    jitter: float,
    seed: int,
    audio_seconds_per_char: float = 0.057,
) -> Command:
    """``voicefleet-server`` with the simulated engine (no model: the router's cost alone)."""
    argv = [
        str(SERVER),
        "--engine",
        "simulated",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-queue",
        "4096",
        "--log-level",
        "warning",
    ]
    env = {
        "SIMULATED_ENGINE_SPEED_FACTOR": str(speed_factor),
        "SIMULATED_ENGINE_JITTER": str(jitter),
        "SIMULATED_ENGINE_SEED": str(seed),
        "SIMULATED_ENGINE_AUDIO_SECONDS_PER_CHAR": str(audio_seconds_per_char),
    }
    return argv, env, port


def static_upstreams(urls: Sequence[str]) -> list[str]:
    """The router's flags naming ``urls`` as the pods of the voice ``joe``."""
    return [flag for url in urls for flag in ("--static-upstreams", f"joe={url}#en_US-joe-medium")]


def router(port: int, upstreams: Sequence[str], *extra: str) -> Command:
    """``voicefleet-router`` with a static list of upstream pods for one voice."""
    argv = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return [*argv, *static_upstreams(upstreams), *extra], {}, port
