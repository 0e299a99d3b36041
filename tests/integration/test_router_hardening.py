"""The router under hostile clients: bodies, held requests, slow senders, connections.

Each test is an attack from issue 18 run against a real router (built as
``voicefleet-router`` builds it, served by uvicorn on loopback) over raw sockets where an
HTTP client library would hide what the attacker does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from rawconn import idle_flood, open_raw, slow_loris
from routerprocs import running_router
from serverprocs import free_port

from voicefleet_inference.router.service import RouterService
from voicefleet_inference.router.settings import RouterSettings

pytestmark = [pytest.mark.timeout(90)]

SPEECH = "/v1/audio/speech"


def settings(**extra: object) -> RouterSettings:
    """One voice ``joe`` whose only pod listens nowhere (these tests never reach a pod)."""
    dead = f"http://127.0.0.1:{free_port()}"
    return RouterSettings(static_upstreams=[f"joe={dead}"], **extra)  # type: ignore[arg-type]


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1])


async def test_a_chunked_body_past_the_cap_is_refused_before_it_is_read() -> None:
    """No Content-Length to check first: the router must count as it reads (it used to read
    200 MB into memory before its 413)."""
    async with running_router(settings(max_body_bytes=1 << 20)) as (_, url):
        reader, writer = await open_raw(url)
        writer.write(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = 64 * 1024
        sent = 0

        async def flood() -> None:
            nonlocal sent
            frame = f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n"
            while sent < 256 << 20:
                writer.write(frame)
                await writer.drain()
                sent += chunk

        pushing = asyncio.create_task(flood())
        status = await asyncio.wait_for(status_of(reader), 30)
        at_answer = sent
        pushing.cancel()
        await asyncio.gather(pushing, return_exceptions=True)
        writer.close()
    assert status == 413
    assert at_answer < 16 << 20, f"{at_answer} bytes were taken before the 413"


async def test_a_slow_body_is_cut_off_with_408() -> None:
    async with running_router(settings(body_timeout_s=1.0)) as (_, url):
        reader, writer = await open_raw(url)
        writer.write(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        await writer.drain()
        started = time.monotonic()
        status = await asyncio.wait_for(status_of(reader), 10)
        waited = time.monotonic() - started
        writer.close()
    assert status == 408
    assert waited < 5


@pytest.fixture
async def voice_without_pods() -> AsyncIterator[tuple[RouterService, str]]:
    async with running_router(
        settings(max_held_bytes_per_voice=250_000, max_held_bytes=1 << 20)
    ) as (service, url):
        for key in list(service.fleet.pods):
            service.fleet.remove_pod(key)  # what the watch does at zero replicas
        yield service, url


async def test_held_bodies_are_capped_in_bytes_per_voice(
    voice_without_pods: tuple[RouterService, str],
) -> None:
    """Requests for a voice at zero replicas wait in memory: past the byte cap they are
    refused at once with Retry-After instead of piling up (150 x 1 MB OOM-killed it)."""
    service, url = voice_without_pods
    big = json.dumps({"model": "joe", "input": "x" * 100_000, "voice": "default"})
    async with httpx.AsyncClient(timeout=30) as client:
        jobs = [asyncio.ensure_future(client.post(url + SPEECH, content=big)) for _ in range(5)]
        done, waiting = await asyncio.wait(jobs, timeout=5)
        refused = [job.result() for job in done]
        held = service.proxy.held("default/joe")
        for job in waiting:
            job.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    assert held == 2
    assert len(refused) == 3
    for answer in refused:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "hold_queue_full"
        assert "bytes" in answer.json()["error"]["message"]


async def test_slow_loris_connections_are_closed_within_the_header_timeout() -> None:
    """Heads sent a byte at a time never finish; each connection is closed once the head
    is late (500 of them stayed open for 90 s before)."""
    async with running_router(settings(header_timeout_s=1.0)) as (_, url):
        ends, waited = await slow_loris(url)
    assert all(end == b"" for end in ends), ends
    assert waited < 5


async def test_an_idle_connection_flood_is_capped_and_healthz_still_answers() -> None:
    """Past the cap, a new connection closes the oldest one that never sent a request: a
    flood of idle sockets cannot lock the kubelet's probe out (20,000 exhausted it)."""
    async with running_router(settings(max_connections=100, header_timeout_s=60.0)) as (_, url):
        health, took, closed = await idle_flood(url, 300, read_s=1.0)
    assert health == 200
    assert took < 2
    assert closed >= 200, closed


async def test_bodies_in_memory_are_budgeted_over_all_requests() -> None:
    """Each body under the cap, but together past the router's budget: refused before it
    is read (a thousand concurrent 1 MB bodies are a gigabyte)."""
    async with running_router(settings(max_buffered_body_bytes=1 << 20)) as (_, url):
        _, writer = await open_raw(url)
        writer.write(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900000\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # its 900,000 bytes are reserved while it trickles
        body = json.dumps({"model": "joe", "input": "x" * 899_000})
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.post(url + SPEECH, content=body)
        writer.close()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "body_budget_full"
    assert refused.headers["retry-after"] == "1"


async def test_an_oversized_request_head_is_refused_and_closed() -> None:
    """The router parses requests with httptools (llhttp, no bound of its own on a head):
    a head past 16 KiB gets a 400 and a closed connection, as h11 gave it; one under the
    bound is answered."""
    async with running_router(settings()) as (_, url):
        reader, writer = await open_raw(url)
        pads = [b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20)]  # 20 KB
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: r\r\n" + b"".join(pads) + b"\r\n")
        await writer.drain()
        status = await asyncio.wait_for(status_of(reader), 10)
        rest = await asyncio.wait_for(reader.read(), 10)  # until the router closes
        writer.close()
        reader, writer = await open_raw(url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: r\r\n" + b"".join(pads[:12]) + b"\r\n")
        await writer.drain()
        fine = await asyncio.wait_for(status_of(reader), 10)
        writer.close()
    assert status == 400
    assert b"Invalid HTTP request" in rest
    assert fine == 200
