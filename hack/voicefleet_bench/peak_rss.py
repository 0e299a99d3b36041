"""Peak RSS of a fresh ``voicefleet-server`` after one long unpunctuated request.

    .venv/bin/python -m voicefleet_bench.peak_rss --chars 4096

Starts the server on a free loopback port, sends one ``/v1/audio/speech`` request of
``--chars`` characters of prose without punctuation (the worst case for per-call memory
before the phoneme budget), and prints VmHWM (peak) and VmRSS (now) of the server
process. A benchmark, not a test: figures go to docs/server.md (Memory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from voicefleet_bench.procs import free_port, memory_mb, wait_ready

WORDS = "the quick brown fox jumps over a lazy dog and keeps running far away "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=4096)
    parser.add_argument("--timeout-s", type=int, default=900, help="server request timeout")
    args = parser.parse_args()
    port = free_port()
    server = Path(sys.executable).with_name("voicefleet-server")
    env = {**os.environ, "VOICEFLEET_REQUEST_TIMEOUT_S": str(args.timeout_s)}
    proc = subprocess.Popen(
        [str(server), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{base}/readyz", timeout_s=600)
        mem = memory_mb(proc.pid)
        peak, now = mem["VmHWM"], mem["VmRSS"]
        print(f"loaded: peak {peak:.0f} MB, rss {now:.0f} MB")
        text = (WORDS * (args.chars // len(WORDS) + 1))[: args.chars].strip()
        started = time.monotonic()
        resp = httpx.post(
            f"{base}/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"},
            timeout=args.timeout_s + 30,
        )
        audio_s = len(resp.content) / 2 / 22050 if resp.status_code == 200 else 0.0
        print(
            f"{args.chars} chars: HTTP {resp.status_code}, {audio_s:.1f} s of audio in "
            f"{time.monotonic() - started:.1f} s"
        )
        time.sleep(1)
        mem = memory_mb(proc.pid)
        peak, now = mem["VmHWM"], mem["VmRSS"]
        print(f"after: peak {peak:.0f} MB ({peak * 1e6 / 2**20:.0f} MiB), rss {now:.0f} MB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
