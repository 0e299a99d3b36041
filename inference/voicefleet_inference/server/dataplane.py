"""The synthesis flow both HTTP routes delegate to, after they decoded their request.

Transport kept apart from decoding (as KServe's ``dataplane.py`` is from its endpoints):
routes turn their own parameters into a :class:`SpeechJob`, this module admits it, waits
for audio, encodes and answers.

The event loop never computes audio and never encodes a long clip: whole-file encoding
runs in a thread (``anyio.to_thread``); streams are encoded chunk by chunk (one sentence),
compressed formats in a thread too, because LAME or Opus on a sentence can take tens of
milliseconds that ``/healthz`` would otherwise wait for.

Statuses are decided before the first byte: a stream is only started once its first
chunk exists, so an unspeakable text, a timeout in the queue or an engine failure is a
proper 4xx/5xx. A failure after that aborts the connection (the chunked body never
terminates), which clients see as an error rather than as short or silent audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import anyio.to_thread
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from voicefleet_inference import audio
from voicefleet_inference.engines.base import Samples, SynthesisRequest
from voicefleet_inference.errors import (
    ClientDisconnected,
    InvalidRequest,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    SynthesisFailed,
)
from voicefleet_inference.scheduler import EngineInfo, RequestHandle, Scheduler
from voicefleet_inference.server.validation import decode_json_object

__all__ = [
    "SpeechJob",
    "StreamMode",
    "invalid_from_validation",
    "parse_json_object",
    "read_body",
    "require_info",
    "synthesize",
]

log = logging.getLogger("voicefleet.server")

StreamMode = Literal["none", "audio", "sse"]
T = TypeVar("T")

_INLINE_FORMATS: Final = frozenset(("wav", "pcm"))
"""Formats whose per-chunk encoding is a cheap numpy conversion, done on the loop."""


@dataclass(frozen=True, slots=True)
class SpeechJob:
    """A decoded, validated synthesis request: what to say, in which format, streamed how."""

    request: SynthesisRequest
    fmt: str
    """An :mod:`voicefleet_inference.audio` format name (wav, pcm, flac, mp3, opus)."""
    stream: StreamMode = "none"


def require_info(scheduler: Scheduler) -> EngineInfo:
    """The served model's identity, or NotReady while no engine has loaded yet."""
    info = scheduler.info
    if info is None:
        raise NotReady("model is loading; retry shortly", retry_after_s=2)
    return info


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; at most {limit} accepted")
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            parts.append(part)
    except ClientDisconnect:
        # Fewer bytes than Content-Length, then gone: the client's doing, not a 500.
        raise ClientDisconnected("client disconnected while sending its body") from None
    return b"".join(parts)


def parse_json_object(body: bytes) -> dict[str, object]:
    """A JSON object from ``body``, or InvalidRequest saying what is wrong with it."""
    return decode_json_object(body)


async def _wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, unless the client goes away first: then ClientDisconnected."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise ClientDisconnected("client disconnected before its audio was ready")
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()


async def _collect(handle: RequestHandle) -> list[Samples]:
    return [chunk async for chunk in handle.chunks()]


async def _encode_chunk(encoder: audio.StreamEncoder, samples: Samples) -> bytes:
    if encoder.format in _INLINE_FORMATS:
        return encoder.encode(samples)
    return await anyio.to_thread.run_sync(encoder.encode, samples)


async def _finish(encoder: audio.StreamEncoder) -> bytes:
    if encoder.format in _INLINE_FORMATS:
        return encoder.finish()
    return await anyio.to_thread.run_sync(encoder.finish)


async def _audio_stream(
    handle: RequestHandle, encoder: audio.StreamEncoder, first: Samples
) -> AsyncIterator[bytes]:
    try:
        yield encoder.start() + await _encode_chunk(encoder, first)
        async for chunk in handle.chunks():
            data = await _encode_chunk(encoder, chunk)
            if data:
                yield data
        tail = await _finish(encoder)
        if tail:
            yield tail
    except ServiceError as exc:
        log.warning("stream aborted after it started: %s", exc)
        raise
    finally:
        handle.cancel()  # no-op when finished; stops synthesis when the client left


def _sse_event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _sse_stream(
    handle: RequestHandle, encoder: audio.StreamEncoder, first: Samples
) -> AsyncIterator[bytes]:
    """OpenAI's ``stream_format=sse``: ``speech.audio.delta`` events, then ``done``."""

    def delta(data: bytes) -> bytes:
        return _sse_event(
            {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
        )

    async for data in _audio_stream(handle, encoder, first):
        yield delta(data)
    yield _sse_event({"type": "speech.audio.done"})


async def synthesize(request: Request, scheduler: Scheduler, job: SpeechJob) -> Response:
    """Admit ``job``, wait for its audio (or the client leaving), answer in its format."""
    sample_rate = require_info(scheduler).sample_rate
    handle = scheduler.submit(job.request)
    try:
        if job.stream == "none":
            chunks = await _unless_disconnected(request, _collect(handle))
            body = await anyio.to_thread.run_sync(audio.encode, chunks, sample_rate, job.fmt)
            return Response(body, media_type=audio.content_type(job.fmt))
        first = await _unless_disconnected(request, handle.next_chunk())
    except BaseException:
        handle.cancel()
        raise
    if first is None:  # the engine contract promises a chunk; never answer silence
        raise SynthesisFailed("engine produced no audio")
    encoder = audio.stream_encoder(job.fmt, sample_rate)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if job.stream == "sse":
        return StreamingResponse(
            _sse_stream(handle, encoder, first), media_type="text/event-stream", headers=headers
        )
    return StreamingResponse(
        _audio_stream(handle, encoder, first), media_type=encoder.content_type, headers=headers
    )


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, as an InvalidRequest naming the parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    kind = str(first.get("type", ""))
    if kind == "missing":
        message = f"missing required parameter: {param!r}"
        code = "missing_required_parameter"
    elif kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param!r}"
        code = "unknown_parameter"
    else:
        message = f"invalid value for {param!r}: {first.get('msg', 'invalid')}"
        code = "invalid_type"
    return InvalidRequest(message, param=param, code=code)
