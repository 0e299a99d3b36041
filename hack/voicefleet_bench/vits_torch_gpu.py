"""vits-torch GPU throughput: audio-seconds per second against batch size and precision.

One short, self-contained run for a GPU machine (it has its own time limit, ``--budget-s``,
and stops starting new measurements when it is spent). For each precision (float32,
float16, bfloat16 under autocast) and batch size (1, 2, 4, ..., 64) it runs ``reps``
batched passes of the engine's own bucketed ``synthesize_batch`` (sentence-level,
default noise) over a fixed mix of sentences, after a warm-up pass, with
``torch.cuda.synchronize`` around the clock, and reports the median throughput in
audio seconds per wall second. Reduced precision is also checked for quality: SNR of
its audio against float32 with both noise scales at 0 (the same check the CPU tests do
against onnxruntime).

Usage (the exact command; writes JSON and Markdown)::

    timeout 540 .venv/bin/python -m voicefleet_bench.vits_torch_gpu --device cuda \\
        --budget-s 420 --output docs/vits-torch-gpu.md

Target (issue 13): >= 1000x real time on one H100 at batch >= 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming starts after the first sentence, so long answers begin quickly.",
    "How are you today?",
    "A quiet, steady rain fell on the old stone bridge all night long.",
    "Please call back before noon on Tuesday.",
    "Autoscaling follows the queued work, not the request count.",
    "Thank you very much for your patience.",
    "Every voice agent wants the first audio as early as possible.",
)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
PRECISIONS = ("float32", "float16", "bfloat16")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--output", type=Path)
    ap.add_argument("--max-batch", type=int, default=max(BATCHES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    args = ap.parse_args()
    batches = [b for b in BATCHES if b <= args.max_batch]
    precisions = [p for p in PRECISIONS if p in args.precisions.split(",")]
    started = time.monotonic()

    import torch

    from voicefleet_inference.engines.base import SynthesisRequest
    from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model
    from voicefleet_inference.engines.vits_torch.engine import VitsTorchEngine

    name, onnx_path, json_path = resolve_piper_model(BUNDLED_VOICE)
    on_gpu = args.device.startswith("cuda")
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if on_gpu else "cpu (smoke)"

    def sync() -> None:
        if on_gpu:
            sync()

    results: list[dict[str, object]] = []
    quality: dict[str, float] = {}
    reference: list[np.ndarray] = []

    def requests(n: int) -> list[SynthesisRequest]:
        return [SynthesisRequest(text=TEXTS[i % len(TEXTS)]) for i in range(n)]

    def run(engine: VitsTorchEngine, batch: list[SynthesisRequest]) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        samples = sum(len(c.samples) for c in engine.synthesize_batch(batch))
        sync()
        return time.perf_counter() - t0, samples / engine.sample_rate

    for precision in precisions:
        if time.monotonic() - started > args.budget_s:
            break
        engine = VitsTorchEngine(
            onnx_path,
            json_path,
            model_name=name,
            device=args.device,
            stream_windows=False,
            max_batch=max(batches),
            precision=precision,
        )
        engine.load()
        # Quality against float32, noise off: the same sentences one by one.
        engine.noise_scale = engine.noise_w = 0.0
        audio = [
            np.concatenate([c.samples for c in engine.synthesize_batch([r])]) for r in requests(8)
        ]
        if precision == "float32":
            reference = audio
        else:
            snrs = []
            for ref, got in zip(reference, audio, strict=True):
                n = min(len(ref), len(got))
                err = float(np.sum((ref[:n].astype(np.float64) - got[:n]) ** 2))
                snrs.append(10 * np.log10(float(np.sum(ref[:n] ** 2)) / max(err, 1e-30)))
            quality[precision] = float(min(snrs))
        engine.noise_scale, engine.noise_w = 0.667, 0.8
        for batch in batches:
            if time.monotonic() - started > args.budget_s:
                break
            run(engine, requests(batch))  # warm-up (kernel selection, allocator)
            rates = []
            for _ in range(args.reps):
                wall, audio_s = run(engine, requests(batch))
                rates.append(audio_s / wall)
            row = {"precision": precision, "batch": batch, "x_realtime": statistics.median(rates)}
            results.append(row)
            print(json.dumps(row), flush=True)
        del engine
        if on_gpu:
            torch.cuda.empty_cache()

    lines = [
        "# vits-torch on GPU",
        "",
        f"`hack/voicefleet_bench/vits_torch_gpu.py` on **{gpu}**, torch {torch.__version__}, "
        f"{args.reps} reps per point (median), sentence-level decoding, default noise. "
        "Throughput is audio seconds per wall second (x real time).",
        "",
        "| batch | " + " | ".join(precisions) + " |",
        "|---|" + "---|" * len(precisions),
    ]
    for batch in batches:
        cells = []
        for precision in precisions:
            hit = [r for r in results if r["batch"] == batch and r["precision"] == precision]
            cells.append(f"{hit[0]['x_realtime']:.0f}" if hit else "not run")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Worst SNR against float32 over 8 sentences, noise off: "
        + ", ".join(f"{p} {v:.1f} dB" for p, v in quality.items()),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")
        args.output.with_suffix(".json").write_text(
            json.dumps({"gpu": gpu, "results": results, "snr_db": quality}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
