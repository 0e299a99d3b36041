"""The published schema names what the decoders accept (it is fuzzed live in integration)."""

from __future__ import annotations

import re

from voicefleet_inference import audio
from voicefleet_inference.scheduler import EngineInfo
from voicefleet_inference.server import gptsovits_routes, openai_routes
from voicefleet_inference.server.openapi import build_openapi

INFO = EngineInfo(model_name="en_US-joe-medium", sample_rate=22050, speakers=(), device="cpu")


def test_both_routes_and_every_parameter_are_described() -> None:
    doc = build_openapi(123, INFO)
    assert doc["openapi"].startswith("3.1")
    speech = doc["paths"]["/v1/audio/speech"]["post"]
    body = speech["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == set(openai_routes.SpeechBody.model_fields)
    assert body["properties"]["input"]["maxLength"] == 123
    assert body["properties"]["response_format"]["enum"] == list(audio.SUPPORTED_FORMATS)
    assert "aac" in body["properties"]["response_format"]["enum"]
    assert body["properties"]["voice"]["enum"] == list(openai_routes.accepted_voices(INFO))
    get = doc["paths"]["/tts"]["get"]
    names = [p["name"] for p in get["parameters"] if p["in"] == "query"]
    assert sorted(names) == sorted(gptsovits_routes.PARAMETERS)
    for op in (speech, get, doc["paths"]["/tts"]["post"]):
        headers = [p for p in op["parameters"] if p["in"] == "header"]
        assert [(h["name"], h["schema"]["enum"]) for h in headers] == [
            ("x-voicefleet-priority", ["critical", "standard", "sheddable"])
        ]
    required = {p["name"] for p in get["parameters"] if p["required"]}
    assert required == {"text", "text_lang"}
    post = doc["paths"]["/tts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(post["required"]) == {"text", "text_lang"}
    assert post["additionalProperties"] is False
    for op in (speech, get):
        assert {"200", "400", "413", "429", "500", "503", "504"} <= set(op["responses"])


def test_text_patterns_match_the_decoders() -> None:
    doc = build_openapi(4096, INFO)
    props = doc["paths"]["/tts"]["post"]["requestBody"]["content"]["application/json"]
    schema = props["schema"]["properties"]
    text = re.compile(schema["text"]["pattern"])
    assert text.search("Hello\n\tthere.")
    assert not text.search("   ")
    assert not text.search("Hello\x00world.")
    lang = re.compile(schema["text_lang"]["pattern"])
    assert all(lang.search(v) for v in ("en", "EN", "auto", "all_en", " en "))
    assert not any(lang.search(v) for v in ("zh", "english", ""))


def test_schema_before_the_model_loaded_still_describes_the_routes() -> None:
    doc = build_openapi(10, None)
    body = doc["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]
    assert "enum" not in body["application/json"]["schema"]["properties"]["voice"]
