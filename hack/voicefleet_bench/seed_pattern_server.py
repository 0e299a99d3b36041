"""The baseline: the seed's (GPT-SoVITS ``api_v2.py``) serving pattern, on our engine.

Deliberately flawed, for measurement only. The speech route is ``async def`` and calls
the blocking engine directly, so model code runs on the event-loop thread: with one
uvicorn worker and one engine, concurrent requests serialize and ``/healthz`` waits
behind whatever synthesis is running. Everything else (engine, voice, thread count,
WAV output, request shape) matches what ``voicefleet-server`` gets, so the benchmark
compares serving patterns, not models.

Run as a script (``run.py`` starts it as a subprocess)::

    .venv/bin/python -m voicefleet_bench.seed_pattern_server --port 8181 --threads 2
"""

from __future__ import annotations

import argparse
import io
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from voicefleet_inference.engines.base import Engine, SynthesisRequest
from voicefleet_inference.engines.registry import create_engine


def encode_wav(samples: np.ndarray[Any, np.dtype[np.float32]], sample_rate: int) -> bytes:
    """16-bit mono PCM WAV from float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    buf = io.BytesIO()
    buf.write(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE")
    buf.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16))
    buf.write(b"data" + struct.pack("<I", len(pcm)))
    buf.write(pcm)
    return buf.getvalue()


def build_app(engine_name: str, model: str, device: str, threads: int) -> FastAPI:
    """The seed-pattern app: one engine, loaded at startup, called on the event loop."""
    state: dict[str, Engine] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(engine_name, model, device, threads)
        engine.load()
        state["engine"] = engine
        yield

    app = FastAPI(title="seed-pattern baseline", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        # The flaw under test: blocking model code inside an async route.
        body = await request.json()
        text = str(body.get("input", ""))
        if not text.strip():
            return JSONResponse({"error": {"message": "input is empty"}}, status_code=400)
        engine = state["engine"]
        parts = [chunk.samples for chunk in engine.synthesize_batch([SynthesisRequest(text=text)])]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return Response(encode_wav(audio, engine.sample_rate), media_type="audio/wav")

    return app


def main() -> None:
    """Parse flags and serve on one uvicorn worker."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181)
    parser.add_argument("--engine", default="piper-onnx")
    parser.add_argument("--model", default="en_US-joe-medium")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    app = build_app(args.engine, args.model, args.device, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
