"""Start and stop real ``voicefleet-server`` processes on loopback (shared by tests).

Not a fixture module: plain functions, so a test decides how many servers it needs and
with which engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from voicefleet_localcluster.procs import free_port as free_port  # the one copy
from voicefleet_localcluster.procs import stop_process

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(sys.executable).with_name("voicefleet-server")


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def launch(
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    new_session: bool = False,
) -> ServerProc:
    """Start a server; returns at once (see :func:`wait_ready`). ``new_session``: the server
    leads its own process group, as ``make serve`` makes it (for signal tests)."""
    port = port or free_port(host)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(SERVER), "--host", host, "--port", str(port), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )
    return ServerProc(proc, host, port, log_path)


def wait_ready(server: ServerProc, timeout_s: float = 120.0) -> ServerProc:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.proc.kill()
    raise RuntimeError(f"server not ready in time:\n{server.log()}")


def start_simulated(
    log_path: Path, *extra: str, speed_factor: float = 1.0, **knobs: str
) -> ServerProc:
    """A ready server running the ``simulated`` engine as the bundled voice."""
    env = {"SIMULATED_ENGINE_SPEED_FACTOR": str(speed_factor)}
    env.update({f"SIMULATED_ENGINE_{k.upper()}": v for k, v in knobs.items()})
    return wait_ready(launch(log_path, "--engine", "simulated", *extra, env=env))


def stop(server: ServerProc, grace: float = 30.0) -> int:
    return stop_process(server.proc, grace=grace)


def metric(text: str, name: str) -> float:
    """The value of the first sample of ``name`` in a Prometheus text exposition."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            return float(value)
    raise AssertionError(f"{name} not in /metrics")
