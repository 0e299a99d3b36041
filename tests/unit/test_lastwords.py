"""The server's termination message: written on a failed model load, never a new error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scheduler_fakes import FakeBehaviour, FakeFactory

from voicefleet_api.termination import parse_message
from voicefleet_inference.server.lastwords import write_last_words
from voicefleet_inference.server.runner import build_service, serve
from voicefleet_inference.settings import Settings
from voicefleet_localcluster.procs import free_port


def test_failed_load_exits_1_and_leaves_one_line(tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=free_port(), engine="piper-onnx", model="m")
    service = build_service(settings, FakeFactory(FakeBehaviour(fail_load=True)))
    last_words = tmp_path / "termination-log"
    assert asyncio.run(serve(settings, service, last_words=last_words)) == 1
    text = last_words.read_text()
    assert text.count("\n") == 1
    parsed = parse_message(text)
    assert parsed is not None
    reason, detail = parsed
    assert reason == "ModelLoadFailed"
    assert "fake engine refuses to load" in detail
    assert "(engine piper-onnx)" in detail


def test_nothing_written_without_a_path_and_no_error_when_unwritable(tmp_path: Path) -> None:
    write_last_words(None, "ModelLoadFailed", "x")
    write_last_words(tmp_path / "missing-dir" / "log", "ModelLoadFailed", "x")  # logged only
    assert list(tmp_path.iterdir()) == []
