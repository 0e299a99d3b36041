"""Shared pieces of the router benchmarks (``router_policies.py``, ``router_overhead.py``).

Processes on loopback only, each started with a bounded wait and stopped at the end;
results are written between markers in ``docs/router.md`` so the prose around them stays.
Not an importable package: the scripts put this directory on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVER = BIN / "voicefleet-server"
ROUTER = BIN / "voicefleet-router"
DOC = REPO / "docs" / "router.md"


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so the ``finally`` blocks stop every started process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url} not ready after {timeout_s:g} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def processes(
    commands: Sequence[tuple[list[str], dict[str, str], int]], timeout_s: float = 180
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """Start ``(argv, extra env, port)`` processes at once; yield ``(proc, base_url)``."""
    logs = Path(tempfile.mkdtemp(prefix="voicefleet-router-bench-"))
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for i, (argv, env, port) in enumerate(commands):
            log = logs / f"{i}.log"
            proc = subprocess.Popen(
                argv,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=REPO,
            )
            started.append((proc, f"http://127.0.0.1:{port}", log))
        for proc, url, log in started:
            _wait_ready(proc, url, log, timeout_s)
        yield [(proc, url) for proc, url, _ in started]
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def simulated_pod(
    port: int,
    *,
    speed_factor: float,
    jitter: float,
    seed: int,
    audio_seconds_per_char: float = 0.057,
) -> tuple[list[str], dict[str, str], int]:
    argv = [
        str(SERVER),
        "--engine",
        "simulated",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-queue",
        "4096",
        "--log-level",
        "warning",
    ]
    env = {
        "SIMULATED_ENGINE_SPEED_FACTOR": str(speed_factor),
        "SIMULATED_ENGINE_JITTER": str(jitter),
        "SIMULATED_ENGINE_SEED": str(seed),
        "SIMULATED_ENGINE_AUDIO_SECONDS_PER_CHAR": str(audio_seconds_per_char),
    }
    return argv, env, port


def router(
    port: int, upstreams: Sequence[str], *extra: str
) -> tuple[list[str], dict[str, str], int]:
    argv = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    for url in upstreams:
        argv += ["--static-upstreams", f"joe={url}#en_US-joe-medium"]
    return [*argv, *extra], {}, port


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    """Replace what lies between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip() + "\n\n" + block + "\n"
    doc.write_text(updated, encoding="utf-8")


def machine_note() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"{os.cpu_count()} cores, load average {' '.join(load)} at the end of the run "
        "(the machine was shared with other work; compare ratios, not absolute times)"
    )
