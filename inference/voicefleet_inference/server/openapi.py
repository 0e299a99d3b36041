"""The OpenAPI 3.1 document of one pod, built from the same constants the decoders use.

The routes read their raw request (so that they, not FastAPI, decide every error and its
shape), which leaves FastAPI nothing to derive a schema from; this module writes it out,
for this server's settings and, once it is loaded, its model (the accepted ``model`` and
``voice`` values depend on it). It is served at ``/openapi.json`` (``/docs`` renders it)
and fuzzed against the live server in ``make test`` (schemathesis), which is what keeps
it honest: every value it allows is accepted, and every answer matches it.

What a schema cannot say is documented in prose: text must contain something speakable
(``"..."`` is a 400), and ``flac`` cannot be streamed.
"""

from __future__ import annotations

from typing import Any, Final

from voicefleet_api.priority import PRIORITIES, PRIORITY_HEADER
from voicefleet_inference import audio
from voicefleet_inference.scheduler import EngineInfo
from voicefleet_inference.server import gptsovits_routes as tts
from voicefleet_inference.server import openai_routes as oai

__all__ = ["ERROR_STATUSES", "build_openapi"]

ERROR_STATUSES: Final = {
    "400": "Invalid or unsupported parameter; the message names it",
    "413": "Body larger than any valid request",
    "429": "Queue full; retry after Retry-After seconds",
    "500": "Engine or server failure (never a 200 with silence)",
    "503": "Draining, loading, or shut down before the request ran; Retry-After",
    "504": "Queue wait plus synthesis exceeded the request timeout",
}
_AUDIO_TYPES: Final = tuple(audio.content_type(f) for f in audio.SUPPORTED_FORMATS)
_CONTROLS: Final = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
"""What ``validation.check_speakable_text`` refuses (tab, LF and CR are allowed)."""
_NOT_BLANK: Final = r"\S"
_SPEAKABLE: Final = rf"^[^{_CONTROLS}]*[^\s{_CONTROLS}][^{_CONTROLS}]*$"
_EMPTY_ONLY_QUERY: Final = {"type": "string", "maxLength": 0}
_EMPTY_ONLY_JSON: Final = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "maxLength": 0},
        {"type": "array", "maxItems": 0},
    ]
}


def _ci(word: str) -> str:
    """A case-insensitive regex for ``word`` (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": _SPEAKABLE}


def _speech_body(max_chars: int, info: EngineInfo | None) -> dict[str, Any]:
    low, high = oai.SPEED_RANGE
    models = [*oai.MODEL_ALIASES] if info is None else [info.model_name, *oai.MODEL_ALIASES]
    voice: dict[str, Any] = {"type": "string"}
    if info is not None:
        voice["enum"] = list(oai.accepted_voices(info))
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "input", "voice"],
        "properties": {
            "model": {"type": "string", "enum": models},
            "input": {**_text(max_chars), "description": "Text to speak"},
            "voice": voice,
            "instructions": {
                "description": "Not supported: absent, null or empty",
                "anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}],
            },
            "response_format": {
                "type": "string",
                "enum": list(audio.SUPPORTED_FORMATS),
                "default": "mp3",
            },
            "speed": {"type": "number", "minimum": low, "maximum": high, "default": 1.0},
            "stream_format": {
                "description": "Omit for one whole file; flac cannot be streamed",
                "anyOf": [{"type": "null"}, {"type": "string", "enum": list(oai.STREAM_FORMATS)}],
            },
            "timestamps": {
                "description": (
                    "Extension: 'word' adds when each word is spoken: a JSON body for a "
                    "whole file, speech.audio.timestamps events with stream_format sse; "
                    "not with stream_format audio"
                ),
                "anyOf": [{"type": "null"}, {"type": "string", "enum": list(oai.TIMESTAMP_KINDS)}],
            },
        },
    }


_WORDS = {
    "type": "array",
    "description": "Seconds from the start of the audio, in spoken order",
    "items": {
        "type": "object",
        "required": ["word", "start", "end"],
        "properties": {
            "word": {"type": "string"},
            "start": {"type": "number", "minimum": 0},
            "end": {"type": "number", "minimum": 0},
        },
    },
}
_SPEECH_WITH_WORDS = {
    "type": "object",
    "description": "timestamps: 'word' without stream_format",
    "required": ["audio", "format", "duration", "words"],
    "properties": {
        "audio": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string", "enum": list(audio.SUPPORTED_FORMATS)},
        "duration": {"type": "number", "minimum": 0, "description": "Seconds of audio"},
        "words": _WORDS,
    },
}


def _tts_fields(max_chars: int, info: EngineInfo | None, *, query: bool) -> dict[str, Any]:
    """Each api_v2 parameter's schema; ``query`` for GET (strings on the wire)."""
    low, high = tts.SPEED_RANGE
    lang = tts.model_language(info.model_name) if info is not None else None
    text_lang: dict[str, Any] = {"type": "string", "pattern": _NOT_BLANK}
    if lang is not None:
        choices = "|".join(_ci(w) for w in ("auto", lang, f"all_{lang}"))
        text_lang = {"type": "string", "pattern": rf"^\s*({choices})\s*$"}
    boolean = {"type": "boolean"}
    fields: dict[str, Any] = {
        "text": _text(max_chars),
        "text_lang": {**text_lang, "description": "auto, or the voice's language"},
        "media_type": {"type": "string", "enum": list(tts.MEDIA_TYPES), "default": "wav"},
        "streaming_mode": {
            "anyOf": [boolean, {"type": "integer", "enum": list(tts.STREAMING_MODES)}],
            "default": False,
        },
        "speed_factor": {"type": "number", "minimum": low, "maximum": high, "default": 1.0},
        "text_split_method": {"type": "string", "enum": list(tts.SPLIT_METHODS)},
        "batch_size": {"type": "integer", "minimum": 1, "default": 1},
        "batch_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.75},
        "split_bucket": {**boolean, "default": True},
        "parallel_infer": {**boolean, "default": True},
    }
    for name in tts.REFERENCE_PARAMS:
        fields[name] = {
            **(_EMPTY_ONLY_QUERY if query else _EMPTY_ONLY_JSON),
            "description": "Voice cloning is not supported: absent or empty",
        }
    for name, default in tts.DEFAULT_ONLY.items():
        kind = {bool: "boolean", int: "integer", float: "number"}[type(default)]
        fields[name] = {
            "type": kind,
            "enum": [default],
            "description": "GPT-SoVITS model knob: only api_v2's default is accepted",
        }
    missing = set(tts.PARAMETERS) ^ set(fields)
    if missing:  # a parameter added to the route must be added here too
        raise RuntimeError(f"OpenAPI /tts parameters out of date: {sorted(missing)}")
    return fields


def _error_schema(openai: bool) -> dict[str, Any]:
    if not openai:
        return {
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
        }
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"},
                },
            }
        },
    }


def _responses(openai: bool) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    content: dict[str, Any] = {t: {"schema": binary} for t in _AUDIO_TYPES}
    if openai:  # stream_format=sse: speech.audio.delta (+ .timestamps) events, then .done
        content["application/json"] = {"schema": _SPEECH_WITH_WORDS}
        content["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string", "contentMediaType": "application/json"}},
            }
        }
    responses: dict[str, Any] = {
        "200": {
            "description": "Audio in the requested format (streamed when asked to)",
            "content": content,
        }
    }
    error = {"application/json": {"schema": _error_schema(openai)}}
    for status, description in ERROR_STATUSES.items():
        responses[status] = {"description": description, "content": error}
    return responses


_PRIORITY_PARAMETER: dict[str, Any] = {
    "name": PRIORITY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Served before lower classes; when the pod is saturated, sheddable requests are "
        "refused first (429 + Retry-After), then standard. Default: the voice's default "
        "priority (--default-priority)"
    ),
    "schema": {"type": "string", "enum": list(PRIORITIES)},
}


def build_openapi(
    max_input_chars: int, info: EngineInfo | None, version: str = "0.1.0"
) -> dict[str, Any]:
    """The document; pure, so a unit test can check it against the decoders' constants."""
    query_fields = _tts_fields(max_input_chars, info, query=True)
    json_fields = _tts_fields(max_input_chars, info, query=False)
    parameters = [
        {"name": name, "in": "query", "required": name in ("text", "text_lang"), "schema": s}
        for name, s in query_fields.items()
    ]
    parameters.append(_PRIORITY_PARAMETER)
    tts_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["text", "text_lang"],
        "properties": json_fields,
    }
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    health_responses = {
        code: {"description": d, "content": {"application/json": {"schema": health}}}
        for code, d in (("200", "Yes"), ("503", "No; status says why"))
    }
    model = info.model_name if info is not None else "(loading)"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VoiceFleet inference server",
            "version": version,
            "description": f"One text-to-speech voice ({model}) per pod. See docs/server.md.",
        },
        "paths": {
            "/v1/audio/speech": {
                "post": {
                    "operationId": "createSpeech",
                    "summary": "OpenAI-compatible text to speech",
                    "parameters": [_PRIORITY_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _speech_body(max_input_chars, info)}
                        },
                    },
                    "responses": _responses(openai=True),
                }
            },
            "/tts": {
                "get": {
                    "operationId": "ttsGet",
                    "summary": "GPT-SoVITS api_v2 /tts subset (query parameters)",
                    "parameters": parameters,
                    "responses": _responses(openai=False),
                },
                "post": {
                    "operationId": "ttsPost",
                    "summary": "GPT-SoVITS api_v2 /tts subset (JSON body)",
                    "parameters": [_PRIORITY_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": tts_body}},
                    },
                    "responses": _responses(openai=False),
                },
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": health_responses}},
            "/readyz": {"get": {"operationId": "readyz", "responses": health_responses}},
        },
    }
