"""Process control for benchmarks: ports, start/wait/stop, and what a process costs.

Every process a benchmark starts listens on loopback, is waited for with a bound, and is
stopped (SIGTERM, then SIGKILL) on the way out, even when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from voicefleet_bench import REPO
from voicefleet_localcluster.procs import free_port as free_port  # the one copy
from voicefleet_localcluster.procs import stop_process

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
"""The venv's ``bin``: where the console scripts under test live."""

Command = tuple[list[str], dict[str, str], int]
"""``(argv, extra environment, port)`` of a process to start."""


def router_under(
    python: str, pythonpath: str, port: int, *flags: str
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``voicefleet-router`` on loopback ``port``, run by the
    interpreter ``python`` with ``pythonpath`` (when set) first: another checkout, e.g. an
    older commit from ``git archive``, for before/after figures with one driver."""
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    main = "import sys; from voicefleet_inference.router.cli import main; sys.exit(main())"
    argv = [python, "-c", main, "--host", HOST, "--port", str(port), "--log-level", "warning"]
    return [*argv, *flags], env


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks stop every started process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak) of ``pid`` in MB (10**6 bytes), from ``/proc``."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024 / 1e6
    return out


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path | None = None
) -> None:
    """Poll ``GET url`` until 200; raise, with the log's tail, on exit or when time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode} before ready{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url}: not ready after {timeout_s:g} s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}"


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM, wait up to ``grace_s`` for it to drain, then SIGKILL (the cluster's helper)."""
    stop_process(proc, grace_s)


@contextlib.contextmanager
def processes(
    commands: Sequence[Command], ready_path: str = "/readyz", timeout_s: float = 180
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """Start every ``(argv, env, port)``, wait until each answers; yield ``(proc, base_url)``."""
    logs = Path(tempfile.mkdtemp(prefix="voicefleet-bench-"))
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for i, (argv, env, port) in enumerate(commands):
            log = logs / f"{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=REPO
                )
            started.append((proc, f"http://{HOST}:{port}", log))
        for proc, url, log in started:
            wait_ready(proc, url + ready_path, timeout_s, log)
        yield [(proc, url) for proc, url, _ in started]
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in started:
            stop(proc)


@contextlib.contextmanager
def spawned(
    cmd: Sequence[str], port: int, ready_path: str, log_dir: Path, name: str, host: str = HOST
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start ``cmd`` in its own session, wait until ``GET http://host:port/ready_path``
    answers 200; yield (process, startup seconds); stop it on the way out. Its output goes
    to ``log_dir/<name>-<port>.log``, whose tail a failed start quotes."""
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    try:
        try:
            wait_ready(proc, f"http://{host}:{port}{ready_path}", 180.0, log_path)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}") from exc
        yield proc, time.monotonic() - started
    finally:
        stop(proc)
