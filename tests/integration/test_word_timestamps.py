"""Word timestamps: from both real engines' own durations, checked against the audio itself.

The accuracy check needs no reference aligner: the bundled voice pauses at commas and
sentence ends, so the audio's own energy envelope shows where speech is. Every word's
span must hold speech, every punctuation pause between two words must be quiet, and no
long silence the envelope finds may lie inside a word. Then the timings must add up:
in order, inside the audio, the last word ending at the voice's own trailing pause.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from routerprocs import running_router
from serverprocs import ServerProc, launch, start_simulated, stop, wait_ready

from voicefleet_inference.engines.base import AudioChunk, Engine, SynthesisRequest
from voicefleet_inference.engines.registry import BUNDLED_VOICE, create_engine
from voicefleet_inference.phonemize import display_word

PAUSES = "Yes, absolutely. Tomorrow morning, we leave early; bring coffee."
"""Four punctuation pauses (comma, full stop, comma, semicolon) between words."""
UNPUNCTUATED = (
    "this sentence has no punctuation at all and goes on long enough that the phoneme "
    "budget must cut it into several passes while every word keeps its place"
)
FRAME_S = 0.01
WORD_FLOOR_DB = -30.0
"""Every word's loudest 10 ms is within 30 dB of the clip's peak: the quietest measured
was a reduced "and" at -21 dB (40 clips, both engines); silence is below -45 dB."""
PAUSE_CEILING_DB = -30.0
"""A punctuation pause's median 10 ms frame is 30 dB below the peak (measured: -35 at best)."""
SILENCE_DB = -45.0
LONG_SILENCE_S = 0.12
"""Quiet runs this long are pauses, not a stop consonant's closure; none may be in a word."""
EDGE_SLACK_S = 0.05
"""How far a pause may reach into a word: a word-initial stop (the "b" of "bring") begins
with a silent closure that the envelope counts as pause, and edges fall on 10 ms frames.
32 ms was seen once in a full run after a semicolon (30 ms had been the bound)."""
MAX_TRAILING_S = 0.3
"""Audio after the last word: the end-of-sentence id's frames and the decoder's decay."""


@dataclass(frozen=True)
class Timed:
    word: str
    start: float
    end: float


def absolute(chunks: list[AudioChunk], sample_rate: int) -> list[Timed]:
    out: list[Timed] = []
    offset = 0
    for chunk in chunks:
        out.extend(
            Timed(w.word, offset / sample_rate + w.start, offset / sample_rate + w.end)
            for w in chunk.words
        )
        offset += len(chunk.samples)
    return out


def envelope_db(samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float64]:
    hop = int(FRAME_S * sample_rate)
    frames = len(samples) // hop
    power = np.square(samples[: frames * hop].astype(np.float64)).reshape(frames, hop)
    rms = np.sqrt(power.mean(axis=1))
    return np.asarray(20 * np.log10(rms / rms.max() + 1e-9), dtype=np.float64)


def frames_of(db: npt.NDArray[np.float64], start: float, end: float) -> npt.NDArray[np.float64]:
    return db[int(start / FRAME_S) : max(int(start / FRAME_S) + 1, int(end / FRAME_S))]


def check_adds_up(words: list[Timed], text: str, duration: float) -> None:
    expected = [w for w in (display_word(t) for t in text.split()) if w]
    assert [w.word for w in words] == expected
    for before, after in itertools.pairwise(words):
        assert after.start >= before.end - 1e-6, (before, after)
    for w in words:
        assert 0.0 <= w.start < w.end <= duration, w
    trailing = duration - words[-1].end
    assert 0.0 <= trailing <= MAX_TRAILING_S, trailing


def check_against_envelope(
    words: list[Timed], text: str, samples: npt.NDArray[np.float32], sample_rate: int
) -> None:
    db = envelope_db(samples, sample_rate)
    for w in words:
        assert frames_of(db, w.start, w.end).max() > WORD_FLOOR_DB, f"no speech in {w}"
    tokens = text.split()
    for token, before, after in zip(tokens, words, words[1:], strict=False):
        if token[-1] in ",.;":
            gap = frames_of(db, before.end, after.start)
            assert after.start - before.end >= 0.05, (before, after)
            assert float(np.median(gap)) < PAUSE_CEILING_DB, f"speech in the pause after {token}"
    quiet = np.concatenate([[False], db < SILENCE_DB, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        start, end = lo * FRAME_S, hi * FRAME_S
        if end - start < LONG_SILENCE_S or end <= words[0].start or start >= words[-1].end:
            continue
        for w in words:
            inside = min(end, w.end) - max(start, w.start)
            where = f"a {end - start:.2f}s silence at {start:.2f}s"
            assert inside <= EDGE_SLACK_S, f"{where} reaches {inside:.3f}s into {w}"
    after_last = db[int((words[-1].end + 0.05) / FRAME_S) :]
    assert after_last.size == 0 or after_last.max() < SILENCE_DB, "speech after the last word"


@pytest.fixture(scope="module", params=["piper-onnx", "vits-torch"])
def engine(request: pytest.FixtureRequest, calibration_cache: Path) -> Engine:
    created = create_engine(
        str(request.param), BUNDLED_VOICE, "cpu", 1, calibration_cache=calibration_cache
    )
    created.load()
    return created


def speak(engine: Engine, text: str, speed: float = 1.0) -> tuple[list[Timed], np.ndarray]:
    chunks = list(
        engine.synthesize_batch([SynthesisRequest(text, speed=speed, word_timestamps=True)])
    )
    samples = np.concatenate([c.samples for c in chunks])
    return absolute(chunks, engine.sample_rate), samples


@pytest.mark.parametrize("speed", [1.0, 1.6])
def test_word_boundaries_match_the_audio_energy(engine: Engine, speed: float) -> None:
    words, samples = speak(engine, PAUSES, speed)
    duration = len(samples) / engine.sample_rate
    check_adds_up(words, PAUSES, duration)
    check_against_envelope(words, PAUSES, samples, engine.sample_rate)


def test_speed_scales_the_timings(engine: Engine) -> None:
    slow, _ = speak(engine, PAUSES, 1.0)
    fast, _ = speak(engine, PAUSES, 2.0)
    ratio = fast[-1].end / slow[-1].end
    assert 0.4 < ratio < 0.65, ratio  # durations are random (noise_w), so not exactly 0.5


def test_phoneme_budget_splits_keep_every_word_in_place(engine: Engine) -> None:
    from voicefleet_inference.phonemize import Phonemizer

    assert len(Phonemizer("en-us").sentences(UNPUNCTUATED)) >= 2  # the case under test
    words, samples = speak(engine, UNPUNCTUATED)
    check_adds_up(words, UNPUNCTUATED, len(samples) / engine.sample_rate)
    db = envelope_db(samples, engine.sample_rate)
    for w in words:
        assert frames_of(db, w.start, w.end).max() > WORD_FLOOR_DB, f"no speech in {w}"


def test_timestamps_off_means_no_words_and_the_same_units(engine: Engine) -> None:
    chunks = list(engine.synthesize_batch([SynthesisRequest(PAUSES)]))
    assert all(c.words == () for c in chunks)


# -- through the HTTP server -------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    log = tmp_path_factory.mktemp("ts") / "server.log"
    server = wait_ready(launch(log, "--engine", "piper-onnx"))
    yield server
    assert stop(server) == 0, server.log()


def body(text: str, model: str = "tts-1", **extra: object) -> dict[str, object]:
    return {"model": model, "input": text, "voice": "alloy", **extra}


def sse_events(response: httpx.Response) -> list[dict[str, object]]:
    events = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            events.append(json.loads(block.removeprefix("data: ")))
    return events


def test_whole_file_is_json_with_audio_and_words(piper_server: ServerProc) -> None:
    r = httpx.post(
        f"{piper_server.base_url}/v1/audio/speech",
        json=body(PAUSES, response_format="wav", timestamps="word"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    assert payload["format"] == "wav"
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload["audio"])), dtype="float32")
    duration = len(samples) / rate
    assert payload["duration"] == pytest.approx(duration, abs=1e-3)
    words = [Timed(w["word"], w["start"], w["end"]) for w in payload["words"]]
    check_adds_up(words, PAUSES, duration)
    check_against_envelope(words, PAUSES, samples.astype(np.float32), rate)


def test_sse_carries_a_timestamps_event_per_sentence(piper_server: ServerProc) -> None:
    r = httpx.post(
        f"{piper_server.base_url}/v1/audio/speech",
        json=body(PAUSES, response_format="pcm", stream_format="sse", timestamps="word"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done"
    assert kinds.count("speech.audio.timestamps") == 2  # two sentences, one chunk each
    # Each timestamps event follows the delta of the chunk that starts its words.
    assert kinds[kinds.index("speech.audio.timestamps") - 1] == "speech.audio.delta"
    pcm = b"".join(
        base64.b64decode(str(e["audio"])) for e in events if e["type"] == "speech.audio.delta"
    )
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    words = [
        Timed(str(w["word"]), float(w["start"]), float(w["end"]))
        for e in events
        if e["type"] == "speech.audio.timestamps"
        for w in e["words"]  # type: ignore[attr-defined]
    ]
    check_adds_up(words, PAUSES, len(samples) / 22050)
    check_against_envelope(words, PAUSES, samples, 22050)


def test_without_timestamps_the_openai_answer_is_unchanged(piper_server: ServerProc) -> None:
    r = httpx.post(
        f"{piper_server.base_url}/v1/audio/speech",
        json=body("Hello there.", response_format="wav"),
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"timestamps": "phoneme"}, "use word"),
        ({"timestamps": "word", "stream_format": "audio"}, "raw audio stream"),
    ],
)
def test_bad_timestamps_requests_are_400_naming_the_field(
    piper_server: ServerProc, extra: dict[str, object], fragment: str
) -> None:
    r = httpx.post(
        f"{piper_server.base_url}/v1/audio/speech",
        json=body("Hello.", response_format="wav", **extra),
        timeout=30,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "timestamps"
    assert fragment in error["message"]


def test_simulated_engine_times_words_on_its_own_timeline(tmp_path: Path) -> None:
    server = start_simulated(tmp_path / "sim.log", speed_factor=50.0)
    try:
        r = httpx.post(
            f"{server.base_url}/v1/audio/speech",
            json=body(PAUSES, response_format="wav", timestamps="word"),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        payload = r.json()
        words = [Timed(w["word"], w["start"], w["end"]) for w in payload["words"]]
        # Its model: 0.057 s of audio per character, the sentences back to back.
        check_adds_up(words, PAUSES, payload["duration"])
        assert words[0] == Timed("Yes", 0.0, round(3 * 0.057, 3))
    finally:
        assert stop(server) == 0, server.log()


# -- through the router --------------------------------------------------------------------


def _router_settings(server: ServerProc) -> object:
    from voicefleet_inference.router.settings import RouterSettings

    return RouterSettings(
        static_upstreams=[f"joe={server.base_url}#en_US-joe-medium"],  # type: ignore[arg-type]
        poll_interval_s=0.1,  # type: ignore[arg-type]
    )


async def test_the_router_passes_timestamps_to_the_openai_sdk_and_curl(
    piper_server: ServerProc,
) -> None:
    from openai import AsyncOpenAI

    async with running_router(_router_settings(piper_server)) as (_, url):  # type: ignore[arg-type]
        client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = await client.audio.speech.with_raw_response.create(
            model="joe",
            voice="alloy",
            input=PAUSES,
            response_format="wav",
            extra_body={"timestamps": "word"},
        )
        payload = raw.http_response.json()
        curl = await asyncio.to_thread(
            subprocess.run,
            [
                "curl",
                "-sS",
                "-N",
                f"{url}/v1/audio/speech",
                "-H",
                "content-type: application/json",
                "-H",
                "x-voicefleet-priority: critical",
                "-d",
                json.dumps(
                    body(
                        PAUSES,
                        model="joe",
                        response_format="pcm",
                        stream_format="sse",
                        timestamps="word",
                    )
                ),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        bad = await asyncio.to_thread(
            subprocess.run,
            [
                "curl",
                "-sS",
                f"{url}/v1/audio/speech",
                "-H",
                "content-type: application/json",
                "-H",
                "x-voicefleet-priority: urgent",
                "-d",
                json.dumps(body("Hello.", model="joe", response_format="wav")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(payload["audio"])), dtype="float32")
    words = [Timed(w["word"], w["start"], w["end"]) for w in payload["words"]]
    check_adds_up(words, PAUSES, len(samples) / rate)
    check_against_envelope(words, PAUSES, samples.astype(np.float32), rate)
    events = [
        json.loads(block.removeprefix("data: "))
        for block in curl.stdout.split("\n\n")
        if block.startswith("data: ")
    ]
    streamed = [
        Timed(w["word"], w["start"], w["end"])
        for e in events
        if e["type"] == "speech.audio.timestamps"
        for w in e["words"]
    ]
    pcm = b"".join(
        base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"
    )
    check_adds_up(streamed, PAUSES, len(pcm) / 2 / 22050)
    assert events[-1]["type"] == "speech.audio.done"
    # The priority header reaches the pod: its 400 names the accepted priorities.
    error = json.loads(bad.stdout)["error"]
    assert error["param"] == "x-voicefleet-priority"
    assert "critical, standard, sheddable" in error["message"]
