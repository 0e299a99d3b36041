"""Issue 10's table, row by row, against a real ``voicefleet-server`` with the real voice.

One server serves every request-level row; the signal tests start their own (they end
them), in their own process group, signalled as make, systemd or ``tini -g`` would, on the
``simulated`` engine (the same scheduler and HTTP layer, no model to load). The
schemathesis run gets its own server with a short ``--max-input-chars``, so the fuzzer's
texts stay short on a shared 2-core machine (the served schema says so, and it fuzzes
what the schema says).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serverprocs import launch, wait_ready
from test_server import (
    MODEL,
    SPEECH,
    Server,
    _code_count,
    decode_wav,
    metric,
    speech,
    start_server,
    stop_server,
)

from voicefleet_localcluster.procs import stop_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LONG = (
    "When the storm finally passed, the villagers walked down to the harbour to count the "
    "boats and mend the torn nets. They shared whatever bread and soup they had kept dry."
)
UNPUNCTUATED = (
    "the quick brown fox jumps over a lazy dog and keeps running far away across the wide "
    "green fields "
) * 4
"""About 400 characters and 500 phonemes, no punctuation: a 400-phoneme pass before."""
PEAK_RSS_BOUND_MIB = 450
"""Peak RSS allowed while the unpunctuated text is spoken (the sample voice's pod gets
512Mi). Measured on a fresh server: 421 MiB with 100-phoneme passes; one 400-phoneme pass
(the old cut) reached 558 MiB, and kept it (the onnxruntime arena)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("hardening") / "server.log")
    yield srv
    assert stop_server(srv) == 0, srv.log()
    assert "Traceback" not in srv.log(), srv.log()


def openai_error(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def message_error(resp: httpx.Response, status: int = 400) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"message"}, body
    return str(body["message"])


def raw_json(**fields: str) -> bytes:
    """A JSON object whose values are written as given (escapes and bytes unchecked)."""
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode(
        "utf-8", "surrogatepass"
    )


def speech_raw(text_literal: str, **extra: str) -> bytes:
    fields = {"model": f'"{MODEL}"', "voice": '"default"', "response_format": '"wav"'}
    return raw_json(**{**fields, "input": text_literal, **extra})


JSON = {"content-type": "application/json"}


# -- rows: text the core cannot take ----------------------------------------------------------


async def test_lone_surrogates_are_400_naming_the_field(server: Server) -> None:
    escaped = '"Hi \\ud800 there."'
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        whole = await client.post(SPEECH, content=speech_raw(escaped), headers=JSON)
        sse = await client.post(
            SPEECH, content=speech_raw(escaped, stream_format='"sse"'), headers=JSON
        )
        raw_bytes = await client.post(
            SPEECH, content=b'{"model": "tts-1", "voice": "alloy", "input": "Hi \xed\xa0\x80."}'
        )
        tts = await client.post(
            "/tts", content=raw_json(text=escaped, text_lang='"en"'), headers=JSON
        )
        tts_raw = await client.post(
            "/tts", content=b'{"text": "Hi \xed\xa0\x80.", "text_lang": "en"}', headers=JSON
        )
    for resp in (whole, sse):
        error = openai_error(resp)
        assert error["param"] == "input"
        assert "lone UTF-16 surrogate" in error["message"]
    assert "not valid UTF-8" in openai_error(raw_bytes)["message"]
    assert "text: a lone UTF-16 surrogate" in message_error(tts)
    assert "not valid UTF-8" in message_error(tts_raw)


async def test_nul_and_other_controls_are_400_not_half_spoken(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        nul = await client.post(SPEECH, json=speech("Hello\u0000world. Second sentence."))
        tts = await client.get("/tts", params={"text": "Hello\u0007world.", "text_lang": "en"})
        layout = await client.post(SPEECH, json=speech("Hello\tworld.\r\nSecond line."))
    error = openai_error(nul)
    assert error["param"] == "input"
    assert "U+0000 at character 5" in error["message"]
    assert "U+0007" in message_error(tts)
    assert layout.status_code == 200, layout.text  # tab, CR and LF are layout, spoken as spaces


async def test_huge_integers_and_deep_nesting_are_400(server: Server) -> None:
    digits = "9" * 5000
    deep = "[" * 30_000 + "]" * 30_000
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        speed = await client.post(SPEECH, content=speech_raw('"Hi."', speed=digits), headers=JSON)
        batch = await client.post(
            "/tts",
            content=raw_json(text='"Hi."', text_lang='"en"', batch_size=digits),
            headers=JSON,
        )
        batch_get = await client.get(
            "/tts", params={"text": "Hi.", "text_lang": "en", "batch_size": digits}
        )
        nested = await client.post(SPEECH, content=speech_raw('"Hi."', voice=deep), headers=JSON)
        nested_tts = await client.post("/tts", content=raw_json(text=deep), headers=JSON)
        assert (await client.get("/healthz")).status_code == 200
    assert "could not parse the JSON body" in openai_error(speed)["message"]
    assert "could not parse the JSON body" in message_error(batch)
    assert "batch_size" in message_error(batch_get)
    assert "nested too deeply" in openai_error(nested)["message"]
    assert "nested too deeply" in message_error(nested_tts)
    assert len(deep) + 100 < 64 * 1024


# -- rows: transport -------------------------------------------------------------------------


def _send_truncated(base_url: str, path: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"model": "tts-1", "inp'
        )
        time.sleep(0.2)


async def test_a_truncated_body_counts_as_499_without_a_traceback(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        before = (await client.get("/metrics")).text
        for path in (SPEECH, "/tts"):
            await asyncio.to_thread(_send_truncated, server.base_url, path)
        await asyncio.sleep(0.3)
        after = (await client.get("/metrics")).text
    assert _code_count(after, "499") == _code_count(before, "499") + 2
    assert _code_count(after, "500") == _code_count(before, "500")
    assert "Traceback" not in server.log()
    assert " ERROR " not in server.log()


REFUSAL_CPU_S = 0.2
"""The server's CPU seconds allowed for refusing the 14,000-parameter query (a check
quadratic in the parameters would spend seconds)."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` (all its threads) has used (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_many_query_parameters_are_refused_fast_with_a_short_error(server: Server) -> None:
    """A 90 KB query of 14,000 parameters, and one repeating parameters, get a short 400,
    cheaply and without holding other requests up.

    Cheap is the server's own CPU seconds across each refusal, which a loaded machine does
    not stretch as it stretches wall time (a 1 s wall bound failed once at load ~15). The
    wall times are held against a /healthz answer timed just before each: the refusal
    within 1 s plus ten such answers, a /healthz probe sent alongside within 0.5 s plus
    ten (a server that sat on the refusal, or parsed in its event loop for long, fails).
    """
    query = "&".join(f"{i}=1" for i in range(14_000))  # about 90 KB of URL
    repeated = "&".join(["text=1", "text_lang=en"] * 12)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        await client.get("/healthz")

        async def probe() -> float:
            started = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            return time.monotonic() - started

        results = []
        for url in (f"/tts?{query}", f"/tts?{repeated}"):
            baseline_s = await probe()
            cpu_before = cpu_seconds(server.proc.pid)
            started = time.monotonic()
            (status, body), probe_s = await asyncio.gather(raw_get(server.base_url, url), probe())
            elapsed = time.monotonic() - started
            cpu_s = cpu_seconds(server.proc.pid) - cpu_before
            results.append((status, body, elapsed, probe_s, baseline_s, cpu_s))
    for status, body, elapsed, probe_s, baseline_s, cpu_s in results:
        assert status == 400, body
        assert len(body) < 300, body
        assert cpu_s < REFUSAL_CPU_S, (cpu_s, body)
        assert elapsed < 1.0 + 10 * baseline_s, (elapsed, baseline_s)
        assert probe_s < 0.5 + 10 * baseline_s, (probe_s, baseline_s)
    assert "14000 query parameters given" in results[0][1]
    assert "given more than once: 'text'" in results[1][1]


async def raw_get(base_url: str, target: str) -> tuple[int, str]:
    """GET over a bare socket: httpx refuses URLs this long, a server must not fall over."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.mark.parametrize("value", ["yes", "on", "t", "no", "off", "y", "TRUE1", "4"])
async def test_streaming_mode_is_strict(server: Server, value: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        resp = await client.get(
            "/tts", params={"text": "Hi.", "text_lang": "en", "streaming_mode": value}
        )
    assert "must be 0, 1, 2, 3" in message_error(resp)


async def test_allow_lists_every_method_and_head_is_served_where_get_is(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        put = await client.put("/tts")
        options = await client.options("/tts")
        speech_put = await client.put(SPEECH)
        head_health = await client.head("/healthz")
        head_tts = await client.head("/tts", params={"text": "Hi.", "text_lang": "en"})
        head_speech = await client.head(SPEECH)
    for resp in (put, options):
        assert resp.status_code == 405
        assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
        assert set(resp.json()) == {"message"}
    assert speech_put.headers["allow"] == "POST"
    assert openai_error(speech_put, 405)["code"] == "method_not_allowed"
    assert head_health.status_code == 200
    assert head_health.content == b""
    assert head_tts.status_code == 200
    assert head_tts.headers["content-type"] == "audio/wav"
    assert head_tts.content == b""
    assert head_speech.status_code == 405
    assert head_speech.headers["allow"] == "POST"


async def test_text_lang_is_required_on_both_tts_methods(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        get = await client.get("/tts", params={"text": "Hi."})
        post = await client.post("/tts", json={"text": "Hi."})
    assert message_error(get) == "text_lang is required"
    assert message_error(post) == "text_lang is required"


# -- rows: formats ---------------------------------------------------------------------------


def decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    return np.concatenate(frames).astype(np.float32), rate


async def test_aac_is_served_on_both_routes_whole_and_streamed(server: Server) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        whole = await client.post(SPEECH, json=speech(text, response_format="aac"))
        streamed = await client.post(
            SPEECH, json=speech(text, response_format="aac", stream_format="audio")
        )
        tts = await client.get(
            "/tts", params={"text": text, "text_lang": "en", "media_type": "aac"}
        )
        opus = await client.post(SPEECH, json=speech(text, response_format="opus"))
    for resp in (whole, streamed, tts):
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "audio/aac"
        samples, rate = decode_av(resp.content)
        assert rate == 22050
        assert 1.5 < len(samples) / rate < 5.0
        assert float(np.sqrt(np.mean(samples**2))) > 0.02
    samples, rate = decode_av(opus.content)
    assert opus.headers["content-type"] == "audio/ogg; codecs=opus"
    assert 1.5 < len(samples) / rate < 5.0


# -- row: bounded memory ---------------------------------------------------------------------


def _rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024)


@pytest.mark.heavy  # a fresh server and a 20 s text: ~14 CPU-s; make test runs it
async def test_unpunctuated_text_keeps_peak_memory_bounded(tmp_path: Path) -> None:
    """The text is one sentence of 500 phonemes: it runs as 100-phoneme passes.

    A fresh server, so the peak is this request's (plus loading), as in a new pod.
    """
    srv = start_server(tmp_path / "memory.log")
    try:
        _, before = _rss_mib(srv.proc.pid)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=300) as client:
            resp = await client.post(SPEECH, json=speech(UNPUNCTUATED.strip()))
        peak, now = _rss_mib(srv.proc.pid)
    finally:
        assert stop_server(srv) == 0, srv.log()
    assert resp.status_code == 200, resp.text
    rate, samples = decode_wav(resp.content)
    assert len(samples) / rate > 18.0  # all of it spoken
    assert peak < PEAK_RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
    print(f"RSS before {before:.0f} MiB, peak {peak:.0f} MiB, after {now:.0f} MiB")
    # How much of the growth comes back is not asserted: without onnxruntime's arena most
    # came back in isolated runs (7-22% kept) but 82% stayed in one full-suite run, so
    # only the peak is a reliable bound (docs/server.md, Memory).


async def test_text_that_expands_far_beyond_its_length_is_refused(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        resp = await client.post(SPEECH, json=speech("WWW " * 30))
    error = openai_error(resp)
    assert "phonemes" in error["message"]


# -- OpenAPI, and the fuzzer against it ------------------------------------------------------


async def test_openapi_and_docs_are_served(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        doc = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert set(doc["paths"]) >= {"/v1/audio/speech", "/tts"}
    assert set(doc["paths"]["/tts"]) == {"get", "post"}
    body = doc["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    assert props["model"]["enum"][0] == MODEL
    assert props["input"]["maxLength"] == 4096
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


@pytest.mark.heavy  # its own server and up to 40 s of fuzzing: ~30 CPU-s; make test runs it
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "fuzz.log", "--max-input-chars", "40")
    try:
        proc = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{srv.base_url}/openapi.json",
                "--checks",
                "all",
                # A schema cannot say which texts are speakable ("...", or a run of digits
                # that expands past the phoneme limit): those 400s are right, not failures.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "15",
                "--max-time",
                "40",
                "--seed",
                "10",
                "--request-timeout",
                "30",
                "--phases",
                "examples,coverage,fuzzing",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            cwd=tmp_path,
        )
        summary = proc.stdout[-3000:]
        assert proc.returncode == 0, summary
        assert " passed" in summary, summary
        counts = [line for line in summary.splitlines() if "generated" in line]
        print("schemathesis:", *counts)  # the request count, for the record
    finally:
        assert stop_server(srv) == 0, srv.log()
    assert "Traceback" not in srv.log(), srv.log()


# -- rows: signals ---------------------------------------------------------------------------


def _start_in_group(log_path: Path) -> Server:
    """The server as the leader of its own process group, as ``make serve`` makes it.

    It runs the ``simulated`` engine (the real voice's cost model, run as waiting): these
    rows are about signals, drain and exit, which the scheduler and the HTTP layer handle
    the same for every engine; the real voice would add a model load and calibration to
    each of the three starts. test_server's drain test keeps the real voice.
    """
    return wait_ready(
        launch(log_path, "--engine", "simulated", "--drain-grace-s", "60", new_session=True)
    )


async def _accept(client: httpx.AsyncClient, count: int) -> list[asyncio.Future[httpx.Response]]:
    jobs: list[asyncio.Future[httpx.Response]] = []
    for i in range(count):
        if i % 2:
            jobs.append(
                asyncio.ensure_future(client.post("/tts", json={"text": LONG, "text_lang": "en"}))
            )
        else:
            jobs.append(asyncio.ensure_future(client.post(SPEECH, json=speech(LONG))))
    deadline = time.monotonic() + 15
    while True:
        text = (await client.get("/metrics")).text
        pending = metric(text, "voicefleet_queue_depth") + metric(
            text, "voicefleet_requests_in_flight"
        )
        if pending == count:
            return jobs
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.02)


async def test_a_second_sigterm_to_the_group_does_not_cut_the_drain(tmp_path: Path) -> None:
    srv = _start_in_group(tmp_path / "term.log")
    try:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=120) as client:
            jobs = await _accept(client, 4)
            pgid = os.getpgid(srv.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            await asyncio.sleep(0.1)
            os.killpg(pgid, signal.SIGTERM)  # make forwards it: the server gets it twice
            done = await asyncio.gather(*jobs)
        assert [r.status_code for r in done] == [200] * 4
        assert srv.proc.wait(timeout=60) == 0, srv.log()
        assert "drained 4 request(s)" in srv.log()
        assert "already draining" in srv.log()
    finally:
        stop_process(srv.proc, grace=30)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGQUIT])
async def test_a_forced_exit_answers_what_it_cuts_off_with_503(
    tmp_path: Path, second: signal.Signals
) -> None:
    srv = _start_in_group(tmp_path / "force.log")
    try:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=120) as client:
            jobs = await _accept(client, 4)
            pgid = os.getpgid(srv.proc.pid)
            os.killpg(pgid, signal.SIGINT)  # Ctrl-C once: drain
            await asyncio.sleep(0.2)
            os.killpg(pgid, second)  # Ctrl-C again, or SIGQUIT: now
            done = await asyncio.gather(*jobs, return_exceptions=True)
        responses = [r for r in done if isinstance(r, httpx.Response)]
        assert len(responses) == 4, done
        cut = [r for r in responses if r.status_code == 503]
        assert cut, [r.status_code for r in responses]  # at least the queued ones
        assert all(r.status_code in (200, 503) for r in responses)
        for resp in cut:
            body = resp.json()
            if "error" in body:
                assert body["error"]["code"] == "shutdown"
            else:
                assert set(body) == {"message"}
        assert srv.proc.wait(timeout=30) == 0, srv.log()
        assert "forced exit" in srv.log()
        assert "Traceback" not in srv.log()
    finally:
        stop_process(srv.proc, grace=30)
