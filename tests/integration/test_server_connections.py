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

import httpx
import pytest
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


async def open_raw(server: ServerProc) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port)


async def test_slow_loris_heads_are_closed_within_seconds(pod: ServerProc) -> None:
    conns = [await open_raw(pod) for _ in range(50)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        while not writer.is_closing():
            await asyncio.sleep(0.2)
            writer.write(b"s")
            await writer.drain()

    trickling = [asyncio.create_task(trickle(w)) for _, w in conns]
    started = time.monotonic()
    ends = await asyncio.gather(
        *(asyncio.wait_for(r.read(), 10) for r, _ in conns), return_exceptions=True
    )
    waited = time.monotonic() - started
    for task in trickling:
        task.cancel()
    await asyncio.gather(*trickling, return_exceptions=True)
    for _, writer in conns:
        writer.close()
    assert all(end == b"" for end in ends), ends
    assert waited < 5


async def test_an_idle_flood_leaves_the_probe_answering(pod: ServerProc) -> None:
    idle = [await open_raw(pod) for _ in range(300)]
    async with httpx.AsyncClient(timeout=5) as client:
        started = time.monotonic()
        health = await client.get(pod.base_url + "/healthz")
        took = time.monotonic() - started
    ends = await asyncio.gather(
        *(asyncio.wait_for(r.read(), 0.5) for r, _ in idle), return_exceptions=True
    )
    for _, writer in idle:
        writer.close()
    assert health.status_code == 200
    assert took < 2
    assert sum(1 for end in ends if end == b"") >= 200


async def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(
    pod: ServerProc,
) -> None:
    reader, writer = await open_raw(pod)
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
