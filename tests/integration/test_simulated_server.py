"""A real ``voicefleet-server`` process running the ``simulated`` engine, over real HTTP.

The point of the engine is that many such pods on two cores behave like a GPU fleet seen
from outside: the same API and metrics, a queue that drains at the voice's cost-model
rate, and almost no CPU. These tests check exactly those three things.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverprocs import ServerProc, launch, metric, start_simulated, stop

SPEECH = "/v1/audio/speech"
MODEL = "en_US-joe-medium"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # 0.0045 s/char at speed 1 -> the sentence takes ~0.31 s; factor 2 -> ~0.16 s
    srv = start_simulated(tmp_path_factory.mktemp("sim") / "server.log", speed_factor=2.0)
    yield srv
    assert stop(srv) == 0, srv.log()


def body(text: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "input": text, "voice": "default", "response_format": "wav", **extra}


async def test_answers_a_well_formed_wav_of_the_voices_duration(sim: ServerProc) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
        resp = await client.post(SPEECH, json=body(SENTENCE))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(resp.content)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        duration = w.getnframes() / w.getframerate()
    assert duration == pytest.approx(0.057 * len(SENTENCE), rel=0.05)


async def test_queue_drains_at_the_cost_model_rate_and_metrics_show_the_work(
    sim: ServerProc,
) -> None:
    one = 0.02 / 2 + 0.0045 / 2 * len(SENTENCE)
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
        started = time.perf_counter()
        jobs = [asyncio.ensure_future(client.post(SPEECH, json=body(SENTENCE))) for _ in range(6)]
        await asyncio.sleep(0.1)
        during = (await client.get("/metrics")).text
        done = await asyncio.gather(*jobs)
        elapsed = time.perf_counter() - started
        after = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in done)
    # one worker: six requests one after another, not in parallel and not much slower
    assert 6 * one * 0.95 <= elapsed <= 6 * one + 1.0
    assert metric(during, "voicefleet_queue_depth") >= 3
    assert metric(during, "voicefleet_requests_in_flight") == 1
    assert metric(during, "voicefleet_queue_work_seconds") >= 3 * one
    assert metric(after, "voicefleet_queue_work_seconds") == 0


async def test_a_busy_simulated_pod_uses_little_cpu(sim: ServerProc) -> None:
    cpu_before = _cpu_seconds(sim)
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client.post(SPEECH, json=body(SENTENCE)) for _ in range(6)))
        wall = time.perf_counter() - started
    used = _cpu_seconds(sim) - cpu_before
    assert used < 0.5 * wall, (used, wall)  # a real CPU pod would use ~1-2 cores


def _cpu_seconds(server: ServerProc) -> float:
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def test_a_bad_simulated_setting_fails_the_start_naming_the_variable(tmp_path: Path) -> None:
    server = launch(
        tmp_path / "bad.log",
        "--engine",
        "simulated",
        env={"SIMULATED_ENGINE_SPEED_FACTOR": "-1"},
    )
    assert server.proc.wait(timeout=60) == 1
    assert "SIMULATED_ENGINE_SPEED_FACTOR" in server.log()
