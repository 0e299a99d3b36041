"""The router's CPU when nothing happens, against N pods: what its load signal costs.

One asyncio process plays every pod (a listening socket per pod on loopback, told apart by
the port dialled) and answers as a real idle ``voicefleet-server`` does: ``GET /metrics``
with a real server's metrics page (rendered by the server's own metrics module), ``GET
/load`` with the compact line (its own ``seq`` per pod), and the long-poll
``GET /load?wait=S&after=N`` as :mod:`voicefleet_inference.server.loadwait` answers it: at
once (with ``x-voicefleet-load-wait``) when ``after`` is 0 or not a report of this pod, else
held ``S`` seconds (an idle pod's load never changes); it counts each kind. A real
``voicefleet-router`` process with the pods as static upstreams then idles for
``--seconds``; its CPU comes from ``/proc/<pid>/stat``.

``--baseline-pythonpath DIR`` runs a second router from another checkout (an older commit
exported with ``git archive``) beside it: for each N the two alternate for ``--rounds``
rounds and the medians are printed as a table. ``--real-server`` checks the fake against a
real ``voicefleet-server`` (simulated engine) for one pod: the same router, the asks read
from the server's access log.

    .venv/bin/python hack/voicefleet_bench/router_idle.py --pods 1 100 1000 3000 \\
        --rounds 3 --baseline-pythonpath /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from voicefleet_bench.machine import loadavg
from voicefleet_bench.procs import BIN, HOST, cpu_seconds, free_port, memory_mb, router_under
from voicefleet_bench.stats import median

_KINDS = ("/metrics", "/load", "/load?wait", "other")


def _metrics_page() -> bytes:
    from voicefleet_inference.metrics import create_metrics, render

    metrics = create_metrics()
    for value in (0.2, 0.9, 2.5):
        metrics.request_duration_seconds.observe(value)
        metrics.time_to_first_audio_seconds.observe(value / 3)
    metrics.requests_total.labels(code="200").inc(3)
    return render(metrics)


def _answer(kind: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + kind
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


class FakePods:
    """Every pod in one process: tells pods apart by the port that was dialled."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.hits: dict[str, int] = dict.fromkeys(_KINDS, 0)
        self.page = _metrics_page()
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.seqs = [0] * count
        """Each pod's last report number (a real pod numbers every report it writes)."""
        self.open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """The connections being served, by the task serving each."""
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        for index in range(self.count):
            server = await asyncio.start_server(
                functools.partial(self._serve, index), HOST, 0, backlog=1024
            )
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    def _load(self, pod: int) -> bytes:
        self.seqs[pod] += 1
        return f"work_s=0.000,depth=0,in_flight=0,seq={self.seqs[pod]},free=64".encode()

    async def _serve(
        self, pod: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = urlsplit(head.split(b" ", 2)[1].decode())
                if target.path == "/metrics":
                    kind = "/metrics"
                    answer = _answer(b"text/plain; version=0.0.4", self.page)
                elif target.path == "/load":
                    query = parse_qs(target.query)
                    wait = float(query.get("wait", ["0"])[0])
                    kind = "/load?wait" if wait > 0 else "/load"
                    if wait > 0:
                        after = int(query.get("after", ["0"])[0])
                        if 0 < after <= self.seqs[pod]:  # nothing changes on an idle pod
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._stopping.wait(), min(wait, 30.0))
                        held = f"x-voicefleet-load-wait: {min(wait, 30.0):g}\r\n".encode()
                        answer = _answer(b"text/plain", self._load(pod), held)
                    else:
                        answer = _answer(b"text/plain", self._load(pod))
                else:
                    kind = "other"
                    answer = _answer(b"application/json", b"{}")
                self.hits[kind] += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self.open[task]
            writer.close()

    async def stop(self) -> None:
        """Stop listening, end every held ask, close every connection and wait until each
        is served out: a connection task still waiting for a request when the loop ends
        would be cancelled by ``asyncio.run``, which Python 3.11's streams report as an
        unhandled error."""
        self._stopping.set()
        for server in self.servers:
            server.close()
        for writer in self.open.values():
            writer.close()  # the serving task reads EOF and returns
        if self.open:
            await asyncio.wait(list(self.open), timeout=10)
        for server in self.servers:
            await server.wait_closed()


async def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://{HOST}:{port}/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("router did not start")
            await asyncio.sleep(0.1)


async def measure(
    args: argparse.Namespace, pods: int, pythonpath: str, real: str | None = None
) -> dict[str, object]:
    """One router (``pythonpath``'s) idling in front of ``pods`` fake pods (or the one real
    server at ``real``) for ``--seconds``."""
    fake = FakePods(0 if real else pods)
    await fake.start()
    urls = [real] if real else [f"http://{HOST}:{p}" for p in fake.ports]
    port = free_port()
    ours = pythonpath == args.pythonpath
    argv, env = router_under(args.python, pythonpath, port, *(args.router_arg if ours else ()))
    # Thousands of flags would do too; one variable is shorter to read in `ps`.
    env["VOICEFLEET_ROUTER_STATIC_UPSTREAMS"] = ",".join(f"joe={u}" for u in urls)
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for by polling
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_healthy(port, proc, 60 + pods / 20)
        await asyncio.sleep(args.settle + pods / 1000)  # past start-up (every pod asked once)
        hits_before = dict(fake.hits)
        log_before = _load_asks(args.real_log) if real else (0, 0)
        cpu_before = cpu_seconds(proc.pid)
        own_before = time.process_time()
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
        own = time.process_time() - own_before
        rss = memory_mb(proc.pid)["VmRSS"]
        hits = {k: fake.hits[k] - hits_before[k] for k in fake.hits}
        if real:
            plain, held = _load_asks(args.real_log)
            hits["/load"], hits["/load?wait"] = plain - log_before[0], held - log_before[1]
    finally:
        proc.terminate()
        proc.wait(10)
        await fake.stop()
    n = max(1, pods)
    return {
        "pods": pods,
        "router": "this" if ours else "baseline",
        "pod": "real voicefleet-server" if real else "fake",
        "router_cores": round(cpu / wall, 4),
        "millicores_per_pod": round(1000 * cpu / wall / n, 3),
        "router_rss_mb": round(rss, 1),
        "metrics_asks_per_pod_s": round(hits["/metrics"] / wall / n, 3),
        "load_asks_per_pod_s": round(hits["/load"] / wall / n, 3),
        "held_asks_per_pod_s": round(hits["/load?wait"] / wall / n, 3),
        "pods_process_cores": None if real else round(own / wall, 4),
        "seconds": round(wall, 1),
        "loadavg": loadavg(),
    }


def _load_asks(log: Path) -> tuple[int, int]:
    """``(plain /load, /load?wait=)`` requests in a real server's access log."""
    text = log.read_text(errors="replace")
    held = text.count('"GET /load?wait=')
    return text.count('"GET /load HTTP/1.1"'), held


async def _with_real_server(args: argparse.Namespace) -> list[dict[str, object]]:
    """One real server (simulated engine, access log on); the router(s) against it."""
    from voicefleet_bench.procs import wait_ready

    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="voicefleet-idle-"))
    args.real_log = log_dir / "server.log"
    with args.real_log.open("wb") as out:
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, stopped below
            [
                str(BIN / "voicefleet-server"),
                *("--engine", "simulated", "--host", HOST, "--port", str(port)),
                *("--log-level", "debug"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await asyncio.to_thread(wait_ready, server, f"http://{HOST}:{port}/readyz", 120, None)
        rows = []
        for pythonpath in _routers(args):
            rows.append(await measure(args, 1, pythonpath, real=f"http://{HOST}:{port}"))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        server.terminate()
        server.wait(30)


def _routers(args: argparse.Namespace) -> list[str]:
    return [args.pythonpath] + ([args.baseline_pythonpath] if args.baseline_pythonpath else [])


def _table(rows: list[dict[str, object]]) -> str:
    def med(pods: object, router: str, key: str) -> float | None:
        values = [
            float(r[key])  # type: ignore[arg-type]
            for r in rows
            if r["pods"] == pods and r["router"] == router and r[key] is not None
        ]
        return median(values) if values else None

    routers = sorted({str(r["router"]) for r in rows}, reverse=True)  # this, then baseline
    lines = [
        "| pods | " + " | ".join(f"{r}: cores (asks/s per pod)" for r in routers) + " |",
        "|---|" + "---|" * len(routers),
    ]
    for pods in sorted({r["pods"] for r in rows}, key=lambda p: int(str(p))):
        cells = []
        for router in routers:
            cores = med(pods, router, "router_cores")
            asks = sum(
                med(pods, router, k) or 0.0
                for k in ("metrics_asks_per_pod_s", "load_asks_per_pod_s", "held_asks_per_pod_s")
            )
            cells.append(f"{cores:.4f} ({asks:.2f})" if cores is not None else "-")
        lines.append(f"| {pods} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 100, 1000, 3000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after start-up")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--pythonpath", default="")
    parser.add_argument("--baseline-pythonpath", default="")
    parser.add_argument("--real-server", action="store_true")
    parser.add_argument(
        "--router-arg",
        action="append",
        default=[],
        help="a flag for this checkout's router only, e.g. --router-arg=--load-wait-s=5",
    )
    args = parser.parse_args()
    # Each fake pod is a listening socket plus the routers' connections to it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.real_server:
        await _with_real_server(args)
        return
    rows: list[dict[str, object]] = []
    for pods in args.pods:
        for _ in range(args.rounds):
            for pythonpath in _routers(args):
                rows.append(await measure(args, pods, pythonpath))
                print(json.dumps(rows[-1]), flush=True)
    print(_table(rows), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
