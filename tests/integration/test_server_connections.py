"""The inference server's connection discipline, against a real ``voicefleet-server``.

The same attacks as the router's (``test_router_hardening.py``): heads sent a byte at a
time, a flood of idle sockets, a body that never finishes. The pod must stay answerable
to its probes and close what does nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from rawconn import idle_flood, open_raw, slow_loris
from serverprocs import ServerProc, launch, stop, wait_ready

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = launch(
        tmp_path_factory.mktemp("pod") / "pod.log",
        "--engine",
        "simulated",
        "--header-timeout-s",
        "1",
        "--body-timeout-s",
        "1",
        "--max-connections",
        "100",
    )
    try:
        yield wait_ready(server)
    finally:
        stop(server)


async def test_slow_loris_heads_are_closed_within_seconds(pod: ServerProc) -> None:
    ends, waited = await slow_loris(pod.base_url)
    assert all(end == b"" for end in ends), ends
    assert waited < 5


async def test_an_idle_flood_leaves_the_probe_answering(pod: ServerProc) -> None:
    health, took, closed = await idle_flood(pod.base_url, 300, read_s=0.5)
    assert health == 200
    assert took < 2
    assert closed >= 200


async def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(
    pod: ServerProc,
) -> None:
    reader, writer = await open_raw(pod.base_url)
    start = json.dumps({"model": "tts-1", "input": "hello"}).encode()[:10]
    writer.write(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n" + start
    )
    await writer.drain()
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 10)
    waited = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert waited < 5
