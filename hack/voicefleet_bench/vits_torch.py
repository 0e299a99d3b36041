"""vits-torch on CPU, measured against piper-onnx in the same run (``make bench``).

(1) Real-time factor: the bare engines (``create_engine`` + ``synthesize_batch``, no
    HTTP), same voice, same texts, same thread count, sentence-level output, default
    noise. Rounds alternate the engines, each in a fresh subprocess, and the report
    quotes medians of per-round RTF (engine seconds / audio seconds, wall clock).
(2) Time to first audio through the real server (``build_service`` + ``serve``, one
    worker), vits-torch with windowed decoding against the same server with
    sentence-level decoding, alternating rounds; the clock stops at the first byte of
    sample data of a streamed WAV (``loadgen.time_stream``), on the four-sentence text.

Usage::

    .venv/bin/python -m voicefleet_bench.vits_torch --output docs/vits-torch-bench.md
    .venv/bin/python -m voicefleet_bench.vits_torch --smoke   # seconds, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from voicefleet_bench import loadgen
from voicefleet_bench.procs import free_port, wait_ready

RTF_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming starts after the first sentence, so long answers begin quickly and finish "
    "without stalls.",
    "A quiet, steady rain fell on the old stone bridge all night long.",
    "How are you today? I hope the weather is kind to you.",
)


def rtf_worker(engine_name: str, threads: int, reps: int) -> dict[str, float]:
    """Load one engine in this process and time ``reps`` passes over :data:`RTF_TEXTS`."""
    from voicefleet_inference.engines.base import SynthesisRequest
    from voicefleet_inference.engines.registry import BUNDLED_VOICE, create_engine

    engine = create_engine(engine_name, BUNDLED_VOICE, "cpu", threads)
    if hasattr(engine, "stream_windows"):
        engine.stream_windows = False  # sentence-level, like piper-onnx
    engine.load()
    rtfs: list[float] = []
    cpu_rtfs: list[float] = []
    for _ in range(reps):
        wall_s = cpu_s = audio_s = 0.0
        for text in RTF_TEXTS:
            t0, c0 = time.perf_counter(), time.process_time()
            chunks = list(engine.synthesize_batch([SynthesisRequest(text=text)]))
            wall_s += time.perf_counter() - t0
            cpu_s += time.process_time() - c0
            audio_s += sum(len(c.samples) for c in chunks) / engine.sample_rate
        rtfs.append(wall_s / audio_s)
        cpu_rtfs.append(cpu_s / audio_s)
    return {"rtf": statistics.median(rtfs), "cpu_rtf": statistics.median(cpu_rtfs)}


def serve_worker(mode: str, port: int, threads: int) -> None:
    """The real server with vits-torch, decoding windowed or whole sentences."""
    from voicefleet_inference.engines.base import Engine
    from voicefleet_inference.engines.registry import create_engine
    from voicefleet_inference.server.runner import build_service, serve
    from voicefleet_inference.settings import load_settings

    settings = load_settings(
        [
            *("--engine", "vits-torch", "--port", str(port), "--workers", "1"),
            *("--threads", str(threads), "--log-level", "warning"),
        ]
    )

    def factory() -> Engine:
        engine = create_engine(settings.engine, settings.model, settings.device, threads)
        engine.stream_windows = mode == "windowed"  # type: ignore[attr-defined]
        return engine

    sys.exit(asyncio.run(serve(settings, build_service(settings, factory))))


def run_rtf_round(engine: str, threads: int, reps: int) -> tuple[float, float]:
    """(wall-clock RTF, CPU-time RTF) of one fresh process."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "voicefleet_bench.vits_torch", "--rtf-worker", engine),
            *("--threads", str(threads), "--reps", str(reps)),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return float(got["rtf"]), float(got["cpu_rtf"])


def run_ttfa_round(mode: str, threads: int, reps: int) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "voicefleet_bench.vits_torch", "--serve-worker", mode),
            *("--port", str(port), "--threads", str(threads)),
        ],
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/readyz", timeout_s=300)
        asyncio.run(loadgen.time_stream(base, loadgen.FOUR_SENTENCE_TEXT))  # warm-up
        firsts, totals = [], []
        for _ in range(reps):
            timing = asyncio.run(loadgen.time_stream(base, loadgen.FOUR_SENTENCE_TEXT))
            firsts.append(timing.first_audio_s * 1000)
            totals.append(timing.total_s * 1000)
        return statistics.median(firsts), statistics.median(totals)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtf-worker")
    ap.add_argument("--serve-worker")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    if args.rtf_worker:
        print(json.dumps(rtf_worker(args.rtf_worker, args.threads, args.reps)))
        return 0
    if args.serve_worker:
        serve_worker(args.serve_worker, args.port, args.threads)
        return 0
    rounds, reps = (1, 1) if args.smoke else (args.rounds, args.reps)
    rtf: dict[str, list[tuple[float, float]]] = {"piper-onnx": [], "vits-torch": []}
    ttfa: dict[str, list[tuple[float, float]]] = {"sentence": [], "windowed": []}
    for r in range(rounds):
        order = ["piper-onnx", "vits-torch"][:: 1 if r % 2 == 0 else -1]
        for engine in order:
            rtf[engine].append(run_rtf_round(engine, args.threads, reps))
            wall, cpu = rtf[engine][-1]
            print(f"round {r + 1}: {engine} RTF {wall:.3f} (CPU {cpu:.3f})", file=sys.stderr)
        modes = ["sentence", "windowed"][:: 1 if r % 2 == 0 else -1]
        for mode in modes:
            ttfa[mode].append(run_ttfa_round(mode, args.threads, max(reps, 3)))
            print(f"round {r + 1}: TTFA {mode} {ttfa[mode][-1][0]:.0f} ms", file=sys.stderr)
    med = {k: statistics.median(w for w, _ in v) for k, v in rtf.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in rtf.items()}
    first = {k: statistics.median(f for f, _ in v) for k, v in ttfa.items()}
    total = {k: statistics.median(t for _, t in v) for k, v in ttfa.items()}
    rtf_ratio = med["vits-torch"] / med["piper-onnx"]
    cpu_ratio = cpu["vits-torch"] / cpu["piper-onnx"]
    ttfa_ratio = first["windowed"] / first["sentence"]
    load = os.getloadavg()
    lines = [
        "# vits-torch CPU benchmark",
        "",
        f"Produced by `.venv/bin/python -m voicefleet_bench.vits_torch --output <this file>` "
        f"(`make bench`) on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s) per engine, {rounds} rounds x {reps} reps, medians. "
        f"The machine was shared with other jobs (load average at the end "
        f"{load[0]:.1f}): compare the ratios, not the absolute figures.",
        "",
        "Real-time factor = engine seconds / audio seconds, wall clock and CPU time of the "
        "engine's process (on a shared machine CPU time is the steadier of the two).",
        "",
        "| engine (bare, sentence-level) | RTF, wall clock | RTF, CPU time |",
        "|---|---|---|",
        f"| piper-onnx (onnxruntime) | {med['piper-onnx']:.3f} | {cpu['piper-onnx']:.3f} |",
        f"| vits-torch | {med['vits-torch']:.3f} | {cpu['vits-torch']:.3f} |",
        f"| **ratio torch / onnx** (target <= 1.2) | **{rtf_ratio:.2f}** | **{cpu_ratio:.2f}** |",
        "",
        "Time to first audio, streamed WAV, four-sentence text, one server worker:",
        "",
        "| vits-torch decoding | first audio (ms) | whole response (ms) |",
        "|---|---|---|",
        f"| sentence-level | {first['sentence']:.0f} | {total['sentence']:.0f} |",
        f"| windowed (first window 16 frames, then doubling) | {first['windowed']:.0f} "
        f"| {total['windowed']:.0f} |",
        f"| **ratio windowed / sentence** (target <= 0.5) | **{ttfa_ratio:.2f}** | |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output and not args.smoke:
        args.output.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
