"""`make up`'s printed call matches the README's, and it sends what the router expects."""

from __future__ import annotations

import json
from pathlib import Path

from voicefleet_localcluster import stack

REPO = Path(__file__).resolve().parents[2]


def test_printed_curl_is_the_readme_call() -> None:
    body = json.dumps(stack.speech_request("en-us-joe", "Hello from VoiceFleet."))
    assert body in (REPO / "README.md").read_text()
    line = stack.curl_command("http://127.0.1.3:8080")
    assert line.startswith("curl -s http://127.0.1.3:8080/v1/audio/speech ")
    assert f"-d '{body}'" in line


def test_speech_request_names_the_voice_and_a_speaker() -> None:
    request = stack.speech_request("ns/voice", "Hi.")
    assert request == {
        "model": "ns/voice",
        "input": "Hi.",
        "voice": "default",  # a request without `voice` is a 400 from the pod
        "response_format": "wav",
    }


def test_paths_point_into_this_checkout() -> None:
    assert (stack.CHART_DIR / "Chart.yaml").is_file()
    assert stack.LOCAL_VALUES.is_file()
    assert stack.SAMPLE_VOICE.is_file()
