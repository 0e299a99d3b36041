"""router_idle's fake pods end cleanly: no connection task is left for the loop to cancel
(Python 3.11's streams report a cancelled connection task as an unhandled error, which
printed a CancelledError traceback per connection at the end of every run)."""

from __future__ import annotations

import asyncio
from typing import Any

from voicefleet_bench.procs import HOST
from voicefleet_bench.router_idle import FakePods


def test_stopping_the_fake_pods_serves_out_their_open_connections() -> None:
    errors: list[dict[str, Any]] = []
    fake = FakePods(2)

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        await fake.start()
        for port in fake.ports:  # kept-alive connections, as the router's
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /load HTTP/1.1\r\nhost: pod\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"free=64")
        await fake.stop()
        assert fake.open == {}

    asyncio.run(scenario())
    assert errors == []
    assert fake.hits["/load"] == 2
