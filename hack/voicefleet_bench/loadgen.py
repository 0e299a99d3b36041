"""Load generation and measurement for the serving benchmark (:mod:`voicefleet_bench.serving`).

Everything here talks to a server on 127.0.0.1 over HTTP and is bounded: a fixed
number of requests, per-request timeouts, and a ``/healthz`` prober that stops when
the load stops. Nothing here knows which server it is measuring; both the seed-pattern
baseline and ``voicefleet-server`` get exactly the same requests.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

MODEL_NAME = "en_US-joe-medium"
SPEECH_PATH = "/v1/audio/speech"
HEALTH_PATH = "/healthz"

# The fixed text list (same for every configuration and every round). Three lengths,
# each a single sentence, so that one request is one engine pass for every server.
SHORT_TEXTS: tuple[str, ...] = (
    "Good morning.",
    "The train is late.",
    "Please call me back.",
    "It is raining again.",
)
MEDIUM_TEXTS: tuple[str, ...] = (
    "The quarterly report shows a steady rise in sales across the northern region.",
    "Remember to water the plants on the balcony before you leave for the weekend.",
    "Our support team answers most questions within one business day of receiving them.",
    "The museum opens at nine and the guided tour of the east wing starts at ten.",
)
LONG_TEXTS: tuple[str, ...] = (
    "When the storm finally passed, the villagers walked down to the harbour to count the "
    "boats, mend the torn nets, and share whatever bread and soup they had managed to keep "
    "dry through the long and frightening night.",
    "A good benchmark compares like with like, runs long enough to average out the noise of "
    "a busy machine, reports the median of several rounds, and says plainly where the "
    "measured figures fall short of the targets that were set in advance.",
    "The engineer explained that the server hands every request to a bounded queue, that a "
    "single worker thread owns the model, and that the event loop therefore stays free to "
    "answer health checks in a few milliseconds however busy the model is.",
    "After three weeks of careful testing in the laboratory, the new battery design held its "
    "charge for almost twice as long as the old one, although it still took nearly an hour "
    "to recharge from empty.",
)

# The streaming time-to-first-audio text: four sentences of similar length.
FOUR_SENTENCE_TEXT = (
    "The first sentence of this paragraph is short and plain. "
    "The second sentence carries on with a little more detail about the weather today. "
    "The third sentence says that the afternoon will be cloudy with a chance of light rain. "
    "The fourth and final sentence wishes everyone listening a pleasant and restful evening."
)


def workload(n_requests: int, seed: int = 20261124) -> list[str]:
    """The request texts, in order: ``n_requests`` drawn evenly from the three lengths.

    The order is a fixed shuffle (seeded), so every configuration and every round sees
    the same texts in the same order.
    """
    pool = [*SHORT_TEXTS, *MEDIUM_TEXTS, *LONG_TEXTS]
    texts = [pool[i % len(pool)] for i in range(n_requests)]
    random.Random(seed).shuffle(texts)
    return texts


def speech_body(text: str, *, stream: bool = False) -> dict[str, object]:
    """The JSON body for ``POST /v1/audio/speech`` (OpenAI shape, WAV output)."""
    body: dict[str, object] = {
        "model": MODEL_NAME,
        "input": text,
        "voice": "default",
        "response_format": "wav",
    }
    if stream:
        body["stream_format"] = "audio"
    return body


# --- WAV parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What the benchmark needs from a WAV body: where the samples start and how long it is."""

    data_offset: int
    sample_rate: int
    bytes_per_frame: int
    audio_seconds: float


def parse_wav(body: bytes) -> WavInfo:
    """Parse a RIFF/WAVE body; the duration comes from the bytes actually received.

    Streaming WAV responses often carry placeholder sizes in their headers, so the
    ``data`` chunk's declared size is ignored in favour of the body's real length.
    Raises ``ValueError`` if the body is not a WAV.
    """
    if len(body) < 12 or body[:4] != b"RIFF" or body[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE body")
    pos = 12
    sample_rate = 0
    bytes_per_frame = 0
    while pos + 8 <= len(body):
        chunk_id = body[pos : pos + 4]
        (size,) = struct.unpack("<I", body[pos + 4 : pos + 8])
        if chunk_id == b"fmt ":
            _fmt, channels, sample_rate, _byte_rate, block_align, _bits = struct.unpack(
                "<HHIIHH", body[pos + 8 : pos + 24]
            )
            bytes_per_frame = block_align or channels * 2
        elif chunk_id == b"data":
            if sample_rate <= 0 or bytes_per_frame <= 0:
                raise ValueError("WAV data chunk before a valid fmt chunk")
            data_offset = pos + 8
            frames = (len(body) - data_offset) // bytes_per_frame
            return WavInfo(data_offset, sample_rate, bytes_per_frame, frames / sample_rate)
        pos += 8 + size + (size & 1)
    raise ValueError("WAV body has no data chunk")


def wav_data_offset(prefix: bytes) -> int | None:
    """Offset of the first sample byte once ``prefix`` holds the whole header, else ``None``."""
    try:
        return parse_wav(prefix).data_offset
    except (ValueError, struct.error):
        return None


# --- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    """The median, ignoring NaNs; NaN when nothing is left."""
    return percentile([v for v in values if not math.isnan(v)], 50.0)


# --- the /healthz prober ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """One ``GET /healthz``: when it was sent (monotonic), how long it took, whether 200."""

    sent_at: float
    latency_s: float
    ok: bool


class HealthProber:
    """Sends ``GET /healthz`` every ``interval_s`` on a fixed schedule, from its own thread.

    Open loop: a probe is sent on schedule whether or not earlier ones have answered
    (each on a new TCP connection, as a kubelet does), so a server that blocks gets as
    many probes as one that does not, and the slow periods are sampled as densely as
    the fast ones (no coordinated omission). The prober runs its own asyncio loop on its
    own thread, so the load generator's loop never delays a probe.
    """

    def __init__(self, host: str, port: int, interval_s: float = 0.05, timeout_s: float = 10.0):
        self._host = host
        self._port = port
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="healthz-prober", daemon=True)
        self.probes: list[Probe] = []

    def start(self) -> None:
        """Start probing in the background."""
        self._thread.start()

    def stop(self) -> list[Probe]:
        """Stop sending, wait for probes in flight (bounded by the timeout), return all."""
        self._stop.set()
        self._thread.join(self._timeout_s + 5.0)
        return sorted(self.probes, key=lambda p: p.sent_at)

    async def _probe_once(self) -> None:
        sent = time.monotonic()
        ok = False
        request = (
            f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_connection(self._host, self._port)
                writer.write(request)
                await writer.drain()
                response = await reader.read()
                ok = response.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
        except (OSError, TimeoutError):
            ok = False
        finally:
            if writer is not None:
                writer.close()
        self.probes.append(Probe(sent_at=sent, latency_s=time.monotonic() - sent, ok=ok))

    async def _schedule(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while not self._stop.is_set():
            task = asyncio.create_task(self._probe_once())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += self._interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _main(self) -> None:
        asyncio.run(self._schedule())


# --- the closed-loop load ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One speech request: text, timings (monotonic), HTTP status, audio length received."""

    text: str
    started_at: float
    latency_s: float
    status: int
    audio_seconds: float
    error: str = ""


@dataclass(slots=True)
class LoadResult:
    """A whole load run: every request, every probe, and the saturation window."""

    requests: list[RequestResult] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    started_at: float = 0.0
    saturated_until: float = 0.0
    finished_at: float = 0.0

    @property
    def ok(self) -> list[RequestResult]:
        """The requests that returned 200 with audio."""
        return [r for r in self.requests if r.status == 200 and not r.error]

    @property
    def wall_s(self) -> float:
        """From the first request sent to the last response received."""
        return self.finished_at - self.started_at

    @property
    def saturated_probes(self) -> list[Probe]:
        """Probes sent while every client still had a request to send or in flight."""
        return [p for p in self.probes if self.started_at <= p.sent_at <= self.saturated_until]


async def _one_request(client: httpx.AsyncClient, text: str, timeout_s: float) -> RequestResult:
    started = time.monotonic()
    try:
        resp = await client.post(SPEECH_PATH, json=speech_body(text), timeout=timeout_s)
        body = resp.content
        latency = time.monotonic() - started
        if resp.status_code != 200:
            return RequestResult(text, started, latency, resp.status_code, 0.0, body[:200].decode())
        return RequestResult(text, started, latency, 200, parse_wav(body).audio_seconds)
    except (httpx.HTTPError, ValueError) as exc:
        latency = time.monotonic() - started
        return RequestResult(text, started, latency, 0, 0.0, f"{type(exc).__name__}: {exc}")


async def run_load(
    base_url: str,
    texts: Sequence[str],
    *,
    concurrency: int,
    request_timeout_s: float,
    probe_interval_s: float = 0.05,
) -> LoadResult:
    """Send ``texts`` with ``concurrency`` closed-loop clients while probing ``/healthz``.

    Each client takes the next text from a shared list, waits for the whole response,
    and takes the next; the run ends when the list is empty and every response is in.
    ``saturated_until`` is when the last text was taken: until then all clients were busy.
    """
    url = httpx.URL(base_url)
    host = url.host
    port = url.port or 80
    pending = list(reversed(texts))
    result = LoadResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    prober = HealthProber(host, port, interval_s=probe_interval_s)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

        async def worker() -> None:
            while pending:
                text = pending.pop()
                if not pending:
                    result.saturated_until = time.monotonic()
                result.requests.append(await _one_request(client, text, request_timeout_s))

        result.started_at = time.monotonic()
        prober.start()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            result.finished_at = time.monotonic()
            result.probes = prober.stop()
    if result.saturated_until == 0.0:
        result.saturated_until = result.finished_at
    return result


async def warm_up(base_url: str, texts: Sequence[str], *, concurrency: int) -> None:
    """Untimed requests (each text once, ``concurrency`` at a time) before measuring."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def one(text: str) -> None:
            async with sem:
                resp = await client.post(SPEECH_PATH, json=speech_body(text), timeout=120.0)
                if resp.status_code != 200:
                    raise RuntimeError(f"warm-up request failed: {resp.status_code} {resp.text}")

        await asyncio.gather(*(one(t) for t in texts))


# --- time to first audio -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """One streaming request: seconds to the first audio byte and to the end of the body."""

    first_audio_s: float
    total_s: float
    audio_seconds: float
    chunks: int


async def time_stream(base_url: str, text: str, *, timeout_s: float = 120.0) -> StreamTiming:
    """``POST`` ``text`` with ``stream_format=audio``; time the first byte past the WAV header.

    A streaming server may send the WAV header before any audio is synthesized, so the
    clock stops at the first byte of sample data, not at the first byte of the body.
    """
    async with httpx.AsyncClient(base_url=base_url) as client:
        started = time.monotonic()
        first_audio: float | None = None
        buf = bytearray()
        chunks = 0
        async with client.stream(
            "POST", SPEECH_PATH, json=speech_body(text, stream=True), timeout=timeout_s
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise RuntimeError(f"streaming request failed: {resp.status_code} {resp.text}")
            async for chunk in resp.aiter_raw():
                if not chunk:
                    continue
                chunks += 1
                buf.extend(chunk)
                if first_audio is None:
                    offset = wav_data_offset(bytes(buf))
                    if offset is not None and len(buf) > offset:
                        first_audio = time.monotonic() - started
        total = time.monotonic() - started
    info = parse_wav(bytes(buf))
    return StreamTiming(
        first_audio_s=first_audio if first_audio is not None else total,
        total_s=total,
        audio_seconds=info.audio_seconds,
        chunks=chunks,
    )


async def time_full(base_url: str, text: str, *, timeout_s: float = 120.0) -> tuple[float, float]:
    """``POST`` ``text`` without streaming; return (seconds to the whole body, audio seconds)."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        started = time.monotonic()
        resp = await client.post(SPEECH_PATH, json=speech_body(text), timeout=timeout_s)
        body = resp.content
        elapsed = time.monotonic() - started
    if resp.status_code != 200:
        raise RuntimeError(f"full request failed: {resp.status_code} {resp.text}")
    return elapsed, parse_wav(body).audio_seconds


def series_value(text: str, series: str) -> float:
    """The value of one exact series (``name{labels}``, as the page spells it) in
    Prometheus text; 0 when the page does not have it (a counter never incremented)."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def histogram_sum_count(base_url: str, name: str) -> tuple[float, float] | None:
    """``(sum, count)`` of Prometheus histogram ``name`` (all label sets) from ``/metrics``.

    ``None`` when the endpoint or the metric is missing (the seed pattern has neither).
    """
    try:
        resp = httpx.get(f"{base_url}/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    total = 0.0
    count = 0.0
    seen = False
    for line in resp.text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        series = metric.split("{", 1)[0]
        try:
            if series == f"{name}_sum":
                total += float(value)
                seen = True
            elif series == f"{name}_count":
                count += float(value)
                seen = True
        except ValueError:
            continue
    return (total, count) if seen else None
