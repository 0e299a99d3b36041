"""``POST /v1/audio/speech``: OpenAI's text-to-speech API, for the one voice this pod serves.

The route reads and decodes; :func:`decode_speech` (pure) decides whether the request is
valid and what it asks for; :func:`~voicefleet_inference.server.dataplane.synthesize` does
the rest. Errors come out in OpenAI's shape (``server/errors.py``).

Deviations from OpenAI, on purpose: without ``stream_format`` the answer is one whole file
with ``Content-Length`` (a real WAV header, a complete MP3/FLAC), and ``stream_format:
"audio"`` streams sentence by sentence; OpenAI chunks either way. ``instructions`` (for
``gpt-4o-mini-tts``) is refused, since Piper voices cannot follow them.

Extension: ``"timestamps": "word"`` asks for when each input word is spoken. A whole
file then comes as JSON (``{"audio": base64, "format", "duration", "words": [{"word",
"start", "end"}]}``) and an SSE stream adds ``speech.audio.timestamps`` events; a raw
audio stream has nowhere to put them, so that combination is a 400. Without the field
nothing changes, so OpenAI clients are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError

from voicefleet_api.priority import PRIORITY_HEADER
from voicefleet_inference import audio
from voicefleet_inference.engines.base import SynthesisRequest
from voicefleet_inference.errors import InvalidRequest
from voicefleet_inference.scheduler import EngineInfo, Scheduler
from voicefleet_inference.server.dataplane import (
    SpeechJob,
    StreamMode,
    invalid_from_validation,
    parse_json_object,
    read_body,
    require_info,
    synthesize,
)
from voicefleet_inference.server.validation import check_speakable_text, parse_priority
from voicefleet_inference.settings import Settings

__all__ = [
    "DEFAULT_VOICE",
    "MODEL_ALIASES",
    "OPENAI_VOICES",
    "SPEED_RANGE",
    "TIMESTAMP_KINDS",
    "SpeechBody",
    "accepted_voices",
    "create_router",
    "decode_speech",
    "models_list",
    "voices_list",
]

MODEL_ALIASES: Final = ("tts-1", "tts-1-hd")
"""OpenAI model names accepted as "this pod's voice", so stock OpenAI clients work."""
OPENAI_VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
)
"""OpenAI's stock voices: for a one-speaker model they all mean its only speaker."""
DEFAULT_VOICE: Final = "default"
SPEED_RANGE: Final = (0.25, 4.0)
STREAM_FORMATS: Final = ("audio", "sse")
TIMESTAMP_KINDS: Final = ("word",)
"""Values of the ``timestamps`` extension (omit it, or null, for none)."""


class SpeechBody(BaseModel):
    """The JSON body, strictly typed: a number where a string belongs is a 400."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: str
    voice: str
    instructions: str | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: str | None = None
    timestamps: str | None = None


def accepted_voices(info: EngineInfo) -> tuple[str, ...]:
    """The ``voice`` values this model accepts, in the order a 400 lists them."""
    if info.speakers:
        return (DEFAULT_VOICE, *info.speakers)
    return (DEFAULT_VOICE, info.model_name, *OPENAI_VOICES)


def _speaker(voice: str, info: EngineInfo) -> str | None:
    accepted = accepted_voices(info)
    if info.speakers and voice.isdecimal() and int(voice) < len(info.speakers):
        return info.speakers[int(voice)]  # by number: speakers are listed in id order
    if voice not in accepted:
        numbers = f" (or a speaker number 0-{len(info.speakers) - 1})" if info.speakers else ""
        raise InvalidRequest(
            f"voice {voice!r} is not available for model {info.model_name}; "
            f"accepted: {', '.join(accepted)}{numbers}",
            param="voice",
            code="unknown_voice",
        )
    if info.speakers and voice != DEFAULT_VOICE:
        return voice
    return None


def _stream_mode(stream_format: str | None, fmt: str) -> StreamMode:
    if stream_format is None:
        return "none"
    if stream_format not in STREAM_FORMATS:
        raise InvalidRequest(
            f"stream_format {stream_format!r} is not supported; use one of "
            f"{', '.join(STREAM_FORMATS)} or omit it for a whole file",
            param="stream_format",
        )
    if not audio.is_streamable(fmt):
        streamable = [f for f in audio.SUPPORTED_FORMATS if f in audio.STREAMABLE_FORMATS]
        raise InvalidRequest(
            f"response_format {fmt!r} cannot be streamed; stream one of "
            f"{', '.join(streamable)}, or omit stream_format for a whole {fmt} file",
            param="stream_format",
        )
    return "sse" if stream_format == "sse" else "audio"


def decode_speech(raw: Mapping[str, object], info: EngineInfo, max_input_chars: int) -> SpeechJob:
    """Validate an OpenAI speech request against this model; InvalidRequest names the fault."""
    unknown = sorted(set(raw) - set(SpeechBody.model_fields))
    if unknown:
        raise InvalidRequest(
            f"unrecognized request argument(s) supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    try:
        body = SpeechBody.model_validate(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    accepted_models = (info.model_name, *MODEL_ALIASES)
    if body.model not in accepted_models:
        raise InvalidRequest(
            f"model {body.model!r} is not served here; accepted: {', '.join(accepted_models)}",
            param="model",
            code="model_not_found",
        )
    if not body.input.strip():
        raise InvalidRequest("input must contain text, not only whitespace", param="input")
    if len(body.input) > max_input_chars:
        raise InvalidRequest(
            f"input is {len(body.input)} characters; at most {max_input_chars} are accepted",
            param="input",
            code="string_above_max_length",
        )
    check_speakable_text(body.input, "input")
    if body.instructions:
        raise InvalidRequest(
            f"instructions are not supported: model {info.model_name} is a fixed voice that "
            "cannot follow them; omit the parameter",
            param="instructions",
        )
    low, high = SPEED_RANGE
    if not (math.isfinite(body.speed) and low <= body.speed <= high):
        raise InvalidRequest(
            f"speed must be between {low} and {high}, got {body.speed}", param="speed"
        )
    try:
        audio.content_type(body.response_format)  # every format is checked before any work
        stream = _stream_mode(body.stream_format, body.response_format)
    except audio.UnsupportedFormat as exc:
        raise InvalidRequest(str(exc), param="response_format", code="unsupported_format") from None
    timestamps = _timestamps(body.timestamps, stream)
    speaker = _speaker(body.voice, info)
    return SpeechJob(
        request=SynthesisRequest(
            text=body.input, speaker=speaker, speed=body.speed, word_timestamps=timestamps
        ),
        fmt=body.response_format,
        stream=stream,
        timestamps=timestamps,
    )


def _timestamps(value: str | None, stream: StreamMode) -> bool:
    if value is None:
        return False
    if value not in TIMESTAMP_KINDS:
        raise InvalidRequest(
            f"timestamps {value!r} is not supported; use {', '.join(TIMESTAMP_KINDS)} or omit it",
            param="timestamps",
        )
    if stream == "audio":
        raise InvalidRequest(
            "timestamps cannot travel in a raw audio stream; use stream_format 'sse' "
            "or omit stream_format for a JSON body with the audio and its words",
            param="timestamps",
        )
    return True


def body_limit(max_input_chars: int) -> int:
    """The largest body a valid request can have: every character JSON-escaped, plus room."""
    return 12 * max_input_chars + 16 * 1024


def models_list(info: EngineInfo) -> dict[str, object]:
    """``GET /v1/models`` in OpenAI's list shape: this pod's model and its aliases.

    Each entry also carries ``voices`` (what ``voice`` accepts), an extension OpenAI
    clients ignore.
    """
    voices = list(accepted_voices(info))
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "voicefleet",
                "voices": voices,
            }
            for name in (info.model_name, *MODEL_ALIASES)
        ],
    }


def voices_list(info: EngineInfo) -> dict[str, object]:
    """``GET /v1/voices`` (our extension): the speakers of this pod's model, by name and id.

    A one-speaker model lists the names that all mean its only speaker (id 0).
    """
    if info.speakers:
        voices = [{"id": name, "speaker_id": i} for i, name in enumerate(info.speakers)]
    else:
        voices = [{"id": name, "speaker_id": 0} for name in accepted_voices(info)]
    return {
        "object": "list",
        "model": info.model_name,
        "multi_speaker": bool(info.speakers),
        "default": info.speakers[0] if info.speakers else DEFAULT_VOICE,
        "data": voices,
    }


def create_router(settings: Settings, scheduler: Scheduler) -> APIRouter:
    """The OpenAI routes, bound to this server's settings and scheduler."""
    router = APIRouter()
    limit = body_limit(settings.max_input_chars)

    @router.get("/v1/models")
    async def models() -> dict[str, object]:
        return models_list(require_info(scheduler))

    @router.get("/v1/voices")
    async def voices() -> dict[str, object]:
        return voices_list(require_info(scheduler))

    @router.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        raw = parse_json_object(await read_body(request, limit))
        job = decode_speech(raw, require_info(scheduler), settings.max_input_chars)
        priority = parse_priority(request.headers.get(PRIORITY_HEADER), settings.default_priority)
        return await synthesize(request, scheduler, job, priority)

    return router
