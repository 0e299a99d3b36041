"""Raw-socket clients for the connection-hardening tests of both HTTP edges (pod and router).

The pod and the router face the same attacks (heads sent a byte at a time, floods of idle
sockets) and are held to the same bounds, so the attacks are written once here and each
edge's test module only starts its server and asserts.
"""

from __future__ import annotations

import asyncio
import time

import httpx


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to ``http://host:port``."""
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def slow_loris(url: str, connections: int = 50) -> tuple[list[object], float]:
    """Open ``connections`` that each send a request head a byte every 0.2 s and never
    finish it; return what each read before it ended (``b""``: the server closed it) and
    the seconds that took."""
    conns = [await open_raw(url) for _ in range(connections)]

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
    return list(ends), waited


async def idle_flood(url: str, connections: int, read_s: float) -> tuple[int, float, int]:
    """Open ``connections`` that send nothing, then probe ``/healthz``; return its status,
    the seconds it took, and how many idle connections the server closed within
    ``read_s``."""
    idle = [await open_raw(url) for _ in range(connections)]
    async with httpx.AsyncClient(timeout=5) as client:
        started = time.monotonic()
        health = await client.get(url + "/healthz")
        took = time.monotonic() - started
    ends = await asyncio.gather(
        *(asyncio.wait_for(r.read(), read_s) for r, _ in idle), return_exceptions=True
    )
    for _, writer in idle:
        writer.close()
    return health.status_code, took, sum(1 for end in ends if end == b"")
