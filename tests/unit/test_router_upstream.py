"""The router's client to pods (:mod:`voicefleet_inference.router.upstream`) against a
loopback HTTP/1.1 server written here with asyncio streams: each test scripts what the
"pod" does on the wire (keep-alive, closing, silence, chunks) and counts its connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from voicefleet_inference.router.upstream import (
    ConnectFailed,
    PodClient,
    PodResponse,
    UpstreamBroken,
)

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Answers one request (its head and body given); returns False to stop serving the
connection (the server then closes it)."""


class Pod:
    """A loopback server: reads requests (Content-Length bodies), lets ``handler`` answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if not await self.handler(head + body, reader, writer):
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def running(handler: Handler) -> AsyncIterator[Pod]:
    pod = Pod(handler)
    pod.server = await asyncio.start_server(pod._serve, "127.0.0.1", 0)
    pod.port = pod.server.sockets[0].getsockname()[1]
    try:
        yield pod
    finally:
        pod.server.close()


def answer(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"content-length: %d" % len(body), b"content-type: audio/pcm"]
    return b"\r\n".join([*head, *extra, b"", b""]) + body


async def keep_alive(request: bytes, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    w.write(answer(b"x" * 1000, b"X-VoiceFleet-Load: work_s=0.5,depth=1,in_flight=0,seq=3"))
    await w.drain()
    return True


async def whole(response: PodResponse) -> bytes:
    body = await response.read()
    response.release()
    return body


async def test_answers_pass_through_and_the_connection_is_kept() -> None:
    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(keep_alive) as pod:
        for _ in range(3):
            response = await client.request(
                pod.url, "POST", "/v1/audio/speech", {"content-type": "application/json"}, b"{}"
            )
            assert response.status == 200
            assert response.load == b"work_s=0.5,depth=1,in_flight=0,seq=3"
            assert (b"content-type", b"audio/pcm") in response.headers  # names lower-cased
            assert await whole(response) == b"x" * 1000
        assert pod.connections == 1
        sent = pod.requests[0]
        assert sent.startswith(b"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}" in sent
    await client.close()


async def test_a_kept_connection_the_pod_closed_is_replaced_without_an_error() -> None:
    """The pod closes each connection after answering, without saying so: the request that
    finds its kept connection dead goes out once more on a new one."""

    async def once(request: bytes, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(answer(b"ok"))
        await w.drain()
        return False

    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(once) as pod:
        for _ in range(3):
            response = await client.request(pod.url, "GET", "/load", {}, b"")
            assert await whole(response) == b"ok"
            await asyncio.sleep(0.05)  # the pod's close has arrived (the connection left)
        assert pod.connections == 3
        # and when the close races the request: the write goes out, then EOF
        response = await client.request(pod.url, "GET", "/load", {}, b"")
        response.release()
        response = await client.request(pod.url, "GET", "/load", {}, b"")
        assert await whole(response) == b"ok"
    await client.close()


async def test_a_new_connection_that_fails_before_answering_is_the_callers() -> None:
    async def hang_up(request: bytes, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        return False  # closes without a byte

    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(hang_up) as pod:
        with pytest.raises(UpstreamBroken):
            await client.request(pod.url, "POST", "/v1/audio/speech", {}, b"{}")
        assert pod.connections == 1
    await client.close()


async def test_connection_refused_is_connect_failed() -> None:
    async with running(keep_alive) as pod:
        url = pod.url
    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    with pytest.raises(ConnectFailed):
        await client.request(url, "GET", "/load", {}, b"")
    await client.close()


async def test_a_silent_pod_times_out_and_its_connection_is_closed() -> None:
    gave_up = asyncio.Event()

    async def silent(request: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await r.read()  # wait for the router to give up (EOF)
        gave_up.set()
        return False

    client = PodClient(connect_timeout_s=1, read_timeout_s=0.3)
    async with running(silent) as pod:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request(pod.url, "POST", "/v1/audio/speech", {}, b"{}")
        assert 0.25 < time.monotonic() - started < 2.0
        await asyncio.wait_for(gave_up.wait(), 2)
    await client.close()


async def test_a_stream_arrives_in_parts_and_closing_early_closes_the_connection() -> None:
    go_on = asyncio.Event()
    closed = asyncio.Event()

    async def chunks(request: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nRIFF\r\n")
        await w.drain()
        await go_on.wait()
        w.write(b"3\r\nabc\r\n")
        await w.drain()
        await r.read()  # the router closes before the end
        closed.set()
        return False

    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(chunks) as pod:
        response = await client.request(pod.url, "POST", "/v1/audio/speech", {}, b"{}")
        assert await response.next_chunk() == (b"RIFF", False)
        go_on.set()
        assert await response.next_chunk() == (b"abc", False)
        response.close()
        await asyncio.wait_for(closed.wait(), 2)
    await client.close()


async def test_a_large_body_is_read_whole_through_the_pauses() -> None:
    """4 MB read slowly: the connection is paused past the high-water mark and resumed."""
    body = bytes(range(256)) * (4 * 4096)

    async def big(request: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(answer(body))
        await w.drain()
        return True

    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(big) as pod:
        response = await client.request(pod.url, "GET", "/tts?text=a", {}, b"")
        parts: list[bytes] = []
        while True:
            await asyncio.sleep(0.001)  # a slow client
            data, last = await response.next_chunk()
            parts.append(data)
            if last:
                break
        response.release()
        assert b"".join(parts) == body
        assert len(parts) > 1
        again = await client.request(pod.url, "GET", "/tts?text=a", {}, b"")
        assert await whole(again) == body
        assert pod.connections == 1
    await client.close()


async def test_idle_connections_expire_before_the_pods_keep_alive() -> None:
    client = PodClient(connect_timeout_s=1, read_timeout_s=5, keepalive_s=0.2)
    async with running(keep_alive) as pod:
        await whole(await client.request(pod.url, "GET", "/load", {}, b""))
        await asyncio.sleep(0.35)
        await whole(await client.request(pod.url, "GET", "/load", {}, b""))
        assert pod.connections == 2
    await client.close()


async def test_header_values_that_would_split_the_head_are_not_sent() -> None:
    client = PodClient(connect_timeout_s=1, read_timeout_s=5)
    async with running(keep_alive) as pod:
        headers = {"x-request-id": "a\r\nx-injected: 1", "accept": "*/*"}
        await whole(await client.request(pod.url, "GET", "/load", headers, b""))
        assert b"x-injected" not in pod.requests[0]
        assert b"accept: */*\r\n" in pod.requests[0]
    await client.close()
