"""``GET|POST /tts``: the subset of GPT-SoVITS ``api_v2.py``'s ``/tts`` this engine can honour.

Clients written for api_v2 keep working for what a fixed Piper voice can do; everything
else is a 400 that says why, never silently ignored. Each api_v2 parameter falls in one of
four groups (:data:`PARAMETERS`):

* **honoured**: ``text``, ``text_lang`` (required, as in api_v2), ``media_type`` (wav, raw,
  ogg, aac), ``streaming_mode``, ``speed_factor``, ``text_split_method`` (cut4/cut5: this
  engine splits at sentence punctuation).
* **reference audio** (voice cloning): ``ref_audio_path``, ``aux_ref_audio_paths``,
  ``prompt_text``, ``prompt_lang`` must be absent or empty. A path is never opened: this
  server never reads files named by a client.
* **throughput knobs**, accepted and validated, no effect on the audio: ``batch_size``,
  ``batch_threshold``, ``split_bucket``, ``parallel_infer``. This server batches across
  requests itself (``VOICEFLEET_MAX_BATCH_SIZE``).
* **sampling and fragment settings** of GPT-SoVITS's models (``top_k``, ``temperature``,
  ``seed``, ...): accepted only at api_v2's default value (what a client that echoes the
  defaults sends), which selects this engine's own behaviour; any other value is a 400.

Booleans are strict (``true``/``false``; ``streaming_mode`` also 0-3), where api_v2's
FastAPI would also take ``yes``, ``on`` or ``t``: a typo must not switch streaming on.

Errors are ``{"message": ...}`` like api_v2's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from voicefleet_api.priority import PRIORITY_HEADER
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
from voicefleet_inference.server.validation import (
    check_speakable_text,
    parse_priority,
    short_list,
    unique_query_params,
)
from voicefleet_inference.settings import Settings

__all__ = [
    "DEFAULT_ONLY",
    "MEDIA_TYPES",
    "PARAMETERS",
    "REFERENCE_PARAMS",
    "TtsParams",
    "create_router",
    "decode_tts",
    "model_language",
]

MEDIA_TYPES: Final = {"wav": "wav", "raw": "pcm", "ogg": "opus", "aac": "aac"}
"""api_v2 ``media_type`` → our format; ``ogg`` is Ogg Opus (api_v2 wrote Ogg Vorbis)."""
STREAMING_MODES: Final = (0, 1, 2, 3)
SPLIT_METHODS: Final = ("cut4", "cut5")
SPEED_RANGE: Final = (0.25, 4.0)
REFERENCE_PARAMS: Final = ("ref_audio_path", "aux_ref_audio_paths", "prompt_text", "prompt_lang")
THROUGHPUT_PARAMS: Final = ("batch_size", "batch_threshold", "split_bucket", "parallel_infer")
DEFAULT_ONLY: Final[Mapping[str, object]] = {
    "top_k": 15,
    "top_p": 1.0,
    "temperature": 1.0,
    "repetition_penalty": 1.35,
    "seed": -1,
    "sample_steps": 32,
    "super_sampling": False,
    "overlap_length": 2,
    "min_chunk_length": 16,
    "fragment_interval": 0.3,
}
HONOURED: Final = (
    "text",
    "text_lang",
    "media_type",
    "streaming_mode",
    "speed_factor",
    "text_split_method",
)
PARAMETERS: Final = (*HONOURED, *REFERENCE_PARAMS, *THROUGHPUT_PARAMS, *DEFAULT_ONLY)

_PIPER_NAME: Final = re.compile(r"^([a-z]{2,3})_[A-Z]{2}-")


def _strict_bool(value: object) -> object:
    """JSON ``true``/``false``, or the query strings ``true``/``false``; nothing else."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


def _strict_streaming_mode(value: object) -> object:
    """api_v2's ``streaming_mode``: a boolean, or 0 to 3 (JSON or query string)."""
    if isinstance(value, bool) or (isinstance(value, int) and value in STREAMING_MODES):
        return value
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, str) and value in ("0", "1", "2", "3"):
        return int(value)
    raise ValueError("must be 0, 1, 2, 3 (int) or true/false (bool)")


StrictBool = Annotated[bool, BeforeValidator(_strict_bool)]
StreamingMode = Annotated[bool | int, BeforeValidator(_strict_streaming_mode)]


class TtsParams(BaseModel):
    """api_v2's parameters with its defaults; lax types, since GET sends strings."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    text_lang: str | None = None
    ref_audio_path: Any = None
    aux_ref_audio_paths: Any = None
    prompt_text: Any = None
    prompt_lang: Any = None
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    text_split_method: str = "cut5"
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: StrictBool = True
    speed_factor: float = 1.0
    fragment_interval: float = 0.3
    seed: int = -1
    media_type: str = "wav"
    streaming_mode: StreamingMode = False
    parallel_infer: StrictBool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: StrictBool = False
    overlap_length: int = 2
    min_chunk_length: int = 16


def model_language(model_name: str) -> str | None:
    """The language of a Piper voice from its name (``en_US-joe-medium`` → ``en``)."""
    match = _PIPER_NAME.match(model_name)
    return match.group(1) if match else None


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == ()


def _check_text_lang(text_lang: str | None, info: EngineInfo) -> None:
    if text_lang is None or text_lang.strip() == "":
        return
    lang = model_language(info.model_name)
    value = text_lang.strip().lower()
    accepted = ("auto", lang, f"all_{lang}") if lang else None
    if accepted is not None and value not in accepted:
        raise InvalidRequest(
            f"text_lang {text_lang[:40]!r} is not spoken by model {info.model_name}; "
            f"use {lang} or auto",
            param="text_lang",
        )


def _stream_mode(value: bool | int) -> StreamMode:
    if value is True or value in (1, 2, 3):
        return "audio"
    if value is False or value == 0:
        return "none"
    raise InvalidRequest(
        "the value of streaming_mode must be 0, 1, 2, 3 (int) or true/false (bool)",
        param="streaming_mode",
    )


def decode_tts(
    raw: Mapping[str, object], info: EngineInfo, max_input_chars: int, *, strict: bool = False
) -> SpeechJob:
    """Validate api_v2 parameters against this engine; InvalidRequest names the fault.

    ``strict`` for a JSON body, whose types must be JSON's own (``"15"`` is not a number
    there); query strings are converted.
    """
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter(s): {short_list(unknown)}; supported: {', '.join(PARAMETERS)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    given_reference = [k for k in REFERENCE_PARAMS if not _is_empty(raw.get(k))]
    if given_reference:
        raise InvalidRequest(
            f"{', '.join(given_reference)}: this engine serves the fixed voice "
            f"{info.model_name} and cannot clone a voice from reference audio; omit "
            "ref_audio_path, aux_ref_audio_paths, prompt_text and prompt_lang",
            param=given_reference[0],
            code="unsupported_parameter",
        )
    try:
        params = TtsParams.model_validate(dict(raw), strict=strict)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    for name, default in DEFAULT_ONLY.items():
        if name in params.model_fields_set and getattr(params, name) != default:
            raise InvalidRequest(
                f"{name}={getattr(params, name)!r} is not supported: it tunes GPT-SoVITS's "
                f"models, which this engine does not have; omit it or send api_v2's default "
                f"{default!r}",
                param=name,
                code="unsupported_parameter",
            )
    if params.batch_size < 1:
        raise InvalidRequest("batch_size must be >= 1", param="batch_size")
    if not 0.0 <= params.batch_threshold <= 1.0:
        raise InvalidRequest("batch_threshold must be between 0 and 1", param="batch_threshold")
    text = params.text
    if text is None or not text.strip():
        raise InvalidRequest("text is required", param="text")
    if len(text) > max_input_chars:
        raise InvalidRequest(
            f"text is {len(text)} characters; at most {max_input_chars} are accepted",
            param="text",
        )
    check_speakable_text(text, "text")
    if params.text_lang is None or not params.text_lang.strip():
        raise InvalidRequest("text_lang is required", param="text_lang")
    _check_text_lang(params.text_lang, info)
    fmt = MEDIA_TYPES.get(params.media_type)
    if fmt is None:
        raise InvalidRequest(
            f"media_type: {params.media_type[:40]!r} is unknown; supported: "
            f"{', '.join(MEDIA_TYPES)}",
            param="media_type",
        )
    if params.text_split_method not in SPLIT_METHODS:
        raise InvalidRequest(
            f"text_split_method: {params.text_split_method[:40]!r} is not supported; this engine "
            f"splits text at sentence punctuation: use {' or '.join(SPLIT_METHODS)}",
            param="text_split_method",
        )
    low, high = SPEED_RANGE
    if not (math.isfinite(params.speed_factor) and low <= params.speed_factor <= high):
        raise InvalidRequest(
            f"speed_factor must be between {low} and {high}, got {params.speed_factor}",
            param="speed_factor",
        )
    return SpeechJob(
        request=SynthesisRequest(text=text, speaker=None, speed=params.speed_factor),
        fmt=fmt,
        stream=_stream_mode(params.streaming_mode),
    )


def _query_params(request: Request) -> dict[str, object]:
    return unique_query_params(request.query_params.multi_items(), len(PARAMETERS))


def _priority(request: Request, settings: Settings) -> str:
    return parse_priority(request.headers.get(PRIORITY_HEADER), settings.default_priority)


def create_router(settings: Settings, scheduler: Scheduler) -> APIRouter:
    """The ``/tts`` routes, bound to this server's settings and scheduler."""
    router = APIRouter()
    limit = 12 * settings.max_input_chars + 16 * 1024

    @router.get("/tts")
    async def tts_get(request: Request) -> Response:
        job = decode_tts(_query_params(request), require_info(scheduler), settings.max_input_chars)
        return await synthesize(request, scheduler, job, _priority(request, settings))

    @router.post("/tts")
    async def tts_post(request: Request) -> Response:
        raw = parse_json_object(await read_body(request, limit))
        job = decode_tts(raw, require_info(scheduler), settings.max_input_chars, strict=True)
        return await synthesize(request, scheduler, job, _priority(request, settings))

    return router
