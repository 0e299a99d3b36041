"""The autoscaler's load reading against a real pod: held ``/load`` asks of a real
``voicefleet-server`` (simulated engine, so queues, not CPU, decide), read by the operator's
real ``HttpLoadSource`` inside its real loop on the system clock.

Only the loop's writes are faked (``RecordingActuator``, at the loop's ``Actuator`` seam):
no API server is needed to see what the loop decided. The pod runs with the access log on,
so a test counts exactly which requests the operator made of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverprocs import ServerProc, launch, stop, wait_ready

from voicefleet_api import load
from voicefleet_api.scale import ScaleResult
from voicefleet_operator.autoscaler import Autoscaler, AutoscalerConfig
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig
from voicefleet_operator.autoscaler_peering import NeverPaused
from voicefleet_operator.autoscaler_status import VoiceView, voice_view
from voicefleet_operator.pods import PodInfo
from voicefleet_operator.scaling import PodSample

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PARAGRAPH = (
    "When the storm finally passed, the villagers walked down to the harbour. "
    "They counted the boats and mended the torn nets before the light went."
)


@pytest.fixture
def pod_server(tmp_path: Path) -> Iterator[ServerProc]:
    server = launch(
        tmp_path / "pod.log",
        "--engine",
        "simulated",
        "--log-level",
        "debug",
        env={"SIMULATED_ENGINE_SPEED_FACTOR": "2"},
    )
    try:
        yield wait_ready(server)
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
            stop(server)


def load_asks(server: ServerProc) -> int:
    """Asks of the pod's ``/load``, plain or held, answered so far (its access log)."""
    return int(server.log().count(f'"GET {load.LOAD_PATH}'))


class RecordingActuator:
    """Fake of the loop's ``Actuator``: applies scales to ``replicas``, records when."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.scaled: list[tuple[float, int, int]] = []
        self.first = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def scale(self, namespace: str, name: str, replicas: int) -> ScaleResult:
        before, self.replicas = self.replicas, replicas
        self.scaled.append((time.monotonic(), before, replicas))
        self._loop.call_soon_threadsafe(self.first.set)  # the loop calls this in a thread
        return ScaleResult(before, replicas, replicas)

    def patch_status(self, namespace: str, name: str, patch: Any) -> None:
        pass

    def set_deletion_cost(self, pod: PodInfo, cost: int) -> None:
        pass

    def event(self, voice: VoiceView, type: str, reason: str, message: str) -> None:
        pass


def indexes(
    server: ServerProc, autoscaling: dict[str, Any]
) -> tuple[dict[Any, list[VoiceView]], dict[Any, list[PodInfo]]]:
    view = voice_view(
        {
            "metadata": {"namespace": "ns", "name": "v", "uid": "uid-v"},
            "spec": {
                "replicas": 1,
                "model": {"bundled": "en_US-joe-medium"},
                "autoscaling": autoscaling,
            },
        }
    )
    pod = PodInfo("ns", "v-0", "v", "uid-v-0", server.host, "Running", True, None, None, None)
    return {view.key: [view]}, {view.key: [pod]}


def loop(server: ServerProc, actuator: RecordingActuator, **config: Any) -> Autoscaler:
    # poll_interval 30 s: any answer within the test came from a held ask, not a poll.
    source = HttpLoadSource(
        LoadConfig(pod_port=server.port, timeout=2.0, poll_interval=30.0, **config)
    )
    return Autoscaler(
        AutoscalerConfig(interval=1.0), actuator=actuator, load=source, gate=NeverPaused()
    )


async def test_a_load_step_reaches_the_decision_without_waiting_for_a_poll(
    pod_server: ServerProc,
) -> None:
    actuator = RecordingActuator(1)
    scaler = loop(pod_server, actuator)
    voices, pods = indexes(
        pod_server, {"minReplicas": 1, "maxReplicas": 4, "targetWorkSecondsPerReplica": 0.5}
    )
    scaler.start(voices, pods)
    await asyncio.sleep(3.0)  # idle: three ticks
    asks_idle = load_asks(pod_server)
    assert actuator.scaled == []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=pod_server.base_url, timeout=60) as client:
        body = {"model": "tts-1", "input": PARAGRAPH, "voice": "default"}

        async def closed_loop() -> None:
            while not done.is_set():
                await client.post("/v1/audio/speech", json=body)

        stepped = time.monotonic()
        step = [asyncio.create_task(closed_loop()) for _ in range(16)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(actuator.first.wait(), timeout=10)
        done.set()
        await scaler.stop()
        await asyncio.gather(*step, return_exceptions=True)
    # Idle, the operator asked once at start and then held (10 s waits), not every tick.
    assert 1 <= asks_idle <= 2, pod_server.log()[-2000:]
    assert actuator.scaled, "no decision within 10 s of the step"
    at, before, after = actuator.scaled[0]
    assert before == 1
    assert after > 1
    # A tick brought forward by the step plus one interval of evidence: 1.2-1.5 s measured
    # (the 2 s is measured at scale by the fleet benchmark, docs/fleet.md). Polls
    # were 30 s apart: only the held ask can have carried the step this soon; 3 s leaves
    # room for a loaded machine.
    assert at - stepped <= 3.0, at - stepped


async def test_a_silent_pod_is_never_taken_for_idle(pod_server: ServerProc) -> None:
    actuator = RecordingActuator(1)
    scaler = loop(pod_server, actuator, wait=1.0, stale_after=0.5)
    voices, pods = indexes(
        pod_server, {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroIdleSeconds": 2}
    )
    # The pod stops (SIGSTOP: its socket still accepts, nothing answers) after its first
    # answer: its held ask is overdue after wait + grace and the pod is silent from then on.
    first = await scaler.load.pod_samples(pods[("ns", "v")], time.time())
    assert first[0].answered
    os.kill(pod_server.proc.pid, signal.SIGSTOP)
    silent_at = time.monotonic()
    scaler.start(voices, pods)
    await asyncio.sleep(5.0)  # well past scaleToZeroIdleSeconds
    silent = await scaler.load.pod_samples(pods[("ns", "v")], time.time())
    held_to_zero = list(actuator.scaled)
    os.kill(pod_server.proc.pid, signal.SIGCONT)  # answering idle again: now it may go
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(actuator.first.wait(), timeout=20 - (time.monotonic() - silent_at))
    await scaler.stop()
    assert silent == [PodSample(None)]
    assert held_to_zero == [], "a silent pod was taken for idle"
    assert actuator.scaled, "the idle pod was not scaled to zero once it answered again"
    assert actuator.scaled[0][1:] == (1, 0)
