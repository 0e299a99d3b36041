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
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from voicefleet_api.priority import DEFAULT_PRIORITY
from voicefleet_inference import audio
from voicefleet_inference.engines.base import AudioChunk, Samples, SynthesisRequest, WordTiming
from voicefleet_inference.errors import (
    ClientDisconnected,
    InvalidRequest,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    SynthesisFailed,
)
from voicefleet_inference.jobs import RequestHandle
from voicefleet_inference.scheduler import EngineInfo, Scheduler
from voicefleet_inference.server.validation import decode_json_object

__all__ = [
    "SpeechJob",
    "StreamMode",
    "absolute_words",
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
    timestamps: bool = False
    """Word timestamps asked for: a JSON body (whole file) or ``speech.audio.timestamps``
    events (SSE); ``request.word_timestamps`` is set to match."""


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


def absolute_words(
    words: tuple[WordTiming, ...], offset_samples: int, sample_rate: int
) -> list[dict[str, object]]:
    """A chunk's word timings as the API shows them: seconds from the start of the audio.

    Engines time words from the start of their chunk; the chunks before it (sentences,
    their pauses, streaming windows) are ``offset_samples`` long.
    """
    offset = offset_samples / sample_rate
    return [
        {"word": w.word, "start": round(offset + w.start, 3), "end": round(offset + w.end, 3)}
        for w in words
    ]


async def _collect(handle: RequestHandle) -> list[AudioChunk]:
    return [piece async for piece in handle.pieces()]


async def _encode_chunk(encoder: audio.StreamEncoder, samples: Samples) -> bytes:
    if encoder.format in _INLINE_FORMATS:
        return encoder.encode(samples)
    return await anyio.to_thread.run_sync(encoder.encode, samples)


async def _finish(encoder: audio.StreamEncoder) -> bytes:
    if encoder.format in _INLINE_FORMATS:
        return encoder.finish()
    return await anyio.to_thread.run_sync(encoder.finish)


async def _encoded(
    handle: RequestHandle, encoder: audio.StreamEncoder, first: AudioChunk, sample_rate: int
) -> AsyncIterator[tuple[bytes, list[dict[str, object]]]]:
    """Each chunk encoded (possibly to nothing yet) with its words in absolute seconds."""
    offset = 0
    try:
        data = encoder.start() + await _encode_chunk(encoder, first.samples)
        yield data, absolute_words(first.words, offset, sample_rate)
        offset += len(first.samples)
        async for piece in handle.pieces():
            data = await _encode_chunk(encoder, piece.samples)
            yield data, absolute_words(piece.words, offset, sample_rate)
            offset += len(piece.samples)
        tail = await _finish(encoder)
        if tail:
            yield tail, []
    except ServiceError as exc:
        log.warning("stream aborted after it started: %s", exc)
        raise
    finally:
        handle.cancel()  # no-op when finished; stops synthesis when the client left


async def _audio_stream(
    handle: RequestHandle, encoder: audio.StreamEncoder, first: AudioChunk, sample_rate: int
) -> AsyncIterator[bytes]:
    started = False
    async for data, _words in _encoded(handle, encoder, first, sample_rate):
        if data or not started:
            started = True
            yield data


def _sse_event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _sse_stream(
    handle: RequestHandle, encoder: audio.StreamEncoder, first: AudioChunk, sample_rate: int
) -> AsyncIterator[bytes]:
    """OpenAI's ``stream_format=sse``: ``speech.audio.delta`` events, then ``done``.

    With word timestamps, a ``speech.audio.timestamps`` event follows the delta of each
    chunk that starts words (seconds from the start of the whole audio).
    """
    started = False
    async for data, words in _encoded(handle, encoder, first, sample_rate):
        if data or not started:
            started = True
            yield _sse_event(
                {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
            )
        if words:
            yield _sse_event({"type": "speech.audio.timestamps", "words": words})
    yield _sse_event({"type": "speech.audio.done"})


def _whole_with_words(pieces: list[AudioChunk], sample_rate: int, fmt: str) -> dict[str, object]:
    """The ``timestamps: "word"`` whole-file body: base64 audio, its format, its words."""
    words: list[dict[str, object]] = []
    offset = 0
    for piece in pieces:
        words.extend(absolute_words(piece.words, offset, sample_rate))
        offset += len(piece.samples)
    body = audio.encode([p.samples for p in pieces], sample_rate, fmt)
    return {
        "audio": base64.b64encode(body).decode("ascii"),
        "format": fmt,
        "duration": round(offset / sample_rate, 3),
        "words": words,
    }


async def synthesize(
    request: Request, scheduler: Scheduler, job: SpeechJob, priority: str = DEFAULT_PRIORITY
) -> Response:
    """Admit ``job`` at ``priority``, wait for its audio (or the client leaving), answer in
    its format."""
    sample_rate = require_info(scheduler).sample_rate
    handle = scheduler.submit(job.request, priority)
    try:
        if job.stream == "none":
            pieces = await _unless_disconnected(request, _collect(handle))
            if job.timestamps:
                payload = await anyio.to_thread.run_sync(
                    _whole_with_words, pieces, sample_rate, job.fmt
                )
                return JSONResponse(payload)
            chunks = [p.samples for p in pieces]
            body = await anyio.to_thread.run_sync(audio.encode, chunks, sample_rate, job.fmt)
            return Response(body, media_type=audio.content_type(job.fmt))
        first = await _unless_disconnected(request, handle.next_piece())
    except BaseException:
        handle.cancel()
        raise
    if first is None:  # the engine contract promises a chunk; never answer silence
        raise SynthesisFailed("engine produced no audio")
    encoder = audio.stream_encoder(job.fmt, sample_rate)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if job.stream == "sse":
        return StreamingResponse(
            _sse_stream(handle, encoder, first, sample_rate),
            media_type="text/event-stream",
            headers=headers,
        )
    return StreamingResponse(
        _audio_stream(handle, encoder, first, sample_rate),
        media_type=encoder.content_type,
        headers=headers,
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
